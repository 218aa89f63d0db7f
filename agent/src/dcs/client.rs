//! The DCS thread: the one place that talks to etcd. It reads the cluster's
//! keys (linearizable), watches them from the next revision, confirms the
//! leader with a linearizable read every heartbeat, and sends the decision
//! loop a [`View`] after every change. Every way the sync ends (a watch that
//! closes, errs, is canceled or compacted, a heartbeat that fails or
//! disagrees, an answer from a stale member or another cluster) is a full read
//! again, from the next endpoint, retried with jittered backoff until it
//! succeeds. Every request is bounded by `timeout`; every timer is jittered, so
//! that a fleet of agents does not hit an etcd that restarts in lockstep.
//!
//! While etcd is lost (from half of Patroni's `ttl - loop_wait` on, so that the
//! answer is there when the confirmation expires) and `failsafe_mode` is on,
//! the thread asks `/primary` of the members of the last `failsafe` key
//! (those whose host is a configured database's): exactly one 200 is the
//! leader meanwhile.

use super::etcd::{self, Watch};
use super::follow::{Follower, Resync};
use super::{cluster, Settings, View};
use crate::http::{self, Conn, Request, Url};
use crate::probe::{tcp, tls, Resolver};
use log::{info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The TLS configuration for https endpoints.
pub fn tls_config(s: &Settings) -> Result<Arc<rustls::ClientConfig>, String> {
    let client = match (&s.cert, &s.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    tls::https_config(s.cacert.as_deref(), client)
}

/// An answer other than 200, in words: the status and what etcd said.
fn refusal(status: u16, body: &[u8]) -> String {
    let why = etcd::error_text(body);
    // etcd's JSON gateway refuses every request whose client certificate has
    // a CommonName when --client-cert-auth is on.
    let hint = if why.contains("CommonName") {
        "; with --client-cert-auth, etcd's JSON gateway (which dbha and Patroni use) refuses a client certificate that has a CommonName: issue one without"
    } else {
        ""
    };
    format!("HTTP {status}: {why}{hint}")
}

/// Dropping it stops the thread.
pub struct Stop {
    _peer: UnixStream,
}

impl Stop {
    /// Asks for a heartbeat now (an endpoint came back up: the leader it may
    /// be needs a fresh confirmation). Never blocks; a request that does not
    /// fit in the socket's buffer is dropped (one is already pending).
    pub fn confirm(&self) {
        use std::io::Write;
        let _ = (&self._peer).write(&[1]);
    }
}

/// A small xorshift generator for jitter (not for anything secret).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((t ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `d` scaled by a factor in [lo, hi).
    fn scale(&mut self, d: Duration, lo: f64, hi: f64) -> Duration {
        let f = lo + (hi - lo) * (self.next() % 10_000) as f64 / 10_000.0;
        d.mul_f64(f)
    }
}

/// How a wait ended.
enum Woke {
    Stop,
    Readable,
    Timeout,
    /// [`Stop::confirm`]: a heartbeat is wanted now.
    Confirm,
}

struct Client<E> {
    s: Settings,
    prefix: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Hosts of the configured databases: the failsafe fallback asks only them.
    db_hosts: Vec<String>,
    jitter: Jitter,
    cursor: usize,
    resolver: Resolver,
    /// The connection for requests (range, auth), kept open.
    unary: Option<(usize, Conn)>,
    token: Option<String>,
    follower: Follower,
    resyncs: u64,
    /// HTTP requests sent to etcd and to Patroni's REST API, since the start.
    requests: u64,
    error: Option<String>,
    failsafe_primary: Option<String>,
    connected: bool,
    stop: UnixStream,
    tx: Sender<E>,
    /// When etcd was lost (for the log), and when that was last logged.
    lost_since: Option<Instant>,
    lost_logged: Option<Instant>,
}

/// Starts the DCS thread; it sends a [`View`] after every change until the
/// handle is dropped or the receiver is gone.
pub fn spawn<E: From<View> + Send + 'static>(
    s: Settings,
    db_hosts: Vec<String>,
    tx: Sender<E>,
) -> std::io::Result<Stop> {
    let (handle, stop) = UnixStream::pair()?;
    handle.set_nonblocking(true)?;
    stop.set_nonblocking(true)?;
    let tls = if s.etcd.iter().any(|u| u.https) {
        Some(tls_config(&s).map_err(std::io::Error::other)?)
    } else {
        None
    };
    std::thread::Builder::new()
        .name("dcs".into())
        .spawn(move || {
            let mut jitter = Jitter::new();
            // Agents start at different endpoints: the fleet's load is spread.
            let cursor = (jitter.next() % s.etcd.len() as u64) as usize;
            let mut c = Client {
                prefix: s.prefix(),
                follower: Follower::new(&s.prefix()),
                s,
                tls,
                db_hosts,
                jitter,
                cursor,
                resolver: Resolver::default(),
                unary: None,
                token: None,
                resyncs: 0,
                requests: 0,
                error: None,
                failsafe_primary: None,
                connected: false,
                stop,
                tx,
                lost_since: None,
                lost_logged: None,
            };
            c.run();
        })?;
    Ok(Stop { _peer: handle })
}

