//! Reader cost, in one run: Rust `snapshot()` and `active_alias()`, the C ABI's
//! `dbha_read()` and `dbha_active_alias()` (`bench/c_bench.c`, compiled against
//! libdbha and run from here), and the floors: a bare relaxed load from a mapped
//! page and `clock_gettime` through the vDSO. Each figure is the median of
//! interleaved samples, so that drift on a shared machine hits all cases alike.

use dbha::Reader;
use dbha_protocol::writer::Publication;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn clock(id: nix::time::ClockId) -> u64 {
    let t = nix::time::clock_gettime(id).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the C side; returns (name, ns) pairs, or why it could not.
fn c_side(state: &Path, dir: &Path, n: u64) -> Result<Vec<(String, f64)>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib_dir = dbha_tests::libdbha_dir();
    // The soname is libdbha.so.0: give the loader that name.
    let link_dir = dir.join("lib");
    std::fs::create_dir_all(&link_dir).map_err(|e| e.to_string())?;
    for name in ["libdbha.so", "libdbha.so.0"] {
        let _ = std::os::unix::fs::symlink(lib_dir.join("libdbha.so"), link_dir.join(name));
    }
    let lib_dir = link_dir;
    let exe = dir.join("c_bench");
    let out = Command::new("cc")
        .args(["-O2", "-std=c11"])
        .arg(root.join("bench/c_bench.c"))
        .arg("-I")
        .arg(root.join("reader/include"))
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-ldbha")
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let out = Command::new(&exe)
        .arg(state)
        .arg(n.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
        .collect())
}

/// Runs the comparison: `samples` interleaved samples of `n` calls per case.
pub fn run(samples: usize, n: u64) {
    let scratch = dbha_harness::pg::Scratch::new("bench-reader").unwrap();
    let dir = scratch.path();
    let state = dir.join("state");
    let active = Publication {
        write_index: 0,
        read_index: 0,
        health_mask: 0b111,
        ..Publication::NOTHING
    };
    let _w = dbha_tests::write_state(
        &state,
        &["default", "failover1", "failover2"],
        3_600_000_000_000,
        &active,
    );
    let reader = Reader::open(&state).unwrap();
    assert_eq!(reader.active_alias(), Some("default"));

    let file = std::fs::File::open(&state).unwrap();
    let page = memmap2::MmapOptions::new()
        .len(4096)
        .map_raw_read_only(&file)
        .unwrap();
    // The record's first data word (the epoch), as a bare atomic load.
    let word: &AtomicU64 =
        &dbha_protocol::mapping::words::<1>(&page, dbha_protocol::RECORD_OFFSET as usize + 8)
            .expect("in the first page")[0];

    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let cases: Vec<Case> = vec![
        (
            "rust_active_alias",
            Box::new(|| {
                black_box(reader.active_alias());
            }),
        ),
        (
            "rust_snapshot",
            Box::new(|| {
                black_box(reader.snapshot().ok());
            }),
        ),
        (
            "bare_relaxed_load",
            Box::new(|| {
                black_box(word.load(Ordering::Relaxed));
            }),
        ),
        (
            "clock_gettime_monotonic",
            Box::new(|| {
                black_box(clock(nix::time::ClockId::CLOCK_MONOTONIC));
            }),
        ),
        (
            "clock_gettime_monotonic_coarse",
            Box::new(|| {
                black_box(clock(nix::time::ClockId::CLOCK_MONOTONIC_COARSE));
            }),
        ),
    ];
    let mut per_case = vec![Vec::with_capacity(samples); cases.len()];
    for _ in 0..samples {
        for (i, (_, f)) in cases.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            per_case[i].push(t.elapsed().as_nanos() as f64 / n as f64);
        }
    }
    let mut results: Vec<(String, f64)> = cases
        .iter()
        .zip(per_case)
        .map(|((name, _), s)| (name.to_string(), median(s)))
        .collect();
    match c_side(&state, dir, n) {
        Ok(c) => results.extend(c),
        Err(e) => eprintln!("C side could not run: {e}"),
    }
    let get = |k: &str| results.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    println!("| case | median ns/call |");
    println!("|---|---:|");
    for (name, ns) in &results {
        println!("| {name} | {ns:.2} |");
    }
    let clock_ns = get("clock_gettime_monotonic").unwrap();
    let rust = get("rust_active_alias").unwrap();
    println!();
    println!(
        "rust active_alias / clock_gettime(MONOTONIC) = {:.2} (target <= 2.0)",
        rust / clock_ns
    );
    if let (Some(c), Some(c_clock)) = (get("c_dbha_active_alias"), get("c_clock_gettime_monotonic"))
    {
        println!(
            "C dbha_active_alias - rust active_alias = {:+.2} ns (target within 2 ns); C clock_gettime {c_clock:.2} ns vs Rust {clock_ns:.2} ns",
            c - rust
        );
    }
    if let (Some(c), Some(r)) = (get("c_dbha_read"), get("rust_snapshot")) {
        println!("C dbha_read - rust snapshot = {:+.2} ns", c - r);
    }
}
