//! Network faults for the live tests and the failover benchmarks: a blackholed
//! server, or a path cut from this host's root processes only.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Drops every packet to one TCP port on this host (a nftables table of its own,
/// named after the port), as a blackholed host does; the table is removed when
/// this is dropped.
pub struct Blackhole {
    nft: PathBuf,
    port: u16,
    /// Only packets that root's sockets send to the port (the agent's, run by
    /// the tests as root) are dropped; the servers' own users' pass.
    root_only: bool,
    on: Cell<bool>,
}

impl Blackhole {
    fn table(&self) -> String {
        format!(
            "dbha_{}_{}",
            if self.root_only { "cut" } else { "blackhole" },
            self.port
        )
    }

    fn nft(&self, args: &[&str]) -> bool {
        Command::new(&self.nft)
            .args(args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn on(&self) {
        let (chain, rule) = if self.root_only {
            (
                "{ type filter hook output priority 0; }",
                format!("meta skuid 0 tcp dport {} drop", self.port),
            )
        } else {
            (
                "{ type filter hook input priority 0; }",
                format!("tcp dport {} drop", self.port),
            )
        };
        let table = self.table();
        let ok = self.nft(&["add", "table", "inet", &table])
            && self.nft(&["add", "chain", "inet", &table, "c", chain])
            && self.nft(&["add", "rule", "inet", &table, "c", &rule]);
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
            root_only: false,
            on: Cell::new(false),
        })
    }

    /// Cuts the path from this host's root processes to `port` (not yet on),
    /// as a firewall between the agent and a database does, while the database's
    /// own processes (replication, Patroni) still reach it; None as
    /// [`Blackhole::for_port`].
    pub fn for_root_to_port(port: u16) -> Option<Blackhole> {
        let b = Blackhole::for_port(port)?;
        Some(Blackhole {
            nft: b.nft.clone(),
            port,
            root_only: true,
            on: Cell::new(false),
        })
    }
}
