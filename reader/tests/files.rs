//! The Rust reader against files made by the real writer side, and against every
//! kind of bad file: each gives its own error, none crashes.

use dbha::{Error, Reader, Role, Status};
use dbha_protocol::writer::{Opened, Publication, Settings, StateFile};
use dbha_protocol::{Endpoint, Header, FILE_SIZE};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECOND: u64 = 1_000_000_000;

/// Endpoint i at 10.0.0.(i+1), port 5432 + i.
fn aliases(names: &[&str]) -> Vec<Endpoint> {
    names
        .iter()
        .zip(0u16..)
        .map(|(s, i)| Endpoint::new(*s, format!("10.0.0.{}", i + 1), 5432 + i))
        .collect()
}

fn settings(stale_after_ns: u64) -> Settings {
    Settings {
        stale_after_ns,
        mode: 0o644,
    }
}

/// A writer on `path` for `names`, as an agent starts: nothing published yet;
/// with how it opened the file.
fn open_writer(path: &Path, names: &[&str]) -> (StateFile, Opened) {
    StateFile::open(
        path,
        &aliases(names),
        settings(5 * SECOND),
        &Publication::NOTHING,
    )
    .unwrap()
}

fn writer(path: &Path, names: &[&str]) -> StateFile {
    open_writer(path, names).0
}

fn active(index: u32) -> Publication {
    Publication {
        write_index: index,
        read_index: index,
        health_mask: 1 << index,
        ..Publication::NOTHING
    }
}

fn valid_bytes(dir: &Path) -> Vec<u8> {
    let path = dir.join("valid");
    drop(writer(&path, &["default", "failover1"]));
    std::fs::read(path).unwrap()
}

#[test]
fn reads_what_the_writer_published() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default", "failover1", "failover2"]);
    let r = Reader::open(&path).unwrap();

    let s = r.snapshot().unwrap();
    assert_eq!(s.status, Status::NoHealthyDatabase);
    assert_eq!(s.write_index, None);
    assert_eq!(r.active_alias(), None);
    assert_eq!(s.endpoint_count(), 3);
    assert_eq!(s.writer_pid, std::process::id());

    let epoch = w
        .publish(&Publication {
            health_mask: 0b110,
            primary_mask: 0b010,
            standby_mask: 0b100,
            read_index: 2,
            ..active(1)
        })
        .expect("a new decision bumps the epoch");
    let s = r.snapshot().unwrap();
    assert_eq!(s.status, Status::Active);
    assert_eq!(s.epoch, epoch);
    assert_eq!(s.write_alias(), Some("failover1"));
    assert_eq!(s.read_alias(), Some("failover2"));
    assert!(!s.is_healthy(0) && s.is_healthy(1) && s.is_healthy(2));
    assert_eq!(
        [s.role(0), s.role(1), s.role(2)],
        [Role::Unknown, Role::Primary, Role::Standby]
    );
    assert_eq!(s.stale_after, Duration::from_secs(5));
    assert!(s.heartbeat_age < Duration::from_secs(1));
    assert_eq!(r.active_alias(), Some("failover1"));
    assert_eq!(r.read_alias(), Some("failover2"));
    assert_eq!(
        (r.active_slot(), r.read_slot()),
        (Some((1, 1)), Some((1, 2)))
    );
    assert_eq!(r.alias_name(0), Some("default"));
    assert_eq!(r.alias_name(3), None);

    // Same decision again: the heartbeat moves, the epoch does not.
    assert_eq!(
        w.publish(&Publication {
            read_index: 2,
            ..active(1)
        }),
        None
    );
    assert_eq!(r.snapshot().unwrap().epoch, epoch);

    w.mark_stopped();
    let s = r.snapshot().unwrap();
    assert_eq!(s.status, Status::AgentStopped);
    assert_eq!((r.active_slot(), r.read_alias()), (None, None));
    assert!(s.stopped());
    assert_eq!(r.active_alias(), None);
}

#[test]
fn heartbeat_older_than_stale_after_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let (mut w, _) = StateFile::open(
        &path,
        &aliases(&["default"]),
        settings(50_000_000),
        &Publication::NOTHING,
    )
    .unwrap();
    w.publish(&active(0));
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.active_alias(), Some("default"));
    std::thread::sleep(Duration::from_millis(120));
    let s = r.snapshot().unwrap();
    assert_eq!(s.status, Status::Stale);
    assert!(s.heartbeat_age > Duration::from_millis(50));
    assert_eq!(r.active_alias(), None);
    w.publish(&active(0));
    assert_eq!(r.active_alias(), Some("default"));
}

