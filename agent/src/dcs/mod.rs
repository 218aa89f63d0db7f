//! `[dcs]`: follow what Patroni decided, from its etcd. The write endpoint is the
//! member holding `/<namespace>/<scope>/leader`, matched to a `[[database]]`
//! (its `member`, or the host and port of the member's `conn_url`), and only
//! while etcd confirmed it within `ttl - loop_wait` (both from Patroni's
//! `config` key). The agent's probes stay a second opinion: a leader this host
//! cannot reach, or a primary seen by a probe that is not the leader, gets no
//! writes. A leader that matches no configured database gets no writes either:
//! etcd's content never sends writes to a host the configuration does not name.
//!
//! - [`etcd`]: the v3 JSON gateway's requests and answers (pure);
//! - [`follow`]: the keys as followed, and what makes them untrusted (pure);
//! - [`client`]: the one thread that talks to etcd and hands the decision loop
//!   plain [`View`]s;
//! - [`writes`]: the DCS's part of the decision (pure).

pub mod client;
pub mod etcd;
pub mod follow;

use crate::config::{Database, Secret};
use crate::decide::{Health, Seen};
use crate::http::Url;
use crate::probe::Role;
use follow::Follower;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `[dcs]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// etcd's client URLs (`http://` or `https://`), tried in turn.
    pub etcd: Vec<Url>,
    /// Patroni's `namespace` (default `/service`).
    pub namespace: String,
    /// Patroni's `scope`: the cluster's name.
    pub scope: String,
    /// etcd authentication (`etcdctl --user`), if any.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// TLS: the CA that signed etcd's certificates (default: the system's
    /// roots), and this client's certificate and key (etcd's `--cacert`,
    /// `--cert`, `--key`).
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Each request to etcd, at most.
    pub timeout: Duration,
    /// How often the leader is confirmed; None: a quarter of Patroni's `ttl`.
    pub heartbeat: Option<Duration>,
}

impl Settings {
    /// The keys' prefix: `/<namespace>/<scope>/`.
    pub fn prefix(&self) -> String {
        format!("{}/{}/", self.namespace.trim_end_matches('/'), self.scope)
    }
}

/// A member's role, as its key says (`master` in Patroni 3, `primary` in 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRole {
    Primary,
    Replica,
    Other(String),
}

/// One `members/<name>` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// From `conn_url`.
    pub host: String,
    pub port: u16,
    pub role: MemberRole,
    /// `running`, `starting`, ...
    pub state: String,
    /// The REST API (`api_url`), for the failsafe fallback.
    pub api_url: Option<String>,
}

/// Patroni's `config` key: what the trust window is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatroniConfig {
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
    pub failsafe_mode: bool,
}

impl Default for PatroniConfig {
    /// Patroni's own defaults, used until the key is read.
    fn default() -> PatroniConfig {
        PatroniConfig {
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(10),
            failsafe_mode: false,
        }
    }
}

impl PatroniConfig {
    /// How long a confirmation of the leader is trusted: `ttl - loop_wait`
    /// (at least one second).
    pub fn window(&self) -> Duration {
        self.ttl
            .saturating_sub(self.loop_wait)
            .max(Duration::from_secs(1))
    }
}

/// What etcd says of the Patroni cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// The leader key's value: a member name.
    pub leader: Option<String>,
    /// Each member key, parsed, or why it could not be.
    pub members: BTreeMap<String, Result<Member, String>>,
    pub config: PatroniConfig,
    /// Why the config key could not be read (Patroni's defaults are used).
    pub config_error: Option<String>,
    /// The `failsafe` key: member name -> REST API URL.
    pub failsafe: Vec<(String, String)>,
}

/// At most this many members are taken from etcd.
const MAX_MEMBERS: usize = 64;
/// A member name, at most.
const MAX_NAME: usize = 256;

fn shown(b: &[u8]) -> String {
    crate::probe::server_text(b)
}

