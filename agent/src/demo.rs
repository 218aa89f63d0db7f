//! `dbha-agent demo`: the newcomer's first command. Starts three local databases
//! (`default`, `failover1`, `failover2`: real PostgreSQL clusters when the server
//! binaries are found, plain TCP listeners otherwise), runs a real agent on a
//! temporary state file, fails the primary and brings it back on a schedule, and
//! prints what a reader sees, with the time from each fault to the switch. Cleans up
//! everything it started, also on Ctrl-C.

use crate::pg::{self, Cluster, Scratch, StopMode};
use dbha::Reader;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALIASES: [&str; 3] = ["default", "failover1", "failover2"];

/// A TCP endpoint that accepts and drops connections on a thread (a listener that
/// never accepts fills its queue after about 128 probes and then looks dead), and
/// closes when dropped.
pub struct Listener {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    pub fn bind(port: u16) -> std::io::Result<Listener> {
        let l = TcpListener::bind(("127.0.0.1", port))?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Listener {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An endpoint the demo can take down and bring back.
enum Endpoint {
    Postgres(Cluster),
    Tcp {
        port: u16,
        listener: Option<Listener>,
    },
}

impl Endpoint {
    fn port(&self) -> u16 {
        match self {
            Endpoint::Postgres(c) => c.port,
            Endpoint::Tcp { port, .. } => *port,
        }
    }

    fn down(&mut self) -> Result<&'static str, String> {
        match self {
            Endpoint::Postgres(c) => c
                .stop(StopMode::Immediate)
                .map(|_| "pg_ctl stop -m immediate")
                .map_err(|e| e.to_string()),
            Endpoint::Tcp { listener, .. } => {
                *listener = None;
                Ok("listener closed")
            }
        }
    }

    fn up(&mut self) -> Result<&'static str, String> {
        match self {
            Endpoint::Postgres(c) => c.start().map(|_| "pg_ctl start").map_err(|e| e.to_string()),
            Endpoint::Tcp { port, listener } => {
                *listener = Some(Listener::bind(*port).map_err(|e| e.to_string())?);
                Ok("listener reopened")
            }
        }
    }
}

/// The agent child process, stopped with SIGTERM (then killed) when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// Polls the reader until `want` is the active alias; returns the time it took.
fn wait_for(
    reader: &Reader,
    want: &str,
    stop: &AtomicBool,
    limit: Duration,
) -> Result<Duration, Interrupted> {
    let start = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(Interrupted);
        }
        if reader.active_alias() == Some(want) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(Interrupted);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn show(reader: &Reader) {
    if let Ok(s) = reader.snapshot() {
        let health: Vec<String> = s
            .aliases()
            .enumerate()
            .map(|(i, a)| format!("{a}={}", if s.is_healthy(i as u32) { "up" } else { "down" }))
            .collect();
        println!(
            "    reader sees: active={} epoch={} status={} [{}]",
            s.write_alias().unwrap_or("NONE"),
            s.epoch,
            crate::status::status_name(s.status),
            health.join(" ")
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
    match run(short, listeners, &stop) {
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

fn run(short: bool, listeners: bool, stop: &AtomicBool) -> Result<(), String> {
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
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let check = start_endpoints(scratch.path(), &mut endpoints, listeners, stop)?;
    let state = scratch.path().join("state");
    let config = scratch.path().join("dbha.toml");
    let mut text = format!(
        "state_file = \"{}\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {}\nfall = {}\nfailback = \"auto\"\nstale_after = \"2s\"\n",
        state.display(),
        schedule.interval.as_millis(),
        schedule.timeout.as_millis(),
        schedule.rise,
        schedule.fall
    );
    for (alias, e) in ALIASES.iter().zip(&endpoints) {
        text.push_str(&format!(
            "\n[[database]]\nalias = \"{alias}\"\nhost = \"127.0.0.1\"\nport = {}\ncheck = \"{check}\"\n",
            e.port()
        ));
    }
    std::fs::write(&config, &text).map_err(|e| e.to_string())?;
    println!(
        "\nagent: interval {:?}, timeout {:?}, rise {}, fall {}, failback auto, check \"{check}\"\n",
        schedule.interval, schedule.timeout, schedule.rise, schedule.fall
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
    let _agent = AgentProcess(child);

    let patience = Duration::from_secs(30);
    let opened = Instant::now();
    let reader = loop {
        match Reader::open(&state) {
            Ok(r) => break r,
            Err(_) if opened.elapsed() < patience && !stop.load(Ordering::Relaxed) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(format!("the agent did not create its state file: {e}")),
        }
    };
    let interrupted = |_| "interrupted or timed out".to_string();
    let t = wait_for(&reader, "default", stop, patience).map_err(interrupted)?;
    println!(
        "1. all three up: the reader uses default ({} ms after the agent started)",
        t.as_millis()
    );
    show(&reader);

    let mut results = Vec::new();
    let how = endpoints[0].down()?;
    println!("\n2. default goes down ({how})");
    let t = wait_for(&reader, "failover1", stop, patience).map_err(interrupted)?;
    println!(
        "   the reader switched to failover1 {} ms after the fault",
        t.as_millis()
    );
    show(&reader);
    results.push(("default stopped -> failover1", t));

    std::thread::sleep(schedule.hold);
    let how = endpoints[0].up()?;
    println!("\n3. default comes back ({how})");
    let t = wait_for(&reader, "default", stop, patience).map_err(interrupted)?;
    println!("   after {} successful probes, failback auto returned the reader to default {} ms after it was back", schedule.rise, t.as_millis());
    show(&reader);
    results.push(("default back -> default", t));

    if let Endpoint::Postgres(c) = &endpoints[0] {
        std::thread::sleep(schedule.hold);
        c.freeze();
        println!("\n4. default hangs (SIGSTOP: TCP still accepts, nothing answers; a TCP check would call it healthy)");
        let t = wait_for(&reader, "failover1", stop, patience).map_err(interrupted)?;
        println!(
            "   the postgres check saw it: reader on failover1 {} ms after the freeze",
            t.as_millis()
        );
        show(&reader);
        results.push(("default frozen -> failover1", t));
        c.thaw();
        let t = wait_for(&reader, "default", stop, patience).map_err(interrupted)?;
        println!("   thawed: back on default after {} ms", t.as_millis());
        results.push(("default thawed -> default", t));
    }

    println!("\nsummary (time from the event to what a reader sees):");
    for (what, t) in &results {
        println!("  {what:<32} {:>6} ms", t.as_millis());
    }
    println!(
        "  expected for a refused connection: about (fall - 1) x interval = {} ms, plus up to one interval of probe phase",
        (schedule.fall - 1) * schedule.interval.as_millis() as u32
    );
    println!(
        "\nstopping the agent and the databases, removing {}",
        scratch.path().display()
    );
    Ok(())
}

/// Starts the three endpoints; returns the check kind to configure.
fn start_endpoints(
    root: &Path,
    out: &mut Vec<Endpoint>,
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
            // initdb takes a second or two each: run them side by side.
            let inits: Vec<_> = ALIASES
                .iter()
                .map(|alias| {
                    let install = install.clone();
                    let pg_root = pg_root.clone();
                    std::thread::spawn(move || -> Result<Cluster, String> {
                        let port = pg::free_port("127.0.0.1").map_err(|e| e.to_string())?;
                        let mut c = Cluster::init(&install, &pg_root, alias, "127.0.0.1", port)
                            .map_err(|e| e.to_string())?;
                        c.start_on_free_port().map_err(|e| e.to_string())?;
                        Ok(c)
                    })
                })
                .collect();
            let mut first_err = None;
            for (alias, h) in ALIASES.iter().zip(inits) {
                match h
                    .join()
                    .map_err(|_| "initdb thread panicked".to_string())
                    .and_then(|r| r)
                {
                    Ok(c) => {
                        println!("  {alias:<10} PostgreSQL on 127.0.0.1:{}", c.port);
                        out.push(Endpoint::Postgres(c));
                    }
                    Err(e) => first_err = first_err.or(Some(e)),
                }
            }
            if stop.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            match first_err {
                None => Ok("postgres"),
                Some(e) => Err(e),
            }
        }
        Err(why) => {
            println!("PostgreSQL server not available ({why});\nusing plain TCP listeners instead (check = \"tcp\")");
            for alias in ALIASES {
                let l = Listener::bind(0).map_err(|e| e.to_string())?;
                let port = l.port;
                println!("  {alias:<10} TCP listener on 127.0.0.1:{port}");
                out.push(Endpoint::Tcp {
                    port,
                    listener: Some(l),
                });
            }
            Ok("tcp")
        }
    }
}
