//! The agent's detection: a refused connection to the switch a reader sees
//! (`switch`), and live PostgreSQL servers stopped and frozen (`live`), probed
//! with a connection per probe (held sessions: `haproxy`).

use crate::common::{live_setup, open_reader, percentile, spawn_agent, summary_row, until_write};
use dbha_harness::pg::{Scratch, StopMode};
use dbha_harness::Listener;
use dbha_tests::agentproc::{config, AgentProc};
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
    let (mut stopped, mut frozen) = (Vec::new(), Vec::new());
    for i in 0..trials {
        // Vary the fault's phase against the probe schedule.
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % t.interval_ms));
        // pg_ctl signals the server at once, then waits for it to exit: the
        // reader is watched from before, on its own thread.
        let fault = Instant::now();
        let took = std::thread::scope(|sc| {
            let watcher = sc.spawn(|| {
                until_write(&r, "failover1");
                fault.elapsed()
            });
            default.stop(StopMode::Immediate).unwrap();
            watcher.join().unwrap()
        });
        stopped.push(took.as_secs_f64() * 1e3);
        default.start().unwrap();
        until_write(&r, "default");
    }
    for i in 0..trials {
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % t.interval_ms));
        default.freeze();
        let fault = Instant::now();
        until_write(&r, "failover1");
        frozen.push(fault.elapsed().as_secs_f64() * 1e3);
        default.thaw();
        until_write(&r, "default");
    }
    println!("| fault (per-probe, interval=100ms, fastinter=10ms, timeout=200ms, fall=2, rise=2) | trials | p50 ms | p99 ms | min ms | max ms | expected |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    summary_row(
        "default stopped (pg_ctl stop -m immediate)",
        &mut stopped,
        "phase (0-100) + (fall-1) x fastinter: 10-110",
    );
    summary_row(
        "default frozen (SIGSTOP)",
        &mut frozen,
        "phase (0-100) + fall x timeout: 400-500",
    );
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
    let mut times = Vec::with_capacity(trials);
    for i in 0..trials {
        // Vary the fault's phase against the probe schedule.
        std::thread::sleep(Duration::from_millis(150 + (i as u64 * 37) % interval_ms));
        a = None;
        times.push(until_write(&r, "failover1").as_secs_f64() * 1e3);
        a = a.or_else(|| Listener::bind(pa).ok());
        assert!(a.is_some(), "cannot reopen port {pa}");
        until_write(&r, "default");
    }
    drop((a, b, children));
    times.sort_by(f64::total_cmp);
    let fastinter = dbha_agent::config::default_fastinter(Duration::from_millis(interval_ms));
    let expected = (fall - 1) as f64 * fastinter.as_secs_f64() * 1e3;
    println!("| refused connection -> reader switch (interval={interval_ms}ms, fastinter={}ms, fall={fall}, {trials} trials) | ms |", fastinter.as_millis());
    println!("|---|---:|");
    println!("| p50 | {:.1} |", percentile(&times, 0.5));
    println!("| p99 | {:.1} |", percentile(&times, 0.99));
    println!("| min | {:.1} |", times[0]);
    println!("| max | {:.1} |", times[times.len() - 1]);
    println!(
        "| expected: phase (0-{interval_ms}) + (fall - 1) x fastinter | {expected:.1}-{:.1} |",
        expected + interval_ms as f64
    );
}
