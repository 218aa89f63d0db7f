//! dbha's benchmarks. Each prints Markdown tables for BENCHMARKS.md, with ratios
//! computed from figures of the same run. `all` runs every one (and the Python
//! benchmark) and rewrites the generated parts of BENCHMARKS.md:
//!
//!     tests/setup.sh && cargo build --release --workspace
//!     cargo run --release -p dbha-bench -- all
//!
//! `--quick` runs each briefly, only to show that it works (CI does this), and
//! rewrites nothing.

#![forbid(unsafe_code)]

mod django;
mod netfault;
mod reader;
mod soak;

use clap::{Parser, Subcommand};
use dbha::Reader;
use dbha_agent::demo::Listener;
use dbha_agent::pg::Scratch;
use dbha_agent::pg::{self, StopMode};
use dbha_tests::agentproc::{config, AgentProc, Timing};
use dbha_tests::fakepg::{FakePg, Reply};
use dbha_tests::live::Live;
use dbha_tests::{fresh_artifact, Children};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// Small sizes: shows every benchmark runs, measures nothing worth reporting.
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Every benchmark below and the Python one; rewrites BENCHMARKS.md.
    All,
    /// Reader cost: Rust and C readers against the floors.
    Reader,
    /// Time from a refused connection to the switch a reader sees (interval=100ms, fall=2).
    Switch {
        #[arg(long, default_value_t = 40)]
        trials: usize,
    },
    /// Live PostgreSQL: server stopped / frozen -> reader switch (interval=100ms,
    /// timeout=200ms, fall=2, rise=2).
    Live {
        #[arg(long, default_value_t = 30)]
        trials: usize,
    },
    /// Reader cost with 1, 2, 8 and 32 reader processes while the writer
    /// publishes 10,000 times a second.
    Scaling {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// (Internal) one reader process of `scaling`: prints its median ns per call.
    #[command(hide = true)]
    ReadLoop { state: PathBuf, seconds: f64 },
    /// Failover detection against HAProxy (pgsql-check, backup servers) and libpq
    /// multi-host, same settings, same three live PostgreSQL servers.
    Haproxy {
        #[arg(long, default_value_t = 20)]
        trials: usize,
    },
    /// Chaos soak: reader processes check the decision's invariants on every read
    /// while the agent is SIGKILLed and restarted, SIGHUP'd in storms, and its
    /// endpoints refused, frozen and blackholed. Fails on any violation.
    Soak {
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        readers: usize,
        /// Chooses the sequence of faults (the same seed, the same sequence).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// (Internal) one reader process of `soak`.
    #[command(hide = true)]
    SoakReader {
        state: PathBuf,
        #[arg(long)]
        seconds: f64,
    },
    /// Agent resident memory and CPU per hour at 3 and 64 endpoints, interval 1s.
    Footprint {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Django under gunicorn and 32 HTTP clients through a failover (stop,
    /// blackhole, freeze of the primary, a standby promoted 1 s later): the
    /// original recipe, libpq multi-host, FailoverRouter and the dbha backend; then
    /// the backend's cost per query against Django's.
    Django {
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Only this fault: stop, blackhole or freeze.
        #[arg(long)]
        fault: Option<String>,
        /// Only this strategy: recipe, libpq, router or backend.
        #[arg(long)]
        strategy: Option<String>,
    },
}

fn agent_bin() -> PathBuf {
    fresh_artifact(
        "dbha-agent",
        "dbha-agent",
        &["agent/src", "reader/src", "protocol/src"],
    )
}

fn spawn_agent(dir: &Path, config: &str, children: &mut Children) -> PathBuf {
    let path = dir.join("dbha.toml");
    std::fs::write(&path, config).unwrap();
    children.push(
        Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbha-agent"),
    );
    dir.join("state")
}

fn open_reader(state: &Path) -> Reader {
    let start = Instant::now();
    loop {
        if let Ok(r) = Reader::open(state) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no state file at {}",
            state.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls the reader (every 50 us, leaving the cores to the agent and the servers)
/// until `want` is active; the time it took.
fn until_active(r: &Reader, want: &str) -> Duration {
    let start = Instant::now();
    while r.active_alias() != Some(want) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{want} never became active"
        );
        std::thread::sleep(Duration::from_micros(50));
    }
    start.elapsed()
}

fn summary_row(what: &str, times: &mut [f64], expected: &str) {
    times.sort_by(f64::total_cmp);
    println!(
        "| {what} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {expected} |",
        times.len(),
        percentile(times, 0.5),
        percentile(times, 0.99),
        times[0],
        times[times.len() - 1]
    );
}

/// Three live clusters and the settings the failover comparisons share.
fn live_setup(bench: &str) -> (Live, Timing) {
    let Some(live) = Live::start(&["default", "failover1", "failover2"]) else {
        eprintln!("dbha-bench {bench} needs the PostgreSQL server (apt-get install postgresql)");
        std::process::exit(1);
    };
    let t = Timing {
        interval_ms: 100,
        timeout_ms: 200,
        rise: 2,
        fall: 2,
        stale_after_ms: 1000,
        failback: "auto",
    };
    (live, t)
}

fn live(trials: usize) {
    let (live, t) = live_setup("live");
    let agent = AgentProc::start(live.dir.path(), "agent", |s| {
        config(s, &t, &live.dbs("postgres"), "")
    });
    let r = agent.reader();
    until_active(&r, "default");
    let default = live.cluster("default");
    let (mut stopped, mut frozen) = (Vec::new(), Vec::new());
    for i in 0..trials {
        // Vary the fault's phase against the probe schedule.
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % t.interval_ms));
        // pg_ctl signals the server at once, then waits for it to exit.
        let fault = Instant::now();
        default.stop(StopMode::Immediate).unwrap();
        until_active(&r, "failover1");
        stopped.push(fault.elapsed().as_secs_f64() * 1e3);
        default.start().unwrap();
        until_active(&r, "default");
    }
    for i in 0..trials {
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % t.interval_ms));
        default.freeze();
        let fault = Instant::now();
        until_active(&r, "failover1");
        frozen.push(fault.elapsed().as_secs_f64() * 1e3);
        default.thaw();
        until_active(&r, "default");
    }
    println!("| fault (interval=100ms, timeout=200ms, fall=2, rise=2) | trials | p50 ms | p99 ms | min ms | max ms | expected |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    summary_row(
        "default stopped (pg_ctl stop -m immediate)",
        &mut stopped,
        "phase (0-100) + (fall-1) x interval: 100-200",
    );
    summary_row(
        "default frozen (SIGSTOP)",
        &mut frozen,
        "phase (0-200) + fall x timeout: 400-600",
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn switch(trials: usize) {
    let scratch = Scratch::new("bench-switch").unwrap();
    let dir = scratch.path();
    let (interval_ms, timeout_ms, fall) = (100, 200, 2);
    let a = Listener::bind(0).unwrap();
    let b = Listener::bind(0).unwrap();
    let (pa, pb) = (a.port, b.port);
    let config = format!(
        "state_file = \"{}\"\ninterval = \"{interval_ms}ms\"\ntimeout = \"{timeout_ms}ms\"\nrise = 2\nfall = {fall}\nfailback = \"auto\"\n\
         [[database]]\nalias = \"default\"\nhost = \"127.0.0.1\"\nport = {pa}\ncheck = \"tcp\"\n\
         [[database]]\nalias = \"failover1\"\nhost = \"127.0.0.1\"\nport = {pb}\ncheck = \"tcp\"\n",
        dir.join("state").display()
    );
    let mut children = Children::default();
    let state = spawn_agent(dir, &config, &mut children);
    let r = open_reader(&state);
    until_active(&r, "default");
    let mut a = Some(a);
    let mut times = Vec::with_capacity(trials);
    for i in 0..trials {
        // Vary the fault's phase against the probe schedule.
        std::thread::sleep(Duration::from_millis(150 + (i as u64 * 37) % interval_ms));
        a = None;
        times.push(until_active(&r, "failover1").as_secs_f64() * 1e3);
        a = a.or_else(|| Listener::bind(pa).ok());
        assert!(a.is_some(), "cannot reopen port {pa}");
        until_active(&r, "default");
    }
    drop((a, b, children));
    times.sort_by(f64::total_cmp);
    let expected = (fall - 1) as f64 * interval_ms as f64;
    println!("| refused connection -> reader switch (interval={interval_ms}ms, fall={fall}, {trials} trials) | ms |");
    println!("|---|---:|");
    println!("| p50 | {:.1} |", percentile(&times, 0.5));
    println!("| p99 | {:.1} |", percentile(&times, 0.99));
    println!("| min | {:.1} |", times[0]);
    println!("| max | {:.1} |", times[times.len() - 1]);
    println!("| (fall - 1) x interval | {expected:.1} |");
}

/// (resident KiB, CPU seconds) of a process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the comm).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = nix_clk_tck();
    (rss, ticks / hz)
}

