//! A TCP listener on loopback that stands for a healthy endpoint.

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A TCP endpoint that accepts and drops connections on a thread (a listener that
/// never accepts fills its queue after about 128 probes and then looks dead), or
/// answers them with fixed bytes and keeps them; closes when dropped.
pub struct Listener {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// At most this many connections an answering listener keeps open (the oldest
/// is closed first), so that probes a few times a second stay bounded.
const HELD: usize = 64;

impl Listener {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    pub fn bind(port: u16) -> std::io::Result<Listener> {
        Listener::start(port, None)
    }

    /// Listens on any free port of 127.0.0.1, sends `reply` on each connection
    /// (nothing: silence) and keeps it open: something that is not the server
    /// a check expects, or a server that never answers.
    pub fn answering(reply: &'static [u8]) -> std::io::Result<Listener> {
        Listener::start(0, Some(reply))
    }

    fn start(port: u16, reply: Option<&'static [u8]>) -> std::io::Result<Listener> {
        let l = TcpListener::bind(("127.0.0.1", port))?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while !flag.load(Ordering::Relaxed) {
                match (l.accept(), reply) {
                    (Ok((conn, _)), None) => drop(conn),
                    (Ok((mut conn, _)), Some(reply)) => {
                        let _ = conn.write_all(reply);
                        held.push_back(conn);
                        if held.len() > HELD {
                            held.pop_front();
                        }
                    }
                    (Err(_), _) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Listener {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
