//! Failover detection against HAProxy (pgsql-check, backup servers) and libpq
//! multi-host, on the same three live servers, in one run: dbha with held
//! sessions at `interval = 1s` and at HAProxy's `inter 100ms`, and dbha with a
//! connection per probe at 100 ms.

use crate::common::{live_setup, percentile, until, until_write, until_write_leaves};
use dbha_harness::pg::{self, StopMode};
use dbha_tests::agentproc::{config, AgentProc, Timing};
use dbha_tests::Children;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What HAProxy's runtime API answers to `command`.
pub(crate) fn haproxy_says(socket: &Path, command: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("{command}\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Starts `haproxy` in the foreground on configuration `cfg`, stopped with
/// `children`.
pub(crate) fn start_haproxy(haproxy: &Path, cfg: &Path, children: &mut Children) {
    children.push(
        Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
}

/// Whether HAProxy's runtime API reports server `name` of backend `pg` down.
fn haproxy_down(socket: &Path, name: &str) -> Option<bool> {
    let out = haproxy_says(socket, "show servers state pg")?;
    // "be_id be_name srv_id srv_name srv_addr srv_op_state ...": 0 is stopped.
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(3) == Some(&name))
        .and_then(|f| f.get(5).map(|state| *state == "0"))
}

/// `only`: just the faults whose name contains it ("stopped", "frozen",
/// "blackholed").
pub fn haproxy(trials: usize, only: Option<&str>) {
    let Some(haproxy) = dbha_tests::require(
        "haproxy",
        "for the HAProxy comparison (apt-get install haproxy)",
    ) else {
        eprintln!("dbha-bench haproxy: install haproxy first (apt-get install haproxy); tests/setup.sh does");
        std::process::exit(1);
    };
    let (live, t) = live_setup("haproxy");
    // A blackhole drops the client's FIN too: the backend of every connection
    // given up during one (a held session, a check, a psql) would stay until
    // the server's TCP keepalive ends it, two hours by default, and twenty
    // trials would use up max_connections. Server keepalive reaps them within
    // seconds of the blackhole's end, as the operator's guide advises.
    for c in &live.clusters {
        for sql in [
            "ALTER SYSTEM SET tcp_keepalives_idle = 1",
            "ALTER SYSTEM SET tcp_keepalives_interval = 1",
            "ALTER SYSTEM SET tcp_keepalives_count = 2",
            "SELECT pg_reload_conf()",
        ] {
            c.psql(sql).expect("server keepalive");
        }
    }
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
    start_haproxy(&haproxy, &cfg, &mut children);
    // (column, timing, session): every agent watches the same servers.
    let slow = Timing {
        interval_ms: 1000,
        stale_after_ms: 3000,
        ..t.clone()
    };
    let setups = [
        ("dbha held, interval 1s", &slow, "held"),
        ("dbha held, interval 100ms", &t, "held"),
        ("dbha per-probe, interval 100ms", &t, "per-probe"),
    ];
    let agents: Vec<AgentProc> = setups
        .iter()
        .enumerate()
        .map(|(i, (_, timing, session))| {
            AgentProc::start(dir, &format!("agent{i}"), |s| {
                config(
                    s,
                    timing,
                    &live.dbs("postgres"),
                    &format!("session = \"{session}\""),
                )
            })
        })
        .collect();
    let readers: Vec<dbha::Reader> = agents.iter().map(AgentProc::reader).collect();
    for r in &readers {
        until_write(r, "default");
    }
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
    let blackhole = dbha_tests::netfault::Blackhole::for_port(port("default"));
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
    println!("| fault ({trials} trials; timeout=200ms, fall=2, rise=2) | {} | {} | {} | HAProxy inter 100ms | held 100ms / HAProxy | per-probe 100ms / HAProxy | libpq |", setups[0].0, setups[1].0, setups[2].0);
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, fault, repair) in faults
        .iter()
        .filter(|(name, _, _)| only.is_none_or(|o| name.contains(o)))
    {
        // Per watcher: the agents in order, then HAProxy, then libpq.
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); readers.len() + 2];
        for i in 0..trials {
            // Faults land anywhere in the slow agent's 1 s probe cycle.
            std::thread::sleep(Duration::from_millis(300 + (i as u64 * 137) % 1000));
            // The readers and HAProxy watched from before the fault, all timed
            // from the instant it begins (pg_ctl stop returns only once the
            // server is gone).
            let start = Instant::now();
            let took: Vec<Duration> = std::thread::scope(|sc| {
                let mut watchers: Vec<_> = readers
                    .iter()
                    .map(|r| {
                        sc.spawn(move || {
                            // No longer handed out: what HAProxy's "marked down"
                            // compares with (writes move later, after the
                            // tolerance).
                            until_write_leaves(r, "default");
                            start.elapsed()
                        })
                    })
                    .collect();
                watchers.push(sc.spawn(|| {
                    until("HAProxy to mark default down", || {
                        haproxy_down(&socket, "default") == Some(true)
                    });
                    start.elapsed()
                }));
                fault();
                // New connections from the fault on: one opened before it could
                // wait forever on a blackholed server (connect_timeout bounds
                // connecting, not a query).
                watchers.push(sc.spawn(|| {
                    until("a libpq connection to land on a working server", &lands);
                    start.elapsed()
                }));
                watchers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            for (v, d) in times.iter_mut().zip(took) {
                v.push(d.as_secs_f64() * 1e3);
            }
            repair();
            for r in &readers {
                until_write(r, "default");
            }
            let up =
                dbha_harness::wait::poll(Duration::from_millis(1), Duration::from_secs(60), || {
                    (haproxy_down(&socket, "default") == Some(false)).then_some(())
                });
            assert!(
                up.is_some(),
                "HAProxy never saw default up again after {name}:\n{}",
                haproxy_says(&socket, "show stat").unwrap_or_default()
            );
        }
        for v in &mut times {
            v.sort_by(f64::total_cmp);
        }
        let cell = |v: &[f64]| format!("{:.0} / {:.0}", percentile(v, 0.5), percentile(v, 0.99));
        let ratio = |a: &[f64], b: &[f64]| percentile(a, 0.5) / percentile(b, 0.5);
        let haproxy = &times[readers.len()];
        println!(
            "| default {name} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
            cell(&times[0]),
            cell(&times[1]),
            cell(&times[2]),
            cell(haproxy),
            ratio(&times[1], haproxy),
            ratio(&times[2], haproxy),
            cell(&times[readers.len() + 1])
        );
    }
    println!("\nms from the fault to what each sees, p50 / p99; ratios of p50s. dbha: the write endpoint no longer handed out (NONE; writes move to failover1 once default was down for fall x interval); HAProxy: default marked down; libpq: a new connection lands on another server. libpq: psql with \"{libpq}\", each attempt a new process and connection (about {connect_floor:.0} ms each when nothing is wrong)");
    drop(children);
}
