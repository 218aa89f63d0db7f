//! The agent's detection: a refused connection to the switch a reader sees
//! (`switch`), and live PostgreSQL servers stopped and frozen (`live`), probed
//! with a connection per probe (held sessions: `haproxy`), each timed to two
//! events: the write endpoint no longer handed out (NONE, at once), and writes
//! on `failover1` (once `default` was down for its tolerance, `fall` x
//! `interval`); and a primary restart at the shipped example's settings
//! (`restart`).

use crate::common::{
    live_setup, open_reader, percentile, spawn_agent, summary_row, until_write, until_write_leaves,
};
use dbha_harness::pg::{Scratch, StopMode};
use dbha_harness::Listener;
use dbha_tests::agentproc::Timing;
use dbha_tests::agentproc::{config, AgentProc};
use dbha_tests::live::Live;
use dbha_tests::trace::Trace;
use dbha_tests::Children;
use std::time::{Duration, Instant};

pub fn live(trials: usize) {
    let (live, t) = live_setup("live");
    let agent = AgentProc::start(live.dir.path(), "agent", |s| {
        config(s, &t, &live.dbs("postgres"), "session = \"per-probe\"")
    });
    let r = agent.reader();
    until_write(&r, "default");
    let default = live.cluster("default");
    // (no longer handed out, writes moved) per trial, in ms.
    let (mut stopped, mut frozen) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for i in 0..trials {
        // Vary the fault's phase against the probe schedule.
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % t.interval_ms));
        // pg_ctl signals the server at once, then waits for it to exit: the
        // reader is watched from before, on its own thread.
        let fault = Instant::now();
        let (left, moved) = std::thread::scope(|sc| {
            let watcher = sc.spawn(|| {
                until_write_leaves(&r, "default");
                let left = fault.elapsed();
                until_write(&r, "failover1");
                (left, fault.elapsed())
            });
            default.stop(StopMode::Immediate).unwrap();
            watcher.join().unwrap()
        });
        stopped.0.push(ms(left));
        stopped.1.push(ms(moved));
        default.start().unwrap();
        until_write(&r, "default");
    }
    for i in 0..trials {
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % t.interval_ms));
        default.freeze();
        let fault = Instant::now();
        frozen.0.push(ms(until_write_leaves(&r, "default")));
        until_write(&r, "failover1");
        frozen.1.push(ms(fault.elapsed()));
        default.thaw();
        until_write(&r, "default");
    }
    let tolerance = u64::from(t.fall) * t.interval_ms;
    println!("| fault (per-probe, interval=100ms, fastinter=10ms, timeout=200ms, fall=2, rise=2) | trials | p50 ms | p99 ms | min ms | max ms | expected |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    summary_row(
        "default stopped (pg_ctl stop -m immediate): no longer handed out",
        &mut stopped.0,
        "phase (0-100) + (fall-1) x fastinter: 10-110",
    );
    summary_row(
        "default stopped: writes on failover1",
        &mut stopped.1,
        &format!(
            "phase (0-100) + fall x interval ({tolerance}) + up to one heartbeat (0-100): 200-400"
        ),
    );
    summary_row(
        "default frozen (SIGSTOP): no longer handed out",
        &mut frozen.0,
        "phase (0-100) + fall x timeout: 400-500",
    );
    summary_row(
        "default frozen: writes on failover1",
        &mut frozen.1,
        &format!("as no longer handed out: fall failed probes of a timeout each already span fall x interval ({tolerance}): 400-500"),
    );
}

