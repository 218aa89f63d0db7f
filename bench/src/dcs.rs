//! Patroni followed from the app hosts, on a real cluster (three PostgreSQL 15
//! nodes under Debian's Patroni over etcd 3.4, on loopback):
//! - `dcs`: a leader change to the readers of five agents that follow etcd
//!   (`[dcs]`, tcp check), for switchovers and for `kill -9` of the leader;
//!   the same switchovers seen by an agent with the Patroni REST check and by
//!   HAProxy with Patroni's sample settings and at `inter 100ms`; and what each
//!   way of knowing the primary costs the databases, Patroni and etcd per app
//!   host.
//! - `dcs-soak`: etcd frozen and killed at random under five agents: writes
//!   never published longer than `ttl - loop_wait` after etcd was lost.

use crate::common::{clk_tck, percentile, tree_ticks, Rng};
use crate::haproxy::{haproxy_says, start_haproxy};
use dbha::Reader;
use dbha_agent::dcs::etcd::{self, Event, Watch};
use dbha_agent::http::{Conn, Request, Url};
use dbha_harness::pg::{free_port, Scratch};
use dbha_tests::agentproc::AgentProc;
use dbha_tests::metrics::{http_get, metric};
use dbha_tests::patroni::{self, Cluster, Timing};
use dbha_tests::Children;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Agents that follow etcd, each with its own state file: five app hosts.
const AGENTS: usize = 5;

fn install() -> dbha_harness::pg::Install {
    patroni::prerequisites().unwrap_or_else(|| {
        eprintln!("dbha-bench dcs needs Debian's patroni, python3-etcd, etcd-server, etcd-client and postgresql (tests/setup.sh installs them)");
        std::process::exit(1);
    })
}

/// How an agent that follows etcd probes: the tcp check (no login) or the
/// postgres check on a held session (it sees the promotion itself), at an
/// interval.
#[derive(Clone, Copy)]
struct Probing {
    check: &'static str,
    interval: &'static str,
}

const TCP: Probing = Probing {
    check: "tcp",
    interval: "1s",
};

const HELD: Probing = Probing {
    check: "postgres",
    interval: "1s",
};

/// An agent that follows the cluster's etcd.
fn dcs_config(state: &Path, c: &Cluster, metrics: Option<u16>, p: Probing) -> String {
    let etcd: Vec<String> = c
        .etcd
        .client_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let mut text = format!(
        "state_file = \"{}\"\ninterval = \"{}\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\nstale_after = \"{}\"\nreads = \"prefer-standby\"\n{}\n[dcs]\netcd = [{}]\nscope = \"{}\"\n",
        state.display(),
        p.interval,
        if p.interval == "1s" { "3s" } else { "15s" },
        metrics.map_or(String::new(), |p| format!("metrics_listen = \"127.0.0.1:{p}\"\n")),
        etcd.join(", "),
        c.scope
    );
    for n in &c.nodes {
        text.push_str(&format!(
            "\n[[database]]\nalias = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\ncheck = \"{}\"\n",
            n.name, n.pg_port, p.check
        ));
        if p.check == "postgres" {
            text.push_str("user = \"postgres\"\ndbname = \"postgres\"\n");
        }
    }
    text
}

/// An agent with the Patroni REST check (or, with `session`, the postgres
/// check), at the shipped interval of 1 s.
fn probe_config(state: &Path, c: &Cluster, check: &str, session: Option<&str>) -> String {
    let mut text = format!(
        "state_file = \"{}\"\ninterval = \"1s\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\nstale_after = \"3s\"\nwrites = \"primary\"\nreads = \"prefer-standby\"\n",
        state.display()
    );
    for n in &c.nodes {
        text.push_str(&format!(
            "\n[[database]]\nalias = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\ncheck = \"{check}\"\n",
            n.name, n.pg_port
        ));
        match session {
            Some(s) => text.push_str(&format!(
                "user = \"postgres\"\ndbname = \"postgres\"\nsession = \"{s}\"\n"
            )),
            None => text.push_str(&format!("patroni_url = \"{}\"\n", n.api_url())),
        }
    }
    text
}

