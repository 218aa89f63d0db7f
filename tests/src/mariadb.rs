//! MariaDB servers for the mysql check's live tests: `mariadb-install-db` into
//! a scratch directory, `mariadbd --no-defaults` on a loopback port (as the
//! `mysql` user when this process is root: mariadbd drops to it itself), GTID
//! replication between two of them, promotion as an operator does it, and
//! every server stopped by its pid when dropped.
//!
//! Measured here (MariaDB 10.11 from Debian 12): install 0.5-4 s, start 0.2-2 s,
//! about 95 MB of memory each with a 32 MB buffer pool.

use crate::bounded;
use dbha_harness::pg::{free_port, Scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tools the MariaDB tests need, or None (a skip, said) outside CI; under
/// CI a missing tool fails the test.
pub fn prerequisites() -> Option<()> {
    for tool in ["mariadbd", "mariadb-install-db", "mariadb"] {
        let found = crate::require(tool, "for the MariaDB tests (Debian's mariadb-server)")
            .is_some()
            || Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            return None;
        }
    }
    Some(())
}

fn tool(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.is_file() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

/// One MariaDB server on 127.0.0.1 (or an address in a network namespace).
pub struct Server {
    pub name: String,
    /// The address it listens on.
    pub addr: String,
    pub port: u16,
    pub server_id: u32,
    /// The namespace it runs in, if any.
    netns: Option<crate::netfault::NetnsExec>,
    dir: PathBuf,
    /// Extra `mariadbd` options, kept across restarts.
    options: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// A new server named `name` under `root` (installed, started, answering),
    /// with binary logging and GTIDs on, `options` passed to mariadbd.
    pub fn start(root: &Path, name: &str, server_id: u32, options: &[&str]) -> io::Result<Server> {
        Server::start_in(root, name, server_id, options, None)
    }

    /// As [`Server::start`], listening on `netns`'s own address inside it
    /// when given (so that this host's connections reach it from an address
    /// other than the loopback).
    pub fn start_in(
        root: &Path,
        name: &str,
        server_id: u32,
        options: &[&str],
        netns: Option<&crate::netfault::Netns>,
    ) -> io::Result<Server> {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("data"))?;
        // Its own temporary directory: two servers installed at once in the
        // same /tmp collide on their temporary tables.
        std::fs::create_dir_all(dir.join("tmp"))?;
        let root_user = Uid::current().is_root();
        if root_user {
            let mysql = User::from_name("mysql")
                .map_err(io::Error::other)?
                .ok_or_else(|| {
                    io::Error::other("no mysql user (Debian's mariadb-server creates it)")
                })?;
            for d in [&dir, &dir.join("data"), &dir.join("tmp")] {
                nix::unistd::chown(d.as_path(), Some(mysql.uid), Some(mysql.gid))?;
            }
        }
        let mut install = Command::new(tool("mariadb-install-db"));
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .env("TMPDIR", dir.join("tmp"));
        if root_user {
            install.arg("--user=mysql");
        }
        let out = bounded(install, Duration::from_secs(120))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mariadb-install-db for {name} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut s = Server {
            name: name.into(),
            addr: netns.map_or("127.0.0.1".into(), |n| n.ns_addr.clone()),
            port: free_port("127.0.0.1")?,
            server_id,
            netns: netns.map(crate::netfault::Netns::exec),
            dir,
            options: options.iter().map(|o| o.to_string()).collect(),
            child: None,
        };
        s.start_again()?;
        Ok(s)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// The server's error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Starts mariadbd (again) on the same data and port; waits until it
    /// answers.
    pub fn start_again(&mut self) -> io::Result<()> {
        let mut c = match &self.netns {
            Some(ns) => ns.command(tool("mariadbd")),
            None => Command::new(tool("mariadbd")),
        };
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--bind-address={}", self.addr))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg(format!("--server-id={}", self.server_id))
            .arg(format!("--log-bin={}", self.dir.join("data/bin").display()))
            .args([
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=8M",
                "--skip-name-resolve",
                "--gtid-strict-mode=1",
                "--log-slave-updates=1",
            ])
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if Uid::current().is_root() {
            c.arg("--user=mysql");
        }
        self.child = Some(c.spawn()?);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if self.sql("SELECT 1").is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "mariadbd {} exited ({status}) while starting:\n{}",
                    self.name,
                    self.log()
                )));
            }
            if Instant::now() > until {
                return Err(io::Error::other(format!(
                    "mariadbd {} did not answer within 60 s:\n{}",
                    self.name,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `sql` run as root over the server's socket; tab-separated rows without
    /// column names.
    pub fn sql(&self, sql: &str) -> io::Result<String> {
        self.client(&["-N", "-B", "-e", sql], sql)
    }

    /// `SHOW SLAVE STATUS` as `name: value` lines (empty when not a replica).
    pub fn slave_status(&self) -> io::Result<String> {
        self.client(&["-e", "SHOW SLAVE STATUS\\G"], "SHOW SLAVE STATUS")
    }

    fn client(&self, args: &[&str], sql: &str) -> io::Result<String> {
        let mut c = Command::new(tool("mariadb"));
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-u", "root"])
            .args(args);
        let out = bounded(c, Duration::from_secs(30))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "{}: {sql}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// The pid of the running mariadbd.
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Makes this server a read-only GTID replica of `primary` (user `repl`,
    /// which [`Server::allow_replication`] creates there; a primary promoted
    /// from a replica has it too, replicated).
    pub fn replicate_from(&self, primary: &Server) -> io::Result<()> {
        self.sql(&format!(
            "SET GLOBAL read_only = 1; STOP SLAVE; CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'repl', MASTER_PASSWORD = 'repl-pw', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1; START SLAVE",
            primary.port
        ))?;
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.slave_status()?;
            if status.contains("Slave_IO_Running: Yes") && status.contains("Slave_SQL_Running: Yes")
            {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(io::Error::other(format!(
                    "{} did not start replicating from {}:\n{status}",
                    self.name, primary.name
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates the replication user on this server.
    pub fn allow_replication(&self) -> io::Result<()> {
        self.sql(
            "CREATE USER IF NOT EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY 'repl-pw'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1'",
        )
        .map(|_| ())
    }

    /// Creates `user`@127.0.0.1 with `password` and the privileges `grants`
    /// ("" for none but USAGE); on a primary it replicates to its replicas.
    pub fn create_user(&self, user: &str, password: &str, grants: &str) -> io::Result<()> {
        let mut sql = format!("CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'");
        if !grants.is_empty() {
            sql.push_str(&format!("; GRANT {grants} ON *.* TO '{user}'@'127.0.0.1'"));
        }
        self.sql(&sql).map(|_| ())
    }

    /// `sql` run as root in a client left running: it ends by itself when
    /// `sql` does, or is killed when the handle is dropped.
    pub fn background(&self, sql: &str) -> io::Result<crate::Children> {
        let mut c = Command::new(tool("mariadb"));
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-u", "root", "-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut children = crate::Children::default();
        children.push(c.spawn()?);
        Ok(children)
    }

    /// The ids of `user`'s sessions on this server.
    pub fn sessions_of(&self, user: &str) -> io::Result<Vec<u64>> {
        Ok(self
            .sql(&format!(
                "SELECT id FROM information_schema.processlist WHERE user = '{user}'"
            ))?
            .split_whitespace()
            .filter_map(|id| id.parse().ok())
            .collect())
    }

    /// Waits until this replica has executed everything it received.
    pub fn caught_up(&self) -> io::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.slave_status()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(": "))
                    .map(str::to_owned)
            };
            if field("Read_Master_Log_Pos").is_some()
                && field("Read_Master_Log_Pos") == field("Exec_Master_Log_Pos")
            {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(io::Error::other(format!(
                    "{} did not catch up:\n{status}",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Promotes this replica as an operator does: replication stopped and
    /// forgotten, writes allowed.
    pub fn promote(&self) -> io::Result<()> {
        self.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")
            .map(|_| ())
    }

    /// `@@global.read_only` as the server says it.
    pub fn read_only(&self) -> io::Result<bool> {
        Ok(self.sql("SELECT @@global.read_only")?.trim() == "1")
    }

    /// Stops the server: SIGTERM (a clean shutdown), SIGKILL after 30 s.
    pub fn stop(&mut self) {
        self.end(Signal::SIGTERM, Duration::from_secs(30));
    }

    /// Kills the server at once, as a crash does.
    pub fn kill(&mut self) {
        self.end(Signal::SIGKILL, Duration::from_secs(10));
    }

    fn end(&mut self, sig: Signal, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, sig);
        let until = Instant::now() + within;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    pub fn freeze(&self, on: bool) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, if on { Signal::SIGSTOP } else { Signal::SIGCONT });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A frozen server ignores SIGTERM until thawed.
        self.freeze(false);
        self.stop();
    }
}

/// A scratch directory for servers (removed when dropped, after the servers
/// in it have stopped).
pub fn scratch() -> io::Result<Scratch> {
    let scratch = Scratch::new("mariadb")?;
    if Uid::current().is_root() {
        // The mysql user must reach its directories below this one.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(scratch)
}

/// Writes `text` at `path` for the server to read (it runs as the mysql user
/// when the tests run as root), and for no one else.
pub fn server_file(path: &Path, text: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if Uid::current().is_root() {
        let mysql = User::from_name("mysql")
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other("no mysql user"))?;
        nix::unistd::chown(path, Some(mysql.uid), Some(mysql.gid))?;
    }
    Ok(path.to_path_buf())
}

/// A primary and a replica of it, GTID replication running, in one scratch
/// directory (removed after both have stopped).
pub struct Pair {
    pub primary: Server,
    pub replica: Server,
    scratch: Scratch,
}

impl Pair {
    pub fn start() -> io::Result<Pair> {
        Pair::start_with(&[])
    }

    /// As [`Pair::start`], both servers with `options` too.
    pub fn start_with(options: &[&str]) -> io::Result<Pair> {
        let scratch = scratch()?;
        let primary = Server::start(scratch.path(), "db0", 1, options)?;
        primary.allow_replication()?;
        let replica = Server::start(scratch.path(), "db1", 2, options)?;
        replica.replicate_from(&primary)?;
        Ok(Pair {
            primary,
            replica,
            scratch,
        })
    }

    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// A pair replicating semi-synchronously, lossless (`AFTER_SYNC`): a
    /// commit is acknowledged once the replica has it, so a promoted replica
    /// has every acknowledged write (unless the replica was gone for 10 s,
    /// after which its primary goes on alone, as MariaDB does). Set at start,
    /// on both servers, so that it holds through restarts and promotions; a
    /// primary without a replica does not wait.
    pub fn start_semi_synchronous() -> io::Result<Pair> {
        let p = Pair::start_with(&[
            "--rpl-semi-sync-master-enabled=ON",
            "--rpl-semi-sync-slave-enabled=ON",
            "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
            "--rpl-semi-sync-master-wait-no-slave=OFF",
            "--rpl-semi-sync-master-timeout=10000",
        ])?;
        p.wait_semi_synchronous()?;
        Ok(p)
    }

    /// Waits until the primary has its replica connected semi-synchronously
    /// (after a restart of either, the replica reconnects within a second).
    pub fn wait_semi_synchronous(&self) -> io::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let clients = self
                .primary
                .sql("SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")?;
            let on = self
                .primary
                .sql("SHOW STATUS LIKE 'Rpl_semi_sync_master_status'")?;
            if on.ends_with("ON") && !clients.ends_with("\t0") {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(io::Error::other(format!(
                    "semi-synchronous replication did not start ({clients}, {on}):\n{}",
                    self.replica.slave_status().unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
