//! The real `dbha-agent` binary against local TCP listeners and fake PostgreSQL
//! servers, observed through the real reader.

use dbha::{Reader, Status};
use dbha_harness::Listener;
use dbha_tests::agentproc::{self, loopback_config as config, wait_for, wait_write, AgentProc};
use dbha_tests::fakepg::{FakePg, Reply};
use dbha_tests::metrics::{http_get, metric};
use nix::sys::signal::Signal;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn agent_cmd() -> Command {
    Command::new(dbha_tests::agent_bin())
}

fn listener() -> Listener {
    Listener::bind(0).unwrap()
}

fn port(l: &Listener) -> u16 {
    l.port
}

/// An agent with its own test directory.
struct Agent {
    _dir: tempfile::TempDir,
    agent: AgentProc,
}

impl Agent {
    fn new(config: impl FnOnce(&Path) -> String) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentProc::start(dir.path(), "agent", config);
        Agent { _dir: dir, agent }
    }
}

impl std::ops::Deref for Agent {
    type Target = AgentProc;
    fn deref(&self) -> &AgentProc {
        &self.agent
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut AgentProc {
        &mut self.agent
    }
}

#[test]
fn a_refused_write_endpoint_is_unavailable_at_once_and_replaced_after_its_tolerance() {
    // Issue 20 row 2: `fall` failed probes (20 ms at fastinter) used to move
    // writes; now they only make the endpoint unavailable (NONE), and writes move
    // once it has been down for fall x interval (2 x 50 ms here).
    let (a, b) = (listener(), listener());
    let (pa, pb) = (port(&a), port(&b));
    let agent = Agent::new(|d| config(d, &[("default", pa, "tcp"), ("failover1", pb, "tcp")], ""));
    let r = agent.reader();
    let e0 = wait_write(&r, "default");
    let fault = Instant::now();
    drop(a);
    let none = wait_for("writes unavailable", || {
        let s = r.snapshot().ok()?;
        (s.write_index.is_none()).then_some((s.epoch, fault.elapsed()))
    });
    let e1 = wait_write(&r, "failover1");
    let moved = fault.elapsed();
    println!("refused -> unavailable in {:?}, moved in {moved:?}", none.1);
    assert_eq!((none.0, e1), (e0 + 1, e0 + 2));
    assert!(
        moved >= Duration::from_millis(100),
        "moved after {moved:?}, before the tolerance"
    );
    agent.wait_log("default: down after 2 failed probes (connection refused)");
    agent.wait_log(&format!("write: default -> NONE (epoch {})", e0 + 1));
    agent.wait_log(&format!("write: NONE -> failover1 (epoch {e1})"));
    drop(b);
}

#[test]
fn fake_postgres_servers_are_judged_by_their_replies() {
    let servers = [
        ("starting", FakePg::start(Reply::Error("57P03"))),
        ("garbage", FakePg::start(Reply::Garbage)),
        ("hung", FakePg::start(Reply::Silent)),
        ("md5", FakePg::start(Reply::AuthMd5)),
        ("norole", FakePg::start(Reply::Error("28000"))),
    ];
    let dbs: Vec<(&str, u16, &str)> = servers
        .iter()
        .map(|(a, s)| (*a, s.port, "postgres"))
        .collect();
    let agent = Agent::new(|d| config(d, &dbs, ""));
    let r = agent.reader();
    wait_write(&r, "md5");
    let s = wait_for("every verdict", || {
        let s = r.snapshot().ok()?;
        (s.health_mask == 0b11000).then_some(s)
    });
    assert_eq!(s.write_alias(), Some("md5"));
    agent.wait_log("starting: down after 2 failed probes (not ready (57P03: fake server refuses))");
    agent.wait_log("garbage: down after 2 failed probes (not a PostgreSQL server");
    agent.wait_log("hung: down after 2 failed probes (no answer within 200ms)");
}

#[test]
fn sighup_applies_a_valid_config_and_rejects_an_invalid_one_without_losing_the_decision() {
    let (a, b, c) = (listener(), listener(), listener());
    let (pa, pb, pc) = (port(&a), port(&b), port(&c));
    let mut agent =
        Agent::new(|d| config(d, &[("default", pa, "tcp"), ("failover1", pb, "tcp")], ""));
    let r = agent.reader();
    let e0 = wait_write(&r, "default");

    // An invalid file: rejected, logged with its location, agent carries on.
    std::fs::write(&agent.config, "interval = \"fast\"\n").unwrap();
    agent.signal(Signal::SIGHUP);
    agent.wait_log("reload rejected, keeping the running configuration:");
    assert!(
        agent
            .log()
            .contains("agent.toml:1:12: expected a duration like"),
        "{}",
        agent.log()
    );
    // Well past stale_after (1s): the heartbeat never stopped.
    std::thread::sleep(Duration::from_millis(1500));
    let s = r.snapshot().unwrap();
    assert_eq!(
        (s.status, s.write_alias(), s.epoch),
        (Status::Active, Some("default"), e0)
    );
    assert!(agent.child().try_wait().unwrap().is_none(), "agent died");

    // A valid one that adds an endpoint: the file is replaced, readers follow, and
    // at no moment during the reload does a reader lose the active database.
    let state = agent.state.clone();
    std::fs::write(
        &agent.config,
        config(
            &state,
            &[
                ("default", pa, "tcp"),
                ("failover1", pb, "tcp"),
                ("failover2", pc, "tcp"),
            ],
            "",
        ),
    )
    .unwrap();
    let watcher = {
        let state = agent.state.clone();
        std::thread::spawn(move || {
            let r = Reader::open(state).unwrap();
            let until = Instant::now() + Duration::from_millis(1500);
            let mut seen = Vec::new();
            while Instant::now() < until {
                let s = r.snapshot().unwrap();
                let key = (s.generation, s.write_alias().map(String::from));
                if seen.last() != Some(&key) {
                    seen.push(key);
                }
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    agent.signal(Signal::SIGHUP);
    agent.wait_log("configuration reloaded from");
    let seen = watcher.join().unwrap();
    assert_eq!(
        seen,
        [
            (1, Some("default".to_string())),
            (2, Some("default".to_string()))
        ],
        "what a reader saw across the reload"
    );
    let s = r.snapshot().unwrap();
    assert_eq!((s.generation, s.endpoint_count()), (2, 3));
    assert!(s.epoch > e0);
    assert_eq!(s.alias(2), Some("failover2"));
}

#[test]
fn sigterm_hands_over_readers_keep_the_decision_until_stale_after() {
    // Issue 20 row 3: SIGTERM marked the file "agent stopped", so every
    // `systemctl restart` showed readers no database for the restart's length.
    let a = listener();
    let pa = port(&a);
    let mut agent = Agent::new(|d| config(d, &[("default", pa, "tcp")], ""));
    let r = agent.reader();
    let epoch = wait_write(&r, "default");
    agent.signal(Signal::SIGTERM);
    let status = wait_for("the agent to exit", || agent.child().try_wait().unwrap());
    let exited = Instant::now();
    assert!(status.success(), "{status:?}");
    let s = r.snapshot().unwrap();
    assert!(!s.stopped());
    if exited.elapsed() < s.stale_after {
        assert_eq!((s.status, s.epoch), (Status::Active, epoch));
    }
    // A real stop: no new agent within stale_after shows as stale.
    wait_for("the decision to go stale", || {
        (r.snapshot().unwrap().status == Status::Stale).then_some(())
    });
    assert_eq!(r.write_alias(), None);
    assert!(agent.log().contains("the last decision stays published"));
}

#[test]
fn a_second_agent_on_the_same_state_file_is_refused() {
    let a = listener();
    let pa = port(&a);
    let mut agent = Agent::new(|d| config(d, &[("default", pa, "tcp")], ""));
    agent.reader();
    let first = agent.pid();
    let out = agent_cmd()
        .args(["run", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is locked by another dbha-agent"), "{err}");
    assert!(err.contains(&format!("(pid {first})")), "{err}");
    assert!(
        agent.child().try_wait().unwrap().is_none(),
        "the first agent must go on"
    );
}

#[test]
fn status_json_matches_what_the_reader_sees() {
    let (a, b) = (listener(), listener());
    let (pa, pb) = (port(&a), port(&b));
    let agent = Agent::new(|d| {
        config(
            d,
            &[
                ("default", pa, "tcp"),
                ("failover1", 1, "tcp"),
                ("failover2", pb, "tcp"),
            ],
            "",
        )
    });
    let r = agent.reader();
    wait_for("a verdict on every endpoint", || {
        let s = r.snapshot().ok()?;
        (s.health_mask == 0b101).then_some(())
    });
    let out = agent_cmd()
        .args(["status", "--json", "--state"])
        .arg(agent.state.clone())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = r.snapshot().unwrap();
    assert_eq!(j["status"], "active");
    assert_eq!(j["epoch"], s.epoch);
    assert_eq!(j["write"], s.write_alias().unwrap());
    assert_eq!(j["active"], j["write"], "the older key stays");
    assert_eq!(j["read"], s.read_alias().unwrap());
    assert_eq!(j["writer_pid"], s.writer_pid);
    assert_eq!(j["stale"], false);
    assert_eq!(j["stale_after_ms"], 1000);
    let eps = j["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 3);
    for (i, e) in eps.iter().enumerate() {
        assert_eq!(e["alias"], s.alias(i as u32).unwrap());
        assert_eq!(e["healthy"], s.is_healthy(i as u32));
        assert_eq!(e["role"], "unknown");
        // TCP checks measure no replication lag.
        assert_eq!(e["replica_lag"], serde_json::Value::Null);
    }
    assert_eq!(
        (eps[0]["last_probe"].as_str(), eps[1]["last_probe"].as_str()),
        (Some("ok"), Some("refused"))
    );
    // DBHA_STATE stands in for --state; the human table names the active endpoint.
    let out = agent_cmd()
        .arg("status")
        .env("DBHA_STATE", agent.state.clone())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("write        default"), "{table}");
    let row = table.lines().find(|l| l.contains("failover1")).unwrap();
    assert!(
        row.contains(" down ") && row.contains(" refused"),
        "{table}"
    );
    drop((a, b));
}

#[test]
fn status_of_a_missing_file_says_so_and_exits_one() {
    let out = agent_cmd()
        .args(["status", "--state", "/nonexistent/dbha/state"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/dbha/state does not exist"),
        "{err}"
    );
}

#[test]
fn check_prints_the_resolved_config_or_the_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        config(
            &dir.path().join("state"),
            &[("default", 5432, "postgres")],
            "",
        ),
    )
    .unwrap();
    let out = agent_cmd()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // In the configuration's own spelling: a file `check` accepts as it is.
    assert!(
        text.contains("alias = \"default\"\n") && text.contains("check = \"postgres\"\n"),
        "{text}"
    );
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &*text).unwrap();
    let again = agent_cmd()
        .args(["check", "--config"])
        .arg(&printed)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{again:?}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config(
            &dir.path().join("state"),
            &[("default", 5432, "postgres")],
            "retries = 3",
        ),
    )
    .unwrap();
    let out = agent_cmd()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:8:1: unknown field `retries`", bad.display())),
        "{err}"
    );
}

#[test]
fn an_agent_killed_and_restarted_continues_the_same_file_and_epoch() {
    let (a, b) = (listener(), listener());
    let (pa, pb) = (port(&a), port(&b));
    let mut agent =
        Agent::new(|d| config(d, &[("default", pa, "tcp"), ("failover1", pb, "tcp")], ""));
    let r = agent.reader();
    wait_write(&r, "default");
    drop(a);
    let e1 = wait_write(&r, "failover1");
    agent.signal(Signal::SIGKILL);
    wait_for("the agent to die", || agent.child().try_wait().unwrap());
    wait_for("stale", || {
        (r.snapshot().ok()?.status == Status::Stale).then_some(())
    });
    assert_eq!(r.write_alias(), None);

    agent.spawn();
    // The same Reader, the same mapping: the published decision comes back live.
    let s = wait_for("live again", || {
        let s = r.snapshot().ok()?;
        (s.status == Status::Active).then_some(s)
    });
    assert_eq!((s.generation, s.write_alias()), (1, Some("failover1")));
    assert!(s.epoch >= e1);
    // The reused file is live before the new agent has logged how it opened it.
    agent.wait_log("reused (epoch");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/dbha.toml");
    let out = agent_cmd()
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("[[database]] # 2\nalias = \"failover2\"")
            && text.contains("timeout = \"2s\""),
        "{text}"
    );
}

#[test]
fn watch_prints_one_line_per_change_with_its_reason() {
    use std::io::{BufRead, BufReader};
    let (a, b) = (listener(), listener());
    let (pa, pb) = (port(&a), port(&b));
    let mut agent =
        Agent::new(|d| config(d, &[("default", pa, "tcp"), ("failover1", pb, "tcp")], ""));
    let r = agent.reader();
    let e0 = wait_write(&r, "default");
    let mut watch = dbha_tests::Children::default();
    let child = watch.push(
        agent_cmd()
            .args(["watch", "--state"])
            .arg(&agent.state)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(agentproc::PATIENCE)
            .expect("a line from watch")
    };
    let first = next();
    assert!(
        first.ends_with(&format!("epoch {e0} write: default (status active)")),
        "{first}"
    );
    drop(a);
    // Unavailable at once, reads only meanwhile (failover1 is up); moved once
    // default was down for its tolerance.
    let line = next();
    assert!(
        line.ends_with(&format!(
            "epoch {} write: default -> NONE (read only, reads: failover1) (default down)",
            e0 + 1
        )),
        "{line}"
    );
    let moved = next();
    assert!(
        moved.ends_with(&format!(
            "epoch {} write: NONE (read only, reads: failover1) -> failover1",
            e0 + 2
        )),
        "{moved}"
    );
    // ISO 8601 UTC timestamp first.
    assert!(
        line.len() > 24 && &line[10..11] == "T" && &line[23..24] == "Z",
        "{line}"
    );
    agent.signal(Signal::SIGTERM);
    let line = next();
    assert!(line.ends_with("write: failover1 -> NONE (stale)"), "{line}");
    drop(b);
}

#[test]
fn systemd_hears_ready_after_the_first_cycle_status_watchdog_reload_and_stop() {
    use std::os::unix::net::UnixDatagram;
    let (a, b) = (listener(), listener());
    let (pa, pb) = (port(&a), port(&b));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("dbha.toml");
    std::fs::write(
        &cfg,
        config(
            &state,
            &[("default", pa, "tcp"), ("failover1", pb, "tcp")],
            "",
        ),
    )
    .unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(agentproc::PATIENCE)).unwrap();
    let mut children = dbha_tests::Children::default();
    let child = children.push(
        agent_cmd()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "200000")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut first = next();
    while first == "WATCHDOG=1" {
        first = next();
    }
    assert!(
        first.starts_with("READY=1\nSTATUS=write: default"),
        "{first:?}"
    );
    // Ready means the first complete probe cycle is published.
    let r = Reader::open(&state).unwrap();
    let s = r.snapshot().unwrap();
    assert_eq!((s.last_probe_name(0), s.last_probe_name(1)), ("ok", "ok"));
    let pings = (0..20)
        .map(|_| next())
        .filter(|m| m == "WATCHDOG=1")
        .count();
    assert!(pings >= 15, "watchdog pings: {pings} of 20 messages");
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    let after_hup: Vec<String> = (0..12)
        .map(|_| next())
        .filter(|m| m != "WATCHDOG=1")
        .collect();
    assert_eq!(
        after_hup.first().map(String::as_str),
        Some("RELOADING=1"),
        "{after_hup:?}"
    );
    assert!(
        after_hup
            .get(1)
            .is_some_and(|m| m.starts_with("READY=1\nSTATUS=write: default")),
        "{after_hup:?}"
    );
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let stop = (0..12).map(|_| next()).find(|m| m != "WATCHDOG=1");
    assert_eq!(stop.as_deref(), Some("STOPPING=1"));
    drop((a, b));
}

#[test]
fn metrics_report_the_known_state() {
    let a = listener();
    let pa = port(&a);
    let mport = dbha_harness::pg::free_port("127.0.0.1").unwrap();
    let addr = format!("127.0.0.1:{mport}");
    // failover1 on a port nobody listens on: refused, every time.
    let closed = dbha_harness::pg::free_port("127.0.0.1").unwrap();
    let agent = Agent::new(|d| {
        config(
            d,
            &[("default", pa, "tcp"), ("failover1", closed, "tcp")],
            &format!("metrics_listen = \"{addr}\""),
        )
    });
    let r = agent.reader();
    wait_write(&r, "default");
    wait_for("failover1 down", || {
        let s = r.snapshot().ok()?;
        (s.last_probe_name(1) == "refused" && !s.is_healthy(1)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let reply = http_get(&addr, "/metrics");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("Content-Type: text/plain; version=0.0.4"),
        "{reply}"
    );
    let text = reply.split("\r\n\r\n").nth(1).unwrap();
    let s = r.snapshot().unwrap();
    assert_eq!(metric(text, "dbha_endpoint_up{alias=\"default\"}"), 1.0);
    assert_eq!(metric(text, "dbha_endpoint_up{alias=\"failover1\"}"), 0.0);
    assert_eq!(metric(text, "dbha_write{alias=\"default\"}"), 1.0);
    assert_eq!(metric(text, "dbha_write{alias=\"failover1\"}"), 0.0);
    assert_eq!(metric(text, "dbha_active{alias=\"default\"}"), 1.0);
    assert_eq!(metric(text, "dbha_active{alias=\"failover1\"}"), 0.0);
    assert_eq!(metric(text, "dbha_epoch"), s.epoch as f64);
    assert_eq!(
        metric(text, "dbha_switches_total"),
        1.0,
        "NONE -> default, once"
    );
    assert!(
        metric(
            text,
            "dbha_endpoint_consecutive_failures{alias=\"failover1\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            text,
            "dbha_probe_errors_total{alias=\"failover1\",kind=\"refused\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric(
            text,
            "dbha_endpoint_role{alias=\"default\",role=\"unknown\"}"
        ),
        1.0
    );
    assert!(metric(text, "dbha_heartbeat_age_seconds") < 5.0);
    assert!(
        text.contains("# TYPE dbha_probe_errors_total counter"),
        "{text}"
    );
    assert!(http_get(&addr, "/").starts_with("HTTP/1.1 404"));
    drop(a);
}

#[test]
fn a_bad_metrics_address_is_a_located_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        config(
            &dir.path().join("state"),
            &[("default", 5432, "tcp")],
            "metrics_listen = \"localhost\"",
        ),
    )
    .unwrap();
    let out = agent_cmd()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics_listen: expected an address and port such as \"127.0.0.1:9187\""),
        "{err}"
    );
}

#[test]
fn check_status_and_watch_end_quietly_when_their_reader_goes_away() {
    // Issue 20 row 10: `dbha-agent check ... | head` panicked on the closed pipe.
    use std::process::Stdio;
    let a = listener();
    let agent = Agent::new(|d| config(d, &[("default", port(&a), "tcp")], ""));
    agent.reader();
    // A pipe whose reading end is closed before anything is written: as `| head
    // -0`, or a `head` that has had its lines.
    let closed = || {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        Stdio::from(w)
    };
    let state = agent.state.clone();
    let runs: [(&str, Vec<std::ffi::OsString>); 3] = [
        (
            "check",
            vec![
                "check".into(),
                "--config".into(),
                agent.config.clone().into(),
            ],
        ),
        (
            "status",
            vec!["status".into(), "--state".into(), state.clone().into()],
        ),
        (
            "watch",
            vec!["watch".into(), "--state".into(), state.into()],
        ),
    ];
    for (what, args) in runs {
        let out = agent_cmd()
            .args(&args)
            .stdout(closed())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
            .wait_with_output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_ne!(out.status.code(), Some(101), "{what}: {out:?}");
        assert!(
            out.status.code().is_some(),
            "{what} died of a signal: {out:?}"
        );
    }
}
