//! Prometheus metrics in the text exposition format, served over plain HTTP from
//! the standard library (small threads; `metrics_listen`, loopback by default in
//! the example configuration). The agent's loop replaces the snapshot after every
//! publication; a scrape only formats it.

use crate::decide::Health;
use crate::state::State;
use dbha_protocol::Status;
use log::{error, info};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One endpoint as the metrics show it.
#[derive(Debug, Clone, Default)]
pub struct EndpointMetrics {
    pub alias: String,
    pub up: bool,
    /// "primary", "standby" or "unknown".
    pub role: &'static str,
    pub last_probe: Duration,
    pub consecutive_failures: u32,
    /// Failed probes by kind ("refused", "timeout", ...), since the agent started.
    pub errors: BTreeMap<&'static str, u64>,
    /// Probe results, failed or not, since the agent started.
    pub probes: u64,
    /// A standby's replay delay and WAL bytes behind the primary, when measured.
    pub lag: Option<Duration>,
    pub lag_bytes: Option<u64>,
    /// A MySQL replica's GTID transactions behind the primary, when measured.
    pub lag_transactions: Option<u64>,
    /// Too far behind to take reads.
    pub lagging: bool,
    /// Takes no writes (see `State::fence`).
    pub fenced: bool,
}

/// What a scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub endpoints: Vec<EndpointMetrics>,
    /// Where writes go.
    pub write: Option<String>,
    pub read: Option<String>,
    pub epoch: u64,
    pub switches_total: u64,
    pub last_heartbeat: Option<Instant>,
    /// Under `[dcs]`.
    pub dcs: Option<DcsMetrics>,
}

/// What `[dcs]` exports.
#[derive(Debug, Clone, Default)]
pub struct DcsMetrics {
    pub connected: bool,
    pub revision: u64,
    pub resyncs: u64,
    pub requests: u64,
    pub confirmed: Option<Instant>,
    pub leader: Option<String>,
    pub failsafe: bool,
    /// Why writes go to no endpoint, when they do not.
    pub no_writes: Option<String>,
}

