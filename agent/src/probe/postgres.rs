//! The `postgres` check, as `pg_isready` does it: a startup message without
//! credentials, and a verdict from the first reply. An authentication request or an
//! ordinary error means the server accepts connections; SQLSTATE 57P03 (starting up,
//! shutting down, in recovery without hot standby) means not ready; anything else,
//! or silence until the deadline, means down. Messages are encoded and decoded with
//! `postgres-protocol`.

use super::{Failure, Outcome};
use bytes::BytesMut;
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Replies longer than this are not a startup reply: not PostgreSQL.
const MAX_REPLY: usize = 64 * 1024;

pub fn check(
    mut stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
    user: &str,
    dbname: &str,
) -> Outcome {
    let io_failure = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout(timeout),
        io::ErrorKind::UnexpectedEof => Failure::Closed,
        _ => Failure::Io(format!("PostgreSQL handshake: {e}")),
    };
    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", user),
            ("database", dbname),
            ("application_name", "dbha-agent"),
        ],
        &mut out,
    )
    .map_err(|e| Failure::Io(format!("encoding the startup message: {e}")))?;
    stream
        .set_write_timeout(Some(left(deadline, timeout)?))
        .map_err(io_failure)?;
    stream.write_all(&out).map_err(io_failure)?;

    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let verdict = loop {
        match Message::parse(&mut buf) {
            Ok(Some(msg)) => break classify(msg),
            Ok(None) => {}
            Err(e) => break Err(Failure::NotPostgres(e.to_string())),
        }
        if let Some(f) = implausible(&buf) {
            break Err(f);
        }
        let wait = match left(deadline, timeout) {
            Ok(w) => w,
            Err(f) => break Err(f),
        };
        if let Err(e) = stream.set_read_timeout(Some(wait)) {
            break Err(io_failure(e));
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => break Err(Failure::Closed),
            Ok(0) => {
                break Err(Failure::NotPostgres(
                    "closed in the middle of a message".into(),
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(io_failure(e)),
        }
    };
    // Politely: after AuthenticationOk a session exists, so say goodbye; otherwise
    // just close, which the server takes silently during authentication, exactly as
    // it does for pg_isready.
    if verdict.as_ref().is_ok_and(|authenticated| *authenticated) {
        let mut bye = BytesMut::new();
        frontend::terminate(&mut bye);
        let _ = stream.write_all(&bye);
    }
    let _ = stream.shutdown(Shutdown::Both);
    verdict.map(|_| ())
}

/// A server's first reply to a startup message is an authentication request ('R'),
/// an error ('E'), a notice ('N') or a protocol version negotiation ('v'), with a
/// modest length. Judging the header early spares waiting for the deadline when
/// something else (HTTP, SSH, ...) answers.
fn implausible(buf: &[u8]) -> Option<Failure> {
    let tag = *buf.first()?;
    if !b"REvN".contains(&tag) {
        return Some(Failure::NotPostgres(format!(
            "first reply byte 0x{tag:02x}"
        )));
    }
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    (!(4..=MAX_REPLY).contains(&len)).then(|| Failure::NotPostgres(format!("reply length {len}")))
}

fn left(deadline: Instant, timeout: Duration) -> Result<Duration, Failure> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(Failure::Timeout(timeout))
    } else {
        Ok(d)
    }
}

/// The verdict on the first reply: Ok(true) when a session was opened (trust
/// authentication), Ok(false) when the server asked for credentials or refused with
/// an ordinary error.
fn classify(msg: Message) -> Result<bool, Failure> {
    match msg {
        Message::AuthenticationOk => Ok(true),
        Message::AuthenticationCleartextPassword
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationGss
        | Message::AuthenticationSspi
        | Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_) => Ok(false),
        Message::ErrorResponse(body) => {
            let (code, message) = error_fields(body.fields());
            if code == "57P03" {
                Err(Failure::NotReady(message))
            } else {
                // Wrong role, unknown database, pg_hba rejection: the server is up
                // and answering, which is all this check asks.
                Ok(false)
            }
        }
        other => Err(Failure::NotPostgres(format!(
            "unexpected first reply {}",
            message_name(&other)
        ))),
    }
}

fn error_fields(mut fields: ErrorFields<'_>) -> (String, String) {
    use fallible_iterator::FallibleIterator;
    let (mut code, mut message) = (String::new(), String::new());
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::BackendKeyData(_) => "BackendKeyData",
        _ => "message",
    }
}
