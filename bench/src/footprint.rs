//! The agent's resident memory and CPU at 3 and 64 endpoints.

use crate::common::{clk_tck, open_reader, proc_stat, spawn_agent};
use dbha_harness::pg::Scratch;
use dbha_harness::Listener;
use dbha_tests::fakepg::{FakePg, Reply};
use dbha_tests::Children;
use std::time::{Duration, Instant};

/// (resident KiB, CPU seconds) of a process, from /proc.
pub(crate) fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let ticks = proc_stat(pid).expect("the agent's /proc/PID/stat").own;
    (rss, ticks as f64 / clk_tck())
}

pub fn footprint(seconds: u64) {
    println!("| endpoints | check | RSS (MiB) | CPU per hour (s) | CPU share of one core |");
    println!("|---:|---|---:|---:|---:|");
    for n in [3usize, 64] {
        // tcp: plain listeners; postgres: fake servers asking for a password
        // (every probe a new connection and the startup exchange), or letting the
        // agent in (a held session, one query per probe).
        for (label, reply) in [
            ("tcp", None),
            ("postgres, per probe", Some(Reply::AuthMd5)),
            ("postgres, held session", Some(Reply::AuthOk)),
        ] {
            let check = if reply.is_some() { "postgres" } else { "tcp" };
            let scratch = Scratch::new("bench-footprint").unwrap();
            let dir = scratch.path();
            let listeners: Vec<Listener> = (0..n).map(|_| Listener::bind(0).unwrap()).collect();
            let fakes: Vec<FakePg> = match reply {
                Some(reply) => (0..n).map(|_| FakePg::start(reply)).collect(),
                None => Vec::new(),
            };
            let mut config = format!(
                "state_file = \"{}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
                dir.join("state").display()
            );
            for i in 0..n {
                let port = if check == "postgres" {
                    fakes[i].port
                } else {
                    listeners[i].port
                };
                config.push_str(&format!(
                    "[[database]]\nalias = \"db{i}\"\nhost = \"127.0.0.1\"\nport = {port}\ncheck = \"{check}\"\n"
                ));
            }
            let mut children = Children::default();
            let state = spawn_agent(dir, &config, &mut children);
            open_reader(&state);
            let pid = children.get(0).expect("the agent").id();
            // Let it settle, then measure over the window.
            std::thread::sleep(Duration::from_secs(seconds.min(2)));
            let (_, cpu0) = usage(pid);
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs(seconds));
            let (rss, cpu1) = usage(pid);
            let window = t0.elapsed().as_secs_f64();
            let per_hour = (cpu1 - cpu0) / window * 3600.0;
            println!(
                "| {n} | {label} | {:.1} | {per_hour:.1} | {:.3}% |",
                rss as f64 / 1024.0,
                per_hour / 3600.0 * 100.0
            );
            drop((children, fakes, listeners));
        }
    }
    println!("\nmeasured over {seconds} s per row; CPU from /proc/PID/stat (utime + stime)");
}
