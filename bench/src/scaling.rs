//! Reader cost with several reader processes while the writer publishes.

use crate::common::open_reader;
use dbha_harness::pg::Scratch;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn thread_cpu_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// One reader process: batches of 100,000 `active_alias()` calls for `seconds`;
/// prints the median CPU time per call over the batches. CPU time, not wall time:
/// with more processes than cores, wall time would count the others' turns.
pub fn read_loop(state: &Path, seconds: f64) {
    let r = open_reader(state);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut per_call = Vec::new();
    while Instant::now() < end {
        let t = thread_cpu_ns();
        for _ in 0..100_000 {
            std::hint::black_box(r.write_alias());
        }
        per_call.push((thread_cpu_ns() - t) as f64 / 100_000.0);
    }
    per_call.sort_by(f64::total_cmp);
    println!("{:.3}", per_call[per_call.len() / 2]);
}

pub fn scaling(seconds: f64) {
    use dbha_protocol::writer::{Publication, Settings, StateFile};
    let scratch = Scratch::new("bench-scaling").unwrap();
    let state = scratch.path().join("state");
    let endpoints = [
        dbha_protocol::Endpoint::new("default", "127.0.0.1", 5432),
        dbha_protocol::Endpoint::new("failover1", "127.0.0.1", 5433),
    ];
    let settings = Settings {
        stale_after_ns: 60_000_000_000,
        mode: 0o644,
    };
    let (mut w, _) = StateFile::open(&state, &endpoints, settings, &Publication::NOTHING).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        std::thread::spawn(move || {
            // 10,000 publications a second, alternating the decision (each one a
            // new epoch), paced against the clock.
            let start = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = (n % 2) as u32;
                w.publish(&Publication {
                    write_index: i,
                    read_index: i,
                    health_mask: 0b11,
                    ..Publication::NOTHING
                });
                n += 1;
                writes.store(n, std::sync::atomic::Ordering::Relaxed);
                let due = start + Duration::from_micros(n * 100);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for n in [1usize, 2, 8, 32] {
        let w0 = writes.load(std::sync::atomic::Ordering::Relaxed);
        let t0 = Instant::now();
        let procs: Vec<_> = (0..n)
            .map(|_| {
                Command::new(&exe)
                    .args(["read-loop"])
                    .arg(&state)
                    .arg(seconds.to_string())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut medians: Vec<f64> = procs
            .into_iter()
            .map(|p| {
                let out = p.wait_with_output().unwrap();
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            })
            .collect();
        let rate = (writes.load(std::sync::atomic::Ordering::Relaxed) - w0) as f64
            / t0.elapsed().as_secs_f64();
        medians.sort_by(f64::total_cmp);
        rows.push((n, medians[medians.len() / 2], rate));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let base = rows[0].1;
    println!("| reader processes | active_alias() CPU ns/call (median of the processes' medians) | / 1 reader | writer publications per second |");
    println!("|---:|---:|---:|---:|");
    for (n, ns, rate) in rows {
        println!("| {n} | {ns:.2} | {:.2} | {rate:.0} |", ns / base);
    }
    println!("\n{seconds} s per process and row; per-call cost in thread CPU time (CLOCK_THREAD_CPUTIME_ID), so that sharing 2 cores among more processes does not count as cost");
}
