//! `[dcs]`: five real agents follow a real Patroni cluster (three PostgreSQL 15
//! nodes under Debian's Patroni over etcd 3.4 on loopback) through its etcd,
//! each with its own state file, probing only with the tcp check (no database
//! login). One cluster serves the phases in turn (bootstrapping one takes about
//! 11 s): a switchover, a kill -9 of the leader, etcd frozen with and without
//! Patroni's failsafe_mode, the agents cut from etcd while the leader changes
//! and etcd compacts, and etcd killed and restarted. A second test uses etcd
//! alone, with keys the test writes: foreign content, a lost quorum, an agent
//! started before etcd. Time bounds only catch hangs, except where the bound is
//! the point: writes never published past `ttl - loop_wait` after the last
//! confirmation.

use dbha::{Reader, Status};
use dbha_harness::pg::{free_port, Scratch};
use dbha_harness::Listener;
use dbha_tests::agentproc::{wait_for, AgentProc, PATIENCE};
use dbha_tests::certs::{file, Ca};
use dbha_tests::patroni::{self, Cluster, Etcd, Timing};
use dbha_tests::relay::Relay;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An agent's configuration: `dbs` (alias, port) with the tcp check, the DCS
/// on `etcd` with `scope`.
fn config(state: &Path, etcd: &[String], scope: &str, dbs: &[(String, u16)]) -> String {
    let urls: Vec<String> = etcd.iter().map(|u| format!("\"{u}\"")).collect();
    let mut text = format!(
        "state_file = \"{}\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\nstale_after = \"3s\"\nreads = \"prefer-standby\"\n\n[dcs]\netcd = [{}]\nscope = \"{scope}\"\ntimeout = \"1s\"\n",
        state.display(),
        urls.join(", ")
    );
    for (alias, port) in dbs {
        text.push_str(&format!(
            "\n[[database]]\nalias = \"{alias}\"\nhost = \"127.0.0.1\"\nport = {port}\ncheck = \"tcp\"\n"
        ));
    }
    text
}

/// The distinct write aliases one agent published, in order, until stopped.
struct Trace {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Option<String>>>,
}

impl Trace {
    fn start(state: PathBuf) -> Trace {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let r = Reader::open(&state).unwrap();
            let mut seen: Vec<Option<String>> = Vec::new();
            // One last look after the stop: the caller stops the trace once it
            // saw the final endpoint, which this thread (descheduled on a busy
            // machine) may not have sampled yet.
            loop {
                let last = flag.load(Ordering::Acquire);
                if let Ok(s) = r.snapshot() {
                    let w = s.write_alias().map(String::from);
                    if seen.last() != Some(&w) {
                        seen.push(w);
                    }
                }
                if last {
                    return seen;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Trace { stop, thread }
    }

    fn finish(self) -> Vec<Option<String>> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }
}

fn write_of(r: &Reader) -> Option<String> {
    r.snapshot().ok()?.write_alias().map(String::from)
}

/// Waits until every agent publishes `want` as the write alias.
fn all_write(agents: &[AgentProc], readers: &[Reader], want: Option<&str>) {
    for (a, r) in agents.iter().zip(readers) {
        dbha_harness::wait::poll(Duration::from_millis(2), PATIENCE * 3, &mut || {
            (write_of(r).as_deref() == want).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: write alias {:?}, expected {want:?}\n{}",
                a.state.display(),
                write_of(r),
                a.log()
            )
        });
    }
}

fn start_agents(
    dir: &Path,
    n: usize,
    text: impl Fn(&Path) -> String,
) -> (Vec<AgentProc>, Vec<Reader>) {
    let agents: Vec<AgentProc> = (0..n)
        .map(|i| AgentProc::start(dir, &format!("agent{i}"), &text))
        .collect();
    let readers = agents.iter().map(AgentProc::reader).collect();
    (agents, readers)
}

