//! Agent configuration texts for the demo, the tests and the benchmarks: timings
//! and policy, and the databases in priority order.

use std::path::Path;
use std::time::Duration;

/// Timings and policy for [`config`].
#[derive(Debug, Clone)]
pub struct Timing {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub stale_after_ms: u64,
    pub failback: &'static str,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            interval_ms: 50,
            timeout_ms: 200,
            rise: 2,
            fall: 2,
            stale_after_ms: 1000,
            failback: "sticky",
        }
    }
}

impl Timing {
    /// The settings of the live PostgreSQL tests: probes every 100 ms, a 300 ms
    /// timeout, rise and fall 2, stale after 1 s.
    pub fn live(failback: &'static str) -> Timing {
        Timing {
            interval_ms: 100,
            timeout_ms: 300,
            rise: 2,
            fall: 2,
            stale_after_ms: 1000,
            failback,
        }
    }

    /// The shipped example's settings (`packaging/dbha.toml`): interval and
    /// timeout 1 s, rise 2, fall 3, stale after 5 s, sticky failback.
    pub fn example() -> Timing {
        Timing {
            interval_ms: 1000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
            stale_after_ms: 5000,
            failback: "sticky",
        }
    }

    /// The longest a fault may take to be published: `fall` probes, each taking at
    /// most the longer of interval and timeout, plus one interval of phase.
    pub fn detection_bound(&self) -> Duration {
        Duration::from_millis(
            u64::from(self.fall) * self.interval_ms.max(self.timeout_ms) + self.interval_ms,
        )
    }
}

/// A configuration text: `dbs` are (alias, host, port, check), in priority order.
pub fn config(state: &Path, t: &Timing, dbs: &[(&str, &str, u16, &str)], extra: &str) -> String {
    let mut s = format!(
        "state_file = \"{}\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {}\nfall = {}\nstale_after = \"{}ms\"\nfailback = \"{}\"\n{extra}\n",
        state.display(),
        t.interval_ms,
        t.timeout_ms,
        t.rise,
        t.fall,
        t.stale_after_ms,
        t.failback
    );
    for (alias, host, port, check) in dbs {
        s.push_str(&format!(
            "[[database]]\nalias = \"{alias}\"\nhost = \"{host}\"\nport = {port}\ncheck = \"{check}\"\n"
        ));
    }
    s
}
