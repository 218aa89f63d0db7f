//! The soak of operator events: what operators do every week, against real
//! PostgreSQL (a primary and a streaming standby, writes = "primary", reads =
//! "prefer-standby"), in a random order chosen by a seed: primary restarts (fast
//! and immediate), a failover (the primary stopped, the standby promoted, the old
//! primary back as a second primary, then rebuilt as a standby of the new one),
//! the standby's WAL receiver cut and restored, the agent restarted (SIGTERM and
//! a new agent) and killed (SIGKILL), SIGHUP storms.
//!
//! Reader processes check the invariants of `soak` on every read (among them:
//! writes never go to a fenced endpoint, nor to one on a lower timeline than one
//! seen). The driver checks two more: an agent restart changes nothing a reader
//! sees (status, epoch, write and read endpoint, traced every 200 µs from the
//! SIGTERM until the new agent has its verdicts), and once the databases are
//! settled after each event, no endpoint is probed faster than about its
//! `interval` (the agent's `dbha_probes_total`): a fast pace never outlives its
//! verdict attempt.

use crate::common::Rng;
use crate::soak::Found;
use dbha::Reader;
use dbha_harness::pg::{Cluster, StopMode};
use dbha_tests::agentproc::{config, wait_for, AgentProc, Timing};
use dbha_tests::live::Live;
use dbha_tests::metrics::{http_get, metric};
use dbha_tests::trace::Trace;
use nix::sys::signal::Signal;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAMES: [&str; 2] = ["default", "failover1"];

/// What the driver did, and what it found.
#[derive(Debug, Default)]
struct Events {
    restarts_fast: u64,
    restarts_immediate: u64,
    failovers: u64,
    receiver_cuts: u64,
    agent_restarts: u64,
    agent_kills: u64,
    storms: u64,
    /// Agent restarts during which a reader saw something change.
    restart_visible: u64,
    /// Settled moments at which an endpoint was probed too fast.
    pace_violations: u64,
    first_problem: String,
}

impl Events {
    fn problem(&mut self, what: String) {
        if self.first_problem.is_empty() {
            self.first_problem = what;
        }
    }
}

/// The soak's world: the clusters, which one is the primary, the agent.
struct World {
    // Fields drop in this order: the agent before the clusters and their
    // scratch directory, so that it cannot put its state file back into a
    // directory already removed (and leave it behind).
    agent: AgentProc,
    reader: Reader,
    live: Live,
    primary: usize,
    metrics: String,
    t: Timing,
}

impl World {
    fn cluster(&self, i: usize) -> &Cluster {
        &self.live.clusters[i]
    }

    fn standby(&self) -> usize {
        1 - self.primary
    }

    /// Waits until the agent writes to the primary and reads from the standby,
    /// both healthy, neither fenced, and every probe has reported since.
    fn settle(&self) {
        let (p, s) = (self.primary as u32, self.standby() as u32);
        wait_for("the databases settled", || {
            let snap = self.reader.snapshot().ok()?;
            let ok = snap.write_index == Some(p)
                && snap.read_index == Some(s)
                && snap.health_mask == 0b11
                && !snap.fence(p).fenced
                && !snap.fence(s).fenced
                && snap.last_probe_name(p) == "ok"
                && snap.last_probe_name(s) == "ok";
            ok.then_some(())
        });
    }

    /// Probe results per endpoint in `over`, from the agent's metrics.
    fn probe_rate(&self, over: Duration) -> Vec<f64> {
        let count = || {
            let text = http_get(&self.metrics, "/metrics");
            NAMES
                .iter()
                .map(|a| metric(&text, &format!("dbha_probes_total{{alias=\"{a}\"}}")))
                .collect::<Vec<f64>>()
        };
        let before = count();
        std::thread::sleep(over);
        count().iter().zip(before).map(|(a, b)| a - b).collect()
    }

    /// Once settled: probed at about `interval`, not `fastinter`.
    fn check_pace(&self, e: &mut Events) {
        self.settle();
        // Past any verdict attempt still under way.
        std::thread::sleep(Duration::from_millis(self.t.interval_ms * 3));
        let over = Duration::from_secs(2);
        let expected = over.as_millis() as f64 / self.t.interval_ms as f64;
        for (alias, n) in NAMES.iter().zip(self.probe_rate(over)) {
            // At fastinter (10 ms) it would be 200.
            if n > expected * 1.5 + 4.0 {
                e.pace_violations += 1;
                e.problem(format!(
                    "{alias}: {n} probes in {over:?} while settled (about {expected} expected)"
                ));
            }
        }
    }

