//! What the agent knows: each endpoint's hysteresis, last outcome and claimed role,
//! and where writes and reads go. Probe reports go in, a [`Decision`] and a
//! [`Publication`] come out; no threads, files, sockets or logging here, so the
//! loop in `run` is the only place with side effects.

use crate::config::{Config, Database};
use crate::decide::{decide, Choice, Claim, Decision, Health, Phase, Seen, Tracker, Transition};
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
}

/// A standby's replication lag and its hysteresis against the configured limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// The last WAL position the probe read (see [`crate::probe::Up::wal`]).
    pub wal: Option<u64>,
    /// The standby's replay delay, as it reported it.
    pub delay: Option<Duration>,
    /// Bytes of WAL the standby's replay is behind the primary's last known
    /// write position.
    pub bytes: Option<u64>,
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
        }
    }

    pub fn seen(&self) -> Seen {
        Seen {
            health: self.tracker.health,
            claim: self.claim,
            lagging: self.lag.lagging,
        }
    }

    /// Measures this standby's lag after a successful probe (`primary_wal`: the
    /// primary's last known write position) and applies the hysteresis: `fall`
    /// consecutive probes over a limit take it out of the reads, `rise` within
    /// bring it back. Returns whether `lagging` changed.
    fn measure_lag(&mut self, up: &Up, primary_wal: Option<u64>) -> bool {
        let was = self.lag.lagging;
        if up.role != Some(Role::Standby) {
            self.lag = Lag {
                wal: up.wal,
                ..Lag::default()
            };
            return was;
        }
        self.lag.wal = up.wal;
        self.lag.delay = up.replay_delay;
        self.lag.bytes = match (primary_wal, up.wal) {
            (Some(p), Some(w)) => Some(p.saturating_sub(w)),
            _ => None,
        };
        let over_time =
            matches!((self.lag.delay, self.db.max_replica_lag), (Some(d), Some(max)) if d > max);
        let over_bytes = matches!((self.lag.bytes, self.db.max_replica_lag_bytes), (Some(b), Some(max)) if b > max);
        if over_time || over_bytes {
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
}

/// The endpoints (in priority order) and the current choice.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub endpoints: Vec<Endpoint>,
    pub choice: Choice,
    /// Until then, first verdicts may still be pending (see [`Phase`]).
    settle_until: Instant,
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
        };
        State {
            settle_until: now + settle_time(&config),
            config,
            endpoints,
            choice,
        }
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
        };
        next.choice = next.decide(Phase::Settling).choice;
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

    /// Takes in a probe outcome for endpoint `index`: the health transition it
    /// caused, if any, and whether the endpoint started or stopped lagging.
    pub fn observe(&mut self, index: usize, outcome: Outcome, took: Duration) -> Observed {
        let primary_wal = self.primary_wal();
        let e = &mut self.endpoints[index];
        e.took = took;
        let transition = e.tracker.observe(outcome.is_ok());
        let mut lag_changed = false;
        match (&outcome, e.tracker.health) {
            (Ok(up), _) => {
                e.claim = up.role.map(|role| Claim {
                    role,
                    read_only: up.read_only,
                });
                lag_changed = e.measure_lag(up, primary_wal);
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
        }
    }

    /// The furthest write position an up primary reported.
    fn primary_wal(&self) -> Option<u64> {
        self.endpoints
            .iter()
            .filter(|e| e.up() && e.seen().role() == Some(Role::Primary))
            .filter_map(|e| e.lag.wal)
            .max()
    }

    /// Endpoint `index` counts as down whatever its counts (its probe went silent).
    pub fn force_down(&mut self, index: usize) {
        let e = &mut self.endpoints[index];
        e.tracker.force_down();
        e.claim = None;
        e.lag = Lag::default();
    }

    /// The decision for the current knowledge, without applying it.
    pub fn decide(&self, phase: Phase) -> Decision {
        let seen: Vec<Seen> = self.endpoints.iter().map(Endpoint::seen).collect();
        decide(&seen, self.choice, self.config.policy(), phase)
    }

    /// What the state file publishes for the current choice.
    pub fn publication(&self, conflict: bool) -> Publication {
        let mask = |f: &dyn Fn(&Endpoint) -> bool| {
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.up() && f(e))
                .fold(0u64, |m, (i, _)| m | 1 << i)
        };
        let role = |r: Role| move |e: &Endpoint| e.seen().role() == Some(r);
        let index = |i: Option<usize>| i.map_or(NONE, |i| i as u32);
        Publication {
            write_index: index(self.choice.write),
            read_index: index(self.choice.read),
            health_mask: mask(&|_| true),
            primary_mask: mask(&role(Role::Primary)),
            standby_mask: mask(&role(Role::Standby)),
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
            s.observe(0, at(Role::Primary, 10_000, 0), Duration::ZERO);
            s.observe(1, b, Duration::ZERO);
            s.observe(2, at(Role::Standby, 10_000, 0), Duration::ZERO);
            s.choice = s.decide(Phase::Settled).choice;
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
        s.observe(0, up(Role::Primary), Duration::ZERO);
        s.observe(1, up(Role::Standby), Duration::ZERO);
        s.choice = s.decide(Phase::Settling).choice;
        let p = s.publication(false);
        assert_eq!((p.write_index, p.read_index), (0, 1));
        assert_eq!((p.primary_mask, p.standby_mask, p.health_mask), (1, 2, 3));
        // One lost probe (fall = 2) keeps the claim; the second forgets it.
        let refused = || Err(Failure::Refused);
        s.observe(0, refused(), Duration::ZERO);
        assert!(s.endpoints[0].claim.is_some());
        s.observe(0, refused(), Duration::ZERO);
        assert_eq!(s.endpoints[0].claim, None);
        assert_eq!(s.decide(Phase::Settled).choice.write, None);
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
        s.observe(0, up(Role::Primary), Duration::ZERO);
        s.observe(1, up(Role::Standby), Duration::ZERO);
        s.choice = s.decide(Phase::Settled).choice;
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
                read: Some(0)
            }
        );
        // A changed port is another target: nothing is carried over, and the
        // alias keeps writes only until its first verdict (as after a restart).
        let (mut next, carried) = s.reconfigured(config(&[("a", 9), ("b", 2)]), now);
        assert_eq!(carried, [false, true]);
        assert_eq!(next.endpoints[0].tracker.health, Health::Unknown);
        assert_eq!(next.choice.write, Some(0));
        next.observe(0, Err(Failure::Refused), Duration::ZERO);
        next.observe(0, Err(Failure::Refused), Duration::ZERO);
        assert_eq!(next.decide(Phase::Settling).choice.write, None);
    }
}
