//! Cross-process seqlock stress: `dbha-stress writer PATH SECS` publishes as fast as
//! it can, every field derived from the epoch; `dbha-stress reader PATH SECS` maps
//! the file read-only and checks every copy it gets. Each prints one `key=value`
//! line for the test (`tests/tests/stress.rs`) to parse.

use dbha::Reader;
use dbha_protocol::writer::{Publication, Settings, StateFile};
use dbha_protocol::{seqlock, RecordValues, RECORD_OFFSET, RECORD_WORDS};
use std::path::Path;
use std::time::{Duration, Instant};

fn mix(e: u64) -> u64 {
    e.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// What every field must be for a given epoch.
fn expected(epoch: u64) -> Publication {
    Publication {
        write_index: (epoch % 2) as u32,
        read_index: ((epoch + 1) % 2) as u32,
        health_mask: mix(epoch),
        primary_mask: !mix(epoch),
        standby_mask: mix(epoch).rotate_left(17),
        conflict: epoch.is_multiple_of(3),
    }
}

fn consistent(v: &RecordValues) -> bool {
    let p = expected(v.epoch);
    (
        v.write_index,
        v.read_index,
        v.health_mask,
        v.primary_mask,
        v.standby_mask,
    ) == (
        p.write_index,
        p.read_index,
        p.health_mask,
        p.primary_mask,
        p.standby_mask,
    ) && (v.flags & dbha_protocol::flags::CONFLICT != 0) == p.conflict
}

fn writer(path: &Path, run: Duration) {
    let endpoints = [
        dbha_protocol::Endpoint::new("a", "127.0.0.1", 5432),
        dbha_protocol::Endpoint::new("b", "127.0.0.1", 5433),
    ];
    let settings = Settings {
        stale_after_ns: 60_000_000_000,
        mode: 0o644,
    };
    let (mut w, _) = StateFile::open(path, &endpoints, settings, &expected(1)).expect("open");
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < run {
        for _ in 0..1000 {
            let next = w.values().epoch + 1;
            let epoch = w
                .publish(&expected(next))
                .expect("every publication changes the decision");
            assert_eq!(epoch, next);
            writes += 1;
        }
    }
    w.mark_stopped();
    println!("writes={writes}");
}

fn reader(path: &Path, run: Duration) {
    let file = std::fs::File::open(path).expect("open");
    let map = memmap2::MmapOptions::new()
        .len((RECORD_OFFSET as usize) + RECORD_WORDS * 8)
        .map_raw_read_only(&file)
        .expect("mmap");
    let (seq, data) =
        dbha_protocol::mapping::record(&map, RECORD_OFFSET as usize).expect("the record is mapped");
    let api = Reader::open(path).expect("Reader::open");

    let (mut reads, mut retries, mut violations, mut backwards, mut api_reads) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut last_epoch = 0;
    let start = Instant::now();
    while start.elapsed() < run {
        for _ in 0..10_000 {
            match seqlock::read(seq, data, u32::MAX - 1) {
                Ok((w, r)) => {
                    let v = RecordValues::from_words(&w);
                    reads += 1;
                    retries += u64::from(r);
                    violations += u64::from(!consistent(&v));
                    backwards += u64::from(v.epoch < last_epoch);
                    last_epoch = v.epoch;
                }
                Err(_) => violations += 1,
            }
        }
        // The public reader API over its own mapping, same checks.
        for _ in 0..1000 {
            if let Ok(s) = api.snapshot() {
                api_reads += 1;
                let p = expected(s.epoch);
                let ok = s.write_index == Some(p.write_index)
                    && s.read_index == Some(p.read_index)
                    && s.health_mask == p.health_mask
                    && s.primary_mask == p.primary_mask
                    && s.standby_mask == p.standby_mask
                    && s.conflict() == p.conflict;
                violations += u64::from(!ok);
            }
        }
    }
    println!(
        "reads={reads} api_reads={api_reads} retries={retries} violations={violations} backwards={backwards}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: dbha-stress writer|reader PATH SECONDS";
    let (role, path, secs) = match &args[..] {
        [_, role, path, secs] => (
            role.as_str(),
            Path::new(path),
            secs.parse::<f64>().expect(usage),
        ),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2)
        }
    };
    let run = Duration::from_secs_f64(secs);
    match role {
        "writer" => writer(path, run),
        "reader" => reader(path, run),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2)
        }
    }
}
