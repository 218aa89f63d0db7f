//! What the agent knows: each endpoint's hysteresis, last outcome and claimed role,
//! and where writes and reads go. Probe reports go in, a [`Decision`] and a
//! [`Publication`] come out; no threads, files, sockets or logging here, so the
//! loop in `run` is the only place with side effects.

use crate::config::{Config, Database};
use crate::decide::{
    decide_under, Choice, Claim, Decision, Health, Leader, Phase, Seen, Tracker, Transition,
};
use crate::probe::{Outcome, Role, Up};
use dbha_protocol::writer::Publication;
use dbha_protocol::NONE;
use std::time::{Duration, Instant};

/// One configured database and what the probes said of it.
#[derive(Debug)]
pub struct Endpoint {
    pub db: Database,
    pub tracker: Tracker,
    /// The last probe's outcome.
    pub last: Option<Outcome>,
    /// From the last probe that could log in; kept through a lost probe,
    /// forgotten when the endpoint goes down.
    pub claim: Option<Claim>,
    /// How long the last probe took.
    pub took: Duration,
    /// Replication lag, when this endpoint is a standby whose probe measured it.
    pub lag: Lag,
    /// Takes no writes until seen as a standby or unfenced by an operator (see
    /// [`State::fence`]).
    pub fenced: bool,
    /// The timeline it was on when last seen as a primary.
    pub timeline: Option<u32>,
    /// When the current streak of failed probes began.
    failing_since: Option<Instant>,
    /// When it last went down.
    down_at: Option<Instant>,
}

/// A standby's replication lag and its hysteresis against the configured limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// The last WAL position the probe read (see [`crate::probe::Up::wal`]).
    pub wal: Option<u64>,
    /// The standby's replay delay, as it reported it.
    pub delay: Option<Duration>,
    /// Bytes of WAL the standby's replay is behind the primary's last known
    /// write position; for a MySQL replica, bytes received and not executed.
    pub bytes: Option<u64>,
    /// The last GTID position the probe read (MySQL, see
    /// [`crate::probe::Up::gtid`]).
    pub gtid: Option<u64>,
    /// GTID transactions a MySQL replica is behind the primary's last known
    /// position.
    pub transactions: Option<u64>,
    /// Too far behind: takes no reads until `rise` probes within the limits.
    pub lagging: bool,
    /// Consecutive probes over the limits, and within them.
    over: u32,
    within: u32,
}

impl Lag {
    /// What the state file shows of it (`dbha-agent status`).
    pub fn published(&self) -> dbha_protocol::ReplicaLag {
        dbha_protocol::ReplicaLag {
            delay: self.delay,
            bytes: self.bytes,
            lagging: self.lagging,
        }
    }
}

impl Endpoint {
    fn new(db: &Database) -> Endpoint {
        Endpoint {
            db: db.clone(),
            tracker: Tracker::new(db.rise, db.fall),
            last: None,
            claim: None,
            took: Duration::ZERO,
            lag: Lag::default(),
            fenced: false,
            timeline: None,
            failing_since: None,
            down_at: None,
        }
    }

    pub fn seen(&self, now: Instant) -> Seen {
        Seen {
            health: self.tracker.health,
            claim: self.claim,
            lagging: self.lag.lagging,
            fenced: self.fenced,
            given_up: self.tracker.health == Health::Down
                && self
                    .failing_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.tolerance()),
            down_at: self.down_at,
        }
    }

    /// How long it may be down before writes (under `writes = "any"`) move
    /// away from it: `fall` probes at `interval`, the trouble `fall` stands for
    /// whatever pace the probes take while a verdict is pending.
    pub fn tolerance(&self) -> Duration {
        self.db.interval * self.db.fall
    }

    /// What the state file keeps of it across agent restarts.
    pub fn fence_record(&self) -> dbha_protocol::Fence {
        dbha_protocol::Fence {
            fenced: self.fenced,
            timeline: self.timeline,
        }
    }

    /// The role its last login-capable probe claimed.
    pub fn role(&self) -> Option<Role> {
        self.claim.map(|c| c.role)
    }

    /// Measures this standby's lag after a successful probe (`primary_wal`: the
    /// primary's last known write position) and applies the hysteresis: `fall`
    /// consecutive probes over a limit take it out of the reads, `rise` within
    /// bring it back. Returns whether `lagging` changed.
    fn measure_lag(&mut self, up: &Up, primary: (Option<u64>, Option<u64>)) -> bool {
        let (primary_wal, primary_gtid) = primary;
        let was = self.lag.lagging;
        if up.role != Some(Role::Standby) {
            self.lag = Lag {
                wal: up.wal,
                gtid: up.gtid,
                ..Lag::default()
            };
            return was;
        }
        self.lag.wal = up.wal;
        self.lag.gtid = up.gtid;
        self.lag.delay = up.replay_delay;
        let behind = |p: Option<u64>, s: Option<u64>| Some(p?.saturating_sub(s?));
        self.lag.bytes = if self.db.check == crate::config::Check::Mysql {
            up.backlog
        } else {
            behind(primary_wal, up.wal)
        };
        self.lag.transactions = behind(primary_gtid, up.gtid);
        // An unknown delay counts as over its limit (a standby that replayed
        // nothing, or whose receiver is gone and replayed nothing yet). An
        // unknown byte lag (no primary up to compare with) is no information
        // either way: the counts stay as they are.
        let over_time = match (self.lag.delay, self.db.max_replica_lag) {
            (_, None) => false,
            (Some(d), Some(max)) => d > max,
            (None, Some(_)) => true,
        };
        // Bytes and transactions: an unknown count (no primary to compare
        // with) is no information.
        let over = |n: Option<u64>, max: Option<u64>| match (n, max) {
            (_, None) => (false, true),
            (Some(n), Some(max)) => (n > max, true),
            (None, Some(_)) => (false, false),
        };
        let (over_bytes, bytes_known) = over(self.lag.bytes, self.db.max_replica_lag_bytes);
        let (over_tx, tx_known) = over(self.lag.transactions, self.db.max_replica_lag_transactions);
        let over = over_time || over_bytes || over_tx;
        let known = bytes_known && tx_known;
        if !(over || known) {
            return false;
        }
        if over {
            self.lag.over = self.lag.over.saturating_add(1);
            self.lag.within = 0;
            if self.lag.over >= self.db.fall {
                self.lag.lagging = true;
            }
        } else {
            self.lag.within = self.lag.within.saturating_add(1);
            self.lag.over = 0;
            if self.lag.within >= self.db.rise {
                self.lag.lagging = false;
            }
        }
        self.lag.lagging != was
    }

    fn up(&self) -> bool {
        self.tracker.health == Health::Up
    }
}

