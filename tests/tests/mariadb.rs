//! MariaDB on loopback, for the mysql check: two real servers with GTID
//! replication, as the harness starts them, and the real agent. Without a
//! user it judges greetings: servers up, stopped, frozen, and ports that
//! answer something else, closed or silent. With one it logs in, holds a
//! session and reads the role from read_only: a replica listed first never
//! takes writes, writes follow a promotion, an old primary back writable is
//! fenced, a killed session moves nothing, a replica that stopped replicating
//! leaves the reads. Time bounds only catch hangs.

use dbha::Reader;
use dbha_harness::Listener;
use dbha_tests::agentproc::{config, loopback_config, wait_for, wait_write, AgentProc, Timing};
use dbha_tests::mariadb::{self, Pair};
use dbha_tests::password_file;
use dbha_tests::trace::Trace;
use std::time::{Duration, Instant};

#[test]
fn a_primary_and_its_replica_replicate_and_the_replica_can_be_promoted() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    let p = Pair::start().unwrap();
    assert!(!p.primary.read_only().unwrap());
    assert!(p.replica.read_only().unwrap());
    p.primary
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)")
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while p.replica.sql("SELECT COUNT(*) FROM app.t").ok().as_deref() != Some("1") {
        assert!(Instant::now() < until, "the row never reached the replica");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.replica.promote().unwrap();
    assert!(!p.replica.read_only().unwrap());
    p.replica.sql("INSERT INTO app.t VALUES (2)").unwrap();
}

fn last_probe(r: &Reader, i: u32) -> String {
    r.snapshot()
        .map(|s| s.last_probe_name(i).to_owned())
        .unwrap_or_default()
}

