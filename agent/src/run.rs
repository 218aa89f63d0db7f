//! `dbha-agent run`: probe reports and signals arrive on one channel; the loop
//! updates each endpoint's hysteresis, decides, and publishes into the state file,
//! with a heartbeat every `interval` whatever the probes are doing.

use crate::config::{Config, Database};
use crate::decide::{decide, Decision, Health, Seen, Tracker};
use crate::metrics::{self, Metrics};
use crate::notify::Notifier;
use crate::probe::{self, Outcome, Report, Role};
use crate::signals;
use dbha_protocol::writer::{Opened, Publication, Settings, StateFile};
use dbha_protocol::NONE;
use log::{error, info, warn};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the loop reacts to.
#[derive(Debug)]
pub enum Event {
    Probe(Report),
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

impl From<Report> for Event {
    fn from(r: Report) -> Event {
        Event::Probe(r)
    }
}

/// Errors that keep the agent from starting.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

struct Endpoint {
    db: Database,
    tracker: Tracker,
    last: Option<Outcome>,
    /// Role and read-only flag from the last probe that could log in; kept through
    /// a lost probe, forgotten when the endpoint goes down.
    role: Option<(Role, bool)>,
    /// How long the last probe took.
    took: Duration,
}

impl Endpoint {
    fn seen(&self) -> Seen {
        Seen {
            health: self.tracker.health,
            role: self.role.map(|(r, _)| r),
            read_only: self.role.is_some_and(|(_, ro)| ro),
        }
    }
}

const NONE_LOG_EVERY: Duration = Duration::from_secs(60);

struct Agent {
    config_path: PathBuf,
    config: Config,
    endpoints: Vec<Endpoint>,
    state: StateFile,
    /// The write (active) and read endpoints, indexes into `endpoints`.
    choice: (Option<usize>, Option<usize>),
    /// Dropping these stops the probe threads.
    probes: Vec<Sender<()>>,
    generation: u64,
    tx: Sender<Event>,
    last_none_log: Option<Instant>,
    last_conflict_log: Option<Instant>,
    /// Until then, first verdicts may still be pending (see [`crate::decide::choose`]).
    settle_until: Instant,
    notifier: Notifier,
    /// READY=1 was sent (after the first complete probe cycle and publication).
    ready: bool,
    /// Which endpoints have reported a probe since the probes (re)started.
    reported: Vec<bool>,
    /// When the last probe report arrived: the watchdog is fed only while they do.
    last_report: Instant,
    /// What `metrics_listen` serves, when configured.
    metrics: Option<Arc<Mutex<Metrics>>>,
    switches_total: u64,
    /// Failed probes by alias and kind, since the agent started.
    errors: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

/// How long, from a start or reload, until every endpoint has had the chance of a
/// first verdict: `max(rise, fall)` probes, each taking at most the longer of its
/// interval and timeout, plus one interval of slack.
fn settle_time(config: &Config) -> Duration {
    config
        .databases
        .iter()
        .map(|d| d.interval.max(d.timeout) * d.rise.max(d.fall) + d.interval)
        .max()
        .unwrap_or_default()
}

fn settings(c: &Config) -> Settings {
    Settings {
        stale_after_ns: c.stale_after.as_nanos() as u64,
        mode: c.state_mode,
    }
}

fn endpoints(config: &Config) -> Vec<Endpoint> {
    config
        .databases
        .iter()
        .map(|db| Endpoint {
            db: db.clone(),
            tracker: Tracker::new(db.rise, db.fall),
            last: None,
            role: None,
            took: Duration::ZERO,
        })
        .collect()
}

/// Runs the agent until SIGTERM/SIGINT. Returns an error only if it cannot start.
pub fn run(config_path: &Path) -> Result<(), StartError> {
    let config = Config::load(config_path).map_err(|e| StartError(e.to_string()))?;
    for w in config.unresolvable_hosts() {
        warn!("{w}");
    }
    let (tx, rx) = mpsc::channel();
    // Before anything slow: a SIGTERM from here on is handled cleanly.
    signals::forward(tx.clone())
        .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;

    if let Some(dir) = config
        .state_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StartError(format!(
                    "cannot create the state file's directory {}: {e}",
                    dir.display()
                ))
            })?;
            info!("created {}", dir.display());
        }
    }
    let (state, opened) = StateFile::open(
        &config.state_file,
        &config.published_endpoints(),
        settings(&config),
        &Publication::NOTHING,
    )
    .map_err(|e| StartError(e.to_string()))?;
    let endpoints = endpoints(&config);
    // A reused file keeps its published decision until the probes have a verdict.
    let index = |i: u32| Some(i as usize).filter(|&i| i < endpoints.len());
    let choice = match opened {
        Opened::Reused => (
            index(state.values().write_index),
            index(state.values().read_index),
        ),
        _ => (None, None),
    };
    info!(
        "state file {} {} (epoch {}, config generation {}), {} databases, interval {:?}, failback {:?}",
        config.state_file.display(),
        match opened {
            Opened::Created => "created",
            Opened::Reused => "reused",
            Opened::Replaced => "replaced (endpoints or layout changed)",
        },
        state.values().epoch,
        state.values().config_generation,
        config.databases.len(),
        config.interval,
        config.failback,
    );
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let shared = Arc::new(Mutex::new(Metrics::default()));
            let bound = metrics::serve(addr, shared.clone()).map_err(|e| {
                StartError(format!(
                    "cannot serve metrics on {addr} (metrics_listen): {e}"
                ))
            })?;
            info!("metrics on http://{bound}/metrics");
            Some(shared)
        }
        None => None,
    };
    let settle_until = Instant::now() + settle_time(&config);
    let mut agent = Agent {
        config_path: config_path.to_owned(),
        config,
        endpoints,
        state,
        choice,
        probes: Vec::new(),
        generation: 0,
        tx,
        last_none_log: None,
        last_conflict_log: None,
        settle_until,
        notifier: Notifier::from_env(),
        ready: false,
        reported: Vec::new(),
        last_report: Instant::now(),
        metrics,
        switches_total: 0,
        errors: BTreeMap::new(),
    };
    agent.start_probes();
    agent.run(rx);
    Ok(())
}

