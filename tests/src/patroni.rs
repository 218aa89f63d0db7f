//! A Patroni cluster on loopback for the live tests and the benchmarks: etcd
//! (one member, or three where quorum matters) and PostgreSQL nodes under
//! Debian's Patroni, in a scratch directory. Everything it starts is stopped by
//! pid when it is dropped, also when a test panics: the Patroni processes, the
//! PostgreSQL servers they started (a killed Patroni leaves its server running)
//! and etcd.

use crate::bounded;
use dbha_harness::pg::{self, free_port, Install, Scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The DCS timing Patroni is bootstrapped with (`ttl`, `loop_wait`,
/// `retry_timeout`: Patroni wants `loop_wait + 2 * retry_timeout <= ttl`).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    pub failsafe_mode: bool,
}

impl Default for Timing {
    /// Shorter than Patroni's defaults (30, 10, 10) so that a failover after a
    /// kill fits in a test: about `ttl` plus a loop.
    fn default() -> Timing {
        Timing {
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 4,
            failsafe_mode: false,
        }
    }
}

/// Finds what a Patroni cluster needs: Debian's `patroni`, `patronictl`, `etcd`
/// and `etcdctl`, and the PostgreSQL server. None (saying why) when something is
/// missing outside CI; under CI a missing piece fails.
pub fn prerequisites() -> Option<Install> {
    for tool in ["patroni", "patronictl", "etcd", "etcdctl"] {
        crate::require(
            tool,
            "for the Patroni tests (Debian's patroni, python3-etcd, etcd-server, etcd-client)",
        )?;
    }
    match pg::find() {
        Ok(i) => Some(i),
        Err(e) => {
            assert!(!crate::in_ci(), "{e}");
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

/// One etcd member.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// etcd on loopback.
pub struct Etcd {
    members: Vec<Member>,
    initial_cluster: String,
    /// Whom `etcdctl` and `patronictl` run as: the servers' user, so that a
    /// path cut for root's packets (the agents') leaves them working.
    run_as: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    /// Clients over TLS only, with a certificate the CA signed.
    tls: Option<EtcdTls>,
    /// `etcdctl --user` (NAME:PASSWORD) once authentication is on.
    pub ctl_user: Option<String>,
}

/// PEM files for an etcd that serves clients over TLS only and asks for a
/// client certificate (`--client-cert-auth`): the CA, the server's
/// certificate and key (for 127.0.0.1), and a client's for `etcdctl`.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Etcd {
    /// `n` members (1 or 3) under `root`, started, answering; the tools run as
    /// `run_as`.
    pub fn start(
        root: &Path,
        n: usize,
        run_as: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> io::Result<Etcd> {
        Etcd::start_with(root, n, run_as, None)
    }

    /// As [`Etcd::start`], its clients served over TLS when `tls` is given.
    pub fn start_with(
        root: &Path,
        n: usize,
        run_as: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
        tls: Option<EtcdTls>,
    ) -> io::Result<Etcd> {
        let mut members = Vec::new();
        for i in 0..n {
            let dir = root.join(format!("etcd{i}"));
            std::fs::create_dir_all(&dir)?;
            members.push(Member {
                name: format!("e{i}"),
                client_port: free_port("127.0.0.1")?,
                peer_port: free_port("127.0.0.1")?,
                dir,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial_cluster,
            run_as,
            tls,
            ctl_user: None,
        };
        for i in 0..n {
            etcd.start_member(i)?;
        }
        etcd.wait_healthy(Duration::from_secs(30))?;
        Ok(etcd)
    }

    /// (Re)starts member `i` on its data directory.
    pub fn start_member(&mut self, i: usize) -> io::Result<()> {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("etcd.log"))?;
        let client = format!("{}://127.0.0.1:{}", scheme(&self.tls), m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut etcd = Command::new("etcd");
        if let Some(t) = &self.tls {
            etcd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", &m.name, "--data-dir"])
            .arg(m.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "dbha-test",
            ])
            // Small and quick: a test cluster on one machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--quota-backend-bytes", "67108864", "--logger", "zap"])
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        m.child = Some(child);
        Ok(())
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (true) or SIGCONT (false) to member `i`: a hung etcd.
    pub fn freeze_member(&self, i: usize, frozen: bool) {
        if let Some(c) = &self.members[i].child {
            let sig = if frozen {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Every member's client URL, as `[dcs] etcd` lists them.
    pub fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", scheme(&self.tls), m.client_port))
            .collect()
    }

    /// Member `i`'s pid while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s client port.
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// The current revision, from the first member that answers.
    pub fn revision(&self) -> io::Result<u64> {
        let out = self.ctl(&["endpoint", "status", "--write-out=json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(io::Error::other)?;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["Status"]["header"]["revision"].as_u64())
            .max()
            .ok_or_else(|| io::Error::other(format!("no revision in {out}")))
    }

    /// `host:port,...`, as Patroni's `etcd3.hosts` lists them.
    fn hosts(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl` (API v3) against every member, with `args`; its output.
    pub fn ctl(&self, args: &[&str]) -> io::Result<String> {
        let mut c = Command::new("etcdctl");
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_urls().join(",")))
            .args(["--command-timeout=5s", "--dial-timeout=2s"]);
        if let Some(t) = &self.tls {
            c.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client_cert)
                .arg("--key")
                .arg(&t.client_key);
        }
        if let Some(u) = &self.ctl_user {
            c.arg(format!("--user={u}"));
        }
        c.args(args);
        let out = bounded(c, Duration::from_secs(30))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_healthy(&self, within: Duration) -> io::Result<()> {
        let until = Instant::now() + within;
        loop {
            match self.ctl(&["endpoint", "health"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > until => {
                    return Err(io::Error::other(format!(
                        "etcd did not become healthy within {within:?}: {e}"
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.freeze_member(i, false);
            self.kill_member(i);
        }
    }
}

/// The scheme of etcd's client URLs.
fn scheme(tls: &Option<EtcdTls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Patroni's REST API over https: the CA, and the certificate (for
/// 127.0.0.1) and key every node serves, in PEM.
#[derive(Debug, Clone)]
pub struct RestTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// One PostgreSQL node under Patroni.
pub struct Node {
    pub name: String,
    /// The REST API's port (`http://127.0.0.1:PORT`, or https).
    pub api_port: u16,
    /// The REST API is served over https.
    https: bool,
    /// PostgreSQL's port.
    pub pg_port: u16,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn api_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.api_port)
    }

    /// Patroni's pid while it runs.
    pub fn patroni_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The postmaster's pid while PostgreSQL runs.
    pub fn postmaster_pid(&self) -> Option<Pid> {
        pg::postmaster_pid(&self.data_dir)
    }

    /// Patroni's log, for a failed test's message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Etcd and the nodes of one Patroni cluster (scope `dbha`, namespace
/// `/service`).
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub etcd: Etcd,
    pub scope: String,
    pub namespace: String,
    pub timing: Timing,
    /// Where the REST API's CA certificate is, when it is served over https.
    pub rest_ca: Option<PathBuf>,
    install: Install,
    // Last: removed after everything above has stopped.
    scratch: Scratch,
}

impl Cluster {
    /// `n` nodes over `etcd_members` etcd members, bootstrapped: one leader and
    /// every other node a streaming replica (about 11 s for three).
    pub fn start(
        install: &Install,
        n: usize,
        etcd_members: usize,
        timing: Timing,
    ) -> io::Result<Cluster> {
        Cluster::start_with(install, n, etcd_members, timing, None)
    }

    /// As [`Cluster::start`], the REST API over https when `rest` is given
    /// (patronictl verifies it against the CA; Patroni's nodes ask each other
    /// without verifying, as Patroni does).
    pub fn start_with(
        install: &Install,
        n: usize,
        etcd_members: usize,
        timing: Timing,
        rest: Option<RestTls>,
    ) -> io::Result<Cluster> {
        let scratch = Scratch::new("patroni")?;
        let root = scratch.path().to_owned();
        if let Some((uid, gid)) = install.run_as {
            nix::unistd::chown(&root, Some(uid), Some(gid))?;
        }
        let etcd = Etcd::start(&root, etcd_members, install.run_as)?;
        let mut rest_ca = None;
        let mut rest_files = None;
        if let Some(t) = &rest {
            // Patroni runs as install.run_as: its files are its own.
            let write = |name: &str, text: &str| -> io::Result<PathBuf> {
                use std::os::unix::fs::PermissionsExt;
                let p = root.join(name);
                std::fs::write(&p, text)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
                if let Some((uid, gid)) = install.run_as {
                    nix::unistd::chown(&p, Some(uid), Some(gid))?;
                }
                Ok(p)
            };
            let ca = write("rest-ca.pem", &t.ca)?;
            let cert = write("rest-cert.pem", &t.cert)?;
            let key = write("rest-key.pem", &t.key)?;
            rest_ca = Some(ca.clone());
            rest_files = Some((ca, cert, key));
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd,
            scope: "dbha".into(),
            namespace: "/service".into(),
            timing,
            rest_ca,
            install: install.clone(),
            scratch,
        };
        for i in 0..n {
            let node = cluster.write_node(&root, i, rest_files.as_ref())?;
            cluster.nodes.push(node);
        }
        for i in 0..n {
            cluster.start_node(i)?;
            if i == 0 {
                // The first node bootstraps alone; the others clone it.
                cluster.wait_leader(Duration::from_secs(60))?;
            }
        }
        cluster.wait_streaming(Duration::from_secs(90))?;
        Ok(cluster)
    }

    /// Node `i`'s directory and configuration; `rest` the REST API's CA,
    /// certificate and key files for https.
    fn write_node(
        &self,
        root: &Path,
        i: usize,
        rest: Option<&(PathBuf, PathBuf, PathBuf)>,
    ) -> io::Result<Node> {
        let name = format!("pg{i}");
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        if let Some((uid, gid)) = self.install.run_as {
            nix::unistd::chown(&dir, Some(uid), Some(gid))?;
        }
        let api_port = free_port("127.0.0.1")?;
        let pg_port = free_port("127.0.0.1")?;
        let t = self.timing;
        let rest_tls = rest.map_or(String::new(), |(ca, cert, key)| {
            format!(
                "  certfile: {}\n  keyfile: {}\n  cafile: {}\n",
                cert.display(),
                key.display(),
                ca.display()
            )
        });
        let ctl = rest.map_or(String::new(), |(ca, _, _)| {
            format!("ctl:\n  cacert: {}\n", ca.display())
        });
        let yaml = format!(
            r#"scope: {scope}
namespace: {namespace}/
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
{rest_tls}{ctl}etcd3:
  hosts: {hosts}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    failsafe_mode: {failsafe}
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_connections: 40
  initdb:
  - encoding: UTF8
  - auth: trust
  pg_hba:
  - host replication all 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
  - local all all trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bindir}
  pgpass: {dir}/pgpass
  authentication:
    replication:
      username: postgres
    superuser:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: {dir}
    shared_buffers: 16MB
    fsync: "off"
    full_page_writes: "on"
    log_connections: "off"
"#,
            scope = self.scope,
            namespace = self.namespace,
            hosts = self.etcd.hosts(),
            ttl = t.ttl,
            loop_wait = t.loop_wait,
            retry_timeout = t.retry_timeout,
            failsafe = t.failsafe_mode,
            data = dir.join("data").display(),
            bindir = self.install.bindir.display(),
            dir = dir.display(),
        );
        let config = dir.join("patroni.yml");
        std::fs::write(&config, yaml)?;
        Ok(Node {
            name,
            api_port,
            pg_port,
            https: rest.is_some(),
            config,
            data_dir: dir.join("data"),
            log: dir.join("patroni.log"),
            child: None,
        })
    }

    /// Starts node `i`'s Patroni (which starts its PostgreSQL).
    pub fn start_node(&mut self, i: usize) -> io::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut c = Command::new("patroni");
        c.arg(&node.config)
            .env("LC_ALL", "C.UTF-8")
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = self.install.run_as {
            c.uid(uid.as_raw())
                .gid(gid.as_raw())
                .env("HOME", node.config.parent().unwrap_or(Path::new("/tmp")));
        }
        node.child = Some(c.spawn()?);
        Ok(())
    }

    /// `kill -9` of node `i`'s Patroni and of its PostgreSQL (the postmaster;
    /// its backends exit when they see it gone).
    pub fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let pm = node.postmaster_pid();
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pm) = pm {
            let _ = kill(pm, Signal::SIGKILL);
            wait_gone(pm, Duration::from_secs(10));
        }
    }

    /// The member named in the leader key, if any.
    pub fn leader(&self) -> Option<String> {
        let key = format!("{}/{}/leader", self.namespace, self.scope);
        let v = self.etcd.ctl(&["get", "--print-value-only", &key]).ok()?;
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_owned())
    }

    /// The index of node `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits for a leader whose PostgreSQL accepts writes.
    pub fn wait_leader(&self, within: Duration) -> io::Result<String> {
        let until = Instant::now() + within;
        loop {
            if let Some(l) = self.leader() {
                if let Some(i) = self.index(&l) {
                    if self
                        .rest(i, "/primary")
                        .is_ok_and(|(s, body)| s == 200 && body.contains("\"running\""))
                    {
                        return Ok(l);
                    }
                }
            }
            if Instant::now() > until {
                return Err(io::Error::other(format!(
                    "no Patroni leader within {within:?}; {}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running node other than the leader is a streaming
    /// replica within 1 MiB of the leader as Patroni sees it (`GET
    /// /replica?lag=1048576` answers 200), so that it may be a switchover's
    /// candidate (`maximum_lag_on_failover`).
    pub fn wait_streaming(&self, within: Duration) -> io::Result<()> {
        let until = Instant::now() + within;
        loop {
            let leader = self.wait_leader(within)?;
            let all = self.nodes.iter().enumerate().all(|(i, n)| {
                n.name == leader
                    || n.child.is_none()
                    || self
                        .rest(i, "/replica?lag=1048576")
                        .is_ok_and(|(s, _)| s == 200)
            });
            if all {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(io::Error::other(format!(
                    "the replicas did not stream within {within:?}; {}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A running node other than the leader that streams within 1 MiB of it
    /// (a switchover candidate), waited for.
    pub fn streaming_replica(&self, within: Duration) -> io::Result<String> {
        let until = Instant::now() + within;
        loop {
            let leader = self.wait_leader(within)?;
            let found = self.nodes.iter().enumerate().find(|(i, n)| {
                n.name != leader
                    && n.child.is_some()
                    && self
                        .rest(*i, "/replica?lag=1048576")
                        .is_ok_and(|(s, _)| s == 200)
            });
            if let Some((_, n)) = found {
                return Ok(n.name.clone());
            }
            if Instant::now() > until {
                return Err(io::Error::other(format!(
                    "no replica streams within {within:?}; {}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET path` on node `i`'s REST API: the status and the body.
    pub fn rest(&self, i: usize, path: &str) -> io::Result<(u16, String)> {
        use dbha_agent::http::{Conn, Request, Url};
        let url = Url::parse(&self.nodes[i].api_url()).map_err(io::Error::other)?;
        let deadline = Instant::now() + Duration::from_secs(3);
        let tcp = std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.nodes[i].api_port).into(),
            Duration::from_secs(1),
        )?;
        let tls = match &self.rest_ca {
            Some(ca) => dbha_agent::probe::tls::client_config(
                dbha_agent::config::SslMode::VerifyFull,
                Some(ca),
            )
            .map_err(io::Error::other)?,
            None => None,
        };
        let mut conn = Conn::new(tcp, &url, tls).map_err(|e| io::Error::other(e.to_string()))?;
        let r = conn
            .request(
                &Request {
                    method: "GET",
                    path,
                    authorization: None,
                    json: None,
                },
                deadline,
                1 << 20,
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// `patronictl switchover` from the current leader to `candidate` (any
    /// replica when None), forced; returns once patronictl has. Patroni
    /// refuses a candidate whose member key still shows it behind (updated
    /// every `loop_wait`): such a refusal is tried again, for up to 30 s.
    pub fn switchover(&self, candidate: Option<&str>) -> io::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match self.switchover_once(candidate) {
                Err(e) if Instant::now() < until && e.to_string().contains("Switchover failed") => {
                    std::thread::sleep(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    fn switchover_once(&self, candidate: Option<&str>) -> io::Result<()> {
        let leader = self
            .leader()
            .ok_or_else(|| io::Error::other("no leader to switch over from"))?;
        let mut c = Command::new("patronictl");
        if let Some((uid, gid)) = self.install.run_as {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.arg("-c")
            .arg(&self.nodes[0].config)
            .args(["switchover", "--leader", &leader, "--force"]);
        if let Some(to) = candidate {
            c.args(["--candidate", to]);
        }
        let out = bounded(c, Duration::from_secs(60))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("Successfully switched over") {
            return Err(io::Error::other(format!(
                "patronictl switchover failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// `patronictl edit-config --set NAME=VALUE`, forced: a dynamic setting
    /// (such as `failsafe_mode`) for every node.
    pub fn set_config(&self, setting: &str) -> io::Result<()> {
        let mut c = Command::new("patronictl");
        if let Some((uid, gid)) = self.install.run_as {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.arg("-c")
            .arg(&self.nodes[0].config)
            .args(["edit-config", "--force", "--set", setting]);
        let out = bounded(c, Duration::from_secs(60))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "patronictl edit-config --set {setting} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// The last lines of every node's Patroni log.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The scratch directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }
}

fn wait_gone(pid: Pid, within: Duration) {
    let until = Instant::now() + within;
    while kill(pid, None).is_ok() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