/// A primary restart (`pg_ctl restart -m fast`) under the shipped example's
/// settings (held sessions, interval 1s, fall 3, rise 2, sticky), with writes =
/// "any" and writes = "primary": where writes went while it restarted, and how
/// long readers had none beyond the restart itself.
pub fn restart(trials: usize) {
    let t = Timing::example();
    println!("| writes (held sessions, interval=1s, fastinter=10ms, fall=3, rise=2, sticky) | trials | restart p50 ms | writes NONE p50 / max ms | NONE beyond the restart, max ms | trials where writes left the primary |");
    println!("|---|---:|---:|---:|---:|---:|");
    for writes in ["any", "primary"] {
        let Some(live) = Live::replicated("default", &["failover1"], "trust", None) else {
            eprintln!(
                "dbha-bench restart needs the PostgreSQL server (apt-get install postgresql)"
            );
            std::process::exit(1);
        };
        let agent = AgentProc::start(live.dir.path(), "agent", |s| {
            config(
                s,
                &t,
                &live.dbs("postgres"),
                &format!("writes = \"{writes}\""),
            )
        });
        let r = agent.reader();
        until_write(&r, "default");
        let default = live.cluster("default");
        let (mut restarts, mut nones, mut beyond, mut left) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        for i in 0..trials {
            // Both up, and the pace back at interval, before each restart.
            crate::common::until("both up", || {
                r.snapshot().is_ok_and(|s| s.health_mask == 0b11)
            });
            std::thread::sleep(Duration::from_millis(1500 + (i as u64 * 137) % 1000));
            let trace = Trace::start(&agent.state);
            let took = default.restart(StopMode::Fast).expect("pg_ctl restart");
            until_write(&r, "default");
            // Past the tolerance (3 s): a move would have happened.
            std::thread::sleep(Duration::from_millis(3500));
            let end = Instant::now();
            let traced = trace.finish();
            let none = traced.longest_without_writes(end);
            restarts.push(took.as_secs_f64() * 1e3);
            nones.push(none.as_secs_f64() * 1e3);
            beyond.push((none.as_secs_f64() - took.as_secs_f64()) * 1e3);
            left += usize::from(
                traced
                    .writes()
                    .iter()
                    .any(|w| matches!(w, Some(a) if *a != "default")),
            );
        }
        for v in [&mut restarts, &mut nones, &mut beyond] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "| {writes} | {trials} | {:.0} | {:.0} / {:.0} | {:.0} | {left} |",
            percentile(&restarts, 0.5),
            percentile(&nones, 0.5),
            nones[nones.len() - 1],
            beyond[beyond.len() - 1].max(0.0),
        );
    }
    println!("
the restart is timed from pg_ctl stop to pg_ctl start returning (the server accepts connections again); NONE is the longest stretch a reader sampling every 200 µs saw no write endpoint; target: writes never leave the primary, and under writes = \"primary\" NONE for at most the restart plus one fastinter (10 ms)");
}

pub fn switch(trials: usize) {
    let scratch = Scratch::new("bench-switch").unwrap();
    let dir = scratch.path();
    let (interval_ms, timeout_ms, fall) = (100, 200, 2);
    let a = Listener::bind(0).unwrap();
    let b = Listener::bind(0).unwrap();
    let (pa, pb) = (a.port, b.port);
    let config = format!(
        "state_file = \"{}\"\ninterval = \"{interval_ms}ms\"\ntimeout = \"{timeout_ms}ms\"\nrise = 2\nfall = {fall}\nfailback = \"auto\"\n\
         [[database]]\nalias = \"default\"\nhost = \"127.0.0.1\"\nport = {pa}\ncheck = \"tcp\"\n\
         [[database]]\nalias = \"failover1\"\nhost = \"127.0.0.1\"\nport = {pb}\ncheck = \"tcp\"\n",
        dir.join("state").display()
    );
    let mut children = Children::default();
    let state = spawn_agent(dir, &config, &mut children);
    let r = open_reader(&state);
    until_write(&r, "default");
    let mut a = Some(a);
    // (no longer handed out, writes moved) per trial, in ms.
    let (mut left, mut moved) = (Vec::with_capacity(trials), Vec::with_capacity(trials));
    for i in 0..trials {
        // Vary the fault's phase against the probe schedule.
        std::thread::sleep(Duration::from_millis(150 + (i as u64 * 37) % interval_ms));
        a = None;
        let fault = Instant::now();
        left.push(until_write_leaves(&r, "default").as_secs_f64() * 1e3);
        until_write(&r, "failover1");
        moved.push(fault.elapsed().as_secs_f64() * 1e3);
        a = a.or_else(|| Listener::bind(pa).ok());
        assert!(a.is_some(), "cannot reopen port {pa}");
        until_write(&r, "default");
    }
    drop((a, b, children));
    let fastinter = dbha_agent::config::default_fastinter(Duration::from_millis(interval_ms));
    let expected = (fall - 1) as f64 * fastinter.as_secs_f64() * 1e3;
    let tolerance = fall as f64 * interval_ms as f64;
    println!("| refused connection (interval={interval_ms}ms, fastinter={}ms, fall={fall}, {trials} trials) | no longer handed out, ms | writes on failover1, ms |", fastinter.as_millis());
    println!("|---|---:|---:|");
    for v in [&mut left, &mut moved] {
        v.sort_by(f64::total_cmp);
    }
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            percentile(&left, p),
            percentile(&moved, p)
        );
    }
    println!("| min | {:.1} | {:.1} |", left[0], moved[0]);
    println!(
        "| max | {:.1} | {:.1} |",
        left[left.len() - 1],
        moved[moved.len() - 1]
    );
    // The move is published at the first report or heartbeat (every interval)
    // after the tolerance has passed.
    println!(
        "| expected | phase (0-{interval_ms}) + (fall - 1) x fastinter: {expected:.1}-{:.1} | phase (0-{interval_ms}) + fall x interval + up to one heartbeat (0-{interval_ms}): {tolerance:.0}-{:.0} |",
        expected + interval_ms as f64,
        tolerance + 2.0 * interval_ms as f64
    );
}
