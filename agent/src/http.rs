//! A small blocking HTTP/1.1 client for the `patroni` check and the etcd
//! gateway, on the agent's own sockets: plain TCP, or TLS through rustls
//! ([`crate::probe::tls`]). Every read and write is bounded by the caller's
//! deadline. Response heads are parsed by `httparse`, and chunk sizes too; a
//! body is framed by its `Content-Length`, by the chunked transfer coding, or by
//! the close of the connection (HTTP/1.0, which Patroni 3.0's REST API speaks).
//! Heads and bodies are capped before they are buffered, so a hostile peer
//! cannot make the agent allocate. A connection the server keeps open is used
//! again for the next request.

use crate::probe::server_text;
use crate::probe::tls::{self, Stream};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// No response head the agent reads comes near this.
const MAX_HEAD: usize = 16 * 1024;
/// Headers in a response head, at most.
const MAX_HEADERS: usize = 64;
/// A chunk-size line (hex digits and extensions), or a trailer section, at most.
const MAX_CHUNK_LINE: usize = 1024;

/// Where a server is: `http://host:port/base` or `https://...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// A name or an address (IPv6 without its brackets).
    pub host: String,
    pub port: u16,
    /// The path every request's path is appended to; empty or starting with '/',
    /// never ending with one.
    pub base: String,
}

impl Url {
    /// Parses `http://HOST[:PORT][/BASE]` (port 80, or 443 for https, when
    /// omitted). No user information, query or fragment: credentials are
    /// configured apart, never in a URL that is logged.
    pub fn parse(text: &str) -> Result<Url, String> {
        let expected = || {
            format!("expected a URL like \"http://10.0.0.1:8008\" or \"https://db1.example:8008\", found {text:?}")
        };
        let (https, rest) = if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(expected());
        };
        if text.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!("{text:?} holds a space or a control character"));
        }
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "{text:?} holds credentials: give them in the configuration's user and password settings, not in the URL"
            ));
        }
        if base.contains(['?', '#']) {
            return Err(format!("{text:?}: a query or fragment is not expected"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(expected)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(expected());
        }
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{text:?}: expected a port from 1 to 65535"))?,
        };
        Ok(Url {
            https,
            host: host.to_owned(),
            port,
            base: base.to_owned(),
        })
    }

    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.base)
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No complete answer before the deadline.
    Timeout,
    /// The server closed the connection before answering.
    Closed,
    /// A network error.
    Io(String),
    /// TLS failed (a handshake, a certificate, a bad record).
    Tls(String),
    /// The answer is not HTTP as expected (malformed, too large, cut short).
    Protocol(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Timeout => f.write_str("no answer in time"),
            Error::Closed => f.write_str("connection closed before any answer"),
            Error::Io(e) => f.write_str(e),
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::Protocol(e) => write!(f, "not an HTTP answer as expected: {e}"),
        }
    }
}

fn io_error(e: io::Error) -> Error {
    if let Some(why) = tls::failure(&e) {
        return Error::Tls(why);
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Error::Closed,
        _ => Error::Io(e.to_string()),
    }
}

/// One request.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path and query, starting with '/' (after the URL's base).
    pub path: &'a str,
    /// `Authorization` header's value (`Basic ...`), if any.
    pub authorization: Option<&'a str>,
    /// A JSON body (sent with its length), if any.
    pub json: Option<&'a [u8]>,
}

/// `Basic` credentials for an `Authorization` header.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// A response's status and head, before its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How the body of the response being read ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: this many bytes are left of the current chunk (0: a chunk-size
    /// line comes next).
    Chunked { left: u64, started: bool },
    /// At the close of the connection.
    Close,
    /// The body has been read.
    Done,
}

/// One connection to a server.
pub struct Conn {
    stream: Stream,
    /// Bytes read and not yet taken.
    buf: Vec<u8>,
    framing: Framing,
    /// The server keeps the connection open after the current response.
    keep: bool,
    /// How the connection's URL spells the base path.
    base: String,
    authority: String,
}