fn nix_clk_tck() -> f64 {
    // getconf CLK_TCK; 100 on every Linux dbha targets.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn footprint(seconds: u64) {
    println!("| endpoints | check | RSS (MiB) | CPU per hour (s) | CPU share of one core |");
    println!("|---:|---|---:|---:|---:|");
    for n in [3usize, 64] {
        for check in ["tcp", "postgres"] {
            let scratch = Scratch::new("bench-footprint").unwrap();
            let dir = scratch.path();
            // tcp: plain listeners; postgres: fake servers asking for a password,
            // so every probe does the full startup exchange.
            let listeners: Vec<Listener> = (0..n).map(|_| Listener::bind(0).unwrap()).collect();
            let fakes: Vec<FakePg> = if check == "postgres" {
                (0..n).map(|_| FakePg::start(Reply::AuthMd5)).collect()
            } else {
                Vec::new()
            };
            let mut config = format!(
                "state_file = \"{}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
                dir.join("state").display()
            );
            for i in 0..n {
                let port = if check == "postgres" {
                    fakes[i].port
                } else {
                    listeners[i].port
                };
                config.push_str(&format!(
                    "[[database]]\nalias = \"db{i}\"\nhost = \"127.0.0.1\"\nport = {port}\ncheck = \"{check}\"\n"
                ));
            }
            let mut children = Children::default();
            let state = spawn_agent(dir, &config, &mut children);
            open_reader(&state);
            let pid = children.0[0].id();
            // Let it settle, then measure over the window.
            std::thread::sleep(Duration::from_secs(seconds.min(2)));
            let (_, cpu0) = usage(pid);
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs(seconds));
            let (rss, cpu1) = usage(pid);
            let window = t0.elapsed().as_secs_f64();
            let per_hour = (cpu1 - cpu0) / window * 3600.0;
            println!(
                "| {n} | {check} | {:.1} | {per_hour:.1} | {:.3}% |",
                rss as f64 / 1024.0,
                per_hour / 3600.0 * 100.0
            );
            drop((children, fakes, listeners));
        }
    }
    println!("\nmeasured over {seconds} s per row; CPU from /proc/PID/stat (utime + stime)");
}

