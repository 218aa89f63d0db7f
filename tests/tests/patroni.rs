//! The `patroni` check against a real cluster: three PostgreSQL 15 nodes under
//! Debian's Patroni over a three-member etcd on loopback, their REST API over
//! https with a certificate from a CA made for the test, and the real agent
//! reading that API (verifying the certificate) instead of logging in. One cluster serves every phase
//! (bootstrapping one takes about 11 s): a `patronictl switchover`, a `kill -9`
//! of the leader's Patroni and PostgreSQL, and the database port cut from this
//! host (root's packets only, so replication and Patroni go on) while Patroni
//! still answers. Time bounds only catch hangs.

use dbha::{Reader, Status};
use dbha_tests::agentproc::{wait_for, wait_write, AgentProc};
use dbha_tests::certs::Ca;
use dbha_tests::netfault::Blackhole;
use dbha_tests::patroni::{self, Cluster, RestTls, Timing};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The agent's configuration: every node with the patroni check, roles
/// required, the database port checked every second.
fn config(state: &Path, c: &Cluster) -> String {
    config_trusting(state, c, c.rest_ca.as_deref())
}

/// As [`config`], the REST API's certificate verified against `ca`.
fn config_trusting(state: &Path, c: &Cluster, ca: Option<&Path>) -> String {
    let mut text = format!(
        "state_file = \"{}\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\nstale_after = \"3s\"\nwrites = \"primary\"\nreads = \"prefer-standby\"\n",
        state.display()
    );
    for n in &c.nodes {
        text.push_str(&format!(
            "\n[[database]]\nalias = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\ncheck = \"patroni\"\npatroni_url = \"{}\"\nadmission_interval = \"1s\"\n",
            n.name,
            n.pg_port,
            n.api_url()
        ));
        if let Some(ca) = ca {
            text.push_str(&format!(
                "sslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
                ca.display()
            ));
        }
    }
    text
}

/// Waits for `alias` to be the write alias, recording every write alias seen
/// meanwhile (None included) into `seen`.
fn wait_write_seen(r: &Reader, alias: &str, seen: &mut BTreeSet<Option<String>>) {
    wait_for(&format!("write alias {alias}"), || {
        let s = r.snapshot().ok()?;
        let w = s.write_alias().map(String::from);
        seen.insert(w.clone());
        (w.as_deref() == Some(alias)).then_some(())
    });
}

fn health(r: &Reader, alias: &str) -> bool {
    let s = r.snapshot().unwrap();
    let i = s.aliases().position(|a| a == alias).unwrap();
    s.health_mask & (1 << i) != 0
}

