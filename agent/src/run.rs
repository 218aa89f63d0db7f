//! `dbha-agent run`: the loop. Probe reports and signals arrive on one channel;
//! each report goes into the [`State`], whose decision is published into the state
//! file, with a heartbeat every `interval` whatever the probes are doing. Around
//! the state, thin parts with one job each: the probe threads ([`Probes`]),
//! systemd readiness and watchdog ([`Readiness`]), metrics ([`metrics::Feed`]) and
//! log lines repeated at most once a minute ([`Throttle`]).

use crate::config::{Config, Database, Writes};
use crate::decide::{Choice, Decision, Health, Phase};
use crate::metrics;
use crate::notify::Notifier;
use crate::probe::{self, Failure, Report};
use crate::signals;
use crate::state::{Masks, State};
use dbha_protocol::probe_result;
use dbha_protocol::writer::{Opened, Publication, Settings, StateFile};
use log::{error, info, warn};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What the loop reacts to.
#[derive(Debug)]
pub enum Event {
    Probe(Report),
    /// What the DCS thread says now (`[dcs]`).
    Dcs(Box<crate::dcs::View>),
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

impl From<crate::dcs::View> for Event {
    fn from(v: crate::dcs::View) -> Event {
        Event::Dcs(Box::new(v))
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

/// A log line repeated at most once a minute while its condition lasts.
#[derive(Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    const EVERY: Duration = Duration::from_secs(60);

    /// The line is due now (and counts as written).
    fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }

    /// The condition ended: its next occurrence is logged at once.
    fn reset(&mut self) {
        self.0 = None;
    }
}

/// How long an endpoint's probe may stay silent before it counts as failing: three
/// probe periods (each at most the longer of interval and timeout), plus the loop's
/// interval of slack. Every probe reports within its timeout, the host name lookup
/// included, so only a wedged or lost thread is this late.
fn silence_limit(db: &Database, loop_interval: Duration) -> Duration {
    db.interval.max(db.timeout) * 3 + loop_interval
}

/// A running probe thread.
struct ProbeThread {
    /// The id its reports carry.
    id: u64,
    /// Dropping it stops the thread; it also carries requests for a pace.
    stop: probe::Stop,
    /// When it last reported, or was started.
    heard: Instant,
}

/// The probe threads, one per endpoint (indexed as the state's endpoints). An
/// endpoint has none while its thread could not be started; that is retried at
/// every heartbeat.
struct Probes {
    threads: Vec<Option<ProbeThread>>,
    last_id: u64,
    tx: Sender<Event>,
    spawn_log: Throttle,
    /// Every thread is asked for the fast pace (see [`Probes::hurry`]).
    hurried: bool,
}

impl Probes {
    fn new(count: usize, tx: Sender<Event>) -> Probes {
        Probes {
            threads: (0..count).map(|_| None).collect(),
            last_id: 0,
            tx,
            spawn_log: Throttle::default(),
            hurried: false,
        }
    }

    /// Asks every probe thread for `fastinter` (true) or its own pace (false);
    /// a thread started later is asked at its start.
    fn hurry(&mut self, on: bool) {
        if on != self.hurried {
            self.hurried = on;
            for t in self.threads.iter().flatten() {
                t.stop.hurry(on);
            }
        }
    }

    /// Starts a probe thread for every endpoint that has none. Meanwhile an
    /// endpoint whose thread cannot start is silent, and counts as down once
    /// silent for longer than its limit.
    fn start_missing(&mut self, databases: &[Database]) {
        let mut failed = Vec::new();
        for (slot, db) in self.threads.iter_mut().zip(databases) {
            if slot.is_some() {
                continue;
            }
            self.last_id += 1;
            match probe::spawn(self.last_id, db.clone(), self.tx.clone()) {
                Ok(stop) => {
                    if self.hurried {
                        stop.hurry(true);
                    }
                    *slot = Some(ProbeThread {
                        id: self.last_id,
                        stop,
                        heard: Instant::now(),
                    })
                }
                Err(err) => failed.push(format!("{}: {err}", db.alias)),
            }
        }
        if !failed.is_empty() && self.spawn_log.due() {
            error!(
                "cannot start probe threads, retrying at every heartbeat ({})",
                failed.join("; ")
            );
        }
    }

