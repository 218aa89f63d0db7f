//! The mysql check's login and status query against a scripted MySQL 8
//! server (tests/src/fakemysql.rs), for what MariaDB, the only server Debian
//! offers, cannot show: caching_sha2_password's fast and full paths,
//! `super_read_only`, `SHOW REPLICA STATUS` and its `Source`/`Replica`
//! columns. The scripts check the client's scrambles from the stored hashes,
//! as a server does, and record every byte the client sent.

use dbha_agent::config::{Check, Database, Secret, Session, SslMode};
use dbha_agent::probe::{probe, Failure, Role};
use dbha_tests::certs::{self, Ca};
use dbha_tests::fakemysql::{
    err, greeting, native_ok, ok, result_set, sha2_fast_ok, tls_config, FakeMysql, Peer, NONCE,
};
use dbha_tests::fakepg::database;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{HandshakeResponse, SslRequest};
use mysql_common::proto::MyDeserialize;
use std::time::Duration;

const PASSWORD: &str = "s3cret-Pw";

fn db(port: u16, password: &str) -> Database {
    Database {
        user: "monitor".into(),
        password: Secret::new(password),
        sslmode: SslMode::Disable,
        mysql: Some(dbha_agent::probe::mysql::Settings {
            login: true,
            server_public_key: None,
        }),
        ..database(port, Check::Mysql, 3000)
    }
}

/// The role result set of a MySQL server, then its replication status.
fn mysql_status(
    read_only: &str,
    super_read_only: &str,
    replica: Option<&[Option<&str>]>,
) -> Vec<Vec<u8>> {
    let mut out = result_set(
        &[
            "@@global.read_only",
            "@@global.super_read_only",
            "@@global.gtid_executed",
            "@@global.gtid_executed",
        ],
        &[&[
            Some(read_only),
            Some(super_read_only),
            Some(GTID_EXECUTED),
            Some(GTID_EXECUTED),
        ]],
        true,
    );
    let columns = [
        "Replica_IO_Running",
        "Replica_SQL_Running",
        "Last_SQL_Errno",
        "Source_Log_File",
        "Read_Source_Log_Pos",
        "Relay_Source_Log_File",
        "Exec_Source_Log_Pos",
        "Seconds_Behind_Source",
    ];
    let rows: Vec<&[Option<&str>]> = replica.into_iter().collect();
    out.extend(result_set(&columns, &rows, false));
    out
}

/// The client's HandshakeResponse: (user, plugin, scramble).
fn response(p: &[u8]) -> (String, String, Vec<u8>) {
    let r = HandshakeResponse::deserialize((), &mut ParseBuf(p)).expect("a HandshakeResponse");
    (
        String::from_utf8_lossy(r.user()).into_owned(),
        r.auth_plugin()
            .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
            .unwrap_or_default(),
        r.scramble_buf().to_vec(),
    )
}

/// After the login: the status query expected, answered with `status`, then
/// COM_QUIT.
fn answer_status(peer: &mut Peer, sql: &str, status: &[Vec<u8>]) {
    let q = peer.recv().unwrap();
    assert_eq!(q[0], 0x03, "COM_QUERY");
    assert_eq!(std::str::from_utf8(&q[1..]).unwrap(), sql);
    peer.send_all(status).unwrap();
    assert_eq!(peer.recv().unwrap(), [0x01], "COM_QUIT");
}

const MYSQL_SQL: &str = "SELECT @@global.read_only, @@global.super_read_only, @@global.gtid_executed, @@global.gtid_executed; SHOW REPLICA STATUS";

/// What the scripted server's gtid_executed holds: 5 + 8 + 3 transactions.
const GTID_EXECUTED: &str =
    "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:11-18,\n2174B383-5441-11E8-B90A-C80AA9429562:1-3";

