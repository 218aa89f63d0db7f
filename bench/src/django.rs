//! The failover benchmark a Django user would run: a real Django app under
//! gunicorn (4 workers), 32 concurrent HTTP clients, each sending four requests
//! that only read to one that writes and reads (all inside ATOMIC_REQUESTS), a
//! primary with two streaming standbys (commits synchronous to the first, so a
//! promotion loses no acknowledged write), and a fault on the primary, the first
//! standby promoted 1 s later as an HA manager would. The same load and faults
//! for each strategy: the original recipe's router, libpq's multi-host list,
//! dbha's FailoverRouter, dbha's backend with WHEN_NONE="error" and in
//! read-only mode (the default). Reads and writes are counted apart. Then the
//! backend's cost per query against Django's own backend.
//!
//! With `--mariadb`: a MariaDB primary and its GTID replica, semi-synchronous
//! (lossless), the agent's mysql check with a monitor user, the application
//! as a user without SUPER; the strategies that apply to MySQL: the recipe's
//! router, a plain Django MySQL alias on the primary, dbha's FailoverRouter
//! and the dbha MySQL backend in read-only mode.

use crate::common::percentile;
use dbha_harness::pg::StopMode;
use dbha_tests::agentproc::{config, AgentProc, Timing};
use dbha_tests::live::Live;
use dbha_tests::netfault::Blackhole;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STRATEGIES: [(&str, &str); 5] = [
    ("recipe", "original recipe (router probing from requests)"),
    (
        "libpq",
        "libpq multi-host, target_session_attrs=read-write, connect_timeout=2",
    ),
    ("router", "dbha FailoverRouter"),
    ("backend-error", "dbha backend, WHEN_NONE=\"error\""),
    ("backend", "dbha backend, read-only mode (the default)"),
];
/// The strategies with `--mariadb` (libpq's host list has no MySQL
/// counterpart; a plain alias on the primary is what a Django user has).
const MARIADB_STRATEGIES: [(&str, &str); 4] = [
    ("recipe", "original recipe (router probing from requests)"),
    ("plain", "plain Django MySQL alias on the primary"),
    ("router", "dbha FailoverRouter"),
    (
        "backend",
        "dbha MySQL backend, read-only mode (the default)",
    ),
];

/// The application's user, its password and database on MariaDB.
const APP: (&str, &str, &str) = ("app", "app-pw", "app");
const MONITOR_PW: &str = "monitor-pw";

/// Of every `MIX` requests of a client, the last writes; the others only read.
const MIX: u64 = 5;
const FAULTS: [(&str, &str); 4] = [
    ("stop", "primary stopped (-m immediate)"),
    ("blackhole", "primary blackholed (nftables drop)"),
    ("freeze", "primary frozen (SIGSTOP)"),
    // Not a database fault: no promotion follows, and only the strategies that
    // read the agent are run.
    (
        "agent-restart",
        "agent restarted 3 times, 1 s apart (SIGTERM + start)",
    ),
];
/// The strategies that read the agent, the only ones an agent restart can touch.
const AGENT_READERS: [&str; 3] = ["router", "backend-error", "backend"];
const CLIENTS: usize = 32;
/// Each client starts a request every PACE (or, when one took longer, as soon as
/// it is answered): the same offered load whether a strategy fails fast or slowly.
const PACE: Duration = Duration::from_millis(50);
const WORKERS: usize = 4;
/// A request still unanswered after this is a failure (gunicorn's own worker
/// timeout is 30 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

struct Plan {
    repeats: usize,
    before: Duration,
    after: Duration,
    /// The agent's interval (and timeout); fastinter stays 10 ms.
    interval: Duration,
    /// MariaDB rather than PostgreSQL.
    mariadb: bool,
}

/// One request as a client saw it: seconds since the load began.
#[derive(Clone, Copy)]
struct Sample {
    start: f64,
    end: f64,
    ok: bool,
    seq: i64,
    /// The HTTP status, or 0 when there was no answer (refused, reset, timeout).
    status: u16,
    /// A request that writes (and reads); the others only read.
    write: bool,
}

