//! Probes: one thread per endpoint, each on its own schedule, so a hung endpoint
//! delays nobody's verdict but its own. Each result goes to the decision loop over a
//! channel; dropping an endpoint's [`Stop`] handle ends its thread.
//!
//! A `postgres` check that can log in holds its session between probes (unless
//! `session = "per-probe"`): one query per probe, and between probes the thread
//! waits on the socket, so a server that closes the session (crash, shutdown,
//! `pg_terminate_backend`) is reported at once as a failed probe. While a verdict
//! is pending, probes run every `fastinter` instead of every `interval`, for one
//! attempt of `max(rise, fall)` probes.

pub mod mysql;
pub mod patroni;
mod postgres;
pub mod tcp;
pub mod tls;

use crate::config::{Check, Database, Session, SslMode};
use crate::decide::Tracker;
use log::warn;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host name did not resolve.
    Resolve(String),
    /// Every address refused the connection.
    Refused,
    /// No answer within the probe's timeout.
    Timeout(Duration),
    /// The server closed the connection before answering.
    Closed,
    /// The server is starting up, shutting down, or in recovery (PostgreSQL's
    /// 57P03, MySQL's 1053), with its code.
    NotReady(String),
    /// Something answered that is not PostgreSQL.
    NotPostgres(String),
    /// The server rejected the configured credentials (28P01, 28000).
    AuthFailed(String),
    /// The server refused the session for another reason (unknown database, ...).
    Rejected(String),
    /// Another network error.
    Io(String),
    /// TLS could not be negotiated as `sslmode` requires.
    Tls(String),
    /// The held session ended between probes (the server closed it, or sent an
    /// error such as 57P01 "terminating connection due to administrator command").
    Lost(String),
    /// The held session answers, but a new connection is not admitted (a frozen
    /// postmaster, or 53300 "too many clients"): the applications' connections
    /// would not be either.
    NoNewConnections(String),
    /// What answered is not Patroni's REST API (the `patroni` check).
    NotPatroni(String),
    /// Patroni answers, and what it reports is not a server to use (PostgreSQL
    /// not running, a primary without the leader lock, ...).
    PatroniState(String),
    /// Patroni answers, but the database port cannot be reached from this host.
    DatabasePort(Box<Failure>),
    /// What answered is not a MySQL or MariaDB server (the `mysql` check).
    NotMysql(String),
    /// The MySQL server blocks this host (1129: too many aborted connections).
    HostBlocked(String),
}

impl Failure {
    /// The kind published in the state file (`dbha_protocol::probe_result`).
    pub fn kind(&self) -> u8 {
        use dbha_protocol::probe_result as k;
        match self {
            Failure::Resolve(_) => k::RESOLVE,
            Failure::Refused => k::REFUSED,
            Failure::Timeout(_) => k::TIMEOUT,
            Failure::Closed => k::CLOSED,
            Failure::NotReady(_) => k::NOT_READY,
            Failure::NotPostgres(_) => k::NOT_POSTGRES,
            Failure::AuthFailed(_) => k::AUTH_FAILED,
            Failure::Rejected(_) => k::REJECTED,
            Failure::Io(_) => k::IO,
            Failure::Tls(_) => k::TLS,
            Failure::Lost(_) => k::CLOSED,
            Failure::NoNewConnections(_) => k::NO_NEW_CONNECTIONS,
            Failure::NotPatroni(_) => k::NOT_PATRONI,
            Failure::PatroniState(_) => k::NOT_READY,
            Failure::DatabasePort(f) => f.kind(),
            Failure::NotMysql(_) => k::NOT_MYSQL,
            Failure::HostBlocked(_) => k::HOST_BLOCKED,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Resolve(e) => write!(f, "cannot resolve host: {e}"),
            Failure::Refused => f.write_str("connection refused"),
            Failure::Timeout(d) => write!(f, "no answer within {d:?}"),
            Failure::Closed => f.write_str("connection closed before any answer"),
            Failure::NotReady(m) => write!(f, "not ready ({m})"),
            Failure::NotPostgres(m) => write!(f, "not a PostgreSQL server ({m})"),
            Failure::AuthFailed(m) => write!(f, "authentication failed: {m}"),
            Failure::Rejected(m) => write!(f, "session refused: {m}"),
            Failure::Io(e) => f.write_str(e),
            Failure::Tls(e) => write!(f, "TLS: {e}"),
            Failure::Lost(e) => write!(f, "session lost: {e}"),
            Failure::NoNewConnections(e) => write!(f, "accepts no new connections ({e})"),
            Failure::NotPatroni(m) => write!(f, "not Patroni's REST API ({m})"),
            Failure::PatroniState(m) => write!(f, "Patroni reports {m}"),
            Failure::DatabasePort(e) => write!(
                f,
                "Patroni answers, but the database port is not reachable from this host: {e}"
            ),
            Failure::NotMysql(m) => write!(f, "not a MySQL or MariaDB server ({m})"),
            Failure::HostBlocked(m) => write!(
                f,
                "the server blocks this host ({m}): too many aborted connections from it (max_connect_errors); FLUSH HOSTS on the server clears it"
            ),
        }
    }
}

