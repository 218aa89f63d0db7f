//! Writes a state file with the real writer, for tests in other languages (the
//! Python package's tests):
//!
//!     dbha-statefile PATH ALIASES [--write I] [--read I] [--health MASK]
//!                    [--stale-after-ms N] [--stopped] [--hold]
//!
//! ALIASES is comma-separated; each is `alias` or `alias@host:port` (an IPv6 host in
//! brackets), and endpoint i without an address gets 127.0.0.1 and port 5432 + i.
//! With `--hold` it stays alive, publishing a heartbeat
//! every 50 ms, and takes commands on standard input, one per line, answering `ok`
//! or `error: ...`: `write I`, `read I`, `none`, `health MASK`, `stop` (mark the
//! agent stopped), `pause` / `resume` (heartbeats), `aliases A,B,...` (the endpoints
//! change, as ALIASES: the file is replaced). It exits at end of input.

use dbha_protocol::writer::{Publication, Settings, StateFile};
use dbha_protocol::{Endpoint, NONE};
use std::io::BufRead;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: dbha-statefile PATH ALIASES [--write I] [--read I] [--health MASK] [--stale-after-ms N] [--stopped] [--hold]");
    std::process::exit(2)
}

fn endpoints(list: &str) -> Vec<Endpoint> {
    list.split(',')
        .enumerate()
        .map(|(i, item)| {
            let (alias, host, port) = match item.split_once('@') {
                Some((alias, address)) => {
                    let (host, port) = address.rsplit_once(':').unwrap_or_else(|| usage());
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    (alias, host, port.parse().unwrap_or_else(|_| usage()))
                }
                None => (item, "127.0.0.1", 5432 + i as u16),
            };
            Endpoint::new(alias, host, port)
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        usage();
    }
    let path = Path::new(&args[0]);
    let names = endpoints(&args[1]);
    let mut p = Publication {
        write_index: 0,
        read_index: 0,
        health_mask: 1,
        ..Publication::NOTHING
    };
    let mut settings = Settings {
        stale_after_ns: 5_000_000_000,
        mode: 0o644,
    };
    let (mut stopped, mut hold) = (false, false);
    let mut rest = args[2..].iter();
    let num = |v: Option<&String>| -> u64 {
        let v = v.unwrap_or_else(|| usage());
        let (digits, radix) = v.strip_prefix("0b").map_or((v.as_str(), 10), |b| (b, 2));
        u64::from_str_radix(digits, radix).unwrap_or_else(|_| usage())
    };
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--write" => p.write_index = num(rest.next()) as u32,
            "--read" => p.read_index = num(rest.next()) as u32,
            "--health" => p.health_mask = num(rest.next()),
            "--stale-after-ms" => settings.stale_after_ns = num(rest.next()) * 1_000_000,
            "--stopped" => stopped = true,
            "--hold" => hold = true,
            _ => usage(),
        }
    }
    let (mut w, _) = StateFile::open(path, &names, settings, &p).unwrap_or_else(|e| {
        eprintln!("dbha-statefile: {e}");
        std::process::exit(1)
    });
    w.publish(&p);
    if stopped {
        w.mark_stopped();
    }
    if !hold {
        return;
    }
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    println!("ready");
    let mut beating = true;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let mut words = line.split_whitespace();
                let reply = match (words.next(), words.next()) {
                    (Some("write"), Some(i)) => i
                        .parse()
                        .map(|i| p.write_index = i)
                        .map_err(|e| e.to_string()),
                    (Some("read"), Some(i)) => i
                        .parse()
                        .map(|i| p.read_index = i)
                        .map_err(|e| e.to_string()),
                    (Some("none"), None) => {
                        p.write_index = NONE;
                        p.read_index = NONE;
                        Ok(())
                    }
                    (Some("health"), Some(m)) => m
                        .parse()
                        .map(|m| p.health_mask = m)
                        .map_err(|e| e.to_string()),
                    (Some("stop"), None) => {
                        w.mark_stopped();
                        beating = false;
                        Ok(())
                    }
                    (Some("pause"), None) => {
                        beating = false;
                        Ok(())
                    }
                    (Some("resume"), None) => {
                        beating = true;
                        Ok(())
                    }
                    (Some("aliases"), Some(list)) => w
                        .reconfigure(&endpoints(list), settings, &p)
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    _ => Err(format!("unknown command {line:?}")),
                };
                if beating {
                    w.publish(&p);
                }
                match reply {
                    Ok(()) => println!("ok"),
                    Err(e) => println!("error: {e}"),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if beating {
                    w.publish(&p);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
