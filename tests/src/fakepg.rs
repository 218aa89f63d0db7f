//! A fake PostgreSQL server on a loopback port that declines TLS and answers every
//! startup message with one chosen reply, for probe tests that must not need a real server. The
//! replies are byte fixtures of the wire protocol.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the fake server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// AuthenticationMD5Password: a live server asking for a password.
    AuthMd5,
    /// AuthenticationCleartextPassword: asking for the password itself, as a
    /// spoofed endpoint would.
    AuthCleartext,
    /// AuthenticationOk (trust), `in_hot_standby` = off, ReadyForQuery; then
    /// answers queries as a primary until Terminate.
    AuthOk,
    /// As AuthOk with `in_hot_standby` = on: a standby.
    AuthOkStandby,
    /// A server older than PostgreSQL 14: AuthenticationOk and ReadyForQuery with
    /// neither `in_hot_standby` nor `default_transaction_read_only` reported; any
    /// query gets one row: not in recovery, and this read-only setting.
    AuthOkBefore14 { read_only: bool },
    /// FATAL ErrorResponse with this SQLSTATE (57P03: not ready; 28000: no such role).
    Error(&'static str),
    /// The first connection as [`Reply::AuthOk`], every later one 53300 "too many
    /// clients": a server whose `max_connections` filled up after the probe's
    /// session was opened.
    FullAfterFirst,
    /// Bytes that are not PostgreSQL.
    Garbage,
    /// Accepts and never answers (a hung server).
    Silent,
    /// AuthenticationOk, then a ParameterStatus whose header claims 1 GiB, then
    /// filler bytes for as long as the client reads (a hostile server).
    HugeMessage,
    /// AuthenticationOk, then an ErrorResponse whose message has a newline, a
    /// terminal escape and 40 KiB of text (log injection).
    HostileError,
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn reply_bytes(r: Reply) -> Vec<u8> {
    match r {
        Reply::AuthMd5 => message(b'R', &[0, 0, 0, 5, 0x11, 0x22, 0x33, 0x44]),
        Reply::AuthCleartext => message(b'R', &[0, 0, 0, 3]),
        Reply::AuthOk | Reply::AuthOkStandby | Reply::FullAfterFirst => {
            let standby = if r == Reply::AuthOkStandby {
                "on"
            } else {
                "off"
            };
            let mut m = message(b'R', &[0, 0, 0, 0]);
            for (k, v) in [
                ("in_hot_standby", standby),
                ("default_transaction_read_only", "off"),
            ] {
                m.extend(message(b'S', format!("{k}\0{v}\0").as_bytes()));
            }
            m.extend(message(b'Z', b"I"));
            m
        }
        Reply::Error(code) => {
            let mut body = Vec::new();
            for (t, v) in [(b'S', "FATAL"), (b'C', code), (b'M', "fake server refuses")] {
                body.push(t);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            message(b'E', &body)
        }
        Reply::AuthOkBefore14 { .. } => {
            let mut m = message(b'R', &[0, 0, 0, 0]);
            m.extend(message(b'Z', b"I"));
            m
        }
        Reply::Garbage => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(),
        Reply::Silent => Vec::new(),
        Reply::HugeMessage => {
            let mut m = message(b'R', &[0, 0, 0, 0]);
            m.push(b'S');
            m.extend_from_slice(&(1u32 << 30).to_be_bytes());
            m
        }
        Reply::HostileError => {
            let text = format!(
                "line one\nFAKE LOG LINE \x1b[31mred{}",
                "x".repeat(40 * 1024)
            );
            let mut body = Vec::new();
            for (t, v) in [(b'S', "FATAL"), (b'C', "XX000"), (b'M', text.as_str())] {
                body.push(t);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            let mut m = message(b'R', &[0, 0, 0, 0]);
            m.extend(message(b'E', &body));
            m
        }
    }
}

/// A database entry for probing a local server in process: `127.0.0.1:port`, user
/// and database `postgres`, no password, rise and fall 1.
pub fn database(
    port: u16,
    check: dbha_agent::config::Check,
    timeout_ms: u64,
) -> dbha_agent::config::Database {
    dbha_agent::config::Database {
        alias: "x".into(),
        host: "127.0.0.1".into(),
        port,
        check,
        interval: Duration::from_millis(100),
        fastinter: Duration::from_millis(10),
        timeout: Duration::from_millis(timeout_ms),
        connect_timeout: Duration::from_millis(timeout_ms),
        rise: 1,
        fall: 1,
        session: dbha_agent::config::Session::PerProbe,
        session_lifetime: Duration::from_secs(60),
        admission_interval: Duration::from_secs(10),
        max_replica_lag: None,
        max_replica_lag_bytes: None,
        max_replica_lag_transactions: None,
        user: "postgres".into(),
        dbname: "postgres".into(),
        password: None,
        password_source: None,
        sslmode: dbha_agent::config::SslMode::Prefer,
        sslrootcert: None,
        allow_cleartext_password: false,
        patroni: None,
        mysql: None,
        member: None,
    }
}

/// What a fake server has seen, over all its connections.
#[derive(Debug, Default)]
pub struct Seen {
    /// SSLRequests (each answered 'N').
    pub ssl_requests: AtomicUsize,
    /// Complete startup messages.
    pub startups: AtomicUsize,
    /// Queries answered: simple ('Q') or prepared (each Execute).
    pub queries: AtomicUsize,
    /// Password messages ('p') received after the reply.
    pub passwords: AtomicUsize,
    /// Connections that ended with a Terminate message.
    pub terminates: AtomicUsize,
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// A running fake server; stops (and closes every connection) when dropped.
pub struct FakePg {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub seen: Arc<Seen>,
    thread: Option<JoinHandle<()>>,
}

impl FakePg {
    pub fn start(reply: Reply) -> FakePg {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut accepted = 0;
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (stop, seen) = (stop.clone(), seen.clone());
                            let reply = match reply {
                                Reply::FullAfterFirst if accepted > 0 => Reply::Error("53300"),
                                Reply::FullAfterFirst => Reply::AuthOk,
                                r => r,
                            };
                            accepted += 1;
                            std::thread::spawn(move || serve(conn, reply, &stop, &seen));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        FakePg {
            port,
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

fn serve(mut conn: TcpStream, reply: Reply, stop: &AtomicBool, seen: &Seen) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut replied = false;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        if !replied && buf.len() >= 8 && buf[..8] == SSL_REQUEST {
            // No TLS here: 'N', and the startup message follows in plain text.
            buf.drain(..8);
            seen.ssl_requests.fetch_add(1, Ordering::Relaxed);
            let _ = conn.write_all(b"N");
            if buf.is_empty() {
                continue;
            }
        }
        if !replied && buf.len() >= 4 {
            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            if buf.len() >= len {
                seen.startups.fetch_add(1, Ordering::Relaxed);
                buf.drain(..len);
                let _ = conn.write_all(&reply_bytes(reply));
                replied = true;
                if matches!(
                    reply,
                    Reply::Error(_) | Reply::Garbage | Reply::HostileError
                ) {
                    return;
                }
                if reply == Reply::HugeMessage {
                    // Filler, up to 64 MiB, until the client stops reading.
                    let filler = [b'x'; 64 * 1024];
                    for _ in 0..1024 {
                        if conn.write_all(&filler).is_err() || stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    return;
                }
            }
        }
        // The probe's status query, simple ('Q') or prepared (Parse, Bind,
        // Execute, Sync), gets one row: in recovery, the read-only setting, a
        // WAL position, (for a standby) a replay delay and (for a primary) timeline 1.
        let status = match reply {
            Reply::AuthOk => Some(("f", false)),
            Reply::AuthOkStandby => Some(("t", false)),
            Reply::AuthOkBefore14 { read_only } => Some(("f", read_only)),
            _ => None,
        };
        while let (true, Some((in_recovery, read_only)), Some(&tag)) =
            (replied, status, buf.first())
        {
            if !b"QPBES".contains(&tag) {
                break;
            }
            let Some(len) = buf
                .get(1..5)
                .map(|l| u32::from_be_bytes(l.try_into().unwrap()) as usize)
                .filter(|len| buf.len() > *len)
            else {
                break;
            };
            buf.drain(..=len);
            let row = || {
                let standby = in_recovery == "t";
                let (delay, timeline) = if standby { ("0", "") } else { ("", "00000001") };
                let mut row = 5u16.to_be_bytes().to_vec();
                for v in [
                    in_recovery,
                    if read_only { "on" } else { "off" },
                    "0/1000",
                    delay,
                    timeline,
                ] {
                    if v.is_empty() {
                        row.extend_from_slice(&(-1i32).to_be_bytes());
                    } else {
                        row.extend_from_slice(&(v.len() as u32).to_be_bytes());
                        row.extend_from_slice(v.as_bytes());
                    }
                }
                let mut m = message(b'D', &row);
                m.extend(message(b'C', b"SELECT 1\0"));
                m
            };
            let answer = match tag {
                b'Q' => {
                    seen.queries.fetch_add(1, Ordering::Relaxed);
                    let mut m = row();
                    m.extend(message(b'Z', b"I"));
                    m
                }
                b'P' => message(b'1', b""),
                b'B' => message(b'2', b""),
                b'E' => {
                    seen.queries.fetch_add(1, Ordering::Relaxed);
                    row()
                }
                _ => message(b'Z', b"I"),
            };
            let _ = conn.write_all(&answer);
        }
        if replied && buf.first() == Some(&b'p') {
            seen.passwords.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if replied && buf.first() == Some(&b'X') {
            seen.terminates.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

impl Drop for FakePg {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
