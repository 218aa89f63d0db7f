//! Failover detection against HAProxy (pgsql-check, backup servers) and libpq
//! multi-host, with the same settings and the same three live servers.

use crate::common::{live_setup, percentile, until, until_write};
use dbha_harness::pg::{self, StopMode};
use dbha_tests::agentproc::{config, AgentProc};
use dbha_tests::Children;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether HAProxy's runtime API reports server `name` of backend `pg` down.
fn haproxy_down(socket: &Path, name: &str) -> Option<bool> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.write_all(b"show servers state pg\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    // "be_id be_name srv_id srv_name srv_addr srv_op_state ...": 0 is stopped.
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(3) == Some(&name))
        .and_then(|f| f.get(5).map(|state| *state == "0"))
}

pub fn haproxy(trials: usize) {
    let Some(haproxy) = dbha_tests::require(
        "haproxy",
        "for the HAProxy comparison (apt-get install haproxy)",
    ) else {
        eprintln!("dbha-bench haproxy: install haproxy first (apt-get install haproxy); tests/setup.sh does");
        std::process::exit(1);
    };
    let (live, t) = live_setup("haproxy");
    let dir = live.dir.path();
    let socket = dir.join("haproxy.sock");
    let port = |n: &str| live.cluster(n).port;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout check {}ms\n\
             backend pg\n  option pgsql-check user postgres\n  default-server inter {}ms fall {} rise {}\n\
             \x20 server default 127.0.0.1:{} check\n  server failover1 127.0.0.1:{} check backup\n  server failover2 127.0.0.1:{} check backup\n",
            socket.display(),
            t.timeout_ms,
            t.interval_ms,
            t.fall,
            t.rise,
            port("default"),
            port("failover1"),
            port("failover2"),
        ),
    )
    .unwrap();
    let mut children = Children::default();
    children.push(
        Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    let agent = AgentProc::start(dir, "agent", |s| config(s, &t, &live.dbs("postgres"), ""));
    let r = agent.reader();
    until_write(&r, "default");
    until("HAProxy to see default up", || {
        haproxy_down(&socket, "default") == Some(false)
    });
    let default = live.cluster("default");
    let libpq = format!(
        "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2",
        port("default"),
        port("failover1"),
        port("failover2")
    );
    let psql = pg::find().expect("PostgreSQL").bindir.join("psql");
    // A new connection lands on a working server: psql connects and says where.
    let lands = || {
        Command::new(&psql)
            .args(["-X", "-A", "-t", "-c", "SELECT inet_server_port()", &libpq])
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).trim() != port("default").to_string()
            })
    };
    let connect_floor = {
        let t0 = Instant::now();
        for _ in 0..5 {
            let _ = Command::new(&psql)
                .args(["-X", "-A", "-t", "-c", "SELECT 1", &libpq])
                .output();
        }
        t0.elapsed().as_secs_f64() * 1e3 / 5.0
    };
    type Fault<'a> = (&'a str, Box<dyn Fn() + 'a>, Box<dyn Fn() + 'a>);
    let faults: Vec<Fault> = vec![
        (
            "stopped (pg_ctl stop -m immediate)",
            Box::new(|| default.stop(StopMode::Immediate).unwrap()),
            Box::new(|| default.start().unwrap()),
        ),
        (
            "frozen (SIGSTOP)",
            Box::new(|| default.freeze()),
            Box::new(|| default.thaw()),
        ),
    ];
    // A blackholed host: every packet to its port dropped (nftables, as root).
    let blackhole = crate::netfault::Blackhole::for_port(port("default"));
    let mut faults = faults;
    match &blackhole {
        Some(b) => faults.push((
            "blackholed (packets to its port dropped)",
            Box::new(|| b.on()),
            Box::new(|| b.off()),
        )),
        None => {
            eprintln!("dbha-bench haproxy: nft is not installed: the blackholed row is left out")
        }
    }
    println!("| fault (interval=100ms, timeout=200ms, fall=2, rise=2; {trials} trials) | dbha p50 | dbha p99 | HAProxy p50 | HAProxy p99 | dbha / HAProxy (p50) | libpq p50 | libpq p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, fault, repair) in &faults {
        let (mut d, mut h, mut l) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..trials {
            std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % t.interval_ms));
            let start = Instant::now();
            fault();
            // All three watched at once, from the same instant.
            let (dt, ht, lt) = std::thread::scope(|sc| {
                let hp = sc.spawn(|| {
                    until("HAProxy to mark default down", || {
                        haproxy_down(&socket, "default") == Some(true)
                    });
                    start.elapsed()
                });
                let lq = sc.spawn(|| {
                    until("a libpq connection to land on a working server", &lands);
                    start.elapsed()
                });
                until_write(&r, "failover1");
                let dt = start.elapsed();
                (dt, hp.join().unwrap(), lq.join().unwrap())
            });
            d.push(dt.as_secs_f64() * 1e3);
            h.push(ht.as_secs_f64() * 1e3);
            l.push(lt.as_secs_f64() * 1e3);
            repair();
            until_write(&r, "default");
            until("HAProxy to see default up", || {
                haproxy_down(&socket, "default") == Some(false)
            });
        }
        for v in [&mut d, &mut h, &mut l] {
            v.sort_by(f64::total_cmp);
        }
        let p = |v: &[f64], q| percentile(v, q);
        println!(
            "| default {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            p(&d, 0.5),
            p(&d, 0.99),
            p(&h, 0.5),
            p(&h, 0.99),
            p(&d, 0.5) / p(&h, 0.5),
            p(&l, 0.5),
            p(&l, 0.99)
        );
    }
    println!("\nall times in ms from the fault; libpq: psql with \"{libpq}\", each attempt a new process and connection (about {connect_floor:.0} ms each when nothing is wrong)");
    drop(children);
}