/// What one probe outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub transition: Option<Transition>,
    /// The endpoint started or stopped lagging (see [`Lag`]).
    pub lag_changed: bool,
    /// A fenced endpoint was seen as a standby, which clears its fence.
    pub unfenced: bool,
}

/// The endpoints (in priority order) and the current choice.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub endpoints: Vec<Endpoint>,
    pub choice: Choice,
    /// Until then, first verdicts may still be pending (see [`Phase`]).
    settle_until: Instant,
    /// The health and role masks a previous agent published on this file: while
    /// settling, an endpoint with no verdict yet is published as it left it (not
    /// yet confirmed, never down), so readers see nothing of a restart.
    carried: Masks,
    /// Under `[dcs]`: what the DCS thread last said (None before it spoke:
    /// no write endpoint until etcd confirms a leader).
    pub dcs: Option<crate::dcs::View>,
}

/// The health and role masks of a publication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masks {
    pub health: u64,
    pub primary: u64,
    pub standby: u64,
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

impl State {
    /// A fresh state: every endpoint Unknown, `choice` as published before (a
    /// reused state file keeps its decision until the probes have a verdict).
    pub fn new(config: Config, choice: Choice, now: Instant) -> State {
        let endpoints: Vec<Endpoint> = config.databases.iter().map(Endpoint::new).collect();
        let valid = |i: Option<usize>| i.filter(|&i| i < endpoints.len());
        let choice = Choice {
            write: valid(choice.write),
            read: valid(choice.read),
            waiting: valid(choice.waiting),
        };
        State {
            settle_until: now + settle_time(&config),
            config,
            endpoints,
            choice,
            carried: Masks::default(),
            dcs: None,
        }
    }

    /// What a previous agent published on the file this one reuses (see
    /// [`State::publication`]).
    pub fn carry(&mut self, masks: Masks) {
        self.carried = masks;
    }

    /// The state for a new configuration: an endpoint with the same target keeps
    /// its health, claim and last outcome, the others start Unknown; the choice
    /// follows the aliases and is decided again. Also says which endpoints carried
    /// a verdict over.
    pub fn reconfigured(&self, new: Config, now: Instant) -> (State, Vec<bool>) {
        let mut next = State::new(new, Choice::default(), now);
        let mut carried = vec![false; next.endpoints.len()];
        for (e, carried) in next.endpoints.iter_mut().zip(&mut carried) {
            if let Some(old) = self.endpoints.iter().find(|o| o.db.same_target(&e.db)) {
                e.tracker = old.tracker.clone();
                e.tracker.rise = e.db.rise;
                e.tracker.fall = e.db.fall;
                e.last = old.last.clone();
                e.claim = old.claim;
                e.took = old.took;
                e.lag = old.lag.clone();
                e.fenced = old.fenced;
                e.timeline = old.timeline;
                e.failing_since = old.failing_since;
                e.down_at = old.down_at;
                *carried = true;
            }
        }
        let kept = |i: Option<usize>| {
            let alias = &self.endpoints.get(i?)?.db.alias;
            next.endpoints.iter().position(|e| &e.db.alias == alias)
        };
        next.choice = Choice {
            write: kept(self.choice.write),
            read: kept(self.choice.read),
            waiting: kept(self.choice.waiting),
        };
        if next.config.dcs == self.config.dcs {
            next.dcs = self.dcs.clone();
        }
        next.choice = next.decide(Phase::Settling, now).choice;
        (next, carried)
    }

    /// Whether first verdicts may still be pending at `now`.
    pub fn phase(&self, now: Instant) -> Phase {
        if now < self.settle_until {
            Phase::Settling
        } else {
            Phase::Settled
        }
    }