#[test]
fn native_password_and_super_read_only_make_a_mysql_8_replica_a_standby() {
    let server = FakeMysql::start(2, |peer, _| {
        peer.send(&greeting("8.0.36", "mysql_native_password", false))
            .unwrap();
        let (user, plugin, scramble) = response(&peer.recv().unwrap());
        assert_eq!(
            (user.as_str(), plugin.as_str()),
            ("monitor", "mysql_native_password")
        );
        if !native_ok(&scramble, NONCE, PASSWORD) {
            peer.send(&err(
                1045,
                "28000",
                "Access denied for user 'monitor'@'localhost' (using password: YES)",
            ))
            .unwrap();
            return false;
        }
        peer.send(&ok(false)).unwrap();
        let caught_up = [
            Some("Yes"),
            Some("Yes"),
            Some("0"),
            Some("binlog.000003"),
            Some("157"),
            Some("binlog.000003"),
            Some("157"),
            Some("0"),
        ];
        answer_status(peer, MYSQL_SQL, &mysql_status("0", "1", Some(&caught_up)));
        true
    });
    let up = probe(&db(server.port, PASSWORD)).unwrap();
    assert_eq!(
        up.role,
        Some(Role::Standby),
        "super_read_only = 1 alone makes a standby"
    );
    assert_eq!(up.replay_delay, Some(Duration::ZERO));
    assert_eq!(up.gtid, Some(16), "gtid_executed counted");
    assert_eq!(up.backlog, Some(0));
    let wrong = probe(&db(server.port, "guess")).unwrap_err();
    assert!(matches!(wrong, Failure::AuthFailed(_)), "{wrong:?}");
    assert!(wrong.to_string().contains("1045 Access denied"), "{wrong}");
    assert_eq!(server.join(), [true, false]);
}