fn aborted_connects(s: &mariadb::Server) -> u64 {
    s.sql("SHOW GLOBAL STATUS LIKE 'Aborted_connects'")
        .unwrap()
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn the_mysql_check_judges_greetings_of_real_servers_and_of_other_ports() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    let mut p = Pair::start().unwrap();
    let http =
        Listener::answering(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").unwrap();
    let silent = Listener::answering(b"").unwrap();
    let closes = Listener::bind(0).unwrap();
    let (db0, db1) = (p.primary.port, p.replica.port);
    let a = AgentProc::start(p.dir(), "agent", |s| {
        loopback_config(
            s,
            &[
                ("db0", db0, "mysql"),
                ("db1", db1, "mysql"),
                ("http", http.port, "mysql"),
                ("silent", silent.port, "mysql"),
                ("closes", closes.port, "mysql"),
            ],
            "",
        )
    });
    let r = a.reader();
    wait_write(&r, "db0");
    let want = ["ok", "ok", "not_mysql", "timeout", "closed"];
    wait_for("every endpoint judged", || {
        (0..5u32)
            .all(|i| last_probe(&r, i) == want[i as usize])
            .then_some(())
    });
    let s = r.snapshot().unwrap();
    assert_eq!(s.health_mask, 0b11, "{}", a.log());
    assert!(
        a.log().contains("not a MySQL or MariaDB server"),
        "{}",
        a.log()
    );

    // Each probe is an aborted connection on the server (the cost the
    // operator's guide states), and nothing else.
    let before = aborted_connects(&p.primary);
    std::thread::sleep(Duration::from_secs(2));
    assert!(aborted_connects(&p.primary) > before);

    // The primary stopped: refused, writes to the other server (this check
    // sees no roles: writes = "any").
    p.primary.stop();
    wait_write(&r, "db1");
    assert_eq!(last_probe(&r, 0), "refused");

    // The other one frozen: its greeting never comes.
    p.replica.freeze(true);
    wait_for("the frozen server timed out", || {
        (last_probe(&r, 1) == "timeout").then_some(())
    });
    wait_for("no healthy database", || {
        (r.snapshot().ok()?.health_mask & 0b11 == 0).then_some(())
    });
    p.replica.freeze(false);
    p.primary.start_again().unwrap();
    wait_for("both servers ok again", || {
        (last_probe(&r, 0) == "ok" && last_probe(&r, 1) == "ok").then_some(())
    });
}

#[test]
fn greeting_only_probes_from_another_address_get_the_host_blocked_until_flush_hosts() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    // Declared first, dropped last: after the server in it has stopped.
    let Some(ns) = dbha_tests::netfault::Netns::new() else {
        return;
    };
    let dir = dbha_harness::pg::Scratch::new("mariadb-blocked").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Name resolution on (the harness turns it off): the host cache, and so
    // max_connect_errors, applies to addresses other than the loopback whose
    // name resolves (the namespace's hosts file names this host; a lookup
    // that fails for want of DNS caches nothing and blocks nothing).
    let db = mariadb::Server::start_in(
        dir.path(),
        "db0",
        1,
        &["--skip-name-resolve=0", "--max-connect-errors=3"],
        Some(&ns),
    )
    .unwrap();
    assert_eq!(db.sql("SELECT @@skip_name_resolve").unwrap(), "0");
    let port = db.port;
    let addr = db.addr.clone();
    let a = AgentProc::start(dir.path(), "agent", |s| {
        dbha_harness::config::config(
            s,
            &dbha_harness::config::Timing::default(),
            &[("db0", addr.as_str(), port, "mysql")],
            "",
        )
    });
    let r = a.reader();
    // No account may connect from this host: refused before the greeting
    // (1130), said with its code.
    wait_for("1130 from the server", || {
        (last_probe(&r, 0) == "rejected").then_some(())
    });
    a.wait_log("1130");
    // An account from anywhere: greetings, each probe an aborted connection
    // from this host, and after max_connect_errors of them the host blocked.
    db.sql("CREATE USER 'app'@'%' IDENTIFIED BY 'app-pw'")
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while last_probe(&r, 0) != "host_blocked" {
        assert!(
            Instant::now() < until,
            "never blocked; last probe {}; aborted connects {}\n{}",
            last_probe(&r, 0),
            aborted_connects(&db),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.wait_log("FLUSH HOSTS");
    wait_for("the blocked server down", || {
        (r.snapshot().ok()?.health_mask == 0).then_some(())
    });
    // The operator's way out: a higher limit, then FLUSH HOSTS.
    db.sql("SET GLOBAL max_connect_errors = 1000000; FLUSH HOSTS")
        .unwrap();
    wait_write(&r, "db0");
    assert_eq!(last_probe(&r, 0), "ok");
    drop(a);
    drop(db);
}

/// The monitor user of these tests and its password.
const MONITOR: &str = "dbha";
const MONITOR_PW: &str = "m0nitor-pw";

/// An agent logging in as the monitor user to `dbs` (alias, port) in that
/// order, writes to a primary only, reads preferring a replica; `extra` goes
/// into the top level.
fn login_agent(
    dir: &std::path::Path,
    name: &str,
    dbs: &[(&str, u16)],
    pw: &str,
    extra: &str,
) -> AgentProc {
    let pw_file = password_file(dir, &format!("{name}.pw"), pw);
    let dbs: Vec<_> = dbs
        .iter()
        .map(|(a, p)| (*a, "127.0.0.1", *p, "mysql"))
        .collect();
    AgentProc::start(dir, name, |s| {
        config(
            s,
            &Timing::live("sticky"),
            &dbs,
            &format!(
                "writes = \"primary\"\nreads = \"prefer-standby\"\nuser = \"{MONITOR}\"\npassword_file = \"{}\"\n{extra}",
                pw_file.display()
            ),
        )
    })
}

/// A primary and its replica with the monitor user (created on the primary,
/// replicated to the replica).
fn monitored_pair() -> Pair {
    let p = Pair::start().unwrap();
    p.primary
        .create_user(MONITOR, MONITOR_PW, "SLAVE MONITOR")
        .unwrap();
    p.replica.caught_up().unwrap();
    p
}

fn fenced(r: &Reader, index: u32) -> bool {
    r.snapshot().is_ok_and(|s| s.fence(index).fenced)
}

#[test]
fn with_a_login_roles_come_from_read_only_and_writes_follow_a_promotion_only() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    let mut p = monitored_pair();
    let (db0, db1) = (p.primary.port, p.replica.port);
    // The replica first: a role-blind check would write there.
    let a = login_agent(
        p.dir(),
        "agent",
        &[("db1", db1), ("db0", db0)],
        MONITOR_PW,
        "",
    );
    let r = a.reader();
    let trace = Trace::start(&a.state);
    wait_write(&r, "db0");
    wait_for("reads on the replica", || {
        (r.snapshot().ok()?.read_alias() == Some("db1")).then_some(())
    });
    let s = r.snapshot().unwrap();
    assert_eq!(s.primary_mask, 0b10, "{}", a.log());
    assert_eq!(
        (last_probe(&r, 0).as_str(), last_probe(&r, 1).as_str()),
        ("ok", "ok")
    );
    // Held sessions: one each, kept.
    assert_eq!(p.primary.sessions_of(MONITOR).unwrap().len(), 1);
    assert_eq!(p.replica.sessions_of(MONITOR).unwrap().len(), 1);

    // A wrong password: auth_failed, never chosen.
    let wrong = login_agent(p.dir(), "wrong", &[("db0", db0)], "guess", "");
    let wr = wrong.reader();
    wait_for("auth_failed", || {
        (last_probe(&wr, 0) == "auth_failed").then_some(())
    });
    assert_eq!(wr.write_alias(), None);
    wrong.wait_log("db0: down after 2 failed probes (authentication failed: 1045 Access denied for user 'dbha'@'127.0.0.1' (using password: YES) (user \"dbha\"))");
    drop(wrong);

    // The agent's session on the primary killed, alone: the session is
    // opened again and nothing moves.
    let epoch = r.snapshot().unwrap().epoch;
    for id in p.primary.sessions_of(MONITOR).unwrap() {
        p.primary.sql(&format!("KILL CONNECTION {id}")).unwrap();
    }
    a.wait_log("db0: session lost");
    std::thread::sleep(Timing::live("sticky").detection_bound() * 2);
    let s = r.snapshot().unwrap();
    assert_eq!(
        (s.write_alias(), s.epoch),
        (Some("db0"), epoch),
        "{}",
        a.log()
    );

    // The primary stopped: no write endpoint, reads stay on the replica.
    p.primary.stop();
    wait_for("no write endpoint", || {
        (r.snapshot().ok()?.write_index.is_none()).then_some(())
    });
    assert_eq!(r.read_alias(), Some("db1"));

    // The replica promoted: writes follow.
    let promoted = Instant::now();
    p.replica.promote().unwrap();
    wait_write(&r, "db1");
    println!(
        "promotion published {} ms after it was made",
        promoted.elapsed().as_millis()
    );

    // The old primary back, writable: two primaries, the old one fenced.
    p.primary.start_again().unwrap();
    wait_for("db0 fenced", || fenced(&r, 1).then_some(()));
    std::thread::sleep(Timing::live("sticky").detection_bound() * 2);
    assert_eq!(r.write_alias(), Some("db1"));
    // Writes: the primary, none while there was none, the promoted
    // replica; never the replica before, never the old primary after.
    let traced = trace.finish();
    let mut writes = traced.writes();
    if writes.first() == Some(&None) {
        writes.remove(0);
    }
    assert_eq!(writes, [Some("db0"), None, Some("db1")], "{}", a.log());
}

fn lagging(r: &Reader, index: u32) -> bool {
    r.snapshot().is_ok_and(|s| s.replica_lag(index).lagging)
}

#[test]
fn a_replica_that_stops_replicating_or_falls_behind_leaves_the_reads_and_returns() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    let p = monitored_pair();
    // A user that may not read the replication status.
    p.primary.create_user("plain", MONITOR_PW, "").unwrap();
    p.primary
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB; INSERT INTO app.t VALUES (1, 0)")
        .unwrap();
    p.replica.caught_up().unwrap();
    let (db0, db1) = (p.primary.port, p.replica.port);
    let a = login_agent(
        p.dir(),
        "agent",
        &[("db0", db0), ("db1", db1)],
        MONITOR_PW,
        "max_replica_lag = \"1s\"",
    );
    // Another agent, with a limit in GTID transactions only.
    let g = login_agent(
        p.dir(),
        "gtid",
        &[("db0", db0), ("db1", db1)],
        MONITOR_PW,
        "max_replica_lag_transactions = 0",
    );
    let gr = g.reader();
    let r = a.reader();
    wait_write(&r, "db0");
    let on_replica = || (r.read_alias() == Some("db1")).then_some(());
    wait_for("reads on the replica", on_replica);
    assert_eq!(
        r.snapshot().unwrap().replica_lag(1).delay,
        Some(Duration::ZERO)
    );

    // The SQL thread stopped: not replicating, whatever it has executed.
    p.replica.sql("STOP SLAVE SQL_THREAD").unwrap();
    wait_for("reads leave the stopped replica", || {
        (r.read_alias() == Some("db0")).then_some(())
    });
    assert!(lagging(&r, 1));
    p.replica.sql("START SLAVE SQL_THREAD").unwrap();
    wait_for("reads back on the replica", on_replica);
    assert!(!lagging(&r, 1));

    // The SQL thread held by a row lock on the replica for 4 s while the
    // primary updates the row: behind, by Seconds_Behind_Master, then caught
    // up when the lock goes.
    let _lock = p
        .replica
        .background("BEGIN; SELECT * FROM app.t WHERE id = 1 FOR UPDATE; SELECT SLEEP(4); ROLLBACK")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.primary
        .sql("UPDATE app.t SET v = v + 1 WHERE id = 1")
        .unwrap();
    wait_for("reads leave the replica behind", || {
        (r.read_alias() == Some("db0")).then_some(())
    });
    let behind = r.snapshot().unwrap().replica_lag(1).delay;
    assert!(
        behind.is_some_and(|d| d > Duration::from_secs(1)),
        "{behind:?}"
    );
    // One transaction behind by GTID: out of the other agent's reads too,
    // the update's bytes received and not executed.
    wait_for("GTID lag seen", || lagging(&gr, 1).then_some(()));
    assert_eq!(gr.read_alias(), Some("db0"));
    let backlog = gr.snapshot().unwrap().replica_lag(1).bytes;
    assert!(backlog.is_some_and(|b| b > 0), "{backlog:?}");
    wait_for("reads back once the lock is gone", on_replica);
    wait_for("GTID caught up", || (!lagging(&gr, 1)).then_some(()));
    assert_eq!(gr.read_alias(), Some("db1"));
    assert_eq!(p.replica.sql("SELECT v FROM app.t").unwrap(), "1");
    drop((a, g));

    // Without the privilege: the role is still right, the lag unknown (over
    // the limit: the replica takes no reads), said once.
    let b = AgentProc::start(p.dir(), "plain", |s| {
        config(
            s,
            &Timing::live("sticky"),
            &[
                ("db0", "127.0.0.1", db0, "mysql"),
                ("db1", "127.0.0.1", db1, "mysql"),
            ],
            &format!(
                "writes = \"primary\"\nreads = \"prefer-standby\"\nuser = \"plain\"\npassword_file = \"{}\"\nmax_replica_lag = \"1s\"",
                password_file(p.dir(), "plain.pw", MONITOR_PW).display()
            ),
        )
    });
    let r = b.reader();
    wait_write(&r, "db0");
    wait_for("db1 seen as a standby", || {
        (r.snapshot().ok()?.standby_mask == 0b10).then_some(())
    });
    b.wait_log(
        "db1: the replication status is not readable by the check's user (session refused: 1227",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(r.read_alias(), Some("db0"), "{}", b.log());
    assert!(lagging(&r, 1));
    assert_eq!(
        b.log()
            .matches("is not readable by the check's user")
            .count(),
        2,
        "once per endpoint:\n{}",
        b.log()
    );
}

#[test]
fn a_frozen_primary_mid_query_and_at_the_greeting_is_a_timeout_and_loses_the_writes() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    let p = monitored_pair();
    let (db0, db1) = (p.primary.port, p.replica.port);
    let a = login_agent(
        p.dir(),
        "agent",
        &[("db0", db0), ("db1", db1)],
        MONITOR_PW,
        "",
    );
    let r = a.reader();
    wait_write(&r, "db0");
    // Frozen: the held session's status query gets no answer, and neither
    // does a new connection's greeting.
    let frozen = Instant::now();
    p.primary.freeze(true);
    wait_for("no write endpoint", || {
        (r.snapshot().ok()?.write_index.is_none()).then_some(())
    });
    println!(
        "a frozen primary lost the writes after {} ms (fall x timeout = {} ms)",
        frozen.elapsed().as_millis(),
        2 * 300
    );
    assert_eq!(last_probe(&r, 0), "timeout");
    a.wait_log("db0: down after 2 failed probes (no answer within 300ms)");
    // The replica is not promoted: it keeps the reads, takes no writes.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!((r.write_alias(), r.read_alias()), (None, Some("db1")));
    p.primary.freeze(false);
    wait_write(&r, "db0");
}