#[test]
fn restarted_writer_reuses_the_file_and_the_epoch_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let names = ["default", "failover1"];
    let mut w = writer(&path, &names);
    let e1 = w.publish(&active(1)).unwrap();
    let r = Reader::open(&path).unwrap();
    drop(w);

    let (mut w, opened) = open_writer(&path, &names);
    assert_eq!(opened, Opened::Reused);
    // Health and roles stay as the previous writer published them, not yet
    // confirmed: a restart shows readers no endpoint going down.
    assert_eq!(r.snapshot().unwrap().health_mask, active(1).health_mask);
    // The decision survived the restart, on the same mapping.
    let s = r.snapshot().unwrap();
    assert_eq!(
        (s.epoch, s.write_alias(), s.generation),
        (e1, Some("failover1"), 1)
    );
    let e2 = w.publish(&active(0)).unwrap();
    assert_eq!(e2, e1 + 1);
    assert_eq!(r.snapshot().unwrap().epoch, e2);
}

#[test]
fn a_second_writer_on_the_same_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let _w = writer(&path, &["default"]);
    let e = StateFile::open(
        &path,
        &aliases(&["default"]),
        settings(SECOND),
        &Publication::NOTHING,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("state.lock") && msg.contains("only one agent"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
}

#[test]
fn changed_aliases_supersede_the_file_and_readers_follow_without_mixing_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default", "failover1"]);
    w.publish(&active(1));
    let r = Reader::open(&path).unwrap();
    let before = r.snapshot().unwrap();
    assert_eq!(before.write_alias(), Some("failover1"));
    let old_name = r.active_alias().unwrap();

    // failover1 is removed, a new endpoint comes first: index 1 now means "default".
    let opened = w
        .reconfigure(
            &aliases(&["replica", "default"]),
            settings(5 * SECOND),
            &active(1),
        )
        .unwrap();
    assert_eq!(opened, Opened::Replaced);
    let after = r.snapshot().unwrap();
    assert_eq!(after.generation, 2);
    assert!(after.epoch > before.epoch);
    assert_eq!(after.write_alias(), Some("default"));
    assert_eq!(after.alias(0), Some("replica"));
    // Slots name their generation: the old index 1 still means failover1.
    assert_eq!(r.active_slot(), Some((2, 1)));
    assert_eq!(r.alias_in(2, 1), Some("default"));
    assert_eq!(r.alias_in(1, 1), Some("failover1"));
    assert_eq!(r.alias_in(3, 0), None);
    // Names handed out before the switch are still valid, and still say what they said.
    assert_eq!(old_name, "failover1");
    assert_eq!(before.write_alias(), Some("failover1"));
}

#[test]
fn a_writer_refuses_to_replace_a_file_that_is_not_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::write(&path, b"precious data").unwrap();
    let e = StateFile::open(
        &path,
        &aliases(&["default"]),
        settings(SECOND),
        &Publication::NOTHING,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a dbha state file"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious data");
}

#[test]
fn new_files_are_fully_sized_and_carry_the_requested_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let (_w, opened) = StateFile::open(
        &path,
        &aliases(&["default"]),
        Settings {
            stale_after_ns: SECOND,
            mode: 0o640,
        },
        &Publication::NOTHING,
    )
    .unwrap();
    assert_eq!(opened, Opened::Created);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), FILE_SIZE);
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_reused_or_reconfigured_file_takes_the_configured_mode_and_the_writers_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let names = aliases(&["default", "failover1"]);
    let with_mode = |mode| Settings {
        stale_after_ns: 5 * SECOND,
        mode,
    };
    let mode_and_gid = || {
        let m = std::fs::metadata(&path).unwrap();
        (m.permissions().mode() & 0o777, m.gid())
    };
    // This process's group: what a file it creates gets.
    std::fs::write(dir.path().join("probe"), b"").unwrap();
    let own_gid = std::fs::metadata(dir.path().join("probe")).unwrap().gid();

    let (mut w, _) = StateFile::open(&path, &names, with_mode(0o644), &active(0)).unwrap();
    w.publish(&active(1));
    let epoch = w.values().epoch;
    drop(w);
    let reader = Reader::open(&path).unwrap();
    // As root, give the file another group, as a previous run under another
    // service group would have left it.
    let other_gid = own_gid + 1000;
    let regrouped = std::os::unix::fs::chown(&path, None, Some(other_gid)).is_ok();

    // The operator changed state_mode (and the group): a restart applies both.
    let (mut w, opened) = StateFile::open(&path, &names, with_mode(0o640), &active(0)).unwrap();
    assert_eq!(opened, Opened::Reused);
    assert_eq!(w.values().epoch, epoch, "a reuse keeps the epoch");
    assert_eq!(
        mode_and_gid(),
        (0o640, own_gid),
        "regrouped first: {regrouped}"
    );
    // A reload with the same aliases applies a new mode too.
    let opened = w.reconfigure(&names, with_mode(0o600), &active(0)).unwrap();
    assert_eq!(opened, Opened::Reused);
    assert_eq!(mode_and_gid().0, 0o600);
    // A reader that had the file open keeps reading it.
    assert_eq!(reader.snapshot().unwrap().write_alias(), Some("failover1"));
}

