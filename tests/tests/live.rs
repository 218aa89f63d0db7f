//! Live failover scenarios: three real PostgreSQL clusters (`default`, `failover1`,
//! `failover2`), the real `dbha-agent`, and the Rust reader, asserting what a reader
//! sees and when. Each scenario prints its measured fault-to-switch time; the only
//! time assertions are generous bounds (10x the expected detection time) that catch
//! hangs. The precise figures come from `dbha-bench live` (BENCHMARKS.md).

use dbha::Status;
use dbha_harness::pg::StopMode;
use dbha_tests::agentproc::{config, wait_for, wait_write, wait_write_leaves, AgentProc, Timing};
use dbha_tests::live::Live;
use dbha_tests::trace::{Trace, Traced};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["default", "failover1", "failover2"];

fn timing() -> Timing {
    Timing::live("sticky")
}

/// Three clusters and one agent with the postgres check.
fn setup(t: &Timing) -> Option<(Live, AgentProc)> {
    let live = Live::start(&NAMES)?;
    let agent = AgentProc::start(live.dir.path(), "agent", |state| {
        config(state, t, &live.dbs("postgres"), "")
    });
    Some((live, agent))
}

/// Asserts a measured detection time stays within 10x what the settings allow.
fn within_bound(what: &str, took: Duration, t: &Timing) {
    let bound = t.detection_bound() * 10;
    println!(
        "{what}: {} ms (bound for hangs: {} ms)",
        took.as_millis(),
        bound.as_millis()
    );
    assert!(
        took < bound,
        "{what} took {took:?}, more than 10x the expected {:?}",
        t.detection_bound()
    );
}

#[test]
fn s1_default_stopped_immediately_is_left_at_once_and_replaced_after_its_tolerance() {
    let t = timing();
    let Some((live, agent)) = setup(&t) else {
        return;
    };
    let r = agent.reader();
    let e0 = wait_write(&r, "default");
    let fault = Instant::now();
    live.cluster("default").stop(StopMode::Immediate).unwrap();
    assert_eq!(wait_write_leaves(&r, "default"), None);
    let left = fault.elapsed();
    let e1 = wait_write(&r, "failover1");
    let moved = fault.elapsed();
    within_bound("s1 default stopped -> no longer handed out", left, &t);
    within_bound("s1 default stopped -> failover1", moved, &t);
    // Unavailable (NONE), then replaced once down for fall x interval.
    assert_eq!(e1, e0 + 2);
    assert!(moved >= Duration::from_millis(u64::from(t.fall) * t.interval_ms));
    // The held session saw the close; the reconnection right after it met the
    // dying server (closed, or its postmaster's 57P03 while it exits) or
    // nothing (refused).
    agent.wait_log("default: session lost");
    agent.wait_log("default: down after 2 failed probes (");
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("default: down after 2 failed probes ("))
        .unwrap();
    assert!(
        line.ends_with("(connection refused)")
            || line.ends_with("(connection closed before any answer)")
            || line.ends_with("(not ready (57P03: the database system is shutting down))"),
        "{line}"
    );
}

#[test]
fn s2_default_and_failover1_stopped_switches_to_failover2() {
    let t = timing();
    let Some((live, agent)) = setup(&t) else {
        return;
    };
    let r = agent.reader();
    wait_write(&r, "default");
    let fault = Instant::now();
    live.cluster("default").stop(StopMode::Immediate).unwrap();
    live.cluster("failover1").stop(StopMode::Immediate).unwrap();
    wait_write(&r, "failover2");
    within_bound(
        "s2 default+failover1 stopped -> failover2",
        fault.elapsed(),
        &t,
    );
    let s = r.snapshot().unwrap();
    assert!(!s.is_healthy(0) && !s.is_healthy(1) && s.is_healthy(2));
}

#[test]
fn s3_all_stopped_is_none_then_the_first_one_back_becomes_active_after_rise() {
    let t = timing();
    let Some((live, agent)) = setup(&t) else {
        return;
    };
    let r = agent.reader();
    wait_write(&r, "default");
    let fault = Instant::now();
    for c in &live.clusters {
        c.stop(StopMode::Immediate).unwrap();
    }
    wait_for("no healthy database", || {
        let s = r.snapshot().ok()?;
        (s.status == Status::NoHealthyDatabase && s.health_mask == 0).then_some(())
    });
    within_bound("s3 all stopped -> NONE", fault.elapsed(), &t);
    assert_eq!(r.write_alias(), None);
    agent.wait_log("no healthy database, publishing NONE");

    live.cluster("failover2").start().unwrap();
    let back = Instant::now();
    wait_write(&r, "failover2");
    within_bound("s3 failover2 back -> active", back.elapsed(), &t);
    agent.wait_log("failover2: up after 2 successful probes");
}