fn thread_cpu_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// One reader process: batches of 100,000 `active_alias()` calls for `seconds`;
/// prints the median CPU time per call over the batches. CPU time, not wall time:
/// with more processes than cores, wall time would count the others' turns.
fn read_loop(state: &Path, seconds: f64) {
    let r = open_reader(state);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut per_call = Vec::new();
    while Instant::now() < end {
        let t = thread_cpu_ns();
        for _ in 0..100_000 {
            std::hint::black_box(r.active_alias());
        }
        per_call.push((thread_cpu_ns() - t) as f64 / 100_000.0);
    }
    per_call.sort_by(f64::total_cmp);
    println!("{:.3}", per_call[per_call.len() / 2]);
}

fn scaling(seconds: f64) {
    use dbha_protocol::writer::{Publication, Settings, StateFile};
    let scratch = Scratch::new("bench-scaling").unwrap();
    let state = scratch.path().join("state");
    let endpoints = [
        dbha_protocol::Endpoint::new("default", "127.0.0.1", 5432),
        dbha_protocol::Endpoint::new("failover1", "127.0.0.1", 5433),
    ];
    let settings = Settings {
        stale_after_ns: 60_000_000_000,
        mode: 0o644,
    };
    let (mut w, _) = StateFile::open(&state, &endpoints, settings, &Publication::NOTHING).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        std::thread::spawn(move || {
            // 10,000 publications a second, alternating the decision (each one a
            // new epoch), paced against the clock.
            let start = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = (n % 2) as u32;
                w.publish(&Publication {
                    write_index: i,
                    read_index: i,
                    health_mask: 0b11,
                    ..Publication::NOTHING
                });
                n += 1;
                writes.store(n, std::sync::atomic::Ordering::Relaxed);
                let due = start + Duration::from_micros(n * 100);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for n in [1usize, 2, 8, 32] {
        let w0 = writes.load(std::sync::atomic::Ordering::Relaxed);
        let t0 = Instant::now();
        let procs: Vec<_> = (0..n)
            .map(|_| {
                Command::new(&exe)
                    .args(["read-loop"])
                    .arg(&state)
                    .arg(seconds.to_string())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut medians: Vec<f64> = procs
            .into_iter()
            .map(|p| {
                let out = p.wait_with_output().unwrap();
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            })
            .collect();
        let rate = (writes.load(std::sync::atomic::Ordering::Relaxed) - w0) as f64
            / t0.elapsed().as_secs_f64();
        medians.sort_by(f64::total_cmp);
        rows.push((n, medians[medians.len() / 2], rate));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let base = rows[0].1;
    println!("| reader processes | active_alias() CPU ns/call (median of the processes' medians) | / 1 reader | writer publications per second |");
    println!("|---:|---:|---:|---:|");
    for (n, ns, rate) in rows {
        println!("| {n} | {ns:.2} | {:.2} | {rate:.0} |", ns / base);
    }
    println!("\n{seconds} s per process and row; per-call cost in thread CPU time (CLOCK_THREAD_CPUTIME_ID), so that sharing 2 cores among more processes does not count as cost");
}

/// Whether HAProxy's runtime API reports server `name` of backend `pg` down.
fn haproxy_down(socket: &Path, name: &str) -> Option<bool> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.write_all(b"show servers state pg\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    // "be_id be_name srv_id srv_name srv_addr srv_op_state ...": 0 is stopped.
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(3) == Some(&name))
        .and_then(|f| f.get(5).map(|state| *state == "0"))
}

/// Polls `done` every millisecond from now; the time it took.
fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} never happened"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

fn haproxy(trials: usize) {
    let Some(haproxy) = dbha_tests::require(
        "haproxy",
        "for the HAProxy comparison (apt-get install haproxy)",
    ) else {
        eprintln!("dbha-bench haproxy: install haproxy first (apt-get install haproxy); tests/setup.sh does");
        std::process::exit(1);
    };
    let (live, t) = live_setup("haproxy");
    let dir = live.dir.path();
    let socket = dir.join("haproxy.sock");
    let port = |n: &str| live.cluster(n).port;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout check {}ms\n\
             backend pg\n  option pgsql-check user postgres\n  default-server inter {}ms fall {} rise {}\n\
             \x20 server default 127.0.0.1:{} check\n  server failover1 127.0.0.1:{} check backup\n  server failover2 127.0.0.1:{} check backup\n",
            socket.display(),
            t.timeout_ms,
            t.interval_ms,
            t.fall,
            t.rise,
            port("default"),
            port("failover1"),
            port("failover2"),
        ),
    )
    .unwrap();
    let mut children = Children::default();
    children.push(
        Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    let agent = AgentProc::start(dir, "agent", |s| config(s, &t, &live.dbs("postgres"), ""));
    let r = agent.reader();
    until_active(&r, "default");
    until("HAProxy to see default up", || {
        haproxy_down(&socket, "default") == Some(false)
    });
    let default = live.cluster("default");
    let libpq = format!(
        "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2",
        port("default"),
        port("failover1"),
        port("failover2")
    );
    let psql = pg::find().expect("PostgreSQL").bindir.join("psql");
    // A new connection lands on a working server: psql connects and says where.
    let lands = || {
        Command::new(&psql)
            .args(["-X", "-A", "-t", "-c", "SELECT inet_server_port()", &libpq])
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).trim() != port("default").to_string()
            })
    };
    let connect_floor = {
        let t0 = Instant::now();
        for _ in 0..5 {
            let _ = Command::new(&psql)
                .args(["-X", "-A", "-t", "-c", "SELECT 1", &libpq])
                .output();
        }
        t0.elapsed().as_secs_f64() * 1e3 / 5.0
    };
    type Fault<'a> = (&'a str, Box<dyn Fn() + 'a>, Box<dyn Fn() + 'a>);
    let faults: Vec<Fault> = vec![
        (
            "stopped (pg_ctl stop -m immediate)",
            Box::new(|| default.stop(StopMode::Immediate).unwrap()),
            Box::new(|| default.start().unwrap()),
        ),
        (
            "frozen (SIGSTOP)",
            Box::new(|| default.freeze()),
            Box::new(|| default.thaw()),
        ),
    ];
    // A blackholed host: every packet to its port dropped (nftables, as root).
    let blackhole = netfault::Blackhole::for_port(port("default"));
    let mut faults = faults;
    match &blackhole {
        Some(b) => faults.push((
            "blackholed (packets to its port dropped)",
            Box::new(|| b.on()),
            Box::new(|| b.off()),
        )),
        None => {
            eprintln!("dbha-bench haproxy: nft is not installed: the blackholed row is left out")
        }
    }
    println!("| fault (interval=100ms, timeout=200ms, fall=2, rise=2; {trials} trials) | dbha p50 | dbha p99 | HAProxy p50 | HAProxy p99 | dbha / HAProxy (p50) | libpq p50 | libpq p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, fault, repair) in &faults {
        let (mut d, mut h, mut l) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..trials {
            std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % t.interval_ms));
            let start = Instant::now();
            fault();
            // All three watched at once, from the same instant.
            let (dt, ht, lt) = std::thread::scope(|sc| {
                let hp = sc.spawn(|| {
                    until("HAProxy to mark default down", || {
                        haproxy_down(&socket, "default") == Some(true)
                    });
                    start.elapsed()
                });
                let lq = sc.spawn(|| {
                    until("a libpq connection to land on a working server", &lands);
                    start.elapsed()
                });
                until_active(&r, "failover1");
                let dt = start.elapsed();
                (dt, hp.join().unwrap(), lq.join().unwrap())
            });
            d.push(dt.as_secs_f64() * 1e3);
            h.push(ht.as_secs_f64() * 1e3);
            l.push(lt.as_secs_f64() * 1e3);
            repair();
            until_active(&r, "default");
            until("HAProxy to see default up", || {
                haproxy_down(&socket, "default") == Some(false)
            });
        }
        for v in [&mut d, &mut h, &mut l] {
            v.sort_by(f64::total_cmp);
        }
        let p = |v: &[f64], q| percentile(v, q);
        println!(
            "| default {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            p(&d, 0.5),
            p(&d, 0.99),
            p(&h, 0.5),
            p(&h, 0.99),
            p(&d, 0.5) / p(&h, 0.5),
            p(&l, 0.5),
            p(&l, 0.99)
        );
    }
    println!("\nall times in ms from the fault; libpq: psql with \"{libpq}\", each attempt a new process and connection (about {connect_floor:.0} ms each when nothing is wrong)");
    drop(children);
}