/// A server's role, as seen by a probe that could log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not in recovery: accepts writes (unless read_only).
    Primary,
    /// In recovery (a streaming or archive standby).
    Standby,
}

impl From<Role> for dbha::Role {
    fn from(r: Role) -> dbha::Role {
        match r {
            Role::Primary => dbha::Role::Primary,
            Role::Standby => dbha::Role::Standby,
        }
    }
}

/// What a successful probe learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Up {
    /// None when the check could not log in (tcp check, or no credentials).
    pub role: Option<Role>,
    /// `default_transaction_read_only` is on.
    pub read_only: bool,
    /// Where the server is in the WAL, in bytes: a primary's current write
    /// position, a standby's replay position. Measured only when the probe ran
    /// its status query (held sessions, lag limits, servers before 14).
    pub wal: Option<u64>,
    /// A standby's replay delay: 0 when its WAL receiver runs and it has
    /// replayed all it received, else the age of the last transaction it
    /// replayed; None before it replayed any (unknown: over `max_replica_lag`).
    pub replay_delay: Option<Duration>,
    /// A primary's timeline, when the status query ran.
    pub timeline: Option<u32>,
    /// MySQL: the transactions the server has executed, by its GTID position
    /// (the sum of the sequence numbers of its domains on MariaDB, the size of
    /// `gtid_executed` on MySQL); a primary's, and a replica's, compared.
    pub gtid: Option<u64>,
    /// A MySQL replica: bytes it received from its source and has not
    /// executed yet (`Read_Master_Log_Pos - Exec_Master_Log_Pos`, in the same
    /// file).
    pub backlog: Option<u64>,
}

/// The result of one probe.
pub type Outcome = Result<Up, Failure>;

/// One probe result, as sent to the decision loop.
#[derive(Debug)]
pub struct Report {
    /// The probe thread it came from (see [`spawn`]): a reload keeps the threads of
    /// unchanged endpoints, and results of a replaced thread are ignored.
    pub probe: u64,
    pub outcome: Outcome,
    /// How long the probe took.
    pub took: Duration,
}

/// Probes `db` once with a new connection, within its timeout.
pub fn probe(db: &Database) -> Outcome {
    Prober::new(Database {
        session: Session::PerProbe,
        ..db.clone()
    })
    .probe()
}

/// One endpoint's prober: its host lookups and, when held, its session.
pub struct Prober {
    db: Database,
    resolver: Resolver,
    /// The held session, and when it was opened.
    held: Option<(Held, Instant)>,
    /// When a new connection was last admitted (see `admission_interval`).
    admitted: Option<Instant>,
    /// A failed TLS handshake under `prefer` was logged (once per prober).
    tls_fell_back: bool,
    /// The `patroni` check's connection to the REST API.
    patroni: patroni::Client,
}