impl Agent {
    fn start_probes(&mut self) {
        self.generation += 1;
        self.probes.clear();
        self.reported = vec![false; self.endpoints.len()];
        for (i, e) in self.endpoints.iter().enumerate() {
            match probe::spawn(self.generation, i, e.db.clone(), self.tx.clone()) {
                Ok(stop) => self.probes.push(stop),
                // Without a thread this endpoint is never probed: it stays Unknown
                // and is never chosen. Say so loudly.
                Err(err) => error!("{}: cannot start its probe thread: {err}", e.db.alias),
            }
        }
    }

    fn run(&mut self, rx: Receiver<Event>) {
        let mut next_beat = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_beat {
                self.publish();
                next_beat += self.config.interval;
                if next_beat < now {
                    // Suspended or starved: restart the rhythm rather than catch up.
                    next_beat = now + self.config.interval;
                }
            }
            if self.probes_alive() {
                self.notifier.ping_if_due();
            }
            let wake = self
                .notifier
                .ping_due()
                .map_or(next_beat, |p| p.min(next_beat));
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Event::Probe(r)) if r.generation == self.generation => {
                    self.observe(r);
                    self.publish();
                }
                Ok(Event::Probe(_)) => {}
                Ok(Event::Reload) => {
                    self.notifier.reloading();
                    self.reload();
                    self.notifier.ready(&self.status_line());
                }
                Ok(Event::Stop) => {
                    self.notifier.stopping();
                    self.probes.clear();
                    self.state.mark_stopped();
                    info!("stopping: state file marked \"agent stopped\"");
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                // We hold a sender, so this cannot happen; stop cleanly if it does.
                Err(RecvTimeoutError::Disconnected) => {
                    self.state.mark_stopped();
                    return;
                }
            }
        }
    }

    /// Probe reports keep arriving: each endpoint probes at least every
    /// max(interval, timeout), so three of the longest such periods without any
    /// report means the probing is wedged, and systemd's watchdog should act.
    fn probes_alive(&self) -> bool {
        let period = self
            .config
            .databases
            .iter()
            .map(|d| d.interval.max(d.timeout))
            .max()
            .unwrap_or(self.config.interval);
        self.last_report.elapsed() < period * 3 + self.config.interval
    }

    /// Replaces the snapshot the metrics endpoint serves.
    fn update_metrics(&self) {
        let Some(shared) = &self.metrics else { return };
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| metrics::Endpoint {
                alias: e.db.alias.clone(),
                up: e.tracker.health == Health::Up,
                role: match e.seen().role {
                    Some(Role::Primary) => "primary",
                    Some(Role::Standby) => "standby",
                    None => "unknown",
                },
                last_probe: e.took,
                consecutive_failures: e.tracker.failures(),
                errors: self.errors.get(&e.db.alias).cloned().unwrap_or_default(),
            })
            .collect();
        let name = |i: Option<usize>| i.map(|i| self.endpoints[i].db.alias.clone());
        let m = Metrics {
            endpoints,
            active: name(self.choice.0),
            read: name(self.choice.1),
            epoch: self.state.values().epoch,
            switches_total: self.switches_total,
            last_heartbeat: Some(Instant::now()),
        };
        if let Ok(mut slot) = shared.lock() {
            *slot = m;
        }
    }

    /// What `systemctl status` shows.
    fn status_line(&self) -> String {
        let up = self
            .endpoints
            .iter()
            .filter(|e| e.tracker.health == Health::Up)
            .count();
        format!(
            "active: {}, read: {} (epoch {}); {up}/{} databases up",
            self.alias(self.choice.0),
            self.alias(self.choice.1),
            self.state.values().epoch,
            self.endpoints.len()
        )
    }

    fn observe(&mut self, r: Report) {
        if r.index >= self.endpoints.len() {
            return;
        }
        self.reported[r.index] = true;
        self.last_report = Instant::now();
        if let Err(f) = &r.outcome {
            let alias = self.endpoints[r.index].db.alias.clone();
            let kind = dbha_protocol::probe_result::name(f.kind());
            *self
                .errors
                .entry(alias)
                .or_default()
                .entry(kind)
                .or_insert(0) += 1;
        }
        self.endpoints[r.index].took = r.took;
        let kind = r
            .outcome
            .as_ref()
            .map_or_else(|f| f.kind(), |_| dbha_protocol::probe_result::OK);
        self.state.set_probe_result(r.index, kind);
        let Some(e) = self.endpoints.get_mut(r.index) else {
            return;
        };
        if let Some(t) = e.tracker.observe(r.outcome.is_ok()) {
            match (&r.outcome, t.to) {
                (Err(f), Health::Down) => info!(
                    "{}: down after {} failed probe{} ({f})",
                    e.db.alias,
                    t.after,
                    if t.after == 1 { "" } else { "s" }
                ),
                (_, Health::Up) => info!(
                    "{}: up after {} successful probe{}",
                    e.db.alias,
                    t.after,
                    if t.after == 1 { "" } else { "s" }
                ),
                _ => {}
            }
        }
        match (&r.outcome, e.tracker.health) {
            (Ok(up), _) => e.role = up.role.map(|role| (role, up.read_only)),
            (Err(_), Health::Down) => e.role = None,
            _ => {}
        }
        e.last = Some(r.outcome);
    }

    fn alias(&self, i: Option<usize>) -> &str {
        i.and_then(|i| self.endpoints.get(i))
            .map_or("NONE", |e| e.db.alias.as_str())
    }

    fn publication(&self, conflict: bool) -> Publication {
        let mask = |f: &dyn Fn(&Endpoint) -> bool| {
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.tracker.health == Health::Up && f(e))
                .fold(0u64, |m, (i, _)| m | 1 << i)
        };
        let index = |i: Option<usize>| i.map_or(NONE, |i| i as u32);
        Publication {
            write_index: index(self.choice.0),
            read_index: index(self.choice.1),
            health_mask: mask(&|_| true),
            primary_mask: mask(&|e| e.seen().role == Some(Role::Primary)),
            standby_mask: mask(&|e| e.seen().role == Some(Role::Standby)),
            conflict,
        }
    }

    fn decide(
        &self,
        config: &Config,
        endpoints: &[Endpoint],
        current: (Option<usize>, Option<usize>),
        settling: bool,
    ) -> Decision {
        let seen: Vec<Seen> = endpoints.iter().map(Endpoint::seen).collect();
        decide(
            &seen,
            current,
            config.failback,
            settling,
            config.writes,
            config.reads,
        )
    }

    /// Decides, and publishes the decision with a fresh heartbeat.
    fn publish(&mut self) {
        let before = self.choice;
        let settling = Instant::now() < self.settle_until;
        let d = self.decide(&self.config, &self.endpoints, before, settling);
        self.choice = (d.write, d.read);
        let conflict = d.primaries.len() > 1;
        let published = self.state.publish(&self.publication(conflict));
        if published.is_some() {
            self.switches_total += 1;
        }
        self.update_metrics();
        if let Some(epoch) = published {
            if d.write != before.0 {
                info!(
                    "active: {} -> {} (epoch {epoch})",
                    self.alias(before.0),
                    self.alias(d.write)
                );
            }
            if d.read != before.1 && d.read != d.write {
                info!(
                    "read: {} -> {} (epoch {epoch})",
                    self.alias(before.1),
                    self.alias(d.read)
                );
            }
        }
        let verdicts = self
            .endpoints
            .iter()
            .all(|e| e.tracker.health != Health::Unknown);
        if !self.ready && self.reported.iter().all(|r| *r) && (verdicts || !settling) {
            // A complete probe cycle with a verdict on every endpoint (or as many
            // as the settling time allows) is published: a real decision.
            self.notifier.ready(&self.status_line());
            self.ready = true;
        } else if self.ready && (d.write, d.read) != before {
            self.notifier.status(&self.status_line());
        }
        self.log_conflict(&d);
        // Only once every endpoint has a verdict: a fresh agent is not in trouble.
        let all_down = self
            .endpoints
            .iter()
            .all(|e| e.tracker.health == Health::Down);
        if d.write.is_none() && all_down {
            if self
                .last_none_log
                .is_none_or(|t| t.elapsed() >= NONE_LOG_EVERY)
            {
                let why: Vec<String> = self
                    .endpoints
                    .iter()
                    .map(|e| match &e.last {
                        Some(Err(f)) => format!("{}: {f}", e.db.alias),
                        _ => format!("{}: {:?}", e.db.alias, e.tracker.health),
                    })
                    .collect();
                error!("no healthy database, publishing NONE ({})", why.join("; "));
                self.last_none_log = Some(Instant::now());
            }
        } else if d.write.is_some() {
            self.last_none_log = None;
        }
    }

    /// Split brain and refused guesses: an error at most once a minute.
    fn log_conflict(&mut self, d: &Decision) {
        if d.primaries.len() < 2 && !d.ambiguous {
            self.last_conflict_log = None;
            return;
        }
        if self
            .last_conflict_log
            .is_some_and(|t| t.elapsed() < NONE_LOG_EVERY)
        {
            return;
        }
        let names: Vec<&str> = d.primaries.iter().map(|&i| self.alias(Some(i))).collect();
        if d.ambiguous {
            error!(
                "the write database is lost and {} all claim to be primary: publishing NONE for writes rather than guess",
                names.join(", ")
            );
        } else {
            error!(
                "split brain: {} all claim to be primary; writes stay on {} (conflict flag set)",
                names.join(", "),
                self.alias(d.write)
            );
        }
        self.last_conflict_log = Some(Instant::now());
    }

    fn reload(&mut self) {
        let path = self.config_path.display();
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                error!("reload rejected, keeping the running configuration: {e}");
                return;
            }
        };
        if new.state_file != self.config.state_file {
            error!(
                "reload rejected, keeping the running configuration: state_file changed from {} to {}; restart the agent to move it",
                self.config.state_file.display(),
                new.state_file.display()
            );
            return;
        }
        if new.metrics_listen != self.config.metrics_listen {
            warn!("metrics_listen changed: it takes effect when the agent restarts");
        }
        for w in new.unresolvable_hosts() {
            warn!("{w}");
        }
        // Unchanged endpoints keep their health; the others start Unknown.
        let mut endpoints = endpoints(&new);
        for e in &mut endpoints {
            if let Some(old) = self.endpoints.iter().find(|o| o.db.same_target(&e.db)) {
                e.tracker = old.tracker.clone();
                e.tracker.rise = e.db.rise;
                e.tracker.fall = e.db.fall;
                e.last = old.last.clone();
            }
        }
        let before = self.alias(self.choice.0).to_owned();
        let kept = |i: Option<usize>| {
            i.and_then(|i| {
                endpoints
                    .iter()
                    .position(|e| e.db.alias == self.endpoints[i].db.alias)
            })
        };
        let d = self.decide(
            &new,
            &endpoints,
            (kept(self.choice.0), kept(self.choice.1)),
            true,
        );
        let old_endpoints = std::mem::replace(&mut self.endpoints, endpoints);
        let old_choice = std::mem::replace(&mut self.choice, (d.write, d.read));
        match self.state.reconfigure(
            &new.published_endpoints(),
            settings(&new),
            &self.publication(d.primaries.len() > 1),
        ) {
            Ok(opened) => {
                info!(
                    "configuration reloaded from {path}: {} databases, state file {} (config generation {})",
                    new.databases.len(),
                    if opened == Opened::Replaced { "replaced, an alias or address changed" } else { "kept" },
                    self.state.values().config_generation
                );
                self.settle_until = Instant::now() + settle_time(&new);
                self.config = new;
                self.start_probes();
                let after = self.alias(self.choice.0).to_owned();
                if opened == Opened::Replaced && before != after {
                    info!(
                        "active: {before} -> {after} (epoch {})",
                        self.state.values().epoch
                    );
                }
                self.publish();
            }
            Err(e) => {
                self.endpoints = old_endpoints;
                self.choice = old_choice;
                error!("reload rejected, keeping the running configuration: {e}");
            }
        }
    }
}