    /// SIGTERM and a new agent on the same file, traced: nothing may change.
    fn restart_agent(&mut self, e: &mut Events) {
        self.settle();
        let trace = Trace::start(&self.agent.state);
        std::thread::sleep(Duration::from_millis(50));
        self.agent.signal(Signal::SIGTERM);
        let _ = self.agent.child().wait();
        self.agent.spawn();
        // Its verdicts: every endpoint probed by the new agent.
        let pid = self.agent.pid().as_raw() as u32;
        wait_for("the new agent's verdicts", || {
            let s = self.reader.snapshot().ok()?;
            (s.writer_pid == pid && s.last_probe_name(0) == "ok" && s.last_probe_name(1) == "ok")
                .then_some(())
        });
        std::thread::sleep(Duration::from_millis(self.t.interval_ms * 3));
        let traced = trace.finish();
        let first = &traced.seen[0];
        let changed = traced.seen.iter().find(|s| {
            (s.status, s.epoch, &s.write, &s.read)
                != (first.status, first.epoch, &first.write, &first.read)
        });
        if let Some(c) = changed {
            e.restart_visible += 1;
            e.problem(format!(
                "an agent restart was visible: {first:?} then {c:?}"
            ));
        }
        e.agent_restarts += 1;
    }

    /// The primary stopped, the standby promoted, the old primary back as a
    /// second primary (fenced), then rebuilt as a standby of the new one.
    fn failover(&mut self) {
        let (old, new) = (self.primary, self.standby());
        self.cluster(old)
            .stop(StopMode::Immediate)
            .expect("stop the primary");
        self.cluster(new).promote().expect("promote the standby");
        wait_for("writes on the promoted standby", || {
            (self.reader.snapshot().ok()?.write_index == Some(new as u32)).then_some(())
        });
        self.cluster(old).start().expect("start the old primary");
        wait_for("the old primary fenced", || {
            self.reader
                .snapshot()
                .ok()?
                .fence(old as u32)
                .fenced
                .then_some(())
        });
        let (o, n) = (&self.live.clusters[old], &self.live.clusters[new]);
        o.rebuild_as_standby_of(n)
            .expect("rebuild the old primary as a standby");
        self.primary = new;
    }

    /// The standby's WAL receiver cut for `hold`, then restored.
    fn cut_receiver(&self, hold: Duration) {
        let s = self.cluster(self.standby());
        let conninfo = s.psql("SHOW primary_conninfo").expect("primary_conninfo");
        let set = |v: &str| {
            s.psql(&format!(
                "ALTER SYSTEM SET primary_conninfo = '{}'",
                v.replace('\'', "''")
            ))
            .and_then(|_| s.psql("SELECT pg_reload_conf()"))
            .expect("set primary_conninfo");
        };
        set("host=127.0.0.1 port=1 user=postgres");
        let p = self.cluster(self.primary);
        let end = Instant::now() + hold;
        while Instant::now() < end {
            let _ = p.psql("INSERT INTO ticks VALUES (now())");
            std::thread::sleep(Duration::from_millis(100));
        }
        set(conninfo.trim());
    }
}