    /// The endpoint whose current thread sent a report with id `id`, now marked
    /// heard; None for a report of a thread that was replaced.
    fn heard_from(&mut self, id: u64) -> Option<usize> {
        let i = self
            .threads
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.id == id))?;
        if let Some(t) = &mut self.threads[i] {
            t.heard = Instant::now();
        }
        Some(i)
    }

    /// Stops the threads silent for longer than their limit (a late report of one
    /// is then ignored) and returns their endpoints with how long each was silent.
    fn stop_silent(
        &mut self,
        databases: &[Database],
        loop_interval: Duration,
    ) -> Vec<(usize, Duration)> {
        let mut silent = Vec::new();
        for (i, (slot, db)) in self.threads.iter_mut().zip(databases).enumerate() {
            let Some(t) = slot else { continue };
            let quiet = t.heard.elapsed();
            if quiet > silence_limit(db, loop_interval) {
                silent.push((i, quiet));
                *slot = None;
            }
        }
        silent
    }

    /// Every endpoint's probe keeps reporting within its silence limit.
    fn alive(&self, databases: &[Database], loop_interval: Duration) -> bool {
        self.threads.iter().zip(databases).all(|(t, db)| {
            t.as_ref()
                .is_some_and(|t| t.heard.elapsed() <= silence_limit(db, loop_interval))
        })
    }

    /// For a new configuration: the thread of a database configured exactly as
    /// before moves to its new index, so a reload (or a storm of them) never delays
    /// a verdict; the others stop.
    fn reconfigure(&mut self, old: &[Database], new: &[Database]) {
        let mut old: Vec<(Option<ProbeThread>, &Database)> = std::mem::take(&mut self.threads)
            .into_iter()
            .zip(old)
            .collect();
        self.threads = new
            .iter()
            .map(|db| {
                old.iter_mut()
                    .find(|(_, o)| *o == db)
                    .and_then(|(t, _)| t.take())
            })
            .collect();
    }

    fn stop_all(&mut self) {
        self.threads.iter_mut().for_each(|t| *t = None);
    }
}

/// systemd's view of the agent: READY=1 after a complete probe cycle and a
/// publication, STATUS= on every change, watchdog pings while every probe reports.
struct Readiness {
    notifier: Notifier,
    /// READY=1 was sent.
    ready: bool,
    /// Which endpoints have reported a probe since the agent started (or carried
    /// a verdict over a reload).
    reported: Vec<bool>,
}

impl Readiness {
    /// After a publication: READY=1 once every endpoint reported and has a
    /// verdict (or as many as the settling time allows), else STATUS= when the
    /// choice changed.
    fn published(&mut self, state: &State, file: &StateFile, phase: Phase, changed: bool) {
        let cycle = self.reported.iter().all(|r| *r);
        if !self.ready && cycle && (state.verdicts_in() || phase == Phase::Settled) {
            self.notifier.ready(&status_line(state, file));
            self.ready = true;
        } else if self.ready && changed {
            self.notifier.status(&status_line(state, file));
        }
    }
}

/// What `systemctl status` shows.
fn status_line(state: &State, file: &StateFile) -> String {
    format!(
        "write: {}, read: {} (epoch {}); {}/{} databases up",
        state.alias(state.choice.write),
        state.alias(state.choice.read),
        file.values().epoch,
        state.up_count(),
        state.endpoints.len()
    )
}

fn settings(c: &Config) -> Settings {
    Settings {
        stale_after_ns: c.stale_after.as_nanos() as u64,
        mode: c.state_mode,
    }
}

struct Agent {
    config_path: PathBuf,
    state: State,
    file: StateFile,
    probes: Probes,
    readiness: Readiness,
    metrics: metrics::Feed,
    none_log: Throttle,
    conflict_log: Throttle,
    restore_log: Throttle,
    /// Since when writes have had no database (under `writes = "primary"`).
    no_writes_since: Option<Instant>,
    /// The DCS thread (`[dcs]`), stopped when dropped.
    dcs: Option<crate::dcs::client::Stop>,
    /// Sends to the loop (for a DCS thread started on reload).
    tx: Sender<Event>,
    /// Why the DCS last gave writes no endpoint (logged when it changes).
    dcs_refusal: Option<String>,
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
    agent.take_unfence_requests();
    agent.start_dcs();
    agent.probes.start_missing(&agent.state.config.databases);
    agent.run(rx);
    Ok(())
}

