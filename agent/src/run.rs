//! `dbha-agent run`: probe reports and signals arrive on one channel; the loop
//! updates each endpoint's hysteresis, decides, and publishes into the state file,
//! with a heartbeat every `interval` whatever the probes are doing.

use crate::config::{Config, Database};
use crate::decide::{decide, Decision, Health, Seen, Tracker};
use crate::metrics::{self, Metrics};
use crate::notify::Notifier;
use crate::probe::{self, Failure, Outcome, Report, Role};
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
    /// Its probe thread: the id its reports carry, and the handle that stops it.
    /// None while no thread could be started (retried at every heartbeat).
    probe: Option<(u64, Sender<()>)>,
    /// When its probe thread last reported, or was started.
    heard: Instant,
}

impl Endpoint {
    /// How long this endpoint's probe may stay silent before it counts as failing:
    /// three probe periods (each at most the longer of interval and timeout), plus
    /// the loop's interval of slack. Every probe reports within its timeout, the
    /// host name lookup included, so only a wedged or lost thread is this late.
    fn silence_limit(&self, loop_interval: Duration) -> Duration {
        self.db.interval.max(self.db.timeout) * 3 + loop_interval
    }

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
    /// The id of the last probe thread started (see [`Endpoint::probe`]).
    last_probe_id: u64,
    tx: Sender<Event>,
    last_none_log: Option<Instant>,
    last_conflict_log: Option<Instant>,
    /// Until then, first verdicts may still be pending (see [`crate::decide::choose`]).
    settle_until: Instant,
    notifier: Notifier,
    /// READY=1 was sent (after the first complete probe cycle and publication).
    ready: bool,
    /// Which endpoints have reported a probe since the agent started.
    reported: Vec<bool>,
    /// When a probe thread could not be started, last logged.
    last_spawn_log: Option<Instant>,
    /// When a state file that could not be restored was last logged.
    last_restore_log: Option<Instant>,
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

/// What the state file publishes for `endpoints` and the chosen write and read
/// endpoints (indexes into `endpoints`).
fn publication(
    endpoints: &[Endpoint],
    (write, read): (Option<usize>, Option<usize>),
    conflict: bool,
) -> Publication {
    let mask = |f: &dyn Fn(&Endpoint) -> bool| {
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.tracker.health == Health::Up && f(e))
            .fold(0u64, |m, (i, _)| m | 1 << i)
    };
    let index = |i: Option<usize>| i.map_or(NONE, |i| i as u32);
    Publication {
        write_index: index(write),
        read_index: index(read),
        health_mask: mask(&|_| true),
        primary_mask: mask(&|e| e.seen().role == Some(Role::Primary)),
        standby_mask: mask(&|e| e.seen().role == Some(Role::Standby)),
        conflict,
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
            probe: None,
            heard: Instant::now(),
        })
        .collect()
}

/// Runs the agent until SIGTERM/SIGINT. Returns an error only if it cannot start.
pub fn run(config_path: &Path) -> Result<(), StartError> {
    let config = Config::load(config_path).map_err(|e| StartError(e.to_string()))?;
    // Host names are resolved by the probes, each bounded by its timeout: never
    // here, where a resolver that does not answer would hold up the first heartbeat.
    let (tx, rx) = mpsc::channel();
    // Before anything slow: a SIGTERM from here on is handled cleanly.
    signals::forward(tx.clone())
        .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
    let mut agent = Agent::start(config_path, config, tx)?;
    agent.start_probes();
    agent.run(rx);
    Ok(())
}