/// A label value, escaped as the exposition format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let per = |f: &dyn Fn(&EndpointMetrics) -> String| -> Vec<(String, String)> {
            self.endpoints
                .iter()
                .map(|e| (format!("{{alias=\"{}\"}}", label(&e.alias)), f(e)))
                .collect()
        };
        family(
            "dbha_endpoint_up",
            "gauge",
            "1 when the endpoint passed its rise probes and not its fall probes since.",
            per(&|e| u8::from(e.up).to_string()),
        );
        family(
            "dbha_endpoint_role",
            "gauge",
            "The endpoint's role as last seen (label role), always 1.",
            self.endpoints
                .iter()
                .map(|e| {
                    (
                        format!("{{alias=\"{}\",role=\"{}\"}}", label(&e.alias), e.role),
                        "1".into(),
                    )
                })
                .collect(),
        );
        family(
            "dbha_endpoint_last_probe_duration_seconds",
            "gauge",
            "How long the last probe took.",
            per(&|e| format!("{:.6}", e.last_probe.as_secs_f64())),
        );
        family(
            "dbha_endpoint_consecutive_failures",
            "gauge",
            "Failed probes in a row.",
            per(&|e| e.consecutive_failures.to_string()),
        );
        let measured = |f: &dyn Fn(&EndpointMetrics) -> Option<String>| -> Vec<(String, String)> {
            self.endpoints
                .iter()
                .filter_map(|e| Some((format!("{{alias=\"{}\"}}", label(&e.alias)), f(e)?)))
                .collect()
        };
        family(
            "dbha_endpoint_replica_lag_seconds",
            "gauge",
            "A standby's replay delay (0 when it replayed all it received), as last measured.",
            measured(&|e| e.lag.map(|d| format!("{:.3}", d.as_secs_f64()))),
        );
        family(
            "dbha_endpoint_replica_lag_bytes",
            "gauge",
            "Bytes of WAL a standby's replay is behind the primary's last known position; for a MySQL replica, bytes received and not executed.",
            measured(&|e| e.lag_bytes.map(|b| b.to_string())),
        );
        family(
            "dbha_endpoint_replica_lag_transactions",
            "gauge",
            "GTID transactions a MySQL replica is behind the primary's last known position.",
            measured(&|e| e.lag_transactions.map(|t| t.to_string())),
        );
        family(
            "dbha_endpoint_lagging",
            "gauge",
            "1 when a standby is over max_replica_lag, max_replica_lag_bytes or max_replica_lag_transactions and takes no reads.",
            per(&|e| u8::from(e.lagging).to_string()),
        );
        family(
            "dbha_endpoint_fenced",
            "gauge",
            "1 when an endpoint is fenced: it claimed primary beside the write endpoint or on an older timeline, and takes no writes.",
            per(&|e| u8::from(e.fenced).to_string()),
        );
        family(
            "dbha_probes_total",
            "counter",
            "Probe results by endpoint since the agent started (a held session's loss counts as one): the probing pace.",
            per(&|e| e.probes.to_string()),
        );
        family(
            "dbha_probe_errors_total",
            "counter",
            "Failed probes by endpoint and kind since the agent started.",
            self.endpoints
                .iter()
                .flat_map(|e| {
                    e.errors.iter().map(|(kind, n)| {
                        (
                            format!("{{alias=\"{}\",kind=\"{kind}\"}}", label(&e.alias)),
                            n.to_string(),
                        )
                    })
                })
                .collect(),
        );
        let chosen = |which: &Option<String>| {
            per(&|e| u8::from(which.as_deref() == Some(&e.alias)).to_string())
        };
        family(
            "dbha_write",
            "gauge",
            "1 for the endpoint writes go to now (none when no endpoint is usable).",
            chosen(&self.write),
        );
        family(
            "dbha_active",
            "gauge",
            "The older name of dbha_write, kept for existing dashboards and alerts.",
            chosen(&self.write),
        );
        family(
            "dbha_read",
            "gauge",
            "1 for the endpoint reads go to now.",
            chosen(&self.read),
        );
        let status = match (&self.write, &self.read) {
            (Some(_), _) => Status::Active,
            (None, Some(_)) => Status::ReadOnly,
            (None, None) => Status::NoHealthyDatabase,
        };
        family(
            "dbha_status",
            "gauge",
            "The status readers see (label status): active, read_only (no endpoint takes writes, one takes reads) or no_healthy_database; 1 for the current one.",
            [
                Status::Active,
                Status::ReadOnly,
                Status::NoHealthyDatabase,
            ]
            .iter()
            .map(|s| {
                (
                    format!("{{status=\"{}\"}}", s.name()),
                    u8::from(*s == status).to_string(),
                )
            })
            .collect(),
        );
        family(
            "dbha_epoch",
            "gauge",
            "The published decision's epoch.",
            vec![(String::new(), self.epoch.to_string())],
        );
        family(
            "dbha_switches_total",
            "counter",
            "Decision changes published since the agent started.",
            vec![(String::new(), self.switches_total.to_string())],
        );
        if let Some(d) = &self.dcs {
            let one = |v: String| vec![(String::new(), v)];
            family(
                "dbha_dcs_connected",
                "gauge",
                "1 while the agent follows etcd: keys read, the watch in place, heartbeats answered.",
                one(u8::from(d.connected).to_string()),
            );
            family(
                "dbha_dcs_revision",
                "gauge",
                "The etcd revision applied.",
                one(d.revision.to_string()),
            );
            family(
                "dbha_dcs_resyncs_total",
                "counter",
                "Full reads of Patroni's keys after the sync broke (a watch that ended, a failed or disagreeing heartbeat, a stale or foreign member).",
                one(d.resyncs.to_string()),
            );
            family(
                "dbha_dcs_requests_total",
                "counter",
                "HTTP requests sent to etcd (reads, heartbeats, watches, authentication) and, on the failsafe fallback, to Patroni's /primary.",
                one(d.requests.to_string()),
            );
            family(
                "dbha_dcs_confirmation_age_seconds",
                "gauge",
                "Time since etcd last confirmed the leader (a linearizable read); writes stop past Patroni's ttl - loop_wait.",
                one(d.confirmed.map_or(f64::NAN, |t| t.elapsed().as_secs_f64()).to_string()),
            );
            family(
                "dbha_dcs_leader",
                "gauge",
                "1 for the member Patroni's leader key names (label member).",
                d.leader
                    .iter()
                    .map(|l| (format!("{{member=\"{}\"}}", label(l)), "1".to_owned()))
                    .collect(),
            );
            family(
                "dbha_dcs_failsafe",
                "gauge",
                "1 while etcd is lost and writes follow failsafe_mode's single /primary.",
                one(u8::from(d.failsafe).to_string()),
            );
            family(
                "dbha_dcs_writes_refused",
                "gauge",
                "1 while the DCS gives writes no endpoint (label reason: unconfirmed, no_leader, unknown_member, unmatched, not_promoted, unreachable, fenced, restarted, other_primary).",
                d.no_writes
                    .iter()
                    .map(|r| (format!("{{reason=\"{}\"}}", label(r)), "1".to_owned()))
                    .collect(),
            );
        }
        let age = self
            .last_heartbeat
            .map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
        family(
            "dbha_heartbeat_age_seconds",
            "gauge",
            "Time since the agent's last publication.",
            vec![(String::new(), format!("{age:.3}"))],
        );
        out
    }
}

/// The loop's side of the metrics: counters kept between publications, and the
/// snapshot a scrape reads. Without `metrics_listen` it only counts.
#[derive(Default)]
pub struct Feed {
    shared: Option<Arc<Mutex<Metrics>>>,
    switches_total: u64,
    /// Failed probes by alias and kind, since the agent started.
    errors: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Probe results by alias, since the agent started.
    probes: BTreeMap<String, u64>,
}

