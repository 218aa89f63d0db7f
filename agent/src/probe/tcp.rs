//! TCP connect with the probe's own deadline, trying every resolved address (IPv4
//! and IPv6) in turn. A non-blocking connect bounded by the remaining time, so a
//! blackholed host costs `timeout`, never the kernel's SYN retries (about two
//! minutes at Linux defaults).

use super::Failure;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub fn connect(
    host: &str,
    port: u16,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    // Resolution is bounded by the resolver's own timeouts, not ours; it runs in
    // this endpoint's probe thread, so it can delay only this endpoint.
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Failure::Resolve(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Resolve(format!("{host} has no address")));
    }
    let mut last = Failure::Timeout(timeout);
    for addr in addrs {
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
