//! Local PostgreSQL clusters for `dbha-agent demo` and the live-database tests:
//! `initdb` into a temporary directory, start and stop with `pg_ctl`, freeze and
//! thaw with SIGSTOP/SIGCONT, and remove everything when dropped.
//!
//! PostgreSQL refuses to run as root, so when this process is root the servers run
//! as the `postgres` system user (created by the server package) in directories it
//! owns.

use nix::sys::signal::{kill, Signal};
use nix::unistd::{chown, Gid, Pid, Uid, User};
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the server binaries are and whom they run as.
#[derive(Debug, Clone)]
pub struct Install {
    pub bindir: PathBuf,
    /// Set when this process is root: the unprivileged user the servers run as.
    pub run_as: Option<(Uid, Gid)>,
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// Finds the server binaries: `pg_config --bindir`, then `PATH`, then the newest
/// `/usr/lib/postgresql/*/bin`. `Err` says what is missing.
pub fn find() -> Result<Install, String> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let from_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .find(|d| d.join("initdb").is_file())
            .map(|d| {
                // /usr/local/bin/initdb may be a link into the real bindir.
                std::fs::canonicalize(d.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_owned))
                    .unwrap_or(d)
            })
    });
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    versioned.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    let bindir = from_pg_config
        .into_iter()
        .chain(from_path)
        .chain(versioned.into_iter().rev())
        .find(|d| has_server(d))
        .ok_or("the PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found via pg_config --bindir, PATH or /usr/lib/postgresql/*/bin: install the postgresql package")?;
    let run_as = if Uid::effective().is_root() {
        let user = User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or("running as root, and PostgreSQL refuses to: no `postgres` system user to run the servers as (the postgresql package creates it)")?;
        Some((user.uid, user.gid))
    } else {
        None
    };
    Ok(Install { bindir, run_as })
}

impl Install {
    /// The server's major version, e.g. 15.
    pub fn version(&self) -> Option<u32> {
        let out = Command::new(self.bindir.join("postgres"))
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = text
            .split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
        v.split('.').next()?.parse().ok()
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bindir.join(program));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        c
    }

    /// Makes `path` a directory owned by the servers' user.
    fn own_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)?;
        if let Some((uid, gid)) = self.run_as {
            chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}

fn check(what: &str, out: io::Result<Output>) -> io::Result<Output> {
    let out = out?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// The pid of the postmaster running on `data_dir` (from its postmaster.pid),
/// if it runs.
pub fn postmaster_pid(data_dir: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // A stale pid file after a crash: check the process exists.
    kill(Pid::from_raw(pid), None)
        .ok()
        .map(|_| Pid::from_raw(pid))
}

/// A free TCP port on `host`, below the kernel's ephemeral range: ports handed out
/// by `bind(0)` come from that range, where any outgoing connection (the agent's
/// probes among them) may take the port before the server binds it.
pub fn free_port(host: &str) -> io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, ephemeral_start.max(10_100));
    let span = hi - lo;
    let seed = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (lo + (seed + n.wrapping_mul(7919)) % span) as u16;
        if TcpListener::bind((host, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other(format!(
        "no free port on {host} between {lo} and {hi}"
    )))
}

/// A scratch directory removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new directory under the system temporary directory, named after `tag`.
    pub fn new(tag: &str) -> io::Result<Scratch> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dbha-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How `pg_ctl stop` shuts a server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for every session to end, refusing new ones (57P03) meanwhile.
    Smart,
    /// Disconnect clients, checkpoint, exit.
    Fast,
    /// Exit at once, as in a crash; recovery on the next start.
    Immediate,
}

/// One PostgreSQL cluster on a loopback address.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    socket_dir: PathBuf,
    install: Install,
    /// Extra `-c name=value` settings for every start.
    settings: Vec<String>,
}

impl Cluster {
    /// Runs `initdb` for a new cluster in `root/name` (trust authentication for
    /// loopback connections). Nothing is started yet.
    pub fn init(
        install: &Install,
        root: &Path,
        name: &str,
        host: &str,
        port: u16,
    ) -> io::Result<Cluster> {
        Cluster::init_with_auth(install, root, name, host, port, "trust")
    }

