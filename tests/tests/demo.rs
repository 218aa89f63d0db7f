//! `dbha-agent demo --short` runs to completion and cleans up, with real
//! PostgreSQL (required under CI) and with plain listeners.

use dbha_tests::{agent_bin, in_ci};
use std::process::Command;

fn demo(args: &[&str]) -> String {
    let out = Command::new(agent_bin())
        .arg("demo")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // It removed its scratch directory.
    let scratch = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stopping the agent and the databases, removing "))
        .expect("the demo names what it removes");
    assert!(
        !std::path::Path::new(scratch).exists(),
        "{scratch} left behind"
    );
    stdout
}

#[test]
fn demo_with_plain_listeners_runs_to_completion() {
    let out = demo(&["--short", "--listeners"]);
    assert!(out.contains("using plain TCP listeners"), "{out}");
    assert!(out.contains("the reader switched to failover1"), "{out}");
    assert!(out.contains("default back -> default"), "{out}");
}

#[test]
fn demo_with_postgresql_runs_to_completion() {
    if dbha_harness::pg::find().is_err() {
        assert!(
            !in_ci(),
            "PostgreSQL is required under CI: {:?}",
            dbha_harness::pg::find().err()
        );
        eprintln!("SKIPPED: PostgreSQL server binaries not found");
        return;
    }
    let out = demo(&["--short"]);
    println!("{out}");
    assert!(out.contains("using real PostgreSQL"), "{out}");
    // The topology people run: a primary and two streaming standbys.
    assert!(out.contains("failover1  PostgreSQL standby on"), "{out}");
    for step in [
        "failover1 hung -> reads failover2",
        "primary crashed -> writes NONE, read only",
        "failover1 promoted -> writes",
        "old primary back -> conflict",
    ] {
        assert!(out.contains(step), "{step}:\n{out}");
    }
    // The agent says why writes have nowhere to go.
    // (The crashing server refuses the reconnection, or resets it.)
    let why = out
        .split("no database takes writes now, reads only (reads: failover2): default: down (")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no reason given for writes NONE:\n{out}"));
    assert!(
        why.ends_with("); failover1: standby; failover2: standby"),
        "{why}"
    );
    assert!(
        out.contains("the status is read_only: reads keep going to failover2"),
        "{out}"
    );
    // Two primaries only once the old one is back: no split brain before.
    let back = out.find("5. the old primary comes back").expect("step 5");
    assert!(!out[..back].contains("split brain"), "{out}");
    assert!(
        out[back..].contains("split brain: default, failover1"),
        "{out}"
    );
}
