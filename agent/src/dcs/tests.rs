//! The DCS's part of the decision, from Patroni's keys as etcd 3.4 and
//! Patroni 3.0 wrote them on this machine.

use super::etcd::{Header, Kv, Range};
use super::*;
use crate::config::{Check, Config};
use crate::decide::Claim;
use std::path::Path;

const P: &str = "/service/dbha/";

fn member_json(port: u16, role: &str) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:1{port}/patroni","state":"running","role":"{role}","version":"3.0.2","xlog_location":67108864,"timeline":1}}"#
    )
}

const CONFIG: &str = r#"{"ttl":20,"loop_wait":5,"retry_timeout":5,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true}}"#;

fn follower(keys: &[(&str, &str)], at: Instant) -> Follower {
    let mut f = Follower::new(P);
    let kvs = keys
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Kv {
            key: format!("{P}{k}"),
            value: v.as_bytes().to_vec(),
            create_revision: 1 + i as u64,
            mod_revision: 1 + i as u64,
            lease: 0,
        })
        .collect();
    let r = Range {
        header: Header {
            cluster_id: 1,
            member_id: 1,
            revision: 100,
            raft_term: 2,
        },
        kvs,
    };
    f.snapshot(&r, at).unwrap();
    f
}

fn view(keys: &[(&str, &str)], at: Instant) -> View {
    let f = follower(keys, at);
    View {
        cluster: cluster(&f),
        confirmed: f.confirmed(),
        connected: true,
        revision: f.revision(),
        ..View::default()
    }
}

fn three(check: &str) -> Vec<Database> {
    let text = format!(
        "[dcs]\netcd = [\"http://127.0.0.1:2379\"]\nscope = \"dbha\"\n{}",
        [5430, 5431, 5432]
            .iter()
            .enumerate()
            .map(|(i, p)| format!(
                "\n[[database]]\nalias = \"pg{i}\"\nhost = \"127.0.0.1\"\nport = {p}\ncheck = \"{check}\"\n"
            ))
            .collect::<String>()
    );
    Config::parse(Path::new("dbha.toml"), &text)
        .unwrap()
        .databases
}

fn up(role: Option<Role>) -> Seen {
    Seen {
        health: Health::Up,
        claim: role.map(|role| Claim {
            role,
            read_only: false,
        }),
        lagging: false,
        fenced: false,
        given_up: false,
        down_at: None,
    }
}

/// The usual cluster: pg1 the leader.
fn keys(m: &[String; 3]) -> Vec<(&str, &str)> {
    vec![
        ("config", CONFIG),
        ("leader", "pg1"),
        ("members/pg0", m[0].as_str()),
        ("members/pg1", m[1].as_str()),
        ("members/pg2", m[2].as_str()),
    ]
}

fn members() -> [String; 3] {
    [
        member_json(5430, "replica"),
        member_json(5431, "master"),
        member_json(5432, "replica"),
    ]
}

#[test]
fn patroni_keys_as_patroni_writes_them() {
    let t = Instant::now();
    let m = members();
    let c = view(&keys(&m), t).cluster;
    assert_eq!(c.leader.as_deref(), Some("pg1"));
    assert_eq!(c.config.ttl, Duration::from_secs(20));
    assert_eq!(c.config.window(), Duration::from_secs(15));
    assert!(!c.config.failsafe_mode);
    let pg1 = c.members["pg1"].as_ref().unwrap();
    assert_eq!(
        (pg1.host.as_str(), pg1.port, &pg1.role),
        ("127.0.0.1", 5431, &MemberRole::Primary)
    );
    // Patroni 4 says primary.
    let v4 = member_json(5431, "primary");
    let c = view(&[("members/pg1", v4.as_str())], t).cluster;
    assert_eq!(c.members["pg1"].as_ref().unwrap().role, MemberRole::Primary);
    // Without a config key: Patroni's defaults (ttl 30, loop_wait 10).
    assert_eq!(c.config.window(), Duration::from_secs(20));
}