fn open_err(path: &Path) -> Error {
    Reader::open(path).unwrap_err()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn missing_file_and_dangling_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let e = open_err(&missing);
    assert!(
        matches!(
            e,
            Error::NotFound {
                dangling_link: false,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&*missing.to_string_lossy()));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&missing, &link).unwrap();
    let e = open_err(&link);
    assert!(
        matches!(
            e,
            Error::NotFound {
                dangling_link: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("symbolic link"), "{e}");
}

#[test]
fn a_symlink_to_a_valid_file_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "target", &valid_bytes(dir.path()));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(
        Reader::open(&link).unwrap().alias_name(1),
        Some("failover1")
    );
}

#[test]
fn directory_empty_and_wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_err(dir.path());
    assert!(
        matches!(
            e,
            Error::NotRegularFile {
                kind: "directory",
                ..
            }
        ),
        "{e:?}"
    );
    let e = open_err(&write(dir.path(), "empty", b""));
    assert!(matches!(e, Error::Truncated { have: 0, .. }), "{e:?}");
    assert!(
        e.to_string().ends_with("is empty, not a dbha state file"),
        "{e}"
    );
    let mut bytes = valid_bytes(dir.path());
    bytes[0] = b'X';
    let e = open_err(&write(dir.path(), "magic", &bytes));
    assert!(matches!(e, Error::BadMagic { .. }), "{e:?}");
    assert!(
        e.to_string()
            .ends_with("is not a dbha state file (bad magic)"),
        "{e}"
    );
}

#[test]
fn newer_layout_version_names_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = valid_bytes(dir.path());
    bytes[8..12].copy_from_slice(&3u32.to_ne_bytes());
    let e = open_err(&write(dir.path(), "v3", &bytes));
    assert!(
        matches!(e, Error::UnsupportedVersion { version: 3, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("has layout version 3, this reader supports 1"),
        "{e}"
    );
}

#[test]
fn truncated_at_every_offset_of_the_header_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = valid_bytes(dir.path());
    let header = Header::decode(&bytes).unwrap();
    let p = dir.path().join("cut");
    for n in 0..=header.aliases_end() as usize + 1 {
        std::fs::write(&p, &bytes[..n]).unwrap();
        match Reader::open(&p) {
            Err(Error::Truncated { have, .. }) => assert_eq!(have, n as u64),
            // Cut after the magic, before the version: still too short to judge.
            other => panic!("cut at {n}: {other:?}"),
        }
    }
    // Cut just short of the size the header claims.
    std::fs::write(&p, &bytes[..FILE_SIZE as usize - 1]).unwrap();
    assert!(matches!(Reader::open(&p), Err(Error::Truncated { .. })));
}

#[test]
fn corrupt_header_fields_and_alias_table() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_bytes(dir.path());
    let cases: [(&str, usize, Vec<u8>); 4] = [
        ("count", 40, 65u32.to_ne_bytes().to_vec()),
        ("record offset", 24, 8u32.to_ne_bytes().to_vec()),
        ("alias width", 36, 32u32.to_ne_bytes().to_vec()),
        // Alias 0 without its NUL.
        ("alias", 256, vec![b'x'; 64]),
    ];
    for (what, off, patch) in cases {
        let mut bytes = good.clone();
        bytes[off..off + patch.len()].copy_from_slice(&patch);
        let e = open_err(&write(dir.path(), "corrupt", &bytes));
        assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e:?}");
    }
}

