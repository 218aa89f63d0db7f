//! `dbha-agent unfence ALIAS`: the operator's way to clear a fence. The agent is
//! the state file's only writer, so the command leaves a request beside the state
//! file (`PATH.unfence`, one alias a line) and sends the agent SIGHUP; the agent
//! takes the request at that reload, or at its next start.

use dbha::Reader;
use log::{info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A request file larger than this is not read (nobody writes 64 KiB of aliases).
const MAX_REQUEST: u64 = 64 * 1024;

/// Where requests for the agent writing `state` are left.
pub fn request_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".unfence");
    PathBuf::from(p)
}

/// The command: exit 0 when the request was left and the agent signalled, 1 when
/// it could not be (with the reason on stderr).
pub fn unfence(state: &Path, alias: &str) -> i32 {
    let fail = |why: String| {
        eprintln!("dbha-agent unfence: {why}");
        1
    };
    let reader = match Reader::open(state) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let s = match reader.snapshot() {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let Some(index) = (0..s.endpoint_count()).find(|&i| s.alias(i) == Some(alias)) else {
        let known: Vec<&str> = (0..s.endpoint_count()).filter_map(|i| s.alias(i)).collect();
        return fail(format!(
            "{} has no endpoint {alias:?} (it has: {})",
            state.display(),
            known.join(", ")
        ));
    };
    if !s.fence(index).fenced {
        crate::status::out(&format!("{alias} is not fenced; nothing to do\n"));
        return 0;
    }
    let path = request_path(state);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{alias}"));
    if let Err(e) = written {
        return fail(format!("cannot write {}: {e}", path.display()));
    }
    let live = s.status.live();
    match kill(Pid::from_raw(s.writer_pid as i32), Signal::SIGHUP) {
        Ok(()) if live => {
            crate::status::out(&format!(
                "asked the agent (pid {}) to unfence {alias}; `dbha-agent status` shows when it has\n",
                s.writer_pid
            ));
            0
        }
        _ => {
            crate::status::out(&format!(
                "the agent (pid {}) is not running: {alias} is unfenced when an agent starts on {}\n",
                s.writer_pid,
                state.display()
            ));
            0
        }
    }
}

/// The agent's side: the aliases requested since the last call, the request file
/// removed. Errors are logged; a request that cannot be read is left in place.
pub fn take_requests(state: &Path) -> Vec<String> {
    let path = request_path(state);
    let mut text = String::new();
    let read = std::fs::File::open(&path).and_then(|f| {
        f.take(MAX_REQUEST).read_to_string(&mut text)?;
        std::fs::remove_file(&path)
    });
    match read {
        Ok(()) => {
            info!("{}: unfence requested", path.display());
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            warn!("cannot take the unfence request {}: {e}", path.display());
            Vec::new()
        }
    }
}