impl Feed {
    /// Serves the metrics on `listen`, when configured (see [`serve`]).
    pub fn start(listen: Option<SocketAddr>) -> Feed {
        let shared = listen.and_then(|addr| {
            let shared = Arc::new(Mutex::new(Metrics::default()));
            match serve(addr, shared.clone()) {
                Ok(()) => Some(shared),
                Err(e) => {
                    error!("cannot start the metrics thread for {addr}: {e}; no metrics");
                    None
                }
            }
        });
        Feed {
            shared,
            ..Feed::default()
        }
    }

    /// A probe result arrived for `alias`.
    pub fn probed(&mut self, alias: &str) {
        *self.probes.entry(alias.to_owned()).or_default() += 1;
    }

    pub fn failed_probe(&mut self, alias: &str, kind: &'static str) {
        *self
            .errors
            .entry(alias.to_owned())
            .or_default()
            .entry(kind)
            .or_insert(0) += 1;
    }

    /// A new decision was published.
    pub fn switched(&mut self) {
        self.switches_total += 1;
    }

    /// Replaces the snapshot a scrape serves.
    pub fn update(&self, state: &State, epoch: u64) {
        let Some(shared) = &self.shared else { return };
        let endpoints = state
            .endpoints
            .iter()
            .map(|e| EndpointMetrics {
                alias: e.db.alias.clone(),
                up: e.tracker.health == Health::Up,
                role: e.role().map_or(dbha::Role::Unknown, Into::into).name(),
                last_probe: e.took,
                consecutive_failures: e.tracker.failures(),
                errors: self.errors.get(&e.db.alias).cloned().unwrap_or_default(),
                probes: self.probes.get(&e.db.alias).copied().unwrap_or_default(),
                lag: e.lag.delay,
                lag_bytes: e.lag.bytes,
                lag_transactions: e.lag.transactions,
                lagging: e.lag.lagging,
                fenced: e.fenced,
            })
            .collect();
        let name = |i: Option<usize>| i.map(|i| state.endpoints[i].db.alias.clone());
        let m = Metrics {
            endpoints,
            write: name(state.choice.write),
            read: name(state.choice.read),
            epoch,
            switches_total: self.switches_total,
            last_heartbeat: Some(Instant::now()),
            dcs: state.config.dcs.as_ref().map(|_| {
                let v = state.dcs.clone().unwrap_or_default();
                DcsMetrics {
                    connected: v.connected,
                    revision: v.revision,
                    resyncs: v.resyncs,
                    requests: v.requests,
                    confirmed: v.confirmed,
                    leader: v.cluster.leader.clone(),
                    failsafe: v.on_failsafe(Instant::now()),
                    no_writes: state
                        .dcs_no_writes(Instant::now())
                        .map(|w| w.kind().to_owned()),
                }
            }),
        };
        if let Ok(mut slot) = shared.lock() {
            *slot = m;
        }
    }
}

/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 8;
/// The most a client gets to send its request and read the answer.
const REQUEST_TIME: Duration = Duration::from_secs(2);
/// How often a listen address that could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `addr` from a thread, each connection in its own
/// thread (at most [`MAX_CONNECTIONS`], each given [`REQUEST_TIME`] in all), so a
/// slow or idle client delays no scrape. An address that cannot be bound (the
/// port is taken) is logged and tried again every [`BIND_RETRY`]: monitoring is
/// never a reason for the agent not to run.
pub fn serve(addr: SocketAddr, shared: Arc<Mutex<Metrics>>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let listener = bind(addr);
            let busy = Arc::new(AtomicUsize::new(0));
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (done, shared) = (busy.clone(), shared.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        answer(conn, &shared);
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(())
}

fn bind(addr: SocketAddr) -> TcpListener {
    let mut failing = false;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => {
                let bound = l.local_addr().map_or(addr, |a| a);
                info!("metrics on http://{bound}/metrics");
                return l;
            }
            Err(e) => {
                if !failing {
                    error!(
                        "cannot serve metrics on {addr} (metrics_listen): {e}; trying again every {BIND_RETRY:?}"
                    );
                    failing = true;
                }
                std::thread::sleep(BIND_RETRY);
            }
        }
    }
}

/// Reads one request (until the end of its headers, at most 16 KiB, within
/// [`REQUEST_TIME`]) and answers it.
fn answer(mut conn: TcpStream, shared: &Mutex<Metrics>) {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req);
    let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?") {
        let text = shared.lock().map(|m| m.render()).unwrap_or_default();
        ("200 OK", text)
    } else {
        ("404 Not Found", "only /metrics is served here\n".to_owned())
    };
    let _ = conn.set_write_timeout(Some(REQUEST_TIME));
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