#[test]
fn the_patroni_check_follows_a_switchover_a_kill_and_a_cut_port() {
    let Some(install) = patroni::prerequisites() else {
        return;
    };
    let ca = Ca::new("dbha test Patroni CA");
    // For the address only: patronictl (urllib3 over pyOpenSSL) needs Python's
    // idna module, which Debian's patroni does not pull in, for a DNS name.
    let (cert, key) = ca.sign(&["127.0.0.1"], None);
    let rest = RestTls {
        ca: ca.pem(),
        cert,
        key,
    };
    let mut c = Cluster::start_with(&install, 3, 3, Timing::default(), Some(rest)).unwrap();
    assert!(c.nodes[0].api_url().starts_with("https://"));
    let leader = c.wait_leader(Duration::from_secs(60)).unwrap();
    let a = AgentProc::start(c.dir(), "agent", |s| config(s, &c));
    let r = a.reader();
    wait_write(&r, &leader);
    wait_for("every node up", || {
        (r.snapshot().ok()?.health_mask == 0b111).then_some(())
    });
    // A node still bootstrapping may answer an error page once (Patroni's
    // REST API answers 500 when its handler fails): a failed probe, shown
    // here, not a failure of the test.
    for line in a.log().lines().filter(|l| l.contains("not Patroni")) {
        eprintln!("while the cluster settled: {line}");
    }
    // An agent that trusts another CA: no node is up for it, and it says why.
    {
        let other = dbha_tests::certs::file(c.dir(), "other-ca.pem", &Ca::new("another CA").pem());
        let b = AgentProc::start(c.dir(), "distrustful", |s| {
            config_trusting(s, &c, Some(&other))
        });
        b.wait_log("UnknownIssuer");
        let br = b.reader();
        let s = br.snapshot().unwrap();
        assert_eq!((s.write_alias(), s.health_mask), (None, 0), "{}", b.log());
    }

    // 1. A switchover: writes leave the old leader, go to nothing or the
    // candidate, never to the third node; the old leader comes back as a
    // standby that takes reads.
    let candidate = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != leader)
        .unwrap();
    let third = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != leader && *n != candidate)
        .unwrap();
    let watcher = {
        let state = a.state.clone();
        let until = std::time::Instant::now() + Duration::from_secs(60);
        let target = candidate.clone();
        std::thread::spawn(move || {
            let r = Reader::open(&state).unwrap();
            let mut seen = BTreeSet::new();
            while std::time::Instant::now() < until {
                let s = r.snapshot().unwrap();
                let w = s.write_alias().map(String::from);
                let done = w.as_deref() == Some(target.as_str());
                seen.insert(w);
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            seen
        })
    };
    c.switchover(Some(&candidate)).unwrap();
    let seen = watcher.join().unwrap();
    assert!(
        seen.contains(&Some(candidate.clone())),
        "writes never reached {candidate}: {seen:?}\n{}",
        a.log()
    );
    assert!(
        !seen.contains(&Some(third.clone())),
        "writes went to {third}, which was never the leader: {seen:?}"
    );
    assert_eq!(c.leader().as_deref(), Some(candidate.as_str()));
    wait_for("the old leader back as a standby", || {
        health(&r, &leader).then_some(())
    });
    assert_eq!(
        r.snapshot().unwrap().write_alias(),
        Some(candidate.as_str())
    );

    // 2. kill -9 of the leader's Patroni and PostgreSQL: writes to no
    // endpoint at once (the REST API and the port are gone), then to the
    // leader Patroni elects after the lock expires.
    let killed = c.index(&candidate).unwrap();
    c.kill_node(killed);
    let mut seen = BTreeSet::new();
    wait_for("writes leave the killed leader", || {
        (r.snapshot().ok()?.write_alias() != Some(candidate.as_str())).then_some(())
    });
    let s = r.snapshot().unwrap();
    assert_eq!(s.status, Status::ReadOnly, "reads go on from a standby");
    let elected = c.wait_leader(Duration::from_secs(90)).unwrap();
    assert_ne!(elected, candidate);
    wait_write_seen(&r, &elected, &mut seen);
    assert!(
        !seen.contains(&Some(candidate.clone())),
        "writes went back to the killed node: {seen:?}"
    );
    c.start_node(killed).unwrap();
    c.wait_streaming(Duration::from_secs(90)).unwrap();
    wait_for("the killed node back as a standby", || {
        health(&r, &candidate).then_some(())
    });

    // 3. The database port cut from this host while Patroni answers: a
    // standby so cut takes no reads; the leader so cut takes no writes.
    let standby = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != elected)
        .unwrap();
    let port = c.nodes[c.index(&standby).unwrap()].pg_port;
    let Some(cut) = Blackhole::for_root_to_port(port) else {
        return;
    };
    cut.on();
    wait_for("the cut standby down", || {
        (!health(&r, &standby)).then_some(())
    });
    assert_eq!(
        c.rest(c.index(&standby).unwrap(), "/replica").unwrap().0,
        200
    );
    let s = r.snapshot().unwrap();
    assert_ne!(s.read_alias(), Some(standby.as_str()));
    assert!(
        a.log()
            .contains("the database port is not reachable from this host"),
        "{}",
        a.log()
    );
    cut.off();
    wait_for("the standby up again", || {
        health(&r, &standby).then_some(())
    });

    let port = c.nodes[c.index(&elected).unwrap()].pg_port;
    let cut = Blackhole::for_root_to_port(port).unwrap();
    cut.on();
    wait_for("writes leave the cut leader", || {
        (r.snapshot().ok()?.write_alias() != Some(elected.as_str())).then_some(())
    });
    assert_eq!(r.snapshot().unwrap().status, Status::ReadOnly);
    assert_eq!(c.leader().as_deref(), Some(elected.as_str()));
    cut.off();
    wait_write(&r, &elected);
}
