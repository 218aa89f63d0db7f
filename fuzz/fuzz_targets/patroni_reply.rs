//! The patroni check against a REST API that answers with arbitrary bytes: the
//! HTTP head (httparse), a body framed by length, chunks or the close, and the
//! JSON judged for a role. A verdict, never a panic, and never an allocation
//! sized by the server (heads and bodies are capped before they are buffered).
//!
//! The first input byte chooses whether the connection is kept for a second
//! probe (bit 0: then the rest is split at its middle into two answers); the
//! rest is what the server sends after reading a request, before closing its
//! side. The database port is one that refuses, so a success ends in the port
//! check's failure.
#![no_main]

use dbha_agent::config::{Check, Database, Session, SslMode};
use dbha_agent::http::Url;
use dbha_agent::probe::patroni::Settings;
use dbha_agent::probe::Prober;
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A loopback server thread that answers each request on a connection with the
/// next reply queued for that connection, then closes.
fn server() -> &'static (u16, Mutex<Sender<Vec<Vec<u8>>>>) {
    static SERVER: OnceLock<(u16, Mutex<Sender<Vec<Vec<u8>>>>)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (tx, rx): (Sender<Vec<Vec<u8>>>, Receiver<Vec<Vec<u8>>>) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let replies = match rx.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::TryRecvError::Empty) => continue,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                for reply in replies {
                    let mut req = Vec::new();
                    let mut b = [0u8; 1];
                    while !req.ends_with(b"\r\n\r\n") && req.len() < 8192 {
                        match conn.read(&mut b) {
                            Ok(1) => req.push(b[0]),
                            _ => break,
                        }
                    }
                    let _ = conn.write_all(&reply);
                }
                let _ = conn.shutdown(Shutdown::Write);
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
    let twice = mode & 1 != 0;
    let replies = if twice {
        let (a, b) = reply.split_at(reply.len() / 2);
        vec![a.to_vec(), b.to_vec()]
    } else {
        vec![reply.to_vec()]
    };
    tx.lock()
        .expect("sender")
        .send(replies)
        .expect("server thread");
    let url = Url::parse(&format!("http://127.0.0.1:{port}")).expect("url");
    let db = Database {
        alias: "fuzz".into(),
        host: "127.0.0.1".into(),
        // Refused on loopback: the port check after a success fails at once.
        port: 1,
        check: Check::Patroni,
        interval: Duration::from_millis(100),
        fastinter: Duration::from_millis(10),
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        rise: 1,
        fall: 1,
        session: Session::Held,
        session_lifetime: Duration::from_secs(60),
        admission_interval: Duration::from_secs(60),
        max_replica_lag: None,
        max_replica_lag_bytes: Some(1),
        max_replica_lag_transactions: None,
        user: "postgres".into(),
        dbname: "postgres".into(),
        password: None,
        password_source: None,
        sslmode: SslMode::Disable,
        sslrootcert: None,
        allow_cleartext_password: false,
        patroni: Some(Settings::new(&url.to_string(), None, None, None).expect("settings")),
        mysql: None,
        member: None,
    };
    let mut prober = Prober::new(db);
    let _ = prober.probe().map_err(|f| f.to_string());
    if twice {
        let _ = prober.probe().map_err(|f| f.to_string());
    }
});
