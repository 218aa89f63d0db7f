//! The postgres check's TLS against a real PostgreSQL server that accepts only TLS
//! connections (`hostssl` in pg_hba.conf), with a certificate for "localhost"
//! signed by a CA made for the test: every `sslmode`, a wrong CA, a wrong name,
//! and a password asked for in cleartext.

use dbha_agent::config::{Check, Secret, SslMode};
use dbha_agent::probe::{probe, Failure, Role};
use dbha_harness::pg::Cluster;
use dbha_tests::certs::Ca;
use dbha_tests::fakepg::database;
use dbha_tests::live::Live;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A CA certificate (PEM) and a server certificate and key for "localhost" it
/// signed.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(ca_name: &str, names: &[&str]) -> Pki {
    let ca = Ca::new(ca_name);
    let (cert, key) = ca.sign(names, None);
    Pki {
        ca: ca.pem(),
        cert,
        key,
    }
}

/// Writes `text` at `path`, owned like the cluster's data directory (the server
/// reads its key only when it owns it), mode 0600.
fn write_owned(c: &Cluster, path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner = std::fs::metadata(&c.data_dir).unwrap();
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(owner.uid())),
        Some(nix::unistd::Gid::from_raw(owner.gid())),
    )
    .unwrap();
}

/// Turns TLS on with `p`'s certificate, and makes `method` over TLS the only way
/// in by TCP (Unix sockets stay trusted for the harness).
fn tls_only(c: &Cluster, p: &Pki, method: &str) {
    let (cert, key) = (c.data_dir.join("test.crt"), c.data_dir.join("test.key"));
    write_owned(c, &cert, &p.cert);
    write_owned(c, &key, &p.key);
    write_owned(
        c,
        &c.data_dir.join("pg_hba.conf"),
        &format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\n"),
    );
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        c.psql(&sql).unwrap();
    }
}

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_sslmode_against_a_server_that_accepts_only_tls() {
    // Issue 13 row 12: such a server was "up" without credentials and
    // "auth_failed" with them (28000, no encryption).
    let Some(live) = Live::replicated("db", &[], "scram-sha-256", Some("pw-for-tls")) else {
        return;
    };
    let c = live.cluster("db");
    let good = pki("dbha test CA", &["localhost"]);
    let other = pki("another CA", &["localhost"]);
    tls_only(c, &good, "scram-sha-256");
    let dir = live.dir.path();
    let (ca, wrong_ca) = (
        file(dir, "ca.pem", &good.ca),
        file(dir, "other-ca.pem", &other.ca),
    );
    let db = |host: &str, mode: SslMode, root: Option<&Path>| {
        let mut d = database(c.port, Check::Postgres, 5000);
        d.host = host.into();
        d.password = Secret::new("pw-for-tls");
        d.sslmode = mode;
        d.sslrootcert = root.map(Path::to_owned);
        d
    };
    // The reload has applied once a TLS session opens.
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe(&db("127.0.0.1", SslMode::Require, None)).is_err() {
        assert!(Instant::now() < deadline, "the server never accepted TLS");
        std::thread::sleep(Duration::from_millis(50));
    }
    let primary = |d| match probe(&d) {
        Ok(up) => assert_eq!(up.role, Some(Role::Primary), "{d:?}"),
        Err(e) => panic!("{:?} {}: {e}", d.sslmode, d.host),
    };
    let tls_failure = |d: dbha_agent::config::Database, needle: &str| match probe(&d) {
        Err(Failure::Tls(m)) => assert!(m.contains(needle), "{:?}: {m}", d.sslmode),
        other => panic!(
            "{:?} {}: expected a TLS failure, got {other:?}",
            d.sslmode, d.host
        ),
    };
    primary(db("127.0.0.1", SslMode::Prefer, None));
    primary(db("127.0.0.1", SslMode::Require, None));
    primary(db("127.0.0.1", SslMode::VerifyCa, Some(&ca)));
    primary(db("localhost", SslMode::VerifyFull, Some(&ca)));
    // The certificate is for "localhost", not for the address.
    tls_failure(
        db("127.0.0.1", SslMode::VerifyFull, Some(&ca)),
        "not valid for name",
    );
    // Signed by a CA that is not the configured one.
    tls_failure(
        db("localhost", SslMode::VerifyCa, Some(&wrong_ca)),
        "UnknownIssuer",
    );
    tls_failure(
        db("localhost", SslMode::VerifyFull, Some(&wrong_ca)),
        "UnknownIssuer",
    );
    // require with sslrootcert verifies the chain, as libpq does.
    tls_failure(
        db("127.0.0.1", SslMode::Require, Some(&wrong_ca)),
        "UnknownIssuer",
    );
    // Without TLS the server refuses the session: with credentials, that is the
    // verdict, and it names the missing encryption.
    match probe(&db("127.0.0.1", SslMode::Disable, None)) {
        Err(Failure::AuthFailed(m)) => assert!(m.contains("no encryption"), "{m}"),
        other => panic!("disable: {other:?}"),
    }
}

