//! What a probe costs the database server: PostgreSQL's CPU per probe (the
//! postmaster, its live children, and the children it reaped, from /proc) for a
//! held session's status query, a new SCRAM login per probe, and HAProxy's
//! pgsql-check, all against one server in one run, less the server's idle CPU.

use crate::common::{clk_tck, tree_ticks};
use dbha_agent::config::{Check, Database, Secret, Session, SslMode};
use dbha_agent::probe::Prober;
use dbha_harness::pg::Cluster;
use dbha_tests::live::Live;
use dbha_tests::Children;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Clock ticks of CPU the server has used so far: the postmaster's own and its
/// reaped children's, plus every live child's.
fn server_ticks(c: &Cluster) -> u64 {
    c.postmaster_pid()
        .and_then(|p| u32::try_from(p.as_raw()).ok())
        .map_or(0, tree_ticks)
}

/// The server's CPU (ms) over `work`, less what it uses idle in as long.
fn cpu_ms(c: &Cluster, idle_per_s: f64, work: impl FnOnce()) -> (f64, Duration) {
    let (t0, start) = (server_ticks(c), Instant::now());
    work();
    let (t1, took) = (server_ticks(c), start.elapsed());
    let ms = (t1.saturating_sub(t0)) as f64 * 1e3 / clk_tck();
    ((ms - idle_per_s * took.as_secs_f64()).max(0.0), took)
}

/// Connections the server logged (log_connections) so far.
fn connections(c: &Cluster) -> usize {
    std::fs::read_to_string(&c.log_file)
        .unwrap_or_default()
        .matches("connection received:")
        .count()
}

pub fn probecost(quick: bool) {
    let password = "bench-password";
    let Some(mut live) = Live::replicated("db", &[], "scram-sha-256", Some(password)) else {
        eprintln!("dbha-bench probe-cost needs the PostgreSQL server (apt-get install postgresql)");
        std::process::exit(1);
    };
    // Every connection logged: how HAProxy's checks are counted.
    let c = &mut live.clusters[0];
    c.set("log_connections=on");
    c.stop(dbha_harness::pg::StopMode::Fast).expect("stop");
    c.start().expect("start with log_connections");
    let c = live.cluster("db");
    let db = |session, interval| Database {
        alias: "db".into(),
        host: c.host.clone(),
        port: c.port,
        check: Check::Postgres,
        interval,
        fastinter: Duration::from_millis(10),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        rise: 2,
        fall: 2,
        session,
        session_lifetime: Duration::from_secs(3600),
        admission_interval: interval * 5,
        max_replica_lag: None,
        max_replica_lag_bytes: None,
        max_replica_lag_transactions: None,
        user: "postgres".into(),
        dbname: "postgres".into(),
        password: Secret::new(password),
        password_source: Some("bench".into()),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        allow_cleartext_password: false,
        patroni: None,
        mysql: None,
        member: None,
    };
    let (held_n, login_n, window) = if quick {
        (300, 30, Duration::from_secs(1))
    } else {
        (20_000, 1_000, Duration::from_secs(10))
    };
    // The server idle (its background processes), to subtract.
    let (idle_ms, _) = cpu_ms(c, 0.0, || std::thread::sleep(window));
    let idle_per_s = idle_ms / window.as_secs_f64();

    let second = Duration::from_secs(1);
    let mut held = Prober::new(db(Session::Held, second));
    held.probe().expect("a held session");
    let (held_ms, held_took) = cpu_ms(c, idle_per_s, || {
        for _ in 0..held_n {
            held.probe().expect("a probe on the held session");
        }
    });
    drop(held);

    // The admission check (a startup message on a new connection, no login),
    // which a held session's probe adds every `admission_interval`: at 0 it is
    // due at every probe.
    let mut admitting = Prober::new(db(Session::Held, Duration::ZERO));
    admitting.probe().expect("a held session");
    let (admit_ms, admit_took) = cpu_ms(c, idle_per_s, || {
        for _ in 0..login_n {
            admitting.probe().expect("a probe with the admission check");
        }
    });
    drop(admitting);

    let mut login = Prober::new(db(Session::PerProbe, second));
    let (login_ms, login_took) = cpu_ms(c, idle_per_s, || {
        for _ in 0..login_n {
            login.probe().expect("a probe with a new login");
        }
    });

    // HAProxy's pgsql-check at its fastest useful pace, counted by the server's
    // connection log.
    let haproxy = dbha_tests::require(
        "haproxy",
        "for HAProxy's pgsql-check (apt-get install haproxy)",
    );
    let check_row = haproxy.map(|bin| {
        let cfg = live.dir.path().join("probecost-haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  stats socket {} mode 600 level admin\n\
                 defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout check 1s\n\
                 backend pg\n  option pgsql-check user postgres\n  server db {}:{} check inter 10ms\n",
                live.dir.path().join("probecost-haproxy.sock").display(),
                c.host,
                c.port
            ),
        )
        .unwrap();
        let mut children = Children::default();
        let n0 = connections(c);
        let (ms, took) = cpu_ms(c, idle_per_s, || {
            children.push(
                Command::new(bin)
                    .args(["-db", "-f"])
                    .arg(&cfg)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start haproxy"),
            );
            std::thread::sleep(window);
            drop(children);
        });
        let checks = connections(c).saturating_sub(n0).max(1);
        (ms, took, checks)
    });

    let per = |ms: f64, n: usize| ms * 1e3 / n as f64;
    let held_us = per(held_ms, held_n);
    let login_us = per(login_ms, login_n);
    let admit_us = (per(admit_ms, login_n) - held_us).max(0.0);
    println!("| probe | probes | server CPU (ms) | server CPU per probe (µs) | vs a new login per probe |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| held session: one status query | {held_n} in {:.1} s | {held_ms:.0} | {held_us:.1} | 1/{:.0} |",
        held_took.as_secs_f64(),
        login_us / held_us.max(0.001)
    );
    println!(
        "| held session and the admission check (status query, then a new connection's startup message, no login) | {login_n} in {:.1} s | {admit_ms:.0} | {:.0} (check alone: {admit_us:.0}) | {:.2} |",
        admit_took.as_secs_f64(),
        per(admit_ms, login_n),
        per(admit_ms, login_n) / login_us
    );
    println!(
        "| new connection and SCRAM login per probe | {login_n} in {:.1} s | {login_ms:.0} | {login_us:.0} | 1 |",
        login_took.as_secs_f64()
    );
    if let Some((ms, took, checks)) = check_row {
        let us = per(ms, checks);
        println!(
            "| HAProxy pgsql-check (startup message, no login) | {checks} in {:.1} s | {ms:.0} | {us:.0} | {:.2} |",
            took.as_secs_f64(),
            us / login_us
        );
    }
    // The held session is reopened every session_lifetime (60 s by default), and
    // checks admission every admission_interval (10 s by default).
    let amortized = held_us + login_us / 60.0 + admit_us / 10.0;
    let without_admission = held_us + login_us / 60.0;
    println!(
        "\nat interval = 1s, with the session reopened every 60 s (session_lifetime) and the admission check every 10 s (admission_interval): {amortized:.1} µs per probe, 1/{:.0} of a login per probe ({without_admission:.1} µs, 1/{:.0}, without the admission check)",
        login_us / amortized,
        login_us / without_admission
    );
    println!(
        "server idle: {idle_per_s:.1} ms of CPU per second, subtracted; PostgreSQL {}, SCRAM-SHA-256, loopback; /proc ticks of {:.0} Hz",
        dbha_harness::pg::find().ok().and_then(|i| i.version()).map_or("?".into(), |v| v.to_string()),
        clk_tck()
    );
}

