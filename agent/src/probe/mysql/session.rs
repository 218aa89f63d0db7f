//! A logged-in session of the `mysql` check: TLS by `sslmode` (MySQL's
//! SslRequest, then rustls), login with `mysql_native_password` or
//! `caching_sha2_password`, one status query per probe.
//!
//! Packets are framed by `mysql_common`'s codec and built and parsed by its
//! packet types; the scrambles are its `AuthProc` plugins. Nothing of the wire
//! format or the authentication is written here, only the order of the
//! exchange. Every read and write is bounded by the probe's deadline, and a
//! packet is refused past [`MAX_PACKET`] before anything is allocated for it.
//!
//! `caching_sha2_password` has two paths. The fast one (the server has the
//! user's hash cached) sends a scramble only. The full one needs the password
//! itself: it is sent over TLS, or encrypted with the server's RSA public key
//! when the configuration gives that key (`server_public_key`); a key the
//! server would send over a plain connection is never asked for, since whoever
//! sits on that path could send theirs and read the password.

use super::status::{self, Flavor};
use super::{cut, greeting, refusal};
use crate::config::{Database, SslMode};
use crate::probe::tls::{self, Stream};
use crate::probe::{Failure, Outcome};
use bytes::BytesMut;
use log::warn;
use mysql_common::auth::plugins::{AuthProc, ChallengeResponsePlugin, Context, Response};
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, ErrPacket, HandshakePacket, HandshakeResponse, SslRequest,
};
use mysql_common::proto::codec::PacketCodec;
use mysql_common::proto::{MyDeserialize, MySerialize};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// The largest packet taken from a server: a greeting is about 100 bytes, a
/// status row with `SHOW SLAVE STATUS` a few KiB (the GTID sets and the last
/// errors are the long parts).
pub const MAX_PACKET: usize = 256 * 1024;

/// The packet size the client announces (nothing it sends comes near it).
const CLIENT_MAX_PACKET: u32 = 1 << 20;

/// What the check asks of the server: the 4.1 protocol with plugin
/// authentication, and several result sets in one query (the status query
/// and the replication status together). No CLIENT_DEPRECATE_EOF: result
/// sets end with the EOF packet every server sends.
fn wanted_capabilities() -> CapabilityFlags {
    CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_CONNECT_ATTRS
}

/// The connection: packets in and out, within a deadline.
pub struct Conn {
    stream: Stream,
    codec: PacketCodec,
    /// Bytes read and not yet framed.
    src: BytesMut,
    pub deadline: Instant,
    timeout: Duration,
    /// The capabilities both sides have (what packets are parsed with).
    pub caps: CapabilityFlags,
    pub flavor: Flavor,
}

impl Conn {
    fn new(stream: TcpStream, deadline: Instant, timeout: Duration) -> Conn {
        let mut codec = PacketCodec::default();
        codec.max_allowed_packet = MAX_PACKET;
        Conn {
            stream: Stream::Plain(stream),
            codec,
            src: BytesMut::new(),
            deadline,
            timeout,
            caps: CapabilityFlags::empty(),
            flavor: Flavor::default(),
        }
    }

    pub fn io_failure(&self, e: io::Error) -> Failure {
        if let Some(why) = tls::failure(&e) {
            return Failure::Tls(why);
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout(self.timeout),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Failure::Closed,
            _ => Failure::Io(format!("MySQL session: {e}")),
        }
    }

    /// Bounds the next socket operations by what is left of the deadline.
    fn bound(&mut self) -> Result<(), Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout(self.timeout));
        }
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(Some(left))
            .and_then(|()| tcp.set_write_timeout(Some(left)))
            .map_err(|e| self.io_failure(e))
    }

    /// Sends one packet (the codec numbers it).
    pub fn send(&mut self, payload: &[u8]) -> Result<(), Failure> {
        let mut wire = BytesMut::new();
        self.codec
            .encode(&mut &payload[..], &mut wire)
            .map_err(|e| Failure::Io(format!("encoding a packet: {e}")))?;
        self.bound()?;
        self.stream
            .write_all(&wire)
            .and_then(|()| self.stream.flush())
            .map_err(|e| self.io_failure(e))
    }

    /// Sends a command: a new exchange, numbered from 0.
    pub fn command(&mut self, payload: &[u8]) -> Result<(), Failure> {
        self.codec.reset_seq_id();
        self.send(payload)
    }

    /// The next packet's payload.
    pub fn recv(&mut self) -> Result<Vec<u8>, Failure> {
        let mut payload = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.codec.decode(&mut self.src, &mut payload) {
                Ok(true) => return Ok(payload),
                Ok(false) => {}
                Err(e) => return Err(Failure::NotMysql(format!("a packet: {e}"))),
            }
            self.bound()?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.src.is_empty() && payload.is_empty() => return Err(Failure::Closed),
                Ok(0) => {
                    return Err(Failure::NotMysql(
                        "the connection ended inside a packet".into(),
                    ))
                }
                Ok(n) => self.src.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_failure(e)),
            }
        }
    }

    /// An ERR packet received after the greeting, as a probe failure.
    pub fn error(&self, payload: &[u8]) -> Failure {
        server_error(payload, self.caps)
    }

    pub fn tcp(&self) -> &TcpStream {
        self.stream.tcp()
    }

    pub fn encrypted(&self) -> bool {
        self.stream.encrypted()
    }

    /// COM_QUIT, then close: the server counts a quit session as a clean one
    /// (not in `Aborted_clients`).
    pub fn quit(mut self) {
        self.deadline = Instant::now() + Duration::from_millis(100);
        let _ = self.command(&[0x01]);
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
    }
}

