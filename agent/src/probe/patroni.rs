//! The `patroni` check: the role from Patroni's REST API instead of a database
//! login. One `GET /primary` per probe, on a connection kept open when the
//! server allows it (Patroni 3.0 answers HTTP/1.0 and closes each one): its
//! status says whether this node holds the leader lock (200) and its JSON body
//! what PostgreSQL is (`role`, `state`, `xlog`, `timeline`, `tags`). A node is
//!
//! - **primary** when it holds the lock (200), PostgreSQL runs (`state`
//!   "running") and is not in recovery (`role` "master" in Patroni 3, "primary"
//!   in 4);
//! - **standby** when PostgreSQL runs in recovery (`role` "replica" or
//!   "standby_leader"), also while it holds the lock and its promotion is not
//!   complete (the 0.1-0.3 s after Patroni takes the lock), unless tagged
//!   `noloadbalance` (Patroni's own replica check refuses it reads; so does this);
//! - otherwise not up: a PostgreSQL primary without the lock (an old primary
//!   Patroni is about to demote), a state other than "running".
//!
//! Patroni can answer while the path from this host to PostgreSQL is cut, so
//! the probe also connects to the database port (a connect and a close, no
//! login) on its first success and then every `admission_interval`: that costs
//! the server a fork each time, as the `postgres` check's admission does. The
//! REST call costs Patroni a query on its own session, and the database no
//! login.

use super::{server_text, tcp, tls, Failure, Outcome, Resolver, Role, Up};
use crate::config::{Database, Secret};
use crate::http::{self, Conn, Request, Url};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The answer is a small JSON object; with many replicas listed, still far under.
const MAX_BODY: usize = 256 * 1024;

/// The check's own settings (`patroni_url`, `patroni_user`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: Url,
    /// Basic authentication, when the REST API asks for it.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Where the password came from, for messages.
    pub password_source: Option<String>,
}

impl Settings {
    /// Checks a configuration's values; the caller locates the error.
    pub fn new(
        url: &str,
        user: Option<String>,
        password: Option<Secret>,
        password_source: Option<String>,
    ) -> Result<Settings, (&'static str, String)> {
        let url = Url::parse(url).map_err(|e| ("patroni_url", e))?;
        if !url.base.is_empty() {
            return Err((
                "patroni_url",
                format!("expected the REST API's address only (like \"http://10.0.0.1:8008\"), found the path {:?}", url.base),
            ));
        }
        if password.is_some() && user.is_none() {
            return Err((
                "patroni_user",
                "a Patroni password is configured without patroni_user".into(),
            ));
        }
        Ok(Settings {
            url,
            user,
            password,
            password_source,
        })
    }
}

/// An endpoint's connection to Patroni's REST API, across probes.
#[derive(Default)]
pub struct Client {
    conn: Option<Conn>,
    resolver: Resolver,
    /// The TLS configuration for https, made on first use.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// One `GET /primary` within `deadline`, judged.
    pub fn probe(&mut self, db: &Database, start: Instant, deadline: Instant) -> Outcome {
        let Some(settings) = &db.patroni else {
            return Err(Failure::Io(
                "the patroni check has no patroni_url (a configuration error)".into(),
            ));
        };
        let (status, body) = self.get(db, settings, start, deadline)?;
        judge(status, &body, SystemTime::now())
    }

    fn get(
        &mut self,
        db: &Database,
        s: &Settings,
        start: Instant,
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let authorization = s
            .user
            .as_ref()
            .map(|u| http::basic_auth(u, s.password.as_ref().map_or("", |p| p.expose())));
        let req = Request {
            method: "GET",
            path: "/primary",
            authorization: authorization.as_deref(),
            json: None,
        };
        // A kept connection the server has closed since (or that holds
        // something unasked) is dropped before use.
        if let Some(c) = &mut self.conn {
            if !c.reusable() || c.idle_broken() {
                self.conn = None;
            }
        }
        let mut reused = self.conn.is_some();
        loop {
            if self.conn.is_none() {
                self.conn = Some(self.connect(db, s, start, deadline)?);
            }
            let Some(conn) = &mut self.conn else {
                continue;
            };
            match conn.request(&req, deadline, MAX_BODY) {
                Ok(r) => {
                    if !conn.reusable() {
                        self.conn = None;
                    }
                    return Ok((r.status, r.body));
                }
                // The server closed a kept connection as the request went out
                // (its idle timeout): once more on a new one, as HTTP clients do.
                Err(http::Error::Closed) if reused => {
                    self.conn = None;
                    reused = false;
                }
                Err(e) => {
                    self.conn = None;
                    return Err(failure(e, db.timeout));
                }
            }
        }
    }