/// A watcher of the bench's own on the cluster's etcd, started before the
/// trials: every event under the prefix, with the moment it arrived.
struct Watcher {
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    fn start(c: &Cluster) -> Watcher {
        let port = c.etcd.client_port(0);
        let prefix = format!("{}/{}/", c.namespace, c.scope);
        let start = c.etcd.revision().expect("etcd's revision") + 1;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, st) = (events.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut from = start;
            while !st.load(Ordering::Relaxed) {
                if let Err(e) = watch_once(port, &prefix, &mut from, &ev, &st) {
                    eprintln!("bench watcher: {e}; watching again from {from}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Watcher {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// When the first event after `t0` that `f` accepts arrived.
    fn first(&self, t0: Instant, f: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .find(|(at, e)| *at >= t0 && f(e))
            .map(|(at, _)| *at)
    }

    /// When the leader key was written with `name` after `t0`.
    fn leader_put(&self, t0: Instant, name: &str) -> Option<Instant> {
        self.first(t0, |e| {
            matches!(e, Event::Put(kv) if kv.key.ends_with("/leader") && kv.value == name.as_bytes())
        })
    }

    /// When the leader key was first deleted after `t0` (a switchover's
    /// release, an expired lease).
    fn leader_delete(&self, t0: Instant) -> Option<Instant> {
        self.first(
            t0,
            |e| matches!(e, Event::Delete { key, .. } if key.ends_with("/leader")),
        )
    }

    /// When `name`'s member key first said it is a running primary after `t0`.
    fn primary_put(&self, t0: Instant, name: &str) -> Option<Instant> {
        let key = format!("/members/{name}");
        self.first(t0, |e| {
            let Event::Put(kv) = e else { return false };
            let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            kv.key.ends_with(&key)
                && matches!(v["role"].as_str(), Some("master" | "primary"))
                && v["state"] == "running"
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch_once(
    port: u16,
    prefix: &str,
    from: &mut u64,
    events: &Mutex<Vec<(Instant, Event)>>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let url = Url::parse(&format!("http://127.0.0.1:{port}"))?;
    let tcp = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(1),
    )
    .map_err(|e| e.to_string())?;
    let mut conn = Conn::new(tcp, &url, None).map_err(|e| e.to_string())?;
    let body = etcd::watch_request(prefix, *from);
    let head = conn
        .send(
            &Request {
                method: "POST",
                path: "/v3/watch",
                authorization: None,
                json: Some(&body),
            },
            Instant::now() + Duration::from_secs(2),
        )
        .map_err(|e| e.to_string())?;
    if head.status != 200 {
        return Err(format!("HTTP {}", head.status));
    }
    let mut stream = etcd::Stream::default();
    while !stop.load(Ordering::Relaxed) {
        match conn.next(Instant::now() + Duration::from_millis(200), 1 << 20) {
            Ok(Some(bytes)) => {
                let at = Instant::now();
                for m in stream.push(&bytes)? {
                    match m {
                        Watch::Events(_, evs) => {
                            let mut all = events.lock().unwrap();
                            for e in evs {
                                *from = e.revision() + 1;
                                all.push((at, e));
                            }
                        }
                        Watch::Canceled { reason, .. } => {
                            return Err(format!("canceled: {reason}"))
                        }
                        Watch::Created(_) | Watch::Progress(_) => {}
                    }
                }
            }
            Ok(None) => return Err("the watch closed".into()),
            Err(dbha_agent::http::Error::Timeout) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// HAProxy with two backends over the cluster: Patroni's sample settings
/// (`option httpchk OPTIONS /primary`, `inter 3s fall 3 rise 2`, `timeout
/// check 5s`) and the same at `inter 100ms`.
struct Haproxy {
    socket: PathBuf,
    _children: Children,
}

impl Haproxy {
    fn start(dir: &Path, c: &Cluster) -> Haproxy {
        let haproxy = dbha_tests::require(
            "haproxy",
            "for the HAProxy comparison (apt-get install haproxy)",
        )
        .unwrap_or_else(|| {
            eprintln!("dbha-bench dcs: install haproxy first (tests/setup.sh does)");
            std::process::exit(1);
        });
        let socket = dir.join("haproxy.sock");
        let mut cfg = format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  timeout connect 4s\n  timeout client 30m\n  timeout server 30m\n  timeout check 5s\n",
            socket.display()
        );
        for (backend, inter) in [("sample", "3s"), ("fast", "100ms")] {
            cfg.push_str(&format!(
                "backend {backend}\n  option httpchk OPTIONS /primary\n  http-check expect status 200\n  default-server inter {inter} fall 3 rise 2 on-marked-down shutdown-sessions\n"
            ));
            for n in &c.nodes {
                cfg.push_str(&format!(
                    "  server {} 127.0.0.1:{} maxconn 100 check port {}\n",
                    n.name, n.pg_port, n.api_port
                ));
            }
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let mut children = Children::default();
        start_haproxy(&haproxy, &path, &mut children);
        Haproxy {
            socket,
            _children: children,
        }
    }
}

/// The one server of `backend` that HAProxy (its runtime API on `socket`) has
/// up, when exactly one is up and every other is down (a switch completed).
fn only_up(socket: &Path, backend: &str) -> Option<String> {
    let out = haproxy_says(socket, &format!("show servers state {backend}"))?;
    // "be_id be_name srv_id srv_name srv_addr srv_op_state ...": 2 is
    // running, 0 stopped.
    let states: Vec<(String, String)> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[1] == backend)
        .map(|f| (f[3].to_owned(), f[5].to_owned()))
        .collect();
    let up: Vec<&String> = states
        .iter()
        .filter(|(_, s)| s == "2")
        .map(|(n, _)| n)
        .collect();
    let down = states.iter().filter(|(_, s)| s == "0").count();
    (up.len() == 1 && down + 1 == states.len()).then(|| up[0].clone())
}

/// Who sees the switch, and when.
struct Observers {
    /// The five agents that follow etcd, then the Patroni REST check's.
    states: Vec<PathBuf>,
    haproxy: Haproxy,
}

const BACKENDS: [&str; 2] = ["sample", "fast"];

/// Per observer: when it first showed another write endpoint, and which.
type Seen = Vec<Option<(Instant, String)>>;

/// Per reader: when it first showed writes anywhere but `from` (none
/// included).
type Left = Vec<Option<Instant>>;

/// When each observer first showed a write endpoint other than `from`, and
/// which: the readers (polled every 100 µs) and HAProxy's two backends
/// (polled every 2 ms), until all have or `within` passed; and when each
/// reader first stopped showing `from`.
fn observe(obs: &Observers, from: &str, within: Duration, go: impl FnOnce()) -> (Seen, Seen, Left) {
    let until = Instant::now() + within;
    let states = obs.states.clone();
    let old = from.to_owned();
    let readers = std::thread::spawn(move || {
        let rs: Vec<Reader> = states.iter().map(|s| Reader::open(s).unwrap()).collect();
        let mut seen: Seen = vec![None; rs.len()];
        let mut left: Left = vec![None; rs.len()];
        while Instant::now() < until && seen.iter().any(Option::is_none) {
            for ((r, s), l) in rs.iter().zip(seen.iter_mut()).zip(left.iter_mut()) {
                if s.is_none() {
                    let w = r.write_alias();
                    if w != Some(old.as_str()) && l.is_none() {
                        *l = Some(Instant::now());
                    }
                    if let Some(w) = w.filter(|w| *w != old) {
                        *s = Some((Instant::now(), w.to_owned()));
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        (seen, left)
    });
    let socket = obs.haproxy.socket.clone();
    let old = from.to_owned();
    let haproxy = std::thread::spawn(move || {
        let mut seen: Seen = vec![None; BACKENDS.len()];
        while Instant::now() < until && seen.iter().any(Option::is_none) {
            for (b, s) in BACKENDS.iter().zip(seen.iter_mut()) {
                if s.is_none() {
                    if let Some(up) = only_up(&socket, b).filter(|u| *u != old) {
                        *s = Some((Instant::now(), up));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    });
    go();
    let (seen, left) = readers.join().unwrap();
    (seen, haproxy.join().unwrap(), left)
}

/// Waits until every reader writes to `leader` and HAProxy's backends have
/// only it up.
fn steady(obs: &Observers, leader: &str) {
    let rs: Vec<Reader> = obs
        .states
        .iter()
        .map(|s| Reader::open(s).unwrap())
        .collect();
    let ok = dbha_harness::wait::poll(Duration::from_millis(20), Duration::from_secs(120), || {
        let readers = rs.iter().all(|r| r.write_alias() == Some(leader));
        let haproxy = BACKENDS
            .iter()
            .all(|b| only_up(&obs.haproxy.socket, b).as_deref() == Some(leader));
        (readers && haproxy).then_some(())
    });
    assert!(
        ok.is_some(),
        "readers and HAProxy did not settle on {leader}"
    );
}

/// One trial's figures, ms.
#[derive(Default)]
struct Trial {
    /// Patroni: from the command (or the kill) to the new leader key.
    to_key: f64,
    /// From the new leader key to each of the five agents' readers.
    dcs_from_key: Vec<f64>,
    /// From the member key that says the new leader is a running primary.
    dcs_from_role: Vec<f64>,
    /// From the old leader key's deletion to each of the five agents'
    /// readers showing no write endpoint (negative: before it).
    dcs_left_from_delete: Vec<f64>,
    patroni_check: Option<f64>,
    /// The agent that follows etcd with the postgres check.
    dcs_held: Option<f64>,
    haproxy: [Option<f64>; 2],
}

fn ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        later.duration_since(earlier).as_secs_f64() * 1e3
    } else {
        -(earlier.duration_since(later).as_secs_f64() * 1e3)
    }
}

/// A switchover (or, with `kill`, kill -9 of the leader's Patroni and
/// PostgreSQL) observed; the killed node is started again and the cluster
/// waited for.
fn trial(c: &mut Cluster, w: &Watcher, obs: &Observers, kill: bool) -> Trial {
    let leader = c.wait_leader(Duration::from_secs(120)).unwrap();
    let candidate = if kill {
        None
    } else {
        Some(c.streaming_replica(Duration::from_secs(120)).unwrap())
    };
    steady(obs, &leader);
    let t0 = Instant::now();
    let within = Duration::from_secs(if kill { 90 } else { 60 });
    let killed = c.index(&leader).unwrap();
    let (readers, haproxy, left) = observe(obs, &leader, within, || {
        if kill {
            c.kill_node(killed);
        } else {
            c.switchover(candidate.as_deref()).unwrap();
        }
    });
    let new = c.wait_leader(Duration::from_secs(120)).unwrap();
    for (i, r) in readers.iter().enumerate() {
        match r {
            Some((_, w)) if *w == new => {}
            other => panic!(
                "observer {i} saw {:?}, Patroni's new leader is {new}",
                other.as_ref().map(|o| &o.1)
            ),
        }
    }
    let key = w
        .leader_put(t0, &new)
        .unwrap_or_else(|| panic!("the bench's watcher saw no leader key for {new}"));
    let role = w
        .primary_put(t0, &new)
        .unwrap_or_else(|| panic!("the bench's watcher saw no member key of {new} as primary"));
    let deleted = w
        .leader_delete(t0)
        .unwrap_or_else(|| panic!("the bench's watcher saw no deletion of {leader}'s leader key"));
    let at = |o: &Option<(Instant, String)>| o.as_ref().map(|(t, _)| *t);
    let t = Trial {
        to_key: ms(key, t0),
        dcs_from_key: readers[..AGENTS]
            .iter()
            .filter_map(at)
            .map(|t| ms(t, key))
            .collect(),
        dcs_from_role: readers[..AGENTS]
            .iter()
            .filter_map(at)
            .map(|t| ms(t, role))
            .collect(),
        dcs_left_from_delete: left[..AGENTS]
            .iter()
            .flatten()
            .map(|&t| ms(t, deleted))
            .collect(),
        patroni_check: at(&readers[AGENTS]).map(|t| ms(t, key)),
        dcs_held: at(&readers[AGENTS + 1]).map(|t| ms(t, key)),
        haproxy: [
            at(&haproxy[0])
                .filter(|_| haproxy[0].as_ref().is_some_and(|h| h.1 == new))
                .map(|t| ms(t, key)),
            at(&haproxy[1])
                .filter(|_| haproxy[1].as_ref().is_some_and(|h| h.1 == new))
                .map(|t| ms(t, key)),
        ],
    };
    eprintln!(
        "{}: {leader} -> {new}: key after {:.0} ms; dcs left {:?} ms from the delete; dcs {:?} ms from key ({:?} from role); patroni check {:?}; dcs with held sessions {:?}; haproxy {:?}",
        if kill { "kill" } else { "switchover" },
        t.to_key,
        t.dcs_left_from_delete.iter().map(|v| v.round()).collect::<Vec<_>>(),
        t.dcs_from_key.iter().map(|v| v.round()).collect::<Vec<_>>(),
        t.dcs_from_role.iter().map(|v| v.round()).collect::<Vec<_>>(),
        t.patroni_check.map(f64::round),
        t.dcs_held.map(f64::round),
        t.haproxy.map(|h| h.map(f64::round))
    );
    if kill {
        c.start_node(killed).unwrap();
        c.wait_streaming(Duration::from_secs(120)).unwrap();
    }
    t
}

fn p50_max(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    // + 0.0: a -0 (an agent a hair before the bench's own watcher) shows as 0.
    format!(
        "{:.0} / {:.0}",
        percentile(&s, 0.5).round() + 0.0,
        s[s.len() - 1].round() + 0.0
    )
}

fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    percentile(&s, 0.5)
}

/// What the servers have used so far: PostgreSQL sessions (logins) and CPU
/// ticks of every node's PostgreSQL, Patroni and etcd.
#[derive(Clone, Copy, Default)]
struct Usage {
    sessions: f64,
    pg: u64,
    patroni: u64,
    etcd: u64,
}

fn usage(c: &Cluster, psql: &Path) -> Usage {
    let mut u = Usage::default();
    for n in &c.nodes {
        let out = Command::new(psql)
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-p", &n.pg_port.to_string()])
            .args(["-c", "SELECT sum(sessions) FROM pg_stat_database"])
            .output()
            .expect("psql");
        u.sessions += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .unwrap_or(0.0);
        u.pg += n
            .postmaster_pid()
            .and_then(|p| u32::try_from(p.as_raw()).ok())
            .map_or(0, tree_ticks);
        u.patroni += n
            .patroni_pid()
            .and_then(crate::common::proc_stat)
            .map_or(0, |s| s.own);
    }
    u.etcd = c.etcd.pid(0).map_or(0, tree_ticks);
    u
}

/// One way of knowing the primary run by `AGENTS` agents for `seconds`: per
/// app host and hour, logins and CPU seconds (PostgreSQL, Patroni, etcd), and
/// etcd requests per second, from which `base` (no agents) is taken.
struct Cost {
    what: &'static str,
    logins: f64,
    pg_s: f64,
    patroni_s: f64,
    etcd_s: f64,
    etcd_requests: Option<f64>,
}

fn measure(
    c: &Cluster,
    psql: &Path,
    dir: &Path,
    seconds: u64,
    configure: &dyn Fn(&Path, Option<u16>) -> String,
) -> (Usage, Usage, Duration, Option<f64>) {
    let leader = c.wait_leader(Duration::from_secs(60)).unwrap();
    let ports: Vec<u16> = (0..AGENTS)
        .map(|_| free_port("127.0.0.1").unwrap())
        .collect();
    let agents: Vec<AgentProc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| AgentProc::start(dir, &format!("cost{i}"), |s| configure(s, Some(*p))))
        .collect();
    for a in &agents {
        let r = a.reader();
        dbha_harness::wait::poll(Duration::from_millis(10), Duration::from_secs(60), || {
            (r.write_alias() == Some(leader.as_str())).then_some(())
        })
        .unwrap_or_else(|| panic!("no writes to {leader}\n{}", a.log()));
    }
    std::thread::sleep(Duration::from_secs(2));
    let requests = |_: ()| -> Option<f64> {
        let mut sum = 0.0;
        for p in &ports {
            let text = http_get(&format!("127.0.0.1:{p}"), "/metrics");
            if !text.contains("dbha_dcs_requests_total") {
                return None;
            }
            sum += metric(&text, "dbha_dcs_requests_total");
        }
        Some(sum)
    };
    let (u0, r0, t0) = (usage(c, psql), requests(()), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (u1, r1, took) = (usage(c, psql), requests(()), t0.elapsed());
    drop(agents);
    let per_s = r0.zip(r1).map(|(a, b)| (b - a) / took.as_secs_f64());
    (u0, u1, took, per_s)
}

/// Per second, from `a` to `b` over `took`: sessions and CPU ticks.
#[derive(Clone, Copy, Default)]
struct Rates {
    sessions: f64,
    pg: f64,
    patroni: f64,
    etcd: f64,
}

fn rates(a: &Usage, b: &Usage, took: Duration) -> Rates {
    let s = took.as_secs_f64();
    let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / s;
    Rates {
        sessions: (b.sessions - a.sessions) / s,
        pg: d(a.pg, b.pg),
        patroni: d(a.patroni, b.patroni),
        etcd: d(a.etcd, b.etcd),
    }
}

fn cost_of(
    what: &'static str,
    (u0, u1, took, requests): (Usage, Usage, Duration, Option<f64>),
    base: &Rates,
) -> Cost {
    let r = rates(&u0, &u1, took);
    // Per second of the cluster less its own, to per app host and hour.
    let host_hour = 3600.0 / AGENTS as f64;
    let tck = clk_tck();
    Cost {
        what,
        logins: (r.sessions - base.sessions) * host_hour,
        pg_s: (r.pg - base.pg) / tck * host_hour,
        patroni_s: (r.patroni - base.patroni) / tck * host_hour,
        etcd_s: (r.etcd - base.etcd) / tck * host_hour,
        etcd_requests: requests.map(|r| r / AGENTS as f64),
    }
}

pub fn run(quick: bool, switchovers: usize, kills: usize, seconds: u64) {
    let install = install();
    let psql = install.bindir.join("psql");
    let mut c = Cluster::start(&install, 3, 1, Timing::default()).unwrap();
    let dir = Scratch::new("bench-dcs").unwrap();
    let w = Watcher::start(&c);
    let mut agents: Vec<AgentProc> = (0..AGENTS)
        .map(|i| {
            AgentProc::start(dir.path(), &format!("dcs{i}"), |s| {
                dcs_config(s, &c, None, TCP)
            })
        })
        .collect();
    agents.push(AgentProc::start(dir.path(), "patroni-check", |s| {
        probe_config(s, &c, "patroni", None)
    }));
    agents.push(AgentProc::start(dir.path(), "dcs-postgres", |s| {
        dcs_config(s, &c, None, HELD)
    }));
    let obs = Observers {
        states: agents.iter().map(|a| a.state.clone()).collect(),
        haproxy: Haproxy::start(dir.path(), &c),
    };
    let (switchovers, kills, seconds) = if quick {
        (1, 1, 5)
    } else {
        (switchovers, kills, seconds)
    };
    let sw: Vec<Trial> = (0..switchovers)
        .map(|_| trial(&mut c, &w, &obs, false))
        .collect();
    let kl: Vec<Trial> = (0..kills).map(|_| trial(&mut c, &w, &obs, true)).collect();
    drop(obs);
    drop(agents);
    let t = c.timing;
    println!(
        "| leader change (Patroni ttl {}, loop_wait {}, retry_timeout {}) | trials | old leader key deleted to each of five agents' readers without writes | spread | Patroni: start to new leader key | new leader key to each reader | member key says primary to each reader | spread across the five agents |",
        t.ttl, t.loop_wait, t.retry_timeout
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (what, trials) in [
        ("`patronictl switchover`", &sw),
        ("`kill -9` of the leader's Patroni and PostgreSQL", &kl),
    ] {
        if trials.is_empty() {
            continue;
        }
        let all = |f: &dyn Fn(&Trial) -> Vec<f64>| trials.iter().flat_map(f).collect::<Vec<f64>>();
        let spread_of = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            hi - lo
        };
        let spread = all(&|t| vec![spread_of(&t.dcs_from_key)]);
        let left_spread = all(&|t| vec![spread_of(&t.dcs_left_from_delete)]);
        println!(
            "| {what} | {} | {} | {} | {} | {} | {} | {} |",
            trials.len(),
            p50_max(&all(&|t| t.dcs_left_from_delete.clone())),
            p50_max(&left_spread),
            p50_max(&all(&|t| vec![t.to_key])),
            p50_max(&all(&|t| t.dcs_from_key.clone())),
            p50_max(&all(&|t| t.dcs_from_role.clone())),
            p50_max(&spread),
        );
    }
    println!();
    println!(
        "ms, p50 / max over every agent of every trial (spread: per trial, the last agent's switch less the first's; negative: before the key changed, this host's probe having seen the old leader go). Agents: [dcs] on the cluster's etcd, tcp check at interval 1s; the keys' times are when a watcher of the bench's own, started before, received them."
    );
    println!();
    let dcs_p50 = p50(&sw
        .iter()
        .flat_map(|t| t.dcs_from_key.clone())
        .collect::<Vec<_>>());
    println!(
        "| switchover seen ({} trials), ms from the new leader key | p50 / max | p50 / the five [dcs] agents' p50 |",
        sw.len()
    );
    println!("|---|---:|---:|");
    let rows: [(&str, Vec<f64>); 5] = [
        (
            "dbha, five agents following etcd ([dcs], tcp check)",
            sw.iter().flat_map(|t| t.dcs_from_key.clone()).collect(),
        ),
        (
            "dbha, an agent following etcd with the postgres check (held session)",
            sw.iter().filter_map(|t| t.dcs_held).collect(),
        ),
        (
            "dbha, `check = \"patroni\"` (REST API), interval 1s, fall 2, rise 2",
            sw.iter().filter_map(|t| t.patroni_check).collect(),
        ),
        (
            "HAProxy, Patroni's sample (`OPTIONS /primary`, inter 3s fall 3 rise 2)",
            sw.iter().filter_map(|t| t.haproxy[0]).collect(),
        ),
        (
            "HAProxy, the same at inter 100ms",
            sw.iter().filter_map(|t| t.haproxy[1]).collect(),
        ),
    ];
    for (what, v) in &rows {
        println!(
            "| {what} | {} | {:.0} |",
            p50_max(v),
            p50(v) / dcs_p50.max(0.001)
        );
    }
    println!();
    println!(
        "dbha: the reader hands out the new leader; HAProxy: the new leader is the one server up in its backend (all others down). Same switchovers, same run."
    );
    println!();

    // What each way costs the servers, per app host.
    let base = {
        let (u0, t0) = (usage(&c, &psql), Instant::now());
        std::thread::sleep(Duration::from_secs(seconds));
        rates(&u0, &usage(&c, &psql), t0.elapsed())
    };
    let d = dir.path();
    let costs = [
        cost_of(
            "postgres check, held session (the default)",
            measure(&c, &psql, d, seconds, &|s, m| {
                with_metrics(probe_config(s, &c, "postgres", Some("held")), m)
            }),
            &base,
        ),
        cost_of(
            "postgres check, a login per probe (`session = \"per-probe\"`)",
            measure(&c, &psql, d, seconds, &|s, m| {
                with_metrics(probe_config(s, &c, "postgres", Some("per-probe")), m)
            }),
            &base,
        ),
        cost_of(
            "Patroni REST check (`check = \"patroni\"`)",
            measure(&c, &psql, d, seconds, &|s, m| {
                with_metrics(probe_config(s, &c, "patroni", None), m)
            }),
            &base,
        ),
        cost_of(
            "following etcd (`[dcs]`), tcp check",
            measure(&c, &psql, d, seconds, &|s, m| dcs_config(s, &c, m, TCP)),
            &base,
        ),
        cost_of(
            "following etcd, tcp check at interval 5s",
            measure(&c, &psql, d, seconds, &|s, m| {
                dcs_config(
                    s,
                    &c,
                    m,
                    Probing {
                        interval: "5s",
                        ..TCP
                    },
                )
            }),
            &base,
        ),
        cost_of(
            "following etcd, postgres check (held session)",
            measure(&c, &psql, d, seconds, &|s, m| dcs_config(s, &c, m, HELD)),
            &base,
        ),
    ];
    println!(
        "| per app host ({AGENTS} agents, {seconds} s each, interval 1s unless said, three nodes) | database logins per hour | PostgreSQL CPU s per hour | Patroni CPU s per hour | etcd CPU s per hour | etcd requests per second |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for k in &costs {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            k.what,
            k.logins.max(0.0),
            k.pg_s,
            k.patroni_s,
            k.etcd_s,
            k.etcd_requests.map_or("0".into(), |r| format!("{r:.2}"))
        );
    }
    println!();
    println!(
        "Logins: sessions established (pg_stat_database.sessions) on the three servers; CPU: the postmasters with their backends (live and reaped), the Patroni daemons, etcd, from /proc; each less what the cluster uses with no agent over as long (Patroni's own loop, replication). etcd requests: the agents' dbha_dcs_requests_total (reads, heartbeats, watches)."
    );
}

/// `text` with `metrics_listen` on `port`.
fn with_metrics(text: String, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("metrics_listen = \"127.0.0.1:{p}\"\n{text}"),
        None => text,
    }
}

/// etcd frozen (SIGSTOP) or killed at random, for a random while of up to
/// twice the window, between switchovers, under five agents whose readers are
/// sampled every millisecond: from the moment etcd is lost, no reader may show
/// a write endpoint for longer than `ttl - loop_wait` (the last confirmation
/// was before the loss); once etcd is back, writes must come back.
pub fn soak(seconds: u64, seed: u64) {
    let install = install();
    let mut c = Cluster::start(&install, 3, 1, Timing::default()).unwrap();
    let dir = Scratch::new("bench-dcs-soak").unwrap();
    let agents: Vec<AgentProc> = (0..AGENTS)
        .map(|i| {
            AgentProc::start(dir.path(), &format!("dcs{i}"), |s| {
                dcs_config(s, &c, None, TCP)
            })
        })
        .collect();
    let t = c.timing;
    let window = Duration::from_secs(u64::from(t.ttl - t.loop_wait));
    let leader = c.wait_leader(Duration::from_secs(60)).unwrap();
    for a in &agents {
        let r = a.reader();
        dbha_harness::wait::poll(Duration::from_millis(10), Duration::from_secs(60), || {
            (r.write_alias() == Some(leader.as_str())).then_some(())
        })
        .unwrap_or_else(|| panic!("no writes to {leader}\n{}", a.log()));
    }
    // The checker: while etcd is lost (since `lost`), the latest moment any
    // reader showed a write endpoint.
    let lost: Arc<Mutex<Option<Instant>>> = Arc::default();
    let latest: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let checker = {
        let (lost, latest, stop, reads) =
            (lost.clone(), latest.clone(), stop.clone(), reads.clone());
        let states: Vec<PathBuf> = agents.iter().map(|a| a.state.clone()).collect();
        std::thread::spawn(move || {
            let rs: Vec<Reader> = states.iter().map(|s| Reader::open(s).unwrap()).collect();
            while !stop.load(Ordering::Relaxed) {
                let since = *lost.lock().unwrap();
                for r in &rs {
                    let w = r.write_alias().is_some();
                    reads.fetch_add(1, Ordering::Relaxed);
                    if w && since.is_some() {
                        *latest.lock().unwrap() = Some(Instant::now());
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let (mut frozen, mut killed, mut switchovers, mut failed_switchovers) = (0, 0, 0, 0);
    let mut repaired = 0;
    let mut longest = Duration::ZERO;
    let mut violations = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        let down = rng.ms(500, 2 * window.as_millis() as u64);
        match rng.below(3) {
            0 | 1 => {
                let kill = rng.below(2) == 0;
                let at = Instant::now();
                *latest.lock().unwrap() = None;
                *lost.lock().unwrap() = Some(at);
                if kill {
                    c.etcd.kill_member(0);
                    killed += 1;
                } else {
                    c.etcd.freeze_member(0, true);
                    frozen += 1;
                }
                std::thread::sleep(down);
                // The episode ends before etcd is back: writes may return then.
                *lost.lock().unwrap() = None;
                let last = latest.lock().unwrap().take();
                if kill {
                    c.etcd.start_member(0).unwrap();
                } else {
                    c.etcd.freeze_member(0, false);
                }
                if let Some(l) = last {
                    let after = l.duration_since(at);
                    longest = longest.max(after);
                    if after > window + Duration::from_millis(50) {
                        violations.push(format!(
                            "writes published {after:?} after etcd was {} (window {window:?})",
                            if kill { "killed" } else { "frozen" }
                        ));
                    }
                }
                eprintln!(
                    "etcd {} for {down:?}: writes published until {:?} after",
                    if kill { "killed" } else { "frozen" },
                    last.map(|l| l.duration_since(at))
                );
            }
            _ => match c
                .streaming_replica(Duration::from_secs(60))
                .and_then(|to| c.switchover(Some(&to)))
            {
                Ok(()) => switchovers += 1,
                Err(e) => {
                    eprintln!("switchover: {e}");
                    failed_switchovers += 1;
                }
            },
        }
        // Back: Patroni's leader, and every agent writing to it. A leader
        // whose PostgreSQL never comes back after Patroni demoted it (seen
        // with Patroni 3.0.2: "restarting after failure" with its server in
        // recovery, waiting for WAL, for minutes) is restarted: Patroni's
        // trouble, counted, not the agents'.
        let leader = match c.wait_leader(Duration::from_secs(90)) {
            Ok(l) => l,
            Err(e) => {
                let stuck = c.leader().and_then(|l| c.index(&l));
                eprintln!("Patroni has no working leader; restarting {stuck:?}: {e}");
                if let Some(i) = stuck {
                    c.kill_node(i);
                    c.start_node(i).unwrap();
                }
                repaired += 1;
                c.wait_leader(Duration::from_secs(120)).unwrap()
            }
        };
        for a in &agents {
            let r = a.reader();
            let back = dbha_harness::wait::poll(
                Duration::from_millis(10),
                Duration::from_secs(60),
                || (r.write_alias() == Some(leader.as_str())).then_some(()),
            );
            if back.is_none() {
                violations.push(format!(
                    "{}: writes did not come back to {leader} within 60 s of etcd's return",
                    a.state.display()
                ));
            }
        }
        std::thread::sleep(rng.ms(200, 2000));
    }
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    for a in &agents {
        assert!(!a.log().contains("panicked"), "{}", a.log());
    }
    println!(
        "| etcd lost at random ({:.0} s, seed {seed}, {AGENTS} agents) | etcd frozen | etcd killed | switchovers | Patroni leaders restarted by hand | reads checked | longest writes were published after etcd was lost | ttl - loop_wait | violations |",
        start.elapsed().as_secs_f64()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| Patroni ttl {}, loop_wait {}; losses of 0.5 s to {:?} | {frozen} | {killed} | {switchovers}{} | {repaired} | {} | {:.0} ms | {:.0} ms | {} |",
        t.ttl,
        t.loop_wait,
        2 * window,
        if failed_switchovers > 0 {
            format!(" ({failed_switchovers} refused)")
        } else {
            String::new()
        },
        reads.load(Ordering::Relaxed),
        longest.as_secs_f64() * 1e3,
        window.as_secs_f64() * 1e3,
        violations.len()
    );
    for v in &violations {
        eprintln!("VIOLATION: {v}");
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
}