/// An ERR packet as a probe failure: its code and text (escaped and cut).
pub fn server_error(payload: &[u8], caps: CapabilityFlags) -> Failure {
    match ErrPacket::deserialize(caps, &mut ParseBuf(payload)) {
        Ok(ErrPacket::Error(e)) => refusal(e.error_code(), &cut(&e.message_str())),
        Ok(ErrPacket::Progress(_)) => {
            Failure::NotMysql("a progress report where a reply was expected".into())
        }
        Err(e) => Failure::NotMysql(format!("an ERR packet that does not parse: {e}")),
    }
}

/// What the authentication plugins see of the session.
#[derive(Clone, Copy)]
struct Auth<'a> {
    pass: &'a [u8],
    tls: bool,
    scramble: &'a [u8],
    key: Option<&'a [u8]>,
}

impl<'a> Auth<'a> {
    /// The same, with the challenge's scramble.
    fn at<'b>(self, scramble: &'b [u8]) -> Auth<'b>
    where
        'a: 'b,
    {
        Auth { scramble, ..self }
    }
}

impl Context for Auth<'_> {
    fn pass(&self) -> &[u8] {
        self.pass
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        self.tls
    }
    fn scramble(&self) -> &[u8] {
        self.scramble
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        self.key
    }
}

/// The plugins the check logs in with; the others are refused by name.
fn plugin(name: &AuthPlugin<'_>) -> Result<AuthProc, Failure> {
    match name {
        AuthPlugin::MysqlNativePassword | AuthPlugin::CachingSha2Password => AuthProc::init(name)
            .map_err(|e| Failure::Rejected(format!("authentication plugin: {e}"))),
        other => Err(Failure::Rejected(format!(
            "the server asks for the authentication plugin {}; the mysql check logs in with mysql_native_password or caching_sha2_password",
            cut(&String::from_utf8_lossy(other.as_bytes()))
        ))),
    }
}

/// One step of a plugin, as the packet to send (None: nothing to send).
fn step(proc: &mut AuthProc, auth: Auth<'_>, challenge: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
    match proc.run(auth, challenge) {
        Ok(Response::Next { packet } | Response::Last { packet }) => Ok(packet),
        Err(e) => Err(Failure::NotMysql(format!(
            "an authentication challenge that does not parse: {e}"
        ))),
    }
}

/// caching_sha2_password's "perform full authentication" byte.
const FULL_AUTHENTICATION: u8 = 0x04;