/// `postgres://[user[:password]@]host[:port][/db][?...]`: the host and port.
pub fn conn_url_address(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| {
            format!(
                "conn_url {:?} is not a postgres:// URL",
                shown(url.as_bytes())
            )
        })?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("conn_url {:?}: an unclosed [", shown(url.as_bytes())))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(',') {
        return Err(format!(
            "conn_url {:?}: expected one host",
            shown(url.as_bytes())
        ));
    }
    let port = match port {
        None | Some("") => 5432,
        Some(p) => p
            .parse()
            .ok()
            .filter(|&p: &u16| p != 0)
            .ok_or_else(|| format!("conn_url {:?}: a bad port", shown(url.as_bytes())))?,
    };
    Ok((host.to_owned(), port))
}

fn member(value: &[u8]) -> Result<Member, String> {
    let v: Value = serde_json::from_slice(value)
        .map_err(|e| format!("not JSON ({})", shown(e.to_string().as_bytes())))?;
    let text = |k: &str| v.get(k).and_then(Value::as_str);
    let conn = text("conn_url").ok_or("no conn_url")?;
    let (host, port) = conn_url_address(conn)?;
    let role = match text("role") {
        Some("master" | "primary") => MemberRole::Primary,
        Some("replica") => MemberRole::Replica,
        Some(other) => MemberRole::Other(shown(other.as_bytes())),
        None => MemberRole::Other(String::new()),
    };
    Ok(Member {
        host,
        port,
        role,
        state: shown(text("state").unwrap_or("").as_bytes()),
        api_url: text("api_url").map(str::to_owned),
    })
}

fn seconds(v: Option<&Value>) -> Option<Duration> {
    let n = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    (n.is_finite() && (0.0..=86_400.0).contains(&n)).then(|| Duration::from_secs_f64(n))
}

fn config(value: &[u8]) -> Result<PatroniConfig, String> {
    let v: Value = serde_json::from_slice(value)
        .map_err(|e| format!("not JSON ({})", shown(e.to_string().as_bytes())))?;
    let d = PatroniConfig::default();
    let field = |k: &str, default: Duration| match v.get(k) {
        None => Ok(default),
        Some(x) => seconds(Some(x)).ok_or(format!("{k} is not a number of seconds")),
    };
    Ok(PatroniConfig {
        ttl: field("ttl", d.ttl)?,
        loop_wait: field("loop_wait", d.loop_wait)?,
        retry_timeout: field("retry_timeout", d.retry_timeout)?,
        failsafe_mode: v
            .get("failsafe_mode")
            .is_some_and(|f| f.as_bool() == Some(true) || f.as_str() == Some("true")),
    })
}

/// The cluster as the keys say it.
pub fn cluster(f: &Follower) -> Cluster {
    let mut c = Cluster::default();
    for (key, value) in f.keys() {
        match key {
            "leader" => {
                c.leader = std::str::from_utf8(value)
                    .ok()
                    .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
                    .map(str::to_owned);
            }
            "config" => match config(value) {
                Ok(cfg) => c.config = cfg,
                Err(e) => c.config_error = Some(e),
            },
            "failsafe" => {
                if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(value) {
                    c.failsafe = m
                        .iter()
                        .take(MAX_MEMBERS)
                        .filter_map(|(n, u)| Some((n.clone(), u.as_str()?.to_owned())))
                        .collect();
                }
            }
            _ => {
                if let Some(name) = key.strip_prefix("members/") {
                    if c.members.len() < MAX_MEMBERS && !name.is_empty() && name.len() <= MAX_NAME {
                        c.members.insert(name.to_owned(), member(value));
                    }
                }
            }
        }
    }
    c
}

/// What the DCS thread tells the decision loop, after every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub cluster: Cluster,
    /// When etcd last confirmed the keys (the send time of a linearizable
    /// read that agreed); None before the first.
    pub confirmed: Option<Instant>,
    /// A read of everything applied, the watch in place, heartbeats answered.
    pub connected: bool,
    /// The revision applied.
    pub revision: u64,
    /// Full reads after a break, since the start.
    pub resyncs: u64,
    /// HTTP requests sent (to etcd, and to Patroni's `/primary` on the
    /// failsafe fallback), since the start.
    pub requests: u64,
    /// The etcd endpoint in use (or last tried).
    pub endpoint: String,
    /// The last thing that went wrong, while it lasts.
    pub error: Option<String>,
    /// With etcd lost past the window and `failsafe_mode` on: the one member
    /// of the `failsafe` key whose `/primary` answered 200 (None when none,
    /// or more than one, did).
    pub failsafe_primary: Option<String>,
}

