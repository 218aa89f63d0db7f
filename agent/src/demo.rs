//! `dbha-agent demo`: the newcomer's first command. Runs a real agent on a
//! temporary state file against three local databases and prints what a reader
//! sees through a failover, with the time from each event to what it sees. Cleans
//! up everything it started, also on Ctrl-C.
//!
//! With PostgreSQL installed, the topology people run: `default` a primary,
//! `failover1` and `failover2` its streaming standbys; writes on the primary,
//! reads on a standby. A standby hangs and reads move; the primary crashes and
//! writes have nowhere to go; a standby is promoted as an HA manager would, and
//! writes follow; the old primary comes back as a second primary, and writes stay
//! where they are. Without PostgreSQL, three TCP listeners show the plain switch
//! and failback.

use dbha::{Reader, Role, Snapshot, Status};
use dbha_harness::config::Timing;
use dbha_harness::pg::{self, Cluster, Scratch, StopMode};
use dbha_harness::wait::poll;
use dbha_harness::{Children, Listener, Stop};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALIASES: [&str; 3] = ["default", "failover1", "failover2"];

/// An endpoint the demo can take down and bring back.
enum Server {
    Postgres(Cluster),
    Tcp {
        port: u16,
        listener: Option<Listener>,
    },
}

impl Server {
    fn port(&self) -> u16 {
        match self {
            Server::Postgres(c) => c.port,
            Server::Tcp { port, .. } => *port,
        }
    }

    fn down(&mut self) -> Result<&'static str, String> {
        match self {
            Server::Postgres(c) => c
                .stop(StopMode::Immediate)
                .map(|_| "pg_ctl stop -m immediate")
                .map_err(|e| e.to_string()),
            Server::Tcp { listener, .. } => {
                *listener = None;
                Ok("listener closed")
            }
        }
    }

    fn up(&mut self) -> Result<&'static str, String> {
        match self {
            Server::Postgres(c) => c.start().map(|_| "pg_ctl start").map_err(|e| e.to_string()),
            Server::Tcp { port, listener } => {
                *listener = Some(Listener::bind(*port).map_err(|e| e.to_string())?);
                Ok("listener reopened")
            }
        }
    }
}

struct Schedule {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    hold: Duration,
}

struct Interrupted;

/// Polls the reader until `done` holds for its snapshot; returns the time it took.
fn wait_until(
    reader: &Reader,
    stop: &AtomicBool,
    limit: Duration,
    done: impl Fn(&Snapshot) -> bool,
) -> Result<Duration, Interrupted> {
    let outcome = poll(Duration::from_millis(1), limit, || {
        if stop.load(Ordering::Relaxed) {
            Some(false)
        } else {
            reader.snapshot().is_ok_and(|s| done(&s)).then_some(true)
        }
    });
    match outcome {
        Some((true, took)) => Ok(took),
        _ => Err(Interrupted),
    }
}

/// Polls the reader until `want` is where writes go.
fn wait_for(
    reader: &Reader,
    want: &str,
    stop: &AtomicBool,
    limit: Duration,
) -> Result<Duration, Interrupted> {
    wait_until(reader, stop, limit, |s| s.write_alias() == Some(want))
}

fn show(reader: &Reader) {
    if let Ok(s) = reader.snapshot() {
        let each: Vec<String> = s
            .aliases()
            .enumerate()
            .map(|(i, a)| {
                let i = i as u32;
                let role = match s.role(i) {
                    Role::Primary => "/primary",
                    Role::Standby => "/standby",
                    Role::Unknown => "",
                };
                format!("{a}={}{role}", if s.is_healthy(i) { "up" } else { "down" })
            })
            .collect();
        println!(
            "    reader sees: writes={} reads={} epoch={} status={}{} [{}]",
            s.write_alias().unwrap_or("NONE"),
            s.read_alias().unwrap_or("NONE"),
            s.epoch,
            s.status.name(),
            if s.conflict() { " CONFLICT" } else { "" },
            each.join(" ")
        );
    }
}

