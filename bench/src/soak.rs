//! The chaos soak: reader processes check the published decision's invariants on
//! every read while the real agent is SIGKILLed and restarted at random moments,
//! sent storms of SIGHUP, and its three endpoints (fake PostgreSQL servers) are
//! refused, frozen and blackholed in turn.
//!
//! Invariants, on every read: the epoch never decreases; an alias is one of the
//! configured ones; the status agrees with the indexes (active with a write alias,
//! any other status without one); writes never go to a fenced endpoint, nor to
//! one whose timeline is lower than one the reader saw published; no error other
//! than "contended". (The fences and timelines are outside the seqlock: a
//! condition counts once it has held for 2 ms at the same epoch, longer than the
//! agent takes between recording a fence and publishing the decision it makes
//! with it.) Reported with
//! them: reads over 1 ms of wall time (a read makes no system call, so these are
//! the process being descheduled, not waiting) and how long readers saw "stale"
//! after each kill.

use crate::common::Rng;
use dbha::{Reader, Status};
use dbha_tests::agentproc::{config, AgentProc, Timing};
use dbha_tests::netfault::Blackhole;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALIASES: [&str; 3] = ["default", "failover1", "failover2"];

/// What a fake server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Answers as a PostgreSQL primary with trust authentication.
    Up = 0,
    /// Not listening: connections are refused.
    Refuse = 1,
    /// Accepts and never answers.
    Freeze = 2,
}

