//! The agent's probes, in process, against fake PostgreSQL servers (byte fixtures)
//! and plain listeners.

use dbha_agent::config::Check;
use dbha_agent::probe::{probe, Failure, Role, Up};
use dbha_tests::fakepg::{database as db, FakePg, Reply};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
        assert_eq!(server.seen.startups.load(Ordering::Relaxed), 1, "{reply:?}");
    }
}

#[test]
fn a_held_session_also_checks_every_admission_interval_that_new_connections_are_admitted() {
    // Issue 20 row 9: at max_connections the held session still answered, so the
    // server stayed "up" while every new application connection was refused.
    let server = FakePg::start(Reply::FullAfterFirst);
    let mut d = db(server.port, Check::Postgres, 500);
    d.session = dbha_agent::config::Session::Held;
    let every = Duration::from_millis(500);
    d.admission_interval = every;
    let mut p = dbha_agent::probe::Prober::new(d);
    assert!(p.probe().is_ok(), "the session is opened");
    assert!(p.probe().is_ok(), "not due: the held query alone");
    std::thread::sleep(every);
    match p.probe() {
        Err(Failure::NoNewConnections(m)) => assert!(m.starts_with("53300"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.seen.startups.load(Ordering::Relaxed), 2);
    // The session is kept; new connections are checked again at the next probe.
    assert!(matches!(p.probe(), Err(Failure::NoNewConnections(_))));
    assert_eq!(server.seen.startups.load(Ordering::Relaxed), 3);
}

#[test]
fn a_session_opened_by_trust_is_closed_with_terminate() {
    let server = FakePg::start(Reply::AuthOk);
    let primary = Up {
        role: Some(Role::Primary),
        ..Up::default()
    };
    assert_eq!(probe(&db(server.port, Check::Postgres, 500)), Ok(primary));
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.seen.terminates.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.seen.terminates.load(Ordering::Relaxed), 1);
}

#[test]
fn a_trust_session_reads_the_standby_role() {
    let server = FakePg::start(Reply::AuthOkStandby);
    let up = probe(&db(server.port, Check::Postgres, 500)).unwrap();
    assert_eq!(up.role, Some(Role::Standby));
}

#[test]
fn tcp_check_accepts_any_listener_and_sees_a_refusal() {
    let server = FakePg::start(Reply::Silent);
    assert_eq!(probe(&db(server.port, Check::Tcp, 300)), Ok(Up::default()));
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

/// A listener whose accept queue is full drops incoming SYNs, exactly as a
/// blackholed host does, and stays on loopback. The probe must give up after its
/// own timeout, not after the kernel's SYN retries (about two minutes).
#[test]
fn a_host_that_drops_syns_costs_the_timeout_not_the_kernels_retries() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Fill the accept queue (backlog 128 in std) without ever accepting.
    let mut held = Vec::new();
    let filled = (0..1024).any(|_| {
        match std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_millis(100),
        ) {
            Ok(s) => {
                held.push(s);
                false
            }
            Err(_) => true,
        }
    });
    assert!(filled, "the accept queue never filled");
    let start = Instant::now();
    let r = probe(&db(port, Check::Tcp, 300));
    let took = start.elapsed();
    assert_eq!(
        r,
        Err(Failure::Timeout(Duration::from_millis(300))),
        "{r:?}"
    );
    println!("probe of a SYN-dropping listener gave up after {took:?}");
    // Generous: only catches a probe that waits for the kernel.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    drop(l);
}

#[test]
fn a_cleartext_password_is_never_sent_unless_allowed_and_never_unencrypted() {
    // Issue 13 row 11: the password went in cleartext to any server that asked.
    let server = FakePg::start(Reply::AuthCleartext);
    let mut d = db(server.port, Check::Postgres, 500);
    // Without credentials the request only shows a live server.
    assert!(probe(&d).is_ok());
    d.password = dbha_agent::config::Secret::new("s3cret");
    let e = probe(&d).unwrap_err();
    assert!(
        matches!(&e, Failure::Rejected(m) if m.contains("cleartext") && m.contains("allow_cleartext_password")),
        "{e}"
    );
    // Allowed, but this server declined TLS: still not sent.
    d.allow_cleartext_password = true;
    let e = probe(&d).unwrap_err();
    assert!(
        matches!(&e, Failure::Rejected(m) if m.contains("unencrypted")),
        "{e}"
    );
    assert_eq!(server.seen.passwords.load(Ordering::Relaxed), 0);
    assert_eq!(server.seen.ssl_requests.load(Ordering::Relaxed), 3);
}

#[test]
fn a_server_that_declines_tls_fails_every_mode_that_requires_it() {
    use dbha_agent::config::SslMode;
    let server = FakePg::start(Reply::AuthOk);
    let mut d = db(server.port, Check::Postgres, 500);
    for (mode, ok) in [
        (SslMode::Disable, true),
        (SslMode::Prefer, true),
        (SslMode::Require, false),
    ] {
        d.sslmode = mode;
        let got = probe(&d);
        match (ok, &got) {
            (true, Ok(_)) => {}
            (false, Err(Failure::Tls(m))) => assert!(
                m.contains("the server does not accept TLS (sslmode = \"require\")"),
                "{m}"
            ),
            _ => panic!("{mode:?}: {got:?}"),
        }
    }
    // disable sends no SSLRequest; prefer and require each one.
    assert_eq!(server.seen.ssl_requests.load(Ordering::Relaxed), 2);
}

#[test]
fn a_server_before_14_is_asked_its_role_and_read_only_setting() {
    // Issue 13, "read, not run": servers older than 14 report neither
    // in_hot_standby nor default_transaction_read_only, so a read-only primary
    // was taken for a writable one.
    for read_only in [true, false] {
        let server = FakePg::start(Reply::AuthOkBefore14 { read_only });
        let up = probe(&db(server.port, Check::Postgres, 500)).unwrap();
        assert_eq!((up.role, up.read_only), (Some(Role::Primary), read_only));
        // The same query reads the WAL position ("0/1000" from the fake).
        assert_eq!(up.wal, Some(0x1000));
        assert_eq!(server.seen.queries.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn a_held_session_is_probed_with_one_query_each_and_its_loss_is_seen_at_once() {
    use dbha_agent::config::Session;
    use dbha_agent::probe::{Prober, Wake};
    let server = FakePg::start(Reply::AuthOk);
    let mut prober = Prober::new(dbha_agent::config::Database {
        session: Session::Held,
        ..db(server.port, Check::Postgres, 500)
    });
    for _ in 0..3 {
        assert_eq!(prober.probe().map(|u| u.role), Ok(Some(Role::Primary)));
    }
    // One login, then one status query per probe on it.
    assert_eq!(server.seen.startups.load(Ordering::Relaxed), 1);
    assert_eq!(server.seen.queries.load(Ordering::Relaxed), 3);
    let (stop, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let start = Instant::now();
    assert_eq!(
        prober.wait(start + Duration::from_millis(50), &stop),
        Wake::Due
    );
    // The server goes away between probes: the wait ends at once, long before
    // its 30 s limit, with the session lost.
    drop(server);
    let start = Instant::now();
    let woke = prober.wait(start + Duration::from_secs(30), &stop);
    assert!(matches!(woke, Wake::Lost(_)), "{woke:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // Dropping the other end of the stop pair ends a wait too.
    drop(peer);
    assert_eq!(
        prober.wait(Instant::now() + Duration::from_secs(30), &stop),
        Wake::Stop
    );
}