#[test]
fn a_replacement_that_cannot_be_opened_is_retried_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default"]);
    w.publish(&active(0));
    let r = Reader::open(&path).unwrap();
    w.reconfigure(
        &aliases(&["default", "failover1"]),
        settings(5 * SECOND),
        &active(0),
    )
    .unwrap();
    // Something unopenable stands at the path when the reader notices.
    let aside = dir.path().join("aside");
    std::fs::rename(&path, &aside).unwrap();
    std::fs::create_dir(&path).unwrap();
    let s = r.snapshot().unwrap();
    assert_eq!((s.generation, s.write_alias()), (1, Some("default")));
    // Put back: picked up on a later read, at most one recheck period later.
    std::fs::remove_dir(&path).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let s = r.snapshot().unwrap();
    assert_eq!((s.generation, s.endpoint_count()), (2, 2));
}

#[test]
fn probe_results_are_published_per_endpoint() {
    use dbha_protocol::probe_result;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default", "failover1", "failover2"]);
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.snapshot().unwrap().last_probe_name(1), "unknown");
    w.set_probe_result(0, probe_result::AUTH_FAILED);
    w.set_probe_result(1, probe_result::OK);
    w.set_probe_result(2, probe_result::NOT_READY);
    let s = r.snapshot().unwrap();
    assert_eq!(
        [
            s.last_probe_name(0),
            s.last_probe_name(1),
            s.last_probe_name(2),
            s.last_probe_name(3)
        ],
        ["auth_failed", "ok", "not_ready", "unknown"]
    );
}

#[test]
fn replica_lag_is_published_per_endpoint_and_a_restarted_writer_starts_it_unmeasured() {
    use dbha::ReplicaLag;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let names = ["default", "failover1", "failover2"];
    let mut w = writer(&path, &names);
    let r = Reader::open(&path).unwrap();
    assert!(r.snapshot().unwrap().replica_lag(1).is_empty());
    let behind = ReplicaLag {
        delay: Some(Duration::from_millis(7_250)),
        bytes: Some(1 << 20),
        lagging: true,
    };
    let caught_up = ReplicaLag {
        delay: Some(Duration::ZERO),
        bytes: Some(0),
        lagging: false,
    };
    w.set_lag(1, &behind);
    w.set_lag(2, &caught_up);
    w.set_probe_result(1, dbha_protocol::probe_result::OK);
    let s = r.snapshot().unwrap();
    assert_eq!(
        [s.replica_lag(0), s.replica_lag(1), s.replica_lag(2)],
        [ReplicaLag::default(), behind, caught_up]
    );
    // Past the endpoints: nothing, never a neighbour's slot or a fault.
    assert!(s.replica_lag(3).is_empty());
    assert!(s.replica_lag(u32::MAX).is_empty());
    drop(w);

    // A new writer has measured nothing yet: the last writer's lags and probe
    // results are gone with it.
    let (_w, opened) = open_writer(&path, &names);
    assert_eq!(opened, Opened::Reused);
    let s = r.snapshot().unwrap();
    assert!(s.replica_lag(1).is_empty());
    assert_eq!(s.last_probe_name(1), "unknown");
}

#[test]
fn fences_share_the_lag_slots_and_outlive_a_writer_restart_verdicts_do_not() {
    use dbha::{Fence, ReplicaLag};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let names = ["default", "failover1"];
    let mut w = writer(&path, &names);
    let r = Reader::open(&path).unwrap();
    let fenced = Fence {
        fenced: true,
        timeline: Some(1),
    };
    let lagging = ReplicaLag {
        delay: Some(Duration::from_secs(9)),
        bytes: None,
        lagging: true,
    };
    w.set_fence(0, &fenced);
    w.set_lag(0, &lagging);
    w.set_down(0, true);
    w.set_fence(
        1,
        &Fence {
            fenced: false,
            timeline: Some(2),
        },
    );
    let s = r.snapshot().unwrap();
    assert_eq!(
        (s.fence(0), s.replica_lag(0), s.is_down(0)),
        (fenced, lagging, true)
    );
    assert_eq!(s.fence(1).timeline, Some(2));
    assert!(!s.is_down(1));
    // Past the endpoints: nothing.
    assert_eq!(s.fence(2), Fence::default());
    // Clearing the lag leaves the fence.
    w.set_lag(0, &ReplicaLag::default());
    assert_eq!(r.snapshot().unwrap().fence(0), fenced);
    w.set_lag(0, &lagging);
    drop(w);

    // The next writer finds the fences (its memory of the split brain), and
    // neither the lags nor the verdicts of the previous one.
    let (w, opened) = open_writer(&path, &names);
    assert_eq!(opened, Opened::Reused);
    assert_eq!((w.fence(0), w.fence(1).timeline), (fenced, Some(2)));
    let s = r.snapshot().unwrap();
    assert_eq!(s.fence(0), fenced);
    assert!(s.replica_lag(0).is_empty());
    assert!(!s.is_down(0));
}