/// Reads the greeting, negotiates TLS, logs in as `db.user`: the session, or
/// why not.
pub fn login(
    stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
    db: &Database,
) -> Result<Conn, Failure> {
    let mut c = Conn::new(stream, deadline, timeout);
    let first = c.recv()?;
    let hs = greeting(&first)?;
    c.flavor = Flavor::of(&hs);
    let server = hs.capabilities();
    if !server.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
        return Err(Failure::NotMysql(
            "a server without the 4.1 protocol (MySQL before 4.1)".into(),
        ));
    }
    c.caps = wanted_capabilities() & server;
    negotiate_tls(&mut c, &hs, db)?;
    let nonce = hs.nonce();
    let pass = db
        .password
        .as_ref()
        .map_or(&[][..], |p| p.expose().as_bytes());
    let key = db
        .mysql
        .as_ref()
        .and_then(|m| m.server_public_key.as_deref());
    let base = Auth {
        pass,
        tls: c.encrypted(),
        scramble: &[],
        key,
    };
    // The server's default plugin when the check speaks it; else a native
    // scramble, and the server switches to the user's plugin.
    let mut name = hs
        .auth_plugin()
        .map(AuthPlugin::into_owned)
        .filter(|p| matches!(p, AuthPlugin::CachingSha2Password))
        .unwrap_or(AuthPlugin::MysqlNativePassword);
    let mut proc = plugin(&name)?;
    let mut scramble = nonce;
    let first_response = step(&mut proc, base.at(&scramble), &scramble)?.unwrap_or_default();
    let mut attributes = HashMap::new();
    attributes.insert("program_name".to_owned(), "dbha-agent".to_owned());
    let response = HandshakeResponse::new(
        Some(first_response),
        super::status::version(&hs.server_version_str()).unwrap_or((5, 7, 0)),
        Some(db.user.as_bytes()),
        None::<&[u8]>,
        Some(name.clone()),
        c.caps,
        c.caps
            .contains(CapabilityFlags::CLIENT_CONNECT_ATTRS)
            .then_some(attributes),
        CLIENT_MAX_PACKET,
    );
    c.send(&serialize(&response))?;
    let mut switched = false;
    // A login is a few packets: the answer, a switch, a cache state, the OK.
    for _ in 0..6 {
        let packet = c.recv()?;
        match packet.first() {
            Some(0x00) => return Ok(c),
            Some(0xff) => return Err(login_error(&packet, c.caps, db)),
            Some(0xfe) if !switched => {
                switched = true;
                let switch =
                    AuthSwitchRequest::deserialize((), &mut ParseBuf(&packet)).map_err(|e| {
                        Failure::NotMysql(format!("an AuthSwitchRequest that does not parse: {e}"))
                    })?;
                name = switch.auth_plugin().into_owned();
                proc = plugin(&name)?;
                scramble = switch.plugin_data().to_vec();
                let answer = step(&mut proc, base.at(&scramble), &scramble)?.unwrap_or_default();
                c.send(&answer)?;
            }
            Some(0xfe) => {
                return Err(Failure::NotMysql(
                    "a second authentication switch (one is taken)".into(),
                ))
            }
            // AuthMoreData: the plugin's next challenge, after its marker.
            Some(0x01) => {
                let data = &packet[1..];
                if name == AuthPlugin::CachingSha2Password
                    && data == [FULL_AUTHENTICATION]
                    && !c.encrypted()
                    && key.is_none()
                {
                    return Err(Failure::Rejected(format!(
                        "caching_sha2_password wants the password itself (user {:?} is not in the server's cache), which the check sends only over TLS (sslmode = \"require\" or stricter) or encrypted with a configured server_public_key; it never asks a plain connection for the server's key",
                        db.user
                    )));
                }
                if let Some(answer) = step(&mut proc, base.at(&scramble), data)? {
                    c.send(&answer)?;
                }
            }
            Some(&b) => {
                return Err(Failure::NotMysql(format!(
                    "a reply to the login starting with 0x{b:02x}"
                )))
            }
            None => return Err(Failure::NotMysql("an empty reply to the login".into())),
        }
    }
    Err(Failure::NotMysql(
        "a login that does not end after 6 packets".into(),
    ))
}

fn serialize(packet: &impl MySerialize) -> Vec<u8> {
    let mut out = Vec::new();
    packet.serialize(&mut out);
    out
}

/// A refused login: 1045 (and 1698, a plugin that allows no password) is the
/// credentials; the rest as any refusal.
fn login_error(payload: &[u8], caps: CapabilityFlags, db: &Database) -> Failure {
    match server_error(payload, caps) {
        Failure::Rejected(m) if m.starts_with("1045 ") || m.starts_with("1698 ") => {
            Failure::AuthFailed(format!("{m} (user {:?})", db.user))
        }
        other => other,
    }
}

/// SslRequest and the TLS handshake when `sslmode` asks for TLS and the server
/// offers it (CLIENT_SSL); a server that does not is talked to in plain text
/// only under `prefer`.
fn negotiate_tls(c: &mut Conn, hs: &HandshakePacket<'_>, db: &Database) -> Result<(), Failure> {
    let config = tls::client_config(db.sslmode, db.sslrootcert.as_deref()).map_err(Failure::Tls)?;
    let Some(config) = config else {
        return Ok(());
    };
    if !hs.capabilities().contains(CapabilityFlags::CLIENT_SSL) {
        if db.sslmode == SslMode::Prefer {
            return Ok(());
        }
        return Err(Failure::Tls(format!(
            "the server does not offer TLS (sslmode = \"{}\"; MariaDB and MySQL need ssl_cert and ssl_key)",
            db.sslmode.name()
        )));
    }
    c.caps |= CapabilityFlags::CLIENT_SSL;
    let request = SslRequest::new(c.caps, CLIENT_MAX_PACKET, 45);
    c.send(&serialize(&request))?;
    c.bound()?;
    let tcp = c.stream.tcp();
    let fail = |e: io::Error| c.io_failure(e);
    let stream = tls::start(tcp, config, &db.host, fail)?;
    c.stream = stream;
    Ok(())
}

