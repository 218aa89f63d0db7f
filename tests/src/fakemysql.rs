//! A scripted MySQL server on a loopback port, for what no real server here
//! can show (Debian has MariaDB only): MySQL 8's caching_sha2_password fast
//! and full paths, `super_read_only`, the `Replica_*` columns, switches of the
//! authentication plugin, and hostile replies. Each connection runs a script
//! against a [`Peer`], which frames packets and can take TLS (rustls); the
//! scripts check the client's scrambles as a server does, from the stored
//! hashes, independently of the client's code.

use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::packets::HandshakePacket;
use mysql_common::proto::MySerialize;
use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The nonce every scripted greeting carries (20 bytes, as a server's).
pub const NONCE: &[u8; 20] = b"0123456789abcdefghij";

/// The capabilities a MySQL 8 server offers (with CLIENT_SSL when `tls`).
pub fn server_caps(tls: bool) -> CapabilityFlags {
    let mut c = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_CONNECT_ATTRS;
    if tls {
        c |= CapabilityFlags::CLIENT_SSL;
    }
    c
}

/// A protocol-10 greeting from `version` with `plugin` as the default.
pub fn greeting(version: &str, plugin: &str, tls: bool) -> Vec<u8> {
    let mut scramble_1 = [0u8; 8];
    scramble_1.copy_from_slice(&NONCE[..8]);
    let mut scramble_2 = NONCE[8..].to_vec();
    scramble_2.push(0);
    let hs = HandshakePacket::new(
        10,
        version.as_bytes(),
        7,
        scramble_1,
        Some(scramble_2),
        server_caps(tls),
        255,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(plugin.as_bytes()),
    );
    let mut out = Vec::new();
    hs.serialize(&mut out);
    out
}

/// An ERR packet (4.1 protocol, with an SQL state).
pub fn err(code: u16, state: &str, text: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(state.as_bytes());
    p.extend_from_slice(text.as_bytes());
    p
}

/// An OK packet, with SERVER_MORE_RESULTS_EXISTS when `more`.
pub fn ok(more: bool) -> Vec<u8> {
    let status: u16 = if more { 0x0008 | 0x0002 } else { 0x0002 };
    let mut p = vec![0x00, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

/// An EOF packet, with SERVER_MORE_RESULTS_EXISTS when `more`.
pub fn eof(more: bool) -> Vec<u8> {
    let status: u16 = if more { 0x0008 | 0x0002 } else { 0x0002 };
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p
}

/// A length-encoded string (short ones: the length in one byte).
fn lenenc(out: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 251, "short strings only");
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

/// A column definition (4.1) named `name`, of type VAR_STRING.
pub fn column(name: &str) -> Vec<u8> {
    let mut p = Vec::new();
    for part in ["def", "", "", "", name, name] {
        lenenc(&mut p, part.as_bytes());
    }
    p.push(0x0c);
    p.extend_from_slice(&255u16.to_le_bytes()); // charset
    p.extend_from_slice(&256u32.to_le_bytes()); // length
    p.push(0xfd); // VAR_STRING
    p.extend_from_slice(&[0, 0, 0, 0, 0]); // flags, decimals, filler
    p
}

/// A text row: each value a string, or NULL.
pub fn row(values: &[Option<&str>]) -> Vec<u8> {
    let mut p = Vec::new();
    for v in values {
        match v {
            Some(s) => lenenc(&mut p, s.as_bytes()),
            None => p.push(0xfb),
        }
    }
    p
}

/// A whole result set (column count, columns, EOF, rows, EOF).
pub fn result_set(columns: &[&str], rows: &[&[Option<&str>]], more: bool) -> Vec<Vec<u8>> {
    let mut out = vec![vec![columns.len() as u8]];
    out.extend(columns.iter().map(|c| column(c)));
    out.push(eof(false));
    out.extend(rows.iter().map(|r| row(r)));
    out.push(eof(more));
    out
}

/// mysql_native_password as the server checks it: the stored
/// SHA1(SHA1(password)) recovers SHA1(password) from the client's answer.
pub fn native_ok(answer: &[u8], nonce: &[u8], password: &str) -> bool {
    let stage1 = Sha1::digest(password.as_bytes());
    let stored = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(stored);
    let mask = h.finalize();
    if answer.len() != 20 {
        return false;
    }
    let candidate: Vec<u8> = answer.iter().zip(mask.iter()).map(|(a, m)| a ^ m).collect();
    Sha1::digest(&candidate)[..] == stored[..]
}

/// caching_sha2_password's fast path as the server checks it: the cached
/// SHA256(SHA256(password)) recovers SHA256(password) from the answer.
pub fn sha2_fast_ok(answer: &[u8], nonce: &[u8], password: &str) -> bool {
    let stage1 = Sha256::digest(password.as_bytes());
    let stored = Sha256::digest(stage1);
    let mut h = Sha256::new();
    h.update(stored);
    h.update(nonce);
    let mask = h.finalize();
    if answer.len() != 32 {
        return false;
    }
    let candidate: Vec<u8> = answer.iter().zip(mask.iter()).map(|(a, m)| a ^ m).collect();
    Sha256::digest(&candidate)[..] == stored[..]
}

enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

/// One client connection, as the script sees it.
pub struct Peer {
    io: Io,
    seq: u8,
    /// Every packet the client sent, in order.
    pub received: Vec<Vec<u8>>,
}

impl Peer {
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match &mut self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.as_mut(),
        }
    }

    /// Sends `payload` as the next packet of the exchange.
    pub fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        let len = payload.len() as u32;
        let mut wire = len.to_le_bytes()[..3].to_vec();
        wire.push(self.seq);
        wire.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        self.stream().write_all(&wire)?;
        self.stream().flush()
    }

    /// Sends raw bytes (a hostile header, say), unframed.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream().write_all(bytes)?;
        self.stream().flush()
    }

    /// Sends several packets.
    pub fn send_all(&mut self, packets: &[Vec<u8>]) -> io::Result<()> {
        for p in packets {
            self.send(p)?;
        }
        Ok(())
    }

    /// The client's next packet (recorded in `received`); its sequence
    /// number sets the next one sent.
    pub fn recv(&mut self) -> io::Result<Vec<u8>> {
        let mut header = [0u8; 4];
        self.stream().read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        let mut payload = vec![0u8; len];
        self.stream().read_exact(&mut payload)?;
        self.seq = header[3].wrapping_add(1);
        self.received.push(payload.clone());
        Ok(payload)
    }

    /// The TLS handshake as the server, after the client's SslRequest.
    pub fn tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Io::Plain(tcp) = &self.io else {
            return Err(io::Error::other("TLS already"));
        };
        let tcp = tcp.try_clone()?;
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        self.io = Io::Tls(Box::new(s));
        Ok(())
    }

    /// Waits for the client to close (or `within` to pass).
    pub fn until_closed(&mut self, within: Duration) {
        if let Io::Plain(s) = &self.io {
            let _ = s.set_read_timeout(Some(within));
        }
        let mut sink = [0u8; 4096];
        while matches!(self.stream().read(&mut sink), Ok(n) if n > 0) {}
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A fake server running `script` on each of `connections` connections in
/// turn (with the connection's index from 0); [`FakeMysql::join`] gives what each script returned.
pub struct FakeMysql<T> {
    pub port: u16,
    thread: Option<JoinHandle<Vec<T>>>,
}

impl<T: Send + 'static> FakeMysql<T> {
    pub fn start(
        connections: usize,
        script: impl Fn(&mut Peer, usize) -> T + Send + 'static,
    ) -> FakeMysql<T> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            for i in 0..connections {
                let Ok((tcp, _)) = listener.accept() else {
                    break;
                };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let mut peer = Peer {
                    io: Io::Plain(tcp),
                    seq: 0,
                    received: Vec::new(),
                };
                out.push(script(&mut peer, i));
            }
            out
        });
        FakeMysql {
            port,
            thread: Some(thread),
        }
    }

    /// What the scripts returned, once they all ran.
    pub fn join(mut self) -> Vec<T> {
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("the fake server's thread")
    }
}

/// A rustls server configuration with a certificate for 127.0.0.1 signed by
/// `ca`.
pub fn tls_config(ca: &crate::certs::Ca) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = ca.sign(&["127.0.0.1"], None);
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("a PEM certificate")];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a PEM key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a server configuration"),
    )
}
