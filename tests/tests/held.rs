//! Held sessions, the postgres check's default: a server that closes the probe's
//! session is seen at once rather than at the next probe; a lost session alone
//! moves nothing; a promotion, a freeze, a blackhole, a restart and a smart
//! shutdown are still seen; a standby whose replay is paused leaves the reads.
//! Real PostgreSQL clusters and the real agent. Time bounds only catch hangs,
//! except where a bound far below `interval` is what shows that the session, and
//! not a scheduled probe, saw the fault. Figures: `dbha-bench held` (BENCHMARKS.md).

use dbha::Reader;
use dbha_harness::pg::{Cluster, StopMode};
use dbha_tests::agentproc::{config, wait_for, wait_write, wait_write_leaves, AgentProc, Timing};
use dbha_tests::live::Live;
use dbha_tests::netfault::Blackhole;
use dbha_tests::trace::Trace;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Probes every `interval_ms`, a 1 s timeout, rise and fall 2.
fn timing(interval_ms: u64) -> Timing {
    Timing {
        interval_ms,
        timeout_ms: 1000,
        rise: 2,
        fall: 2,
        stale_after_ms: interval_ms * 3,
        failback: "sticky",
    }
}

/// The agent on every cluster of `live`, with `extra` configuration, and a
/// reader on its state file.
fn start(live: &Live, t: &Timing, extra: &str) -> (AgentProc, Reader) {
    let agent = AgentProc::start(live.dir.path(), "agent", |s| {
        config(s, t, &live.dbs("postgres"), extra)
    });
    let r = agent.reader();
    (agent, r)
}

