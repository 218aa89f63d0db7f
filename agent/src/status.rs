//! `dbha-agent status` and `watch`: what a reader sees, through the same reader
//! library the applications use.

use dbha::{no_writes, Dcs, Reader, ReplicaLag, Role, Snapshot, Status};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The stable JSON form of a snapshot (`status --json`).
pub fn to_json(path: &Path, s: &Snapshot<'_>) -> serde_json::Value {
    let endpoints: Vec<_> = (0..s.endpoint_count())
        .map(|i| {
            json!({
                "index": i,
                "alias": s.alias(i),
                "healthy": s.is_healthy(i),
                "health": health_name(s, i),
                "fenced": s.fence(i).fenced,
                "timeline": s.fence(i).timeline,
                "role": s.role(i).name(),
                "last_probe": s.last_probe_name(i),
                "replica_lag": lag_json(&s.replica_lag(i)),
            })
        })
        .collect();
    json!({
        "state_file": path.display().to_string(),
        "status": s.status.name(),
        "stale": s.status == Status::Stale,
        "epoch": s.epoch,
        "heartbeat_age_ms": s.heartbeat_age.as_millis() as u64,
        "heartbeat_wall_unix_ms": s.heartbeat_wall_ns / 1_000_000,
        "stale_after_ms": s.stale_after.as_millis() as u64,
        "write": s.write_alias(),
        // The older name of "write", kept for scripts that parse it.
        "active": s.write_alias(),
        "read": s.read_alias(),
        "write_index": s.write_index,
        "read_index": s.read_index,
        "writer_pid": s.writer_pid,
        "config_generation": s.config_generation,
        "flags": {"stopped": s.stopped(), "conflict": s.conflict()},
        "endpoints": endpoints,
        "dcs": s.dcs().map(|d| dcs_json(s, &d)),
    })
}

/// How long ago the DCS last confirmed the leader, on this host's monotonic
/// clock.
fn confirmation_age(d: &Dcs) -> Option<Duration> {
    let (now, _) = dbha_protocol::writer::now_ns();
    d.confirmed_mono_ns
        .map(|t| Duration::from_nanos(now.saturating_sub(t)))
}

/// The JSON form of the DCS area (`status --json`).
fn dcs_json(s: &Snapshot<'_>, d: &Dcs) -> serde_json::Value {
    json!({
        "connected": d.connected,
        "revision": d.revision,
        "leader": d.leader,
        "leader_alias": d.leader_index.and_then(|i| s.alias(i)),
        "confirmation_age_ms": confirmation_age(d).map(|a| a.as_millis() as u64),
        "window_ms": d.window.map(|w| w.as_millis() as u64),
        "failsafe": d.failsafe,
        "resyncs": d.resyncs,
        "no_writes": (d.no_writes != no_writes::NONE).then(|| no_writes::name(d.no_writes)),
    })
}

/// The DCS area in words: "etcd connected, revision 1234, leader pg1 (db1),
/// confirmed 0.8s ago (window 8s), 2 resyncs".
pub fn describe_dcs(s: &Snapshot<'_>, d: &Dcs) -> String {
    let mut parts = vec![
        if d.connected {
            "etcd connected".to_string()
        } else {
            "etcd LOST".to_string()
        },
        format!("revision {}", d.revision),
    ];
    let leader = match (&d.leader, d.leader_index.and_then(|i| s.alias(i))) {
        (None, _) => "no leader".to_string(),
        (Some(l), Some(a)) if a == l => format!("leader {l}"),
        (Some(l), Some(a)) => format!("leader {l} ({a})"),
        (Some(l), None) => format!("leader {l} (matches no database)"),
    };
    parts.push(if d.failsafe {
        format!("failsafe: {leader}")
    } else {
        leader
    });
    parts.push(match (confirmation_age(d), d.window) {
        (None, _) => "never confirmed".into(),
        (Some(a), Some(w)) => format!(
            "confirmed {:.1}s ago (trusted for {:.0}s)",
            a.as_secs_f64(),
            w.as_secs_f64()
        ),
        (Some(a), None) => format!("confirmed {:.1}s ago", a.as_secs_f64()),
    });
    parts.push(format!(
        "{} resync{}",
        d.resyncs,
        if d.resyncs == 1 { "" } else { "s" }
    ));
    if d.no_writes != no_writes::NONE {
        parts.push(format!("no writes: {}", no_writes::name(d.no_writes)));
    }
    parts.join(", ")
}

/// Writes `text` to standard output; false when it cannot be written (a reader
/// of the pipe that went away, as `| head` does): the command then ends quietly,
/// as a Unix tool killed by SIGPIPE would, rather than panic.
pub fn out(text: &str) -> bool {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_ok()
}

/// Exit codes: 0 active, 3 reads only (a failover window; 0 with
/// `read_only_ok`), 2 readable but neither (no healthy database, stale,
/// stopped), 1 unreadable.
pub fn status(path: &Path, json: bool, read_only_ok: bool) -> i32 {
    let reader = match Reader::open(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dbha-agent status: {e}");
            return 1;
        }
    };
    let s = match reader.snapshot() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dbha-agent status: {e}");
            return 1;
        }
    };
    if json {
        out(&format!("{}\n", to_json(path, &s)));
    } else {
        out(&human(path, &s));
    }
    exit_code(s.status, read_only_ok)
}

