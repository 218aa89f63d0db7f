//! The C ABI from C: libdbha is installed into a temporary prefix with
//! `reader/install.sh`, `tests/c/reader_test.c` is compiled with the system C
//! compiler using `pkg-config --cflags --libs dbha` (shared, and `--static`), and
//! run against files made by the real writer.

use dbha_protocol::writer::{Publication, StateFile};
use dbha_tests::cprog::{build, c_tools, install, run};
use dbha_tests::require;
use std::path::{Path, PathBuf};
use std::process::Command;

const SECOND: u64 = 1_000_000_000;

fn write_state(path: &Path, stale_after_ns: u64, p: &Publication) -> StateFile {
    dbha_tests::write_state(
        path,
        &["default", "failover1", "failover2"],
        stale_after_ns,
        p,
    )
}

/// The files `reader_test check` expects in `dir`; returns the live file's epoch.
fn prepare(dir: &Path) -> u64 {
    let live = Publication {
        write_index: 1,
        read_index: 2,
        health_mask: 0b110,
        primary_mask: 0b010,
        standby_mask: 0b100,
        conflict: false,
    };
    let w = write_state(&dir.join("state"), 600 * SECOND, &live);
    let epoch = w.values().epoch;
    let mut stopped = write_state(&dir.join("stopped"), 600 * SECOND, &live);
    stopped.mark_stopped();
    let first = Publication {
        write_index: 0,
        read_index: 0,
        health_mask: 1,
        ..Publication::NOTHING
    };
    // 1 ns: stale as soon as the coarse clock ticks.
    write_state(&dir.join("stale"), 1, &first);
    write_state(&dir.join("none"), 600 * SECOND, &Publication::NOTHING);
    std::thread::sleep(std::time::Duration::from_millis(50));

    let good = std::fs::read(dir.join("state")).unwrap();
    std::os::unix::fs::symlink(dir.join("missing"), dir.join("dangling")).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join("truncated"), &good[..100]).unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();
    let patched = |name: &str, off: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[off..off + bytes.len()].copy_from_slice(bytes);
        std::fs::write(dir.join(name), b).unwrap();
    };
    patched("badmagic", 0, b"NOTDBHA!");
    patched("v3", 8, &3u32.to_ne_bytes());
    patched("corrupt", 40, &99u32.to_ne_bytes());
    // As an agent from before the address table wrote it: 8192 bytes, no table
    // and no lag area.
    let mut old = good[..8192].to_vec();
    old[16..24].copy_from_slice(&8192u64.to_ne_bytes());
    old[56..72].fill(0);
    std::fs::write(dir.join("noaddr"), old).unwrap();
    epoch
}

/// A test directory with an empty `files` directory in it.
fn test_dirs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    (dir, files)
}

#[test]
fn c_program_reads_states_and_gets_every_error_code() {
    let Some(()) = c_tools() else { return };
    let (dir, files) = test_dirs();
    let epoch = prepare(&files);
    let prefix = dir.path().join("prefix");
    install(&prefix);
    for static_link in [false, true] {
        let exe = build(
            &prefix,
            static_link,
            &dir.path().join(format!("t{static_link}")),
        );
        let out = run(Command::new(&exe)
            .arg("check")
            .arg(&files)
            .arg(epoch.to_string()));
        println!("reader_test (static: {static_link}): {}", out.trim());
        assert!(out.trim().ends_with(" 0 failed"), "{out}");
    }
}

#[test]
fn rust_and_c_get_truncated_for_every_cut_and_survive_random_files() {
    let Some(()) = c_tools() else { return };
    let (dir, files) = test_dirs();
    let good = {
        let _w = write_state(&files.join("state"), 600 * SECOND, &Publication::NOTHING);
        std::fs::read(files.join("state")).unwrap()
    };
    // Every offset of the header and alias table, a cut in every 61 bytes of the
    // address table, and one short of the full size.
    let header = dbha_protocol::Header::decode(&good).unwrap();
    let mut lengths: Vec<usize> = (0..=header.aliases_end() as usize).collect();
    lengths
        .extend((header.addresses_offset as usize..=header.addresses_end() as usize).step_by(61));
    lengths.push(good.len() - 1);
    // (The Rust reader's view of the same cuts: reader/tests/files.rs.)
    for (i, n) in lengths.iter().enumerate() {
        std::fs::write(files.join(format!("cut-{i}")), &good[..*n]).unwrap();
    }
    // The same random files for the Rust reader here and the C program below.
    let randoms = dbha_tests::badfiles::mutations(&good, 2000, 0x2545_F491_4F6C_DD1D);
    for (i, bytes) in randoms.iter().enumerate() {
        let path = files.join(format!("random-{i}"));
        std::fs::write(&path, bytes).unwrap();
        if let Ok(r) = dbha::Reader::open(&path) {
            // Whatever the record holds, reading is defined and an index has its name.
            if let Ok(s) = r.snapshot() {
                if let Some(i) = s.write_index {
                    assert!(s.alias(i).is_some());
                }
            }
            let _ = (r.write_alias(), r.write_endpoint(), r.read_endpoint());
        }
    }
    let randoms = randoms.len();
    let prefix = dir.path().join("prefix");
    install(&prefix);
    let exe = build(&prefix, false, &dir.path().join("t"));
    for (mode, n) in [("cuts", lengths.len()), ("random", randoms)] {
        let out = run(Command::new(&exe).arg(mode).arg(&files).arg(n.to_string()));
        println!("reader_test {mode} ({n} files): {}", out.trim());
        assert!(out.trim().ends_with(" 0 failed"), "{out}");
    }
}

#[test]
fn installed_shared_library_carries_its_soname() {
    if require("readelf", "to read libdbha.so's soname").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let lib = dir.path().join("lib");
    let out = run(Command::new("readelf")
        .arg("-d")
        .arg(lib.join("libdbha.so")));
    assert!(out.contains("Library soname: [libdbha.so.0]"), "{out}");
    assert!(lib.join("libdbha.so.0").exists() && lib.join("libdbha.a").exists());
    assert!(dir.path().join("include/dbha.h").exists());
}

#[test]
fn c_reads_make_no_system_calls() {
    let (Some(strace), Some(_), Some(_)) = (
        require("strace", "to count the C reader's system calls"),
        require("cc", "to compile the C test program"),
        require("pkg-config", "to find libdbha's flags"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _w = write_state(
        &state,
        600 * SECOND,
        &Publication {
            write_index: 0,
            read_index: 0,
            health_mask: 1,
            ..Publication::NOTHING
        },
    );
    let prefix = dir.path().join("prefix");
    install(&prefix);
    let exe = build(&prefix, false, &dir.path().join("t"));
    let count = |n: u64| -> u64 {
        let summary = dir.path().join(format!("strace{n}"));
        let out = run(Command::new(&strace)
            .args(["-f", "-c", "-o"])
            .arg(&summary)
            .arg(&exe)
            .arg("loop")
            .arg(&state)
            .arg(n.to_string()));
        assert_eq!(out.trim(), format!("write={n}"));
        let text = std::fs::read_to_string(&summary).unwrap();
        let total = text
            .lines()
            .find(|l| l.trim_end().ends_with("total"))
            .unwrap();
        total.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    let (few, many) = (count(10), count(1_000_000));
    println!("C system calls: 10 reads -> {few}, 1,000,000 reads -> {many}");
    assert_eq!(few, many);
}