#[test]
fn caching_sha2_fast_path_logs_in_with_a_scramble_only() {
    let server = FakeMysql::start(1, |peer, _| {
        peer.send(&greeting("8.0.36", "caching_sha2_password", false))
            .unwrap();
        let (_, plugin, scramble) = response(&peer.recv().unwrap());
        assert_eq!(plugin, "caching_sha2_password");
        assert!(
            sha2_fast_ok(&scramble, NONCE, PASSWORD),
            "a valid fast-path scramble"
        );
        peer.send(&[0x01, 0x03]).unwrap(); // fast_auth_success
        peer.send(&ok(false)).unwrap();
        answer_status(peer, MYSQL_SQL, &mysql_status("0", "0", None));
        peer.received.clone()
    });
    let up = probe(&db(server.port, PASSWORD)).unwrap();
    assert_eq!(up.role, Some(Role::Primary));
    let sent = server.join().concat().concat();
    assert!(
        !contains(&sent, PASSWORD.as_bytes()),
        "the password itself never went out"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A MySQL 8 server that does not have the user's hash cached: it asks for
/// full authentication, and answers what the client does next.
fn full_authentication(
    peer: &mut Peer,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> Vec<u8> {
    peer.send(&greeting("8.0.36", "caching_sha2_password", tls.is_some()))
        .unwrap();
    let mut first = peer.recv().unwrap();
    if let Some(config) = tls {
        SslRequest::deserialize((), &mut ParseBuf(&first)).expect("an SslRequest");
        peer.tls(config).unwrap();
        first = peer.recv().unwrap();
    }
    let (_, _, scramble) = response(&first);
    assert!(sha2_fast_ok(&scramble, NONCE, PASSWORD));
    peer.send(&[0x01, 0x04]).unwrap(); // perform_full_authentication
                                       // What the client sends then: the password (TLS), an encrypted one (a
                                       // configured key), or nothing (it gives up); never a request for the key.
    match peer.recv() {
        Ok(next) => {
            assert_ne!(
                next,
                [0x02],
                "asked a plain connection for the server's key"
            );
            peer.send(&ok(false)).unwrap();
            if let Ok(q) = peer.recv() {
                if q.first() == Some(&0x03) {
                    peer.send_all(&mysql_status("0", "0", None)).unwrap();
                    let _ = peer.recv();
                }
            }
            next
        }
        Err(_) => Vec::new(),
    }
}

#[test]
fn caching_sha2_full_authentication_never_sends_the_password_in_the_clear() {
    let server = FakeMysql::start(1, |peer, _| full_authentication(peer, None));
    let e = probe(&db(server.port, PASSWORD)).unwrap_err();
    assert!(matches!(e, Failure::Rejected(_)), "{e:?}");
    assert!(e.to_string().contains("only over TLS"), "{e}");
    assert_eq!(
        server.join(),
        [Vec::<u8>::new()],
        "nothing after the request"
    );
}

#[test]
fn caching_sha2_full_authentication_sends_the_password_over_tls() {
    let ca = Ca::new("fake mysql CA");
    let dir = tempfile::tempdir().unwrap();
    let root = certs::file(dir.path(), "ca.pem", &ca.pem());
    let config = tls_config(&ca);
    let server = FakeMysql::start(1, move |peer, _| {
        full_authentication(peer, Some(config.clone()))
    });
    let d = Database {
        sslmode: SslMode::VerifyFull,
        sslrootcert: Some(root),
        ..db(server.port, PASSWORD)
    };
    let up = probe(&d).unwrap();
    assert_eq!(up.role, Some(Role::Primary));
    let mut want = PASSWORD.as_bytes().to_vec();
    want.push(0);
    assert_eq!(
        server.join(),
        [want],
        "the password, NUL-terminated, inside TLS"
    );
}

#[test]
fn caching_sha2_full_authentication_encrypts_with_a_configured_server_key() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = (
        dir.path().join("private.pem"),
        dir.path().join("public.pem"),
    );
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let key = dbha_agent::probe::mysql::load_public_key(&public).unwrap();
    let server = FakeMysql::start(1, |peer, _| full_authentication(peer, None));
    let d = Database {
        mysql: Some(dbha_agent::probe::mysql::Settings {
            login: true,
            server_public_key: Some(key),
        }),
        ..db(server.port, PASSWORD)
    };
    assert_eq!(probe(&d).unwrap().role, Some(Role::Primary));
    let sent = server.join().remove(0);
    assert_eq!(sent.len(), 256, "one RSA-2048 block");
    // The server's side: decrypt (OAEP), then undo the XOR with the nonce.
    let blob = dir.path().join("blob");
    std::fs::write(&blob, &sent).unwrap();
    let plain = dir.path().join("plain");
    run(&[
        "pkeyutl",
        "-decrypt",
        "-inkey",
        private.to_str().unwrap(),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-in",
        blob.to_str().unwrap(),
        "-out",
        plain.to_str().unwrap(),
    ]);
    let xored = std::fs::read(&plain).unwrap();
    let password: Vec<u8> = xored
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ NONCE[i % NONCE.len()])
        .collect();
    let mut want = PASSWORD.as_bytes().to_vec();
    want.push(0);
    assert_eq!(password, want);
}

#[test]
fn one_plugin_switch_is_followed_and_a_second_or_an_unknown_plugin_refused() {
    // native in the greeting, then a switch to caching_sha2 with a new nonce.
    let nonce2 = *b"ABCDEFGHIJKLMNOPQRST";
    let server = FakeMysql::start(3, move |peer, connection| {
        peer.send(&greeting("8.0.36", "mysql_native_password", false))
            .unwrap();
        let (_, _, first) = response(&peer.recv().unwrap());
        assert!(native_ok(&first, NONCE, PASSWORD));
        let mut switch = vec![0xfe];
        let plugin: &[u8] = if connection == 2 {
            b"mysql_clear_password"
        } else {
            b"caching_sha2_password"
        };
        switch.extend_from_slice(plugin);
        switch.push(0);
        switch.extend_from_slice(&nonce2);
        switch.push(0);
        peer.send(&switch).unwrap();
        let Ok(answer) = peer.recv() else {
            return "gave up".to_owned();
        };
        assert!(
            sha2_fast_ok(&answer, &nonce2, PASSWORD),
            "scrambled with the new nonce"
        );
        if connection == 1 {
            peer.send(&switch).unwrap(); // a second switch
            return match peer.recv() {
                Ok(_) => "answered a second switch".into(),
                Err(_) => "gave up".into(),
            };
        }
        peer.send(&[0x01, 0x03]).unwrap();
        peer.send(&ok(false)).unwrap();
        answer_status(peer, MYSQL_SQL, &mysql_status("1", "1", None));
        "logged in".into()
    });
    let d = db(server.port, PASSWORD);
    assert_eq!(probe(&d).unwrap().role, Some(Role::Standby));
    let second = probe(&d).unwrap_err();
    assert!(
        second
            .to_string()
            .contains("a second authentication switch"),
        "{second}"
    );
    let clear = probe(&d).unwrap_err();
    assert!(
        clear.to_string().contains("mysql_clear_password"),
        "{clear}"
    );
    assert_eq!(server.join(), ["logged in", "gave up", "gave up"]);
}

#[test]
fn a_held_session_queries_once_per_probe_and_an_unasked_error_loses_it() {
    let server = FakeMysql::start(1, |peer, _| {
        peer.send(&greeting("8.0.36", "caching_sha2_password", false))
            .unwrap();
        let (_, _, scramble) = response(&peer.recv().unwrap());
        assert!(sha2_fast_ok(&scramble, NONCE, PASSWORD));
        peer.send(&[0x01, 0x03]).unwrap();
        peer.send(&ok(false)).unwrap();
        for _ in 0..3 {
            let q = peer.recv().unwrap();
            assert_eq!(std::str::from_utf8(&q[1..]).unwrap(), MYSQL_SQL);
            peer.send_all(&mysql_status("0", "0", None)).unwrap();
        }
        // MySQL 8 at wait_timeout: an error nobody asked for, then the close.
        peer.send(&err(
            4031,
            "HY000",
            "The client was disconnected by the server because of inactivity.",
        ))
        .unwrap();
        peer.until_closed(Duration::from_secs(5));
        peer.received.len()
    });
    let d = Database {
        session: Session::Held,
        ..db(server.port, PASSWORD)
    };
    let mut prober = dbha_agent::probe::Prober::new(d);
    for _ in 0..3 {
        assert_eq!(prober.probe().unwrap().role, Some(Role::Primary));
    }
    let (_keep, stop) = std::os::unix::net::UnixStream::pair().unwrap();
    let woke = prober.wait(std::time::Instant::now() + Duration::from_secs(5), &stop);
    match woke {
        dbha_agent::probe::Wake::Lost(f) => assert!(f.to_string().contains("4031"), "{f}"),
        other => panic!("expected the session lost, got {other:?}"),
    }
    // One login and three queries, each on the same connection.
    assert_eq!(server.join(), [4]);
}

#[test]
fn a_server_that_goes_silent_at_the_login_or_mid_query_is_a_timeout() {
    // The first connection greets and never answers the login; the second
    // lets the client in and never answers the status query.
    let server = FakeMysql::start(2, |peer, connection| {
        peer.send(&greeting("8.0.36", "mysql_native_password", false))
            .unwrap();
        let _ = peer.recv();
        if connection == 1 {
            peer.send(&ok(false)).unwrap();
            let _ = peer.recv();
        }
        peer.until_closed(Duration::from_secs(5));
    });
    let d = Database {
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..db(server.port, PASSWORD)
    };
    for stage in ["the login", "the status query"] {
        let start = std::time::Instant::now();
        let e = probe(&d).unwrap_err();
        assert!(matches!(e, Failure::Timeout(_)), "{stage}: {e:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{stage}: bounded by the timeout"
        );
    }
    server.join();
}
