//! No primary is not no database: against a real primary with two streaming
//! standbys and the real agent at `interval = 1s`, the primary is stopped and
//! readers in Rust and C get a standby for reads while writes have none
//! (`read_only`); the standbys are probed at `fastinter` meanwhile, for at most
//! `promotion_window`; a promotion is published at once; the old primary back
//! is fenced as before. Time bounds only catch hangs, except where a pace is
//! the point (probes counted over a second, far from the limits).

use dbha::{Reader, Status};
use dbha_harness::pg::StopMode;
use dbha_tests::agentproc::{config, wait_for, wait_write, AgentProc, Timing};
use dbha_tests::live::Live;
use dbha_tests::metrics::{http_get, metric};
use std::time::{Duration, Instant};

const ROLES: &str = "writes = \"primary\"\nreads = \"prefer-standby\"";

/// The agent on `live`'s clusters at the example's timing (interval 1 s, rise 2,
/// fall 3, fastinter 10 ms), serving metrics; returns it and the metrics address.
fn agent(live: &Live, extra: &str) -> (AgentProc, String) {
    let port = dbha_harness::pg::free_port("127.0.0.1").unwrap();
    let addr = format!("127.0.0.1:{port}");
    let extra = format!("{ROLES}\nmetrics_listen = \"{addr}\"\n{extra}");
    let a = AgentProc::start(live.dir.path(), "agent", |s| {
        config(s, &Timing::example(), &live.dbs("postgres"), &extra)
    });
    (a, addr)
}

/// The agent on `live` (see [`agent`]), once writes are on default and every
/// endpoint is up: it, the metrics address, and a reader.
fn settled(live: &Live, extra: &str) -> (AgentProc, String, Reader) {
    let (a, addr) = agent(live, extra);
    let r = a.reader();
    wait_write(&r, "default");
    let all = (1u64 << live.clusters.len()) - 1;
    wait_for("every endpoint up", || {
        (r.snapshot().ok()?.health_mask == all).then_some(())
    });
    (a, addr, r)
}

/// `dbha-agent status ARGS`: exit code and output.
fn status(agent: &AgentProc, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(dbha_tests::agent_bin())
        .arg("status")
        .arg("--state")
        .arg(&agent.state)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Probe results of `alias` during `span`, from the agent's own counter.
fn probes_during(addr: &str, alias: &str, span: Duration) -> f64 {
    let count = || {
        metric(
            &http_get(addr, "/metrics"),
            &format!("dbha_probes_total{{alias=\"{alias}\"}}"),
        )
    };
    let before = count();
    std::thread::sleep(span);
    count() - before
}

fn reads_only(r: &Reader) -> Option<()> {
    (r.snapshot().ok()?.status == Status::ReadOnly).then_some(())
}

#[test]
fn reads_flow_through_a_failover_window_and_a_promotion_is_published_at_once() {
    let Some(live) = Live::replicated("default", &["failover1", "failover2"], "trust", None) else {
        return;
    };
    let (a, addr, r) = settled(&live, "");
    assert_eq!(r.read_alias(), Some("failover1"));
    let at_interval = probes_during(&addr, "failover1", Duration::from_secs(2));

    // The primary stops: writes have no database, reads stay on failover1.
    live.cluster("default").stop(StopMode::Immediate).unwrap();
    wait_for("reads only", || reads_only(&r));
    let s = r.snapshot().unwrap();
    assert_eq!((s.write_alias(), s.read_alias()), (None, Some("failover1")));
    assert_eq!((r.write_alias(), r.read_alias()), (None, Some("failover1")));
    assert_eq!(r.read_endpoint().map(|e| e.alias), Some("failover1"));

    // The same through the C ABI, from C.
    let dir = tempfile::tempdir().unwrap();
    if let Some(exe) = dbha_tests::cprog::reader_test(dir.path()) {
        let out = dbha_tests::cprog::run(std::process::Command::new(exe).arg("show").arg(&a.state));
        assert_eq!(
            out.trim(),
            "status=read_only write=NONE read=failover1 calls: write=NONE read=failover1"
        );
    }

    // What an operator sees.
    let (code, out) = status(&a, &[]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("status       read_only"), "{out}");
    assert!(out.contains("read         failover1"), "{out}");
    assert_eq!(status(&a, &["--read-only-ok"]).0, Some(0));
    let (_, json) = status(&a, &["--json"]);
    assert!(json.contains("\"status\":\"read_only\""), "{json}");
    let m = http_get(&addr, "/metrics");
    assert_eq!(metric(&m, "dbha_status{status=\"read_only\"}"), 1.0);
    assert_eq!(metric(&m, "dbha_status{status=\"active\"}"), 0.0);
    a.wait_log("no database takes writes now, reads only (reads: failover1)");
    a.wait_log("writes have no database: probing the databases that are up every fastinter");

    // The standbys are probed at fastinter now, not at interval.
    let in_window = probes_during(&addr, "failover2", Duration::from_secs(1));
    println!("failover1 probes in 2 s before the window: {at_interval}; failover2 in 1 s of it: {in_window}");
    assert!(
        at_interval <= 4.0,
        "{at_interval} probes in 2 s at interval = 1s"
    );
    assert!(in_window >= 10.0, "{in_window} probes in 1 s of the window");

    // A promotion is published within a few fastinter (rise is not in the way:
    // failover1 is up already; its role changed).
    live.cluster("failover1").promote().unwrap();
    let promoted = Instant::now();
    wait_write(&r, "failover1");
    let took = promoted.elapsed();
    println!(
        "promotion published {} ms after pg_ctl promote returned",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(1),
        "published {took:?} after the promotion: not at the fast pace\n{}",
        a.log()
    );
    assert_eq!(r.snapshot().unwrap().status, Status::Active);
    let m = http_get(&addr, "/metrics");
    assert_eq!(metric(&m, "dbha_status{status=\"active\"}"), 1.0);
    // And the pace returns to interval once writes have a database.
    std::thread::sleep(Duration::from_millis(200));
    let after = probes_during(&addr, "failover2", Duration::from_secs(2));
    assert!(after <= 4.0, "{after} probes in 2 s after the window");

    // The old primary returns, a primary on the old timeline: fenced, as before;
    // it takes neither writes nor reads.
    live.cluster("default").start().unwrap();
    wait_for("default fenced", || {
        r.snapshot().ok()?.fence(0).fenced.then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let s = r.snapshot().unwrap();
    assert_eq!(
        (s.write_alias(), s.status),
        (Some("failover1"), Status::Active)
    );
    assert_ne!(s.read_alias(), Some("default"));
}

#[test]
fn the_fast_pace_of_a_window_lasts_at_most_promotion_window() {
    let Some(live) = Live::replicated("default", &["failover1"], "trust", None) else {
        return;
    };
    let (a, addr, r) = settled(&live, "promotion_window = \"2s\"");
    live.cluster("default").stop(StopMode::Immediate).unwrap();
    wait_for("reads only", || reads_only(&r));
    let fast = probes_during(&addr, "failover1", Duration::from_secs(1));
    a.wait_log("writes still have no database after 2s: probing at the usual pace again");
    let slow = probes_during(&addr, "failover1", Duration::from_secs(2));
    println!("failover1: {fast} probes in the first second of the window, {slow} in 2 s after promotion_window");
    assert!(fast >= 10.0, "{fast}\n{}", a.log());
    assert!(slow <= 4.0, "{slow}");
    // Reads keep going to the standby all along.
    assert_eq!(r.read_alias(), Some("failover1"));
    assert_eq!(r.write_alias(), None);
}
