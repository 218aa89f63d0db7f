//! A real `dbha-agent` process for tests: its config and log in a test directory,
//! waited on through the real reader, killed when dropped.

use crate::{agent_bin, Children};
use dbha::Reader;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Generous: bounds that only catch hangs, never judge speed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `f` every few milliseconds until it returns `Some`, or panics naming
/// `what` after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    dbha_harness::wait::poll(Duration::from_millis(2), PATIENCE, &mut f)
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
        .0
}

/// Waits until `alias` is the write alias; returns the epoch then.
pub fn wait_write(r: &Reader, alias: &str) -> u64 {
    wait_for(&format!("write alias {alias}"), || {
        let s = r.snapshot().ok()?;
        (s.write_alias() == Some(alias)).then_some(s.epoch)
    })
}

/// Waits until `alias` is no longer the write alias (another, or none: no
/// longer handed to readers); returns the write alias then.
pub fn wait_write_leaves(r: &Reader, alias: &str) -> Option<String> {
    wait_for(&format!("write alias other than {alias}"), || {
        let s = r.snapshot().ok()?;
        (s.write_alias() != Some(alias)).then(|| s.write_alias().map(String::from))
    })
}

/// One agent named `name` (its files are `NAME.toml`, `NAME.state`, `NAME.log`).
pub struct AgentProc {
    pub config: PathBuf,
    pub state: PathBuf,
    log: PathBuf,
    children: Children,
}

impl AgentProc {
    /// Writes `config(state_path)` and starts the agent on it.
    pub fn start(dir: &Path, name: &str, config: impl FnOnce(&Path) -> String) -> AgentProc {
        let state = dir.join(format!("{name}.state"));
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config(&state)).unwrap();
        let mut a = AgentProc {
            config: path,
            state,
            log: dir.join(format!("{name}.log")),
            children: Children::default(),
        };
        a.spawn();
        a
    }

    /// Starts (again) an agent process on the same files.
    pub fn spawn(&mut self) -> &mut Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child)
    }

    /// The latest agent process.
    pub fn child(&mut self) -> &mut Child {
        self.children.last_mut().expect("an agent was started")
    }

    pub fn pid(&mut self) -> Pid {
        Pid::from_raw(self.child().id() as i32)
    }

    pub fn signal(&mut self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str) {
        wait_for(&format!("{needle:?} in the agent log"), || {
            self.log().contains(needle).then_some(())
        });
    }

    /// A reader on the agent's state file, once it exists.
    pub fn reader(&self) -> Reader {
        wait_for("the state file", || Reader::open(&self.state).ok())
    }
}

pub use dbha_harness::config::{config, Timing};

/// A configuration with the default (fast) timings; `dbs` are (alias, port,
/// check), all on 127.0.0.1.
pub fn loopback_config(state: &Path, dbs: &[(&str, u16, &str)], extra: &str) -> String {
    let dbs: Vec<_> = dbs
        .iter()
        .map(|(a, p, c)| (*a, "127.0.0.1", *p, *c))
        .collect();
    config(state, &Timing::default(), &dbs, extra)
}
