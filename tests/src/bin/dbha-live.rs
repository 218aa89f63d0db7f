//! Live PostgreSQL clusters and a real agent for tests in other languages (the
//! Django end-to-end test):
//!
//!     dbha-live NAME... [--interval-ms N] [--timeout-ms N] [--fall N] [--rise N]
//!               [--replicated]
//!
//! Starts one cluster per NAME (priority order) and an agent with the postgres
//! check. With `--replicated`, the first is a primary and the others its streaming
//! standbys; commits wait for the second (synchronous replication, so a promoted
//! second has every acknowledged write); the agent runs with writes = "primary"
//! and reads = "prefer-standby". Then it prints one JSON line: {"state": PATH, "log": PATH, "databases":
//! {NAME: {"host": H, "port": P}, ...}}. Commands on standard input, one per line,
//! answered `ok` or `error: ...`: `stop NAME` (immediate), `start NAME`, `freeze
//! NAME`, `thaw NAME`, `promote NAME`, `agent restart` (SIGTERM, then a new
//! agent on the same configuration and state file, as `systemctl restart` does),
//! and `agent pause` / `agent resume` (SIGSTOP / SIGCONT: a fault the agent has
//! not seen yet).
//! At end of input everything is stopped and removed.

use dbha_harness::pg::StopMode;
use dbha_tests::agentproc::{config, AgentProc, Timing};
use dbha_tests::live::Live;
use std::io::BufRead;

fn main() {
    let mut names = Vec::new();
    let mut replicated = false;
    let mut t = Timing {
        interval_ms: 100,
        timeout_ms: 300,
        rise: 2,
        fall: 2,
        stale_after_ms: 2000,
        failback: "sticky",
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--interval-ms" => t.interval_ms = value(),
            "--timeout-ms" => t.timeout_ms = value(),
            "--fall" => t.fall = value() as u32,
            "--rise" => t.rise = value() as u32,
            "--replicated" => replicated = true,
            _ => names.push(a),
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let live = if replicated {
        Live::replicated(names[0], &names[1..], "trust", None)
    } else {
        Live::start(&names)
    };
    let Some(live) = live else {
        eprintln!("dbha-live: PostgreSQL is not installed");
        std::process::exit(1);
    };
    let mut extra = "";
    if replicated {
        live.synchronous_to(names[1]);
        extra = "writes = \"primary\"\nreads = \"prefer-standby\"";
    }
    let mut agent = AgentProc::start(live.dir.path(), "agent", |s| {
        config(s, &t, &live.dbs("postgres"), extra)
    });
    agent.reader();
    let databases: serde_json::Map<String, serde_json::Value> = live
        .clusters
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                serde_json::json!({"host": c.host, "port": c.port}),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "state": agent.state,
            "log": live.dir.path().join("agent.log"),
            "databases": databases,
        })
    );
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next()) {
            (Some("agent"), Some("restart")) => {
                agent.signal(nix::sys::signal::Signal::SIGTERM);
                let _ = agent.child().wait();
                agent.spawn();
                Ok(())
            }
            (Some("agent"), Some("pause")) => {
                agent.signal(nix::sys::signal::Signal::SIGSTOP);
                Ok(())
            }
            (Some("agent"), Some("resume")) => {
                agent.signal(nix::sys::signal::Signal::SIGCONT);
                Ok(())
            }
            (Some(cmd), Some(name)) if live.clusters.iter().any(|c| c.name == name) => {
                let c = live.cluster(name);
                match cmd {
                    "stop" => c.stop(StopMode::Immediate).map_err(|e| e.to_string()),
                    "start" => c.start().map_err(|e| e.to_string()),
                    "freeze" => {
                        c.freeze();
                        Ok(())
                    }
                    "thaw" => {
                        c.thaw();
                        Ok(())
                    }
                    "promote" => c.promote().map_err(|e| e.to_string()),
                    _ => Err(format!("unknown command {cmd:?}")),
                }
            }
            _ => Err(format!("cannot do {line:?}")),
        };
        match reply {
            Ok(()) => println!("ok"),
            Err(e) => println!("error: {e}"),
        }
    }
}
