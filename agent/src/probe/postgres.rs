//! The `postgres` check. Without credentials it is `pg_isready`: a startup message
//! and a verdict from the first reply (an authentication request or an ordinary
//! error means the server accepts connections; SQLSTATE 57P03 means not ready;
//! anything else, or silence, means down). When the server opens a session (trust,
//! or a password from the configuration: md5 or SCRAM-SHA-256), the check also reads
//! the server's role and `default_transaction_read_only`: from the startup
//! ParameterStatus messages (PostgreSQL 14+), else by one status query, which
//! also reads the WAL position and a standby's replay delay. A held session
//! ([`Held`]) runs that query once per probe on a session opened once. Messages and authentication go through
//! `postgres-protocol`, TLS through rustls (see [`super::tls`] for `sslmode`); no
//! hand-written crypto. A password is never sent in cleartext unless
//! `allow_cleartext_password` is set, and then only over TLS.

use super::tls::{self, Stream};
use super::{server_text, Failure, Outcome, Role, Up};
use crate::config::{Database, SslMode};
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// No message the probe reads (authentication, parameters, an error, one boolean
/// row) comes near this; a longer one is refused before anything is buffered
/// for it, so a hostile server cannot make the agent allocate.
const MAX_MESSAGE: usize = 64 * 1024;

struct Session {
    stream: Stream,
    buf: BytesMut,
    deadline: Instant,
    timeout: Duration,
    /// Whether a message other than the first has been read (the early "is this
    /// PostgreSQL at all" judgement applies to the first reply only).
    started: bool,
}

impl Session {
    /// A plain connection, nothing read yet.
    fn new(stream: TcpStream, deadline: Instant, timeout: Duration) -> Session {
        Session {
            stream: Stream::Plain(stream),
            buf: BytesMut::new(),
            deadline,
            timeout,
            started: false,
        }
    }

    fn io_failure(&self, e: io::Error) -> Failure {
        if let Some(why) = tls::failure(&e) {
            return Failure::Tls(why);
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout(self.timeout),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Failure::Closed,
            _ => Failure::Io(format!("PostgreSQL handshake: {e}")),
        }
    }

    fn left(&self) -> Result<Duration, Failure> {
        let d = self.deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err(Failure::Timeout(self.timeout))
        } else {
            Ok(d)
        }
    }

    /// Bounds the next socket operations (TLS may read and write in either) by
    /// what is left of the deadline.
    fn bound(&mut self) -> Result<(), Failure> {
        let wait = self.left()?;
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(Some(wait))
            .and_then(|()| tcp.set_write_timeout(Some(wait)))
            .map_err(|e| self.io_failure(e))
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), Failure> {
        self.bound()?;
        self.stream
            .write_all(msg)
            .and_then(|()| self.stream.flush())
            .map_err(|e| self.io_failure(e))
    }

    fn recv(&mut self) -> Result<Message, Failure> {
        let mut chunk = [0u8; 4096];
        loop {
            // The length is checked before the parser sees it: it would size its
            // buffer by it.
            if let Some(f) = too_long(&self.buf) {
                return Err(f);
            }
            match Message::parse(&mut self.buf) {
                Ok(Some(msg)) => {
                    self.started = true;
                    return Ok(msg);
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::NotPostgres(e.to_string())),
            }
            if !self.started {
                if let Some(f) = implausible(&self.buf) {
                    return Err(f);
                }
            }
            self.bound()?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Err(Failure::Closed),
                Ok(0) => {
                    return Err(Failure::NotPostgres(
                        "closed in the middle of a message".into(),
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_failure(e)),
            }
        }
    }
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
    too_long(buf)
}

/// A message header (tag, then a big-endian length that counts itself) whose length
/// no PostgreSQL message the probe reads has.
fn too_long(buf: &[u8]) -> Option<Failure> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    (!(4..=MAX_MESSAGE).contains(&len)).then(|| {
        Failure::NotPostgres(format!(
            "a message of {len} bytes (at most {MAX_MESSAGE} expected)"
        ))
    })
}