/// What one trial measured.
struct Outcome {
    samples: Vec<Sample>,
    fault_at: f64,
    promoted_at: f64,
    /// When failover1 first answered as a writable primary (polled every 1 ms
    /// on a session of its own), and when the agent published it for writes.
    writable_at: Option<f64>,
    published_at: Option<f64>,
    /// Requests the schedule called for: every client, every PACE, for the run.
    offered: usize,
    missing: usize,
    /// Distinct epochs a reader saw from the fault on (agent restarts).
    epochs: usize,
    /// Queries the backend's watcher aborted (its warnings in gunicorn's log).
    aborted: usize,
}

impl Outcome {
    fn failures(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| !s.ok)
    }

    /// Requests that only read, failed, begun after the fault (not in flight
    /// at it).
    fn reads_failed_after_fault(&self) -> usize {
        self.failures()
            .filter(|s| !s.write && s.start > self.fault_at)
            .count()
    }

    /// Writes failed, begun after the agent published the promoted server.
    fn writes_failed_after_publication(&self) -> usize {
        let Some(p) = self.published_at else { return 0 };
        self.failures().filter(|s| s.write && s.start > p).count()
    }

    /// From failover1 taking writes to the end of the first acknowledged write
    /// after that, ms.
    fn first_write_ms(&self) -> Option<f64> {
        let w = self.writable_at?;
        self.samples
            .iter()
            .filter(|s| s.ok && s.write && s.end > w)
            .map(|s| (s.end - w) * 1e3)
            .min_by(f64::total_cmp)
    }

    /// Whether a request belongs to the detection-and-promotion window: still in
    /// flight at the fault or begun after it, and begun no later than 1 s after
    /// the promotion.
    fn in_window(&self, s: &Sample) -> bool {
        s.end >= self.fault_at && s.start <= self.promoted_at + 1.0
    }

    /// Failures outside the detection-and-promotion window.
    fn failures_outside(&self) -> usize {
        self.failures().filter(|s| !self.in_window(s)).count()
    }

    /// First failure's start to last failure's end, seconds (0 without failures).
    fn failure_window(&self) -> f64 {
        let first = self
            .failures()
            .map(|s| s.start)
            .fold(f64::INFINITY, f64::min);
        let last = self.failures().map(|s| s.end).fold(0.0, f64::max);
        (last - first).max(0.0)
    }

    /// Latencies (ms) of the requests in flight at the fault or begun between it
    /// and the end of the disturbance: the last failure, or 1 s after the
    /// promotion if later.
    fn fault_window_latencies(&self) -> Vec<f64> {
        let last_failure = self.failures().map(|s| s.end).fold(0.0, f64::max);
        let end = last_failure.max(self.promoted_at + 1.0);
        self.samples
            .iter()
            .filter(|s| s.end >= self.fault_at && s.start <= end)
            .map(|s| (s.end - s.start) * 1e3)
            .collect()
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: tests/setup.sh makes it (Django, gunicorn, psycopg)",
        p.display()
    );
    p
}

/// The environment the bench app and the overhead script run in.
fn python_env(cmd: &mut Command, bench_json: &str) {
    let root = root();
    let path = [
        root.join("bench/django_app"),
        root.join("bench"),
        root.join("reader/python"),
    ]
    .map(|p| p.display().to_string())
    .join(":");
    cmd.env("PYTHONPATH", path)
        .env("DBHA_BENCH", bench_json)
        .env("DJANGO_SETTINGS_MODULE", "benchapp.settings")
        .env("DBHA_LIBRARY", dbha_tests::target_dir().join("libdbha.so"));
}

/// The servers of a trial: PostgreSQL (a primary, two standbys) or MariaDB
/// (a primary, its replica), `default` first, `failover1` the one promoted.
enum Servers {
    Pg(Live),
    Maria(Box<dbha_tests::mariadb::Pair>),
}

impl Servers {
    fn dir(&self) -> &Path {
        match self {
            Servers::Pg(l) => l.dir.path(),
            Servers::Maria(p) => p.dir(),
        }
    }