#[test]
fn s4_default_back_sticky_stays_and_auto_returns_after_rise() {
    let t = timing();
    let Some(live) = Live::start(&NAMES) else {
        return;
    };
    let dbs = live.dbs("postgres");
    let sticky = AgentProc::start(live.dir.path(), "sticky", |s| config(s, &t, &dbs, ""));
    let auto_t = Timing {
        failback: "auto",
        ..t.clone()
    };
    let auto = AgentProc::start(live.dir.path(), "auto", |s| config(s, &auto_t, &dbs, ""));
    let (rs, ra) = (sticky.reader(), auto.reader());
    wait_write(&rs, "default");
    wait_write(&ra, "default");
    live.cluster("default").stop(StopMode::Immediate).unwrap();
    let es = wait_write(&rs, "failover1");
    wait_write(&ra, "failover1");

    live.cluster("default").start().unwrap();
    let back = Instant::now();
    wait_write(&ra, "default");
    within_bound("s4 auto: default back -> default", back.elapsed(), &t);
    // Several more rise periods: sticky has seen default up and still stays.
    sticky.wait_log("default: up after 2 successful probes");
    std::thread::sleep(Duration::from_millis(5 * t.rise as u64 * t.interval_ms));
    let s = rs.snapshot().unwrap();
    assert_eq!(
        (s.write_alias(), s.epoch),
        (Some("failover1"), es),
        "sticky must not fail back"
    );
    assert!(s.is_healthy(0), "default is healthy, yet not chosen");
}

#[test]
fn s5_frozen_default_looks_healthy_to_tcp_and_is_caught_by_the_postgres_check() {
    let t = timing();
    let Some(live) = Live::start(&NAMES) else {
        return;
    };
    let pg = AgentProc::start(live.dir.path(), "pg", |s| {
        config(s, &t, &live.dbs("postgres"), "")
    });
    let tcp = AgentProc::start(live.dir.path(), "tcp", |s| {
        config(s, &t, &live.dbs("tcp"), "")
    });
    let (rp, rt) = (pg.reader(), tcp.reader());
    wait_write(&rp, "default");
    let e_tcp = wait_write(&rt, "default");

    let fault = Instant::now();
    live.cluster("default").freeze();
    wait_write(&rp, "failover1");
    let took = fault.elapsed();
    // fall x (interval + timeout) is what the issue allows for a hung server.
    let allowed = Duration::from_millis(u64::from(t.fall) * (t.interval_ms + t.timeout_ms));
    println!(
        "s5 default frozen -> failover1: {} ms (fall x (interval + timeout) = {} ms)",
        took.as_millis(),
        allowed.as_millis()
    );
    within_bound("s5 default frozen -> failover1", took, &t);
    pg.wait_log("default: down after 2 failed probes (no answer within 300ms)");

    // Meanwhile the TCP check still calls the hung server healthy.
    std::thread::sleep(t.detection_bound() * 2);
    let s = rt.snapshot().unwrap();
    assert_eq!((s.write_alias(), s.epoch), (Some("default"), e_tcp));
    assert!(
        s.is_healthy(0),
        "the kernel completes TCP handshakes for a frozen server"
    );
    live.cluster("default").thaw();
}

#[test]
fn s6_a_server_answering_57p03_is_never_chosen_while_not_ready() {
    // failback auto: default would be chosen the moment it counted as up.
    let t = Timing {
        failback: "auto",
        ..timing()
    };
    // A connection per probe: each one meets the refusal (held sessions, which a
    // smart shutdown lets run, are tests/tests/held.rs).
    let Some(live) = Live::start(&NAMES) else {
        return;
    };
    let agent = AgentProc::start(live.dir.path(), "agent", |state| {
        config(state, &t, &live.dbs("postgres"), "session = \"per-probe\"")
    });
    let r = agent.reader();
    wait_write(&r, "default");
    let default = live.cluster("default");
    // A session held open makes a smart shutdown wait, refusing new connections
    // with 57P03 ("the database system is shutting down") meanwhile.
    let mut session = default.spawn_psql("SELECT pg_sleep(3)").unwrap();
    wait_for("the session to be open", || {
        let n = live
            .cluster("failover1")
            .psql("SELECT 1")
            .ok()
            .and_then(|_| {
                default
                    .psql(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'",
                    )
                    .ok()
            })?;
        (n.trim() == "1").then_some(())
    });
    let sampler = Trace::start(&agent.state);
    let fault = Instant::now();
    default.begin_stop(StopMode::Smart).unwrap();
    wait_write(&r, "failover1");
    within_bound(
        "s6 default shutting down (57P03) -> failover1",
        fault.elapsed(),
        &t,
    );
    agent.wait_log("default: down after 2 failed probes (not ready (57P03: the database system is shutting down))");
    let switched = Instant::now();

    // The session ends, the server finishes stopping; then a restart.
    session.wait().unwrap();
    wait_for("default to stop", || {
        default.postmaster_pid().is_none().then_some(())
    });
    let restart = Instant::now();
    default.start().unwrap();
    wait_write(&r, "default");
    within_bound("s6 default restarted -> default", restart.elapsed(), &t);
    let seen = sampler.finish().seen;
    let early: Vec<&dbha_tests::trace::Seen> = seen
        .iter()
        .filter(|s| s.at > switched && s.at < restart && s.write.as_deref() == Some("default"))
        .collect();
    assert!(
        early.is_empty(),
        "default chosen while it answered 57P03 or was down: {early:?}"
    );
}