impl Conn {
    /// A connection to `url` over `tcp`, with TLS (`config`) for https.
    pub fn new(
        tcp: TcpStream,
        url: &Url,
        config: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Conn, Error> {
        let stream = match (url.https, config) {
            (false, _) => Stream::Plain(tcp),
            (true, Some(config)) => {
                let name = tls::server_name(&url.host).map_err(Error::Tls)?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| Error::Tls(e.to_string()))?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
            (true, None) => return Err(Error::Tls("https needs a TLS configuration".into())),
        };
        Ok(Conn {
            stream,
            buf: Vec::new(),
            framing: Framing::Done,
            keep: true,
            base: url.base.clone(),
            authority: url.authority(),
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// The last response was read to its end and the server keeps the
    /// connection open: it can carry another request.
    pub fn reusable(&self) -> bool {
        self.keep && self.framing == Framing::Done
    }

    fn bound(&mut self, deadline: Instant) -> Result<(), Error> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout);
        }
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(Some(left))
            .and_then(|()| tcp.set_write_timeout(Some(left)))
            .map_err(io_error)
    }

    /// Reads more into the buffer; Ok(0) at the end of the stream.
    fn fill(&mut self, deadline: Instant) -> Result<usize, Error> {
        let mut chunk = [0u8; 8192];
        loop {
            self.bound(deadline)?;
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Sends `req` and reads the response head (not the body: see
    /// [`Conn::body`] and [`Conn::next`]).
    pub fn send(&mut self, req: &Request<'_>, deadline: Instant) -> Result<Head, Error> {
        if self.framing != Framing::Done {
            return Err(Error::Protocol(
                "a new request before the last response was read".into(),
            ));
        }
        let mut text = format!(
            "{} {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: dbha-agent/{}\r\nAccept: application/json\r\n",
            req.method,
            self.base,
            req.path,
            self.authority,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(a) = req.authorization {
            text.push_str(&format!("Authorization: {a}\r\n"));
        }
        let body = req.json.unwrap_or_default();
        if req.json.is_some() {
            text.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        text.push_str("\r\n");
        let mut out = text.into_bytes();
        out.extend_from_slice(body);
        self.bound(deadline)?;
        self.stream
            .write_all(&out)
            .and_then(|()| self.stream.flush())
            .map_err(io_error)?;
        self.head(req.method == "HEAD", deadline)
    }

    fn head(&mut self, head_only: bool, deadline: Instant) -> Result<Head, Error> {
        loop {
            if self.buf.len() >= 5 && !self.buf.starts_with(b"HTTP/") {
                return Err(Error::Protocol(format!(
                    "the first bytes are {:?}",
                    server_text(&self.buf[..self.buf.len().min(16)])
                )));
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = parsed.code.unwrap_or(0);
                    let framing = framing(&parsed, head_only)?;
                    let keep = keeps_open(&parsed) && framing != Framing::Close;
                    self.buf.drain(..n);
                    // An interim answer (100 Continue) is passed over.
                    if (100..200).contains(&status) {
                        continue;
                    }
                    self.framing = framing;
                    self.keep = keep;
                    return Ok(Head { status });
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(Error::Protocol(format!("a malformed head ({e})"))),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Error::Protocol(format!(
                    "a head longer than {MAX_HEAD} bytes"
                )));
            }
            let started = !self.buf.is_empty();
            if self.fill(deadline)? == 0 {
                return Err(if started {
                    Error::Protocol("closed in the middle of the head".into())
                } else {
                    Error::Closed
                });
            }
        }
    }

    /// The next bytes of the body, as they arrive, at most `max` at a time: None
    /// at its end. Waits at most until `deadline` for them.
    pub fn next(&mut self, deadline: Instant, max: usize) -> Result<Option<Vec<u8>>, Error> {
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                Framing::Length(left) => {
                    if !self.buf.is_empty() {
                        let n = self.buf.len().min(max).min(clamp(left));
                        self.framing = Framing::Length(left - n as u64);
                        return Ok(Some(self.buf.drain(..n).collect()));
                    }
                    if self.fill(deadline)? == 0 {
                        self.keep = false;
                        return Err(Error::Protocol("closed in the middle of the body".into()));
                    }
                }
                Framing::Close => {
                    if !self.buf.is_empty() {
                        let n = self.buf.len().min(max);
                        return Ok(Some(self.buf.drain(..n).collect()));
                    }
                    match self.fill(deadline) {
                        Ok(0) | Err(Error::Closed) => {
                            self.framing = Framing::Done;
                            self.keep = false;
                            return Ok(None);
                        }
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
                Framing::Chunked { left: 0, started } => {
                    if started {
                        // The CRLF after a chunk's data.
                        if self.buf.len() < 2 {
                            self.more(deadline)?;
                            continue;
                        }
                        if &self.buf[..2] != b"\r\n" {
                            return Err(Error::Protocol("a chunk not ended by CRLF".into()));
                        }
                        self.buf.drain(..2);
                        self.framing = Framing::Chunked {
                            left: 0,
                            started: false,
                        };
                    }
                    match httparse::parse_chunk_size(&self.buf) {
                        Ok(httparse::Status::Complete((n, 0))) => {
                            self.buf.drain(..n);
                            self.trailers(deadline)?;
                            self.framing = Framing::Done;
                            return Ok(None);
                        }
                        Ok(httparse::Status::Complete((n, size))) => {
                            self.buf.drain(..n);
                            self.framing = Framing::Chunked {
                                left: size,
                                started: true,
                            };
                        }
                        Ok(httparse::Status::Partial) => {
                            if self.buf.len() > MAX_CHUNK_LINE {
                                return Err(Error::Protocol("a chunk-size line too long".into()));
                            }
                            self.more(deadline)?;
                        }
                        Err(_) => return Err(Error::Protocol("a malformed chunk size".into())),
                    }
                }
                Framing::Chunked { left, .. } => {
                    if !self.buf.is_empty() {
                        let n = self.buf.len().min(max).min(clamp(left));
                        self.framing = Framing::Chunked {
                            left: left - n as u64,
                            started: true,
                        };
                        return Ok(Some(self.buf.drain(..n).collect()));
                    }
                    self.more(deadline)?;
                }
            }
        }
    }

    /// More bytes, where the end of the stream cuts a body short.
    fn more(&mut self, deadline: Instant) -> Result<(), Error> {
        if self.fill(deadline)? == 0 {
            self.keep = false;
            return Err(Error::Protocol("closed in the middle of the body".into()));
        }
        Ok(())
    }

    /// The trailer section after the last chunk: passed over, up to its empty line.
    fn trailers(&mut self, deadline: Instant) -> Result<(), Error> {
        loop {
            if self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
                return Ok(());
            }
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                self.buf.drain(..i + 4);
                return Ok(());
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(Error::Protocol("a trailer section too long".into()));
            }
            self.more(deadline)?;
        }
    }

    /// The whole body of the response whose head was read, at most `max` bytes.
    pub fn body(&mut self, deadline: Instant, max: usize) -> Result<Vec<u8>, Error> {
        let too_long = || Error::Protocol(format!("a body of more than {max} bytes"));
        if matches!(self.framing, Framing::Length(n) if n > max as u64) {
            self.keep = false;
            return Err(too_long());
        }
        let mut body = Vec::new();
        while let Some(part) = self.next(deadline, max + 1 - body.len())? {
            body.extend_from_slice(&part);
            if body.len() > max {
                self.keep = false;
                return Err(too_long());
            }
        }
        Ok(body)
    }

    /// A whole request and response.
    pub fn request(
        &mut self,
        req: &Request<'_>,
        deadline: Instant,
        max_body: usize,
    ) -> Result<Response, Error> {
        let head = self.send(req, deadline)?;
        let body = self.body(deadline, max_body)?;
        Ok(Response {
            status: head.status,
            body,
        })
    }

    /// Whether the server closed the connection or sent something unasked
    /// while it was idle: a connection to be dropped, not used (call when its
    /// socket is readable or before reusing it).
    pub fn idle_broken(&mut self) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.stream.tcp().as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        !matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(0)
        )
    }
}

fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn header<'a>(r: &'a httparse::Response<'_, '_>, name: &str) -> Vec<&'a [u8]> {
    r.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