fn exit_code(status: Status, read_only_ok: bool) -> i32 {
    match status {
        Status::Active => 0,
        Status::ReadOnly if read_only_ok => 0,
        Status::ReadOnly => 3,
        Status::NoHealthyDatabase | Status::Stale | Status::AgentStopped => 2,
    }
}

/// The agent's verdict on endpoint `i`: "up", "down", or "unknown" (no verdict
/// yet: a new agent, or results that alternate).
fn health_name(s: &Snapshot<'_>, i: u32) -> &'static str {
    if s.is_healthy(i) {
        "up"
    } else if s.is_down(i) {
        "down"
    } else {
        "unknown"
    }
}

fn human(path: &Path, s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line("state file", path.display().to_string());
    line("status", s.status.name().to_string());
    line("epoch", s.epoch.to_string());
    line(
        "heartbeat",
        format!(
            "{:.1}s ago (stale after {:?})",
            s.heartbeat_age.as_secs_f64(),
            s.stale_after
        ),
    );
    line("write", s.write_alias().unwrap_or("NONE").to_string());
    line("read", s.read_alias().unwrap_or("NONE").to_string());
    line(
        "agent",
        format!(
            "pid {}, config generation {}",
            s.writer_pid, s.config_generation
        ),
    );
    let mut flags = Vec::new();
    if s.stopped() {
        flags.push("stopped");
    }
    if s.conflict() {
        flags.push("conflict");
    }
    line(
        "flags",
        if flags.is_empty() {
            "-".into()
        } else {
            flags.join(",")
        },
    );
    if let Some(d) = s.dcs() {
        line("dcs", describe_dcs(s, &d));
    }
    out.push_str(&format!(
        "\n{:<5} {:<24} {:<7} {:<12} {:<12} {}\n",
        "INDEX", "ALIAS", "HEALTH", "ROLE", "LAST PROBE", "REPLICA LAG"
    ));
    let mut fenced = false;
    for i in 0..s.endpoint_count() {
        let mut role = s.role(i).name().to_string();
        if s.write_index == Some(i) {
            role.push_str(" *");
        }
        if s.fence(i).fenced {
            role.push_str(" F");
            fenced = true;
        }
        let lag = match (s.role(i), s.replica_lag(i)) {
            (Role::Primary, _) => "-".to_string(),
            (_, lag) => lag_column(&lag),
        };
        out.push_str(
            format!(
                "{:<5} {:<24} {:<7} {:<12} {:<12} {}",
                i,
                s.alias(i).unwrap_or("?"),
                health_name(s, i),
                role,
                s.last_probe_name(i),
                lag
            )
            .trim_end(),
        );
        out.push('\n');
    }
    out.push_str("\n* the write endpoint\n");
    if fenced {
        out.push_str(
            "F fenced: takes no writes until seen as a standby (or `dbha-agent unfence ALIAS`)\n",
        );
    }
    out
}

/// A standby's measured lag, "1.250s, 4.0 MiB" (replay delay, WAL bytes behind
/// the primary); None when nothing was measured. The status table and the log
/// both say it so.
pub fn describe_lag(lag: &ReplicaLag) -> Option<String> {
    let parts: Vec<String> = [
        lag.delay.map(|d| format!("{:.3}s", d.as_secs_f64())),
        lag.bytes.map(bytes),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The status table's lag column: the measured lag, and whether it keeps the
/// standby out of the reads.
fn lag_column(lag: &ReplicaLag) -> String {
    let mut out = describe_lag(lag).unwrap_or_else(|| "-".into());
    if lag.lagging {
        out.push_str(" (over the limit: no reads)");
    }
    out
}

/// A byte count in the largest binary unit that keeps it at 1 or more.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The JSON form of a lag: null when nothing was measured.
fn lag_json(lag: &ReplicaLag) -> serde_json::Value {
    if lag.is_empty() {
        return serde_json::Value::Null;
    }
    json!({
        "seconds": lag.delay.map(|d| d.as_secs_f64()),
        "bytes": lag.bytes,
        "lagging": lag.lagging,
    })
}

/// UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Why the published decision changed, as far as the snapshot tells.
fn reason(old: &Snapshot<'_>, new: &Snapshot<'_>) -> String {
    // Stale and stopped are already in the description of the new state.
    if matches!(new.status, Status::Stale | Status::AgentStopped) {
        return String::new();
    }
    if let Some(d) = new.dcs().filter(|d| d.no_writes != no_writes::NONE) {
        if new.write_index.is_none() {
            return format!("dcs: {}", no_writes::name(d.no_writes));
        }
    }
    let alias = |i: u32| old.alias(i).unwrap_or("?");
    let same_tables = old.generation == new.generation;
    if let Some(i) = old.write_index.filter(|_| same_tables) {
        if new.write_index != Some(i) {
            if new.fence(i).fenced {
                return format!("{} fenced", alias(i));
            }
            if !new.is_healthy(i) && old.is_healthy(i) {
                return format!("{} {}", alias(i), health_name(new, i));
            }
            if new.write_index.is_some_and(|n| n < i) {
                return format!("failback to {}", new.write_alias().unwrap_or("?"));
            }
        }
    }
    if !same_tables {
        return "configuration changed".into();
    }
    if matches!(old.status, Status::Stale | Status::AgentStopped) {
        return "agent live".into();
    }
    if old.write_index == new.write_index && old.read_index != new.read_index {
        return format!(
            "reads: {} -> {}",
            old.read_alias().unwrap_or("NONE"),
            new.read_alias().unwrap_or("NONE")
        );
    }
    if new.status == Status::ReadOnly && old.status != Status::ReadOnly {
        return "no database takes writes".into();
    }
    if new.status == Status::NoHealthyDatabase {
        return if new.health_mask == 0 {
            "no healthy database".into()
        } else {
            "no database takes writes".into()
        };
    }
    String::new()
}

fn describe(s: &Snapshot<'_>) -> String {
    match s.status {
        Status::Active | Status::NoHealthyDatabase => s.write_alias().unwrap_or("NONE").to_string(),
        Status::ReadOnly => format!(
            "NONE (read only, reads: {})",
            s.read_alias().unwrap_or("NONE")
        ),
        other => format!("NONE ({})", other.name().replace('_', " ")),
    }
}

/// `dbha-agent watch`: one line per change until interrupted.
pub fn watch(path: &Path, poll: Duration) -> i32 {
    let reader = match Reader::open(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dbha-agent watch: {e}");
            return 1;
        }
    };
    let mut last: Option<Snapshot<'_>> = None;
    let mut last_dcs = None;
    loop {
        if let Ok(s) = reader.snapshot() {
            // The DCS source's changes of state (not its revision or the age of
            // its confirmation, which move all the time).
            let area = s.dcs();
            let dcs = area.as_ref().map(|d| {
                (
                    d.connected,
                    d.failsafe,
                    d.leader.clone(),
                    d.leader_index,
                    d.no_writes,
                )
            });
            if let Some(d) = area.filter(|_| dcs != last_dcs) {
                let line = format!("{} dcs: {}\n", utc(SystemTime::now()), describe_dcs(&s, &d));
                if !out(&line) {
                    return 0;
                }
                last_dcs = dcs;
            }
            fn key<'a>(s: &Snapshot<'a>) -> (u64, Status, u64, Option<&'a str>, Option<&'a str>) {
                (
                    s.epoch,
                    s.status,
                    s.generation,
                    s.write_alias(),
                    s.read_alias(),
                )
            }
            if last.as_ref().is_none_or(|l| key(l) != key(&s)) {
                let now = utc(SystemTime::now());
                let line = match &last {
                    None => format!(
                        "{now} epoch {} write: {} (status {})\n",
                        s.epoch,
                        describe(&s),
                        s.status.name()
                    ),
                    Some(l) => {
                        let why = reason(l, &s);
                        format!(
                            "{now} epoch {} write: {} -> {}{}\n",
                            s.epoch,
                            describe(l),
                            describe(&s),
                            if why.is_empty() {
                                String::new()
                            } else {
                                format!(" ({why})")
                            }
                        )
                    }
                };
                if !out(&line) {
                    return 0;
                }
                last = Some(s);
            }
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_shown_in_seconds_and_binary_units_and_says_when_it_takes_no_reads() {
        let lag = |ms: Option<u64>, b: Option<u64>, lagging| ReplicaLag {
            delay: ms.map(Duration::from_millis),
            bytes: b,
            lagging,
        };
        assert_eq!(describe_lag(&ReplicaLag::default()), None);
        assert_eq!(lag_column(&ReplicaLag::default()), "-");
        assert_eq!(lag_column(&lag(Some(0), Some(0), false)), "0.000s, 0 B");
        assert_eq!(
            lag_column(&lag(Some(7_250), Some(5 << 20), true)),
            "7.250s, 5.0 MiB (over the limit: no reads)"
        );
        assert_eq!(lag_column(&lag(None, Some(1536), false)), "1.5 KiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(lag_json(&ReplicaLag::default()), serde_json::Value::Null);
        assert_eq!(
            lag_json(&lag(Some(1_500), None, true)),
            json!({"seconds": 1.5, "bytes": null, "lagging": true})
        );
    }

    #[test]
    fn exit_codes_tell_reads_only_apart() {
        let codes: Vec<i32> = [
            Status::Active,
            Status::ReadOnly,
            Status::NoHealthyDatabase,
            Status::Stale,
            Status::AgentStopped,
        ]
        .iter()
        .flat_map(|&s| [exit_code(s, false), exit_code(s, true)])
        .collect();
        assert_eq!(codes, [0, 0, 3, 0, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn utc_formats_known_instants() {
        let t = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(utc(t(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(t(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(utc(t(1_795_639_286, 123)), "2026-11-25T20:41:26.123Z");
    }
}
