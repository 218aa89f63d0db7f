//! A TCP relay on loopback between the agents and a server (etcd), that a test
//! can cut: while cut, relayed connections are closed and new ones are accepted
//! and left unanswered (as a blackholed path), while the server's other clients
//! (Patroni, the tools) reach it as before. Stopped, with every connection, when
//! dropped.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Every socket of a relayed connection, for a cut to close.
    open: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Relay {
    /// Relays a free loopback port to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (cut, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, s, o) = (cut.clone(), stop.clone(), open.clone());
        let thread = std::thread::spawn(move || {
            // Connections accepted while cut: held, unanswered.
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if c.load(Ordering::Relaxed) {
                            held.push(client);
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let _ = server.set_nodelay(true);
                        let _ = client.set_nodelay(true);
                        if let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                            client.try_clone(),
                            server.try_clone(),
                            client.try_clone(),
                            server.try_clone(),
                        ) {
                            if let Ok(mut v) = o.lock() {
                                v.push(c3);
                                v.push(s3);
                            }
                            std::thread::spawn(move || pipe(client, server));
                            std::thread::spawn(move || pipe(s2, c2));
                        }
                    }
                    Err(_) => {
                        if !c.load(Ordering::Relaxed) {
                            held.clear();
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        });
        Ok(Relay {
            port,
            cut,
            stop,
            open,
            thread: Some(thread),
        })
    }

    fn close_all(&self) {
        if let Ok(mut v) = self.open.lock() {
            for s in v.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Cuts the path: open connections end, new ones go unanswered.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        self.close_all();
    }

    /// Relays again.
    pub fn mend(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.close_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