#[test]
fn five_agents_follow_patroni_through_its_etcd() {
    let Some(install) = patroni::prerequisites() else {
        return;
    };
    let timing = Timing::default();
    let window = Duration::from_secs(u64::from(timing.ttl - timing.loop_wait));
    let mut c = Cluster::start(&install, 3, 1, timing).unwrap();
    let leader = c.wait_leader(Duration::from_secs(60)).unwrap();
    let dbs: Vec<(String, u16)> = c
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.pg_port))
        .collect();
    // The agents reach etcd through a relay the test can cut.
    let relay = Relay::start(c.etcd.client_port(0)).unwrap();
    let etcd = vec![format!("http://127.0.0.1:{}", relay.port)];
    let dir = Scratch::new("dcs-agents").unwrap();
    let (agents, readers) = start_agents(dir.path(), 5, |s| config(s, &etcd, "dbha", &dbs));
    all_write(&agents, &readers, Some(&leader));
    // Reads go to a standby, known from the members' keys (no login).
    for r in &readers {
        wait_for("reads on a standby", || {
            let s = r.snapshot().ok()?;
            (s.read_alias().is_some() && s.read_alias() != Some(leader.as_str())).then_some(())
        });
    }

    // 1. A switchover: in every agent, the old leader, then no write endpoint
    // (the key deleted, the new one not written or not promoted yet), then
    // the new leader; never the third node.
    let candidate = dbs
        .iter()
        .map(|d| d.0.clone())
        .find(|n| *n != leader)
        .unwrap();
    let traces: Vec<Trace> = agents
        .iter()
        .map(|a| Trace::start(a.state.clone()))
        .collect();
    c.switchover(Some(&candidate)).unwrap();
    all_write(&agents, &readers, Some(&candidate));
    for t in traces {
        let seen = t.finish();
        assert_eq!(
            seen,
            [Some(leader.clone()), None, Some(candidate.clone())],
            "the write endpoints one agent published through a switchover"
        );
    }

    // 2. The agents cut from etcd (Patroni and the tools go on) while the
    // leader changes and etcd compacts what the watch would resume from: no
    // writes once unconfirmed, then the new leader.
    let to = c.streaming_replica(Duration::from_secs(90)).unwrap();
    relay.cut();
    c.switchover(Some(&to)).unwrap();
    let rev = c.etcd.revision().unwrap();
    c.etcd.ctl(&["compact", &rev.to_string()]).unwrap();
    all_write(&agents, &readers, None);
    relay.mend();
    all_write(&agents, &readers, Some(&to));

    // 3. etcd killed, the agents' reads failing for a few seconds (#431: not
    // one failed re-read and then stale for good), then back.
    c.etcd.kill_member(0);
    std::thread::sleep(Duration::from_secs(3));
    c.etcd.start_member(0).unwrap();
    let last = c.wait_leader(Duration::from_secs(90)).unwrap();
    all_write(&agents, &readers, Some(&last));

    // 4. etcd frozen: its watch goes silent, its heartbeats time out; writes
    // go to no endpoint once the last confirmation is ttl - loop_wait old,
    // reads go on; SIGCONT brings the leader back. Reads need a standby that
    // runs (and says so in its member key) when etcd freezes: Patroni cannot
    // start one while etcd is frozen, and the leader stops its PostgreSQL.
    c.wait_streaming(Duration::from_secs(90)).unwrap();
    for r in &readers {
        wait_for("reads on a standby before the freeze", || {
            let s = r.snapshot().ok()?;
            (s.read_alias().is_some() && s.read_alias() != Some(last.as_str())).then_some(())
        });
    }
    c.etcd.freeze_member(0, true);
    let frozen = Instant::now();
    for (a, r) in agents.iter().zip(&readers) {
        wait_for("writes to no endpoint with etcd frozen", || {
            (write_of(r).is_none()).then_some(())
        });
        a.wait_log("dcs: etcd lost");
    }
    // The bound under test: the last confirmation came before the freeze, so
    // from ttl - loop_wait after it no agent publishes writes anywhere (a tcp
    // probe cannot tell the primary Patroni demoted meanwhile from a primary).
    let bound = frozen + window + Duration::from_millis(500);
    std::thread::sleep(bound.saturating_duration_since(Instant::now()));
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        for (a, r) in agents.iter().zip(&readers) {
            let s = r.snapshot().unwrap();
            assert_eq!(
                s.write_alias(),
                None,
                "writes published {:?} after etcd froze (ttl - loop_wait = {window:?})\n{}",
                frozen.elapsed(),
                a.log()
            );
            assert_eq!(
                s.status,
                Status::ReadOnly,
                "reads go on (read endpoint {:?}, health {:#b})\n{}",
                s.read_alias(),
                s.health_mask,
                a.log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    c.etcd.freeze_member(0, false);
    let back = c.wait_leader(Duration::from_secs(90)).unwrap();
    all_write(&agents, &readers, Some(&back));

    // 5. The same with failsafe_mode: Patroni keeps its primary while every
    // member answers its POST /failsafe, and the agents keep writes on the
    // single member whose /primary answers 200.
    c.set_config("failsafe_mode=true").unwrap();
    wait_for("Patroni's failsafe key", || {
        let v = c
            .etcd
            .ctl(&["get", "--print-value-only", "/service/dbha/failsafe"])
            .ok()?;
        (!v.trim().is_empty()).then_some(())
    });
    // The agents have the config change through their watch.
    std::thread::sleep(Duration::from_secs(1));
    let leader = c.wait_leader(Duration::from_secs(30)).unwrap();
    c.etcd.freeze_member(0, true);
    // Sampled throughout: writes never leave the leader, also not at the
    // moment the confirmation expires.
    let until = Instant::now() + window + Duration::from_secs(3);
    while Instant::now() < until {
        for (a, r) in agents.iter().zip(&readers) {
            assert_eq!(write_of(r).as_deref(), Some(leader.as_str()), "{}", a.log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for a in &agents {
        assert!(a.log().contains("failsafe_mode:"), "{}", a.log());
    }
    c.etcd.freeze_member(0, false);
    c.set_config("failsafe_mode=false").unwrap();
    all_write(&agents, &readers, Some(&leader));

    // 6. kill -9 of the leader's Patroni and PostgreSQL: no writes at once
    // (this host's probes see the port refused), then the leader Patroni
    // elects once the lock expires.
    let current = c.wait_leader(Duration::from_secs(60)).unwrap();
    let killed = c.index(&current).unwrap();
    c.kill_node(killed);
    all_write(&agents, &readers, None);
    let elected = c.wait_leader(Duration::from_secs(90)).unwrap();
    assert_ne!(elected, current);
    all_write(&agents, &readers, Some(&elected));
    c.start_node(killed).unwrap();
    wait_for("the killed node's Patroni answering again", || {
        c.rest(killed, "/health").ok().map(|_| ())
    });

    for a in &agents {
        assert!(a.log().contains("dcs: etcd back"), "{}", a.log());
        assert!(!a.log().contains("panicked"), "{}", a.log());
    }
}

/// `dbha-agent status --json` of `state`: its DCS part.
fn dcs_status(state: &Path) -> serde_json::Value {
    let out = std::process::Command::new(dbha_tests::agent_bin())
        .args(["status", "--json", "--read-only-ok", "--state"])
        .arg(state)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"));
    j["dcs"].clone()
}

/// Waits until the DCS part of `status --json` has `key` = `want`.
fn wait_dcs_status(state: &Path, key: &str, want: serde_json::Value) -> serde_json::Value {
    dbha_harness::wait::poll(Duration::from_millis(20), PATIENCE, &mut || {
        let d = dcs_status(state);
        (d[key] == want).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "status --json: dcs.{key} never became {want}: {}",
            dcs_status(state)
        )
    })
    .0
}

/// Writes `value` at `key` under the fake cluster's prefix.
fn put(etcd: &Etcd, key: &str, value: &str) {
    etcd.ctl(&["put", &format!("/service/fake/{key}"), value])
        .unwrap();
}

fn member(port: u16, role: &str) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:1/patroni","state":"running","role":"{role}"}}"#
    )
}

/// Whether etcd's tools are here (under CI their absence fails).
fn etcd_tools() -> bool {
    dbha_tests::require("etcd", "for the DCS tests (etcd-server)").is_some()
        && dbha_tests::require("etcdctl", "for the DCS tests (etcd-client)").is_some()
}

/// The fake cluster's keys in `etcd`: two databases (listeners for the tcp
/// check), "a" the leader and primary, "b" a replica; ttl 6 and loop_wait 1,
/// so that confirmations are trusted for 5 s.
fn fake_cluster(etcd: &Etcd) -> (Vec<Listener>, Vec<(String, u16)>) {
    let listeners: Vec<Listener> = (0..2).map(|_| Listener::bind(0).unwrap()).collect();
    let dbs = vec![
        ("a".to_owned(), listeners[0].port),
        ("b".to_owned(), listeners[1].port),
    ];
    put(
        etcd,
        "config",
        r#"{"ttl":6,"loop_wait":1,"retry_timeout":2}"#,
    );
    put(etcd, "members/a", &member(listeners[0].port, "master"));
    put(etcd, "members/b", &member(listeners[1].port, "replica"));
    put(etcd, "leader", "a");
    (listeners, dbs)
}

#[test]
fn foreign_content_a_lost_quorum_and_an_agent_started_before_etcd() {
    if !etcd_tools() {
        return;
    }
    let dir = Scratch::new("dcs-fake").unwrap();
    let mut etcd = Etcd::start(dir.path(), 3, None).unwrap();
    let (listeners, dbs) = fake_cluster(&etcd);

    // Started while etcd is down: no writes, said so; then the leader.
    for i in 0..3 {
        etcd.kill_member(i);
    }
    let urls = etcd.client_urls();
    let (agents, readers) = start_agents(dir.path(), 1, |s| config(s, &urls, "fake", &dbs));
    agents[0].wait_log("dcs: etcd lost");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(write_of(&readers[0]), None);
    let state = agents[0].state.clone();
    let d = dcs_status(&state);
    assert_eq!(
        (&d["connected"], &d["no_writes"]),
        (&false.into(), &"unconfirmed".into()),
        "{d}"
    );
    // `watch` says what the DCS source does as it goes.
    let mut watch = dbha_tests::Children::default();
    let out = watch
        .push(
            std::process::Command::new(dbha_tests::agent_bin())
                .args(["watch", "--state"])
                .arg(&state)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
        .stdout
        .take()
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let lines = seen.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let mut all = lines.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    for i in 0..3 {
        etcd.start_member(i).unwrap();
    }
    all_write(&agents, &readers, Some("a"));
    // status shows the DCS source: connected, the leader and the database it
    // matched, a recent confirmation, no refusal.
    let d = wait_dcs_status(&state, "no_writes", serde_json::Value::Null);
    assert_eq!(d["connected"], true, "{d}");
    assert_eq!(
        (&d["leader"], &d["leader_alias"]),
        (&"a".into(), &"a".into())
    );
    assert_eq!(d["window_ms"], 5000, "{d}");
    assert!(d["confirmation_age_ms"].as_u64().unwrap() < 5000, "{d}");
    assert!(d["revision"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["failsafe"], false, "{d}");

    // Foreign content: each gets no write endpoint, loudly, and no crash.
    let unknown = free_port("127.0.0.1").unwrap();
    for (key, value, said) in [
        ("leader", "ghost".to_owned(), "has no usable member key"),
        ("members/a", member(unknown, "master"), "does not name"),
        ("members/a", "{\"conn_url\": [".to_owned(), "not JSON"),
        (
            "members/a",
            member(listeners[0].port, "replica"),
            "not a primary yet",
        ),
    ] {
        put(&etcd, key, &value);
        all_write(&agents, &readers, None);
        agents[0].wait_log(said);
        if value == "ghost" {
            let d = wait_dcs_status(&state, "no_writes", "unknown_member".into());
            assert_eq!(
                (&d["leader"], &d["leader_alias"]),
                (&"ghost".into(), &serde_json::Value::Null)
            );
        }
        put(&etcd, "leader", "a");
        put(&etcd, "members/a", &member(listeners[0].port, "master"));
        all_write(&agents, &readers, Some("a"));
    }

    // A member without quorum: linearizable reads fail there, and its
    // serializable (stale) answers are never asked for. Writes stop once the
    // confirmation is 5 s old, and come back with the quorum.
    etcd.kill_member(1);
    etcd.kill_member(2);
    let lost = Instant::now();
    all_write(&agents, &readers, None);
    assert!(
        lost.elapsed() <= Duration::from_secs(6),
        "{:?}",
        lost.elapsed()
    );
    let d = wait_dcs_status(&state, "no_writes", "unconfirmed".into());
    assert_eq!(d["connected"], false, "{d}");
    etcd.start_member(1).unwrap();
    etcd.start_member(2).unwrap();
    all_write(&agents, &readers, Some("a"));
    wait_dcs_status(&state, "connected", true.into());
    assert!(!agents[0].log().contains("panicked"), "{}", agents[0].log());
    drop(watch);
    let seen = seen.lock().unwrap().clone();
    for said in [
        "dcs: etcd LOST",
        "dcs: etcd connected",
        "leader ghost (matches no database)",
        "no writes: unknown_member",
        "(dcs: unconfirmed)",
    ] {
        assert!(seen.contains(said), "watch did not say {said:?}:\n{seen}");
    }
}

#[test]
fn etcd_over_tls_with_a_client_certificate_and_a_password() {
    if !etcd_tools() {
        return;
    }
    let dir = Scratch::new("dcs-tls").unwrap();
    let d = dir.path();
    // With --client-cert-auth, etcd's gateway refuses a client certificate
    // that has a CommonName (HTTP 400): "named" is one.
    let ca = Ca::new("dbha test etcd CA");
    let (server, server_key) = ca.sign(&["127.0.0.1", "localhost"], None);
    let (client, client_key) = ca.sign(&["dbha-client"], None);
    let (named, named_key) = ca.sign(&["dbha-client"], Some("dbha"));
    let (stranger, stranger_key) = Ca::new("another CA").sign(&["dbha-client"], None);
    let tls = patroni::EtcdTls {
        ca: file(d, "ca.pem", &ca.pem()),
        cert: file(d, "server.pem", &server),
        key: file(d, "server-key.pem", &server_key),
        client_cert: file(d, "client.pem", &client),
        client_key: file(d, "client-key.pem", &client_key),
    };
    let mut etcd = Etcd::start_with(d, 1, None, Some(tls.clone())).unwrap();
    // Authentication on, the agents' user allowed only to read the cluster's
    // prefix (as the operator's guide says to set it up).
    let _ = etcd.ctl(&["role", "add", "root"]);
    for args in [
        &["user", "add", "root", "--new-user-password=root-pw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "dbha-ro"],
        &[
            "role",
            "grant-permission",
            "dbha-ro",
            "read",
            "--prefix=true",
            "/service/fake/",
        ],
        &["user", "add", "dbha", "--new-user-password=dbha-pw"],
        &["user", "grant-role", "dbha", "dbha-ro"],
        &["auth", "enable"],
    ] {
        etcd.ctl(args).unwrap();
    }
    etcd.ctl_user = Some("root:root-pw".into());
    let (listeners, dbs) = fake_cluster(&etcd);

    let urls = etcd.client_urls();
    let good = file(d, "password", "dbha-pw\n");
    let wrong = file(d, "wrong-password", "not-it\n");
    let stranger_cert = file(d, "stranger.pem", &stranger);
    let stranger_key = file(d, "stranger-key.pem", &stranger_key);
    let named_cert = file(d, "named.pem", &named);
    let named_key = file(d, "named-key.pem", &named_key);
    // (agent, password file, client certificate and key)
    let setups = [
        ("good", &good, &tls.client_cert, &tls.client_key),
        ("bad-password", &wrong, &tls.client_cert, &tls.client_key),
        ("stranger", &good, &stranger_cert, &stranger_key),
        ("named", &good, &named_cert, &named_key),
    ];
    let agents: Vec<AgentProc> = setups
        .iter()
        .map(|(name, password, cert, key)| {
            AgentProc::start(d, name, |s| {
                config(s, &urls, "fake", &dbs).replace(
                    "timeout = \"1s\"\n",
                    &format!(
                        "timeout = \"1s\"\nuser = \"dbha\"\npassword_file = \"{}\"\ncacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                        password.display(),
                        tls.ca.display(),
                        cert.display(),
                        key.display()
                    ),
                )
            })
        })
        .collect();
    let readers: Vec<Reader> = agents.iter().map(AgentProc::reader).collect();
    // Over TLS, with the client certificate and the password: the leader.
    all_write(&agents[..1], &readers[..1], Some("a"));
    let status = wait_dcs_status(&agents[0].state, "connected", true.into());
    assert_eq!(status["leader_alias"], "a", "{status}");
    // A wrong password: refused by etcd, said so, no writes.
    agents[1].wait_log("authentication as \"dbha\" refused");
    // A client certificate etcd's CA did not sign: no TLS session, no writes.
    agents[2].wait_log("dcs: etcd lost");
    // A client certificate with a CommonName: the gateway refuses it, and the
    // log says what to do.
    agents[3].wait_log("refuses a client certificate that has a CommonName");
    std::thread::sleep(Duration::from_secs(1));
    for (a, r) in agents[1..].iter().zip(&readers[1..]) {
        assert_eq!(write_of(r), None, "{}", a.log());
        assert!(!a.log().contains("panicked"), "{}", a.log());
    }
    // A leader change reaches the authenticated agent through its watch.
    put(&etcd, "members/b", &member(listeners[1].port, "master"));
    put(&etcd, "members/a", &member(listeners[0].port, "replica"));
    put(&etcd, "leader", "b");
    all_write(&agents[..1], &readers[..1], Some("b"));
}