impl<E: From<View>> Client<E> {
    fn url(&self) -> &Url {
        &self.s.etcd[self.cursor % self.s.etcd.len()]
    }

    /// Sends the current view; false when the decision loop is gone.
    fn send(&self) -> bool {
        let view = View {
            cluster: cluster(&self.follower),
            confirmed: self.follower.confirmed(),
            connected: self.connected,
            revision: self.follower.revision(),
            resyncs: self.resyncs,
            requests: self.requests,
            endpoint: self.url().to_string(),
            error: self.error.clone(),
            failsafe_primary: self.failsafe_primary.clone(),
        };
        self.tx.send(view.into()).is_ok()
    }

    /// Waits until `until` for the stop handle, or for `fd` to be readable.
    fn wait(&self, until: Instant, fd: Option<std::os::fd::BorrowedFd<'_>>) -> Woke {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Woke::Timeout;
            }
            let ms = left.as_millis().clamp(1, u128::from(u16::MAX)) as u16;
            let mut fds = vec![PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(_) => {
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                    continue;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                let mut b = [0u8; 64];
                match (&self.stop).read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Ok(n) if n > 0 => return Woke::Confirm,
                    _ => return Woke::Stop,
                }
            }
            if fds.get(1).is_some_and(ready) {
                return Woke::Readable;
            }
        }
    }

    fn connect(&mut self, url: &Url, deadline: Instant) -> Result<Conn, String> {
        let timeout = self.s.timeout;
        let addrs = self
            .resolver
            .resolve(&url.host, url.port, deadline, timeout)
            .map_err(|f| format!("{url}: {f}"))?;
        let tcp = tcp::connect(&addrs, deadline, timeout).map_err(|f| format!("{url}: {f}"))?;
        // A peer that stops acknowledging (a partition) ends the connection
        // within the timeout, also the silent watch.
        {
            use nix::sys::socket::{setsockopt, sockopt};
            let ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
            let _ = setsockopt(&tcp, sockopt::KeepAlive, &true);
            let _ = setsockopt(&tcp, sockopt::TcpKeepIdle, &1);
            let _ = setsockopt(&tcp, sockopt::TcpKeepInterval, &1);
            let _ = setsockopt(&tcp, sockopt::TcpKeepCount, &3);
            let _ = setsockopt(&tcp, sockopt::TcpUserTimeout, &ms);
        }
        Conn::new(tcp, url, self.tls.clone()).map_err(|e| format!("{url}: {e}"))
    }

    /// One POST of JSON to the current endpoint on the kept connection; the
    /// body of a 200 answer. Authenticates first when a user is configured.
    fn call(&mut self, path: &str, body: &[u8], deadline: Instant) -> Result<Vec<u8>, String> {
        if self.s.user.is_some() && self.token.is_none() {
            self.authenticate(deadline)?;
        }
        let (status, answer) = self.post(path, body, deadline)?;
        if status == 401 && self.s.user.is_some() {
            // The token expired (etcd's simple tokens last 5 minutes).
            self.token = None;
            self.authenticate(deadline)?;
            let again = self.post(path, body, deadline)?;
            return self.ok(again);
        }
        self.ok((status, answer))
    }

    fn ok(&self, (status, body): (u16, Vec<u8>)) -> Result<Vec<u8>, String> {
        if status == 200 {
            return Ok(body);
        }
        Err(format!("{}: {}", self.url(), refusal(status, &body)))
    }

    fn authenticate(&mut self, deadline: Instant) -> Result<(), String> {
        let (user, password) = match (&self.s.user, &self.s.password) {
            (Some(u), Some(p)) => (u.clone(), p.expose().to_owned()),
            _ => return Ok(()),
        };
        let (status, body) = self.post(
            "/v3/auth/authenticate",
            &etcd::auth_request(&user, &password),
            deadline,
        )?;
        if status != 200 {
            return Err(format!(
                "{}: authentication as {user:?} refused ({})",
                self.url(),
                refusal(status, &body)
            ));
        }
        self.token = Some(etcd::parse_auth(&body).map_err(|e| format!("{}: {e}", self.url()))?);
        Ok(())
    }

    fn post(
        &mut self,
        path: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), String> {
        let at = self.cursor % self.s.etcd.len();
        if self
            .unary
            .as_mut()
            .is_some_and(|(i, c)| *i != at || !c.reusable() || c.idle_broken())
        {
            self.unary = None;
        }
        let mut reused = self.unary.is_some();
        loop {
            if self.unary.is_none() {
                let url = self.url().clone();
                self.unary = Some((at, self.connect(&url, deadline)?));
            }
            let token = self.token.clone();
            let Some((_, conn)) = &mut self.unary else {
                continue;
            };
            let req = Request {
                method: "POST",
                path,
                authorization: token.as_deref(),
                json: Some(body),
            };
            self.requests += 1;
            match conn.request(&req, deadline, etcd::MAX_MESSAGE) {
                Ok(r) => {
                    if !conn.reusable() {
                        self.unary = None;
                    }
                    return Ok((r.status, r.body));
                }
                Err(http::Error::Closed) if reused => {
                    self.unary = None;
                    reused = false;
                }
                Err(e) => {
                    self.unary = None;
                    return Err(format!("{}: {e}", self.url()));
                }
            }
        }
    }

    /// A full read, then a watch from the next revision: the watch's
    /// connection, its head read.
    fn resync(&mut self) -> Result<Conn, String> {
        let sent = Instant::now();
        let deadline = sent + self.s.timeout;
        let body = self.call(
            "/v3/kv/range",
            &etcd::range_request(&self.prefix, true),
            deadline,
        )?;
        let range = etcd::parse_range(&body).map_err(|e| format!("{}: {e}", self.url()))?;
        self.follower
            .snapshot(&range, sent)
            .map_err(|Resync(why)| format!("{}: {why}", self.url()))?;
        let url = self.url().clone();
        let deadline = Instant::now() + self.s.timeout;
        let mut watch = self.connect(&url, deadline)?;
        let req = etcd::watch_request(&self.prefix, self.follower.revision() + 1);
        let token = self.token.clone();
        self.requests += 1;
        let head = watch
            .send(
                &Request {
                    method: "POST",
                    path: "/v3/watch",
                    authorization: token.as_deref(),
                    json: Some(&req),
                },
                deadline,
            )
            .map_err(|e| format!("{url}: the watch: {e}"))?;
        if head.status != 200 {
            return Err(format!("{url}: the watch: HTTP {}", head.status));
        }
        Ok(watch)
    }

    /// The heartbeat's period: configured, else a quarter of Patroni's `ttl`
    /// (at least 1 s, at most 10 s), jittered by ±20%.
    fn heartbeat_in(&mut self) -> Duration {
        let base = self.s.heartbeat.unwrap_or_else(|| {
            (cluster(&self.follower).config.ttl / 4)
                .clamp(Duration::from_secs(1), Duration::from_secs(10))
        });
        self.jitter.scale(base, 0.8, 1.2)
    }

    fn heartbeat(&mut self) -> Result<(), String> {
        let sent = Instant::now();
        let key = format!("{}leader", self.prefix);
        let body = self.call(
            "/v3/kv/range",
            &etcd::range_request(&key, false),
            sent + self.s.timeout,
        )?;
        let range = etcd::parse_range(&body).map_err(|e| format!("{}: {e}", self.url()))?;
        self.follower
            .heartbeat("leader", &range, sent)
            .map_err(|Resync(why)| why)
    }

    /// Reads what the watch sent; Err ends the sync.
    fn read_watch(&mut self, watch: &mut Conn, stream: &mut etcd::Stream) -> Result<(), String> {
        let mut wait = Duration::from_millis(50);
        loop {
            match watch.next(Instant::now() + wait, 64 * 1024) {
                Ok(Some(bytes)) => {
                    let leader_before = self.follower.get("leader").map(|(_, r)| r);
                    let mut changed = false;
                    for m in stream
                        .push(&bytes)
                        .map_err(|e| format!("{}: {e}", self.url()))?
                    {
                        if let Watch::Canceled { .. } = m {
                            info!("dcs: the watch ended; reading everything again");
                        }
                        changed |= self.follower.watched(&m).map_err(|Resync(why)| why)?;
                    }
                    if changed && !self.send() {
                        return Err(String::new());
                    }
                    // A new leader is confirmed at once rather than at the
                    // next heartbeat.
                    if self.follower.get("leader").map(|(_, r)| r) != leader_before
                        && self.follower.get("leader").is_some()
                    {
                        self.heartbeat()?;
                        if !self.send() {
                            return Err(String::new());
                        }
                    }
                    wait = Duration::from_millis(1);
                }
                Ok(None) => return Err(format!("{}: the watch was closed", self.url())),
                Err(http::Error::Timeout) => return Ok(()),
                Err(e) => return Err(format!("{}: the watch: {e}", self.url())),
            }
        }
    }

    /// Logs the loss of etcd at once, then every minute while it lasts.
    fn note_lost(&mut self, why: &str) {
        let now = Instant::now();
        let since = *self.lost_since.get_or_insert(now);
        let due = self
            .lost_logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
        if !due {
            return;
        }
        let lost = if self.lost_logged.is_none() {
            format!("dcs: etcd lost ({why})")
        } else {
            format!(
                "dcs: etcd still lost after {:.0}s ({why})",
                now.duration_since(since).as_secs_f64()
            )
        };
        self.lost_logged = Some(now);
        match self.follower.confirmed() {
            None => warn!("{lost}; no leader confirmed yet: no writes until etcd answers"),
            Some(t) => warn!(
                "{lost}; the leader was last confirmed {:.1}s ago: writes stay with it for at most ttl - loop_wait ({:?}) after that",
                now.duration_since(t).as_secs_f64(),
                cluster(&self.follower).config.window()
            ),
        }
    }

    fn note_back(&mut self) {
        if let Some(since) = self.lost_since.take() {
            info!(
                "dcs: etcd back after {:.1}s ({}, revision {})",
                since.elapsed().as_secs_f64(),
                self.url(),
                self.follower.revision()
            );
        }
        self.lost_logged = None;
    }

    /// With etcd lost past the window and failsafe_mode on: which member of
    /// the last `failsafe` key answers 200 to `/primary` (exactly one, else
    /// none).
    fn failsafe(&mut self) {
        let c = cluster(&self.follower);
        // Asked from half the window on, so that the answer is there when the
        // confirmation expires (the decision uses it only from then).
        let lost = self
            .follower
            .confirmed()
            .is_none_or(|t| t.elapsed() >= c.config.window() / 2);
        let before = self.failsafe_primary.clone();
        self.failsafe_primary = None;
        if lost && c.config.failsafe_mode {
            let mut primaries = Vec::new();
            for (name, api) in c.failsafe.iter().take(16) {
                let Ok(url) = Url::parse(api.trim_end_matches("/patroni")) else {
                    continue;
                };
                if !self
                    .db_hosts
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&url.host))
                {
                    continue;
                }
                if self.primary_answers(&url) {
                    primaries.push(name.clone());
                }
            }
            if let [only] = &primaries[..] {
                self.failsafe_primary = Some(only.clone());
            }
        }
        if self.failsafe_primary != before {
            match &self.failsafe_primary {
                Some(m) => warn!("dcs: etcd lost; failsafe_mode: {m} is the only member whose /primary answers 200: writes stay there past ttl - loop_wait while that holds"),
                None if before.is_some() => warn!("dcs: failsafe_mode: no single member answers 200 to /primary any more: no writes"),
                None => {}
            }
        }
    }

    fn primary_answers(&mut self, url: &Url) -> bool {
        let deadline = Instant::now() + self.s.timeout;
        let Ok(mut conn) = self.connect(url, deadline) else {
            return false;
        };
        let req = Request {
            method: "GET",
            path: "/primary",
            authorization: None,
            json: None,
        };
        self.requests += 1;
        conn.request(&req, deadline, 256 * 1024)
            .is_ok_and(|r| r.status == 200)
    }

    fn run(&mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.resync() {
                Ok(mut watch) => {
                    self.connected = true;
                    self.error = None;
                    self.failsafe_primary = None;
                    self.note_back();
                    backoff = Duration::from_millis(100);
                    if !self.send() {
                        return;
                    }
                    let why = self.follow(&mut watch);
                    let Some(why) = why else { return };
                    self.resyncs += 1;
                    info!("dcs: {why}; reading everything again");
                    self.error = Some(why);
                }
                Err(why) => {
                    self.note_lost(&why);
                    self.error = Some(why);
                }
            }
            self.connected = false;
            self.follower.lost();
            self.unary = None;
            self.failsafe();
            if !self.send() {
                return;
            }
            // The next endpoint, after a jittered backoff (doubling to 5 s).
            self.cursor = self.cursor.wrapping_add(1);
            let pause = self.jitter.scale(backoff, 0.5, 1.0);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // A wanted confirmation only shortens the pause.
            if let Woke::Stop = self.wait(Instant::now() + pause, None) {
                return;
            }
        }
    }

    /// Follows the watch and heartbeats until the sync breaks (Some(why)) or
    /// the thread is to stop (None).
    fn follow(&mut self, watch: &mut Conn) -> Option<String> {
        let mut stream = etcd::Stream::default();
        let mut next_heartbeat = Instant::now() + self.heartbeat_in();
        loop {
            let woke = self.wait(next_heartbeat, Some(watch.tcp().as_fd()));
            match woke {
                Woke::Stop => return None,
                Woke::Readable => {
                    if let Err(why) = self.read_watch(watch, &mut stream) {
                        return (!why.is_empty()).then_some(why);
                    }
                }
                Woke::Timeout | Woke::Confirm => {
                    if let Err(why) = self.heartbeat() {
                        return Some(format!("heartbeat: {why}"));
                    }
                    next_heartbeat = Instant::now() + self.heartbeat_in();
                    if !self.send() {
                        return None;
                    }
                }
            }
        }
    }
}