/// `dbha-agent status` on the agent's state file; `json` for `--json`.
fn status(agent: &AgentProc, json: bool) -> String {
    let mut cmd = std::process::Command::new(dbha_tests::agent_bin());
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.arg("--state").arg(&agent.state).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The `replica_lag` that `status --json` shows for endpoint `index`.
fn status_lag(agent: &AgentProc, index: usize) -> serde_json::Value {
    let j: serde_json::Value = serde_json::from_str(&status(agent, true)).unwrap();
    j["endpoints"][index]["replica_lag"].clone()
}

/// The human `status` output.
fn status_table(agent: &AgentProc) -> String {
    status(agent, false)
}

/// The pid of the agent's session on `c`, once there is exactly one.
fn agent_session(c: &Cluster) -> u32 {
    wait_for(&format!("one dbha-agent session on {}", c.name), || {
        let out = c
            .psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'dbha-agent'")
            .ok()?;
        let pids: Vec<u32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        match pids[..] {
            [pid] => Some(pid),
            _ => None,
        }
    })
}

#[test]
fn a_crash_is_seen_through_the_held_session_long_before_the_next_probe() {
    let Some(live) = Live::start(&["default", "failover1"]) else {
        return;
    };
    // Probes every 30 s: only the session's close can explain a switch in less.
    let t = timing(30_000);
    let (agent, r) = start(&live, &t, "");
    wait_write(&r, "default");
    let default = live.cluster("default");
    agent_session(default);
    wait_for("both verdicts", || {
        (r.snapshot().ok()?.health_mask == 0b11).then_some(())
    });
    // Well away from the probe that made the last verdict.
    std::thread::sleep(Duration::from_secs(1));
    let crash = Instant::now();
    default.stop(StopMode::Immediate).unwrap();
    // No longer handed to readers at once; writes move to failover1 only after
    // default's tolerance (fall x interval, a minute here).
    assert_eq!(wait_write_leaves(&r, "default"), None);
    let took = crash.elapsed();
    println!(
        "immediate stop -> default no longer handed out: {} ms at interval 30 s",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: the verdict waited for a scheduled probe\n{}",
        agent.log()
    );
    agent.wait_log("default: session lost");
    agent.wait_log("default: down after 2 failed probes");
}

#[test]
fn terminating_the_probes_session_alone_does_not_move_the_app() {
    let Some(live) = Live::start(&["default", "failover1"]) else {
        return;
    };
    let t = timing(30_000);
    let (agent, r) = start(&live, &t, "");
    wait_write(&r, "default");
    let default = live.cluster("default");
    let before = agent_session(default);
    let trace = Trace::start(&agent.state);
    let killed = Instant::now();
    default
        .psql(&format!("SELECT pg_terminate_backend({before})"))
        .unwrap();
    // A new session long before the next scheduled probe (30 s): the loss was
    // seen, and the fast re-probe found the server fine.
    let after = wait_for("a new session", || {
        Some(agent_session(default)).filter(|&p| p != before)
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "reconnected after {took:?}");
    agent.wait_log("default: session lost");
    std::thread::sleep(Duration::from_millis(500));
    let traced = trace.finish();
    assert_eq!(
        traced.writes(),
        [Some("default")],
        "writes moved on a lost session alone\n{}",
        agent.log()
    );
    assert!(!agent.log().contains("default: down"), "{}", agent.log());
    println!(
        "session {before} terminated, {after} opened {} ms later",
        took.as_millis()
    );
}

#[test]
fn a_promotion_is_seen_through_the_same_held_session() {
    let Some(live) = Live::replicated("primary", &["standby"], "trust", None) else {
        return;
    };
    let t = timing(200);
    let (_agent, r) = start(
        &live,
        &t,
        "writes = \"primary\"\nreads = \"prefer-standby\"",
    );
    wait_write(&r, "primary");
    wait_for("reads on the standby", || {
        (r.read_alias()? == "standby").then_some(())
    });
    let standby = live.cluster("standby");
    let session = agent_session(standby);
    live.cluster("primary").stop(StopMode::Fast).unwrap();
    wait_for("writes NONE", || r.write_alias().is_none().then_some(()));
    standby.promote().unwrap();
    wait_write(&r, "standby");
    assert_eq!(
        agent_session(standby),
        session,
        "the role change was not seen through the held session"
    );
}

#[test]
fn a_frozen_and_a_blackholed_server_are_still_detected() {
    let Some(live) = Live::start(&["default", "failover1"]) else {
        return;
    };
    let Some(blackhole) = Blackhole::for_port(live.cluster("failover1").port) else {
        return;
    };
    // A 300 ms timeout and 1 s interval: detection within about fall x timeout
    // plus the interval's phase; the bound here is ten times that.
    let t = Timing {
        timeout_ms: 300,
        ..timing(1000)
    };
    let bound = Duration::from_millis(10 * (2 * 300 + 1000));
    let (agent, r) = start(&live, &t, "");
    wait_write(&r, "default");
    agent_session(live.cluster("failover1"));
    let default = live.cluster("default");
    let fault = Instant::now();
    default.freeze();
    wait_write(&r, "failover1");
    let frozen = fault.elapsed();
    default.thaw();
    wait_for("default up again", || {
        r.snapshot().ok()?.is_healthy(0).then_some(())
    });
    // Sticky: writes stay on failover1, which is now blackholed.
    let fault = Instant::now();
    blackhole.on();
    wait_write(&r, "default");
    let blackholed = fault.elapsed();
    blackhole.off();
    println!(
        "freeze -> switch {} ms, blackhole -> switch {} ms (timeout 300 ms, fall 2, interval 1 s)",
        frozen.as_millis(),
        blackholed.as_millis()
    );
    assert!(frozen < bound && blackholed < bound, "{}", agent.log());
}

#[test]
fn a_standby_with_paused_replay_leaves_the_reads_and_returns_after_resume() {
    let Some(live) = Live::replicated("primary", &["standby"], "trust", None) else {
        return;
    };
    let t = timing(200);
    let metrics = format!(
        "127.0.0.1:{}",
        dbha_harness::pg::free_port("127.0.0.1").unwrap()
    );
    let (agent, r) = start(
        &live,
        &t,
        &format!("writes = \"primary\"\nreads = \"prefer-standby\"\nmax_replica_lag = \"1s\"\nmetrics_listen = \"{metrics}\""),
    );
    // A metric's value, once the metrics endpoint serves it.
    let gauge = |line: &str| -> Option<f64> {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&metrics).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        c.read_to_string(&mut text).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
    };
    let on_standby = || (r.read_alias()? == "standby").then_some(());
    wait_for("reads on the standby", on_standby);
    let (primary, standby) = (live.cluster("primary"), live.cluster("standby"));
    primary.psql("CREATE TABLE load (x int)").unwrap();
    // Paused once the standby has replayed a transaction: its replay delay is
    // the age of the last one (unknown before any).
    wait_for("the table on the standby", || {
        let found = standby
            .psql("SELECT to_regclass('load') IS NOT NULL")
            .ok()?;
        (found.trim() == "t").then_some(())
    });
    standby.psql("SELECT pg_wal_replay_pause()").unwrap();
    // Commits keep coming; the standby receives them and does not replay them.
    let stop = AtomicBool::new(false);
    /// Stops the writer however the test ends: a failed assertion must not
    /// leave the scope waiting for it forever.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = primary.psql("INSERT INTO load VALUES (1)");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        wait_for("reads off the lagging standby", || {
            (r.read_alias()? == "primary").then_some(())
        });
        agent.wait_log("standby: replication lag over the limit");
        // The lag is shown where operators look: the metrics.
        wait_for("the lagging gauge at 1", || {
            (gauge("dbha_endpoint_lagging{alias=\"standby\"}")? == 1.0).then_some(())
        });
        let lag = gauge("dbha_endpoint_replica_lag_seconds{alias=\"standby\"}");
        assert!(lag.is_some_and(|l| l > 1.0), "{lag:?}");
        assert_eq!(gauge("dbha_endpoint_lagging{alias=\"primary\"}"), Some(0.0));
        // And in `dbha-agent status`, read from the state file.
        let lag = status_lag(&agent, 1);
        assert_eq!(lag["lagging"], true, "{lag}");
        assert!(lag["seconds"].as_f64().is_some_and(|l| l > 1.0), "{lag}");
        assert!(lag["bytes"].as_u64().is_some(), "{lag}");
        assert_eq!(status_lag(&agent, 0), serde_json::Value::Null, "a primary");
        let table = status_table(&agent);
        let row = table.lines().find(|l| l.contains(" standby ")).unwrap();
        assert!(row.ends_with("(over the limit: no reads)"), "{table}");
        standby.psql("SELECT pg_wal_replay_resume()").unwrap();
        wait_for("reads back on the standby", on_standby);
        agent.wait_log("standby: replication lag within the limit again");
        wait_for("the lagging gauge back to 0", || {
            (gauge("dbha_endpoint_lagging{alias=\"standby\"}")? == 0.0).then_some(())
        });
        wait_for("status shows the standby within the limit", || {
            (status_lag(&agent, 1)["lagging"] == false).then_some(())
        });
    });
}