#[test]
fn a_cleartext_password_goes_only_over_tls_and_only_when_allowed() {
    let Some(live) = Live::replicated("db", &[], "scram-sha-256", Some("pw-in-clear")) else {
        return;
    };
    let c = live.cluster("db");
    tls_only(c, &pki("dbha test CA", &["localhost"]), "password");
    let mut d = database(c.port, Check::Postgres, 5000);
    d.password = Secret::new("pw-in-clear");
    d.sslmode = SslMode::Require;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match probe(&d) {
            Err(Failure::Rejected(m)) if m.contains("cleartext") => break,
            other => {
                assert!(Instant::now() < deadline, "still {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    d.allow_cleartext_password = true;
    assert_eq!(probe(&d).unwrap().role, Some(Role::Primary));
}

#[test]
fn a_server_whose_tls_rustls_cannot_speak_is_reached_in_cleartext_under_prefer_only() {
    // Issue 20 row 5: libpq's prefer retries without TLS after a failed
    // handshake; dbha reported HandshakeFailure and published NONE for a healthy
    // server.
    let Some(live) = Live::replicated("db", &[], "scram-sha-256", Some("pw-old-tls")) else {
        return;
    };
    let c = live.cluster("db");
    let p = pki("dbha test CA", &["localhost"]);
    let (cert, key) = (c.data_dir.join("test.crt"), c.data_dir.join("test.key"));
    write_owned(c, &cert, &p.cert);
    write_owned(c, &key, &p.key);
    // TLS 1.2 with RSA key exchange only (no ECDHE), and cleartext allowed.
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl_ciphers = 'AES256-SHA:AES128-SHA'".to_owned(),
        "ALTER SYSTEM SET ssl_max_protocol_version = 'TLSv1.2'".to_owned(),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        c.psql(&sql).unwrap();
    }
    let db = |mode: SslMode| {
        let mut d = database(c.port, Check::Postgres, 5000);
        d.password = Secret::new("pw-old-tls");
        d.sslmode = mode;
        d
    };
    // Once the reload applied, require meets the handshake failure, named.
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        match probe(&db(SslMode::Require)) {
            // (Before the reload: "does not accept TLS".)
            Err(Failure::Tls(m)) if !m.contains("does not accept TLS") => break m,
            other => {
                assert!(Instant::now() < deadline, "still {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(
        why.contains("share no TLS version and cipher suite")
            && why.contains("sslmode = \"prefer\""),
        "{why}"
    );
    // prefer: the same server, in cleartext, as libpq.
    let up = probe(&db(SslMode::Prefer)).unwrap_or_else(|e| panic!("prefer: {e}"));
    assert_eq!(up.role, Some(Role::Primary));
    // libpq agrees on both counts.
    let psql = |mode: &str| {
        std::process::Command::new("psql")
            .env("PGPASSWORD", "pw-old-tls")
            .args(["-X", "-A", "-t", "-c", "SELECT 1"])
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode={mode}",
                c.port
            ))
            .output()
            .map(|o| o.status.success())
    };
    if let Ok(ok) = psql("prefer") {
        assert!(ok, "libpq's prefer connects");
    }
}