fn encode(f: impl FnOnce(&mut BytesMut) -> io::Result<()>) -> Result<BytesMut, Failure> {
    let mut buf = BytesMut::new();
    f(&mut buf).map_err(|e| Failure::Io(format!("encoding a message: {e}")))?;
    Ok(buf)
}

/// One probe on a new connection, closed afterwards.
pub fn check(stream: TcpStream, deadline: Instant, timeout: Duration, db: &Database) -> Outcome {
    let (outcome, session) = login(stream, deadline, timeout, db);
    if let Some(s) = session {
        Held { s, prepared: false }.close();
    }
    outcome
}

/// A first probe on a new connection; the session is handed back when the
/// probe logged in, to be held.
pub fn open(
    stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
    db: &Database,
) -> (Outcome, Option<Held>) {
    let (outcome, session) = login(stream, deadline, timeout, db);
    let held = session.map(|s| Held { s, prepared: false });
    if let Some(h) = &held {
        super::keep_alive(h.fd(), db);
    }
    (outcome, held)
}

/// TLS, the startup message and authentication, and the status query when
/// wanted; the session when one was opened and the verdict is a success.
fn login(
    stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
    db: &Database,
) -> (Outcome, Option<Session>) {
    let mut s = Session::new(stream, deadline, timeout);
    let verdict = negotiate_tls(&mut s, db).and_then(|()| converse(&mut s, db));
    match verdict {
        Ok((up, true)) => {
            // The status query: before 14 the role needs it (converse ran it
            // then); held sessions and lag limits need the WAL position and
            // the replay delay.
            let wanted = up.wal.is_none()
                && (db.session == crate::config::Session::Held
                    || db.max_replica_lag.is_some()
                    || db.max_replica_lag_bytes.is_some());
            let outcome = if wanted { status(&mut s, db) } else { Ok(up) };
            match outcome {
                Ok(up) => (Ok(up), Some(s)),
                Err(f) => {
                    Held { s, prepared: false }.close();
                    (Err(f), None)
                }
            }
        }
        // Without a session, just close, which the server takes silently during
        // authentication, as it does for pg_isready.
        other => {
            let _ = s.stream.tcp().shutdown(Shutdown::Both);
            (other.map(|(up, _)| up), None)
        }
    }
}

/// Whether the server still admits a new connection, as an application's would
/// be: TLS as `sslmode` says, a startup message, and the first reply, then a
/// close (as `pg_isready`). The postmaster forks a backend before anything
/// answers, so any authentication request, or an ordinary refusal (a wrong
/// database, pg_hba.conf), shows it can; 53300 "too many clients", 57P03 or
/// silence show it cannot, whatever a held session still gets.
pub fn admit(
    stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
    db: &Database,
) -> Result<(), Failure> {
    let mut s = Session::new(stream, deadline, timeout);
    let answer = negotiate_tls(&mut s, db).and_then(|()| {
        s.send(&startup(db)?)?;
        s.recv()
    });
    let _ = s.stream.tcp().shutdown(Shutdown::Both);
    let refused = |why: String| Err(Failure::NoNewConnections(why));
    match answer {
        Ok(Message::ErrorResponse(body)) => match error_fields(body.fields()) {
            (code, message) if code == "53300" => refused(format!("{code}: {message}")),
            (code, message) if code == "57P03" => {
                Err(Failure::NotReady(format!("{code}: {message}")))
            }
            _ => Ok(()),
        },
        Ok(
            Message::AuthenticationOk
            | Message::AuthenticationMd5Password(_)
            | Message::AuthenticationCleartextPassword
            | Message::AuthenticationSasl(_)
            | Message::AuthenticationGss
            | Message::AuthenticationSspi
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential,
        ) => Ok(()),
        Ok(_) => Err(Failure::NotPostgres(
            "unexpected first reply to a new connection".into(),
        )),
        Err(Failure::Timeout(t)) => refused(format!("a new connection got no answer within {t:?}")),
        Err(f) => Err(f),
    }
}