/// What a failover window costs the standbys: a primary with two streaming
/// standbys and the agent at the example's settings (interval 1 s, fastinter
/// 10 ms, `promotion_window` 60 s); the primary stopped and nothing promoted,
/// so the agent probes the standbys at fastinter for the whole window. Per
/// standby: probes per second (the agent's counter), new connections per second
/// (the server's log) and CPU per second, before the window, during it, and
/// after it; for held sessions (the default) and a connection per probe.
pub fn window(quick: bool, seconds: u64) {
    let (steady, window) = if quick {
        (Duration::from_secs(2), Duration::from_secs(3))
    } else {
        (Duration::from_secs(10), Duration::from_secs(seconds))
    };
    println!("| session | phase | probes/s per standby | new connections/s per standby | standby CPU ms/s |");
    println!("|---|---|---:|---:|---:|");
    for session in ["held", "per-probe"] {
        let Some(mut live) =
            Live::replicated("default", &["failover1", "failover2"], "trust", None)
        else {
            eprintln!("dbha-bench window needs the PostgreSQL server (apt-get install postgresql)");
            std::process::exit(1);
        };
        for c in &mut live.clusters[1..] {
            c.set("log_connections=on");
            c.stop(dbha_harness::pg::StopMode::Fast).expect("stop");
            c.start().expect("start with log_connections");
        }
        let port = dbha_harness::pg::free_port("127.0.0.1").unwrap();
        let addr = format!("127.0.0.1:{port}");
        let extra = format!(
            "writes = \"primary\"\nreads = \"prefer-standby\"\nsession = \"{session}\"\npromotion_window = \"{}s\"\nmetrics_listen = \"{addr}\"",
            window.as_secs()
        );
        let agent = dbha_tests::agentproc::AgentProc::start(live.dir.path(), "agent", |s| {
            dbha_tests::agentproc::config(
                s,
                &dbha_tests::agentproc::Timing::example(),
                &live.dbs("postgres"),
                &extra,
            )
        });
        let r = agent.reader();
        crate::common::until("all three up", || {
            r.snapshot().is_ok_and(|s| s.health_mask == 0b111)
        });
        let standby = live.cluster("failover1");
        let probes = || {
            dbha_tests::metrics::metric(
                &dbha_tests::metrics::http_get(&addr, "/metrics"),
                "dbha_probes_total{alias=\"failover1\"}",
            )
        };
        let (idle_ms, _) = (0.0, ());
        let phase = |name: &str, span: Duration| {
            let (p0, n0) = (probes(), connections(standby));
            let (ms, took) = cpu_ms(standby, idle_ms, || std::thread::sleep(span));
            let s = took.as_secs_f64();
            println!(
                "| {session} | {name} | {:.1} | {:.1} | {:.2} |",
                (probes() - p0) / s,
                connections(standby).saturating_sub(n0) as f64 / s,
                ms / s
            );
        };
        phase("writes on the primary, at interval", steady);
        live.cluster("default")
            .stop(dbha_harness::pg::StopMode::Immediate)
            .expect("stop the primary");
        crate::common::until("reads only", || {
            r.snapshot()
                .is_ok_and(|s| s.status == dbha::Status::ReadOnly)
        });
        phase("no primary: the window (promotion_window)", window);
        // The window has ended by now (it began at the stop).
        std::thread::sleep(Duration::from_millis(200));
        phase("no primary, after promotion_window", steady);
    }
    println!(
        "\nThe agent at interval 1 s, fastinter 10 ms, admission_interval 10 s; each row measured over {steady:?} (steady phases) or {window:?} (the window, = promotion_window); CPU: the standby's postmaster and its children (background processes included), from /proc"
    );
}