#[test]
fn a_restarted_server_gets_a_new_session() {
    let Some(live) = Live::start(&["default", "failover1"]) else {
        return;
    };
    // A server that went down is probed every interval (1 s here), as HAProxy
    // probes a down server every `downinter`; its first success brings fast
    // probes until `rise`.
    let t = timing(1000);
    let (agent, r) = start(&live, &t, "");
    wait_write(&r, "default");
    let default = live.cluster("default");
    let before = agent_session(default);
    default.stop(StopMode::Fast).unwrap();
    agent.wait_log("default: session lost");
    wait_for("default down", || {
        (!r.snapshot().ok()?.is_healthy(0)).then_some(())
    });
    default.start().unwrap();
    wait_for("default up again", || {
        r.snapshot().ok()?.is_healthy(0).then_some(())
    });
    assert_ne!(
        before,
        agent_session(default),
        "the same session after a restart"
    );
}

#[test]
fn a_smart_shutdown_is_seen_when_the_session_is_renewed_and_never_waits_on_the_agent() {
    let Some(live) = Live::start(&["default", "failover1"]) else {
        return;
    };
    let t = timing(200);
    let (_agent, r) = start(&live, &t, "session_lifetime = \"1s\"");
    wait_write(&r, "default");
    let default = live.cluster("default");
    agent_session(default);
    // A smart shutdown lets sessions run, the agent's too, and refuses new ones
    // (57P03). The agent renews its session within a second: it is refused, and
    // the shutdown no longer waits on it.
    default.begin_stop(StopMode::Smart).unwrap();
    wait_write(&r, "failover1");
    wait_for("the smart shutdown to complete", || {
        default.postmaster_pid().is_none().then_some(())
    });
}