    /// Takes in a probe outcome for endpoint `index`, received at `now`: the
    /// health transition it caused, if any, and whether the endpoint started or
    /// stopped lagging.
    pub fn observe(
        &mut self,
        index: usize,
        outcome: Outcome,
        took: Duration,
        now: Instant,
    ) -> Observed {
        let primary = (self.primary_wal(), self.primary_gtid());
        let e = &mut self.endpoints[index];
        e.took = took;
        let transition = e.tracker.observe(outcome.is_ok());
        if transition.is_some_and(|t| t.to == Health::Down) {
            e.down_at = Some(now);
        }
        e.failing_since = match &outcome {
            Ok(_) => None,
            Err(_) => e.failing_since.or(Some(now)),
        };
        let mut lag_changed = false;
        let mut unfenced = false;
        match (&outcome, e.tracker.health) {
            (Ok(up), _) => {
                e.claim = up.role.map(|role| Claim {
                    role,
                    read_only: up.read_only,
                });
                match up.role {
                    // Rewound or rebuilt as a standby: it follows a primary now.
                    Some(Role::Standby) if e.fenced => {
                        e.fenced = false;
                        unfenced = true;
                    }
                    Some(Role::Primary) if up.timeline.is_some() => e.timeline = up.timeline,
                    _ => {}
                }
                lag_changed = e.measure_lag(up, primary);
            }
            (Err(_), Health::Down) => {
                e.claim = None;
                lag_changed = e.lag.lagging;
                e.lag = Lag::default();
            }
            _ => {}
        }
        e.last = Some(outcome);
        Observed {
            transition,
            lag_changed,
            unfenced,
        }
    }