#[test]
fn endpoints_carry_the_configured_address_of_the_chosen_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default", "failover1"]);
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.write_endpoint(), None, "nothing published yet");
    w.publish(&Publication {
        write_index: 1,
        read_index: 0,
        health_mask: 0b11,
        ..Publication::NOTHING
    });
    let e = r.write_endpoint().unwrap();
    assert_eq!((e.alias, e.host, e.port), ("failover1", "10.0.0.2", 5433));
    let e = r.read_endpoint().unwrap();
    assert_eq!((e.alias, e.host, e.port), ("default", "10.0.0.1", 5432));
    let s = r.snapshot().unwrap();
    assert_eq!(s.write_endpoint().map(|e| e.host), Some("10.0.0.2"));
    assert_eq!(s.endpoint(0).map(|e| e.port), Some(5432));
    assert_eq!(s.endpoint(2), None);
    w.publish(&Publication::NOTHING);
    assert_eq!((r.write_endpoint(), r.read_endpoint()), (None, None));
    assert_eq!(r.snapshot().unwrap().write_endpoint(), None);
}

#[test]
fn a_changed_address_supersedes_the_file_and_slots_keep_their_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default", "failover1"]);
    w.publish(&active(0));
    let r = Reader::open(&path).unwrap();
    let before = r.write_endpoint().unwrap();
    assert_eq!(before.host, "10.0.0.1");

    // Same aliases, `default` moved to another host: a new file, never a rewrite.
    let mut moved = aliases(&["default", "failover1"]);
    moved[0].host = "db-new.example.com".into();
    let opened = w
        .reconfigure(&moved, settings(5 * SECOND), &active(0))
        .unwrap();
    assert_eq!(opened, Opened::Replaced);
    let after = r.write_endpoint().unwrap();
    assert_eq!((after.alias, after.host), ("default", "db-new.example.com"));
    assert_eq!(r.active_slot(), Some((2, 0)));
    assert_eq!(r.endpoint_in(1, 0).unwrap().host, "10.0.0.1");
    assert_eq!(before.host, "10.0.0.1", "handed-out hosts stay valid");

    // The same configuration again keeps the file.
    let opened = w
        .reconfigure(&moved, settings(5 * SECOND), &active(0))
        .unwrap();
    assert_eq!(opened, Opened::Reused);
    assert_eq!(r.active_slot(), Some((2, 0)));
}

/// Rewrites a writer's file as an agent from before the address table wrote it:
/// the header words of the address table and of the lag area zero, the file 8192
/// bytes long.
fn strip_addresses(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[16..24].copy_from_slice(&8192u64.to_ne_bytes());
    bytes[56..72].fill(0);
    bytes.truncate(8192);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_file_of_the_layout_without_addresses_is_read_and_replaced_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default", "failover1"]);
    let epoch = w.publish(&active(1)).unwrap();
    // Bytes where the lag area would be mean nothing when the header has none.
    w.set_lag(
        1,
        &dbha::ReplicaLag {
            lagging: true,
            ..Default::default()
        },
    );
    drop(w);
    strip_addresses(&path);

    let r = Reader::open(&path).unwrap();
    assert_eq!(r.active_alias(), Some("failover1"));
    assert_eq!(r.write_endpoint(), None, "no addresses to hand out");
    assert_eq!(r.snapshot().unwrap().endpoint(0), None);
    assert!(
        r.snapshot().unwrap().replica_lag(1).is_empty(),
        "no lag area"
    );

    // The current writer never uses another layout's file in place.
    let (w, opened) = open_writer(&path, &["default", "failover1"]);
    assert_eq!(opened, Opened::Replaced);
    assert!(w.values().epoch > epoch);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_SIZE);
    // The old file's readers were told, and moved to the new file.
    let s = r.snapshot().unwrap();
    assert_eq!(s.generation, 2);
    assert_eq!(s.endpoint(1).map(|e| e.host), Some("10.0.0.2"));
}