#[test]
fn s7_killed_agent_goes_stale_and_a_restarted_one_continues_on_the_same_mapping() {
    let t = timing();
    let Some((live, mut agent)) = setup(&t) else {
        return;
    };
    let r = agent.reader();
    let e0 = wait_write(&r, "default");
    let sampler = Trace::start(&agent.state);

    agent.signal(Signal::SIGKILL);
    let killed = Instant::now();
    wait_for("the agent to die", || agent.child().try_wait().unwrap());
    wait_for("stale", || {
        (r.snapshot().ok()?.status == Status::Stale).then_some(())
    });
    println!(
        "s7 SIGKILL -> readers see Stale: {} ms (stale_after = {} ms)",
        killed.elapsed().as_millis(),
        t.stale_after_ms
    );
    assert!(
        killed.elapsed()
            >= Duration::from_millis(t.stale_after_ms) - Duration::from_millis(t.interval_ms)
    );
    assert_eq!(r.write_alias(), None);

    agent.spawn();
    let s = wait_for("live again", || {
        let s = r.snapshot().ok()?;
        (s.status == Status::Active).then_some(s)
    });
    // Same Reader, same mapping: no reopen happened.
    assert_eq!(
        (s.generation, s.write_alias(), s.epoch),
        (1, Some("default"), e0)
    );
    // Let the new agent reach a verdict on every endpoint first: a fault before it
    // knows failover1 is up would, rightly, publish NONE on the way.
    // (The health it published before stays until then, not yet confirmed.)
    wait_for("verdicts of the restarted agent", || {
        let s = r.snapshot().ok()?;
        (0..3).all(|i| s.last_probe_name(i) == "ok").then_some(())
    });
    live.cluster("default").stop(StopMode::Immediate).unwrap();
    let e1 = wait_write(&r, "failover1");
    assert_eq!(
        e1,
        e0 + 2,
        "the epoch continues across the restart (default -> NONE -> failover1)"
    );
    let Traced {
        seen, backwards, ..
    } = sampler.finish();
    assert_eq!(
        backwards, 0,
        "a reader saw the epoch go backwards: {seen:?}"
    );
    assert!(seen.iter().any(|s| s.status == Status::Stale));
}

#[test]
fn s8_a_flapping_server_publishes_no_switch() {
    // Freezes shorter than fall probes: each costs one or two lost probes, never fall.
    let t = Timing {
        interval_ms: 100,
        timeout_ms: 100,
        rise: 4,
        fall: 4,
        ..timing()
    };
    let Some((live, agent)) = setup(&t) else {
        return;
    };
    let r = agent.reader();
    let e0 = wait_write(&r, "default");
    let sampler = Trace::start(&agent.state);
    let default = live.cluster("default");
    for _ in 0..12 {
        default.freeze();
        std::thread::sleep(Duration::from_millis(150));
        default.thaw();
        std::thread::sleep(Duration::from_millis(250));
    }
    let seen = sampler.finish().seen;
    let s = r.snapshot().unwrap();
    assert_eq!(
        (s.write_alias(), s.epoch),
        (Some("default"), e0),
        "what readers saw: {seen:?}"
    );
    assert_eq!(
        seen.iter().map(|s| s.epoch).max(),
        Some(e0),
        "a switch was published: {seen:?}"
    );
    assert!(!agent.log().contains("default: down"), "{}", agent.log());
    println!("s8 flapping: 12 freezes of 150 ms, 0 switches published");
}
