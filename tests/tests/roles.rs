//! Role-aware checks against real streaming replication: a primary and standbys
//! made with `pg_basebackup -R`, promotion with `pg_ctl promote`, the old primary
//! coming back (split brain), and password authentication (md5, SCRAM-SHA-256).

use dbha::{Reader, Role, Status};
use dbha_agent::config::{Check, Database};
use dbha_agent::probe::{self, Failure};
use dbha_harness::pg::StopMode;
use dbha_tests::agentproc::{config, wait_for, wait_write, AgentProc, Timing};
use dbha_tests::live::Live;
use dbha_tests::password_file;
use std::time::{Duration, Instant};

fn timing(failback: &'static str) -> Timing {
    Timing::live(failback)
}

const ROLES: &str = "writes = \"primary\"\nreads = \"prefer-standby\"";

/// Agent over `live`'s clusters in the order `order`.
fn agent(live: &Live, order: &[&str], t: &Timing, extra: &str) -> AgentProc {
    let dbs: Vec<_> = order
        .iter()
        .map(|n| {
            let c = live.cluster(n);
            (c.name.as_str(), c.host.as_str(), c.port, "postgres")
        })
        .collect();
    AgentProc::start(live.dir.path(), "agent", |s| config(s, t, &dbs, extra))
}

fn wait_read(r: &Reader, ok: impl Fn(&str) -> bool) -> String {
    wait_for("a read alias", || {
        let s = r.snapshot().ok()?;
        s.read_alias().filter(|a| ok(a)).map(String::from)
    })
}

#[test]
fn writes_go_to_the_primary_and_reads_to_a_standby() {
    let Some(live) = Live::replicated("default", &["failover1", "failover2"], "trust", None) else {
        return;
    };
    let a = agent(
        &live,
        &["default", "failover1", "failover2"],
        &timing("sticky"),
        ROLES,
    );
    let r = a.reader();
    wait_write(&r, "default");
    let read = wait_read(&r, |a| a != "default");
    assert!(read == "failover1" || read == "failover2", "{read}");
    let s = wait_for("every role", || {
        let s = r.snapshot().ok()?;
        (s.primary_mask == 0b001 && s.standby_mask == 0b110).then_some(s)
    });
    assert_eq!(
        [s.role(0), s.role(1), s.role(2)],
        [Role::Primary, Role::Standby, Role::Standby]
    );
    assert!(!s.conflict());
}

#[test]
fn a_standby_listed_first_is_never_the_write_alias() {
    let Some(live) = Live::replicated("default", &["failover1", "failover2"], "trust", None) else {
        return;
    };
    let a = agent(
        &live,
        &["failover1", "default", "failover2"],
        &timing("auto"),
        ROLES,
    );
    let r = a.reader();
    wait_write(&r, "default");
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert_ne!(r.write_alias(), Some("failover1"), "a standby took writes");
    }
    assert_eq!(r.snapshot().unwrap().role(0), Role::Standby);
}

#[test]
fn primary_lost_gives_none_until_promotion_and_the_old_primary_back_is_split_brain() {
    let t = timing("auto");
    let Some(live) = Live::replicated("default", &["failover1", "failover2"], "trust", None) else {
        return;
    };
    let a = agent(&live, &["default", "failover1", "failover2"], &t, ROLES);
    let r = a.reader();
    wait_write(&r, "default");
    wait_read(&r, |a| a != "default");

    // The primary stops: standbys are not writable, so writes are NONE, and
    // reads stay on a standby (reads only).
    live.cluster("default").stop(StopMode::Immediate).unwrap();
    let s = wait_for("writes NONE", || {
        let s = r.snapshot().ok()?;
        (s.status == Status::ReadOnly).then_some(s)
    });
    assert_eq!(s.write_index, None);
    assert!(s.is_healthy(1) && s.is_healthy(2), "the standbys are up");
    assert!(matches!(s.read_alias(), Some("failover1" | "failover2")));

    // Promotion: the promoted standby becomes the write alias.
    let promoted = Instant::now();
    live.cluster("failover1").promote().unwrap();
    wait_write(&r, "failover1");
    let took = promoted.elapsed();
    println!(
        "pg_ctl promote issued -> write alias: {} ms",
        took.as_millis()
    );
    assert!(took < t.detection_bound() * 10, "took {took:?}");

    // The old primary comes back as a primary: split brain. Writes stay on the
    // promoted server, even with failback auto, and the conflict flag is set.
    let e = r.snapshot().unwrap().epoch;
    live.cluster("default").start().unwrap();
    let s = wait_for("the conflict flag", || {
        let s = r.snapshot().ok()?;
        s.conflict().then_some(s)
    });
    assert_eq!(s.write_alias(), Some("failover1"));
    a.wait_log("split brain: default, failover1 all claim to be primary; writes stay on failover1");
    std::thread::sleep(t.detection_bound() * 3);
    let s = r.snapshot().unwrap();
    assert_eq!(
        (s.write_alias(), s.epoch),
        (Some("failover1"), e),
        "nothing flips back"
    );
    assert_eq!(s.primary_mask, 0b011);
}