/// A session kept between probes.
pub struct Held {
    c: Conn,
    /// Whether the replication status is asked for (not after the server
    /// refused it to the check's user).
    replication: bool,
    alias: String,
}

impl Held {
    pub fn new(c: Conn, db: &Database) -> Held {
        let held = Held {
            c,
            replication: true,
            alias: db.alias.clone(),
        };
        crate::probe::keep_alive(held.c.tcp(), db);
        held
    }

    /// One probe: the status query within `deadline`; a query the server's
    /// kernel has not acknowledged after `connect_timeout` fails then (see
    /// [`status::query`]).
    pub fn probe(&mut self, deadline: Instant, connect_timeout: Duration) -> Outcome {
        if self.unasked() {
            return Err(self.lost_to(&self.c.src.clone()));
        }
        self.c.deadline = deadline;
        let (up, refused) = status::query(&mut self.c, self.replication, Some(connect_timeout))?;
        if let Some(why) = refused {
            warn!(
                "{}: the replication status is not readable by the check's user ({why}): lag unknown; grant it SLAVE MONITOR (MariaDB) or REPLICATION CLIENT (MySQL)",
                self.alias
            );
            self.replication = false;
        }
        Ok(up)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.c.tcp().as_fd()
    }

    /// The socket turned readable between probes. A server sends nothing
    /// unasked but an error before it closes (MySQL 8's 4031 at
    /// `wait_timeout`, a shutdown's 1053) and the close itself: either ends
    /// the session.
    pub fn drain(&mut self) -> Result<(), Failure> {
        if self.unasked() {
            return Err(self.lost_to(&self.c.src.clone()));
        }
        self.c.deadline = Instant::now() + Duration::from_millis(20);
        let mut chunk = [0u8; 1024];
        if self.c.bound().is_err() {
            return Ok(());
        }
        match self.c.stream.read(&mut chunk) {
            Ok(0) => Err(Failure::Lost("the server closed it".into())),
            Ok(n) => Err(self.lost_to(&chunk[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Failure::Lost(self.c.io_failure(e).to_string())),
        }
    }

    /// Bytes came with the last answer that were not part of it: the server
    /// sent them unasked (read with the answer, they wait in the buffer, and
    /// the socket will not turn readable for them).
    pub fn unasked(&self) -> bool {
        !self.c.src.is_empty()
    }

    /// The session lost to `bytes` sent unasked: said as the ERR packet they
    /// start with, if they do.
    fn lost_to(&self, bytes: &[u8]) -> Failure {
        // Header (length 3, sequence 1), then an ERR packet if it is one.
        let why = match bytes.get(4..) {
            Some(p) if p.first() == Some(&0xff) => server_error(p, self.c.caps).to_string(),
            _ => format!("{} bytes the server sent unasked", bytes.len()),
        };
        Failure::Lost(why)
    }

    pub fn close(self) {
        self.c.quit();
    }
}

/// Logs in, runs the status query, and hands the session back when it is to
/// be held (`keep`), else quits it.
pub fn check(
    stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
    db: &Database,
    keep: bool,
) -> (Outcome, Option<Held>) {
    let mut c = match login(stream, deadline, timeout, db) {
        Ok(c) => c,
        Err(f) => return (Err(f), None),
    };
    c.deadline = deadline;
    if !keep {
        let outcome = status::query(&mut c, true, None).map(|(up, _)| up);
        c.quit();
        return (outcome, None);
    }
    let mut held = Held::new(c, db);
    match held.probe(deadline, db.connect_timeout) {
        Ok(up) => (Ok(up), Some(held)),
        Err(f) => {
            held.close();
            (Err(f), None)
        }
    }
}

/// Whether the server still admits a new connection, as an application's
/// would be: a login and a quit (a greeting alone would count as an aborted
/// connection, toward this host being blocked).
pub fn admit(
    stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
    db: &Database,
) -> Result<(), Failure> {
    match login(stream, deadline, timeout, db) {
        Ok(c) => {
            c.quit();
            Ok(())
        }
        Err(Failure::Timeout(t)) => Err(Failure::NoNewConnections(format!(
            "a new connection got no answer within {t:?}"
        ))),
        Err(f) => Err(f),
    }
}
