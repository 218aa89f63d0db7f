//! MariaDB on loopback, for the mysql check: two real servers with GTID
//! replication, as the harness starts them, and the real agent judging their
//! greetings (no login yet): servers up, stopped, frozen, and ports that
//! answer something else, closed or silent. Time bounds only catch hangs.

use dbha::Reader;
use dbha_harness::Listener;
use dbha_tests::agentproc::{loopback_config, wait_for, wait_write, AgentProc};
use dbha_tests::mariadb::{self, Pair};
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_primary_and_its_replica_replicate_and_the_replica_can_be_promoted() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    let p = Pair::start().unwrap();
    assert!(!p.primary.read_only().unwrap());
    assert!(p.replica.read_only().unwrap());
    p.primary
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)")
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while p.replica.sql("SELECT COUNT(*) FROM app.t").ok().as_deref() != Some("1") {
        assert!(Instant::now() < until, "the row never reached the replica");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.replica.promote().unwrap();
    assert!(!p.replica.read_only().unwrap());
    p.replica.sql("INSERT INTO app.t VALUES (2)").unwrap();
}

/// A port that accepts and sends `reply` (nothing: silence), holding each
/// connection open until dropped.
struct Talker {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Talker {
    fn start(reply: &'static [u8]) -> Talker {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(reply);
                        held.push(c);
                        // Bounded: the agent probes a few times a second.
                        if held.len() > 64 {
                            held.remove(0);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Talker {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Talker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn last_probe(r: &Reader, i: u32) -> String {
    r.snapshot()
        .map(|s| s.last_probe_name(i).to_owned())
        .unwrap_or_default()
}

fn aborted_connects(s: &mariadb::Server) -> u64 {
    s.sql("SHOW GLOBAL STATUS LIKE 'Aborted_connects'")
        .unwrap()
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn the_mysql_check_judges_greetings_of_real_servers_and_of_other_ports() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    let mut p = Pair::start().unwrap();
    let http = Talker::start(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    let silent = Talker::start(b"");
    let closes = Listener::bind(0).unwrap();
    let (db0, db1) = (p.primary.port, p.replica.port);
    let a = AgentProc::start(p.dir(), "agent", |s| {
        loopback_config(
            s,
            &[
                ("db0", db0, "mysql"),
                ("db1", db1, "mysql"),
                ("http", http.port, "mysql"),
                ("silent", silent.port, "mysql"),
                ("closes", closes.port, "mysql"),
            ],
            "",
        )
    });
    let r = a.reader();
    wait_write(&r, "db0");
    let want = ["ok", "ok", "not_mysql", "timeout", "closed"];
    wait_for("every endpoint judged", || {
        (0..5u32)
            .all(|i| last_probe(&r, i) == want[i as usize])
            .then_some(())
    });
    let s = r.snapshot().unwrap();
    assert_eq!(s.health_mask, 0b11, "{}", a.log());
    assert!(
        a.log().contains("not a MySQL or MariaDB server"),
        "{}",
        a.log()
    );

    // Each probe is an aborted connection on the server (the cost the
    // operator's guide states), and nothing else.
    let before = aborted_connects(&p.primary);
    std::thread::sleep(Duration::from_secs(2));
    assert!(aborted_connects(&p.primary) > before);

    // The primary stopped: refused, writes to the other server (this check
    // sees no roles: writes = "any").
    p.primary.stop();
    wait_write(&r, "db1");
    assert_eq!(last_probe(&r, 0), "refused");

    // The other one frozen: its greeting never comes.
    p.replica.freeze(true);
    wait_for("the frozen server timed out", || {
        (last_probe(&r, 1) == "timeout").then_some(())
    });
    wait_for("no healthy database", || {
        (r.snapshot().ok()?.health_mask & 0b11 == 0).then_some(())
    });
    p.replica.freeze(false);
    p.primary.start_again().unwrap();
    wait_for("both servers ok again", || {
        (last_probe(&r, 0) == "ok" && last_probe(&r, 1) == "ok").then_some(())
    });
}
