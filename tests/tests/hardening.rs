//! The real `dbha-agent` under what operators and the network do to it: reload
//! storms, a resolver that never answers, a state file removed from under it, a
//! metrics client that never finishes its request, a metrics port already taken.
//! Each test fails on the agent as it was before the matching fix.

use dbha::{Reader, Status};
use dbha_harness::Listener;
use dbha_tests::agentproc::{
    self, loopback_config as config, wait_for, wait_write, AgentProc, Timing, PATIENCE,
};
use dbha_tests::fakepg::{FakePg, Reply};
use dbha_tests::{agent_bin, require, Children};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Reads snapshots for `d`, calling `each` on every one. A read that met the
/// writer mid-publication too often (`Contended`, when this test's process is
/// descheduled on a busy machine) is passed over; most reads must succeed.
fn watch(r: &Reader, d: Duration, mut each: impl FnMut(&dbha::Snapshot)) {
    let end = Instant::now() + d;
    let (mut read, mut contended) = (0u32, 0u32);
    while Instant::now() < end {
        match r.snapshot() {
            Ok(s) => {
                each(&s);
                read += 1;
            }
            Err(dbha::Error::Contended { .. }) => contended += 1,
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(read > contended, "{read} reads, {contended} contended");
}

#[test]
fn reloading_an_unchanged_config_keeps_roles_decision_and_epoch() {
    // Row 13: reloads forgot every endpoint's role, so with prefer-standby reads
    // went to the primary until the next probe, and the epoch went up by two.
    let (primary, standby) = (
        FakePg::start(Reply::AuthOk),
        FakePg::start(Reply::AuthOkStandby),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProc::start(dir.path(), "agent", |s| {
        config(
            s,
            &[
                ("default", primary.port, "postgres"),
                ("failover1", standby.port, "postgres"),
            ],
            "writes = \"primary\"\nreads = \"prefer-standby\"",
        )
    });
    let r = agent.reader();
    let epoch = wait_for("reads on the standby", || {
        let s = r.snapshot().ok()?;
        (s.write_alias() == Some("default") && s.read_alias() == Some("failover1"))
            .then_some(s.epoch)
    });
    for n in 1..=10 {
        agent.signal(Signal::SIGHUP);
        agent.wait_log(&format!("(config generation {})", n + 1));
        watch(&r, Duration::from_millis(30), |s| {
            assert_eq!(
                (s.write_alias(), s.read_alias(), s.epoch),
                (Some("default"), Some("failover1"), epoch),
                "after reload {n}"
            );
        });
    }
}

#[test]
fn a_reload_storm_does_not_delay_the_verdict_on_a_hung_primary() {
    // Row 14: each reload restarted every probe and dropped what the running
    // ones were about to report, so a primary that hangs (each probe waiting its
    // whole timeout) was never judged while reloads came faster than that.
    let hung = FakePg::start(Reply::Silent);
    let good = FakePg::start(Reply::AuthOk);
    let alive = Listener::bind(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProc::start(dir.path(), "agent", |s| {
        config(
            s,
            &[
                ("default", alive.port, "tcp"),
                ("failover1", good.port, "postgres"),
            ],
            "",
        )
    });
    let r = agent.reader();
    wait_write(&r, "default");
    // The primary now hangs: its address is the silent server's from here on.
    let cfg = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        cfg.replacen(
            &format!("port = {}", alive.port),
            &format!("port = {}", hung.port),
            1,
        )
        .replacen("check = \"tcp\"", "check = \"postgres\"", 1),
    )
    .unwrap();
    drop(alive);
    agent.signal(Signal::SIGHUP);
    // Reloads every 100 ms, twice as often as the 200 ms probe timeout; the
    // unchanged configuration keeps the probe threads.
    let storm_end = Instant::now() + PATIENCE / 3;
    let mut switched = None;
    while Instant::now() < storm_end {
        agent.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(100));
        if r.snapshot().unwrap().write_alias() == Some("failover1") {
            switched = Some(Instant::now());
            break;
        }
    }
    assert!(
        switched.is_some(),
        "the hung primary stayed active through {:?} of reloads:\n{}",
        PATIENCE / 3,
        agent.log()
    );
}

/// The agent's command line in a new user, network and mount namespace whose
/// only resolver (127.0.0.1:53) receives queries and never answers, and where
/// 127.0.0.1:15432 accepts TCP connections.
const SILENT_RESOLVER: &str = r#"
import os, socket, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 53))
udp.settimeout(0.2)
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", 15432))
tcp.listen(64)
open(os.environ["READY"], "w").close()
parent, end = os.getppid(), time.time() + 120
# Ends with the agent (its parent), or after two minutes.
while os.getppid() == parent and time.time() < end:
    try:
        udp.recv(512)
    except socket.timeout:
        pass
"#;

