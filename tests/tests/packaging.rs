//! What operators install: the systemd unit passes `systemd-analyze verify` (with
//! ExecStart pointed at the built agent, since /usr/bin has none here) and keeps
//! the settings dbha relies on.

use dbha_tests::{agent_bin, require};
use std::path::Path;
use std::process::Command;

fn unit() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/dbha-agent.service"),
    )
    .unwrap()
}

fn verify(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dbha-agent.service");
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_systemd_unit_verifies_and_keeps_what_dbha_relies_on() {
    if require("systemd-analyze", "to verify the systemd unit").is_none() {
        return;
    }
    let text = unit();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "RuntimeDirectory=dbha",
        "RuntimeDirectoryPreserve=yes",
        "ExecReload=/usr/bin/dbha-agent check --config /etc/dbha/dbha.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "the unit lacks {line}"
        );
    }
    let agent = agent_bin();
    let local = text.replace("/usr/bin/dbha-agent", agent.to_str().unwrap());
    let (ok, out) = verify(&local);
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    // The check can fail: a unit whose command does not exist does not verify.
    let (ok, _) = verify(&text.replace("/usr/bin/dbha-agent", "/nonexistent/dbha-agent"));
    assert!(!ok, "systemd-analyze verify accepted a missing ExecStart");
}