/// The sections `all` fills, in order: (marker name, arguments).
const SECTIONS: [(&str, &[&str]); 9] = [
    ("reader", &["reader"]),
    ("scaling", &["scaling"]),
    ("switch", &["switch"]),
    ("footprint", &["footprint"]),
    ("live", &["live"]),
    ("haproxy", &["haproxy"]),
    ("django", &["django"]),
    ("soak", &["soak"]),
    ("python", &[]),
];

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = dbha_agent::status::utc(std::time::SystemTime::now());
    format!(
        "Machine: {cores} cores ({cpu}, {}), {} GiB, Linux {}. Run: {}.",
        std::env::consts::ARCH,
        (mem_kib + (1 << 19)) >> 20,
        read("/proc/sys/kernel/osrelease").trim(),
        &date[..10]
    )
}

fn all(quick: bool) {
    let exe = std::env::current_exe().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut outputs = Vec::new();
    for (name, args) in SECTIONS {
        eprintln!("== {name}");
        let mut cmd = if name == "python" {
            let python = root.join(".venv/bin/python");
            if !python.exists() {
                eprintln!(
                    "skipping the Python benchmark: {} is missing (tests/setup.sh makes it)",
                    python.display()
                );
                continue;
            }
            let mut c = Command::new(python);
            c.arg(root.join("bench/python_bench.py"))
                .env("DBHA_TARGET_DIR", dbha_tests::target_dir());
            c
        } else {
            let mut c = Command::new(&exe);
            c.args(args);
            c
        };
        if quick {
            cmd.arg("--quick");
        }
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .expect("run a benchmark");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        println!("{text}\n");
        assert!(out.status.success(), "the {name} benchmark failed");
        outputs.push((name, text));
    }
    if quick {
        return;
    }
    let path = root.join("BENCHMARKS.md");
    let mut doc = std::fs::read_to_string(&path).expect("BENCHMARKS.md");
    for (name, text) in std::iter::once(("machine", machine())).chain(outputs) {
        let (open, close) = (
            format!("<!-- bench:{name} -->"),
            format!("<!-- /bench:{name} -->"),
        );
        match (doc.find(&open), doc.find(&close)) {
            (Some(a), Some(b)) if a < b => {
                doc.replace_range(a + open.len()..b, &format!("\n{text}\n"));
            }
            _ => eprintln!("BENCHMARKS.md has no {open} ... {close} block: not rewritten"),
        }
    }
    std::fs::write(&path, doc).expect("write BENCHMARKS.md");
    eprintln!("rewrote {}", path.display());
}