/// Runs the demo; returns the process exit code.
pub fn demo(short: bool, listeners: bool) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("demo: cannot install the signal handler: {e}");
            return 1;
        }
    }
    match story(short, listeners, &stop) {
        Ok(()) => 0,
        Err(e) if stop.load(Ordering::Relaxed) => {
            println!("\ninterrupted ({e}); cleaning up");
            130
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            1
        }
    }
}

fn story(short: bool, listeners: bool, stop: &AtomicBool) -> Result<(), String> {
    let schedule = if short {
        Schedule {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
            hold: Duration::from_millis(300),
        }
    } else {
        Schedule {
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            hold: Duration::from_secs(2),
        }
    };
    let scratch =
        Scratch::new("demo").map_err(|e| format!("cannot create a scratch directory: {e}"))?;
    // Endpoints are dropped (servers stopped) before the scratch directory goes.
    let mut endpoints: Vec<Server> = Vec::new();
    let check = start_endpoints(scratch.path(), &mut endpoints, listeners, stop)?;
    let state = scratch.path().join("state");
    let config = scratch.path().join("dbha.toml");
    let roles = if check == "postgres" {
        "writes = \"primary\"\nreads = \"prefer-standby\"\n"
    } else {
        ""
    };
    let timing = Timing {
        interval_ms: schedule.interval.as_millis() as u64,
        timeout_ms: schedule.timeout.as_millis() as u64,
        rise: schedule.rise,
        fall: schedule.fall,
        stale_after_ms: 2000,
        failback: "auto",
    };
    let dbs: Vec<_> = ALIASES
        .iter()
        .zip(&endpoints)
        .map(|(alias, e)| (*alias, "127.0.0.1", e.port(), check))
        .collect();
    let text = dbha_harness::config::config(&state, &timing, &dbs, roles);
    std::fs::write(&config, &text).map_err(|e| e.to_string())?;
    println!(
        "\nagent: interval {:?}, timeout {:?}, rise {}, fall {}, failback auto, check \"{check}\"{}\n",
        schedule.interval,
        schedule.timeout,
        schedule.rise,
        schedule.fall,
        if roles.is_empty() {
            ""
        } else {
            ", writes on the primary, reads on a standby"
        }
    );

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the agent: {e}"))?;
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                println!("    agent | {line}");
            }
        });
    }
    // Stopped with SIGTERM (by pid), whatever ends the demo.
    let mut agent = Children::default();
    agent.push_with(child, Stop::Term(Duration::from_secs(5)));

    let patience = Duration::from_secs(30);
    let reader = poll(Duration::from_millis(5), patience, || {
        match Reader::open(&state) {
            Err(_) if !stop.load(Ordering::Relaxed) => None,
            opened => Some(opened),
        }
    })
    .map_or_else(
        || Err("the agent did not create its state file".to_owned()),
        |(opened, _)| opened.map_err(|e| format!("the agent did not create its state file: {e}")),
    )?;
    let results = if check == "postgres" {
        replicated(&reader, &mut endpoints, &schedule, stop, patience)?
    } else {
        listeners_story(&reader, &mut endpoints, &schedule, stop, patience)?
    };

    println!("\nsummary (time from the event to what a reader sees):");
    for (what, t) in &results {
        println!("  {what:<32} {:>6} ms", t.as_millis());
    }
    let fastinter = crate::config::default_fastinter(schedule.interval);
    if check == "postgres" {
        println!(
            "  expected for a crash: the held session sees the close at once and the reconnection right after it is refused: a few ms\n  (with fall > 2, {} ms more per further probe);\n  for a hung server: up to one interval of phase, then fall probes of at most the timeout each: up to {} ms",
            fastinter.as_millis(),
            schedule.interval.as_millis() as u32 + schedule.fall * schedule.timeout.as_millis() as u32
        );
    } else {
        println!(
            "  expected for a refused connection: up to one interval of probe phase, then (fall - 1) fast probes: about {} ms + {} ms",
            schedule.interval.as_millis(),
            (schedule.fall - 1) * fastinter.as_millis() as u32
        );
    }
    println!(
        "\nstopping the agent and the databases, removing {}",
        scratch.path().display()
    );
    Ok(())
}

fn interrupted(_: Interrupted) -> String {
    "interrupted or timed out".to_string()
}