#[test]
fn tls_is_negotiated_as_sslmode_says_against_real_servers() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    use dbha_tests::certs::{self, Ca};
    let scratch = mariadb::scratch().unwrap();
    let dir = scratch.path();
    let ca = Ca::new("mariadb test CA");
    let (cert, key) = ca.sign(&["127.0.0.1"], None);
    let cert = mariadb::server_file(&dir.join("server.pem"), &cert).unwrap();
    let key = mariadb::server_file(&dir.join("server.key"), &key).unwrap();
    let with_tls = mariadb::Server::start(
        dir,
        "tls",
        1,
        &[
            &format!("--ssl-cert={}", cert.display()),
            &format!("--ssl-key={}", key.display()),
        ],
    )
    .unwrap();
    let plain = mariadb::Server::start(dir, "plain", 2, &[]).unwrap();
    for s in [&with_tls, &plain] {
        s.create_user(MONITOR, MONITOR_PW, "SLAVE MONITOR").unwrap();
    }
    let root = certs::file(dir, "ca.pem", &ca.pem());
    let other = certs::file(dir, "other.pem", &Ca::new("another CA").pem());
    let pw = password_file(dir, "pw", MONITOR_PW);
    let db = |alias: &str, port: u16, extra: &str| {
        format!(
            "[[database]]\nalias = \"{alias}\"\nhost = \"127.0.0.1\"\nport = {port}\ncheck = \"mysql\"\n{extra}\n"
        )
    };
    let a = AgentProc::start(dir, "agent", |s| {
        format!(
            "{}{}{}{}{}",
            config(
                s,
                &Timing::live("sticky"),
                &[],
                &format!("user = \"{MONITOR}\"\npassword_file = \"{}\"", pw.display())
            ),
            db(
                "verified",
                with_tls.port,
                &format!(
                    "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
                    root.display()
                )
            ),
            db(
                "distrusted",
                with_tls.port,
                &format!(
                    "sslmode = \"verify-ca\"\nsslrootcert = \"{}\"",
                    other.display()
                )
            ),
            db("required", plain.port, "sslmode = \"require\""),
            db("preferred", plain.port, "sslmode = \"prefer\""),
        )
    });
    let r = a.reader();
    let want = ["ok", "tls", "tls", "ok"];
    wait_for("every endpoint judged", || {
        (0..4u32)
            .all(|i| last_probe(&r, i) == want[i as usize])
            .then_some(())
    });
    a.wait_log(
        "distrusted: down after 2 failed probes (TLS: invalid peer certificate: UnknownIssuer",
    );
    a.wait_log("required: down after 2 failed probes (TLS: the server does not offer TLS (sslmode = \"require\"");
    // TLS sessions on the server that offers it, none on the other.
    let accepts = |s: &mariadb::Server| {
        s.sql("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")
            .unwrap()
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    assert!(accepts(&with_tls) > 0);
    assert_eq!(accepts(&plain), 0);
    drop(a);
    drop((with_tls, plain));
}
