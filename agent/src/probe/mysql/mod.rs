//! The `mysql` check (MariaDB 10.5 and later, MySQL 8.0 and later), without a
//! login: the server's first packet judged as HAProxy's `option mysql-check`
//! without a user does. A protocol-10 greeting is a server that accepts
//! connections; an ERR packet is a refusal, said with its code (1040 too many
//! connections, 1129 this host blocked, others as the server words them);
//! anything else, or silence, is not a server to use. The connection is then
//! closed: the server counts that as an aborted connection (`Aborted_connects`,
//! and toward `max_connect_errors` for this host unless it resolves no names
//! or the host is the loopback), which is why the operator's guide recommends
//! credentials once the check can log in.
//!
//! Packets are framed by `mysql_common`'s codec and parsed by its packet types
//! (no hand-written packet formats); the first packet is capped at
//! [`MAX_GREETING`] before anything is allocated for it.

pub mod session;
pub mod status;

use super::{Failure, Outcome, Up};
use bytes::BytesMut;
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{ErrPacket, HandshakePacket};
use mysql_common::proto::codec::PacketCodec;
use mysql_common::proto::MyDeserialize;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The `mysql` check's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// A user is configured: the check logs in (else it judges the greeting).
    pub login: bool,
    /// The server's RSA public key (PEM), for caching_sha2_password's full
    /// authentication over a connection without TLS.
    pub server_public_key: Option<Vec<u8>>,
}

/// A PEM public key file larger than this is refused unread (a 4096-bit RSA
/// key is about 800 bytes).
const MAX_KEY_FILE: u64 = 16 * 1024;

/// The server's public key from `path` (its `caching_sha2_password_public_key_path`
/// file, or what `SHOW STATUS LIKE 'Caching_sha2_password_rsa_public_key'`
/// prints), checked to be an RSA public key in PEM.
pub fn load_public_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut pem = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if pem.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "{} is larger than {MAX_KEY_FILE} bytes: expected a PEM public key",
            path.display()
        ));
    }
    mysql_common::crypto::rsa::PublicKey::from_pem(&pem).map_err(|e| {
        format!(
            "{}: not an RSA public key in PEM (\"-----BEGIN PUBLIC KEY-----\"): {e}",
            path.display()
        )
    })?;
    Ok(pem)
}

/// The largest first packet taken (a greeting is about 100 bytes).
pub const MAX_GREETING: usize = 16 * 1024;

/// At most this many bytes of server text go into a message.
const MAX_TEXT: usize = 200;

/// Reads the server's first packet from `stream` within `deadline` and judges
/// it; closes the connection either way.
pub fn greet(mut stream: TcpStream, deadline: Instant, timeout: Duration) -> Outcome {
    let packet = first_packet(&mut stream, deadline, timeout);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    judge(&packet?)
}

/// The first packet, framed from bytes as they arrive (capped at
/// [`MAX_GREETING`] before anything is allocated for it).
pub struct Framer {
    codec: PacketCodec,
    src: BytesMut,
    payload: Vec<u8>,
}

impl Default for Framer {
    fn default() -> Framer {
        let mut codec = PacketCodec::default();
        codec.max_allowed_packet = MAX_GREETING;
        Framer {
            codec,
            src: BytesMut::new(),
            payload: Vec::new(),
        }
    }
}

impl Framer {
    /// Takes `bytes` as read; the whole first packet's payload once it is in.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        if self.src.len() + bytes.len() > MAX_GREETING + 4 {
            return Err(Failure::NotMysql(format!(
                "more than {MAX_GREETING} bytes without a whole packet"
            )));
        }
        self.src.extend_from_slice(bytes);
        match self.codec.decode(&mut self.src, &mut self.payload) {
            Ok(true) => Ok(Some(std::mem::take(&mut self.payload))),
            Ok(false) => Ok(None),
            Err(e) => Err(Failure::NotMysql(format!("first packet: {e}"))),
        }
    }

    /// What the connection ending now means.
    pub fn ended(&self) -> Failure {
        if self.src.is_empty() && self.payload.is_empty() {
            Failure::Closed
        } else {
            Failure::NotMysql(format!(
                "the connection ended inside the first packet ({} bytes)",
                self.src.len() + self.payload.len()
            ))
        }
    }
}