fn cluster(e: &Server) -> Result<&Cluster, String> {
    match e {
        Server::Postgres(c) => Ok(c),
        Server::Tcp { .. } => Err("a PostgreSQL endpoint was expected".to_string()),
    }
}

/// The plain switch and failback, with TCP listeners.
fn listeners_story(
    reader: &Reader,
    endpoints: &mut [Server],
    schedule: &Schedule,
    stop: &AtomicBool,
    patience: Duration,
) -> Result<Vec<(&'static str, Duration)>, String> {
    let t = wait_for(reader, "default", stop, patience).map_err(interrupted)?;
    println!(
        "1. all three up: the reader uses default ({} ms after the agent started)",
        t.as_millis()
    );
    show(reader);
    let mut results = Vec::new();
    let how = endpoints[0].down()?;
    println!("\n2. default goes down ({how})");
    let t = wait_for(reader, "failover1", stop, patience).map_err(interrupted)?;
    println!(
        "   the reader switched to failover1 {} ms after the fault",
        t.as_millis()
    );
    show(reader);
    results.push(("default stopped -> failover1", t));
    std::thread::sleep(schedule.hold);
    let how = endpoints[0].up()?;
    println!("\n3. default comes back ({how})");
    let t = wait_for(reader, "default", stop, patience).map_err(interrupted)?;
    println!("   after {} successful probes, failback auto returned the reader to default {} ms after it was back", schedule.rise, t.as_millis());
    show(reader);
    results.push(("default back -> default", t));
    Ok(results)
}

/// A primary and two standbys through a standby hang, a primary crash, a
/// promotion and the old primary's return.
fn replicated(
    reader: &Reader,
    endpoints: &mut [Server],
    schedule: &Schedule,
    stop: &AtomicBool,
    patience: Duration,
) -> Result<Vec<(&'static str, Duration)>, String> {
    let t = wait_until(reader, stop, patience, |s| {
        s.write_alias() == Some("default")
            && s.read_alias() == Some("failover1")
            && s.health_mask == 0b111
    })
    .map_err(interrupted)?;
    println!(
        "1. default is the primary, failover1 and failover2 stream from it: writes go to default, reads to failover1 ({} ms after the agent started)",
        t.as_millis()
    );
    show(reader);
    let mut results = Vec::new();

    cluster(&endpoints[1])?.freeze();
    println!("\n2. failover1 hangs (SIGSTOP: TCP still accepts, nothing answers; a TCP check would call it healthy)");
    let t = wait_until(reader, stop, patience, |s| {
        s.read_alias() == Some("failover2")
    })
    .map_err(interrupted)?;
    println!(
        "   the postgres check saw it: reads moved to failover2 {} ms after the hang; writes stayed on default",
        t.as_millis()
    );
    show(reader);
    results.push(("failover1 hung -> reads failover2", t));
    cluster(&endpoints[1])?.thaw();
    let t = wait_until(reader, stop, patience, |s| s.is_healthy(1)).map_err(interrupted)?;
    println!(
        "   thawed: failover1 is up again after {} ms; reads stay on failover2, which is still fit (no needless reconnections)",
        t.as_millis()
    );

    std::thread::sleep(schedule.hold);
    println!("\n3. the primary crashes (pg_ctl stop -m immediate)");
    // Watched from the moment the crash begins: pg_ctl returns only once the
    // server is gone.
    let crashed = Instant::now();
    let (stopped, seen) = std::thread::scope(|sc| {
        let server = &mut endpoints[0];
        let stopping = sc.spawn(move || server.down().map(drop));
        let seen = wait_until(reader, stop, patience, |s| s.write_alias().is_none())
            .map(|_| crashed.elapsed());
        // Reads stay where they were: the standbys hold all the data.
        let reads_only = seen
            .is_ok()
            .then(|| wait_until(reader, stop, patience, |s| s.status == Status::ReadOnly));
        (
            stopping
                .join()
                .unwrap_or_else(|_| Err("pg_ctl stop panicked".into())),
            seen.and_then(|t| reads_only.unwrap_or(Ok(t)).map(|_| t)),
        )
    });
    stopped?;
    let t = seen.map_err(interrupted)?;
    println!(
        "   {} ms after the crash began the agent publishes NONE for writes: its held session saw the server close it;",
        t.as_millis()
    );
    println!("   no server is a primary now, and the agent never sends writes to a standby;");
    let s = reader.snapshot().map_err(|e| e.to_string())?;
    println!(
        "   the status is read_only: reads keep going to {}, which holds all the data, so the app",
        s.read_alias().unwrap_or("NONE")
    );
    println!("   serves its pages that only read, and refuses writes at once with a clear error");
    show(reader);
    results.push(("primary crashed -> writes NONE, read only", t));

    std::thread::sleep(schedule.hold);
    println!("\n4. failover1 is promoted (pg_ctl promote), as your HA manager (Patroni, repmgr, an operator) would");
    println!("   (while writes have no database the agent probes the standbys every fastinter, a status query");
    println!(
        "   on the session it holds, so a promotion is published at once, whatever interval is)"
    );
    let promoted = Instant::now();
    cluster(&endpoints[1])?
        .promote()
        .map_err(|e| e.to_string())?;
    wait_for(reader, "failover1", stop, patience).map_err(interrupted)?;
    let t = promoted.elapsed();
    println!(
        "   writes follow: failover1 {} ms after the promotion began (pg_ctl promote waits for the server)",
        t.as_millis()
    );
    show(reader);
    results.push(("failover1 promoted -> writes", t));

    std::thread::sleep(schedule.hold);
    println!(
        "\n5. the old primary comes back (pg_ctl start): it is a primary too, on its own timeline"
    );
    let started = Instant::now();
    endpoints[0].up()?;
    wait_until(reader, stop, patience, |s| s.conflict()).map_err(interrupted)?;
    let t = started.elapsed();
    let s = reader.snapshot().map_err(|e| e.to_string())?;
    println!(
        "   {} ms after pg_ctl start began the agent sets the conflict flag; writes stay on {} (failback auto does not move them to a second primary)",
        t.as_millis(),
        s.write_alias().unwrap_or("NONE")
    );
    show(reader);
    results.push(("old primary back -> conflict", t));
    if s.write_alias() != Some("failover1") {
        return Err(format!(
            "writes moved to {:?} with two primaries",
            s.write_alias()
        ));
    }
    Ok(results)
}

