//! TLS for the `postgres` check, through rustls (ring as the crypto provider; no
//! OpenSSL, no hand-written crypto). `sslmode` means what it means to libpq:
//!
//! | sslmode | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it; a failed handshake is followed by a connection without TLS (as libpq) | not checked |
//! | `require` | required | not checked; with `sslrootcert`, as `verify-ca` (as libpq) |
//! | `verify-ca` | required | signed by a CA in `sslrootcert` |
//! | `verify-full` | required | as `verify-ca`, and issued for the configured host |
//!
//! Only `verify-full` tells a spoofed endpoint from the real one; the others keep
//! a passive listener from reading the session.

use crate::config::SslMode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// What an operator can do about a TLS failure that comes from what rustls
/// speaks, not from a certificate's trust: None for the others.
pub fn hint(e: &rustls::Error) -> Option<&'static str> {
    use rustls::AlertDescription as Alert;
    match e {
        rustls::Error::AlertReceived(
            Alert::HandshakeFailure | Alert::ProtocolVersion | Alert::InsufficientSecurity,
        )
        | rustls::Error::PeerIncompatible(_) => Some(
            "the server and dbha share no TLS version and cipher suite: dbha (rustls) speaks TLS 1.3, and TLS 1.2 with ECDHE key exchange only, not RSA key exchange nor TLS 1.0/1.1; enable ECDHE suites on the server (ssl_ciphers, ssl_min_protocol_version) or use sslmode = \"prefer\", which then connects without TLS",
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. },
        ) => Some(
            "the server's key or signature is one rustls refuses (an RSA key under 2048 bits, SHA-1): use a stronger key and certificate, or sslmode = \"prefer\", which then connects without TLS",
        ),
        _ => None,
    }
}

/// A socket error that is a TLS failure (rustls reports a failed handshake or
/// a bad record as InvalidData), described for a log line with what an
/// operator can do about it; None for the others.
pub fn failure(e: &io::Error) -> Option<String> {
    let t = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let mut why = crate::probe::server_text(t.to_string().as_bytes());
    if let Some(hint) = hint(t) {
        why = format!("{why}: {hint}");
    }
    Some(why)
}

/// `sslrootcert = "system"`: the system's trust store (Debian's ca-certificates).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// A root certificate file larger than this is refused before it is read (the
/// system's whole trust store is about 200 KiB).
const MAX_ROOTS_FILE: u64 = 4 << 20;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in the PEM file at `path` (`"system"`: [`SYSTEM_ROOTS`]).
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let path = if path == Path::new("system") {
        Path::new(SYSTEM_ROOTS)
    } else {
        path
    };
    let pem = read_pem(path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: a certificate that cannot be used: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)",
            path.display()
        ));
    }
    Ok(roots)
}

/// The client configuration for `mode`; None for `disable`.
pub fn client_config(
    mode: SslMode,
    rootcert: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, String> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, rootcert) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(AnyCertificate(provider.clone()))
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(format!("sslmode = \"{}\" needs sslrootcert", mode.name()))
        }
        (SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull, Some(path)) => {
            let chain = WebPkiServerVerifier::builder_with_provider(
                Arc::new(load_roots(path)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))?;
            if mode == SslMode::VerifyFull {
                chain
            } else {
                Arc::new(AnyName(chain))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// The name the certificate must carry (`verify-full`), also sent as SNI when it
/// is a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// TLS over the plain connection `tcp` to `host` (sent as SNI, and checked
/// against the certificate under `verify-full`), the handshake done within
/// the socket's timeouts so that its failure is named; `fail` says what a
/// socket error means.
pub fn start(
    tcp: &TcpStream,
    config: Arc<ClientConfig>,
    host: &str,
    fail: impl Fn(io::Error) -> crate::probe::Failure,
) -> Result<Stream, crate::probe::Failure> {
    use crate::probe::Failure;
    let name = server_name(host).map_err(Failure::Tls)?;
    let conn =
        rustls::ClientConnection::new(config, name).map_err(|e| Failure::Tls(e.to_string()))?;
    // The caller's plain stream closes its descriptor when replaced; this is
    // the same socket.
    let tcp = tcp
        .try_clone()
        .map_err(|e| Failure::Io(format!("TLS setup: {e}")))?;
    let mut t = rustls::StreamOwned::new(conn, tcp);
    while t.conn.is_handshaking() {
        t.conn.complete_io(&mut t.sock).map_err(&fail)?;
    }
    Ok(Stream::Tls(Box::new(t)))
}

/// `prefer` and `require` without `sslrootcert`: any certificate. The handshake's
/// signatures are still verified (the session is encrypted to whoever holds the
/// certificate's key), as libpq does in these modes.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    pub fn encrypted(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A PEM file read whole, refused past [`MAX_ROOTS_FILE`].
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut pem = Vec::new();
    file.take(MAX_ROOTS_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if pem.len() as u64 > MAX_ROOTS_FILE {
        return Err(format!(
            "{} is larger than {} MiB: expected a PEM file",
            path.display(),
            MAX_ROOTS_FILE >> 20
        ));
    }
    Ok(pem)
}

/// https to a service such as etcd: the certificate verified against `cacert`
/// (the system's roots when None) and issued for the host; with a client
/// certificate and its key (PEM) when given, as `etcdctl --cert --key`.
pub fn https_config(
    cacert: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    use rustls::pki_types::PrivateKeyDer;
    let provider = provider();
    let roots = load_roots(cacert.unwrap_or(Path::new("system")))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let pem = read_pem(cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: not PEM certificates: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("{} holds no certificate", cert.display()));
            }
            let key_pem = read_pem(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?
        }
    };
    Ok(Arc::new(config))
}