#[test]
fn an_index_past_the_endpoints_is_none_for_rust_and_c() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default", "failover1"]);
    w.publish(&Publication {
        write_index: 7,
        read_index: 1,
        health_mask: 0b11,
        ..Publication::NOTHING
    });
    let r = Reader::open(&path).unwrap();
    let s = r.snapshot().unwrap();
    // Writes have no endpoint, reads have one: reads only.
    assert_eq!(s.status, Status::ReadOnly);
    assert_eq!((s.write_index, s.write_alias()), (None, None));
    assert_eq!(s.read_alias(), Some("failover1"));
    assert_eq!((r.active_alias(), r.active_slot()), (None, None));
    assert_eq!(r.read_alias(), Some("failover1"));
    // What a C caller gets: never ACTIVE with a NULL write alias.
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut handle = std::ptr::null_mut();
    let read_c = |handle| {
        // SAFETY: an all-zero dbha_snapshot is valid (integers and NULL
        // pointers); `handle` is open while this is called.
        unsafe {
            let mut snap = std::mem::zeroed::<dbha::ffi::dbha_snapshot>();
            assert_eq!(dbha::ffi::dbha_read(handle, &mut snap), 0);
            snap
        }
    };
    // SAFETY: a NUL-terminated path and a valid out-pointer; the handle is closed
    // below and used only in between, and the strings read before it is.
    unsafe {
        assert_eq!(dbha::ffi::dbha_open(c_path.as_ptr(), &mut handle), 0);
        let snap = read_c(handle);
        assert_eq!(snap.status, dbha::ffi::DBHA_STATUS_READ_ONLY);
        assert!(snap.write_alias.is_null());
        assert_eq!(snap.write_index, dbha_protocol::NONE);
        assert_eq!(
            std::ffi::CStr::from_ptr(snap.read_alias).to_str(),
            Ok("failover1")
        );
        assert!(dbha::ffi::dbha_active_alias(handle).is_null());
        assert_eq!(
            std::ffi::CStr::from_ptr(dbha::ffi::dbha_read_alias(handle)).to_str(),
            Ok("failover1")
        );
        // Both out of range: nothing.
        w.publish(&Publication {
            write_index: 7,
            read_index: 9,
            health_mask: 0b11,
            ..Publication::NOTHING
        });
        let snap = read_c(handle);
        assert_eq!(snap.status, dbha::ffi::DBHA_STATUS_NO_HEALTHY_DATABASE);
        assert!(snap.write_alias.is_null() && snap.read_alias.is_null());
        assert!(dbha::ffi::dbha_read_alias(handle).is_null());
        dbha::ffi::dbha_close(handle);
    }
    assert_eq!(r.snapshot().unwrap().status, Status::NoHealthyDatabase);
    assert_eq!(r.read_alias(), None);
}

#[test]
fn a_heartbeat_from_before_a_reboot_reads_as_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default"]);
    w.publish(&active(0));
    drop(w);
    // The monotonic clock starts again at boot: a kept file's heartbeat is then
    // "in the future". Word 2 of the record (at 128) is heartbeat_mono_ns.
    let mut bytes = std::fs::read(&path).unwrap();
    let hb = u64::from_ne_bytes(bytes[144..152].try_into().unwrap());
    bytes[144..152].copy_from_slice(&(hb + 3600 * SECOND).to_ne_bytes());
    std::fs::write(&path, bytes).unwrap();
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.snapshot().unwrap().status, Status::Stale);
    assert_eq!(r.active_alias(), None);
}

#[test]
fn a_superseded_file_that_still_names_itself_is_not_mapped_again_on_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let kept = dir.path().join("old");
    let mut w = writer(&path, &["default"]);
    w.publish(&active(0));
    let r = Reader::open(&path).unwrap();
    std::fs::hard_link(&path, &kept).unwrap();
    // The agent replaces the file and flags the old one; then the old one is put
    // back at the path (a restore, a stray copy): a superseded file naming itself.
    w.reconfigure(&aliases(&["other"]), settings(5 * SECOND), &active(0))
        .unwrap();
    std::fs::rename(&kept, &path).unwrap();
    for _ in 0..10_000 {
        let _ = r.active_alias();
    }
    let generation = r.snapshot().unwrap().generation;
    assert!(
        generation <= 2,
        "the reader mapped the same file {generation} times"
    );
}