pub fn run(seconds: u64, readers: usize, seed: u64) {
    let live = Live::replicated(NAMES[0], &NAMES[1..], "trust", None)
        .expect("PostgreSQL is required for the operator soak (tests/setup.sh installs it)");
    live.clusters[0]
        .psql("CREATE TABLE ticks (at timestamptz)")
        .expect("a table");
    let t = Timing {
        interval_ms: 100,
        timeout_ms: 300,
        rise: 2,
        fall: 2,
        stale_after_ms: 1000,
        failback: "sticky",
    };
    let metrics = format!(
        "127.0.0.1:{}",
        dbha_harness::pg::free_port("127.0.0.1").expect("a free port")
    );
    let extra = format!(
        "writes = \"primary\"\nreads = \"prefer-standby\"\nmax_replica_lag = \"1s\"\nmetrics_listen = \"{metrics}\""
    );
    let agent = AgentProc::start(live.dir.path(), "soak", |s| {
        config(s, &t, &live.dbs("postgres"), &extra)
    });
    let reader = agent.reader();
    let mut w = World {
        live,
        primary: 0,
        agent,
        reader,
        metrics,
        t,
    };
    w.settle();
    let exe = std::env::current_exe().expect("own path");
    let mut procs = dbha_tests::Children::default();
    // The readers run until the driver is done with its events.
    let stop = w.live.dir.path().join("readers.stop");
    let reader_seconds = seconds * 10 + 600;
    for _ in 0..readers {
        procs.push(
            Command::new(&exe)
                .args(["soak-reader", "--seconds", &reader_seconds.to_string()])
                .arg("--stop-file")
                .arg(&stop)
                .arg(&w.agent.state)
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a reader process"),
        );
    }
    let mut rng = Rng(seed | 1);
    let mut e = Events::default();
    let began = Instant::now();
    let end = began + Duration::from_secs(seconds);
    // Every kind once first, then at random.
    let mut order: Vec<u64> = (0..7).collect();
    while Instant::now() < end {
        let kind = if order.is_empty() {
            rng.below(7)
        } else {
            order.remove(0)
        };
        match kind {
            0 => {
                w.cluster(w.primary)
                    .restart(StopMode::Fast)
                    .expect("restart");
                e.restarts_fast += 1;
            }
            1 => {
                w.cluster(w.primary)
                    .restart(StopMode::Immediate)
                    .expect("restart");
                e.restarts_immediate += 1;
            }
            2 => {
                w.failover();
                e.failovers += 1;
            }
            3 => {
                w.cut_receiver(Duration::from_millis(500 + rng.below(1500)));
                e.receiver_cuts += 1;
            }
            4 => w.restart_agent(&mut e),
            5 => {
                w.agent.signal(Signal::SIGKILL);
                let _ = w.agent.child().wait();
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
                w.agent.spawn();
                e.agent_kills += 1;
            }
            _ => {
                for _ in 0..10 {
                    w.agent.signal(Signal::SIGHUP);
                    std::thread::sleep(Duration::from_millis(30));
                }
                e.storms += 1;
            }
        }
        w.check_pace(&mut e);
    }
    let events_took = began.elapsed();
    std::fs::write(&stop, "").expect("the readers' stop file");
    let found = crate::soak::collect(&mut procs);
    report(events_took, seed, &e, &found, &w.t);
    let violations: u64 = found.iter().map(|f| f.violations).sum();
    assert!(
        violations == 0 && e.restart_visible == 0 && e.pace_violations == 0,
        "invariants broken: readers {:?}; driver: {}",
        found.iter().map(|f| &f.first_violation).collect::<Vec<_>>(),
        e.first_problem
    );
}

fn report(took: Duration, seed: u64, e: &Events, found: &[Found], t: &Timing) {
    let sum = |f: &dyn Fn(&Found) -> u64| found.iter().map(f).sum::<u64>();
    println!("| soak of operator events | value |\n|---|---|");
    println!(
        "| duration, reader processes | {:.0} s, {} |",
        took.as_secs_f64(),
        found.len()
    );
    println!(
        "| events | {} primary restarts (fast), {} (immediate), {} failovers (promotion, old primary back, rebuilt as standby), {} receiver cuts, {} agent restarts (SIGTERM + start), {} agent kills (SIGKILL + start after 0-1.5 s), {} SIGHUP storms |",
        e.restarts_fast,
        e.restarts_immediate,
        e.failovers,
        e.receiver_cuts,
        e.agent_restarts,
        e.agent_kills,
        e.storms
    );
    println!("| reads | {} |", sum(&|f| f.reads));
    println!(
        "| **invariant violations** (readers: epoch, aliases, status, fenced or older-timeline write endpoint) | **{}** |",
        sum(&|f| f.violations)
    );
    println!(
        "| **agent restarts a reader saw** (status, epoch, write, read) | **{} of {}** |",
        e.restart_visible, e.agent_restarts
    );
    println!(
        "| **settled moments probed faster than interval** | **{}** |",
        e.pace_violations
    );
    println!(
        "\nseed {seed}; a primary and a streaming standby (PostgreSQL, loopback); agent: writes = \"primary\", reads = \"prefer-standby\", interval {} ms, timeout {} ms, rise/fall {}/{}, stale_after {} ms, max_replica_lag 1 s",
        t.interval_ms, t.timeout_ms, t.rise, t.fall, t.stale_after_ms
    );
}