/// A logged-in session kept between probes.
pub struct Held {
    s: Session,
    /// [`STATUS_SQL`] is prepared on the session (after its first probe).
    prepared: bool,
}

impl Held {
    /// One probe: the status query, within `deadline`. A server whose kernel
    /// has not even acknowledged the query after `connect_timeout` is as gone as
    /// one that does not accept a connection in that time (a blackholed host):
    /// the probe fails then. One that acknowledged it (busy, or frozen) gets the
    /// whole timeout to answer, as on a new connection.
    pub fn probe(&mut self, deadline: Instant, db: &Database) -> Outcome {
        self.s.deadline = deadline;
        // Whatever arrived since the last probe first: an error there ends the
        // session before the query is sent.
        if !self.s.buf.is_empty() {
            self.drain(db)?;
        }
        // A prepared statement: parsed and planned once per session, then
        // only bound and executed.
        let request = encode(|b| {
            if !self.prepared {
                frontend::parse(STATUS_STATEMENT, STATUS_SQL, std::iter::empty(), b)?;
            }
            frontend::bind(
                "",
                STATUS_STATEMENT,
                std::iter::empty::<i16>(),
                std::iter::empty::<()>(),
                |(), _| Ok(postgres_protocol::IsNull::No),
                std::iter::empty::<i16>(),
                b,
            )
            .map_err(|_| io::Error::other("cannot encode Bind"))?;
            frontend::execute("", 0, b)?;
            frontend::sync(b);
            Ok(())
        })?;
        self.s.send(&request)?;
        self.prepared = true;
        let early = deadline.min(Instant::now() + db.connect_timeout);
        self.s.deadline = early;
        let mut row = RowReader::default();
        match row.read(&mut self.s, db) {
            Err(Failure::Timeout(_)) if early < deadline => {
                if super::unacknowledged(self.s.stream.tcp()) {
                    return Err(Failure::Timeout(db.connect_timeout));
                }
                self.s.deadline = deadline;
                row.read(&mut self.s, db)
            }
            other => other,
        }
        .and_then(|row| status_of(&row))
    }

    /// The socket to wait on between probes.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.s.stream.tcp().as_fd()
    }

    /// Reads what the server sent between probes (the socket is readable): a
    /// notice or a parameter change is passed over; an error, a close or
    /// anything unexpected ends the session.
    pub fn drain(&mut self, db: &Database) -> Result<(), Failure> {
        // A short bound: the socket was readable, so data (or the close) is there;
        // a partial TLS record or message waits for the next wake.
        self.s.deadline = Instant::now() + Duration::from_millis(20);
        let lost = |why: String| Failure::Lost(why);
        let mut chunk = [0u8; 4096];
        if self.s.bound().is_ok() {
            match self.s.stream.read(&mut chunk) {
                Ok(0) => return Err(lost("the server closed it".into())),
                Ok(n) => self.s.buf.extend_from_slice(&chunk[..n]),
                // Nothing complete yet (the read timeout is EAGAIN). A socket
                // error such as ETIMEDOUT from TCP_USER_TIMEOUT ends the session.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(lost(self.s.io_failure(e).to_string())),
            }
        }
        loop {
            if let Some(f) = too_long(&self.s.buf) {
                return Err(f);
            }
            match Message::parse(&mut self.s.buf) {
                Ok(None) => return Ok(()),
                Ok(Some(Message::NoticeResponse(_) | Message::ParameterStatus(_))) => {}
                Ok(Some(Message::ErrorResponse(body))) => {
                    return Err(lost(server_error(body.fields(), db).to_string()))
                }
                Ok(Some(_)) => return Err(lost("an unexpected message between probes".into())),
                Err(e) => return Err(Failure::NotPostgres(e.to_string())),
            }
        }
    }

    /// Terminate, politely, then close.
    pub fn close(mut self) {
        if let Ok(bye) = encode(|b| {
            frontend::terminate(b);
            Ok(())
        }) {
            self.s.deadline = Instant::now() + Duration::from_millis(100);
            let _ = self.s.bound();
            let _ = self
                .s
                .stream
                .write_all(&bye)
                .and_then(|()| self.s.stream.flush());
        }
        let _ = self.s.stream.tcp().shutdown(Shutdown::Both);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.s.stream.tcp().shutdown(Shutdown::Both);
    }
}