/// A loopback PostgreSQL stand-in whose behaviour can be switched.
struct Server {
    port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (mode, stop) = (
            Arc::new(AtomicU8::new(Mode::Up as u8)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (mode, stop) = (mode.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(Some(listener), port, &mode, &stop))
        };
        Server {
            port,
            mode,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    mut listener: Option<TcpListener>,
    port: u16,
    mode: &Arc<AtomicU8>,
    stop: &Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let refuse = mode.load(Ordering::SeqCst) == Mode::Refuse as u8;
        if refuse {
            listener = None;
        } else if listener.is_none() {
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
        }
        let Some(l) = &listener else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = l.set_nonblocking(true);
        match l.accept() {
            Ok((conn, _)) => {
                let (mode, stop) = (mode.clone(), stop.clone());
                std::thread::spawn(move || serve(conn, &mode, &stop));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One connection: frozen while the mode says so; otherwise declines TLS and
/// opens a trust session as a primary, until Terminate.
fn serve(mut conn: TcpStream, mode: &AtomicU8, stop: &AtomicBool) {
    let end = Instant::now() + Duration::from_secs(10);
    while mode.load(Ordering::SeqCst) == Mode::Freeze as u8 {
        if stop.load(Ordering::SeqCst) || Instant::now() > end {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 8];
    if conn.read_exact(&mut head).is_err() {
        return;
    }
    if head == [0, 0, 0, 8, 4, 210, 22, 47] {
        let _ = conn.write_all(b"N");
        if conn.read_exact(&mut head).is_err() {
            return;
        }
    }
    let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len.clamp(8, 4096) - 8];
    if conn.read_exact(&mut rest).is_err() {
        return;
    }
    let mut reply = message(b'R', &[0, 0, 0, 0]);
    for (k, v) in [
        ("in_hot_standby", "off"),
        ("default_transaction_read_only", "off"),
    ] {
        reply.extend(message(b'S', format!("{k}\0{v}\0").as_bytes()));
    }
    reply.extend(message(b'Z', b"I"));
    let _ = conn.write_all(&reply);
    let mut sink = [0u8; 64];
    let _ = conn.read(&mut sink);
}

/// What one reader process found (one line of `key=value` pairs on stdout).
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) reads: u64,
    pub(crate) violations: u64,
    pub(crate) contended: u64,
    pub(crate) over_1ms: u64,
    pub(crate) worst_ns: u64,
    pub(crate) stale_episodes: u64,
    pub(crate) stale_ms_total: u64,
    pub(crate) stale_ms_max: u64,
    pub(crate) first_violation: String,
}

impl Found {
    pub(crate) fn line(&self) -> String {
        format!(
            "reads={} violations={} contended={} over_1ms={} worst_ns={} stale_episodes={} stale_ms_total={} stale_ms_max={} first_violation={:?}",
            self.reads,
            self.violations,
            self.contended,
            self.over_1ms,
            self.worst_ns,
            self.stale_episodes,
            self.stale_ms_total,
            self.stale_ms_max,
            self.first_violation
        )
    }

    pub(crate) fn parse(line: &str) -> Found {
        let get = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
        };
        Found {
            reads: get("reads"),
            violations: get("violations"),
            contended: get("contended"),
            over_1ms: get("over_1ms"),
            worst_ns: get("worst_ns"),
            stale_episodes: get("stale_episodes"),
            stale_ms_total: get("stale_ms_total"),
            stale_ms_max: get("stale_ms_max"),
            first_violation: line
                .split_once("first_violation=")
                .map_or(String::new(), |(_, v)| v.to_owned()),
        }
    }
}

/// The reader process: reads every ~100 µs for `seconds`, or until `stop` exists,
/// checking each snapshot.
pub fn reader(state: &Path, seconds: f64, stop: Option<&Path>) {
    let r = loop {
        if let Ok(r) = Reader::open(state) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut f = Found::default();
    let mut last_epoch = 0u64;
    let mut stale_since: Option<Instant> = None;
    let mut newest_timeline = 0u32;
    // A suspicious write endpoint: (epoch, index, since when, counted).
    let mut suspect: Option<(u64, u32, Instant, bool)> = None;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let violation = |f: &mut Found, what: String| {
        f.violations += 1;
        if f.first_violation.is_empty() {
            f.first_violation = what;
        }
    };
    while Instant::now() < end {
        if f.reads % 1000 == 0 && stop.is_some_and(Path::exists) {
            break;
        }
        let t0 = Instant::now();
        let got = r.snapshot();
        let ns = t0.elapsed().as_nanos() as u64;
        f.reads += 1;
        f.worst_ns = f.worst_ns.max(ns);
        if ns > 1_000_000 {
            f.over_1ms += 1;
        }
        match got {
            Ok(s) => {
                if s.epoch < last_epoch {
                    violation(&mut f, format!("epoch {} after {last_epoch}", s.epoch));
                }
                last_epoch = last_epoch.max(s.epoch);
                for a in [s.write_alias(), s.read_alias()].into_iter().flatten() {
                    if !ALIASES.contains(&a) {
                        violation(&mut f, format!("alias {a:?}"));
                    }
                }
                match (s.status, s.write_alias()) {
                    (Status::Active, None) => {
                        violation(&mut f, "active without a write alias".into())
                    }
                    (Status::Active, Some(_)) | (_, None) => {}
                    (st, Some(a)) => violation(&mut f, format!("{st:?} with write alias {a}")),
                }
                let wrong = s.write_index.and_then(|w| {
                    let alias = s.alias(w).unwrap_or("?");
                    let fence = s.fence(w);
                    if fence.fenced {
                        return Some((w, format!("writes to {alias}, fenced")));
                    }
                    let seen = (0..s.endpoint_count()).filter_map(|i| s.fence(i).timeline);
                    newest_timeline = newest_timeline.max(seen.max().unwrap_or(0));
                    match fence.timeline {
                        Some(t) if t < newest_timeline => Some((
                            w,
                            format!("writes to {alias} on timeline {t}, after {newest_timeline}"),
                        )),
                        _ => None,
                    }
                });
                suspect = match (wrong, suspect.take()) {
                    (Some((w, what)), Some((e, i, since, counted))) if (e, i) == (s.epoch, w) => {
                        let held = since.elapsed() >= Duration::from_millis(2);
                        if held && !counted {
                            violation(&mut f, what);
                        }
                        Some((e, i, since, counted || held))
                    }
                    (Some((w, _)), _) => Some((s.epoch, w, Instant::now(), false)),
                    (None, _) => None,
                };
                match (s.status == Status::Stale, stale_since) {
                    (true, None) => stale_since = Some(Instant::now()),
                    (false, Some(t)) => {
                        let ms = t.elapsed().as_millis() as u64;
                        f.stale_episodes += 1;
                        f.stale_ms_total += ms;
                        f.stale_ms_max = f.stale_ms_max.max(ms);
                        stale_since = None;
                    }
                    _ => {}
                }
            }
            Err(dbha::Error::Contended { .. }) => f.contended += 1,
            Err(e) => violation(&mut f, format!("error: {e}")),
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    println!("{}", f.line());
}

/// What each reader process found, once it has ended (its one line on stdout).
pub(crate) fn collect(procs: &mut dbha_tests::Children) -> Vec<Found> {
    procs
        .iter_mut()
        .map(|c| {
            let mut out = String::new();
            c.stdout
                .take()
                .expect("piped")
                .read_to_string(&mut out)
                .expect("reader output");
            let status = c.wait().expect("reader exit");
            assert!(status.success(), "a reader process failed: {status}");
            Found::parse(out.trim())
        })
        .collect()
}

/// Counts of what the driver did.
#[derive(Debug, Default)]
struct Chaos {
    kills: u64,
    storms: u64,
    refused: u64,
    frozen: u64,
    blackholed: u64,
}

pub fn run(seconds: u64, readers: usize, seed: u64) {
    let dir = tempfile_dir();
    let servers: Vec<Server> = (0..3).map(|_| Server::start()).collect();
    let t = Timing {
        interval_ms: 50,
        timeout_ms: 200,
        rise: 2,
        fall: 2,
        stale_after_ms: 500,
        failback: "auto",
    };
    let dbs: Vec<_> = ALIASES
        .iter()
        .zip(&servers)
        .map(|(a, s)| (*a, "127.0.0.1", s.port, "postgres"))
        .collect();
    let mut agent = AgentProc::start(dir.path(), "soak", |state| config(state, &t, &dbs, ""));
    let exe = std::env::current_exe().expect("own path");
    let mut procs = dbha_tests::Children::default();
    for _ in 0..readers {
        procs.push(
            Command::new(&exe)
                .args(["soak-reader", "--seconds", &(seconds + 1).to_string()])
                .arg(&agent.state)
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a reader process"),
        );
    }
    let blackholes: Vec<Option<Blackhole>> = servers
        .iter()
        .map(|s| Blackhole::for_port(s.port))
        .collect();
    let mut rng = Rng(seed | 1);
    let mut chaos = Chaos::default();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        match rng.below(4) {
            0 => {
                agent.signal(Signal::SIGKILL);
                let _ = agent.child().wait();
                std::thread::sleep(rng.ms(0, 1500));
                agent.spawn();
                chaos.kills += 1;
            }
            1 => {
                for _ in 0..10 {
                    agent.signal(Signal::SIGHUP);
                    std::thread::sleep(Duration::from_millis(30));
                }
                chaos.storms += 1;
            }
            _ => {
                let i = rng.below(3) as usize;
                let hold = rng.ms(300, 2000);
                match (rng.below(3), &blackholes[i]) {
                    (0, Some(b)) => {
                        b.on();
                        std::thread::sleep(hold);
                        b.off();
                        chaos.blackholed += 1;
                    }
                    (1, _) => {
                        servers[i].set(Mode::Freeze);
                        std::thread::sleep(hold);
                        chaos.frozen += 1;
                    }
                    _ => {
                        servers[i].set(Mode::Refuse);
                        std::thread::sleep(hold);
                        chaos.refused += 1;
                    }
                }
                servers[i].set(Mode::Up);
            }
        }
        std::thread::sleep(rng.ms(100, 800));
    }
    let found = collect(&mut procs);
    report(
        seconds,
        seed,
        &chaos,
        &found,
        blackholes.iter().all(Option::is_some),
    );
    let violations: u64 = found.iter().map(|f| f.violations).sum();
    assert_eq!(
        violations,
        0,
        "invariants broken: {:?}",
        found.iter().map(|f| &f.first_violation).collect::<Vec<_>>()
    );
    drop(agent);
}

fn report(seconds: u64, seed: u64, c: &Chaos, found: &[Found], blackholing: bool) {
    let sum = |f: &dyn Fn(&Found) -> u64| found.iter().map(f).sum::<u64>();
    let reads = sum(&|f| f.reads);
    let episodes = sum(&|f| f.stale_episodes);
    let stale_total = sum(&|f| f.stale_ms_total);
    let worst = found.iter().map(|f| f.worst_ns).max().unwrap_or(0);
    let max_stale = found.iter().map(|f| f.stale_ms_max).max().unwrap_or(0);
    println!("| soak | value |\n|---|---|");
    println!(
        "| duration, reader processes | {seconds} s, {} |",
        found.len()
    );
    println!(
        "| chaos | {} SIGKILL + restart (after 0-1.5 s), {} SIGHUP storms (10 at 30 ms), {} refused, {} frozen, {} blackholed{} |",
        c.kills,
        c.storms,
        c.refused,
        c.frozen,
        c.blackholed,
        if blackholing { "" } else { " (nft missing: no blackholes)" }
    );
    println!("| reads | {reads} |");
    println!(
        "| **invariant violations** | **{}** |",
        sum(&|f| f.violations)
    );
    println!(
        "| contended reads (fallback used for that read) | {} |",
        sum(&|f| f.contended)
    );
    println!(
        "| reads over 1 ms wall time (descheduled), worst read | {}, {:.3} ms |",
        sum(&|f| f.over_1ms),
        worst as f64 / 1e6
    );
    println!(
        "| stale, seen by readers | {episodes} episodes, {:.0} ms per kill on average, longest {max_stale} ms |",
        if c.kills == 0 { 0.0 } else { stale_total as f64 / found.len().max(1) as f64 / c.kills as f64 }
    );
    println!(
        "\nseed {seed}; agent: interval 50 ms, timeout 200 ms, rise/fall 2, stale_after 500 ms, postgres check on 3 loopback fake servers"
    );
}

fn tempfile_dir() -> dbha_harness::pg::Scratch {
    dbha_harness::pg::Scratch::new("soak").expect("scratch directory")
}