/// The first packet's payload, read within `deadline`.
fn first_packet(
    stream: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let mut framer = Framer::default();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout(timeout));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| Failure::Io(format!("set_read_timeout: {e}")))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(framer.ended()),
            Ok(n) => {
                if let Some(payload) = framer.push(&chunk[..n])? {
                    return Ok(payload);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure::Timeout(timeout))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::Closed)
            }
            Err(e) => return Err(Failure::Io(format!("read: {e}"))),
        }
    }
}

/// What the first packet's payload says of the server.
pub fn judge(payload: &[u8]) -> Outcome {
    greeting(payload).map(|_| Up::default())
}

/// The server's greeting, parsed; an ERR packet or other bytes as the failure
/// they are.
pub fn greeting(payload: &[u8]) -> Result<HandshakePacket<'static>, Failure> {
    match payload.first() {
        Some(0x0a) => {
            // mysql_common 0.38 computes with this byte as an i8 and overflows
            // (a panic in debug builds) at 0x80-0x87; a server sends about 21.
            if let Some(n) = auth_data_len(payload).filter(|&n| n >= 0x80) {
                return Err(Failure::NotMysql(format!(
                    "a greeting with an auth-plugin-data length of {n}"
                )));
            }
            let hs = HandshakePacket::deserialize((), &mut ParseBuf(payload)).map_err(|e| {
                Failure::NotMysql(format!("a protocol-10 greeting that does not parse: {e}"))
            })?;
            if hs.protocol_version() != 10 {
                return Err(Failure::NotMysql(format!(
                    "protocol version {}",
                    hs.protocol_version()
                )));
            }
            Ok(hs.into_owned())
        }
        Some(0xff) => {
            // Before the handshake the server has no capabilities agreed: no
            // SQL state marker.
            let err = ErrPacket::deserialize(CapabilityFlags::empty(), &mut ParseBuf(payload))
                .map_err(|e| {
                    Failure::NotMysql(format!("an ERR packet that does not parse: {e}"))
                })?;
            let ErrPacket::Error(e) = err else {
                return Err(Failure::NotMysql(
                    "a progress report before the greeting".into(),
                ));
            };
            Err(refusal(e.error_code(), &cut(&e.message_str())))
        }
        Some(&b) => Err(Failure::NotMysql(format!(
            "a first packet starting with 0x{b:02x}, not a greeting (0x0a) or an error (0xff)"
        ))),
        None => Err(Failure::NotMysql("an empty first packet".into())),
    }
}

/// A server's refusal by its error code: 1040 (too many connections) and 1203
/// (the user's max_user_connections) admit no new connection, 1129 blocks this
/// host, 1053 is a server shutting down; the rest are said as the server words
/// them.
pub fn refusal(code: u16, text: &str) -> Failure {
    match code {
        1040 | 1203 => Failure::NoNewConnections(format!("{code} {text}")),
        1129 => Failure::HostBlocked(format!("{code} {text}")),
        1053 => Failure::NotReady(format!("{code} {text}")),
        _ => Failure::Rejected(format!("{code} {text}")),
    }
}

/// The greeting's auth-plugin-data length byte: after the protocol byte, the
/// NUL-terminated server version, then 20 bytes (connection id 4, scramble 8,
/// filler 1, capabilities 2, collation 1, status 2, capabilities 2).
fn auth_data_len(payload: &[u8]) -> Option<u8> {
    let version_end = 1 + payload.get(1..)?.iter().position(|&b| b == 0)?;
    payload.get(version_end + 1 + 20).copied()
}

