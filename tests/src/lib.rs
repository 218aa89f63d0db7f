//! Helpers shared by the cross-crate tests: finding external tools (a missing one
//! fails the test under `CI=true` and skips it elsewhere, saying so), and killing
//! child processes on every exit path; a fake PostgreSQL server.

#![forbid(unsafe_code)]

pub mod agentproc;
pub mod badfiles;
pub mod certs;
pub mod cprog;
pub mod fakemysql;
pub mod fakepg;
pub mod live;
pub mod mariadb;
pub mod metrics;
pub mod netfault;
pub mod patroni;
pub mod relay;
pub mod trace;

use std::path::PathBuf;

/// True under CI, where a missing prerequisite is a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Finds `tool` on PATH. When missing: panics under CI, otherwise prints why the
/// test is skipped and returns None.
pub fn require(tool: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!("{tool} is not installed; it is needed {why}");
        assert!(!in_ci(), "{msg} (.ci/run installs it)");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// A state file at `path` made by the real writer, with `aliases` (endpoint i at
/// 127.0.0.1, port 5432 + i), a staleness threshold, and `p` published. Keep the writer alive as long as the file must
/// stay live.
pub fn write_state(
    path: &std::path::Path,
    aliases: &[&str],
    stale_after_ns: u64,
    p: &dbha_protocol::writer::Publication,
) -> dbha_protocol::writer::StateFile {
    use dbha_protocol::writer::{Publication, Settings, StateFile};
    let endpoints: Vec<dbha_protocol::Endpoint> = aliases
        .iter()
        .zip(5432..)
        .map(|(a, port)| dbha_protocol::Endpoint::new(*a, "127.0.0.1", port))
        .collect();
    let settings = Settings {
        stale_after_ns,
        mode: 0o644,
    };
    let (mut w, _) = StateFile::open(path, &endpoints, settings, &Publication::NOTHING)
        .unwrap_or_else(|e| panic!("{e}"));
    w.publish(p);
    w
}

/// Runs `c` for at most `limit` (then kills it): its output. A tool that
/// hangs (patronictl waiting on an etcd it cannot reach) fails the test
/// instead of hanging it.
pub fn bounded(
    mut c: std::process::Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    let mut child = c
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let until = std::time::Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!(
                "{c:?} did not end within {limit:?}"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output()
}

pub use dbha_harness::{Children, Stop};

/// Path of the workspace's target directory for the running profile
/// (`target/debug` or `target/release`), where libdbha and the agent are built.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
    let dir = exe.parent().expect("exe in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>").to_owned()
    } else {
        dir.to_owned()
    }
}

fn newest_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            if m.is_dir() {
                newest_mtime(&e.path())
            } else {
                m.modified().ok()
            }
        })
        .max()
}

/// `name` in the target directory, built by `package` from the current sources in
/// `src_dirs` (relative to the workspace root).
///
/// `cargo test` builds dependencies as rlibs only and other packages' binaries not
/// at all, so the C library and the agent binary come from a `cargo build` of the
/// workspace (the test command, `tests/run.sh`, does it first). Panics with what to
/// run when the artifact is missing or older than its sources.
pub fn fresh_artifact(name: &str, package: &str, src_dirs: &[&str]) -> PathBuf {
    let path = target_dir().join(name);
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build -p {package}{profile}` first (tests/run.sh does)",
                path.display()
            )
        });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in src_dirs {
        let newest = newest_mtime(&root.join(dir)).expect("sources");
        assert!(
            built >= newest,
            "{} is older than {dir}: run `cargo build -p {package}{profile}` again (tests/run.sh does)",
            path.display()
        );
    }
    path
}

/// The directory holding a libdbha.so built from the current reader sources.
pub fn libdbha_dir() -> PathBuf {
    fresh_artifact("libdbha.so", "dbha-reader", &["reader/src", "protocol/src"])
        .parent()
        .expect("target dir")
        .to_owned()
}

/// The `dbha-agent` binary built from the current sources.
pub fn agent_bin() -> PathBuf {
    fresh_artifact(
        "dbha-agent",
        "dbha-agent",
        &["agent/src", "harness/src", "reader/src", "protocol/src"],
    )
}

/// A password file `dir/name` holding `pw`, readable by its owner only (as
/// the agent requires).
pub fn password_file(dir: &std::path::Path, name: &str, pw: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}
