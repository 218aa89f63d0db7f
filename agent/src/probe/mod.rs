//! Probes: one thread per endpoint, each on its own schedule, so a hung endpoint
//! delays nobody's verdict but its own. Each result goes to the decision loop over a
//! channel; dropping an endpoint's stop handle ends its thread.

mod postgres;
mod tcp;

use crate::config::{Check, Database};
use std::fmt;
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
    /// Another network error.
    Io(String),
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
            Failure::Io(e) => f.write_str(e),
        }
    }
}

/// The result of one probe.
pub type Outcome = Result<(), Failure>;

/// One probe result, as sent to the decision loop.
#[derive(Debug)]
pub struct Report {
    /// The probe set it came from; results of a replaced set are ignored.
    pub generation: u64,
    pub index: usize,
    pub outcome: Outcome,
}

/// Probes `db` once, within its timeout.
pub fn probe(db: &Database) -> Outcome {
    let deadline = Instant::now() + db.timeout;
    let stream = tcp::connect(&db.host, db.port, deadline, db.timeout)?;
    match db.check {
        Check::Tcp => Ok(()),
        Check::Postgres => postgres::check(stream, deadline, db.timeout, &db.user, &db.dbname),
    }
}

/// Starts the probe thread of endpoint `index`. It probes every `db.interval`
/// (measured from the start of each probe) and sends a [`Report`] per probe, until
/// the returned handle is dropped or the receiver is gone.
pub fn spawn<E: From<Report> + Send + 'static>(
    generation: u64,
    index: usize,
    db: Database,
    tx: Sender<E>,
) -> std::io::Result<Sender<()>> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("probe-{}", db.alias))
        .spawn(move || loop {
            let start = Instant::now();
            let outcome = probe(&db);
            let report = Report {
                generation,
                index,
                outcome,
            };
            if tx.send(report.into()).is_err() {
                return;
            }
            let next = start + db.interval;
            match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        })?;
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbha_tests::fakepg::{FakePg, Reply};
    use std::sync::atomic::Ordering;

    fn db(port: u16, check: Check, timeout_ms: u64) -> Database {
        Database {
            alias: "x".into(),
            host: "127.0.0.1".into(),
            port,
            check,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(timeout_ms),
            rise: 1,
            fall: 1,
            user: "postgres".into(),
            dbname: "postgres".into(),
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn postgres_replies_are_classified_as_pg_isready_does() {
        let cases = [
            (Reply::AuthMd5, Ok(())),
            (Reply::AuthOk, Ok(())),
            (Reply::Error("28000"), Ok(())),
            (Reply::Error("57P03"), Err("not_ready")),
            (Reply::Garbage, Err("not_postgres")),
            (Reply::Silent, Err("timeout")),
        ];
        for (reply, want) in cases {
            let server = FakePg::start(reply);
            let got = probe(&db(server.port, Check::Postgres, 300));
            let kind = got.as_ref().map_err(|f| match f {
                Failure::NotReady(_) => "not_ready",
                Failure::NotPostgres(_) => "not_postgres",
                Failure::Timeout(_) => "timeout",
                other => panic!("{reply:?}: unexpected {other:?}"),
            });
            assert_eq!(kind.map(|_| ()), want, "{reply:?}: {got:?}");
            assert_eq!(server.startups.load(Ordering::Relaxed), 1, "{reply:?}");
        }
    }

    #[test]
    fn a_session_opened_by_trust_is_closed_with_terminate() {
        let server = FakePg::start(Reply::AuthOk);
        assert_eq!(probe(&db(server.port, Check::Postgres, 500)), Ok(()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.terminates.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.terminates.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn tcp_check_accepts_any_listener_and_sees_a_refusal() {
        let server = FakePg::start(Reply::Silent);
        assert_eq!(probe(&db(server.port, Check::Tcp, 300)), Ok(()));
        assert_eq!(
            probe(&db(free_port(), Check::Tcp, 300)),
            Err(Failure::Refused)
        );
        let e = probe(&db(free_port(), Check::Postgres, 300)).unwrap_err();
        assert_eq!(e.to_string(), "connection refused");
    }

    #[test]
    fn unresolvable_host_is_a_probe_failure() {
        let mut d = db(5432, Check::Tcp, 300);
        d.host = "no-such-host.invalid".into();
        assert!(matches!(probe(&d), Err(Failure::Resolve(_))));
    }

    #[test]
    fn a_silent_server_costs_the_timeout_not_more() {
        let server = FakePg::start(Reply::Silent);
        let start = Instant::now();
        let r = probe(&db(server.port, Check::Postgres, 200));
        let took = start.elapsed();
        assert_eq!(r, Err(Failure::Timeout(Duration::from_millis(200))));
        // Generous: only catches a probe that ignores its deadline.
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}