    fn connect(
        &mut self,
        db: &Database,
        s: &Settings,
        start: Instant,
        deadline: Instant,
    ) -> Result<Conn, Failure> {
        let addrs = self
            .resolver
            .resolve(&s.url.host, s.url.port, deadline, db.timeout)?;
        let stream = tcp::connect(
            &addrs,
            deadline.min(start + db.connect_timeout),
            db.connect_timeout,
        )?;
        let config = if s.url.https {
            if self.tls.is_none() {
                self.tls = tls::client_config(db.sslmode, db.sslrootcert.as_deref())
                    .map_err(Failure::Tls)?;
            }
            self.tls.clone()
        } else {
            None
        };
        Conn::new(stream, &s.url, config).map_err(|e| failure(e, db.timeout))
    }
}

fn failure(e: http::Error, timeout: Duration) -> Failure {
    match e {
        http::Error::Timeout => Failure::Timeout(timeout),
        http::Error::Closed => Failure::Closed,
        http::Error::Io(e) => Failure::Io(format!("Patroni REST API: {e}")),
        http::Error::Tls(e) => Failure::Tls(e),
        http::Error::Protocol(e) => Failure::NotPatroni(e),
    }
}

/// A number as Patroni writes it (an integer; a string of digits accepted too).
fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The verdict on an answer to `GET /primary` (`status`, `body`), at `now`.
pub fn judge(status: u16, body: &[u8], now: SystemTime) -> Outcome {
    match status {
        200 | 503 => {}
        401 | 403 => {
            return Err(Failure::AuthFailed(format!(
                "the Patroni REST API answered {status}: check patroni_user and its password"
            )))
        }
        _ => {
            return Err(Failure::NotPatroni(format!(
                "HTTP status {status} to GET /primary (200 or 503 expected)"
            )))
        }
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        Failure::NotPatroni(format!(
            "the answer is not JSON ({})",
            server_text(e.to_string().as_bytes())
        ))
    })?;
    let text = |k: &str| json.get(k).and_then(Value::as_str);
    let Some(state) = text("state") else {
        return Err(Failure::NotPatroni(
            "the answer has no \"state\" (not Patroni's REST API?)".into(),
        ));
    };
    let role = text("role").unwrap_or("");
    let shown = |s: &str| server_text(s.as_bytes());
    if state != "running" {
        return Err(Failure::PatroniState(format!(
            "PostgreSQL state {:?}, role {:?}",
            shown(state),
            shown(role)
        )));
    }
    let xlog = json.get("xlog");
    let at = |k: &str| number(xlog.and_then(|x| x.get(k)));
    let timeline = number(json.get("timeline")).and_then(|t| u32::try_from(t).ok());
    match role {
        "master" | "primary" if status == 200 => Ok(Up {
            role: Some(Role::Primary),
            read_only: false,
            wal: at("location"),
            replay_delay: None,
            timeline,
            ..Up::default()
        }),
        "master" | "primary" => Err(Failure::PatroniState(
            "PostgreSQL runs as a primary without Patroni's leader lock (GET /primary answered 503)"
                .into(),
        )),
        "replica" | "standby_leader" => {
            let tagged = json
                .get("tags")
                .and_then(|t| t.get("noloadbalance"))
                .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
            if tagged {
                return Err(Failure::PatroniState(
                    "a replica tagged noloadbalance: it takes no reads".into(),
                ));
            }
            let replayed = at("replayed_location");
            let paused = xlog
                .and_then(|x| x.get("paused"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            // Replayed all it received: no delay; otherwise the age of the last
            // transaction it replayed (unknown before any).
            let replay_delay = if !paused && replayed.is_some() && replayed == at("received_location") {
                Some(Duration::ZERO)
            } else {
                xlog.and_then(|x| x.get("replayed_timestamp"))
                    .and_then(Value::as_str)
                    .and_then(parse_timestamp)
                    .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
            };
            Ok(Up {
                role: Some(Role::Standby),
                read_only: false,
                wal: replayed,
                replay_delay,
                ..Up::default()
            })
        }
        other => Err(Failure::PatroniState(format!(
            "PostgreSQL role {:?}",
            shown(other)
        ))),
    }
}

/// A timestamp as PostgreSQL prints it and Patroni passes it on:
/// `2026-12-02 03:38:20.349629+00:00` (a `T` or a space; an offset `+HH`,
/// `+HH:MM` or `Z`).
fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let frac = &s[i + 1..i + 1 + digits.min(9)];
        nanos = frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32);
        i += 1 + digits;
    }
    let offset = match &s[i..] {
        "" | "Z" => 0,
        rest => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hm = rest[1..].replace(':', "");
            if hm.len() != 2 && hm.len() != 4 {
                return None;
            }
            let h: i64 = hm[..2].parse().ok()?;
            let m: i64 = if hm.len() == 4 {
                hm[2..].parse().ok()?
            } else {
                0
            };
            sign * (h * 3600 + m * 60)
        }
    };
    // Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: &str = r#"{"state": "running", "postmaster_start_time": "2026-12-02 03:38:19.468715+00:00", "role": "master", "server_version": 150018, "xlog": {"location": 67108960}, "timeline": 1, "replication": [{"usename": "postgres", "application_name": "pg0", "client_addr": "127.0.0.1", "state": "streaming", "sync_state": "async", "sync_priority": 0}], "dcs_last_seen": 1796182714, "database_system_identifier": "7714545948535457215", "patroni": {"version": "3.0.2", "scope": "demo"}}"#;
    const REPLICA: &str = r#"{"state": "running", "postmaster_start_time": "2026-12-02 03:38:20.349629+00:00", "role": "replica", "server_version": 150018, "xlog": {"received_location": 67108960, "replayed_location": 67108960, "replayed_timestamp": null, "paused": false}, "timeline": 1, "dcs_last_seen": 1796182714, "database_system_identifier": "7714545948535457215", "patroni": {"version": "3.0.2", "scope": "demo"}}"#;

    fn now() -> SystemTime {
        parse_timestamp("2026-12-02 03:40:00+00:00").unwrap()
    }

    #[test]
    fn a_leader_and_a_replica_as_patroni_3_answers() {
        let up = judge(200, PRIMARY.as_bytes(), now()).unwrap();
        assert_eq!(
            (up.role, up.wal, up.timeline),
            (Some(Role::Primary), Some(67108960), Some(1))
        );
        let up = judge(503, REPLICA.as_bytes(), now()).unwrap();
        assert_eq!(
            (up.role, up.wal, up.replay_delay),
            (Some(Role::Standby), Some(67108960), Some(Duration::ZERO))
        );
    }

    #[test]
    fn patroni_4_spells_the_primary_primary() {
        let body = PRIMARY.replace("\"master\"", "\"primary\"");
        assert_eq!(
            judge(200, body.as_bytes(), now()).unwrap().role,
            Some(Role::Primary)
        );
    }

    #[test]
    fn the_lock_and_the_server_must_agree_for_a_primary() {
        // A PostgreSQL primary whose Patroni does not hold the lock.
        let e = judge(503, PRIMARY.as_bytes(), now()).unwrap_err();
        assert!(
            matches!(&e, Failure::PatroniState(m) if m.contains("without Patroni's leader lock")),
            "{e}"
        );
        // The lock taken, promotion not complete yet: still a standby.
        assert_eq!(
            judge(200, REPLICA.as_bytes(), now()).unwrap().role,
            Some(Role::Standby)
        );
        // The lock held while PostgreSQL stops (a switchover's first second).
        let stopping =
            r#"{"state": "stopping", "role": "master", "patroni": {"version": "3.0.2"}}"#;
        let e = judge(200, stopping.as_bytes(), now()).unwrap_err();
        assert_eq!(e.kind(), dbha_protocol::probe_result::NOT_READY);
        assert!(e.to_string().contains("\"stopping\""), "{e}");
        for role in ["demoted", "uninitialized", ""] {
            let body = REPLICA.replace("\"replica\"", &format!("{role:?}"));
            assert!(judge(200, body.as_bytes(), now()).is_err(), "{role}");
        }
    }

    #[test]
    fn a_lagging_replica_has_the_age_of_its_last_replay() {
        let body = REPLICA
            .replace(
                "\"received_location\": 67108960",
                "\"received_location\": 67200000",
            )
            .replace(
                "\"replayed_timestamp\": null",
                "\"replayed_timestamp\": \"2026-12-02 03:39:30.5+00:00\"",
            );
        let up = judge(503, body.as_bytes(), now()).unwrap();
        assert_eq!(up.replay_delay, Some(Duration::from_millis(29_500)));
        // Behind and never replayed a transaction: unknown.
        let body = REPLICA.replace(
            "\"received_location\": 67108960",
            "\"received_location\": 67200000",
        );
        assert_eq!(
            judge(503, body.as_bytes(), now()).unwrap().replay_delay,
            None
        );
        let paused = REPLICA.replace("\"paused\": false", "\"paused\": true");
        assert_eq!(
            judge(503, paused.as_bytes(), now()).unwrap().replay_delay,
            None
        );
    }

    #[test]
    fn noloadbalance_takes_no_reads() {
        let body = REPLICA.replace(
            "\"timeline\": 1",
            "\"timeline\": 1, \"tags\": {\"noloadbalance\": true}",
        );
        assert!(judge(503, body.as_bytes(), now())
            .unwrap_err()
            .to_string()
            .contains("noloadbalance"));
    }

    #[test]
    fn what_is_not_patroni_is_said_so() {
        use dbha_protocol::probe_result::{AUTH_FAILED, NOT_PATRONI};
        for (status, body) in [
            (200, "<html>hello</html>"),
            (200, "{\"hello\": 1}"),
            (200, "[1, 2]"),
            (404, PRIMARY),
            (500, ""),
            (200, "{\"state\": 5}"),
        ] {
            let e = judge(status, body.as_bytes(), now()).unwrap_err();
            assert_eq!(e.kind(), NOT_PATRONI, "{status} {body}: {e}");
        }
        assert_eq!(judge(401, b"", now()).unwrap_err().kind(), AUTH_FAILED);
        // Server text is escaped before it reaches a log line.
        let body = "{\"state\": \"running\", \"role\": \"evil\\n\\u001b[31m\"}";
        let e = judge(200, body.as_bytes(), now()).unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn timestamps() {
        let t = |s| parse_timestamp(s).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        assert_eq!(t("1970-01-01 00:00:00+00"), Some(Duration::ZERO));
        assert_eq!(
            t("2000-03-01T00:00:00Z"),
            Some(Duration::from_secs(951_868_800))
        );
        assert_eq!(
            t("2026-12-02 04:38:20.25+01:00"),
            t("2026-12-02 03:38:20.25+00:00")
        );
        assert_eq!(
            t("2026-12-02 03:38:20.123456789123+00"),
            Some(Duration::new(1_796_182_700, 123_456_789))
        );
        for bad in [
            "",
            "2026-12-02",
            "2026-13-02 00:00:00",
            "2026-12-02 00:00:00+1",
            "2026-12-02 00:00:00.+00",
            "x026-12-02 00:00:00",
            "1960-01-01 00:00:00",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
