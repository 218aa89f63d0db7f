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

/// A network namespace of the test's own, joined to this host by a veth pair:
/// this host is `host_addr`, the namespace `ns_addr` (a /30 of 10.231/16
/// chosen from the pid), so that a server in it sees this host's connections
/// come from an address other than the loopback. Removed (with the pair) when
/// dropped.
pub struct Netns {
    pub name: String,
    pub host_addr: String,
    pub ns_addr: String,
    ip: PathBuf,
}

impl Netns {
    /// None (said; a failure under CI) without `ip` or the right to use it.
    pub fn new() -> Option<Netns> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ip = crate::require("ip", "for a network namespace (iproute2)").or_else(|| {
            ["/usr/sbin/ip", "/sbin/ip"]
                .map(PathBuf::from)
                .into_iter()
                .find(|p| p.is_file())
        })?;
        let n = std::process::id() % 16_000 * 4
            + N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4;
        let block = n * 4 % 65_536;
        let (hi, lo) = (block / 256, block % 256);
        let ns = Netns {
            name: format!("dbha_ns{n}"),
            host_addr: format!("10.231.{hi}.{}", lo + 1),
            ns_addr: format!("10.231.{hi}.{}", lo + 2),
            ip,
        };
        let (host_if, ns_if) = (format!("dbha_h{n}"), format!("dbha_n{n}"));
        let steps: [Vec<String>; 8] = [
            vec!["netns".into(), "add".into(), ns.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                ns_if.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                ns_if.clone(),
                "netns".into(),
                ns.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/30", ns.host_addr),
                "dev".into(),
                host_if.clone(),
            ],
            vec!["link".into(), "set".into(), host_if, "up".into()],
            ns.exec_args(&["addr", "add", &format!("{}/30", ns.ns_addr), "dev", &ns_if]),
            ns.exec_args(&["link", "set", &ns_if, "up"]),
            ns.exec_args(&["link", "set", "lo", "up"]),
        ];
        for args in &steps {
            let out = Command::new(&ns.ip).args(args).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                let why = out.map_or_else(
                    |e| e.to_string(),
                    |o| String::from_utf8_lossy(&o.stderr).into_owned(),
                );
                let msg = format!("ip {}: {}", args.join(" "), why.trim());
                assert!(!crate::in_ci(), "a network namespace is needed: {msg}");
                eprintln!("SKIPPED: no network namespace: {msg}");
                return None;
            }
        }
        // `ip netns exec` puts /etc/netns/NAME/hosts in place of /etc/hosts:
        // names for both ends, so that a server in the namespace resolves
        // this host's address at once, without DNS.
        let etc = ns.etc();
        let hosts = format!(
            "127.0.0.1 localhost\n{} dbha-test-host\n{} dbha-test-ns\n",
            ns.host_addr, ns.ns_addr
        );
        if let Err(e) =
            std::fs::create_dir_all(&etc).and_then(|_| std::fs::write(etc.join("hosts"), hosts))
        {
            panic!("{}: {e}", etc.display());
        }
        Some(ns)
    }

    /// The namespace's own files for `ip netns exec` (/etc/netns/NAME).
    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// `ip netns exec NAME ip ARGS...`, as arguments to `ip`.
    fn exec_args(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "netns",
            "exec",
            &self.name,
            self.ip.to_str().unwrap_or("ip"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// How to run programs inside the namespace, for as long as it exists.
    pub fn exec(&self) -> NetnsExec {
        NetnsExec {
            ip: self.ip.clone(),
            name: self.name.clone(),
        }
    }
}

/// Runs programs inside a [`Netns`].
#[derive(Debug, Clone)]
pub struct NetnsExec {
    ip: PathBuf,
    name: String,
}

impl NetnsExec {
    /// A command that runs `program` inside the namespace (`ip netns exec`
    /// execs it: its pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth end in it, and so the pair.
        let _ = Command::new(&self.ip)
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}