/// The trials asked for, used as given; below 20 a p99 is only the largest
/// figure, which is said.
fn trials_said(trials: usize) -> usize {
    if trials < 20 {
        eprintln!(
            "note: {trials} trials: with fewer than 20, the p99 reported is the largest figure"
        );
    }
    trials.max(1)
}

fn main() {
    let cli = Cli::parse();
    match cli.what {
        What::All => all(cli.quick),
        What::Reader => {
            if cli.quick {
                reader::run(3, 100_000)
            } else {
                reader::run(31, 2_000_000)
            }
        }
        What::Switch { trials } => switch(if cli.quick { 3 } else { trials_said(trials) }),
        What::Live { trials } => live(if cli.quick { 2 } else { trials_said(trials) }),
        What::Scaling { seconds } => scaling(if cli.quick { 0.5 } else { seconds }),
        What::ReadLoop { state, seconds } => read_loop(&state, seconds),
        What::Haproxy { trials } => haproxy(if cli.quick { 2 } else { trials_said(trials) }),
        What::Django {
            repeats,
            fault,
            strategy,
        } => django::run(cli.quick, repeats, fault.as_deref(), strategy.as_deref()),
        What::Footprint { seconds } => footprint(if cli.quick { 1 } else { seconds }),
        What::Soak {
            seconds,
            readers,
            seed,
        } => soak::run(if cli.quick { 15 } else { seconds }, readers, seed),
        What::SoakReader { state, seconds } => soak::reader(&state, seconds),
    }
}
