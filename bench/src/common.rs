//! What the benchmarks share: the agent binary and processes, waiting on a reader,
//! and the statistics the tables report.

use dbha::Reader;
use dbha_harness::wait::poll;
use dbha_tests::agentproc::Timing;
use dbha_tests::live::Live;
use dbha_tests::Children;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn spawn_agent(dir: &Path, config: &str, children: &mut Children) -> PathBuf {
    let path = dir.join("dbha.toml");
    std::fs::write(&path, config).unwrap();
    children.push(
        Command::new(dbha_tests::agent_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbha-agent"),
    );
    dir.join("state")
}

pub fn open_reader(state: &Path) -> Reader {
    poll(Duration::from_millis(5), Duration::from_secs(30), || {
        Reader::open(state).ok()
    })
    .unwrap_or_else(|| panic!("no state file at {}", state.display()))
    .0
}

/// Polls the reader (every 50 us, leaving the cores to the agent and the servers)
/// until writes go to `want`; the time it took.
pub fn until_write(r: &Reader, want: &str) -> Duration {
    poll(Duration::from_micros(50), Duration::from_secs(30), || {
        (r.write_alias() == Some(want)).then_some(())
    })
    .unwrap_or_else(|| panic!("writes never went to {want}"))
    .1
}

/// Polls every 50 µs until `from` is no longer the write alias (another one, or
/// none: no longer handed to readers); the time it took.
pub fn until_write_leaves(r: &Reader, from: &str) -> Duration {
    poll(Duration::from_micros(50), Duration::from_secs(30), || {
        (r.write_alias() != Some(from)).then_some(())
    })
    .unwrap_or_else(|| panic!("writes never left {from}"))
    .1
}

pub fn summary_row(what: &str, times: &mut [f64], expected: &str) {
    times.sort_by(f64::total_cmp);
    println!(
        "| {what} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {expected} |",
        times.len(),
        percentile(times, 0.5),
        percentile(times, 0.99),
        times[0],
        times[times.len() - 1]
    );
}

/// Three live clusters and the settings the failover comparisons share.
pub fn live_setup(bench: &str) -> (Live, Timing) {
    let Some(live) = Live::start(&["default", "failover1", "failover2"]) else {
        eprintln!("dbha-bench {bench} needs the PostgreSQL server (apt-get install postgresql)");
        std::process::exit(1);
    };
    (live, fast())
}

/// The comparisons' settings, HAProxy's at `inter 100ms`: probes every 100
/// ms, a 200 ms timeout, rise and fall 2, stale after 1 s, automatic failback.
pub fn fast() -> Timing {
    Timing {
        interval_ms: 100,
        timeout_ms: 200,
        rise: 2,
        fall: 2,
        stale_after_ms: 1000,
        failback: "auto",
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Polls `done` every millisecond from now; the time it took.
pub fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    poll(Duration::from_millis(1), Duration::from_secs(60), || {
        done().then_some(())
    })
    .unwrap_or_else(|| panic!("{what} never happened"))
    .1
}

/// A process's CPU from `/proc/PID/stat`, in clock ticks (see [`clk_tck`]).
pub struct ProcStat {
    pub ppid: i32,
    /// utime + stime: its own.
    pub own: u64,
    /// cutime + cstime: its children's that it has reaped.
    pub reaped: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // After the comm: state, ppid (1), ... utime (11), stime (12), cutime (13),
    // cstime (14).
    Some(ProcStat {
        ppid: f.get(1)?.parse().ok()?,
        own: n(11)? + n(12)?,
        reaped: n(13)? + n(14)?,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux dbha targets).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A tiny deterministic generator (xorshift64*): the soaks' sequences of
/// events, the same for the same seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// Clock ticks of CPU process `pid` has used so far: its own, its reaped
/// children's (cutime, cstime), and every live child's own (a postmaster's
/// backends). 0 when it is gone.
pub fn tree_ticks(pid: u32) -> u64 {
    let Some(me) = proc_stat(pid) else {
        return 0;
    };
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|s| u32::try_from(s.ppid).ok() == Some(pid))
        .map(|s| s.own)
        .sum();
    me.own + me.reaped + children
}
