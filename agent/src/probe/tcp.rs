//! TCP connect with the probe's own deadline, trying every resolved address (IPv4
//! and IPv6) in turn. A non-blocking connect bounded by the remaining time, so a
//! blackholed host costs `timeout`, never the kernel's SYN retries (about two
//! minutes at Linux defaults).

use super::Failure;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connects to the first of `addrs` (resolved by [`super::Resolver`]) that accepts.
pub fn connect(
    addrs: &[SocketAddr],
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    let mut last = Failure::Timeout(timeout);
    for &addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout(timeout));
        }
        // std implements connect_timeout as a non-blocking connect plus poll.
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => {
                last = match e.kind() {
                    io::ErrorKind::ConnectionRefused => Failure::Refused,
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                        Failure::Timeout(timeout)
                    }
                    _ => Failure::Io(format!("connect to {addr}: {e}")),
                }
            }
        }
    }
    Err(last)
}
