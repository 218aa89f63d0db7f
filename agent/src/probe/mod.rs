//! Probes: one thread per endpoint, each on its own schedule, so a hung endpoint
//! delays nobody's verdict but its own. Each result goes to the decision loop over a
//! channel; dropping an endpoint's stop handle ends its thread.

mod postgres;
mod tcp;
pub mod tls;

use crate::config::{Check, Database};
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
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
    /// PostgreSQL answered 57P03: starting up, shutting down, or in recovery.
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
            Failure::NotReady(m) => write!(f, "not ready (57P03: {m})"),
            Failure::NotPostgres(m) => write!(f, "not a PostgreSQL server ({m})"),
            Failure::AuthFailed(m) => write!(f, "authentication failed: {m}"),
            Failure::Rejected(m) => write!(f, "session refused: {m}"),
            Failure::Io(e) => f.write_str(e),
            Failure::Tls(e) => write!(f, "TLS: {e}"),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Up {
    /// None when the check could not log in (tcp check, or no credentials).
    pub role: Option<Role>,
    /// `default_transaction_read_only` is on.
    pub read_only: bool,
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

/// Probes `db` once, within its timeout.
pub fn probe(db: &Database) -> Outcome {
    probe_with(db, &mut Resolver::default())
}

/// Probes `db` once, within its timeout, resolving its host through `resolver`.
pub fn probe_with(db: &Database, resolver: &mut Resolver) -> Outcome {
    let deadline = Instant::now() + db.timeout;
    let addrs = resolver.resolve(&db.host, db.port, deadline, db.timeout)?;
    let stream = tcp::connect(&addrs, deadline, db.timeout)?;
    match db.check {
        Check::Tcp => Ok(Up {
            role: None,
            read_only: false,
        }),
        Check::Postgres => postgres::check(stream, deadline, db.timeout, db),
    }
}

/// Starts the probe thread `id` of an endpoint. It probes every `db.interval`
/// (measured from the start of each probe) and sends a [`Report`] per probe, each
/// within the probe's timeout, until the returned handle is dropped or the
/// receiver is gone.
pub fn spawn<E: From<Report> + Send + 'static>(
    id: u64,
    db: Database,
    tx: Sender<E>,
) -> std::io::Result<Sender<()>> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("probe-{}", db.alias))
        .spawn(move || {
            let mut resolver = Resolver::default();
            loop {
                let start = Instant::now();
                let outcome = probe_with(&db, &mut resolver);
                let report = Report {
                    probe: id,
                    outcome,
                    took: start.elapsed(),
                };
                if tx.send(report.into()).is_err() {
                    return;
                }
                let next = start + db.interval;
                match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })?;
    Ok(stop)
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