#[test]
fn conn_urls() {
    assert_eq!(
        conn_url_address("postgres://10.0.0.1:5433/postgres").unwrap(),
        ("10.0.0.1".into(), 5433)
    );
    assert_eq!(
        conn_url_address("postgresql://u:p@db1.example/postgres?sslmode=require").unwrap(),
        ("db1.example".into(), 5432)
    );
    assert_eq!(
        conn_url_address("postgres://[::1]:6000/x").unwrap(),
        ("::1".into(), 6000)
    );
    for bad in [
        "http://x:1/",
        "postgres://",
        "postgres://a:1,b:2/x",
        "postgres://x:0/",
        "postgres://x:99999/",
        "postgres://[::1/x",
    ] {
        assert!(conn_url_address(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_leader_takes_writes_when_everything_agrees() {
    let t = Instant::now();
    let m = members();
    let v = view(&keys(&m), t);
    let dbs = three("tcp");
    let seen = [up(None), up(None), up(None)];
    assert_eq!(writes(&v, t, &dbs, &seen), (Ok(1), Some(1)));
    // With probes that see roles agreeing.
    let seen = [
        up(Some(Role::Standby)),
        up(Some(Role::Primary)),
        up(Some(Role::Standby)),
    ];
    assert_eq!(writes(&v, t, &dbs, &seen).0, Ok(1));
}

#[test]
fn no_writes_unless_confirmed_within_ttl_minus_loop_wait() {
    let t = Instant::now();
    let m = members();
    let v = view(&keys(&m), t);
    let dbs = three("tcp");
    let seen = [up(None), up(None), up(None)];
    let just = t + Duration::from_millis(14_999);
    assert_eq!(writes(&v, just, &dbs, &seen).0, Ok(1));
    let past = t + Duration::from_secs(15);
    assert!(matches!(
        writes(&v, past, &dbs, &seen).0,
        Err(NoWrites::Unconfirmed { since: Some(_) })
    ));
    // Never confirmed (a fresh agent): none.
    assert!(matches!(
        writes(&View::default(), t, &dbs, &seen).0,
        Err(NoWrites::Unconfirmed { since: None })
    ));
}

#[test]
fn failsafe_keeps_writes_on_the_single_primary_only_when_configured() {
    let t = Instant::now();
    let m = members();
    let failsafe_config = CONFIG.replace("\"ttl\":20", "\"ttl\":20,\"failsafe_mode\":true");
    let mut k = keys(&m);
    k[0].1 = &failsafe_config;
    let mut v = view(&k, t);
    let dbs = three("tcp");
    let seen = [up(None), up(None), up(None)];
    let past = t + Duration::from_secs(30);
    assert!(matches!(
        writes(&v, past, &dbs, &seen).0,
        Err(NoWrites::Unconfirmed { .. })
    ));
    v.failsafe_primary = Some("pg1".into());
    assert_eq!(writes(&v, past, &dbs, &seen).0, Ok(1));
    // Without failsafe_mode the answer of /primary is not used.
    let mut plain = view(&keys(&m), t);
    plain.failsafe_primary = Some("pg1".into());
    assert!(writes(&plain, past, &dbs, &seen).0.is_err());
}

#[test]
fn etcd_content_never_sends_writes_to_an_unnamed_host() {
    let t = Instant::now();
    let dbs = three("tcp");
    let seen = [up(None), up(None), up(None)];
    let m = members();
    let check = |k: &[(&str, &str)], want: &str| {
        let got = writes(&view(k, t), t, &dbs, &seen);
        let e = got.0.expect_err(want);
        assert_eq!(e.kind(), want, "{e}");
        assert_eq!(got.1, None);
    };
    // A leader with no member key.
    let mut k = keys(&m);
    k.retain(|(n, _)| *n != "members/pg1");
    check(&k, "unknown_member");
    // A conn_url that matches no configured database.
    let rogue = member_json(6543, "master");
    let mut k = keys(&m);
    k[3].1 = &rogue;
    check(&k, "unmatched");
    // Malformed JSON in the member key.
    let mut k = keys(&m);
    k[3].1 = "{\"conn_url\": ";
    check(&k, "unknown_member");
    // No leader key (a switchover's first second).
    let mut k = keys(&m);
    k.retain(|(n, _)| *n != "leader");
    check(&k, "no_leader");
    // A leader name that is not UTF-8 or is empty counts as none.
    let mut k = keys(&m);
    k[1].1 = "";
    check(&k, "no_leader");
}

#[test]
fn the_probes_are_a_second_opinion() {
    let t = Instant::now();
    let m = members();
    let v = view(&keys(&m), t);
    let dbs = three("postgres");
    let down = Seen {
        health: Health::Down,
        ..up(None)
    };
    let cases: [([Seen; 3], &str); 4] = [
        ([up(None), down, up(None)], "unreachable"),
        (
            [up(Some(Role::Primary)), up(Some(Role::Primary)), up(None)],
            "other_primary",
        ),
        (
            [
                up(None),
                Seen {
                    fenced: true,
                    ..up(Some(Role::Primary))
                },
                up(None),
            ],
            "fenced",
        ),
        (
            [
                up(None),
                Seen {
                    claim: Some(Claim {
                        role: Role::Primary,
                        read_only: true,
                    }),
                    ..up(None)
                },
                up(None),
            ],
            "not_promoted",
        ),
    ];
    for (seen, want) in cases {
        let (got, owner) = writes(&v, t, &dbs, &seen);
        assert_eq!(got.unwrap_err().kind(), want);
        assert_eq!(
            owner,
            Some(1),
            "writes still belong to the leader's endpoint"
        );
    }
    // A new leader whose key still says replica and whose probe says standby:
    // promotion not complete, writes fail fast rather than reach a standby.
    let promoting = [
        member_json(5430, "replica"),
        member_json(5431, "replica"),
        member_json(5432, "replica"),
    ];
    let v = view(&keys(&promoting), t);
    let seen = [
        up(Some(Role::Standby)),
        up(Some(Role::Standby)),
        up(Some(Role::Standby)),
    ];
    assert_eq!(
        writes(&v, t, &dbs, &seen).0.unwrap_err().kind(),
        "not_promoted"
    );
    // This host's probe says primary: writes, whatever the key says yet.
    let seen = [
        up(Some(Role::Standby)),
        up(Some(Role::Primary)),
        up(Some(Role::Standby)),
    ];
    assert_eq!(writes(&v, t, &dbs, &seen).0, Ok(1));
    // The key says master and the probe still sees a standby: the probe wins
    // (a primary demoted by Patroni after it lost etcd, the key read before).
    let v = view(&keys(&m), t);
    let seen = [
        up(Some(Role::Standby)),
        up(Some(Role::Standby)),
        up(Some(Role::Standby)),
    ];
    assert_eq!(
        writes(&v, t, &dbs, &seen).0.unwrap_err().kind(),
        "not_promoted"
    );
    // Down after the last confirmation (a restart, maybe into a standby that
    // a tcp probe cannot tell): no writes until etcd confirms again.
    let dbs = three("tcp");
    let restarted = Seen {
        down_at: Some(t + Duration::from_secs(1)),
        ..up(None)
    };
    let later = t + Duration::from_secs(2);
    let seen = [up(None), restarted, up(None)];
    assert_eq!(
        writes(&v, later, &dbs, &seen).0.unwrap_err().kind(),
        "restarted"
    );
    let mut confirmed_again = v.clone();
    confirmed_again.confirmed = Some(t + Duration::from_millis(1500));
    assert_eq!(writes(&confirmed_again, later, &dbs, &seen).0, Ok(1));
}

#[test]
fn an_explicit_member_name_matches_first() {
    let text = "[dcs]\netcd = [\"http://127.0.0.1:2379\"]\nscope = \"dbha\"\n\n[[database]]\nalias = \"primary-vip\"\nhost = \"db.example\"\nport = 5432\ncheck = \"tcp\"\nmember = \"pg1\"\n\n[[database]]\nalias = \"pg1\"\nhost = \"127.0.0.1\"\nport = 5431\ncheck = \"tcp\"\n";
    let c = Config::parse(Path::new("dbha.toml"), text).unwrap();
    assert_eq!(c.databases[0].check, Check::Tcp);
    let m = member_json(5431, "master");
    let m = member("pg1", &m);
    assert_eq!(match_member("pg1", &m, &c.databases), Ok(0));
    assert!(match_member("pg2", &member_json_parsed(5999), &c.databases).is_err());
}

fn member(_name: &str, json: &str) -> Member {
    super::member(json.as_bytes()).unwrap()
}

fn member_json_parsed(port: u16) -> Member {
    super::member(member_json(port, "replica").as_bytes()).unwrap()
}

#[test]
fn dcs_settings_are_checked() {
    let base = "[[database]]\nalias = \"a\"\nhost = \"127.0.0.1\"\nport = 5432\ncheck = \"tcp\"\n";
    let parse = |dcs: &str| Config::parse(Path::new("dbha.toml"), &format!("{dcs}\n{base}"));
    let c = parse("[dcs]\netcd = [\"http://127.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nscope = \"pg-main\"\n").unwrap();
    let s = c.dcs.as_ref().unwrap();
    assert_eq!(s.prefix(), "/service/pg-main/");
    assert_eq!(c.writes, crate::config::Writes::Primary);
    // What `check` prints parses to the same.
    let again = Config::parse(Path::new("x"), &c.to_string()).unwrap();
    assert_eq!(again.dcs, c.dcs);
    let ns =
        parse("[dcs]\netcd = [\"http://e:2379\"]\nscope = \"s\"\nnamespace = \"/db/\"\n").unwrap();
    assert_eq!(ns.dcs.unwrap().prefix(), "/db/s/");
    for (dcs, want) in [
        ("[dcs]\netcd = []\nscope = \"s\"\n", "expected 1 to 16"),
        (
            "[dcs]\netcd = [\"127.0.0.1:2379\"]\nscope = \"s\"\n",
            "expected a URL",
        ),
        (
            "[dcs]\netcd = [\"http://e:2379/v3\"]\nscope = \"s\"\n",
            "without a path",
        ),
        (
            "[dcs]\netcd = [\"http://e:2379\"]\nscope = \"a/b\"\n",
            "scope",
        ),
        (
            "[dcs]\netcd = [\"http://e:2379\"]\nscope = \"s\"\nnamespace = \"service\"\n",
            "namespace",
        ),
        (
            "[dcs]\netcd = [\"http://e:2379\"]\nscope = \"s\"\nuser = \"dbha\"\n",
            "needs both user and password",
        ),
        (
            "[dcs]\netcd = [\"http://e:2379\"]\nscope = \"s\"\ncacert = \"/nonexistent/ca.pem\"\n",
            "cannot read",
        ),
        (
            "[dcs]\netcd = [\"http://e:2379\"]\nscope = \"s\"\nbogus = 1\n",
            "unknown field",
        ),
        (
            "writes = \"any\"\n[dcs]\netcd = [\"http://e:2379\"]\nscope = \"s\"\n",
            "writes go to Patroni's leader only",
        ),
    ] {
        let e = parse(dcs).unwrap_err().to_string();
        assert!(e.contains(want), "{dcs}: {e}");
    }
    let e = Config::parse(Path::new("x"), &format!("{base}member = \"pg0\"\n")).unwrap_err();
    assert!(e.to_string().contains("only [dcs] uses"), "{e}");
}