fn has_token(values: &[&[u8]], token: &str) -> bool {
    values.iter().any(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// How the body ends (RFC 9112, section 6.3).
fn framing(r: &httparse::Response<'_, '_>, head_only: bool) -> Result<Framing, Error> {
    let status = r.code.unwrap_or(0);
    if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Done);
    }
    let coding = header(r, "transfer-encoding");
    if !coding.is_empty() {
        return if has_token(&coding, "chunked") {
            Ok(Framing::Chunked {
                left: 0,
                started: false,
            })
        } else {
            Ok(Framing::Close)
        };
    }
    let lengths = header(r, "content-length");
    let Some(first) = lengths.first() else {
        return Ok(Framing::Close);
    };
    let parse = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let n = parse(first).ok_or_else(|| Error::Protocol("an invalid Content-Length".into()))?;
    if lengths.iter().any(|v| parse(v) != Some(n)) {
        return Err(Error::Protocol("conflicting Content-Length headers".into()));
    }
    Ok(Framing::Length(n))
}

/// HTTP/1.1 keeps the connection unless it says `close`; HTTP/1.0 closes it
/// unless it says `keep-alive`.
fn keeps_open(r: &httparse::Response<'_, '_>) -> bool {
    let connection = header(r, "connection");
    if r.version == Some(1) {
        !has_token(&connection, "close")
    } else {
        has_token(&connection, "keep-alive")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn urls() {
        let u = Url::parse("http://10.0.0.1:8008").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.base.as_str()),
            (false, "10.0.0.1", 8008, "")
        );
        let u = Url::parse("https://db1.example/api/").unwrap();
        assert_eq!((u.https, u.port, u.base.as_str()), (true, 443, "/api"));
        let u = Url::parse("http://[::1]:2379").unwrap();
        assert_eq!(
            (u.host.as_str(), u.authority()),
            ("::1", "[::1]:2379".to_owned())
        );
        assert_eq!(u.to_string(), "http://[::1]:2379");
        for bad in [
            "10.0.0.1:8008",
            "ftp://x",
            "http://",
            "http://:80",
            "http://x:0",
            "http://x:70000",
            "http://u:p@x:1",
            "http://x/a?b",
            "http://x/a\r\nHost: y",
            "http://[::1:80",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(Url::parse("http://u:p@x:1")
            .unwrap_err()
            .contains("credentials"));
    }

    /// A server that answers each accepted connection with `answers` in turn
    /// (one per request read), then closes.
    fn serve(answers: Vec<Vec<u8>>) -> (Url, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut seen = Vec::new();
            for a in answers {
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).unwrap_or(0) == 0 {
                        return seen;
                    }
                    req.push(b[0]);
                }
                seen.push(String::from_utf8_lossy(&req).into_owned());
                s.write_all(&a).unwrap();
            }
            seen
        });
        (
            Url::parse(&format!("http://127.0.0.1:{port}/base")).unwrap(),
            h,
        )
    }

    fn conn(url: &Url) -> Conn {
        let tcp = TcpStream::connect((url.host.as_str(), url.port)).unwrap();
        Conn::new(tcp, url, None).unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn get<'a>(path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            authorization: None,
            json: None,
        }
    }

    #[test]
    fn keep_alive_with_lengths_and_chunks() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n".to_vec(),
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        ]);
        let mut c = conn(&url);
        let r = c.request(&get("/primary"), soon(), 100).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert!(c.reusable());
        let r = c.request(&get("/x"), soon(), 100).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"abcde"[..]));
        assert!(c.reusable());
        let r = c.request(&get("/y"), soon(), 100).unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        let seen = server.join().unwrap();
        assert!(
            seen[0].starts_with("GET /base/primary HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{}",
            seen[0]
        );
    }

    #[test]
    fn http_1_0_bodies_end_at_the_close() {
        let (url, server) = serve(vec![
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"role\": \"master\"}"
                .to_vec(),
        ]);
        let mut c = conn(&url);
        let r = {
            let head = c.send(&get("/primary"), soon()).unwrap();
            // The server closes after writing.
            let body = {
                server.join().unwrap();
                c.body(soon(), 100).unwrap()
            };
            (head.status, body)
        };
        assert_eq!(r, (200, b"{\"role\": \"master\"}".to_vec()));
        assert!(!c.reusable());
    }

    #[test]
    fn hostile_answers_are_refused_without_buffering_them() {
        let long_head = {
            let mut h = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
            h.resize(MAX_HEAD + 100, b'a');
            h
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(), "first bytes"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc".to_vec(), "more than"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(), "conflicting"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec(), "invalid Content-Length"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), "chunk size"),
            (
                [&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n"[..], &[b'a'; 1100]].concat(),
                "more than",
            ),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY".to_vec(), "CRLF"),
            (long_head, "head longer"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(), "middle of the body"),
            (b"HTTP/1.1 2".to_vec(), "middle of the head"),
        ];
        for (answer, want) in cases {
            let (url, server) = serve(vec![answer]);
            let mut c = conn(&url);
            let got = c.request(&get("/"), soon(), 1000);
            drop(c);
            let _ = server.join();
            match got {
                Err(Error::Protocol(e)) => assert!(e.contains(want), "{want}: {e}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn silence_and_a_close_are_told_apart() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        let mut c = conn(&url);
        let (_quiet, _) = l.accept().unwrap();
        let t = Instant::now();
        let got = c.request(&get("/"), Instant::now() + Duration::from_millis(200), 10);
        assert_eq!(got, Err(Error::Timeout));
        assert!(t.elapsed() < Duration::from_secs(3));
        let mut c = conn(&url);
        drop(l.accept().unwrap());
        assert_eq!(c.request(&get("/"), soon(), 10), Err(Error::Closed));
    }

    #[test]
    fn a_streamed_body_comes_as_it_arrives() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        let mut c = conn(&url);
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n")
            .unwrap();
        let head = c.head(false, soon()).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(c.next(soon(), 100).unwrap().unwrap(), b"{\"a\"");
        // Nothing more yet: the wait ends at its deadline.
        let short = Instant::now() + Duration::from_millis(100);
        assert_eq!(c.next(short, 100), Err(Error::Timeout));
        s.write_all(b"3\r\n:1}\r\n").unwrap();
        assert_eq!(c.next(soon(), 100).unwrap().unwrap(), b":1}");
        drop(s);
        assert!(matches!(c.next(soon(), 100), Err(Error::Protocol(_))));
    }

    #[test]
    fn basic_credentials() {
        assert_eq!(
            basic_auth("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