impl View {
    /// The leader's confirmation is within Patroni's `ttl - loop_wait`.
    pub fn trusted(&self, now: Instant) -> bool {
        self.confirmed
            .is_some_and(|t| now.saturating_duration_since(t) < self.cluster.config.window())
    }

    /// Writes come from the failsafe fallback: not trusted any more, and one
    /// member of the `failsafe` key answered 200 to `/primary`.
    pub fn on_failsafe(&self, now: Instant) -> bool {
        !self.trusted(now) && self.failsafe_primary.is_some()
    }
}

/// Why writes go to no endpoint under the DCS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoWrites {
    /// Never confirmed, or not within `ttl - loop_wait`.
    Unconfirmed { since: Option<Duration> },
    /// No leader key.
    NoLeader,
    /// The leader key names a member that has no member key, or whose key does
    /// not parse.
    UnknownMember { leader: String, why: String },
    /// The leader matches no configured database (or more than one).
    Unmatched {
        leader: String,
        address: String,
        why: String,
    },
    /// The leader is not a primary yet (its key and this host's probe say so).
    NotPromoted { alias: String },
    /// This host's probes do not see the leader up.
    Unreachable { alias: String },
    /// The leader's endpoint is fenced.
    Fenced { alias: String },
    /// The leader's endpoint went down after etcd's last confirmation: it may
    /// be back demoted (Patroni demotes a primary that lost etcd).
    Restarted { alias: String },
    /// A probe sees another endpoint as primary.
    OtherPrimary { alias: String, other: String },
}

impl NoWrites {
    /// Its number in the state file's DCS area (LAYOUT.md).
    pub fn code(&self) -> u8 {
        use dbha_protocol::dcs::no_writes as k;
        match self {
            NoWrites::Unconfirmed { .. } => k::UNCONFIRMED,
            NoWrites::NoLeader => k::NO_LEADER,
            NoWrites::UnknownMember { .. } => k::UNKNOWN_MEMBER,
            NoWrites::Unmatched { .. } => k::UNMATCHED,
            NoWrites::NotPromoted { .. } => k::NOT_PROMOTED,
            NoWrites::Unreachable { .. } => k::UNREACHABLE,
            NoWrites::Fenced { .. } => k::FENCED,
            NoWrites::Restarted { .. } => k::RESTARTED,
            NoWrites::OtherPrimary { .. } => k::OTHER_PRIMARY,
        }
    }

    /// Its stable name (metrics, `dbha-agent status`), as LAYOUT.md names it.
    pub fn kind(&self) -> &'static str {
        dbha_protocol::dcs::no_writes::name(self.code())
    }
}

impl std::fmt::Display for NoWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoWrites::Unconfirmed { since: None } => {
                f.write_str("etcd has not confirmed a leader yet")
            }
            NoWrites::Unconfirmed { since: Some(d) } => write!(
                f,
                "etcd has not confirmed the leader for {:.1}s (longer than ttl - loop_wait)",
                d.as_secs_f64()
            ),
            NoWrites::NoLeader => f.write_str("Patroni's leader key is empty (no leader)"),
            NoWrites::UnknownMember { leader, why } => {
                write!(f, "the leader {leader:?} has no usable member key ({why})")
            }
            NoWrites::Unmatched {
                leader,
                address,
                why,
            } => write!(
                f,
                "the leader {leader:?} ({address}) {why}: no writes to a host the configuration does not name"
            ),
            NoWrites::NotPromoted { alias } => {
                write!(f, "the leader {alias} is not a primary yet")
            }
            NoWrites::Unreachable { alias } => {
                write!(f, "the leader {alias} is not up as this host's probes see it")
            }
            NoWrites::Fenced { alias } => write!(f, "the leader {alias} is fenced"),
            NoWrites::Restarted { alias } => write!(
                f,
                "the leader {alias} went down after etcd last confirmed it: no writes until etcd confirms it again"
            ),
            NoWrites::OtherPrimary { alias, other } => write!(
                f,
                "a probe sees {other} as a primary while the leader is {alias}"
            ),
        }
    }
}