#[test]
fn a_writer_descheduled_mid_publication_makes_reads_wait_not_fail() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default"]);
    w.publish(&active(0));
    let r = std::sync::Arc::new(Reader::open(&path).unwrap());
    // The writer stored the odd sequence word (at 128) and lost the CPU before
    // the even one: far longer than any spin.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut word = [0u8; 8];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut word, 128)
        .unwrap();
    let seq = u64::from_ne_bytes(word);
    file.write_all_at(&(seq | 1).to_ne_bytes(), 128).unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let r = r.clone();
            std::thread::spawn(move || r.snapshot().map(|s| s.write_alias().map(String::from)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(10));
    file.write_all_at(&((seq | 1) + 1).to_ne_bytes(), 128)
        .unwrap();
    for t in readers {
        let got = t.join().unwrap();
        assert!(
            matches!(got.as_ref().map(|a| a.as_deref()), Ok(Some("default"))),
            "a read during a descheduled publication: {got:?}"
        );
    }
}

#[test]
fn a_reader_stuck_on_a_dead_writers_half_publication_moves_to_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    drop(writer(&path, &["default"]));
    // The writer died mid-publication: the sequence word (at 128) is odd.
    let mut bytes = std::fs::read(&path).unwrap();
    let seq = u64::from_ne_bytes(bytes[128..136].try_into().unwrap());
    bytes[128..136].copy_from_slice(&(seq | 1).to_ne_bytes());
    std::fs::write(&path, bytes).unwrap();
    let r = Reader::open(&path).unwrap();
    assert!(matches!(r.snapshot(), Err(Error::Contended { .. })));
    // A new agent finds the path empty (a cleaned runtime directory) and starts anew.
    std::fs::remove_file(&path).unwrap();
    let mut w = writer(&path, &["default"]);
    w.publish(&active(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while r.active_alias() != Some("default") {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader stayed on the half-published file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A valid file whose header places things elsewhere than this writer does: the
/// record at 384, the aliases at 512, no address table, the probe results in the
/// file's last 64 bytes; with a record there that says "default is active".
fn foreign_layout(dir: &Path) -> PathBuf {
    let mut bytes = valid_bytes(dir);
    let mut h = Header::decode(&bytes).unwrap();
    let aliases = bytes[h.aliases_offset as usize..h.aliases_end() as usize].to_vec();
    bytes[128..].fill(0);
    h.record_offset = 384;
    h.aliases_offset = 512;
    h.addresses_offset = 0;
    h.address_width = 0;
    h.details_offset = (FILE_SIZE - 64) as u32;
    h.lag_offset = 0;
    h.lag_width = 0;
    h.dcs_offset = 0;
    h.dcs_size = 0;
    bytes[..128].copy_from_slice(&h.encode());
    bytes[512..512 + aliases.len()].copy_from_slice(&aliases);
    let planted = dbha_protocol::RecordValues {
        epoch: 7,
        write_index: 0,
        read_index: 0,
        health_mask: 1,
        stale_after_ns: 3600 * SECOND,
        heartbeat_mono_ns: dbha_protocol_now(),
        ..Default::default()
    };
    for (i, w) in planted.to_words().iter().enumerate() {
        let at = 384 + 8 + i * 8;
        bytes[at..at + 8].copy_from_slice(&w.to_ne_bytes());
    }
    write(dir, "state", &bytes)
}

fn dbha_protocol_now() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * SECOND + t.tv_nsec() as u64
}

#[test]
fn a_file_with_other_offsets_is_replaced_touching_only_its_own_record() {
    // Issue 13 row 4: the writer used its own offsets on any valid file: the
    // record went to 128 whatever the header said (readers kept the planted
    // decision) and the probe results were written past its 8 KiB mapping.
    let dir = tempfile::tempdir().unwrap();
    let path = foreign_layout(dir.path());
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.snapshot().unwrap().write_alias(), Some("default"));
    let old = std::fs::File::open(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let (mut w, opened) = open_writer(&path, &["default", "failover1"]);
    assert_eq!(opened, Opened::Replaced);
    for i in 0..2 {
        w.set_probe_result(i, dbha_protocol::probe_result::REFUSED);
    }
    w.publish(&Publication::NOTHING);
    // The old inode: only its own record changed (SUPERSEDED), nothing else.
    let mut after = vec![0u8; before.len()];
    std::os::unix::fs::FileExt::read_exact_at(&old, &mut after, 0).unwrap();
    for (at, (b, a)) in before.iter().zip(&after).enumerate() {
        if b != a {
            assert!(
                (384..512).contains(&at),
                "byte {at} of the replaced file changed"
            );
        }
    }
    let flags = u64::from_ne_bytes(after[384 + 8 + 8 * 8..384 + 8 + 9 * 8].try_into().unwrap());
    assert_ne!(flags & dbha_protocol::flags::SUPERSEDED, 0);
    // Its reader moves to the new file and its decision: none yet.
    let s = r.snapshot().unwrap();
    assert_eq!(
        (s.status, s.write_alias()),
        (Status::NoHealthyDatabase, None)
    );
    assert_eq!(s.last_probe_name(1), "refused");
}

#[test]
fn the_lock_is_the_writers_alone_a_reader_of_the_lock_file_cannot_hold_it() {
    // Issue 13 row 3: the lock was a flock on a 0644 file, which any local user
    // could take through a read-only descriptor, keeping the agent from starting.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let lock = dbha_protocol::writer::lock_path(&path);
    // A lock file of an older release, readable by all, held (flock) read-only.
    std::fs::write(&lock, b"12345\n").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    let reader_held = std::fs::File::open(&lock).unwrap();
    let _held = nix::fcntl::Flock::lock(reader_held, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let w = writer(&path, &["default"]);
    let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the lock file is the writer's alone");
    // A read-only descriptor cannot take the writer's lock at all.
    let ro = std::fs::File::open(&lock).unwrap();
    let whole = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    assert_eq!(
        nix::fcntl::fcntl(&ro, nix::fcntl::FcntlArg::F_OFD_SETLK(&whole)),
        Err(nix::errno::Errno::EBADF)
    );
    drop(w);
    // Released with the writer: the next one takes it.
    drop(writer(&path, &["default"]));
}

#[test]
fn a_fifo_at_the_path_is_refused_without_waiting_for_a_writer() {
    // Issue 13 row 5: opening without O_NONBLOCK waited forever for a FIFO's
    // writer, hanging `dbha-agent status` and the application's reopen.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Reader::open(&f).err());
    });
    let e = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("Reader::open on a FIFO returned within 30 s")
        .expect("a FIFO is refused");
    assert!(matches!(e, Error::NotRegularFile { .. }), "{e}");
    // A live reader whose path becomes a FIFO (the agent's file removed, a FIFO
    // put there) keeps reading without blocking.
    let path = dir.path().join("state");
    let mut w = writer(&path, &["default"]);
    w.publish(&active(0));
    let r = Reader::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    w.mark_stopped();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(r.snapshot().map(|s| s.status));
    });
    let status = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a read returned within 30 s");
    assert_eq!(status.unwrap(), Status::AgentStopped);
}