/// What ended a wait between probes.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// The next probe is due.
    Due,
    /// The held session ended: a failed probe.
    Lost(Failure),
    /// The stop handle was dropped.
    Stop,
    /// The agent asked for the fast pace (true) or the normal one (false)
    /// through [`Stop::hurry`]: the next probe is due at another time.
    Hurry(bool),
}

impl Prober {
    pub fn new(db: Database) -> Prober {
        Prober {
            db,
            resolver: Resolver::default(),
            held: None,
            admitted: None,
            tls_fell_back: false,
            patroni: patroni::Client::default(),
        }
    }

    /// One probe within the timeout: the status query on the held session, or a
    /// new connection (which is kept when the session is to be held). A session
    /// whose probe failed is closed: the next probe connects anew.
    pub fn probe(&mut self) -> Outcome {
        let start = Instant::now();
        let deadline = start + self.db.timeout;
        if self.db.check == Check::Patroni {
            return self.patroni(start, deadline);
        }
        // A session past its lifetime is closed, and this probe opens a new one.
        if self
            .held
            .as_ref()
            .is_some_and(|(_, opened)| opened.elapsed() >= self.db.session_lifetime)
        {
            if let Some((held, _)) = self.held.take() {
                held.close();
            }
        }
        if let Some((held, _)) = &mut self.held {
            let outcome = held.probe(deadline, &self.db);
            if outcome.is_err() {
                self.held = None;
                return outcome;
            }
            if self.admission_due() {
                // The session stays: it is fine, new connections are not.
                let stream = self.connect(start, deadline)?;
                let (db, timeout) = (&self.db, self.db.timeout);
                match db.check {
                    Check::Mysql => mysql::session::admit(stream, deadline, timeout, db)?,
                    _ => postgres::admit(stream, deadline, timeout, db)?,
                }
                self.admitted = Some(Instant::now());
            }
            return outcome;
        }
        let stream = self.connect(start, deadline)?;
        match self.db.check {
            Check::Tcp => return Ok(Up::default()),
            Check::Mysql if !self.db.logs_in() => {
                return mysql::greet(stream, deadline, self.db.timeout)
            }
            Check::Postgres | Check::Patroni | Check::Mysql => {}
        }
        match self.login(stream, deadline, None) {
            // libpq's `prefer`: a failed TLS handshake is followed by a new
            // connection without TLS.
            Err(Failure::Tls(why)) if self.db.sslmode == SslMode::Prefer => {
                if !self.tls_fell_back {
                    warn!(
                        "{}: TLS failed ({why}); sslmode = \"prefer\" connects without TLS, as libpq does",
                        self.db.alias
                    );
                    self.tls_fell_back = true;
                }
                let stream = self.connect(start, deadline)?;
                let plain = Database {
                    sslmode: SslMode::Disable,
                    ..self.db.clone()
                };
                self.login(stream, deadline, Some(&plain))
            }
            outcome => outcome,
        }
    }

    /// A new connection is to be checked now: never yet, or not within
    /// `admission_interval`.
    fn admission_due(&self) -> bool {
        self.admitted
            .is_none_or(|t| t.elapsed() >= self.db.admission_interval)
    }

    /// The `patroni` check: Patroni's answer, and on its first success and then
    /// every `admission_interval`, a connection to the database port (closed at
    /// once, before any startup message, which PostgreSQL takes silently).
    fn patroni(&mut self, start: Instant, deadline: Instant) -> Outcome {
        let outcome = self.patroni.probe(&self.db, start, deadline);
        if outcome.is_err() {
            self.admitted = None;
            return outcome;
        }
        if self.admission_due() {
            let port = self.connect(Instant::now(), deadline).map_err(|f| {
                self.admitted = None;
                Failure::DatabasePort(Box::new(f))
            })?;
            let _ = port.shutdown(std::net::Shutdown::Both);
            self.admitted = Some(Instant::now());
        }
        outcome
    }

