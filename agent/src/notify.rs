//! systemd's notification protocol (`sd_notify`): readiness, status and watchdog
//! pings for `Type=notify` units, as datagrams to the socket named by
//! `NOTIFY_SOCKET`. Everything is a no-op when that variable is unset.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Half of `WATCHDOG_USEC`, when systemd asked for pings.
    watchdog_every: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    /// From the environment systemd sets: `NOTIFY_SOCKET` (a path, or `@name` for
    /// the abstract namespace), `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            use std::os::unix::ffi::OsStrExt;
            let bytes = name.as_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(abstract_name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(abstract_name).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&name).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let for_us =
            std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Notifier {
            socket,
            watchdog_every,
            last_ping: None,
        }
    }

    fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
                log::warn!("sd_notify: cannot tell systemd {message:?}: {e}");
            }
        }
    }

    /// The service is ready; `status` is shown by `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// A configuration reload starts (READY=1 follows when it is done).
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// When the next watchdog ping is due, if systemd asked for them.
    pub fn ping_due(&self) -> Option<Instant> {
        let every = self.watchdog_every?;
        Some(self.last_ping.map_or_else(Instant::now, |t| t + every))
    }

    /// Sends a watchdog ping if one is due.
    pub fn ping_if_due(&mut self) {
        if self.ping_due().is_some_and(|t| t <= Instant::now()) {
            self.send("WATCHDOG=1");
            self.last_ping = Some(Instant::now());
        }
    }
}