/// SSLRequest, then the TLS handshake when the server accepts ('S'). A server
/// that declines ('N') is talked to in plain text only under `prefer`.
fn negotiate_tls(s: &mut Session, db: &Database) -> Result<(), Failure> {
    let config = tls::client_config(db.sslmode, db.sslrootcert.as_deref()).map_err(Failure::Tls)?;
    let Some(config) = config else {
        return Ok(());
    };
    s.send(&encode(|b| {
        frontend::ssl_request(b);
        Ok(())
    })?)?;
    // Exactly one byte: anything the server sent after it must reach the TLS
    // layer (and fail there), never be taken as the server's plain-text words.
    let mut answer = [0u8; 1];
    s.bound()?;
    loop {
        match s.stream.read(&mut answer) {
            Ok(0) => return Err(Failure::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(s.io_failure(e)),
        }
    }
    match answer[0] {
        b'S' => {}
        b'N' if db.sslmode == SslMode::Prefer => return Ok(()),
        b'N' => {
            return Err(Failure::Tls(format!(
                "the server does not accept TLS (sslmode = \"{}\")",
                db.sslmode.name()
            )))
        }
        // An ErrorResponse: a server too old to know SSLRequest.
        b'E' => {
            return Err(Failure::NotPostgres(
                "an error in answer to SSLRequest".into(),
            ))
        }
        other => {
            return Err(Failure::NotPostgres(format!(
                "answer 0x{other:02x} to SSLRequest"
            )))
        }
    }
    s.bound()?;
    let stream = tls::start(s.stream.tcp(), config, &db.host, |e| s.io_failure(e))?;
    s.stream = stream;
    Ok(())
}

/// The startup message for `db`'s user and database.
fn startup(db: &Database) -> Result<BytesMut, Failure> {
    encode(|b| {
        frontend::startup_message(
            [
                ("user", db.user.as_str()),
                ("database", db.dbname.as_str()),
                ("application_name", "dbha-agent"),
            ],
            b,
        )
    })
}

/// The verdict, and whether a session was opened.
fn converse(s: &mut Session, db: &Database) -> Result<(Up, bool), Failure> {
    s.send(&startup(db)?)?;
    let unknown = Up::default();
    let password = db.password.as_ref().map(|p| p.expose().as_bytes());
    match s.recv()? {
        Message::AuthenticationOk => {}
        Message::AuthenticationMd5Password(body) => {
            let Some(pw) = password else {
                return Ok((unknown, false));
            };
            let hash = md5_hash(db.user.as_bytes(), pw, body.salt());
            s.send(&encode(|b| frontend::password_message(hash.as_bytes(), b))?)?;
            expect_auth_ok(s, db)?;
        }
        Message::AuthenticationCleartextPassword => {
            let Some(pw) = password else {
                return Ok((unknown, false));
            };
            // A spoofed endpoint asks for exactly this.
            if !db.allow_cleartext_password {
                return Err(Failure::Rejected(
                    "the server asks for the password in cleartext; not sent (allow_cleartext_password = true sends it, over TLS only)".into(),
                ));
            }
            if !s.stream.encrypted() {
                return Err(Failure::Rejected(
                    "the server asks for the password in cleartext over an unencrypted connection; not sent (use sslmode = \"require\" or stricter)".into(),
                ));
            }
            s.send(&encode(|b| frontend::password_message(pw, b))?)?;
            expect_auth_ok(s, db)?;
        }
        Message::AuthenticationSasl(body) => {
            let Some(pw) = password else {
                return Ok((unknown, false));
            };
            let mut mechanisms = body.mechanisms();
            let mut scram = false;
            while let Ok(Some(m)) = mechanisms.next() {
                scram |= m == sasl::SCRAM_SHA_256;
            }
            if !scram {
                return Err(Failure::Rejected(
                    "the server offers no SCRAM-SHA-256 authentication".into(),
                ));
            }
            let mut client = sasl::ScramSha256::new(pw, sasl::ChannelBinding::unsupported());
            s.send(&encode(|b| {
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, client.message(), b)
            })?)?;
            match s.recv()? {
                Message::AuthenticationSaslContinue(body) => client
                    .update(body.data())
                    .map_err(|e| Failure::Rejected(format!("SCRAM exchange: {e}")))?,
                Message::ErrorResponse(body) => return Err(server_error(body.fields(), db)),
                _ => return Err(Failure::NotPostgres("unexpected reply during SCRAM".into())),
            }
            s.send(&encode(|b| frontend::sasl_response(client.message(), b))?)?;
            match s.recv()? {
                Message::AuthenticationSaslFinal(body) => client
                    .finish(body.data())
                    .map_err(|e| Failure::Rejected(format!("SCRAM server signature: {e}")))?,
                Message::ErrorResponse(body) => return Err(server_error(body.fields(), db)),
                _ => return Err(Failure::NotPostgres("unexpected reply during SCRAM".into())),
            }
            expect_auth_ok(s, db)?;
        }
        Message::ErrorResponse(body) => {
            let f = server_error(body.fields(), db);
            // Without credentials an ordinary refusal still shows a live server,
            // which is all pg_isready asks; with them, the refusal is the verdict.
            return match f {
                Failure::NotReady(_) => Err(f),
                _ if db.password.is_none() => Ok((unknown, false)),
                _ => Err(f),
            };
        }
        // Kerberos, GSS, SSPI: alive, but dbha cannot log in to learn the role.
        Message::AuthenticationGss
        | Message::AuthenticationSspi
        | Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential => return Ok((unknown, false)),
        _ => return Err(Failure::NotPostgres("unexpected first reply".into())),
    }
    // A session: collect the parameters up to ReadyForQuery.
    let (mut hot_standby, mut read_only) = (None, false);
    loop {
        match s.recv()? {
            Message::ParameterStatus(p) => match (p.name(), p.value()) {
                (Ok("in_hot_standby"), Ok(v)) => hot_standby = Some(v == "on"),
                (Ok("default_transaction_read_only"), Ok(v)) => read_only = v == "on",
                _ => {}
            },
            Message::ReadyForQuery(_) => break,
            Message::ErrorResponse(body) => return Err(server_error(body.fields(), db)),
            _ => {}
        }
    }
    match hot_standby {
        Some(in_recovery) => Ok((
            Up {
                role: Some(if in_recovery {
                    Role::Standby
                } else {
                    Role::Primary
                }),
                read_only,
                ..Up::default()
            },
            true,
        )),
        // Before PostgreSQL 14 the server reports neither in_hot_standby nor
        // default_transaction_read_only: ask.
        None => Ok((status(s, db)?, true)),
    }
}

