//! Network faults for the live tests and the failover benchmarks: a blackholed
//! server.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Drops every packet to one TCP port on this host (a nftables table of its own,
/// named after the port), as a blackholed host does; the table is removed when
/// this is dropped.
pub struct Blackhole {
    nft: PathBuf,
    port: u16,
    on: Cell<bool>,
}

impl Blackhole {
    fn table(&self) -> String {
        format!("dbha_blackhole_{}", self.port)
    }

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
        let table = self.table();
        let ok = self.nft(&["add", "table", "inet", &table])
            && self.nft(&["add", "chain", "inet", &table, "input", chain])
            && self.nft(&["add", "rule", "inet", &table, "input", &rule]);
        assert!(
            ok,
            "nft could not add the blackhole rule (root and nftables are needed)"
        );
        self.on.set(true);
    }

    pub fn off(&self) {
        if self.on.replace(false) {
            self.nft(&["delete", "table", "inet", &self.table()]);
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
        let nft = crate::require("nft", "to blackhole a server (apt-get install nftables)")?;
        Some(Blackhole {
            nft,
            port,
            on: Cell::new(false),
        })
    }
}
