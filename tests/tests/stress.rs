//! One writer process publishing as fast as it can, several reader processes
//! mapping the file read-only and checking every snapshot: zero torn or backwards
//! reads, and retries did happen (so readers and writer really overlapped).
//!
//! Runs 3 s in the test suite; longer with `DBHA_STRESS_SECS=60 cargo test
//! --release -p dbha-tests --test stress -- --nocapture`.

use dbha_tests::Children;
use std::collections::HashMap;
use std::process::{Command, Stdio};

const READERS: usize = 3;

fn fields(out: &str) -> HashMap<String, u64> {
    out.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

#[test]
fn cross_process_readers_never_see_a_torn_or_backwards_record() {
    let secs: f64 = std::env::var("DBHA_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let bin = env!("CARGO_BIN_EXE_dbha-stress");
    let mut procs = Children::default();
    procs.push(
        Command::new(bin)
            .args(["writer", path.to_str().unwrap(), &(secs + 0.5).to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    dbha_tests::agentproc::wait_for("the writer to create the state file", || {
        path.exists().then_some(())
    });
    for _ in 0..READERS {
        procs.push(
            Command::new(bin)
                .args(["reader", path.to_str().unwrap(), &secs.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let mut outputs = Vec::new();
    for c in procs.take() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", out);
        outputs.push(fields(&String::from_utf8(out.stdout).unwrap()));
    }
    let writes = outputs[0]["writes"];
    let total = |k: &str| outputs[1..].iter().map(|o| o[k]).sum::<u64>();
    let (reads, api_reads, retries) = (total("reads"), total("api_reads"), total("retries"));
    println!(
        "writes={writes} reads={reads} api_reads={api_reads} retries={retries} over {secs} s, {READERS} readers"
    );
    assert_eq!(total("violations"), 0, "torn snapshots observed");
    assert_eq!(total("backwards"), 0, "epoch went backwards");
    assert!(writes > 0 && reads > 0 && api_reads > 0);
    assert!(
        retries > 0,
        "no read ever overlapped a write: the test proved nothing"
    );
}