/// The status query: role; whether writes are refused by default, as a new
/// session would meet it (`default_transaction_read_only` in this session, or set
/// by `ALTER DATABASE`/`ALTER ROLE ... SET` for this database or the probe's role,
/// which a held session does not see by itself); WAL position (a primary's
/// current write position, a standby's replay position, as bytes from 0/0); a
/// standby's replay delay (0 when a WAL receiver is running and everything it
/// received is replayed, else the age of the last replayed transaction: a
/// standby cut from its primary has replayed all it received, which says nothing
/// about how far behind it is; NULL when it has replayed no transaction yet); and
/// a primary's timeline (from the name of its current WAL file).
/// Cheap to run: pg_is_in_recovery() once, the LSN as text (parsed here, no
/// numeric arithmetic), the delay as float8 (date_part, not extract's numeric).
const STATUS_SQL: &str = "SELECT r, \
CASE WHEN current_setting('default_transaction_read_only') = 'on' OR EXISTS (\
SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) c \
WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user)) \
AND c ~* '^default_transaction_read_only=(on|true|yes|1)$') THEN 'on' ELSE 'off' END, \
CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
CASE WHEN NOT r THEN NULL \
WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() \
AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0 \
ELSE date_part('epoch', now() - pg_last_xact_replay_timestamp()) END, \
CASE WHEN r THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END \
FROM pg_is_in_recovery() AS r";

