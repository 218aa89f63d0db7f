//! The read hot path makes no system call: under strace, 1,000,000 reads cost
//! exactly as many system calls as 10 (process start-up and open only).

use dbha_protocol::writer::Publication;
use dbha_tests::require;
use std::path::Path;
use std::process::Command;

/// Total system calls of `dbha-readloop PATH n`, from `strace -f -c`.
fn syscalls(strace: &Path, state: &Path, n: u64, out: &Path) -> u64 {
    let status = Command::new(strace)
        .args(["-f", "-c", "-o"])
        .arg(out)
        .arg(env!("CARGO_BIN_EXE_dbha-readloop"))
        .arg(state)
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout).trim(),
        format!("write={n}"),
        "every read saw the active alias"
    );
    let summary = std::fs::read_to_string(out).unwrap();
    let total = summary
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .unwrap_or_else(|| panic!("no total line in strace summary:\n{summary}"));
    // "100.00    0.000123           1        87         3 total": calls is the 4th column.
    total.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn a_million_reads_make_no_more_system_calls_than_ten() {
    let Some(strace) = require("strace", "to count the reader's system calls") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Stale only after ten minutes: not during the run.
    let active = Publication {
        write_index: 0,
        read_index: 0,
        health_mask: 1,
        ..Publication::NOTHING
    };
    let _w = dbha_tests::write_state(&state, &["default"], 600_000_000_000, &active);
    let few = syscalls(&strace, &state, 10, &dir.path().join("few"));
    let many = syscalls(&strace, &state, 1_000_000, &dir.path().join("many"));
    println!("system calls: 10 reads -> {few}, 1,000,000 reads -> {many}");
    assert_eq!(many, few);
}