    /// (name, host, port), in priority order.
    fn endpoints(&self) -> Vec<(String, String, u16)> {
        match self {
            Servers::Pg(l) => l
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.host.clone(), c.port))
                .collect(),
            Servers::Maria(p) => vec![
                ("default".into(), "127.0.0.1".into(), p.primary.port),
                ("failover1".into(), "127.0.0.1".into(), p.replica.port),
            ],
        }
    }

    fn port(&self, name: &str) -> u16 {
        self.endpoints()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, p)| p)
            .expect("a server of that name")
    }

    fn fault(&mut self, fault: &str, on: bool) {
        match (self, fault) {
            (Servers::Pg(l), "stop") if on => l
                .cluster("default")
                .stop(StopMode::Immediate)
                .expect("stop the primary"),
            (Servers::Pg(l), "freeze") => {
                if on {
                    l.cluster("default").freeze()
                } else {
                    l.cluster("default").thaw()
                }
            }
            (Servers::Maria(p), "stop") if on => p.primary.kill(),
            (Servers::Maria(p), "freeze") => p.primary.freeze(on),
            _ => {}
        }
    }

    fn promote(&self) {
        match self {
            Servers::Pg(l) => l.cluster("failover1").promote().expect("promote failover1"),
            Servers::Maria(p) => p.replica.promote().expect("promote failover1"),
        }
    }

    /// The seqs of the items on server `name`.
    fn items(&self, name: &str) -> std::collections::HashSet<i64> {
        let text = match self {
            Servers::Pg(l) => l.cluster(name).psql("SELECT seq FROM benchapp_item"),
            Servers::Maria(p) => {
                let s = if name == "default" {
                    &p.primary
                } else {
                    &p.replica
                };
                s.sql(&format!("SELECT seq FROM {}.benchapp_item", APP.2))
            }
        };
        text.expect("read the items")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn databases_json(&self) -> String {
        let dbs: Vec<String> = self
            .endpoints()
            .iter()
            .map(|(n, h, p)| format!("\"{n}\": {{\"host\": \"{h}\", \"port\": {p}}}"))
            .collect();
        let (user, password, database) = APP;
        match self {
            Servers::Pg(_) => format!("\"databases\": {{{}}}", dbs.join(", ")),
            Servers::Maria(_) => format!(
                "\"databases\": {{{}}}, \"kind\": \"mariadb\", \"user\": \"{user}\", \"password\": \"{password}\", \"database\": \"{database}\"",
                dbs.join(", ")
            ),
        }
    }
}

/// The servers and an agent choosing writes = primary, reads = standby,
/// probing every `interval`.
fn setup(interval: Duration, mariadb: bool) -> (Servers, AgentProc) {
    let t = Timing {
        interval_ms: interval.as_millis() as u64,
        timeout_ms: (interval.as_millis() as u64).max(200),
        rise: 2,
        fall: 2,
        stale_after_ms: (interval.as_millis() as u64 * 5).max(1000),
        failback: "sticky",
    };
    let servers = if mariadb {
        use dbha_tests::mariadb::{self, Pair};
        if mariadb::prerequisites().is_none() {
            eprintln!("dbha-bench django --mariadb needs the MariaDB server (apt-get install mariadb-server)");
            std::process::exit(1);
        }
        let p = Pair::start_semi_synchronous().expect("MariaDB");
        let (user, password, database) = APP;
        p.primary
            .sql(&format!("CREATE DATABASE {database}"))
            .and_then(|_| p.primary.create_user("dbha", MONITOR_PW, "SLAVE MONITOR"))
            .and_then(|()| p.primary.create_user(user, password, ""))
            .and_then(|()| {
                p.primary.sql(&format!(
                    "GRANT ALL ON {database}.* TO '{user}'@'127.0.0.1'"
                ))
            })
            .and_then(|_| p.replica.caught_up())
            .expect("users and the database");
        Servers::Maria(Box::new(p))
    } else {
        let Some(live) = Live::replicated("default", &["failover1", "failover2"], "trust", None)
        else {
            eprintln!("dbha-bench django needs the PostgreSQL server (apt-get install postgresql)");
            std::process::exit(1);
        };
        live.synchronous_to("failover1");
        Servers::Pg(live)
    };
    let endpoints = servers.endpoints();
    let (check, extra) = match &servers {
        Servers::Pg(_) => ("postgres", String::new()),
        Servers::Maria(p) => (
            "mysql",
            format!(
                "\nuser = \"dbha\"\npassword_file = \"{}\"",
                dbha_tests::password_file(p.dir(), "monitor.pw", MONITOR_PW).display()
            ),
        ),
    };
    let dbs: Vec<(&str, &str, u16, &str)> = endpoints
        .iter()
        .map(|(n, h, p)| (n.as_str(), h.as_str(), *p, check))
        .collect();
    let agent = AgentProc::start(servers.dir(), "agent", |s| {
        config(
            s,
            &t,
            &dbs,
            &format!("writes = \"primary\"\nreads = \"prefer-standby\"{extra}"),
        )
    });
    let r = agent.reader();
    crate::common::until("the agent to choose the primary", || {
        r.write_alias() == Some("default")
    });
    (servers, agent)
}