/// The database `name` is: the one whose `member` is `name`, else the one
/// whose host and port are the member's `conn_url`'s (a database with a
/// `member` of its own matches by that only).
pub fn match_member(name: &str, m: &Member, dbs: &[Database]) -> Result<usize, String> {
    if let Some(i) = dbs.iter().position(|d| d.member.as_deref() == Some(name)) {
        return Ok(i);
    }
    let found: Vec<usize> = (0..dbs.len())
        .filter(|&i| {
            let d = &dbs[i];
            d.member.is_none() && d.port == m.port && d.host.eq_ignore_ascii_case(&m.host)
        })
        .collect();
    match found[..] {
        [i] => Ok(i),
        [] => Err("matches no [[database]] (by member, or by host and port)".into()),
        _ => Err("matches more than one [[database]]: set member on each".into()),
    }
}

/// The DCS's part of the decision: the endpoint writes go to, or why none,
/// with the endpoint the leader is when it is matched (writes belong to it).
pub fn writes(
    view: &View,
    now: Instant,
    dbs: &[Database],
    seen: &[Seen],
) -> (Result<usize, NoWrites>, Option<usize>) {
    let c = &view.cluster;
    let leader = if view.trusted(now) {
        c.leader.clone()
    } else if c.config.failsafe_mode && view.failsafe_primary.is_some() {
        view.failsafe_primary.clone()
    } else {
        let since = view.confirmed.map(|t| now.saturating_duration_since(t));
        return (Err(NoWrites::Unconfirmed { since }), None);
    };
    let Some(leader) = leader else {
        return (Err(NoWrites::NoLeader), None);
    };
    let member = match c.members.get(&leader) {
        None => {
            return (
                Err(NoWrites::UnknownMember {
                    leader,
                    why: "no members/ key".into(),
                }),
                None,
            )
        }
        Some(Err(e)) => {
            return (
                Err(NoWrites::UnknownMember {
                    why: e.clone(),
                    leader,
                }),
                None,
            )
        }
        Some(Ok(m)) => m,
    };
    let i = match match_member(&leader, member, dbs) {
        Ok(i) => i,
        Err(why) => {
            return (
                Err(NoWrites::Unmatched {
                    address: format!("{}:{}", member.host, member.port),
                    leader,
                    why,
                }),
                None,
            )
        }
    };
    let alias = dbs[i].alias.clone();
    let s = &seen[i];
    let verdict = if s.health != Health::Up {
        Err(NoWrites::Unreachable { alias })
    } else if s.fenced {
        Err(NoWrites::Fenced { alias })
    } else if s
        .down_at
        .is_some_and(|d| view.confirmed.is_none_or(|c| d >= c))
    {
        Err(NoWrites::Restarted { alias })
    } else if let Some(j) = (0..seen.len())
        .find(|&j| j != i && seen[j].health == Health::Up && seen[j].role() == Some(Role::Primary))
    {
        Err(NoWrites::OtherPrimary {
            alias,
            other: dbs[j].alias.clone(),
        })
    } else {
        // Promoted: this host's probe says so when it sees roles (it
        // outranks a member key that may be stale: a primary that lost etcd
        // is demoted by Patroni while the last key read still says master);
        // otherwise its member key.
        let promoted = match s.claim {
            Some(claim) => claim.role == Role::Primary && !claim.read_only,
            None => member.role == MemberRole::Primary && member.state == "running",
        };
        if promoted {
            Ok(i)
        } else {
            Err(NoWrites::NotPromoted { alias })
        }
    };
    (verdict, Some(i))
}

#[cfg(test)]
mod tests;
