//! Network faults for the failover benchmarks: a blackholed server.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Drops every packet to one TCP port on this host (a nftables table of its own),
/// as a blackholed host does; the table is removed when this is dropped.
pub struct Blackhole {
    nft: PathBuf,
    port: u16,
    on: Cell<bool>,
}

impl Blackhole {
    const TABLE: &'static str = "dbha_bench_blackhole";

    fn nft(&self, args: &[&str]) -> bool {
        Command::new(&self.nft)
            .args(args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn on(&self) {
        let chain = "{ type filter hook input priority 0; }";
        let rule = format!("tcp dport {} drop", self.port);
        let ok = self.nft(&["add", "table", "inet", Self::TABLE])
            && self.nft(&["add", "chain", "inet", Self::TABLE, "input", chain])
            && self.nft(&["add", "rule", "inet", Self::TABLE, "input", &rule]);
        assert!(
            ok,
            "nft could not add the blackhole rule (root and nftables are needed)"
        );
        self.on.set(true);
    }

    pub fn off(&self) {
        if self.on.replace(false) {
            self.nft(&["delete", "table", "inet", Self::TABLE]);
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.off();
    }
}

impl Blackhole {
    /// A blackhole for `port` (not yet on), or None when nft is missing (and not
    /// under CI, where that fails).
    pub fn for_port(port: u16) -> Option<Blackhole> {
        let nft = dbha_tests::require(
            "nft",
            "to blackhole a server for the comparison (apt-get install nftables)",
        )?;
        Some(Blackhole {
            nft,
            port,
            on: Cell::new(false),
        })
    }
}
