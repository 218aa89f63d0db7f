//! The mysql check on real MariaDB servers, in one run: failover detection
//! against HAProxy's `option mysql-check` at equal settings (a crash, a
//! freeze, a blackhole); a promotion as readers see it; what a probe costs
//! the server (a held session's status query, a login per probe, a greeting,
//! HAProxy's check); and the agent's footprint with three MySQL endpoints.

use crate::common::{clk_tck, percentile, until, until_write, until_write_leaves};
use crate::footprint::usage;
use crate::haproxy::{haproxy_says, start_haproxy};
use dbha_agent::config::{Check, Database, Secret, Session, SslMode};
use dbha_agent::probe::Prober;
use dbha_tests::agentproc::{config, AgentProc, Timing};
use dbha_tests::mariadb::{self, Pair, Server};
use dbha_tests::Children;
use std::time::{Duration, Instant};

const MONITOR_PW: &str = "monitor-pw";

/// Server keepalive: a session given up during a blackhole (its FIN dropped)
/// is reaped within seconds of the blackhole's end, not after two hours.
const OPTIONS: &[&str] = &[
    "--tcp-keepalive-time=1",
    "--tcp-keepalive-interval=1",
    "--tcp-keepalive-probes=2",
];

/// Whether HAProxy's runtime API reports server `name` of backend `my` down.
fn haproxy_down(socket: &std::path::Path, name: &str) -> Option<bool> {
    let out = haproxy_says(socket, "show servers state my")?;
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(3) == Some(&name))
        .and_then(|f| f.get(5).map(|state| *state == "0"))
}

/// The server's CPU so far, in clock ticks (all its threads).
fn server_ticks(s: &Server) -> u64 {
    s.pid()
        .and_then(|p| u32::try_from(p.as_raw()).ok())
        .and_then(crate::common::proc_stat)
        .map_or(0, |st| st.own)
}