/// gunicorn in a process group of its own, so that its workers go with it.
struct Gunicorn(Child);

impl Drop for Gunicorn {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// One HTTP request (to the view that writes, or the one that only reads); its
/// status code.
fn request(addr: SocketAddr, seq: i64, write: bool) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let view = if write { "write" } else { "read" };
    write!(s, "GET /{view}?seq={seq} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut reply = Vec::with_capacity(512);
    s.take(64 * 1024).read_to_end(&mut reply)?;
    // "HTTP/1.x NNN ..."
    Ok(reply
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Polls `cluster` every 1 ms on a held session of its own, from now until
/// `until`, for the moment it answers as a writable primary.
fn watch_writable(
    (host, port): (String, u16),
    mariadb: bool,
    t0: Instant,
    until: Instant,
) -> Option<f64> {
    use dbha_agent::config::{Check, Database, Secret, Session, SslMode};
    let db = Database {
        alias: "failover1".into(),
        host,
        port,
        check: if mariadb {
            Check::Mysql
        } else {
            Check::Postgres
        },
        interval: Duration::from_millis(1),
        fastinter: Duration::from_millis(1),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
        session: Session::Held,
        session_lifetime: Duration::from_secs(3600),
        admission_interval: Duration::from_secs(3600),
        max_replica_lag: None,
        max_replica_lag_bytes: None,
        max_replica_lag_transactions: None,
        user: if mariadb { "dbha" } else { "postgres" }.into(),
        dbname: "postgres".into(),
        password: Secret::new(if mariadb { MONITOR_PW } else { "" }),
        password_source: None,
        sslmode: SslMode::Disable,
        sslrootcert: None,
        allow_cleartext_password: false,
        patroni: None,
        mysql: mariadb.then_some(dbha_agent::probe::mysql::Settings {
            login: true,
            server_public_key: None,
        }),
        member: None,
    };
    let mut prober = dbha_agent::probe::Prober::new(db);
    while Instant::now() < until {
        if let Ok(up) = prober.probe() {
            if up.role == Some(dbha_agent::probe::Role::Primary) && !up.read_only {
                return Some(t0.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

fn trial(strategy: &str, fault: &str, plan: &Plan) -> Outcome {
    let (mut servers, mut agent) = setup(plan.interval, plan.mariadb);
    let dir = servers.dir().to_path_buf();
    let dir = dir.as_path();
    let bench_json = format!(
        "{{\"strategy\": \"{strategy}\", {}, \"state\": \"{}\", \"status_dir\": \"{}\"}}",
        servers.databases_json(),
        agent.state.display(),
        dir.display()
    );
    // The recipe's status file, as of now, naming default.
    std::fs::write(
        dir.join("dbha_last_check.txt"),
        format!("{}\ndefault", local_time_now()),
    )
    .unwrap();
    let mut migrate = Command::new(python());
    python_env(&mut migrate, &bench_json);
    let out = migrate
        .args([
            "-m",
            "django",
            "migrate",
            "--database",
            "default",
            "-v",
            "0",
        ])
        .output()
        .expect("run migrate");
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = dbha_harness::pg::free_port("127.0.0.1").unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(root().join(".venv/bin/gunicorn"));
    python_env(&mut cmd, &bench_json);
    cmd.args([
        "--workers",
        &WORKERS.to_string(),
        "--bind",
        &addr.to_string(),
        "--timeout",
        "30",
        "--graceful-timeout",
        "1",
        "--log-level",
        "warning",
        "benchapp.wsgi:application",
    ])
    .stdout(Stdio::null())
    .stderr(
        std::fs::File::create(dir.join("gunicorn.log"))
            .map(Stdio::from)
            .unwrap_or(Stdio::null()),
    )
    .process_group(0);
    let _gunicorn = Gunicorn(
        cmd.spawn()
            .expect("start gunicorn (tests/setup.sh installs it)"),
    );
    crate::common::until("gunicorn to answer", || {
        request(addr, 0, true).is_ok_and(|status| status == 200)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut seq = (c as i64 + 1) * 1_000_000;
                // Spread the clients' first requests over one PACE.
                let mut due = Instant::now() + PACE * c as u32 / CLIENTS as u32;
                let mut k = c as u64;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    due = due.max(now) + PACE;
                    seq += 1;
                    k += 1;
                    let write = k.is_multiple_of(MIX);
                    let start = t0.elapsed().as_secs_f64();
                    let status = request(addr, seq, write).unwrap_or(0);
                    let end = t0.elapsed().as_secs_f64();
                    samples.push(Sample {
                        start,
                        end,
                        ok: status == 200,
                        seq,
                        status,
                        write,
                    });
                }
                samples
            })
        })
        .collect();

    std::thread::sleep(plan.before);
    let blackhole = (fault == "blackhole").then(|| {
        Blackhole::for_port(servers.port("default")).expect("nft, to blackhole the primary (root)")
    });
    let trace = dbha_tests::trace::Trace::start(&agent.state);
    let fault_at = t0.elapsed().as_secs_f64();
    let restart = fault == "agent-restart";
    let watcher = (!restart).then(|| {
        let at = ("127.0.0.1".to_string(), servers.port("failover1"));
        let until = Instant::now() + plan.after + Duration::from_secs(3);
        let mariadb = plan.mariadb;
        std::thread::spawn(move || watch_writable(at, mariadb, t0, until))
    });
    match fault {
        "stop" | "freeze" => servers.fault(fault, true),
        "agent-restart" => {
            for _ in 0..3 {
                agent.signal(nix::sys::signal::Signal::SIGTERM);
                let _ = agent.child().wait();
                agent.spawn();
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        _ => blackhole.as_ref().expect("a blackhole").on(),
    }
    if !restart {
        std::thread::sleep(Duration::from_secs(1));
        servers.promote();
    }
    let promoted_at = t0.elapsed().as_secs_f64();
    std::thread::sleep(plan.after);
    stop.store(true, Ordering::Relaxed);
    let offered = CLIENTS * (t0.elapsed().as_secs_f64() / PACE.as_secs_f64()) as usize;
    let samples: Vec<Sample> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    // Undo the fault so that everything can be stopped.
    match fault {
        "freeze" => servers.fault(fault, false),
        "blackhole" => blackhole.as_ref().expect("a blackhole").off(),
        _ => {}
    }

    let traced = trace.finish();
    let epochs = {
        let mut e: Vec<u64> = traced.seen.iter().map(|s| s.epoch).collect();
        e.dedup();
        e.len()
    };
    let published_at = traced
        .seen
        .iter()
        .find(|s| s.write.as_deref() == Some("failover1"))
        .map(|s| s.at.duration_since(t0).as_secs_f64());
    let writable_at = watcher.and_then(|w| w.join().expect("the writable watcher"));
    let aborted = std::fs::read_to_string(dir.join("gunicorn.log"))
        .unwrap_or_default()
        .matches("aborted this process's connection")
        .count();
    // Every acknowledged write must be on the promoted server (on the primary,
    // when nothing was promoted).
    let present = servers.items(if restart { "default" } else { "failover1" });
    let missing = samples
        .iter()
        .filter(|s| s.ok && s.write && !present.contains(&s.seq))
        .count();
    drop(agent);
    let outcome = Outcome {
        samples,
        fault_at,
        promoted_at,
        writable_at,
        published_at,
        offered,
        missing,
        epochs,
        aborted,
    };
    // Not expected of the backend: failures outside the window, or (read-only
    // mode) a read that began after the fault.
    if strategy == "backend"
        && (outcome.failures_outside() > 0 || outcome.reads_failed_after_fault() > 0)
    {
        for s in outcome
            .failures()
            .filter(|s| !s.write && s.start > outcome.fault_at)
        {
            eprintln!(
                "django: {fault}/{strategy}: a read failed that began {:+.3} s after the fault, {:.3} s long, HTTP status {}",
                s.start - outcome.fault_at,
                s.end - s.start,
                s.status
            );
        }
        for s in outcome.failures() {
            if !outcome.in_window(s) {
                eprintln!(
                    "django: {fault}/{strategy}: a failure outside the window: began {:+.3} s after the promotion, {:.3} s long, HTTP status {}",
                    s.start - promoted_at,
                    s.end - s.start,
                    s.status
                );
            }
        }
        let keep = dbha_tests::target_dir().join(format!("django-bench-{fault}-{strategy}.log"));
        let _ = std::fs::copy(dir.join("gunicorn.log"), &keep);
        let _ = std::fs::copy(dir.join("agent.log"), keep.with_extension("agent.log"));
        eprintln!("django: kept the logs in {}", keep.display());
    }
    outcome
}

/// Local wall-clock time as the recipe writes it ("%Y-%m-%d %H:%M:%S").
fn local_time_now() -> String {
    let out = Command::new("date")
        .arg("+%Y-%m-%d %H:%M:%S")
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn overhead(quick: bool) {
    let (servers, agent) = setup(Duration::from_millis(100), false);
    let bench_json = format!(
        "{{{}, \"state\": \"{}\"}}",
        servers.databases_json(),
        agent.state.display()
    );
    let mut cmd = Command::new(python());
    python_env(&mut cmd, &bench_json);
    cmd.arg(root().join("bench/django_overhead.py"));
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run django_overhead.py");
    assert!(out.status.success(), "django_overhead.py failed");
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

/// `only_fault`, `only_strategy`: run just those rows (by their short names);
/// `interval`: the agent's.
pub fn run(
    quick: bool,
    repeats: usize,
    only_fault: Option<&str>,
    only_strategy: Option<&str>,
    interval: Duration,
    mariadb: bool,
) {
    let plan = if quick {
        Plan {
            repeats: 1,
            before: Duration::from_secs(1),
            after: Duration::from_secs(4),
            interval,
            mariadb,
        }
    } else {
        Plan {
            repeats,
            before: Duration::from_secs(3),
            after: Duration::from_secs(12),
            interval,
            mariadb,
        }
    };
    let all_strategies: &[(&str, &str)] = if mariadb {
        &MARIADB_STRATEGIES
    } else {
        &STRATEGIES
    };
    println!(
        "| fault | strategy | reads offered / served / failed / not sent | reads failed, begun after the fault | writes offered / served / failed / not sent | writes failed, begun after writes were published | not served, all | failover1 writable -> first acknowledged write, ms (median) | failure window s (median) | p99 ms, fault window | max ms, fault window | acknowledged writes missing |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut unserved_by = std::collections::HashMap::new();
    let mut max_by = std::collections::HashMap::new();
    let faults: Vec<_> = FAULTS
        .into_iter()
        .filter(|(f, _)| only_fault.is_none_or(|o| o == *f))
        .filter(|(f, _)| !mariadb || *f != "agent-restart")
        // MariaDB's primary is killed (its crash) where PostgreSQL's is
        // stopped immediately.
        .map(|(f, name)| match f {
            "stop" if mariadb => (f, "primary killed (SIGKILL)"),
            _ => (f, name),
        })
        .collect();
    let strategies: Vec<_> = all_strategies
        .iter()
        .copied()
        .filter(|(s, _)| only_strategy.is_none_or(|o| o == *s))
        .collect();
    assert!(
        !faults.is_empty() && !strategies.is_empty(),
        "faults are {FAULTS:?}, strategies {all_strategies:?}"
    );
    let mut restarts = Vec::new();
    let mut targets = Vec::new();
    for &(fault, fault_name) in &faults {
        for &(strategy, strategy_name) in &strategies {
            if fault == "agent-restart" && !AGENT_READERS.contains(&strategy) {
                continue;
            }
            let outcomes: Vec<Outcome> = (0..plan.repeats)
                .map(|i| {
                    eprintln!("django: {fault} / {strategy} ({}/{})", i + 1, plan.repeats);
                    trial(strategy, fault, &plan)
                })
                .collect();
            let sent: usize = outcomes.iter().map(|o| o.samples.len()).sum();
            let offered: usize = outcomes.iter().map(|o| o.offered).sum::<usize>().max(sent);
            let failed: usize = outcomes.iter().map(|o| o.failures().count()).sum();
            let missing: usize = outcomes.iter().map(|o| o.missing).sum();
            // offered / served / failed / not sent, of the requests that write or
            // of those that only read.
            let kind = |write: bool| {
                let of = |o: &Outcome| o.samples.iter().filter(|s| s.write == write).count();
                let sent: usize = outcomes.iter().map(of).sum();
                let failed: usize = outcomes
                    .iter()
                    .map(|o| o.failures().filter(|s| s.write == write).count())
                    .sum();
                let share = if write { 1.0 } else { (MIX - 1) as f64 } / MIX as f64;
                let offered = ((offered as f64 * share).round() as usize).max(sent);
                format!(
                    "{offered} / {} / {failed} / {}",
                    sent - failed,
                    offered - sent
                )
            };
            let reads_after: usize = outcomes.iter().map(Outcome::reads_failed_after_fault).sum();
            let writes_after: usize = outcomes
                .iter()
                .map(Outcome::writes_failed_after_publication)
                .sum();
            let mut first_writes: Vec<f64> = outcomes
                .iter()
                .filter_map(Outcome::first_write_ms)
                .collect();
            first_writes.sort_by(f64::total_cmp);
            let first_write = if first_writes.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", percentile(&first_writes, 0.5))
            };
            let mut windows: Vec<f64> = outcomes.iter().map(Outcome::failure_window).collect();
            windows.sort_by(f64::total_cmp);
            let mut lat: Vec<f64> = outcomes
                .iter()
                .flat_map(Outcome::fault_window_latencies)
                .collect();
            lat.sort_by(f64::total_cmp);
            let (p99, max) = if lat.is_empty() {
                (0.0, 0.0)
            } else {
                (percentile(&lat, 0.99), lat[lat.len() - 1])
            };
            let unserved = (offered - (sent - failed)) as f64 / offered.max(1) as f64;
            println!(
                "| {fault_name} | {strategy_name} | {} | {reads_after} | {} | {writes_after} | {:.1}% | {first_write} | {:.2} | {p99:.0} | {max:.0} | {missing} |",
                kind(false),
                kind(true),
                unserved * 100.0,
                percentile(&windows, 0.5)
            );
            // Not served: failed, or never sent because the client was still waiting.
            unserved_by.insert((fault, strategy), unserved);
            if strategy == "backend" && fault != "agent-restart" {
                targets.push(format!(
                    "{fault_name}, read-only mode: {reads_after} reads failed that began after the fault (target 0), {writes_after} writes failed that began after writes were published (target 0), failover1 writable -> first acknowledged write {first_write} ms (median; target <= 50 at interval = 1s)"
                ));
            }
            max_by.insert((fault, strategy), max);
            if fault == "agent-restart" {
                restarts.push(format!(
                    "agent restarted 3 times under load, {strategy_name}: {failed} failed requests, {} queries aborted, readers saw {} epoch(s) (targets: 0, 0, 1)",
                    outcomes.iter().map(|o| o.aborted).sum::<usize>(),
                    outcomes.iter().map(|o| o.epochs).max().unwrap_or(0)
                ));
            }
        }
    }
    println!(
        "\n{} trial(s) per row: {CLIENTS} clients each starting a request every {PACE:?} ({} requests/s offered), of every {MIX} requests of a client {} only read and 1 writes and reads, all inside ATOMIC_REQUESTS; gunicorn {WORKERS} sync workers; the agent at interval {:?}, fastinter 10 ms, rise 2, fall 2; {:?} of load before the fault and {:?} after the promotion; the fault window runs from the fault (requests in flight then included) to the last failure or 1 s after the promotion, whichever is later",
        plan.repeats,
        CLIENTS as u128 * 1000 / PACE.as_millis(),
        MIX - 1,
        plan.interval,
        plan.before,
        plan.after
    );
    for line in restarts.iter().chain(&targets) {
        println!("{line}");
    }
    let other = if mariadb { "plain" } else { "libpq" };
    let compared = strategies.iter().any(|(s, _)| *s == "backend")
        && strategies.iter().any(|(s, _)| *s == other);
    let db_faults = faults.iter().filter(|(f, _)| *f != "agent-restart");
    for &(fault, fault_name) in db_faults.filter(|_| compared) {
        let ours = unserved_by[&(fault, "backend")];
        let best_other = strategies
            .iter()
            .filter(|(s, _)| *s != "backend")
            .map(|(s, _)| unserved_by[&(fault, *s)])
            .fold(f64::INFINITY, f64::min);
        let mut line = format!(
            "{fault_name}: offered requests not served (failed or not sent): backend {:.1}%, best other strategy {:.1}% (target: backend <= every other)",
            ours * 100.0,
            best_other * 100.0
        );
        if fault != "stop" {
            line += &format!(
                "; max latency backend / {other} = {:.3}{}",
                max_by[&(fault, "backend")] / max_by[&(fault, other)].max(1e-9),
                if mariadb { "" } else { " (target <= 0.2)" }
            );
        }
        println!("{line}");
    }
    println!();
    if !mariadb {
        overhead(quick);
    }
}