    /// As [`Cluster::init`], with `auth` ("trust", "md5" or "scram-sha-256") for TCP
    /// connections; passwords are stored with the same method. Local (Unix socket)
    /// connections, which the harness uses for administration, stay trusted.
    pub fn init_with_auth(
        install: &Install,
        root: &Path,
        name: &str,
        host: &str,
        port: u16,
        auth: &str,
    ) -> io::Result<Cluster> {
        let (dir, data_dir) = Cluster::dirs(install, root, name)?;
        check(
            &format!("initdb for {name}"),
            install
                .command("initdb")
                .current_dir(&dir)
                .args([
                    "--auth-local=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ])
                .arg(format!("--auth-host={auth}"))
                .arg("-D")
                .arg(&data_dir)
                .output(),
        )?;
        let mut settings = Cluster::default_settings();
        if auth != "trust" {
            settings.push(format!("password_encryption={auth}"));
        }
        Ok(Cluster::at(
            install, name, host, port, dir, data_dir, settings,
        ))
    }

    /// `root/name`, owned by the servers' user, and the data directory in it.
    fn dirs(install: &Install, root: &Path, name: &str) -> io::Result<(PathBuf, PathBuf)> {
        install.own_dir(root)?;
        let dir = root.join(name);
        install.own_dir(&dir)?;
        let data = dir.join("data");
        Ok((dir, data))
    }

    fn at(
        install: &Install,
        name: &str,
        host: &str,
        port: u16,
        dir: PathBuf,
        data_dir: PathBuf,
        settings: Vec<String>,
    ) -> Cluster {
        Cluster {
            name: name.to_owned(),
            host: host.to_owned(),
            port,
            log_file: dir.join("server.log"),
            socket_dir: dir,
            data_dir,
            install: install.clone(),
            settings,
        }
    }

    fn default_settings() -> Vec<String> {
        // fsync=off is safe against the crashes tests cause (a server killed, not the
        // machine: the page cache survives). synchronous_commit stays on: with it off
        // an immediate stop loses acknowledged commits.
        [
            "fsync=off",
            "full_page_writes=off",
            "shared_buffers=16MB",
            "max_connections=30",
            "log_connections=off",
        ]
        .map(String::from)
        .to_vec()
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`) in `root/name`, not
    /// started yet.
    pub fn standby_of(
        primary: &Cluster,
        root: &Path,
        name: &str,
        host: &str,
        port: u16,
    ) -> io::Result<Cluster> {
        let install = &primary.install;
        let (dir, data_dir) = Cluster::dirs(install, root, name)?;
        primary.base_backup(name, &dir, &data_dir)?;
        Ok(Cluster::at(
            install,
            name,
            host,
            port,
            dir,
            data_dir,
            primary.settings.clone(),
        ))
    }

    /// Rebuilds this server as a streaming standby of `primary`, as an operator
    /// does with an old primary after a failover: stopped, its data directory
    /// replaced by a base backup of `primary`, started again (same name, port and
    /// settings).
    pub fn rebuild_as_standby_of(&self, primary: &Cluster) -> io::Result<()> {
        self.stop(StopMode::Immediate)?;
        std::fs::remove_dir_all(&self.data_dir)?;
        primary.base_backup(&self.name, &self.socket_dir, &self.data_dir)?;
        self.start()
    }

    /// `pg_basebackup -R` of this server into `data_dir`, run in `dir`.
    fn base_backup(&self, name: &str, dir: &Path, data_dir: &Path) -> io::Result<()> {
        check(
            &format!("pg_basebackup for {name}"),
            self.install
                .command("pg_basebackup")
                .current_dir(dir)
                .args(["-R", "-X", "stream", "--no-sync", "-U", "postgres", "-h"])
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-D"])
                .arg(data_dir)
                .output(),
        )
        .map(drop)
    }

    /// Adds a `-c name=value` setting for the next starts.
    pub fn set(&mut self, setting: &str) {
        self.settings.push(setting.to_owned());
    }

    /// Promotes a standby to primary and waits until it is done.
    pub fn promote(&self) -> io::Result<()> {
        check(
            &format!("pg_ctl promote for {}", self.name),
            self.install
                .command("pg_ctl")
                .current_dir(&self.socket_dir)
                .args(["promote", "-w", "-t", "60", "-D"])
                .arg(&self.data_dir)
                .output(),
        )
        .map(drop)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> io::Result<()> {
        let mut opts = format!(
            "-c listen_addresses={} -c port={} -c unix_socket_directories={}",
            self.host,
            self.port,
            self.socket_dir.display()
        );
        for s in &self.settings {
            opts.push_str(&format!(" -c {s}"));
        }
        check(
            &format!("pg_ctl start for {}", self.name),
            self.install
                .command("pg_ctl")
                .current_dir(&self.socket_dir)
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .arg("-o")
                .arg(opts)
                // pg_ctl's own output (and the server's stdio) go to the log file.
                .stdout(Stdio::null())
                .output(),
        )
        .map(drop)
    }

    /// Starts the server; if its port was taken meanwhile (the log says so), moves
    /// it to another free port and tries again, a few times.
    pub fn start_on_free_port(&mut self) -> io::Result<()> {
        let mut tries = 0;
        loop {
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
                    tries += 1;
                    if tries == 5 || !log.contains("Address already in use") {
                        return Err(io::Error::other(format!("{e}\nserver log:\n{log}")));
                    }
                    self.port = free_port(&self.host)?;
                }
            }
        }
    }

    /// Stops the server and waits until it is gone (no-op if it is not running).
    pub fn stop(&self, mode: StopMode) -> io::Result<()> {
        self.pg_ctl_stop(mode, true)
    }

    /// Stops the server with `mode` and starts it again at once, as `pg_ctl
    /// restart -m MODE` does; returns how long it took.
    pub fn restart(&self, mode: StopMode) -> io::Result<std::time::Duration> {
        let began = std::time::Instant::now();
        self.stop(mode)?;
        self.start()?;
        Ok(began.elapsed())
    }

    /// Asks the server to stop and returns at once; with [`StopMode::Smart`] and a
    /// session open, the server then refuses new connections with 57P03 until the
    /// session ends.
    pub fn begin_stop(&self, mode: StopMode) -> io::Result<()> {
        self.pg_ctl_stop(mode, false)
    }

    fn pg_ctl_stop(&self, mode: StopMode, wait: bool) -> io::Result<()> {
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        // A frozen server cannot shut down.
        self.thaw();
        let m = match mode {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        check(
            &format!("pg_ctl stop -m {m} for {}", self.name),
            self.install
                .command("pg_ctl")
                .current_dir(&self.socket_dir)
                .args([
                    "stop",
                    if wait { "-w" } else { "-W" },
                    "-t",
                    "60",
                    "-m",
                    m,
                    "-D",
                ])
                .arg(&self.data_dir)
                .output(),
        )
        .map(drop)
    }

    /// The postmaster's pid while the server runs.
    pub fn postmaster_pid(&self) -> Option<Pid> {
        postmaster_pid(&self.data_dir)
    }

    /// The postmaster and its children.
    fn processes(&self) -> Vec<Pid> {
        let Some(pm) = self.postmaster_pid() else {
            return Vec::new();
        };
        let mut pids = vec![pm];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if ppid == Some(pm.as_raw()) {
                pids.push(Pid::from_raw(pid));
            }
        }
        pids
    }

    /// Freezes every process of the server (SIGSTOP): the kernel still completes
    /// TCP handshakes on its listening socket, but nothing answers.
    pub fn freeze(&self) {
        for p in self.processes() {
            let _ = kill(p, Signal::SIGSTOP);
        }
    }

    /// Stops (SIGSTOP) the postmaster alone: sessions already open go on, and
    /// new connections get no answer. [`Cluster::thaw`] undoes it.
    pub fn freeze_postmaster(&self) {
        if let Some(p) = self.postmaster_pid() {
            let _ = kill(p, Signal::SIGSTOP);
        }
    }

    /// Undoes [`Cluster::freeze`] and [`Cluster::freeze_postmaster`].
    pub fn thaw(&self) {
        for p in self.processes() {
            let _ = kill(p, Signal::SIGCONT);
        }
    }

    /// `psql` connected to this server as `postgres`, running `sql`.
    fn psql_command(&self, flags: &[&str], sql: &str) -> Command {
        let mut c = self.install.command("psql");
        // The Unix socket: trusted whatever the TCP authentication is.
        c.arg("-X")
            .args(flags)
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ]);
        c
    }

    /// A `psql` process running `sql` in a session of its own (for example
    /// `SELECT pg_sleep(5)` to hold a session open).
    pub fn spawn_psql(&self, sql: &str) -> io::Result<std::process::Child> {
        self.psql_command(&["-q"], sql)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    /// Runs `sql` with `psql` and returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        let out = check(
            &format!("psql on {}", self.name),
            self.psql_command(&["-A", "-t", "-v", "ON_ERROR_STOP=1"], sql)
                .output(),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A primary named `primary` and streaming standbys of it (`pg_basebackup -R`,
/// each with `cluster_name` set to its name, which `synchronous_standby_names`
/// can then name), all in `root` on free ports of `host` and started; the primary
/// first. `auth` is the TCP authentication ("trust", "md5", "scram-sha-256");
/// with a `password`, the `postgres` role gets it. What was started is stopped
/// again when a later step fails.
pub fn replicated(
    install: &Install,
    root: &Path,
    host: &str,
    primary: &str,
    standbys: &[&str],
    auth: &str,
    password: Option<&str>,
) -> Result<Vec<Cluster>, String> {
    let port = || free_port(host).map_err(|e| format!("no free port: {e}"));
    let mut p = Cluster::init_with_auth(install, root, primary, host, port()?, auth)
        .map_err(|e| format!("initdb for {primary}: {e}"))?;
    p.start_on_free_port()
        .map_err(|e| format!("starting {primary}: {e}"))?;
    if let Some(pw) = password {
        p.psql(&format!("ALTER ROLE postgres PASSWORD '{pw}'"))
            .map_err(|e| format!("setting the password on {primary}: {e}"))?;
    }
    let mut clusters = vec![p];
    for name in standbys {
        let mut s = Cluster::standby_of(&clusters[0], root, name, host, port()?)
            .map_err(|e| format!("pg_basebackup for {name}: {e}"))?;
        s.set(&format!("cluster_name={name}"));
        s.start_on_free_port()
            .map_err(|e| format!("starting {name}: {e}"))?;
        clusters.push(s);
    }
    Ok(clusters)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop(StopMode::Immediate) {
            // Last resort: the server must not outlive us.
            log::warn!("{}: {e}; killing it", self.name);
            for p in self.processes() {
                let _ = kill(p, Signal::SIGKILL);
            }
        }
    }
}