/// `SHOW GLOBAL STATUS` counter `name`.
fn status(s: &Server, name: &str) -> u64 {
    s.sql(&format!("SHOW GLOBAL STATUS LIKE '{name}'"))
        .ok()
        .and_then(|o| o.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

pub fn run(trials: usize, quick: bool) {
    if mariadb::prerequisites().is_none() {
        eprintln!("dbha-bench mysql needs the MariaDB server (apt-get install mariadb-server); tests/setup.sh installs it");
        std::process::exit(1);
    }
    let Some(haproxy) = dbha_tests::require("haproxy", "for the HAProxy comparison") else {
        eprintln!("dbha-bench mysql: install haproxy first (tests/setup.sh does)");
        std::process::exit(1);
    };
    let mut p = Pair::start_with(OPTIONS).expect("MariaDB");
    p.primary
        .create_user("dbha", MONITOR_PW, "SLAVE MONITOR")
        .and_then(|()| p.primary.create_user("haproxy", "", ""))
        .and_then(|()| p.replica.caught_up())
        .expect("users");
    let dir = p.dir().to_path_buf();
    let pw = dbha_tests::password_file(&dir, "monitor.pw", MONITOR_PW);
    detection(&mut p, &dir, &pw, &haproxy, trials);
    promotion(&mut p, &dir, &pw, if quick { 1 } else { trials.min(10) });
    cost(&p, &dir, &haproxy, if quick { 1.0 } else { 10.0 });
    footprint(&p, &dir, &pw, if quick { 2 } else { 60 });
}

/// Failover detection: each agent's write endpoint leaving db0, and HAProxy
/// marking it down, timed from the fault.
fn detection(
    p: &mut Pair,
    dir: &std::path::Path,
    pw: &std::path::Path,
    haproxy: &std::path::Path,
    trials: usize,
) {
    let t = crate::common::fast();
    let socket = dir.join("haproxy.sock");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout check {}ms\n\
             backend my\n  option mysql-check user haproxy post-41\n  default-server inter {}ms fall {} rise {}\n\
             \x20 server db0 127.0.0.1:{} check\n  server db1 127.0.0.1:{} check backup\n",
            socket.display(),
            t.timeout_ms,
            t.interval_ms,
            t.fall,
            t.rise,
            p.primary.port,
            p.replica.port,
        ),
    )
    .unwrap();
    let mut children = Children::default();
    start_haproxy(haproxy, &cfg, &mut children);
    let slow = Timing {
        interval_ms: 1000,
        stale_after_ms: 3000,
        ..t.clone()
    };
    let login = format!(
        "writes = \"primary\"\nreads = \"prefer-standby\"\nuser = \"dbha\"\npassword_file = \"{}\"",
        pw.display()
    );
    let setups = [
        (
            "dbha held, interval 1s",
            &slow,
            format!("{login}\nsession = \"held\""),
        ),
        (
            "dbha held, interval 100ms",
            &t,
            format!("{login}\nsession = \"held\""),
        ),
        (
            "dbha login per probe, 100ms",
            &t,
            format!("{login}\nsession = \"per-probe\""),
        ),
        ("dbha greeting only, 100ms", &t, String::new()),
    ];
    let dbs = [
        ("db0", "127.0.0.1", p.primary.port, "mysql"),
        ("db1", "127.0.0.1", p.replica.port, "mysql"),
    ];
    let agents: Vec<AgentProc> = setups
        .iter()
        .enumerate()
        .map(|(i, (_, timing, extra))| {
            AgentProc::start(dir, &format!("agent{i}"), |s| {
                config(s, timing, &dbs, extra)
            })
        })
        .collect();
    let readers: Vec<dbha::Reader> = agents.iter().map(AgentProc::reader).collect();
    for r in &readers {
        until_write(r, "db0");
    }
    until("HAProxy to see db0 up", || {
        haproxy_down(&socket, "db0") == Some(false)
    });
    let blackhole = dbha_tests::netfault::Blackhole::for_port(p.primary.port);
    let names = [
        "crashed (SIGKILL)",
        "frozen (SIGSTOP)",
        "blackholed (packets to its port dropped)",
    ];
    println!(
        "| fault ({trials} trials; timeout=200ms, fall=2, rise=2) | {} | {} | {} | {} | HAProxy mysql-check inter 100ms | held 100ms / HAProxy | per-probe 100ms / HAProxy | greeting 100ms / HAProxy |",
        setups[0].0, setups[1].0, setups[2].0, setups[3].0
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (f, name) in names.iter().enumerate() {
        if f == 2 && blackhole.is_none() {
            eprintln!("dbha-bench mysql: nft is not installed (or not root): the blackholed row is left out");
            continue;
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); readers.len() + 1];
        for i in 0..trials {
            std::thread::sleep(Duration::from_millis(300 + (i as u64 * 137) % 1000));
            let start = Instant::now();
            let took: Vec<Duration> = std::thread::scope(|sc| {
                let mut watchers: Vec<_> = readers
                    .iter()
                    .map(|r| {
                        sc.spawn(move || {
                            until_write_leaves(r, "db0");
                            start.elapsed()
                        })
                    })
                    .collect();
                watchers.push(sc.spawn(|| {
                    until("HAProxy to mark db0 down", || {
                        haproxy_down(&socket, "db0") == Some(true)
                    });
                    start.elapsed()
                }));
                match f {
                    0 => p.primary.kill(),
                    1 => p.primary.freeze(true),
                    _ => blackhole.as_ref().unwrap().on(),
                }
                watchers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            for (v, d) in times.iter_mut().zip(took) {
                v.push(d.as_secs_f64() * 1e3);
            }
            match f {
                0 => p.primary.start_again().expect("db0 back"),
                1 => p.primary.freeze(false),
                _ => blackhole.as_ref().unwrap().off(),
            }
            for r in &readers {
                until_write(r, "db0");
            }
            until("HAProxy to see db0 up again", || {
                haproxy_down(&socket, "db0") == Some(false)
            });
        }
        for v in &mut times {
            v.sort_by(f64::total_cmp);
        }
        let cell = |v: &[f64]| format!("{:.0} / {:.0}", percentile(v, 0.5), percentile(v, 0.99));
        let ratio = |a: &[f64], b: &[f64]| percentile(a, 0.5) / percentile(b, 0.5);
        let h = &times[readers.len()];
        println!(
            "| db0 {name} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            cell(&times[0]),
            cell(&times[1]),
            cell(&times[2]),
            cell(&times[3]),
            cell(h),
            ratio(&times[1], h),
            ratio(&times[2], h),
            ratio(&times[3], h),
        );
    }
    println!("\nms from the fault to what each sees, p50 / p99; ratios of p50s. dbha: the write endpoint no longer db0 (NONE while db1 is a replica); HAProxy: db0 marked down (mysql-check user haproxy post-41: a login per check, passwordless user)");
    drop(agents);
    drop(children);
}

/// A promotion as readers see it: the primary killed, the replica promoted,
/// then the old primary rejoined as a replica of the new one (the roles swap
/// at each trial).
fn promotion(p: &mut Pair, dir: &std::path::Path, pw: &std::path::Path, trials: usize) {
    let login = format!(
        "writes = \"primary\"\nreads = \"prefer-standby\"\nuser = \"dbha\"\npassword_file = \"{}\"",
        pw.display()
    );
    let timings = [
        ("held, interval 1s", Timing::example()),
        (
            "held, interval 100ms",
            Timing {
                failback: "sticky",
                ..crate::common::fast()
            },
        ),
    ];
    let dbs = [
        ("db0", "127.0.0.1", p.primary.port, "mysql"),
        ("db1", "127.0.0.1", p.replica.port, "mysql"),
    ];
    let agents: Vec<AgentProc> = timings
        .iter()
        .enumerate()
        .map(|(i, (_, t))| {
            AgentProc::start(dir, &format!("promo{i}"), |s| config(s, t, &dbs, &login))
        })
        .collect();
    let readers: Vec<dbha::Reader> = agents.iter().map(AgentProc::reader).collect();
    let alias = |primary_is_db0: bool| {
        if primary_is_db0 {
            ("db0", "db1")
        } else {
            ("db1", "db0")
        }
    };
    let mut db0_primary = true;
    for r in &readers {
        until_write(r, "db0");
    }
    let mut seen: Vec<Vec<f64>> = vec![Vec::new(); readers.len()];
    let mut command = Vec::new();
    for _ in 0..trials {
        let (old, new) = alias(db0_primary);
        let (old_server, new_server) = if db0_primary {
            (&mut p.primary, &mut p.replica)
        } else {
            (&mut p.replica, &mut p.primary)
        };
        old_server.kill();
        for r in &readers {
            until("no write endpoint", || r.write_alias().is_none());
        }
        // Timed from the start of the promotion: the agents probing at the
        // promotion window's pace may see read_only = 0 before the client
        // that set it has exited.
        let promoted = Instant::now();
        let took: Vec<Duration> = std::thread::scope(|sc| {
            let w: Vec<_> = readers
                .iter()
                .map(|r| {
                    sc.spawn(move || {
                        until_write(r, new);
                        promoted.elapsed()
                    })
                })
                .collect();
            new_server.promote().expect("promote");
            command.push(promoted.elapsed().as_secs_f64() * 1e3);
            w.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for (v, d) in seen.iter_mut().zip(took) {
            v.push(d.as_secs_f64() * 1e3);
        }
        // The old primary back, as a replica of the new one.
        old_server.start_again().expect("restart");
        old_server.replicate_from(new_server).expect("rejoin");
        for r in &readers {
            until("the old primary seen as a standby", || {
                r.snapshot().is_ok_and(|s| {
                    s.standby_mask != 0 && !s.fence(if old == "db0" { 0 } else { 1 }).fenced
                })
            });
        }
        db0_primary = !db0_primary;
    }
    println!("\n| promotion ({trials} trials) | p50 (ms) | max (ms) | interval + one probe | rise x fastinter |");
    println!("|---|---:|---:|---:|---:|");
    for ((label, t), v) in timings.iter().zip(&mut seen) {
        v.sort_by(f64::total_cmp);
        println!(
            "| {label} | {:.0} | {:.0} | {} ms | {} ms |",
            percentile(v, 0.5),
            v.last().copied().unwrap_or(0.0),
            t.interval_ms + t.timeout_ms,
            u64::from(t.rise) * 10,
        );
    }
    command.sort_by(f64::total_cmp);
    println!("\nms from the start of the promotion (the mariadb client running STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0, {:.0} ms p50 until the client exited) to the promoted server as the write endpoint, the primary killed before (no write endpoint while it was down); fastinter 10 ms, the promotion window's pace", percentile(&command, 0.5));
    drop(agents);
    // Back to db0 as the primary for what follows.
    if !db0_primary {
        p.replica.kill();
        p.primary.promote().expect("promote db0");
        p.replica.start_again().expect("restart db1");
        p.replica.replicate_from(&p.primary).expect("rejoin db1");
    }
}

/// What a probe costs the server: its CPU (all threads) per probe, less its
/// idle CPU, for each kind of probe alone against the replica.
fn cost(p: &Pair, dir: &std::path::Path, haproxy: &std::path::Path, seconds: f64) {
    let s = &p.replica;
    let idle = {
        let t0 = server_ticks(s);
        std::thread::sleep(Duration::from_secs_f64(seconds));
        (server_ticks(s) - t0) as f64 * 1e3 / clk_tck() / seconds
    };
    let db = |session, user: bool| Database {
        user: if user { "dbha".into() } else { "root".into() },
        password: if user { Secret::new(MONITOR_PW) } else { None },
        sslmode: SslMode::Disable,
        session,
        mysql: Some(dbha_agent::probe::mysql::Settings {
            login: user,
            server_public_key: None,
        }),
        admission_interval: Duration::from_secs(3600),
        ..dbha_tests::fakepg::database(s.port, Check::Mysql, 5000)
    };
    let scale = seconds / 10.0;
    let per_probe = |d: Database, n: u64| {
        let n = ((n as f64 * scale) as u64).max(10);
        let mut prober = Prober::new(d);
        let (t0, a0, start) = (
            server_ticks(s),
            status(s, "Aborted_connects"),
            Instant::now(),
        );
        for _ in 0..n {
            prober.probe().expect("a probe");
        }
        let took = start.elapsed().as_secs_f64();
        let ms = (server_ticks(s) - t0) as f64 * 1e3 / clk_tck() - idle * took;
        (
            ms.max(0.0) / n as f64,
            n,
            status(s, "Aborted_connects") - a0,
        )
    };
    println!("\n| probe (each alone, one right after another, against the replica) | server CPU per probe (ms) | probes | aborted connects | vs held session |");
    println!("|---|---:|---:|---:|---:|");
    let held = per_probe(db(Session::Held, true), 20_000);
    let rows = [
        ("dbha held session: one status query", held),
        (
            "dbha login per probe (mysql_native_password, status query, COM_QUIT)",
            per_probe(db(Session::PerProbe, true), 2000),
        ),
        (
            "dbha greeting only",
            per_probe(db(Session::PerProbe, false), 2000),
        ),
    ];
    for (label, (ms, n, aborted)) in rows {
        println!(
            "| {label} | {ms:.3} | {n} | {aborted} | {:.1}x |",
            ms / held.0.max(1e-9)
        );
    }
    // HAProxy's check, alone, at inter 10ms, counted once it is running.
    let cfg = dir.join("haproxy-cost.cfg");
    let socket = dir.join("haproxy-cost.sock");
    std::fs::write(
        &cfg,
        format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout check 1s\n\
             backend my\n  option mysql-check user haproxy post-41\n  server db1 127.0.0.1:{} check inter 10ms\n",
            socket.display(),
            s.port
        ),
    )
    .unwrap();
    let mut children = Children::default();
    start_haproxy(haproxy, &cfg, &mut children);
    until("HAProxy's checks to pass", || {
        haproxy_says(&socket, "show servers state my")
            .is_some_and(|o| o.lines().any(|l| l.split_whitespace().nth(5) == Some("2")))
    });
    let (t0, c0, a0) = (
        server_ticks(s),
        status(s, "Connections"),
        status(s, "Aborted_connects"),
    );
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (t1, c1, a1) = (
        server_ticks(s),
        status(s, "Connections"),
        status(s, "Aborted_connects"),
    );
    drop(children);
    let took = start.elapsed().as_secs_f64();
    let n = c1 - c0;
    let ms = ((t1 - t0) as f64 * 1e3 / clk_tck() - idle * took).max(0.0) / n.max(1) as f64;
    println!(
        "| HAProxy mysql-check user haproxy post-41 (a login per check) | {ms:.3} | {n} | {} | {:.1}x |",
        a1 - a0,
        ms / held.0.max(1e-9)
    );
    println!("\nmariadbd's CPU (utime + stime of all its threads, /proc) over the run, less its idle CPU ({idle:.2} ms/s), divided by the probes (for HAProxy, by the server's Connections counter)");
}

/// The agent's resident memory and CPU with three MySQL endpoints, held
/// sessions, at interval = 1s.
fn footprint(p: &Pair, dir: &std::path::Path, pw: &std::path::Path, seconds: u64) {
    let t = Timing::example();
    let dbs = [
        ("db0", "127.0.0.1", p.primary.port, "mysql"),
        ("db1", "127.0.0.1", p.replica.port, "mysql"),
        ("db2", "127.0.0.1", p.replica.port, "mysql"),
    ];
    let mut a = AgentProc::start(dir, "footprint", |s| {
        config(
            s,
            &t,
            &dbs,
            &format!(
                "writes = \"primary\"\nreads = \"prefer-standby\"\nuser = \"dbha\"\npassword_file = \"{}\"",
                pw.display()
            ),
        )
    });
    let r = a.reader();
    until_write(&r, "db0");
    std::thread::sleep(Duration::from_secs(2));
    let pid = a.pid().as_raw() as u32;
    let (_, cpu0) = usage(pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (rss, cpu1) = usage(pid);
    let share = (cpu1 - cpu0) / start.elapsed().as_secs_f64();
    println!("\n| endpoints | check | RSS (MiB) | CPU per hour (s) | CPU share of one core |");
    println!("|---:|---|---:|---:|---:|");
    println!(
        "| 3 | mysql, held sessions, interval 1s ({seconds} s) | {:.1} | {:.1} | {:.4}% |",
        rss as f64 / 1024.0,
        share * 3600.0,
        share * 100.0
    );
}