impl Agent {
    /// Opens the state file (creating its directory) and the metrics endpoint;
    /// probes start with [`Agent::start_probes`].
    fn start(config_path: &Path, config: Config, tx: Sender<Event>) -> Result<Agent, StartError> {
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
        let reported = vec![false; endpoints.len()];
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
        "state file {} {} (epoch {}, config generation {}), {} databases, interval {:?}, failback {}",
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
        config.failback.name(),
    );
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let shared = Arc::new(Mutex::new(Metrics::default()));
                match metrics::serve(addr, shared.clone()) {
                    Ok(()) => Some(shared),
                    Err(e) => {
                        error!("cannot start the metrics thread for {addr}: {e}; no metrics");
                        None
                    }
                }
            }
            None => None,
        };
        let settle_until = Instant::now() + settle_time(&config);
        Ok(Agent {
            config_path: config_path.to_owned(),
            config,
            endpoints,
            state,
            choice,
            last_probe_id: 0,
            tx,
            last_none_log: None,
            last_conflict_log: None,
            settle_until,
            notifier: Notifier::from_env(),
            ready: false,
            reported,
            last_spawn_log: None,
            last_restore_log: None,
            metrics,
            switches_total: 0,
            errors: BTreeMap::new(),
        })
    }
    /// Starts a probe thread for every endpoint that has none. One that cannot be
    /// started is retried at the next heartbeat; meanwhile its endpoint is silent,
    /// and counts as down once silent for longer than its limit.
    fn start_probes(&mut self) {
        let mut failed = Vec::new();
        for e in self.endpoints.iter_mut().filter(|e| e.probe.is_none()) {
            self.last_probe_id += 1;
            match probe::spawn(self.last_probe_id, e.db.clone(), self.tx.clone()) {
                Ok(stop) => {
                    e.probe = Some((self.last_probe_id, stop));
                    e.heard = Instant::now();
                }
                Err(err) => failed.push(format!("{}: {err}", e.db.alias)),
            }
        }
        if !failed.is_empty()
            && self
                .last_spawn_log
                .is_none_or(|t| t.elapsed() >= NONE_LOG_EVERY)
        {
            error!(
                "cannot start probe threads, retrying at every heartbeat ({})",
                failed.join("; ")
            );
            self.last_spawn_log = Some(Instant::now());
        }
    }

    /// Puts back a state or lock file removed from under the agent (see
    /// [`StateFile::restore`]); errors are logged at most once a minute.
    fn restore_files(&mut self) {
        let path = self.config.state_file.display().to_string();
        match self.state.restore(settings(&self.config)) {
            Ok(r) => {
                if r.lock {
                    warn!("{path}.lock was removed: created and locked again");
                }
                if r.state {
                    info!(
                        "{path} was removed: created again (epoch {})",
                        self.state.values().epoch
                    );
                }
                if r.elsewhere {
                    self.log_restore(&format!(
                        "{path} is no longer this agent's state file (another file was put there): new readers do not read this agent; remove it to have it recreated"
                    ));
                } else {
                    self.last_restore_log = None;
                }
            }
            Err(e) => self.log_restore(&format!("cannot restore the state file: {e}")),
        }
    }

    fn log_restore(&mut self, message: &str) {
        if self
            .last_restore_log
            .is_none_or(|t| t.elapsed() >= NONE_LOG_EVERY)
        {
            error!("{message}");
            self.last_restore_log = Some(Instant::now());
        }
    }

    /// An endpoint whose probe stopped reporting counts as down: its last verdict
    /// says nothing about now. Its thread is replaced (a late report of the old one
    /// is ignored).
    fn judge_silence(&mut self) {
        let interval = self.config.interval;
        for (i, e) in self.endpoints.iter_mut().enumerate() {
            let silent = e.heard.elapsed();
            if silent <= e.silence_limit(interval) {
                continue;
            }
            error!(
                "{}: no probe report for {silent:?}: counted as down, its probe restarted",
                e.db.alias
            );
            e.tracker.force_down();
            e.role = None;
            e.probe = None;
            e.heard = Instant::now();
            self.state
                .set_probe_result(i, dbha_protocol::probe_result::TIMEOUT);
        }
        self.start_probes();
    }

    fn run(&mut self, rx: Receiver<Event>) {
        let mut next_beat = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_beat {
                self.restore_files();
                self.judge_silence();
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
                Ok(Event::Probe(r)) => {
                    if self.observe(r) {
                        self.publish();
                    }
                }
                Ok(Event::Reload) => {
                    self.notifier.reloading();
                    self.reload();
                    self.notifier.ready(&self.status_line());
                }
                Ok(Event::Stop) => {
                    self.notifier.stopping();
                    for e in &mut self.endpoints {
                        e.probe = None;
                    }
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

    /// Every endpoint's probe keeps reporting (within its silence limit): the
    /// watchdog is fed only then, so that probing that stays wedged through the
    /// restarts of [`Agent::judge_silence`] ends with systemd restarting the agent.
    fn probes_alive(&self) -> bool {
        self.endpoints.iter().all(|e| {
            e.probe.is_some() && e.heard.elapsed() <= e.silence_limit(self.config.interval)
        })
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
                    Some(Role::Primary) => dbha::Role::Primary,
                    Some(Role::Standby) => dbha::Role::Standby,
                    None => dbha::Role::Unknown,
                }
                .name(),
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

    /// Takes in a probe report; false when it came from a thread that was replaced.
    fn observe(&mut self, r: Report) -> bool {
        let Some(index) = self
            .endpoints
            .iter()
            .position(|e| e.probe.as_ref().is_some_and(|(id, _)| *id == r.probe))
        else {
            return false;
        };
        self.reported[index] = true;
        self.endpoints[index].heard = Instant::now();
        if let Err(f) = &r.outcome {
            let alias = self.endpoints[index].db.alias.clone();
            let kind = dbha_protocol::probe_result::name(f.kind());
            *self
                .errors
                .entry(alias)
                .or_default()
                .entry(kind)
                .or_insert(0) += 1;
        }
        self.endpoints[index].took = r.took;
        let kind = r
            .outcome
            .as_ref()
            .map_or_else(|f| f.kind(), |_| dbha_protocol::probe_result::OK);
        self.state.set_probe_result(index, kind);
        let e = &mut self.endpoints[index];
        // A host name that stops resolving is worth a warning of its own, once per
        // streak: the probe's verdict alone reads like any other failure.
        if let Err(f @ Failure::Resolve(_)) = &r.outcome {
            if !matches!(e.last, Some(Err(Failure::Resolve(_)))) {
                warn!("{}: host {:?}: {f}", e.db.alias, e.db.host);
            }
        }
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
        true
    }

    fn alias(&self, i: Option<usize>) -> &str {
        i.and_then(|i| self.endpoints.get(i))
            .map_or("NONE", |e| e.db.alias.as_str())
    }

    fn publication(&self, conflict: bool) -> Publication {
        publication(&self.endpoints, self.choice, conflict)
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
                // Say why writes have nowhere to go, unless every endpoint is down
                // (logged below, once a minute).
                if d.write.is_none()
                    && self
                        .endpoints
                        .iter()
                        .any(|e| e.tracker.health == Health::Up)
                {
                    warn!("no database takes writes now: {}", self.why());
                }
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
                error!("no healthy database, publishing NONE ({})", self.why());
                self.last_none_log = Some(Instant::now());
            }
        } else if d.write.is_some() {
            self.last_none_log = None;
        }
    }

    /// Each endpoint's state, for a log line: its failure, or its health and role.
    fn why(&self) -> String {
        let each: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| match (&e.last, e.tracker.health, e.seen()) {
                (Some(Err(f)), Health::Down, _) => format!("{}: down ({f})", e.db.alias),
                (
                    _,
                    Health::Up,
                    Seen {
                        role: Some(Role::Primary),
                        read_only: true,
                        ..
                    },
                ) => {
                    format!("{}: primary, read-only", e.db.alias)
                }
                (
                    _,
                    Health::Up,
                    Seen {
                        role: Some(Role::Primary),
                        ..
                    },
                ) => {
                    format!("{}: primary", e.db.alias)
                }
                (
                    _,
                    Health::Up,
                    Seen {
                        role: Some(Role::Standby),
                        ..
                    },
                ) => {
                    format!("{}: standby", e.db.alias)
                }
                (_, h, _) => format!("{}: {}", e.db.alias, format!("{h:?}").to_lowercase()),
            })
            .collect();
        each.join("; ")
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
        // The new state is built beside the running one and replaces it only once
        // the state file took the new configuration. The same target keeps its
        // health and role; the others start Unknown.
        let mut endpoints = endpoints(&new);
        let mut reported = vec![false; endpoints.len()];
        for (e, reported) in endpoints.iter_mut().zip(&mut reported) {
            if let Some(old) = self.endpoints.iter().find(|o| o.db.same_target(&e.db)) {
                e.tracker = old.tracker.clone();
                e.tracker.rise = e.db.rise;
                e.tracker.fall = e.db.fall;
                e.last = old.last.clone();
                e.role = old.role;
                e.took = old.took;
                *reported = true;
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
        let choice = (d.write, d.read);
        match self.state.reconfigure(
            &new.published_endpoints(),
            settings(&new),
            &publication(&endpoints, choice, d.primaries.len() > 1),
        ) {
            Ok(opened) => {
                // An endpoint configured exactly as before keeps its probe thread,
                // so a reload (or a storm of them) never delays a verdict; the
                // threads of the others stop with the old state.
                for e in &mut endpoints {
                    if let Some(old) = self.endpoints.iter_mut().find(|o| o.db == e.db) {
                        e.probe = old.probe.take();
                        e.heard = old.heard;
                    }
                }
                self.endpoints = endpoints;
                self.choice = choice;
                info!(
                    "configuration reloaded from {path}: {} databases, state file {} (config generation {})",
                    new.databases.len(),
                    if opened == Opened::Replaced { "replaced, an alias or address changed" } else { "kept" },
                    self.state.values().config_generation
                );
                self.settle_until = Instant::now() + settle_time(&new);
                self.config = new;
                self.reported = reported;
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
                error!("reload rejected, keeping the running configuration: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds probe reports to the agent until `done` holds.
    fn until(a: &mut Agent, rx: &Receiver<Event>, done: impl Fn(&Agent) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(a) {
            assert!(Instant::now() < deadline, "timed out");
            if let Ok(Event::Probe(r)) = rx.recv_timeout(Duration::from_millis(100)) {
                if a.observe(r) {
                    a.publish();
                }
            }
        }
    }

    #[test]
    fn an_endpoint_whose_probe_goes_silent_counts_as_down_and_is_probed_again() {
        // Issue 13 row 14: an endpoint whose probe stopped reporting (a thread that
        // could not be spawned, or wedged) kept its last "up" forever, and the
        // watchdog was fed as long as any endpoint reported.
        let dir = tempfile::tempdir().unwrap();
        let db = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "state_file = \"{}\"\ninterval = \"50ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n\
                 [[database]]\nalias = \"default\"\nhost = \"127.0.0.1\"\nport = {}\ncheck = \"tcp\"\n",
                dir.path().join("state").display(),
                db.local_addr().unwrap().port()
            ),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let mut a = Agent::start(&path, Config::load(&path).unwrap(), tx).unwrap();
        a.start_probes();
        until(&mut a, &rx, |a| a.choice.0 == Some(0));
        assert!(a.probes_alive());
        // The probe thread is lost: its handle is one nobody reports on, and
        // nothing was heard for longer than the limit (3 x 100 ms + 50 ms).
        let (lost, _) = mpsc::channel();
        a.endpoints[0].probe = Some((u64::MAX, lost));
        a.endpoints[0].heard = Instant::now() - Duration::from_secs(1);
        assert!(!a.probes_alive(), "the watchdog must not be fed");
        a.judge_silence();
        assert_eq!(a.endpoints[0].tracker.health, Health::Down);
        a.publish();
        assert_eq!(a.state.values().write_index, NONE);
        // A new probe thread was started, and its reports bring it back.
        let id = a.endpoints[0].probe.as_ref().map(|(id, _)| *id);
        assert!(id.is_some_and(|id| id != u64::MAX), "{id:?}");
        until(&mut a, &rx, |a| a.choice.0 == Some(0));
        assert!(a.probes_alive());
    }
}