    /// Logs in on `stream` as `db` (this prober's database when None) and holds
    /// the session when sessions are held.
    fn login(
        &mut self,
        stream: std::net::TcpStream,
        deadline: Instant,
        db: Option<&Database>,
    ) -> Outcome {
        let start = Instant::now();
        let db = db.unwrap_or(&self.db);
        let (outcome, held) = match (db.check, db.session) {
            (Check::Mysql, session) => {
                let keep = session == Session::Held;
                let (outcome, held) = mysql::session::check(stream, deadline, db.timeout, db, keep);
                (outcome, held.map(Held::Mysql))
            }
            (_, Session::PerProbe) => (postgres::check(stream, deadline, db.timeout, db), None),
            (_, Session::Held) => {
                let (outcome, held) = postgres::open(stream, deadline, db.timeout, db);
                (outcome, held.map(Held::Postgres))
            }
        };
        if db.session == Session::Held {
            // A new session was just admitted.
            self.admitted = held.is_some().then_some(start);
            self.held = held.map(|h| (h, start));
        }
        outcome
    }

    /// A new connection to the endpoint, bounded by `connect_timeout`, as HAProxy
    /// bounds its connect phase: a blackholed host fails then, not at `timeout`.
    fn connect(
        &mut self,
        start: Instant,
        deadline: Instant,
    ) -> Result<std::net::TcpStream, Failure> {
        let db = &self.db;
        let addrs = self
            .resolver
            .resolve(&db.host, db.port, deadline, db.timeout)?;
        let connected = deadline.min(start + db.connect_timeout);
        tcp::connect(&addrs, connected, db.connect_timeout)
    }

    /// Waits until `until`, or until `stop` is dropped, or until the held
    /// session ends. Whatever the server sends between probes (a notice, a
    /// parameter) is read and passed over; an error or a close ends the session.
    pub fn wait(&mut self, until: Instant, stop: &UnixStream) -> Wake {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::Due;
            }
            // Rounded up: a timeout rounded down to 0 ms would spin.
            let ms = left
                .as_nanos()
                .div_ceil(1_000_000)
                .min(u128::from(u16::MAX)) as u16;
            if let Some((Held::Mysql(h), _)) = &mut self.held {
                if h.unasked() {
                    let lost = h.drain().err();
                    self.held = None;
                    return Wake::Lost(lost.unwrap_or(Failure::Lost("unasked bytes".into())));
                }
            }
            let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
            if let Some((held, _)) = &self.held {
                fds.push(PollFd::new(held.fd(), PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                // poll on two valid descriptors does not fail otherwise; if it
                // does, sleep rather than spin.
                Err(_) => {
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                    continue;
                }
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                // A byte is a request for a pace; the end of the stream (the
                // handle dropped), or an error, is a stop.
                let mut asked = [0u8; 16];
                return match (&*stop).read(&mut asked) {
                    Ok(n) if n > 0 => Wake::Hurry(asked[n - 1] == HURRY),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    _ => Wake::Stop,
                };
            }
            let session = fds.get(1).is_some_and(ready);
            drop(fds);
            if session {
                if let Some((held, _)) = &mut self.held {
                    if let Err(f) = held.drain(&self.db) {
                        self.held = None;
                        return Wake::Lost(f);
                    }
                }
            }
        }
    }
}

/// A session held between probes, of either check that logs in.
enum Held {
    Postgres(postgres::Held),
    Mysql(mysql::session::Held),
}

impl Held {
    fn probe(&mut self, deadline: Instant, db: &Database) -> Outcome {
        match self {
            Held::Postgres(h) => h.probe(deadline, db),
            Held::Mysql(h) => h.probe(deadline, db.connect_timeout),
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Held::Postgres(h) => h.fd(),
            Held::Mysql(h) => h.fd(),
        }
    }

    fn drain(&mut self, db: &Database) -> Result<(), Failure> {
        match self {
            Held::Postgres(h) => h.drain(db),
            Held::Mysql(h) => h.drain(),
        }
    }

    fn close(self) {
        match self {
            Held::Postgres(h) => h.close(),
            Held::Mysql(h) => h.close(),
        }
    }
}

/// Dropping it stops the probe thread it was returned with, at once (the thread
/// waits on the other end of this socket pair).
pub struct Stop {
    _peer: UnixStream,
}