#[test]
fn a_resolver_that_never_answers_holds_up_no_heartbeat_and_no_other_endpoint() {
    // Row 2: every host was resolved on the decision thread at start and on
    // reload, so with DNS not answering no heartbeat was written for seconds and
    // every reader saw "stale".
    let (Some(unshare), Some(_), Some(_)) = (
        require(
            "unshare",
            "for a namespace with a resolver that never answers",
        ),
        require("ip", "to bring up loopback in that namespace"),
        require("python3", "to play the resolver that never answers"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("resolv.conf"),
        "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n",
    )
    .unwrap();
    std::fs::write(d.join("sink.py"), SILENT_RESOLVER).unwrap();
    let state = d.join("agent.state");
    let t = Timing {
        stale_after_ms: 1000,
        ..Timing::default()
    };
    std::fs::write(
        d.join("agent.toml"),
        agentproc::config(
            &state,
            &t,
            &[
                ("default", "db.dbha-test.example", 5432, "tcp"),
                ("failover1", "127.0.0.1", 15432, "tcp"),
            ],
            "",
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("agent.log")).unwrap();
    let script = r#"set -e
ip link set lo up
mount --bind "$DIR/resolv.conf" /etc/resolv.conf
python3 "$DIR/sink.py" &
while [ ! -e "$READY" ]; do sleep 0.01; done
exec "$AGENT" run --config "$DIR/agent.toml"
"#;
    let mut children = Children::default();
    let agent = children.push(
        Command::new(unshare)
            .args([
                "--user",
                "--map-root-user",
                "--net",
                "--mount",
                "sh",
                "-c",
                script,
            ])
            .env("DIR", d)
            .env("READY", d.join("ready"))
            .env("AGENT", agent_bin())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = Pid::from_raw(agent.id() as i32);
    let agent_log = || std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
    let r = wait_for("the state file", || Reader::open(&state).ok());
    let started = Instant::now();
    wait_write(&r, "failover1");
    wait_for("the resolver's silence in the log", || {
        agent_log()
            .contains("default: host \"db.dbha-test.example\": cannot resolve host: the resolver did not answer within 200ms")
            .then_some(())
    });
    println!(
        "failover1 active {:?} after the state file appeared",
        started.elapsed()
    );
    // Reloads while lookups hang: the heartbeat goes on, the decision stays.
    for _ in 0..3 {
        kill(pid, Signal::SIGHUP).unwrap();
        watch(&r, Duration::from_millis(700), |s| {
            assert_eq!(
                (s.status, s.write_alias()),
                (Status::Active, Some("failover1")),
                "{}",
                agent_log()
            );
        });
    }
    let s = r.snapshot().unwrap();
    assert_eq!(s.last_probe_name(0), "resolve");
    assert!(!s.is_healthy(0));
}

#[test]
fn a_removed_state_file_and_lock_are_put_back_and_readers_follow() {
    let a = Listener::bind(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), "agent", |s| {
        config(s, &[("default", a.port, "tcp")], "")
    });
    let r = agent.reader();
    let epoch = wait_write(&r, "default");
    let lock = dbha_protocol::writer::lock_path(&agent.state);
    std::fs::remove_file(&agent.state).unwrap();
    std::fs::remove_file(&lock).unwrap();
    wait_for("the state file to be recreated", || {
        Reader::open(&agent.state).ok()
    });
    wait_for("the lock file to be recreated", || {
        lock.exists().then_some(())
    });
    agent.wait_log("was removed: created again");
    // A new reader and the old one (told by the removed file's SUPERSEDED flag)
    // both read the agent's live decision: same epoch, fresh heartbeat.
    let fresh = Reader::open(&agent.state).unwrap();
    for reader in [&r, &fresh] {
        let s = reader.snapshot().unwrap();
        assert_eq!(
            (s.status, s.write_alias(), s.epoch),
            (Status::Active, Some("default"), epoch)
        );
    }
    let before = fresh.snapshot().unwrap().generation;
    assert_eq!(before, 1);
    // The restored lock is held: a second agent on the same file is refused.
    let out = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is locked by another dbha-agent"));
    // Something else put at the path is not overwritten.
    std::fs::remove_file(&agent.state).unwrap();
    std::fs::write(&agent.state, b"not ours").unwrap();
    agent.wait_log("is no longer this agent's state file");
    assert_eq!(std::fs::read(&agent.state).unwrap(), b"not ours");
}

fn http_get(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_slow_metrics_client_delays_no_scrape_and_a_taken_port_stops_nothing() {
    // Row 15: one connection at a time, 2 s per read: a client sending a byte
    // every 1.5 s blocked every scrape. A port already taken kept the agent from
    // starting.
    let a = Listener::bind(0).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), "agent", |s| {
        config(
            s,
            &[("default", a.port, "tcp")],
            &format!("metrics_listen = \"{taken_addr}\""),
        )
    });
    wait_write(&agent.reader(), "default");
    agent.wait_log(&format!(
        "cannot serve metrics on {taken_addr} (metrics_listen)"
    ));
    // The port comes free: the metrics follow without a restart.
    drop(taken);
    agent.wait_log(&format!("metrics on http://{taken_addr}/metrics"));
    let addr = taken_addr.to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<TcpStream>();
    // Slow clients, each trickling a byte every 500 ms and never finishing.
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conns.extend(rx.try_iter());
                for c in &mut conns {
                    let _ = c.write_all(b"G");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    tx.send(TcpStream::connect(&addr).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // One slow client delays no scrape.
    let scraped = Instant::now();
    for _ in 0..3 {
        let reply = http_get(&addr);
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    }
    println!("3 scrapes beside a slow client in {:?}", scraped.elapsed());
    // Eight take every connection slot: a scrape is then closed at once, unanswered,
    // not queued behind them.
    for _ in 0..7 {
        tx.send(TcpStream::connect(&addr).unwrap()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = write!(s, "GET /metrics HTTP/1.1\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    // The slow clients are cut off after their 2 s in all; scrapes are answered
    // then, while they go on trickling.
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..3 {
        let reply = http_get(&addr);
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("dbha_write{alias=\"default\"} 1"), "{reply}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickler.join().unwrap();
}
