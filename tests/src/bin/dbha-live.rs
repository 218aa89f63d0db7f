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
//!
//! With `--mariadb NAME NAME`: a MariaDB primary and its GTID replica,
//! semi-synchronous, and an agent with the mysql check logged in as a monitor
//! user; the JSON line also gives the application's `user`, `password` and
//! `database` (a user without SUPER, which read_only binds). `stop` kills the
//! server (a crash), `start` starts it again as it was (an old primary comes
//! back writable), `promote` makes a replica a primary as an operator does,
//! `read-only NAME on|off` sets its read_only; `wait semi-sync` waits until
//! the replica is connected semi-synchronously again; `agent pause` and
//! `agent resume`.

use dbha_harness::pg::StopMode;
use dbha_tests::agentproc::{config, AgentProc, Timing};
use dbha_tests::live::Live;
use std::io::BufRead;

fn main() {
    let mut names = Vec::new();
    let mut replicated = false;
    let mut mariadb = false;
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
            "--mariadb" => mariadb = true,
            _ => names.push(a),
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    if mariadb {
        return mariadb_live(&names, &t);
    }
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

/// The application's user on the MariaDB servers, its password, its database.
const APP: (&str, &str, &str) = ("app", "app-pw", "app");

fn mariadb_live(names: &[&str], t: &Timing) {
    use dbha_tests::mariadb::{self, Pair};
    assert_eq!(
        names.len(),
        2,
        "--mariadb takes two names: the primary and its replica"
    );
    if mariadb::prerequisites().is_none() {
        eprintln!("dbha-live: MariaDB is not installed");
        std::process::exit(1);
    }
    let mut p = Pair::start_semi_synchronous().unwrap_or_else(|e| panic!("MariaDB: {e}"));
    let (user, password, database) = APP;
    p.primary
        .sql(&format!("CREATE DATABASE {database}"))
        .and_then(|_| p.primary.create_user("dbha", "monitor-pw", "SLAVE MONITOR"))
        .and_then(|()| p.primary.create_user(user, password, ""))
        .and_then(|_| {
            p.primary.sql(&format!(
                "GRANT ALL ON {database}.* TO '{user}'@'127.0.0.1'"
            ))
        })
        .and_then(|_| p.replica.caught_up())
        .expect("users and the database");
    let pw = dbha_tests::password_file(p.dir(), "monitor.pw", "monitor-pw");
    let dbs = [
        (names[0], "127.0.0.1", p.primary.port, "mysql"),
        (names[1], "127.0.0.1", p.replica.port, "mysql"),
    ];
    let mut agent = AgentProc::start(p.dir(), "agent", |s| {
        config(
            s,
            t,
            &dbs,
            &format!(
                "writes = \"primary\"\nreads = \"prefer-standby\"\nuser = \"dbha\"\npassword_file = \"{}\"",
                pw.display()
            ),
        )
    });
    agent.reader();
    println!(
        "{}",
        serde_json::json!({
            "state": agent.state,
            "log": p.dir().join("agent.log"),
            "kind": "mariadb",
            "user": user,
            "password": password,
            "database": database,
            "databases": {
                names[0]: {"host": "127.0.0.1", "port": p.primary.port},
                names[1]: {"host": "127.0.0.1", "port": p.replica.port},
            },
        })
    );
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let mut words = line.split_whitespace();
        let (cmd, name) = (words.next(), words.next());
        let server = match name {
            Some(n) if n == names[0] => Some(&mut p.primary),
            Some(n) if n == names[1] => Some(&mut p.replica),
            _ => None,
        };
        let reply = match (cmd, server) {
            (Some("wait"), _) if name == Some("semi-sync") => {
                p.wait_semi_synchronous().map_err(|e| e.to_string())
            }
            (Some("agent"), _) if name == Some("pause") => {
                agent.signal(nix::sys::signal::Signal::SIGSTOP);
                Ok(())
            }
            (Some("agent"), _) if name == Some("resume") => {
                agent.signal(nix::sys::signal::Signal::SIGCONT);
                Ok(())
            }
            (Some("stop"), Some(s)) => {
                s.kill();
                Ok(())
            }
            (Some("start"), Some(s)) => s.start_again().map_err(|e| e.to_string()),
            (Some("freeze"), Some(s)) => {
                s.freeze(true);
                Ok(())
            }
            (Some("thaw"), Some(s)) => {
                s.freeze(false);
                Ok(())
            }
            (Some("promote"), Some(s)) => s.promote().map_err(|e| e.to_string()),
            // read-only NAME on|off: SET GLOBAL read_only, as an operator does.
            (Some("read-only"), Some(s)) => {
                let on = words.next() == Some("on");
                s.sql(&format!("SET GLOBAL read_only = {}", u8::from(on)))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            _ => Err(format!("cannot do {line:?}")),
        };
        match reply {
            Ok(()) => println!("ok"),
            Err(e) => println!("error: {e}"),
        }
    }
    drop(agent);
}
