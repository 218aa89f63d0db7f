//! The `dbha-agent` command line: run, check, status, watch, unfence, demo.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use dbha_agent::{config, run, status};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dbha-agent",
    version,
    about = "Tells the applications on this host which database to use, through a shared state file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (logs to stderr; RUST_LOG filters, INFO by default).
    Run {
        #[arg(long, short, default_value = "/etc/dbha/dbha.toml")]
        config: PathBuf,
    },
    /// Validate a configuration and print what it resolves to (exit 0 if valid, 1 if not).
    Check {
        #[arg(long, short, default_value = "/etc/dbha/dbha.toml")]
        config: PathBuf,
    },
    /// Print what a reader sees now (exit 0 if a database takes writes, 3 if one
    /// takes only reads, 2 if none or the agent is stale or stopped, 1 on error).
    Status {
        #[arg(long, env = "DBHA_STATE", default_value = config::DEFAULT_STATE_FILE)]
        state: PathBuf,
        /// Stable JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Exit 0 also while reads only have a database (a failover window): for
        /// a readiness probe of an app that serves reads through it.
        #[arg(long)]
        read_only_ok: bool,
    },
    /// Clear the fence on an endpoint (one that claimed primary beside the write
    /// endpoint, or on an older timeline): it may take writes again.
    Unfence {
        /// The endpoint's alias.
        alias: String,
        #[arg(long, env = "DBHA_STATE", default_value = config::DEFAULT_STATE_FILE)]
        state: PathBuf,
    },
    /// Print one line per change of the published decision, until interrupted.
    Watch {
        #[arg(long, env = "DBHA_STATE", default_value = config::DEFAULT_STATE_FILE)]
        state: PathBuf,
    },
    /// Start three local databases (with PostgreSQL: a primary and two streaming
    /// standbys) and an agent, take them through a failover, and show what a reader
    /// sees and how fast.
    #[cfg(feature = "demo")]
    Demo {
        /// A faster schedule (used by the test suite).
        #[arg(long)]
        short: bool,
        /// Plain TCP listeners even when PostgreSQL is installed.
        #[arg(long)]
        listeners: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let code = match cli.command {
        Command::Run { config } => match run::run(&config) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("{e}");
                1
            }
        },
        Command::Check { config } => match config::Config::load(&config) {
            Ok(c) => {
                // Valid TOML throughout: the notes are comments.
                let mut text = format!(
                    "# {}: valid; as resolved, defaults filled in:\n{c}",
                    config.display()
                );
                for w in c.unresolvable_hosts() {
                    text += &format!("# warning: {w}\n");
                }
                status::out(&text);
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::Status {
            state,
            json,
            read_only_ok,
        } => status::status(&state, json, read_only_ok),
        Command::Unfence { alias, state } => dbha_agent::unfence::unfence(&state, &alias),
        Command::Watch { state } => status::watch(&state, Duration::from_millis(20)),
        #[cfg(feature = "demo")]
        Command::Demo { short, listeners } => dbha_agent::demo::demo(short, listeners),
    };
    ExitCode::from(code as u8)
}