/// The byte [`Stop::hurry`] sends for the fast pace; any other is the normal one.
const HURRY: u8 = 1;

impl Stop {
    /// Asks the thread for the fast pace (`fastinter`) whatever its verdicts
    /// (true), or for its own pace again (false). It takes effect at once: a
    /// thread waiting out an `interval` probes at the new time. Never blocks:
    /// the socket is non-blocking, and a request that does not fit in its buffer
    /// (the thread stopped reading) is dropped.
    pub fn hurry(&self, on: bool) {
        let _ = (&self._peer).write(&[if on { HURRY } else { 0 }]);
    }
    /// A handle tied to no thread.
    #[cfg(test)]
    pub fn detached() -> Stop {
        let (peer, _) = UnixStream::pair().expect("a socket pair");
        Stop { _peer: peer }
    }
}

/// Starts the probe thread `id` of an endpoint. It probes every `db.interval`, or
/// every `db.fastinter` while a verdict is pending (measured from the start of
/// each probe), and sends a [`Report`] per probe, each within the probe's
/// timeout, plus one as soon as a held session is lost (then probes again at
/// once), until the returned handle is dropped or the receiver is gone.
pub fn spawn<E: From<Report> + Send + 'static>(
    id: u64,
    db: Database,
    tx: Sender<E>,
) -> std::io::Result<Stop> {
    let (handle, stopped) = UnixStream::pair()?;
    handle.set_nonblocking(true)?;
    stopped.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name(format!("probe-{}", db.alias))
        .spawn(move || {
            // The thread's own copy of the hysteresis: it only says whether a
            // verdict is pending, which sets the pace.
            let mut pace = Tracker::new(db.rise, db.fall);
            let mut prober = Prober::new(db.clone());
            let send = |outcome: Outcome, took: Duration| {
                tx.send(
                    Report {
                        probe: id,
                        outcome,
                        took,
                    }
                    .into(),
                )
                .is_ok()
            };
            let mut hurry = false;
            loop {
                let start = Instant::now();
                let outcome = prober.probe();
                pace.observe(outcome.is_ok());
                if !send(outcome, start.elapsed()) {
                    return;
                }
                loop {
                    match prober.wait(start + pace_of(&pace, &db, hurry), &stopped) {
                        Wake::Due => break,
                        Wake::Stop => return,
                        Wake::Hurry(h) => hurry = h,
                        // The loss is one failed probe, and the next probe follows
                        // at once: a server that closed only this session lets it
                        // in again, and nothing moves; one that went down refuses
                        // it, which makes a second failure.
                        Wake::Lost(f) => {
                            pace.observe(false);
                            if !send(Err(f), Duration::ZERO) {
                                return;
                            }
                            break;
                        }
                    }
                }
            }
        })?;
    Ok(Stop { _peer: handle })
}

/// How long until the next probe: `fastinter` while a verdict is pending (a
/// failure or success counted toward `fall` or `rise`, or no verdict yet) for
/// at most `max(rise, fall)` probes (see [`Tracker::fast`]), and while the agent
/// hurries the endpoint (writes have no database: a promotion is watched for;
/// the agent bounds how long); for an endpoint that went down, `fastinter`
/// doubling with each probe up to `interval` ([`Tracker::backoff`]), hurried or
/// not; `interval` otherwise.
///
/// Only a held session is hurried: there a probe is a status query on the open
/// session. A connection per probe (a login, or for the tcp check an accept)
/// at `fastinter` on every standby, from every agent, would be the login storm
/// the window must not cause; those keep their pace.
fn pace_of(t: &Tracker, db: &Database, hurry: bool) -> Duration {
    let hurried = hurry
        && db.session == Session::Held
        && (db.check == Check::Postgres || (db.check == Check::Mysql && db.logs_in()));
    if t.fast() || (hurried && t.backoff().is_none()) {
        return db.fastinter;
    }
    match t.backoff() {
        Some(n) => db.fastinter.saturating_mul(n).min(db.interval),
        None => db.interval,
    }
}