#[test]
fn a_wrong_password_is_an_authentication_failure_and_never_chosen() {
    let Some(live) = Live::replicated("default", &["failover1"], "scram-sha-256", Some("s3cret"))
    else {
        return;
    };
    let wrong = password_file(live.dir.path(), "wrong", "guess");
    let right = password_file(live.dir.path(), "right", "s3cret");
    let (d, f) = (live.cluster("default"), live.cluster("failover1"));
    let t = timing("sticky");
    // default with the wrong password, failover1 (a standby) with the right one.
    let text = |s: &std::path::Path| {
        format!(
            "{}writes = \"primary\"\nreads = \"prefer-standby\"\n\
             [[database]]\nalias = \"default\"\nhost = \"127.0.0.1\"\nport = {}\ncheck = \"postgres\"\npassword_file = \"{}\"\n\
             [[database]]\nalias = \"failover1\"\nhost = \"127.0.0.1\"\nport = {}\ncheck = \"postgres\"\npassword_file = \"{}\"\n",
            config(s, &t, &[], ""),
            d.port,
            wrong.display(),
            f.port,
            right.display()
        )
    };
    let a = AgentProc::start(live.dir.path(), "agent", text);
    let r = a.reader();
    a.wait_log("default: down after 2 failed probes (authentication failed: password authentication failed for user \"postgres\"");
    // failover1 logged in with SCRAM and is seen as a standby; default is never chosen.
    let s = wait_for("failover1 as a standby", || {
        let s = r.snapshot().ok()?;
        (s.standby_mask == 0b10).then_some(s)
    });
    assert!(!s.is_healthy(0));
    assert_eq!(s.write_alias(), None);
    assert!(!a
        .log()
        .contains("default: down after 2 failed probes (connection refused"));
}

#[test]
fn md5_and_scram_both_log_in_and_read_the_role() {
    for auth in ["md5", "scram-sha-256"] {
        let Some(live) = Live::replicated("db", &[], auth, Some("pw-for-test")) else {
            return;
        };
        let c = live.cluster("db");
        let db = |password: &str| Database {
            alias: "db".into(),
            host: c.host.clone(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            password: dbha_agent::config::Secret::new(password),
            password_source: Some("test".into()),
            ..dbha_tests::fakepg::database(c.port, Check::Postgres, 5000)
        };
        let up = probe::probe(&db("pw-for-test")).unwrap_or_else(|e| panic!("{auth}: {e}"));
        assert_eq!(up.role, Some(probe::Role::Primary), "{auth}");
        let e = probe::probe(&db("not-it")).unwrap_err();
        assert!(matches!(e, Failure::AuthFailed(_)), "{auth}: {e}");
        // The method really is the one asked for.
        let stored = c
            .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
            .unwrap();
        let prefix = if auth == "md5" {
            "md5"
        } else {
            "SCRAM-SHA-256$"
        };
        assert!(
            stored.starts_with(prefix),
            "{auth}: stored as {}...",
            &stored[..8]
        );
    }
}