/// The name a held session prepares [`STATUS_SQL`] under.
const STATUS_STATEMENT: &str = "dbha_status";

/// A `pg_lsn` as PostgreSQL prints it ("16/B374D848") as a byte position.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Runs [`STATUS_SQL`] and reads its row.
fn status(s: &mut Session, db: &Database) -> Outcome {
    s.send(&encode(|b| frontend::query(STATUS_SQL, b))?)?;
    status_of(&RowReader::default().read(s, db)?)
}

/// What the status query's row says.
fn status_of(row: &Row) -> Outcome {
    let col = |i: usize| row.get(i).and_then(|v| v.as_deref());
    let text = |i: usize| col(i).and_then(|v| std::str::from_utf8(v).ok());
    let role = match col(0) {
        Some(b"t") => Role::Standby,
        Some(b"f") => Role::Primary,
        _ => {
            return Err(Failure::Rejected(
                "the status query returned no boolean for pg_is_in_recovery()".into(),
            ))
        }
    };
    Ok(Up {
        role: Some(role),
        read_only: matches!(col(1), Some(b"on")),
        wal: text(2).and_then(parse_lsn),
        // NULL (a standby that has replayed no transaction yet) is unknown, not
        // 0; a negative age (the primary's clock ahead) counts as 0.
        replay_delay: text(3)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .map(|v| Duration::from_secs_f64(v.clamp(0.0, 1e9))),
        timeline: text(4).and_then(|t| u32::from_str_radix(t, 16).ok()),
        ..Up::default()
    })
}

fn expect_auth_ok(s: &mut Session, db: &Database) -> Result<(), Failure> {
    match s.recv()? {
        Message::AuthenticationOk => Ok(()),
        Message::ErrorResponse(body) => Err(server_error(body.fields(), db)),
        _ => Err(Failure::NotPostgres(
            "unexpected reply to the password".into(),
        )),
    }
}

/// A row as raw column values (NULL as None).
type Row = Vec<Option<Vec<u8>>>;

/// Reads a simple query's answer up to ReadyForQuery, keeping its first row; a
/// read cut short by the deadline can be resumed.
#[derive(Default)]
struct RowReader {
    first: Option<Row>,
}

impl RowReader {
    fn read(&mut self, s: &mut Session, db: &Database) -> Result<Row, Failure> {
        loop {
            match s.recv()? {
                Message::DataRow(row) if self.first.is_none() => {
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Ok(Some(r)) = ranges.next() {
                        values.push(r.and_then(|r| row.buffer().get(r)).map(<[u8]>::to_vec));
                    }
                    self.first = Some(values);
                }
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => return Err(server_error(body.fields(), db)),
                _ => {}
            }
        }
        self.first
            .take()
            .ok_or_else(|| Failure::Rejected("the status query returned no row".into()))
    }
}

/// An ErrorResponse as a probe failure: 57P03 is "not ready"; invalid password or
/// authorization is an authentication failure; anything else a refusal.
/// An ErrorResponse's SQLSTATE and message, as server text (escaped and cut).
fn error_fields(mut fields: ErrorFields<'_>) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    while let Ok(Some(f)) = fields.next() {
        let value = server_text(f.value_bytes());
        match f.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

fn server_error(fields: ErrorFields<'_>, db: &Database) -> Failure {
    let (code, message) = error_fields(fields);
    match code.as_str() {
        "57P03" => Failure::NotReady(format!("57P03: {message}")),
        "28P01" | "28000" => Failure::AuthFailed(format!("{message} (user {:?})", db.user)),
        _ => Failure::Rejected(format!("{code}: {message}")),
    }
}