/// Starts the three endpoints; returns the check kind to configure.
fn start_endpoints(
    root: &Path,
    out: &mut Vec<Server>,
    listeners: bool,
    stop: &AtomicBool,
) -> Result<&'static str, String> {
    let found = if listeners {
        Err("--listeners was given".to_string())
    } else {
        pg::find()
    };
    match found {
        Ok(install) => {
            println!(
                "using real PostgreSQL {} clusters ({}{})",
                install.version().map_or("?".into(), |v| v.to_string()),
                install.bindir.display(),
                if install.run_as.is_some() {
                    ", run as the postgres user"
                } else {
                    ""
                }
            );
            let pg_root = root.join("pg");
            let clusters = pg::replicated(
                &install,
                &pg_root,
                "127.0.0.1",
                ALIASES[0],
                &ALIASES[1..],
                "trust",
                None,
            )?;
            for (i, c) in clusters.iter().enumerate() {
                if i == 0 {
                    println!(
                        "  {:<10} PostgreSQL primary on 127.0.0.1:{}",
                        c.name, c.port
                    );
                } else {
                    println!(
                        "  {:<10} PostgreSQL standby on 127.0.0.1:{} (pg_basebackup, streaming from {})",
                        c.name, c.port, ALIASES[0]
                    );
                }
            }
            if stop.load(Ordering::Relaxed) {
                out.extend(clusters.into_iter().map(Server::Postgres));
                return Err("interrupted".into());
            }
            out.extend(clusters.into_iter().map(Server::Postgres));
            Ok("postgres")
        }
        Err(why) => {
            println!("PostgreSQL server not available ({why});\nusing plain TCP listeners instead (check = \"tcp\")");
            for alias in ALIASES {
                let l = Listener::bind(0).map_err(|e| e.to_string())?;
                let port = l.port;
                println!("  {alias:<10} TCP listener on 127.0.0.1:{port}");
                out.push(Server::Tcp {
                    port,
                    listener: Some(l),
                });
            }
            Ok("tcp")
        }
    }
}