#[test]
fn the_dcs_area_is_read_whole_and_a_new_writer_starts_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let (mut w, _) = open_writer(&path, &["default", "failover1"]);
    let r = Reader::open(&path).unwrap();
    // An agent that follows no DCS says nothing.
    assert_eq!(r.snapshot().unwrap().dcs(), None);
    let d = dbha::Dcs {
        connected: true,
        revision: 42,
        resyncs: 1,
        confirmed_mono_ns: Some(dbha_protocol_now()),
        window: Some(std::time::Duration::from_secs(8)),
        leader: Some("pg1".into()),
        leader_index: Some(1),
        ..Default::default()
    };
    w.set_dcs(Some(&d));
    assert_eq!(r.snapshot().unwrap().dcs(), Some(d.clone()));
    let lost = dbha::Dcs {
        connected: false,
        no_writes: dbha::no_writes::UNCONFIRMED,
        ..d
    };
    w.set_dcs(Some(&lost));
    assert_eq!(r.snapshot().unwrap().dcs(), Some(lost));
    // The next agent on the file: the previous one's view is not its own.
    drop(w);
    let (_w, opened) = open_writer(&path, &["default", "failover1"]);
    assert_eq!(opened, Opened::Reused);
    assert_eq!(r.snapshot().unwrap().dcs(), None);
}