/// Keepalive, and `TCP_USER_TIMEOUT` = the probe timeout, on a held session's
/// socket: a peer that stops acknowledging (a blackholed host) ends the session
/// within `timeout`, also between probes, without waiting for the kernel's
/// retransmissions.
pub(crate) fn keep_alive(fd: impl AsFd, db: &Database) {
    use nix::sys::socket::{setsockopt, sockopt};
    let ms = db.timeout.as_millis().min(u128::from(u32::MAX)) as u32;
    let idle = db.interval.as_secs().clamp(1, 7200) as u32;
    let _ = setsockopt(&fd, sockopt::KeepAlive, &true);
    let _ = setsockopt(&fd, sockopt::TcpKeepIdle, &idle);
    let _ = setsockopt(&fd, sockopt::TcpKeepInterval, &1);
    let _ = setsockopt(&fd, sockopt::TcpKeepCount, &3);
    let _ = setsockopt(&fd, sockopt::TcpUserTimeout, &ms);
}

/// Whether bytes this side sent on `tcp` still wait for the peer's TCP
/// acknowledgement: the socket's send queue in /proc/net/tcp (or tcp6), which
/// counts sent but unacknowledged bytes. False when it cannot be told.
pub(crate) fn unacknowledged(tcp: &std::net::TcpStream) -> bool {
    let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) else {
        return false;
    };
    let table = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let Ok(text) = std::fs::read_to_string(table) else {
        return false;
    };
    let (l, p) = (
        format!(":{:04X}", local.port()),
        format!(":{:04X}", peer.port()),
    );
    text.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 4
            && f[1].ends_with(&l)
            && f[2].ends_with(&p)
            && f[4]
                .split(':')
                .next()
                .and_then(|q| u64::from_str_radix(q, 16).ok())
                .is_some_and(|q| q > 0)
    })
}

/// How much of a server's error text reaches a verdict (and so the log).
const MAX_SERVER_TEXT: usize = 256;

/// Server text as a verdict may carry it into the log: control characters escaped
/// (no forged log lines, no terminal escapes), at most MAX_SERVER_TEXT bytes.
pub fn server_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= MAX_SERVER_TEXT {
            out.push_str(&format!("... ({} bytes in all)", raw.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The answer of a name lookup.
type Lookup = std::io::Result<Vec<SocketAddr>>;

/// Host name resolution bounded by the probe's deadline. The system resolver
/// (`getaddrinfo`) cannot be interrupted and waits by its own timeouts (5 s per
/// attempt and server by default), so a lookup runs in a helper thread; a probe
/// that cannot wait for it fails with [`Failure::Resolve`], and the next probe
/// waits for the same lookup rather than start another. At most one lookup per
/// endpoint is under way, whatever the resolver does.
#[derive(Default)]
pub struct Resolver {
    pending: Option<mpsc::Receiver<Lookup>>,
}

impl Resolver {
    pub fn resolve(
        &mut self,
        host: &str,
        port: u16,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, Failure> {
        // An address literal needs no lookup (and no thread).
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let rx = match self.pending.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = mpsc::sync_channel(1);
                let name = host.to_owned();
                std::thread::Builder::new()
                    .name("resolve".into())
                    .spawn(move || {
                        let found = (name.as_str(), port)
                            .to_socket_addrs()
                            .map(|a| a.collect::<Vec<_>>());
                        let _ = tx.send(found);
                    })
                    .map_err(|e| Failure::Resolve(format!("cannot start a lookup: {e}")))?;
                rx
            }
        };
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(addrs)) if addrs.is_empty() => {
                Err(Failure::Resolve(format!("{host} has no address")))
            }
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(e)) => Err(Failure::Resolve(e.to_string())),
            Err(RecvTimeoutError::Timeout) => {
                self.pending = Some(rx);
                Err(Failure::Resolve(format!(
                    "the resolver did not answer within {timeout:?}"
                )))
            }
            Err(RecvTimeoutError::Disconnected) => Err(Failure::Resolve(
                "the lookup thread ended without an answer".into(),
            )),
        }
    }
}