impl Agent {
    /// Opens the state file (creating its directory) and the metrics endpoint;
    /// the probes are started by the caller.
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
        let (file, opened) = StateFile::open(
            &config.state_file,
            &config.published_endpoints(),
            settings(&config),
            &Publication::NOTHING,
        )
        .map_err(|e| StartError(e.to_string()))?;
        // A reused file keeps its published decision until the probes have a
        // verdict, and the previous agent's fences.
        let index = |i: u32| Some(i as usize);
        let choice = match opened {
            Opened::Reused => Choice {
                write: index(file.values().write_index),
                read: index(file.values().read_index),
                waiting: None,
            },
            _ => Choice::default(),
        };
        info!(
            "state file {} {} (epoch {}, config generation {}), {} databases, interval {:?}, failback {}",
            config.state_file.display(),
            match opened {
                Opened::Created => "created",
                Opened::Reused => "reused",
                Opened::Replaced => "replaced (endpoints or layout changed)",
            },
            file.values().epoch,
            file.values().config_generation,
            config.databases.len(),
            config.interval,
            config.failback.name(),
        );
        let metrics = metrics::Feed::start(config.metrics_listen);
        let count = config.databases.len();
        let mut state = State::new(config, choice, Instant::now());
        if opened == Opened::Reused {
            let v = file.values();
            state.carry(Masks {
                health: v.health_mask,
                primary: v.primary_mask,
                standby: v.standby_mask,
            });
            for i in 0..count {
                let fence = file.fence(i);
                if fence.fenced {
                    warn!(
                        "{}: fenced, as the previous agent left it: no writes until it is seen as a standby or `dbha-agent unfence {}`",
                        state.endpoints[i].db.alias, state.endpoints[i].db.alias
                    );
                }
                state.remember(i, fence);
            }
        }
        Ok(Agent {
            config_path: config_path.to_owned(),
            state,
            file,
            probes: Probes::new(count, tx.clone()),
            dcs: None,
            tx,
            dcs_refusal: None,
            readiness: Readiness {
                notifier: Notifier::from_env(),
                ready: false,
                reported: vec![false; count],
            },
            metrics,
            none_log: Throttle::default(),
            conflict_log: Throttle::default(),
            no_writes_since: None,
            restore_log: Throttle::default(),
        })
    }

    /// Starts the DCS thread when `[dcs]` is configured (and stops a running
    /// one). Until it confirms a leader, writes go to no endpoint.
    fn start_dcs(&mut self) {
        self.dcs = None;
        let Some(s) = self.state.config.dcs.clone() else {
            return;
        };
        let hosts = self
            .state
            .config
            .databases
            .iter()
            .map(|d| d.host.clone())
            .collect();
        let what = format!(
            "{} under {} on {}",
            s.scope,
            s.prefix(),
            s.etcd
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        match crate::dcs::client::spawn(s, hosts, self.tx.clone()) {
            Ok(stop) => {
                info!("dcs: following Patroni's cluster {what}; no writes until etcd confirms a leader");
                self.dcs = Some(stop);
            }
            Err(e) => error!("dcs: cannot start the thread that follows etcd: {e}; no writes"),
        }
    }

    fn loop_interval(&self) -> Duration {
        self.state.config.interval
    }

    /// Puts back a state or lock file removed from under the agent (see
    /// [`StateFile::restore`]); errors are logged at most once a minute.
    fn restore_files(&mut self) {
        let path = self.state.config.state_file.display().to_string();
        let message = match self.file.restore(settings(&self.state.config)) {
            Ok(r) => {
                if r.lock {
                    warn!("{path}.lock was removed: created and locked again");
                }
                if r.state {
                    info!(
                        "{path} was removed: created again (epoch {})",
                        self.file.values().epoch
                    );
                }
                if !r.elsewhere {
                    self.restore_log.reset();
                    return;
                }
                format!(
                    "{path} is no longer this agent's state file (another file was put there): new readers do not read this agent; remove it to have it recreated"
                )
            }
            Err(e) => format!("cannot restore the state file: {e}"),
        };
        if self.restore_log.due() {
            error!("{message}");
        }
    }

    /// An endpoint whose probe stopped reporting counts as down: its last verdict
    /// says nothing about now. Its thread is replaced (a late report of the old one
    /// is ignored).
    fn judge_silence(&mut self) {
        let interval = self.loop_interval();
        for (i, silent) in self
            .probes
            .stop_silent(&self.state.config.databases, interval)
        {
            error!(
                "{}: no probe report for {silent:?}: counted as down, its probe restarted",
                self.state.endpoints[i].db.alias
            );
            self.state.force_down(i, Instant::now());
            self.file.set_probe_result(i, probe_result::TIMEOUT);
            self.file.set_down(i, true);
            self.file
                .set_lag(i, &self.state.endpoints[i].lag.published());
        }
        self.probes.start_missing(&self.state.config.databases);
    }

    fn run(&mut self, rx: Receiver<Event>) {
        let mut next_beat = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_beat {
                self.restore_files();
                self.judge_silence();
                self.publish();
                next_beat += self.loop_interval();
                if next_beat < now {
                    // Suspended or starved: restart the rhythm rather than catch up.
                    next_beat = now + self.loop_interval();
                }
            }
            // The watchdog is fed only while every probe reports, so that probing
            // that stays wedged through the restarts of `judge_silence` ends with
            // systemd restarting the agent.
            if self
                .probes
                .alive(&self.state.config.databases, self.loop_interval())
            {
                self.readiness.notifier.ping_if_due();
            }
            let mut wake = self
                .readiness
                .notifier
                .ping_due()
                .map_or(next_beat, |p| p.min(next_beat));
            // The DCS's confirmation of the leader expires between beats: the
            // decision is made again then, so that writes are never published
            // past it for up to an interval.
            let expiry = self.state.dcs_expiry().filter(|&t| t > now);
            if let Some(t) = expiry {
                wake = wake.min(t + Duration::from_millis(1));
            }
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Event::Probe(r)) => {
                    if self.observe(r) {
                        self.publish();
                    }
                }
                Ok(Event::Dcs(v)) => {
                    self.state.dcs = Some(*v);
                    self.publish();
                }
                Ok(Event::Reload) => {
                    self.readiness.notifier.reloading();
                    self.reload();
                    self.readiness
                        .notifier
                        .ready(&status_line(&self.state, &self.file));
                }
                Ok(Event::Stop) => {
                    self.readiness.notifier.stopping();
                    self.probes.stop_all();
                    // A hand-over, as HAProxy's seamless reload: the decision stays
                    // published, so readers see nothing of a restart (an upgrade,
                    // `systemctl restart`) whose new agent reuses the file within
                    // `stale_after`; a real stop shows as stale after that.
                    info!(
                        "stopping: the last decision stays published; readers see it as stale after {:?} unless a new agent takes over",
                        self.state.config.stale_after
                    );
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if expiry.is_some_and(|t| Instant::now() >= t) {
                        self.publish();
                    }
                }
                // We hold a sender, so this cannot happen; stop cleanly if it does.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Takes in a probe report; false when it came from a thread that was replaced.
    fn observe(&mut self, r: Report) -> bool {
        let Some(i) = self.probes.heard_from(r.probe) else {
            return false;
        };
        self.readiness.reported[i] = true;
        let e = &self.state.endpoints[i];
        let alias = e.db.alias.clone();
        self.metrics.probed(&alias);
        if let Err(f) = &r.outcome {
            self.metrics
                .failed_probe(&alias, probe_result::name(f.kind()));
            // A lost session says more than the failure count that follows.
            if matches!(f, Failure::Lost(_)) {
                info!(
                    "{alias}: {f}; probing again now, then every {:?} until a verdict",
                    e.db.fastinter
                );
            }
            // A host name that stops resolving is worth a warning of its own, once
            // per streak: the probe's verdict alone reads like any other failure.
            if matches!(f, Failure::Resolve(_)) && !matches!(e.last, Some(Err(Failure::Resolve(_))))
            {
                warn!("{alias}: host {:?}: {f}", e.db.host);
            }
        }
        let kind = r
            .outcome
            .as_ref()
            .map_or_else(|f| f.kind(), |_| probe_result::OK);
        self.file.set_probe_result(i, kind);
        let observed = self.state.observe(i, r.outcome, r.took, Instant::now());
        // Under [dcs], an endpoint back up may be the leader coming back from
        // a restart: it gets writes again once etcd confirms it, now rather
        // than at the next heartbeat.
        if observed.transition.is_some_and(|t| t.to == Health::Up) {
            if let Some(d) = &self.dcs {
                d.confirm();
            }
        }
        let e = &self.state.endpoints[i];
        self.file.set_down(i, e.tracker.health == Health::Down);
        if observed.unfenced {
            info!("{alias}: seen as a standby: no longer fenced");
        }
        if e.tracker.stalled() {
            warn!(
                "{alias}: no verdict after {} probes in a row (results alternate: {}); probing every {:?} until one",
                e.db.rise.max(e.db.fall),
                e.last
                    .as_ref()
                    .map_or("no result".into(), |o| match o {
                        Ok(_) => "last one succeeded".to_string(),
                        Err(f) => format!("last one: {f}"),
                    }),
                e.db.interval
            );
        }
        let lag = self.state.endpoints[i].lag.published();
        self.file.set_lag(i, &lag);
        if observed.lag_changed {
            match (lag.lagging, crate::status::describe_lag(&lag)) {
                (true, measured) => warn!(
                    "{alias}: replication lag over the limit ({}): no reads until {} probes within it",
                    measured.as_deref().unwrap_or("not measured"),
                    self.state.endpoints[i].db.rise
                ),
                (false, Some(measured)) => {
                    info!("{alias}: replication lag within the limit again ({measured})")
                }
                // Down, or no longer a standby: no lag to hold against it.
                (false, None) => info!(
                    "{alias}: replication lag no longer measured (down, or not a standby); its limit no longer applies"
                ),
            }
        }
        if let Some(t) = observed.transition {
            let probes = |n: u32| if n == 1 { "probe" } else { "probes" };
            match (&self.state.endpoints[i].last, t.to) {
                (Some(Err(f)), Health::Down) => {
                    info!(
                        "{alias}: down after {} failed {} ({f})",
                        t.after,
                        probes(t.after)
                    )
                }
                (_, Health::Up) => {
                    info!(
                        "{alias}: up after {} successful {}",
                        t.after,
                        probes(t.after)
                    )
                }
                _ => {}
            }
        }
        true
    }

    /// Decides, and publishes the decision with a fresh heartbeat.
    fn publish(&mut self) {
        let before = self.state.choice;
        let now = Instant::now();
        let phase = self.state.phase(now);
        for i in self.state.fence() {
            let s = &self.state;
            error!(
                "{}: fenced: it claims to be primary ({}) while writes belong to {}; it takes no writes until it is seen as a standby or `dbha-agent unfence {}`",
                s.endpoints[i].db.alias,
                s.endpoints[i]
                    .timeline
                    .map_or("timeline not known".into(), |t| format!("timeline {t}")),
                s.alias(s.choice.owner()),
                s.endpoints[i].db.alias
            );
        }
        for (i, e) in self.state.endpoints.iter().enumerate() {
            self.file.set_fence(i, &e.fence_record());
        }
        let d = self.state.decide(phase, now);
        self.state.choice = d.choice;
        let published = self
            .file
            .publish(&self.state.publication(d.primaries.len() > 1, phase));
        if published.is_some() {
            self.metrics.switched();
        }
        self.metrics.update(&self.state, self.file.values().epoch);
        if let Some(epoch) = published {
            self.log_switch(before, epoch);
        }
        self.readiness
            .published(&self.state, &self.file, phase, d.choice != before);
        self.log_conflict(&d);
        // The DCS's verdict once, for the log and the state file's DCS area.
        let verdict = self.state.dcs_verdict(now);
        self.log_dcs(verdict.as_ref().map(|(v, _)| v.as_ref().err()));
        let clock = (Instant::now(), dbha_protocol::writer::now_ns().0);
        let area = self.state.dcs_area(now, clock, verdict.as_ref());
        self.file.set_dcs(area.as_ref());
        self.watch_for_promotion(now, phase);
        // Only once every endpoint has a verdict: a fresh agent is not in trouble.
        if d.choice.write.is_none() && self.state.all_down() {
            if self.none_log.due() {
                error!(
                    "no healthy database, publishing NONE ({})",
                    self.state.why()
                );
            }
        } else if d.choice.write.is_some() {
            self.none_log.reset();
        }
    }

    /// Under `[dcs]` (`refusal` Some: the verdict's refusal, if any): why
    /// writes go to no endpoint, logged when the reason changes (and when
    /// writes go somewhere again).
    fn log_dcs(&mut self, refusal: Option<Option<&crate::dcs::NoWrites>>) {
        let Some(refusal) = refusal else {
            return;
        };
        // The same reason is logged once, however its figures move.
        let why = refusal.as_ref().map(|w| match w {
            crate::dcs::NoWrites::Unconfirmed { .. } => w.kind().to_owned(),
            _ => w.to_string(),
        });
        if why == self.dcs_refusal {
            return;
        }
        match refusal {
            Some(w) => warn!("dcs: writes to no endpoint: {w}"),
            None => info!(
                "dcs: writes to {} (Patroni's leader, confirmed by etcd)",
                self.state.alias(self.state.choice.write)
            ),
        }
        self.dcs_refusal = why;
    }

    /// While writes have no database under `writes = "primary"`, the probes run
    /// at `fastinter` for at most `promotion_window`, so that a promotion is
    /// published within about one `fastinter` of the server taking writes
    /// (a role change of a server already up: `rise` does not delay it),
    /// whatever `interval` is. Only held sessions are hurried: each of these
    /// probes is then a status query on an open session (no login, no new
    /// connection); a connection per probe keeps its pace (see
    /// `probe::pace_of`). Down endpoints keep their backoff. The window starts
    /// when the endpoint writes belong to is lost, or once the first verdicts
    /// are in (until then, probes without a verdict are fast anyway).
    fn watch_for_promotion(&mut self, now: Instant, phase: Phase) {
        let config = &self.state.config;
        let without = config.writes == Writes::Primary
            && self.state.choice.write.is_none()
            && (phase == Phase::Settled
                || self.state.choice.waiting.is_some()
                || self.no_writes_since.is_some());
        let window = config.promotion_window;
        let since = match (without, self.no_writes_since) {
            (false, _) => {
                self.no_writes_since = None;
                self.probes.hurry(false);
                return;
            }
            (true, Some(t)) => t,
            (true, None) => {
                if !window.is_zero() && self.state.up_count() > 0 {
                    info!(
                        "writes have no database: probing the databases that are up every fastinter (held sessions: a status query each) for up to {window:?}, to publish a promotion at once"
                    );
                }
                *self.no_writes_since.insert(now)
            }
        };
        let hurry = now.duration_since(since) < window;
        if !hurry && self.probes.hurried {
            info!(
                "writes still have no database after {window:?}: probing at the usual pace again"
            );
        }
        self.probes.hurry(hurry);
    }

    /// Logs a published change of the choice.
    fn log_switch(&self, before: Choice, epoch: u64) {
        let (s, now) = (&self.state, self.state.choice);
        if now.write != before.write {
            info!(
                "write: {} -> {} (epoch {epoch})",
                s.alias(before.write),
                s.alias(now.write)
            );
            // Say why writes have nowhere to go, unless every endpoint is down
            // (logged once a minute by `publish`).
            if now.write.is_none() && s.up_count() > 0 {
                match now.read {
                    Some(_) => warn!(
                        "no database takes writes now, reads only (reads: {}): {}",
                        s.alias(now.read),
                        s.why()
                    ),
                    None => warn!("no database takes writes now: {}", s.why()),
                }
            }
        }
        if now.read != before.read && now.read != now.write {
            info!(
                "read: {} -> {} (epoch {epoch})",
                s.alias(before.read),
                s.alias(now.read)
            );
        }
    }

    /// Split brain and refused guesses: an error at most once a minute.
    fn log_conflict(&mut self, d: &Decision) {
        if d.primaries.len() < 2 && !d.ambiguous {
            self.conflict_log.reset();
            return;
        }
        if !self.conflict_log.due() {
            return;
        }
        let names: Vec<&str> = d
            .primaries
            .iter()
            .map(|&i| self.state.alias(Some(i)))
            .collect();
        if d.ambiguous {
            error!(
                "the write database is lost and {} all claim to be primary: publishing NONE for writes rather than guess",
                names.join(", ")
            );
        } else {
            error!(
                "split brain: {} all claim to be primary; writes stay on {} (conflict flag set)",
                names.join(", "),
                self.state.alias(d.choice.write)
            );
        }
    }

    /// Clears the fences an operator asked to clear (`dbha-agent unfence`).
    fn take_unfence_requests(&mut self) {
        for alias in crate::unfence::take_requests(&self.state.config.state_file) {
            match self
                .state
                .endpoints
                .iter()
                .position(|e| e.db.alias == alias)
            {
                Some(i) => {
                    self.state.unfence(i);
                    warn!("{alias}: unfenced by the operator; the timelines seen so far are forgotten");
                }
                None => warn!("unfence {alias:?}: no such endpoint; ignored"),
            }
        }
    }

    fn reload(&mut self) {
        self.take_unfence_requests();
        let path = self.config_path.display().to_string();
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                error!("reload rejected, keeping the running configuration: {e}");
                return;
            }
        };
        let old = &self.state.config;
        if new.state_file != old.state_file {
            error!(
                "reload rejected, keeping the running configuration: state_file changed from {} to {}; restart the agent to move it",
                old.state_file.display(),
                new.state_file.display()
            );
            return;
        }
        if new.metrics_listen != old.metrics_listen {
            warn!("metrics_listen changed: it takes effect when the agent restarts");
        }
        // The new state is built beside the running one and replaces it only once
        // the state file took the new configuration.
        let (next, carried) = self.state.reconfigured(new, Instant::now());
        let conflict = next.decide(Phase::Settling, Instant::now()).primaries.len() > 1;
        let opened = match self.file.reconfigure(
            &next.config.published_endpoints(),
            settings(&next.config),
            &next.publication(conflict, Phase::Settling),
        ) {
            Ok(opened) => opened,
            Err(e) => {
                error!("reload rejected, keeping the running configuration: {e}");
                return;
            }
        };
        let before = self.state.alias(self.state.choice.write).to_owned();
        self.probes
            .reconfigure(&self.state.config.databases, &next.config.databases);
        self.readiness.reported = carried;
        let dcs_changed = next.config.dcs != self.state.config.dcs;
        self.state = next;
        if dcs_changed {
            self.start_dcs();
        }
        info!(
            "configuration reloaded from {path}: {} databases, state file {} (config generation {})",
            self.state.endpoints.len(),
            if opened == Opened::Replaced {
                "replaced, an alias or address changed"
            } else {
                "kept"
            },
            self.file.values().config_generation
        );
        self.probes.start_missing(&self.state.config.databases);
        // A replacing file starts with no lag shown; the carried-over lags go in
        // now rather than at each endpoint's next probe.
        for (i, e) in self.state.endpoints.iter().enumerate() {
            self.file.set_lag(i, &e.lag.published());
            self.file.set_down(i, e.tracker.health == Health::Down);
        }
        let after = self.state.alias(self.state.choice.write);
        if opened == Opened::Replaced && before != after {
            info!(
                "write: {before} -> {after} (epoch {})",
                self.file.values().epoch
            );
        }
        self.publish();
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
        let alive = |a: &Agent| a.probes.alive(&a.state.config.databases, a.loop_interval());
        a.probes.start_missing(&a.state.config.databases);
        until(&mut a, &rx, |a| a.state.choice.write == Some(0));
        assert!(alive(&a));
        // The probe thread is lost: its handle is one nobody reports on, and
        // nothing was heard for longer than the limit (3 x 100 ms + 50 ms).
        a.probes.threads[0] = Some(ProbeThread {
            id: u64::MAX,
            stop: probe::Stop::detached(),
            heard: Instant::now() - Duration::from_secs(1),
        });
        assert!(!alive(&a), "the watchdog must not be fed");
        a.judge_silence();
        assert_eq!(a.state.endpoints[0].tracker.health, Health::Down);
        a.publish();
        assert_eq!(a.file.values().write_index, dbha_protocol::NONE);
        // A new probe thread was started, and its reports bring it back.
        let id = a.probes.threads[0].as_ref().map(|t| t.id);
        assert!(id.is_some_and(|id| id != u64::MAX), "{id:?}");
        until(&mut a, &rx, |a| a.state.choice.write == Some(0));
        assert!(alive(&a));
    }
}