    /// Fences what must take no writes, before a decision: an up endpoint that
    /// claims primary on an older timeline than one seen before, and, when
    /// several up endpoints claim primary (a split brain), each one that is not
    /// the endpoint writes belong to, unless it is on a newer timeline than that
    /// one. A fence holds until the endpoint is seen as a standby, or an operator
    /// clears it; it outlives the split brain, a restart of either side, and the
    /// agent's own restart. Returns the endpoints fenced now.
    ///
    /// Only under `writes = "primary"`: `writes = "any"` is role-blind, and its
    /// endpoints may well be independent servers, each a primary of its own.
    pub fn fence(&mut self) -> Vec<usize> {
        if self.config.writes != crate::config::Writes::Primary {
            for e in &mut self.endpoints {
                e.fenced = false;
            }
            return Vec::new();
        }
        let newest = self.endpoints.iter().filter_map(|e| e.timeline).max();
        let primaries: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| {
                let e = &self.endpoints[i];
                e.up() && e.role() == Some(Role::Primary)
            })
            .collect();
        let owner = self.choice.owner().filter(|o| primaries.contains(o));
        let owner_timeline = owner.and_then(|o| self.endpoints[o].timeline);
        let mut fenced = Vec::new();
        for &i in &primaries {
            let e = &self.endpoints[i];
            let older = matches!((e.timeline, newest), (Some(t), Some(n)) if t < n);
            let beside = owner.is_some_and(|o| o != i)
                && !matches!((e.timeline, owner_timeline), (Some(t), Some(o)) if t > o);
            if !e.fenced && (older || beside) {
                self.endpoints[i].fenced = true;
                fenced.push(i);
            }
        }
        fenced
    }

    /// Clears endpoint `index`'s fence, and forgets every timeline seen as a
    /// primary (an operator who unfences knows the history better: a cluster
    /// rebuilt from a backup starts its timelines again).
    pub fn unfence(&mut self, index: usize) {
        self.endpoints[index].fenced = false;
        for e in &mut self.endpoints {
            e.timeline = None;
        }
    }

    /// What a previous agent recorded of endpoint `index` (see
    /// [`Endpoint::fence_record`]).
    pub fn remember(&mut self, index: usize, fence: dbha_protocol::Fence) {
        if let Some(e) = self.endpoints.get_mut(index) {
            e.fenced = fence.fenced;
            e.timeline = fence.timeline;
        }
    }

    /// The furthest write position an up primary reported.
    fn primary_wal(&self) -> Option<u64> {
        self.endpoints
            .iter()
            .filter(|e| e.up() && e.role() == Some(Role::Primary))
            .filter_map(|e| e.lag.wal)
            .max()
    }

    /// The furthest GTID position an up MySQL primary reported.
    fn primary_gtid(&self) -> Option<u64> {
        self.endpoints
            .iter()
            .filter(|e| e.up() && e.role() == Some(Role::Primary))
            .filter_map(|e| e.lag.gtid)
            .max()
    }

    /// Endpoint `index` counts as down whatever its counts (its probe went silent).
    pub fn force_down(&mut self, index: usize, now: Instant) {
        let e = &mut self.endpoints[index];
        e.tracker.force_down();
        e.down_at = Some(now);
        e.failing_since = e.failing_since.or(Some(now));
        e.claim = None;
        e.lag = Lag::default();
    }

    /// The decision for the current knowledge at `now`, without applying it.
    pub fn decide(&self, phase: Phase, now: Instant) -> Decision {
        let seen = self.seen(now);
        let leader = self
            .dcs_writes(&seen, now)
            .map(|(verdict, owner)| match verdict {
                Ok(i) => Leader::Writes(i),
                Err(_) => Leader::None { owner },
            });
        decide_under(&seen, self.choice, self.config.policy(), phase, leader)
    }

    /// What the agent knows of each endpoint at `now`. Under `[dcs]`, an
    /// endpoint whose probe cannot see roles (the tcp check) is taken as a
    /// standby, for reads, when its member key says it is a running replica.
    fn seen(&self, now: Instant) -> Vec<Seen> {
        let mut seen: Vec<Seen> = self.endpoints.iter().map(|e| e.seen(now)).collect();
        if let Some(view) = &self.dcs {
            for (name, m) in &view.cluster.members {
                let Ok(m) = m else { continue };
                let standby = m.role == crate::dcs::MemberRole::Replica && m.state == "running";
                if !standby || view.cluster.leader.as_deref() == Some(name.as_str()) {
                    continue;
                }
                if let Ok(i) = crate::dcs::match_member(name, m, &self.config.databases) {
                    if seen[i].claim.is_none() && !self.endpoints[i].db.sees_roles() {
                        seen[i].claim = Some(Claim {
                            role: Role::Standby,
                            read_only: true,
                        });
                    }
                }
            }
        }
        seen
    }

    /// Under `[dcs]`: where the DCS sends writes (or why nowhere), and the
    /// endpoint the leader is.
    #[allow(clippy::type_complexity)]
    fn dcs_writes(
        &self,
        seen: &[Seen],
        now: Instant,
    ) -> Option<(Result<usize, crate::dcs::NoWrites>, Option<usize>)> {
        self.config.dcs.as_ref()?;
        let unconfirmed = crate::dcs::View::default();
        let view = self.dcs.as_ref().unwrap_or(&unconfirmed);
        Some(crate::dcs::writes(view, now, &self.config.databases, seen))
    }

    /// Under `[dcs]`, the DCS's verdict at `now` (None without a DCS): what
    /// the log, the metrics and the state file's DCS area say.
    #[allow(clippy::type_complexity)]
    pub fn dcs_verdict(
        &self,
        now: Instant,
    ) -> Option<(Result<usize, crate::dcs::NoWrites>, Option<usize>)> {
        self.dcs_writes(&self.seen(now), now)
    }

    /// Under `[dcs]`, why writes go to no endpoint now (None when they go
    /// somewhere, or without a DCS).
    pub fn dcs_no_writes(&self, now: Instant) -> Option<crate::dcs::NoWrites> {
        self.dcs_verdict(now)?.0.err()
    }

    /// Under `[dcs]`, what the state file's DCS area shows for `verdict` (a
    /// [`State::dcs_verdict`] at `now`); None without a DCS. The
    /// confirmation's time is published on `CLOCK_MONOTONIC`: `clock` is an
    /// [`Instant`] and that clock's ns at the same moment (an `Instant` is
    /// that clock on Linux).
    #[allow(clippy::type_complexity)]
    pub fn dcs_area(
        &self,
        now: Instant,
        clock: (Instant, u64),
        verdict: Option<&(Result<usize, crate::dcs::NoWrites>, Option<usize>)>,
    ) -> Option<dbha_protocol::Dcs> {
        let (verdict, owner) = verdict?;
        let v = self.dcs.clone().unwrap_or_default();
        let failsafe = v.on_failsafe(now);
        let (at, mono_ns) = clock;
        Some(dbha_protocol::Dcs {
            connected: v.connected,
            failsafe,
            revision: v.revision,
            resyncs: v.resyncs,
            // Whole milliseconds: `clock`'s two readings differ by some
            // nanoseconds at every publication, and the area is rewritten only
            // when a word changes, so only a new confirmation rewrites it.
            confirmed_mono_ns: v.confirmed.map(|t| {
                let age = at.saturating_duration_since(t).as_nanos();
                let ns = mono_ns.saturating_sub(u64::try_from(age).unwrap_or(u64::MAX));
                (ns - ns % 1_000_000).max(1)
            }),
            window: Some(v.cluster.config.window()),
            // On the failsafe fallback, the member whose /primary answered.
            leader: if failsafe {
                v.failsafe_primary.clone()
            } else {
                v.cluster.leader.clone()
            },
            leader_index: owner.and_then(|i| u32::try_from(i).ok()),
            no_writes: verdict.as_ref().err().map_or(0, |w| w.code()),
        })
    }

    /// Under `[dcs]`, when the current confirmation of the leader stops being
    /// trusted (the decision must be made again then, not at the next beat).
    pub fn dcs_expiry(&self) -> Option<Instant> {
        let v = self.dcs.as_ref()?;
        Some(v.confirmed? + v.cluster.config.window())
    }

    /// What the state file publishes for the current choice. While `phase` is
    /// settling, an endpoint with no verdict yet keeps the health and role a
    /// previous agent published (see [`State::carry`]).
    pub fn publication(&self, conflict: bool, phase: Phase) -> Publication {
        let mask = |f: &dyn Fn(&Endpoint) -> bool| {
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| f(e))
                .fold(0u64, |m, (i, _)| m | 1 << i)
        };
        let unconfirmed = match phase {
            Phase::Settling => mask(&|e| e.tracker.health == Health::Unknown),
            Phase::Settled => 0,
        };
        let c = self.carried;
        let role = |r: Role| move |e: &Endpoint| e.up() && e.role() == Some(r);
        let index = |i: Option<usize>| i.map_or(NONE, |i| i as u32);
        Publication {
            write_index: index(self.choice.write),
            read_index: index(self.choice.read),
            health_mask: mask(&|e| e.up()) | (c.health & unconfirmed),
            primary_mask: mask(&role(Role::Primary)) | (c.primary & unconfirmed),
            standby_mask: mask(&role(Role::Standby)) | (c.standby & unconfirmed),
            conflict,
        }
    }

    /// The alias of endpoint `i`, or "NONE".
    pub fn alias(&self, i: Option<usize>) -> &str {
        i.and_then(|i| self.endpoints.get(i))
            .map_or("NONE", |e| e.db.alias.as_str())
    }

    pub fn up_count(&self) -> usize {
        self.endpoints.iter().filter(|e| e.up()).count()
    }

    pub fn all_down(&self) -> bool {
        self.endpoints
            .iter()
            .all(|e| e.tracker.health == Health::Down)
    }

    /// Every endpoint has a verdict (none is Unknown).
    pub fn verdicts_in(&self) -> bool {
        self.endpoints
            .iter()
            .all(|e| e.tracker.health != Health::Unknown)
    }

    /// Each endpoint's state, for a log line: its failure, or its health and role.
    pub fn why(&self) -> String {
        let each: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| {
                let alias = &e.db.alias;
                match (&e.last, e.tracker.health, e.claim) {
                    (Some(Err(f)), Health::Down, _) => format!("{alias}: down ({f})"),
                    (_, Health::Up, Some(c)) => format!(
                        "{alias}: {}{}",
                        dbha::Role::from(c.role).name(),
                        if c.read_only && c.role == Role::Primary {
                            ", read-only"
                        } else {
                            ""
                        }
                    ),
                    (_, h, _) => format!("{alias}: {}", format!("{h:?}").to_lowercase()),
                }
            })
            .collect();
        each.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Failure, Up};
    use std::path::Path;

    fn config(aliases: &[(&str, u16)]) -> Config {
        let mut text = String::from(
            "state_file = \"/run/dbha/state\"\nwrites = \"primary\"\nreads = \"prefer-standby\"\nrise = 1\nfall = 2\n",
        );
        for (alias, port) in aliases {
            text += &format!(
                "[[database]]\nalias = \"{alias}\"\nhost = \"127.0.0.1\"\nport = {port}\ncheck = \"postgres\"\nuser = \"probe\"\n"
            );
        }
        Config::parse(Path::new("agent.toml"), &text).unwrap()
    }

    fn up(role: Role) -> Outcome {
        Ok(Up {
            role: Some(role),
            ..Up::default()
        })
    }

    fn at(role: Role, wal: u64, delay_ms: u64) -> Outcome {
        Ok(Up {
            role: Some(role),
            wal: Some(wal),
            replay_delay: (role == Role::Standby).then(|| Duration::from_millis(delay_ms)),
            ..Up::default()
        })
    }

    fn primary_on(timeline: u32) -> Outcome {
        Ok(Up {
            role: Some(Role::Primary),
            timeline: Some(timeline),
            ..Up::default()
        })
    }

    /// Feeds one outcome per endpoint (None: no report), fences, decides and
    /// applies the decision at `now`, as the agent's loop does.
    fn round(s: &mut State, outcomes: Vec<Option<Outcome>>, now: Instant) -> Choice {
        for (i, o) in outcomes.into_iter().enumerate() {
            if let Some(o) = o {
                s.observe(i, o, Duration::ZERO, now);
            }
        }
        s.fence();
        s.choice = s.decide(Phase::Settled, now).choice;
        s.choice
    }

    #[test]
    fn the_dcs_area_changes_with_a_new_confirmation_not_with_each_publication() {
        let now = Instant::now();
        let text = "state_file = \"/run/dbha/state\"\n[dcs]\netcd = [\"http://127.0.0.1:2379\"]\nscope = \"dbha\"\n[[database]]\nalias = \"pg0\"\nhost = \"127.0.0.1\"\nport = 5432\ncheck = \"tcp\"\n";
        let config = Config::parse(Path::new("agent.toml"), text).unwrap();
        let mut s = State::new(config, Choice::default(), now);
        s.dcs = Some(crate::dcs::View {
            confirmed: Some(now),
            connected: true,
            ..crate::dcs::View::default()
        });
        let verdict = s.dcs_verdict(now);
        // One publication's clock pair, and later ones whose two readings
        // (Instant, CLOCK_MONOTONIC) are some nanoseconds apart, as they are.
        let base = 5_000_000_000_123u64;
        let area = |s: &State, at_ns: u64, mono_jitter: u64| {
            let at = now + Duration::from_nanos(at_ns);
            s.dcs_area(at, (at, base + at_ns + mono_jitter), verdict.as_ref())
                .unwrap()
        };
        let first = area(&s, 0, 0);
        assert_eq!(first.confirmed_mono_ns, Some(5_000_000_000_000));
        for (later, jitter) in [(200_000_000, 317), (400_000_000, 40), (600_000_000, 901)] {
            assert_eq!(area(&s, later, jitter), first);
        }
        s.dcs.as_mut().unwrap().confirmed = Some(now + Duration::from_secs(1));
        assert_eq!(
            area(&s, 1_200_000_000, 12).confirmed_mono_ns,
            Some(5_001_000_000_000)
        );
    }

    #[test]
    fn a_returning_old_primary_stays_fenced_through_a_restart_of_the_new_one() {
        // Issue 20 row 1: after the old primary returned (split brain seen, writes
        // kept on the promoted failover1), a 0.2 s restart of failover1 sent
        // writes to the stale old primary, and they stayed there.
        let now = Instant::now();
        let mut s = State::new(
            config(&[("default", 1), ("failover1", 2)]),
            Choice::default(),
            now,
        );
        let refused = || Some(Err(Failure::Refused));
        round(
            &mut s,
            vec![Some(primary_on(1)), Some(up(Role::Standby))],
            now,
        );
        assert_eq!(s.choice.write, Some(0));
        // default crashes, failover1 is promoted to timeline 2.
        round(&mut s, vec![refused(), Some(primary_on(2))], now);
        let c = round(&mut s, vec![refused(), Some(primary_on(2))], now);
        assert_eq!(c.write, Some(1));
        // default comes back as a primary on timeline 1: fenced.
        round(&mut s, vec![Some(primary_on(1)), Some(primary_on(2))], now);
        assert!(s.endpoints[0].fenced);
        assert_eq!(s.choice.write, Some(1));
        // failover1 restarts: writes are unavailable (after fall = 2 failed
        // probes), never on default.
        let c = round(&mut s, vec![Some(primary_on(1)), refused()], now);
        assert_eq!(c.write, Some(1), "one failed probe is not down");
        for _ in 0..3 {
            let c = round(&mut s, vec![Some(primary_on(1)), refused()], now);
            assert_eq!((c.write, c.waiting), (None, Some(1)));
        }
        let c = round(&mut s, vec![Some(primary_on(1)), Some(primary_on(2))], now);
        assert_eq!(c.write, Some(1), "back on the promoted primary");
        // Rewound as a standby, default is no longer fenced.
        round(
            &mut s,
            vec![Some(up(Role::Standby)), Some(primary_on(2))],
            now,
        );
        assert!(!s.endpoints[0].fenced);
    }

    #[test]
    fn a_split_brain_without_timelines_fences_the_side_writes_did_not_go_to() {
        let now = Instant::now();
        let mut s = State::new(config(&[("a", 1), ("b", 2)]), Choice::default(), now);
        round(
            &mut s,
            vec![Some(up(Role::Standby)), Some(up(Role::Primary))],
            now,
        );
        assert_eq!(s.choice.write, Some(1));
        round(
            &mut s,
            vec![Some(up(Role::Primary)), Some(up(Role::Primary))],
            now,
        );
        assert_eq!(
            (s.endpoints[0].fenced, s.endpoints[1].fenced),
            (true, false)
        );
        // b lost: a is fenced, so nothing takes writes.
        let refused = || Some(Err(Failure::Refused));
        round(&mut s, vec![Some(up(Role::Primary)), refused()], now);
        assert_eq!(
            round(&mut s, vec![Some(up(Role::Primary)), refused()], now).write,
            None
        );
        // The operator clears the fence: a is the only writable primary.
        s.unfence(0);
        assert_eq!(
            round(&mut s, vec![Some(up(Role::Primary)), refused()], now).write,
            Some(0)
        );
    }

    #[test]
    fn a_promoted_primary_on_a_newer_timeline_is_never_fenced_for_the_old_one() {
        // Writes still on a (timeline 1) when b shows up promoted (timeline 2):
        // a is the stale side.
        let now = Instant::now();
        let mut s = State::new(config(&[("a", 1), ("b", 2)]), Choice::default(), now);
        round(
            &mut s,
            vec![Some(primary_on(1)), Some(up(Role::Standby))],
            now,
        );
        round(&mut s, vec![Some(primary_on(1)), Some(primary_on(2))], now);
        assert_eq!(
            (s.endpoints[0].fenced, s.endpoints[1].fenced),
            (true, false)
        );
        assert_eq!(s.choice.write, Some(1));
    }

    #[test]
    fn writes_any_waits_for_a_restarting_primary_and_moves_only_after_its_tolerance() {
        // Issue 20 row 2: with held sessions a 0.2 s restart was fall = 3 failed
        // probes within 20 ms, and writes moved to a standby for good.
        let t0 = Instant::now();
        let mut c = config(&[("a", 1), ("b", 2)]);
        c.writes = crate::config::Writes::Any;
        for d in &mut c.databases {
            d.fall = 3;
            d.interval = Duration::from_secs(1);
        }
        let mut s = State::new(c, Choice::default(), t0);
        let ok = || Some(up(Role::Standby));
        let refused = || Some(Err(Failure::Refused));
        round(&mut s, vec![ok(), ok()], t0);
        assert_eq!(s.choice.write, Some(0));
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(round(&mut s, vec![refused(), ok()], ms(10)).write, Some(0));
        round(&mut s, vec![refused(), ok()], ms(20));
        // Down: unavailable at once, but not replaced.
        let c = round(&mut s, vec![refused(), ok()], ms(30));
        assert_eq!((c.write, c.waiting), (None, Some(0)));
        assert_eq!(round(&mut s, vec![None, None], ms(2_000)).write, None);
        // Back within the tolerance: writes return to it.
        round(&mut s, vec![ok(), None], ms(2_200));
        assert_eq!(round(&mut s, vec![ok(), None], ms(2_210)).write, Some(0));
        // Down for longer than fall x interval (3 s): writes move.
        for t in [3_000, 3_010, 3_020] {
            round(&mut s, vec![refused(), ok()], ms(t));
        }
        assert_eq!(round(&mut s, vec![None, None], ms(5_999)).write, None);
        assert_eq!(round(&mut s, vec![None, None], ms(6_000)).write, Some(1));
    }

    #[test]
    fn a_restarted_agent_keeps_the_published_reads_and_health_until_its_verdicts() {
        // Issue 20 row 3: the new agent published reads on the primary with
        // every endpoint unhealthy until its probes concluded.
        let now = Instant::now();
        let published = Choice {
            write: Some(0),
            read: Some(1),
            waiting: None,
        };
        let mut s = State::new(config(&[("a", 1), ("b", 2)]), published, now);
        s.carry(Masks {
            health: 0b11,
            primary: 0b01,
            standby: 0b10,
        });
        let d = s.decide(Phase::Settling, now);
        assert_eq!(d.choice, published);
        s.choice = d.choice;
        let p = s.publication(false, Phase::Settling);
        assert_eq!(
            (p.health_mask, p.primary_mask, p.standby_mask),
            (0b11, 0b01, 0b10)
        );
        // A verdict replaces what was carried; settled, nothing is carried.
        s.observe(1, Err(Failure::Refused), Duration::ZERO, now);
        s.observe(1, Err(Failure::Refused), Duration::ZERO, now);
        let p = s.publication(false, Phase::Settling);
        assert_eq!((p.health_mask, p.standby_mask), (0b01, 0));
        assert_eq!(s.publication(false, Phase::Settled).health_mask, 0);
        assert_eq!(s.decide(Phase::Settling, now).choice.read, Some(0));
    }

    #[test]
    fn an_unknown_delay_is_over_the_limit_and_an_unknown_byte_lag_says_nothing() {
        // Issue 20 row 4: with no primary up to compare with, an unknown byte lag
        // counted as within the limit and a lagging standby got reads back.
        let now = Instant::now();
        let mut c = config(&[("p", 1), ("s", 2)]);
        for d in &mut c.databases {
            d.max_replica_lag = Some(Duration::from_secs(5));
            d.max_replica_lag_bytes = Some(1000);
            d.rise = 1;
            d.fall = 1;
        }
        let mut s = State::new(c, Choice::default(), now);
        let standby = |wal: u64, delay: Option<u64>| {
            Ok(Up {
                role: Some(Role::Standby),
                wal: Some(wal),
                replay_delay: delay.map(Duration::from_millis),
                ..Up::default()
            })
        };
        s.observe(0, at(Role::Primary, 10_000, 0), Duration::ZERO, now);
        s.observe(1, standby(5_000, Some(0)), Duration::ZERO, now);
        assert!(s.endpoints[1].lag.lagging, "5000 bytes behind");
        // The primary goes down: the byte lag is unknown, which brings nothing back.
        s.observe(0, Err(Failure::Refused), Duration::ZERO, now);
        s.observe(1, standby(5_000, Some(0)), Duration::ZERO, now);
        assert_eq!(s.endpoints[1].lag.bytes, None);
        assert!(s.endpoints[1].lag.lagging);
        // An unknown delay (nothing replayed, no receiver) counts as over.
        let mut c = config(&[("s", 2)]);
        c.databases[0].max_replica_lag = Some(Duration::from_secs(5));
        c.databases[0].rise = 1;
        c.databases[0].fall = 1;
        let mut s = State::new(c, Choice::default(), now);
        s.observe(0, standby(5_000, None), Duration::ZERO, now);
        assert!(s.endpoints[0].lag.lagging);
    }

    #[test]
    fn a_mysql_replica_lags_by_gtid_transactions_and_by_its_own_backlog_in_bytes() {
        let now = Instant::now();
        let mut c = config(&[("p", 1), ("s", 2)]);
        for d in &mut c.databases {
            d.check = crate::config::Check::Mysql;
            d.max_replica_lag_transactions = Some(10);
            d.max_replica_lag_bytes = Some(1000);
            d.rise = 1;
            d.fall = 1;
        }
        let mut s = State::new(c, Choice::default(), now);
        let primary = |gtid: u64| {
            Ok(Up {
                role: Some(Role::Primary),
                gtid: Some(gtid),
                ..Up::default()
            })
        };
        let replica = |gtid: u64, backlog: u64| {
            Ok(Up {
                role: Some(Role::Standby),
                gtid: Some(gtid),
                backlog: Some(backlog),
                replay_delay: Some(Duration::ZERO),
                ..Up::default()
            })
        };
        s.observe(0, primary(100), Duration::ZERO, now);
        s.observe(1, replica(95, 0), Duration::ZERO, now);
        assert_eq!(
            (s.endpoints[1].lag.transactions, s.endpoints[1].lag.bytes),
            (Some(5), Some(0))
        );
        assert!(!s.endpoints[1].lag.lagging);
        // 20 transactions behind (say, a source silently gone for the IO thread
        // of the replica, while Seconds_Behind_Master says 0).
        s.observe(0, primary(120), Duration::ZERO, now);
        s.observe(1, replica(100, 0), Duration::ZERO, now);
        assert!(s.endpoints[1].lag.lagging);
        s.observe(1, replica(118, 0), Duration::ZERO, now);
        assert!(!s.endpoints[1].lag.lagging);
        // Received and not executed: its own backlog, in bytes.
        s.observe(1, replica(120, 5000), Duration::ZERO, now);
        assert!(s.endpoints[1].lag.lagging);
        // No primary to compare with: the transactions say nothing; the
        // backlog still does.
        s.observe(0, Err(Failure::Refused), Duration::ZERO, now);
        s.observe(1, replica(120, 0), Duration::ZERO, now);
        assert_eq!(s.endpoints[1].lag.transactions, None);
        assert!(s.endpoints[1].lag.lagging, "unknown brings nothing back");
    }

    #[test]
    fn a_lagging_standby_leaves_the_reads_after_fall_probes_and_returns_after_rise() {
        let now = Instant::now();
        let mut c = config(&[("a", 1), ("b", 2), ("c", 3)]);
        for d in &mut c.databases {
            d.max_replica_lag = Some(Duration::from_secs(5));
            d.max_replica_lag_bytes = Some(1000);
            d.rise = 2;
        }
        let mut s = State::new(c, Choice::default(), now);
        let step = |s: &mut State, b: Outcome| {
            s.observe(0, at(Role::Primary, 10_000, 0), Duration::ZERO, now);
            s.observe(1, b, Duration::ZERO, now);
            s.observe(2, at(Role::Standby, 10_000, 0), Duration::ZERO, now);
            s.choice = s.decide(Phase::Settled, now).choice;
            s.choice.read
        };
        step(&mut s, at(Role::Standby, 10_000, 0));
        assert_eq!(step(&mut s, at(Role::Standby, 10_000, 0)), Some(1));
        // Over the time limit once (fall = 2): one probe changes nothing.
        assert_eq!(step(&mut s, at(Role::Standby, 10_000, 6000)), Some(1));
        assert!(!s.endpoints[1].lag.lagging);
        // Twice: the reads move to c.
        assert_eq!(step(&mut s, at(Role::Standby, 10_000, 7000)), Some(2));
        assert!(s.endpoints[1].lag.lagging);
        // The byte limit, measured against the primary's position, holds it out.
        assert_eq!(step(&mut s, at(Role::Standby, 8_000, 0)), Some(2));
        assert_eq!(s.endpoints[1].lag.bytes, Some(2_000));
        // rise = 2 probes within both limits bring it back (reads stay on c,
        // which is still fit: no needless move).
        assert_eq!(step(&mut s, at(Role::Standby, 9_500, 100)), Some(2));
        assert!(s.endpoints[1].lag.lagging);
        assert_eq!(step(&mut s, at(Role::Standby, 10_000, 0)), Some(2));
        assert!(!s.endpoints[1].lag.lagging);
    }

    #[test]
    fn reports_become_a_decision_and_a_publication() {
        let now = Instant::now();
        let mut s = State::new(config(&[("a", 1), ("b", 2)]), Choice::default(), now);
        s.observe(0, up(Role::Primary), Duration::ZERO, now);
        s.observe(1, up(Role::Standby), Duration::ZERO, now);
        s.choice = s.decide(Phase::Settling, now).choice;
        let p = s.publication(false, Phase::Settled);
        assert_eq!((p.write_index, p.read_index), (0, 1));
        assert_eq!((p.primary_mask, p.standby_mask, p.health_mask), (1, 2, 3));
        // One lost probe (fall = 2) keeps the claim; the second forgets it.
        let refused = || Err(Failure::Refused);
        s.observe(0, refused(), Duration::ZERO, now);
        assert!(s.endpoints[0].claim.is_some());
        s.observe(0, refused(), Duration::ZERO, now);
        assert_eq!(s.endpoints[0].claim, None);
        assert_eq!(s.decide(Phase::Settled, now).choice.write, None);
        assert!(
            s.why().starts_with("a: down (connection refused)"),
            "{}",
            s.why()
        );
    }

    #[test]
    fn a_new_configuration_keeps_what_is_known_of_the_same_targets() {
        let now = Instant::now();
        let mut s = State::new(config(&[("a", 1), ("b", 2)]), Choice::default(), now);
        s.observe(0, up(Role::Primary), Duration::ZERO, now);
        s.observe(1, up(Role::Standby), Duration::ZERO, now);
        s.choice = s.decide(Phase::Settled, now).choice;
        // b moves to the front, c is new, a keeps its port.
        let (next, carried) = s.reconfigured(config(&[("b", 2), ("c", 3), ("a", 1)]), now);
        assert_eq!(carried, [true, false, true]);
        assert_eq!(next.endpoints[0].claim, s.endpoints[1].claim);
        assert_eq!(next.endpoints[1].tracker.health, Health::Unknown);
        // The choice follows the aliases, even while settling.
        assert_eq!(
            next.choice,
            Choice {
                write: Some(2),
                read: Some(0),
                waiting: None,
            }
        );
        // A changed port is another target: nothing is carried over, and the
        // alias keeps writes only until its first verdict (as after a restart).
        let (mut next, carried) = s.reconfigured(config(&[("a", 9), ("b", 2)]), now);
        assert_eq!(carried, [false, true]);
        assert_eq!(next.endpoints[0].tracker.health, Health::Unknown);
        assert_eq!(next.choice.write, Some(0));
        next.observe(0, Err(Failure::Refused), Duration::ZERO, now);
        next.observe(0, Err(Failure::Refused), Duration::ZERO, now);
        assert_eq!(next.decide(Phase::Settling, now).choice.write, None);
    }
}
