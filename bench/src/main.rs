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

mod common;
mod dcs;
mod django;
mod failover;
mod footprint;
mod haproxy;
mod mysql;
mod operators;
mod probecost;
mod reader;
mod report;
mod scaling;
mod soak;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
        /// Only this fault: stopped, frozen or blackholed.
        #[arg(long)]
        fault: Option<String>,
    },
    /// The mysql check on MariaDB: detection against HAProxy's mysql-check, a
    /// promotion, server CPU per probe, the agent's footprint.
    Mysql {
        #[arg(long, default_value_t = 20)]
        trials: usize,
    },
    /// A primary restart (pg_ctl restart -m fast) at the shipped example's
    /// settings, with writes = "any" and "primary": where writes went, and how long
    /// readers had none.
    Restart {
        #[arg(long, default_value_t = 10)]
        trials: usize,
    },
    /// What a probe costs the database server: a held session's query, a new
    /// SCRAM login per probe, HAProxy's pgsql-check.
    ProbeCost,
    /// What a failover window (no primary, nothing promoted) costs the standbys:
    /// probes, new connections and CPU per second, held sessions and per probe.
    Window {
        /// The window's length (promotion_window).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
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
    /// The soak of operator events against real PostgreSQL (a primary and a
    /// streaming standby): primary restarts, failovers with the old primary back,
    /// receiver cuts, agent restarts and kills, SIGHUP storms; reader processes and
    /// the driver check the invariants. Fails on any violation.
    SoakOperators {
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        readers: usize,
        /// Chooses the sequence of events (the same seed, the same sequence).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Patroni followed from the app hosts: a leader change (switchover, kill -9)
    /// to five [dcs] agents' readers; the switchover through the Patroni REST
    /// check and HAProxy (Patroni's sample settings, inter 100ms); logins and
    /// CPU per app host of each way of knowing the primary.
    Dcs {
        #[arg(long, default_value_t = 10)]
        switchovers: usize,
        #[arg(long, default_value_t = 4)]
        kills: usize,
        /// How long each way's cost is measured.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// etcd frozen and killed at random under five [dcs] agents: writes never
    /// published past ttl - loop_wait after etcd was lost. Fails on any
    /// violation.
    DcsSoak {
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// (Internal) one reader process of `soak` and `soak-operators`.
    #[command(hide = true)]
    SoakReader {
        state: PathBuf,
        #[arg(long)]
        seconds: f64,
        /// Stop once this file exists.
        #[arg(long)]
        stop_file: Option<PathBuf>,
    },
    /// Agent resident memory and CPU per hour at 3 and 64 endpoints, interval 1s.
    Footprint {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Django under gunicorn and 32 HTTP clients through a failover (stop,
    /// blackhole, freeze of the primary, a standby promoted 1 s later) and through
    /// three agent restarts: the original recipe, libpq multi-host, FailoverRouter
    /// and the dbha backend; then the backend's cost per query against Django's.
    Django {
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Only this fault: stop, blackhole, freeze or agent-restart.
        #[arg(long)]
        fault: Option<String>,
        /// Only this strategy: recipe, libpq, router, backend-error or backend
        /// (with --mariadb: recipe, plain, router or backend).
        #[arg(long)]
        strategy: Option<String>,
        /// The agent's interval (and timeout, at least 200 ms), e.g. "1s".
        #[arg(long, default_value = "100ms", value_parser = dbha_agent::config::parse_duration)]
        interval: std::time::Duration,
        /// On MariaDB (a primary and its replica) with the dbha MySQL backend.
        #[arg(long)]
        mariadb: bool,
    },
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
        What::All => report::all(cli.quick),
        What::Reader => {
            if cli.quick {
                reader::run(3, 100_000)
            } else {
                reader::run(31, 2_000_000)
            }
        }
        What::Switch { trials } => {
            failover::switch(if cli.quick { 3 } else { trials_said(trials) })
        }
        What::Live { trials } => failover::live(if cli.quick { 2 } else { trials_said(trials) }),
        What::Scaling { seconds } => scaling::scaling(if cli.quick { 0.5 } else { seconds }),
        What::ReadLoop { state, seconds } => scaling::read_loop(&state, seconds),
        What::Mysql { trials } => {
            mysql::run(if cli.quick { 2 } else { trials_said(trials) }, cli.quick)
        }
        What::Haproxy { trials, fault } => haproxy::haproxy(
            if cli.quick { 2 } else { trials_said(trials) },
            fault.as_deref(),
        ),
        What::Django {
            repeats,
            fault,
            strategy,
            interval,
            mariadb,
        } => django::run(
            cli.quick,
            repeats,
            fault.as_deref(),
            strategy.as_deref(),
            interval,
            mariadb,
        ),
        What::Footprint { seconds } => footprint::footprint(if cli.quick { 1 } else { seconds }),
        What::Soak {
            seconds,
            readers,
            seed,
        } => soak::run(if cli.quick { 15 } else { seconds }, readers, seed),
        What::SoakOperators {
            seconds,
            readers,
            seed,
        } => operators::run(if cli.quick { 60 } else { seconds }, readers, seed),
        What::SoakReader {
            state,
            seconds,
            stop_file,
        } => soak::reader(&state, seconds, stop_file.as_deref()),
        What::ProbeCost => probecost::probecost(cli.quick),
        What::Dcs {
            switchovers,
            kills,
            seconds,
        } => dcs::run(cli.quick, switchovers, kills, seconds),
        What::DcsSoak { seconds, seed } => dcs::soak(if cli.quick { 40 } else { seconds }, seed),
        What::Window { seconds } => probecost::window(cli.quick, seconds),
        What::Restart { trials } => {
            failover::restart(if cli.quick { 1 } else { trials_said(trials) })
        }
    }
}
