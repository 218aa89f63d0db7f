//! The postgres check against a server that answers with arbitrary bytes: the
//! answer to SSLRequest, then everything a server may send (authentication
//! requests of every kind with a password configured, parameters, errors, rows,
//! TLS records when it said 'S'). A verdict, never a panic, and never an
//! allocation sized by the server (the length cap is checked before parsing).
//!
//! The first input byte chooses sslmode (even: prefer, odd: disable), whether a
//! cleartext password may go (bit 1) and whether the session is held (bit 2:
//! then what follows the login is read as a held session reads between probes);
//! the rest is what the server sends, at once, before closing its side.
#![no_main]

use dbha_agent::config::{Check, Database, Secret, Session, SslMode};
use dbha_agent::probe::Prober;
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A loopback server thread that sends, on each connection, the next reply it is
/// given, after the client's first message; a connection with no reply queued is
/// closed.
fn server() -> &'static (u16, Mutex<Sender<Vec<u8>>>) {
    static SERVER: OnceLock<(u16, Mutex<Sender<Vec<u8>>>)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (tx, rx): (Sender<Vec<u8>>, Receiver<Vec<u8>>) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                // A connection the input queued no reply for (prefer's second
                // connection after a failed handshake) is closed at once.
                let reply = match rx.try_recv() {
                    Ok(reply) => reply,
                    Err(mpsc::TryRecvError::Empty) => continue,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let mut first = [0u8; 8];
                let _ = conn.read_exact(&mut first);
                let _ = conn.write_all(&reply);
                let _ = conn.shutdown(Shutdown::Write);
                // Whatever the client still sends, until it closes.
                let mut sink = [0u8; 4096];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
            }
        });
        (port, Mutex::new(tx))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, reply)) = data.split_first() else {
        return;
    };
    let (port, tx) = server();
    tx.lock()
        .expect("sender")
        .send(reply.to_vec())
        .expect("server thread");
    let db = Database {
        alias: "fuzz".into(),
        host: "127.0.0.1".into(),
        port: *port,
        check: Check::Postgres,
        interval: Duration::from_millis(100),
        fastinter: Duration::from_millis(10),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
        session: if mode & 4 != 0 {
            Session::Held
        } else {
            Session::PerProbe
        },
        session_lifetime: Duration::from_secs(60),
        // Past the one probe: no admission check (its new connection would
        // find no reply queued).
        admission_interval: Duration::from_secs(60),
        max_replica_lag: None,
        max_replica_lag_bytes: None,
        max_replica_lag_transactions: None,
        user: "postgres".into(),
        dbname: "postgres".into(),
        password: Secret::new("fuzz-password"),
        password_source: None,
        sslmode: if mode % 2 == 0 {
            SslMode::Prefer
        } else {
            SslMode::Disable
        },
        sslrootcert: None,
        allow_cleartext_password: mode & 2 != 0,
        patroni: None,
        mysql: None,
        member: None,
    };
    let held = db.session == Session::Held;
    let mut prober = Prober::new(db);
    let _ = prober.probe().map_err(|f| f.to_string());
    // A held session: read what else the server sent (then its close), as
    // between probes.
    if let (true, Ok((stop, _peer))) = (held, std::os::unix::net::UnixStream::pair()) {
        let _ = prober.wait(std::time::Instant::now() + Duration::from_millis(2), &stop);
    }
});