/// Server text for a log line: control characters escaped, at most
/// [`MAX_TEXT`] bytes.
pub fn cut(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > MAX_TEXT {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbha_protocol::probe_result as k;

    /// MariaDB 10.11's greeting, as it sent it here.
    const GREETING: &[u8] = b"\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x05\x00\x00\x00,jTGGmoh\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00N@e[d@HR<GV.\x00mysql_native_password\x00";

    fn err(code: u16, text: &str) -> Vec<u8> {
        let mut p = vec![0xff];
        p.extend_from_slice(&code.to_le_bytes());
        p.extend_from_slice(text.as_bytes());
        p
    }

    #[test]
    fn a_greeting_is_a_server_that_accepts() {
        assert_eq!(judge(GREETING), Ok(Up::default()));
    }

    #[test]
    fn refusals_are_said_with_their_code() {
        let e = judge(&err(1040, "Too many connections")).unwrap_err();
        assert_eq!(e.kind(), k::NO_NEW_CONNECTIONS);
        assert!(e.to_string().contains("1040 Too many connections"), "{e}");
        let e = judge(&err(1129, "Host '10.0.0.9' is blocked because of many connection errors; unblock with 'mariadb-admin flush-hosts'")).unwrap_err();
        assert_eq!(e.kind(), k::HOST_BLOCKED);
        assert!(e.to_string().contains("FLUSH HOSTS"), "{e}");
        let e = judge(&err(1130, "Host 'x' is not allowed to connect")).unwrap_err();
        assert_eq!(e.kind(), k::REJECTED);
    }

    #[test]
    fn other_bytes_are_not_mysql_and_server_text_is_cut() {
        for bad in [
            &b""[..],
            b"\x0a",
            b"\x0a5.5",
            b"SSH-2.0-OpenSSH_9.2",
            b"\xff\x01",
        ] {
            let e = judge(bad).unwrap_err();
            assert_eq!(e.kind(), k::NOT_MYSQL, "{bad:?}: {e}");
        }
        let long = "\x1b[31m".to_string() + &"x".repeat(1000);
        let e = judge(&err(1045, &long)).unwrap_err().to_string();
        assert!(e.len() < 300 && e.contains("\\u{1b}"), "{e}");
    }

    #[test]
    fn a_greeting_whose_length_byte_would_overflow_the_parser_is_refused() {
        let mut g = GREETING.to_vec();
        let at = GREETING.iter().position(|&b| b == 0).unwrap() + 1 + 20;
        assert_eq!(g[at], 0x15, "the auth-plugin-data length of the sample");
        for n in [0x80, 0x87, 0xff] {
            g[at] = n;
            assert_eq!(judge(&g).unwrap_err().kind(), k::NOT_MYSQL);
        }
    }

    #[test]
    fn the_first_packet_is_framed_in_pieces_and_capped() {
        let mut wire = vec![GREETING.len() as u8, 0, 0, 0];
        wire.extend_from_slice(GREETING);
        let mut f = Framer::default();
        let mut got = None;
        for b in wire.chunks(7) {
            got = f.push(b).unwrap();
        }
        assert_eq!(got.as_deref(), Some(GREETING));
        // SSH's banner read as a packet header: 4.7 MB, refused unread.
        let e = Framer::default()
            .push(b"SSH-2.0-OpenSSH_9.2\r\n")
            .unwrap_err();
        assert_eq!(e.kind(), k::NOT_MYSQL, "{e}");
        let mut f = Framer::default();
        assert_eq!(f.ended().kind(), k::CLOSED);
        f.push(&[50, 0, 0, 0, 10]).unwrap();
        assert_eq!(f.ended().kind(), k::NOT_MYSQL);
    }

    #[test]
    fn every_prefix_and_random_bytes_are_judged_without_panicking() {
        for n in 0..GREETING.len() {
            let _ = judge(&GREETING[..n]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let len = (x % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = judge(&bytes);
            let mut with_header = bytes.clone();
            with_header.insert(0, 0x0a);
            let _ = judge(&with_header);
        }
    }
}
