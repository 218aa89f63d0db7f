//! The decision: per-endpoint hysteresis (HAProxy's rise/fall) and the choice of
//! the active database. Pure functions of probe results and previous state, so the
//! table-driven tests below need no sockets.

use crate::config::{Failback, Reads, Writes};
use crate::probe::Role;

/// What the agent believes about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not enough consecutive results yet (a fresh agent starts here).
    Unknown,
    Up,
    Down,
}

/// A change of an endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    /// The consecutive results that caused it.
    pub after: u32,
}

/// Rise/fall hysteresis for one endpoint: `fall` consecutive failures mark it down,
/// `rise` consecutive successes mark it up. From Unknown, whichever comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub rise: u32,
    pub fall: u32,
    pub health: Health,
    successes: u32,
    failures: u32,
    /// Consecutive probes while a verdict was pending (see [`Tracker::fast`]).
    undecided: u32,
    /// Probes since the endpoint went down (see [`Tracker::backoff`]).
    since_down: u32,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            rise,
            fall,
            health: Health::Unknown,
            successes: 0,
            failures: 0,
            undecided: 0,
            since_down: 0,
        }
    }

    /// The number of fast probes one attempt at a verdict may take:
    /// `max(rise, fall)`, enough for either verdict.
    fn attempt(&self) -> u32 {
        self.rise.max(self.fall)
    }

    /// The next probe should come at `fastinter`: a verdict is pending and the
    /// attempt at it is not used up. Results that alternate (a server admitting
    /// some logins and refusing others) never reach a verdict; after
    /// `max(rise, fall)` probes such an endpoint is probed at `interval` again
    /// until a verdict, or a result that ends the pending streak.
    pub fn fast(&self) -> bool {
        self.pending() && self.undecided < self.attempt()
    }

    /// For an endpoint that went down: how many times `fastinter` to wait until
    /// the next probe, doubling from 1 with each probe since it went down (the
    /// caller caps it at `interval`). A server that restarts is back within a few
    /// of these probes, not at the next `interval`; one that stays down costs
    /// only `log2(interval / fastinter)` probes more than at `interval`.
    pub fn backoff(&self) -> Option<u32> {
        (self.health == Health::Down).then(|| 1u32 << self.since_down.min(20))
    }

    /// The last result used up an attempt at a verdict without reaching one
    /// (true once per such streak, for a log line).
    pub fn stalled(&self) -> bool {
        self.pending() && self.undecided == self.attempt()
    }

    /// Consecutive failed probes so far (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A verdict is pending: no verdict yet, or results counted toward leaving
    /// the current one (failures while Up, successes while Down).
    pub fn pending(&self) -> bool {
        match self.health {
            Health::Unknown => true,
            Health::Up => self.failures > 0,
            Health::Down => self.successes > 0,
        }
    }

    /// Marks the endpoint down whatever its counts: its probe stopped reporting.
    /// It rises again after `rise` successes.
    pub fn force_down(&mut self) {
        self.health = Health::Down;
        self.successes = 0;
        self.failures = self.failures.max(self.fall);
        self.undecided = 0;
        self.since_down = 0;
    }

    /// Records one probe result; returns the transition it caused, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        let from = self.health;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if from != Health::Up && self.successes >= self.rise {
                self.health = Health::Up;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if from != Health::Down && self.failures >= self.fall {
                self.health = Health::Down;
            }
        }
        let changed = self.health != from;
        self.since_down = match self.health {
            Health::Down if !changed => self.since_down.saturating_add(1),
            _ => 0,
        };
        self.undecided = if changed || !self.pending() {
            0
        } else {
            self.undecided.saturating_add(1)
        };
        changed.then_some(Transition {
            from,
            to: self.health,
            after: if ok { self.successes } else { self.failures },
        })
    }
}

/// Whether first verdicts may still be pending: just after a start or reload, for
/// long enough that every endpoint had the chance of `max(rise, fall)` probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// First verdicts may be pending: a new choice does not pass over an endpoint
    /// still Unknown.
    Settling,
    /// Every endpoint had its chance: one still Unknown is passed over.
    Settled,
}

/// The write endpoint given each endpoint's health (index = priority order) and the
/// current choice.
///
/// - The current endpoint is kept while it is not known to be down: Unknown is not a
///   reason to move (a restarted agent keeps the published decision until its probes
///   have a verdict).
/// - `Sticky` keeps it even when a higher-priority endpoint is up again; `Auto`
///   returns to the highest-priority endpoint that is up.
/// - Otherwise: the highest-priority endpoint that is up, or none. While
///   [`Phase::Settling`] that choice does not pass over an endpoint still Unknown:
///   otherwise whichever endpoint answered first would win, and with sticky
///   failback stay.
pub fn choose(
    health: &[Health],
    current: Option<usize>,
    failback: Failback,
    phase: Phase,
) -> Option<usize> {
    let first_up = health.iter().position(|h| *h == Health::Up);
    match current.filter(|&c| health.get(c).is_some_and(|h| *h != Health::Down)) {
        Some(c) => match (failback, first_up) {
            (Failback::Auto, Some(u)) if u < c => Some(u),
            _ => Some(c),
        },
        None => first_up.filter(|&u| !passes_over_unknown(phase, &health[..u])),
    }
}

/// A new choice made while settling must not pass over an endpoint still Unknown.
fn passes_over_unknown(phase: Phase, before: &[Health]) -> bool {
    phase == Phase::Settling && before.contains(&Health::Unknown)
}

/// What a server said of itself in a probe that could log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub role: Role,
    /// `default_transaction_read_only` is on.
    pub read_only: bool,
}

/// What the agent knows of one endpoint when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub health: Health,
    /// From the last successful probe that could log in; None when the check
    /// cannot tell (tcp, or no credentials) or the endpoint went down.
    pub claim: Option<Claim>,
    /// A standby too far behind its primary to take reads.
    pub lagging: bool,
    /// Takes no writes: it claimed primary beside the write endpoint, or on an
    /// older timeline (see `State::fence`).
    pub fenced: bool,
    /// Down for longer than its tolerance (`fall` x `interval`): writes, under
    /// `writes = "any"`, may move away from it. Down for less, it is only
    /// unavailable: writes wait for it.
    pub given_up: bool,
    /// When it last went down (None: not since the agent started). Under
    /// `[dcs]`, a leader that went down after etcd's last confirmation may
    /// have come back demoted: it needs a new confirmation.
    pub down_at: Option<std::time::Instant>,
}

impl Seen {
    pub fn role(&self) -> Option<Role> {
        self.claim.map(|c| c.role)
    }

    /// Down, but not for as long as its tolerance.
    fn unavailable(&self) -> bool {
        self.health == Health::Down && !self.given_up
    }

    fn up_as(&self, role: Role) -> bool {
        self.health == Health::Up && self.role() == Some(role)
    }

    fn writable(&self) -> bool {
        self.up_as(Role::Primary) && self.claim.is_some_and(|c| !c.read_only) && !self.fenced
    }
}

/// Where writes and reads go: indexes into the endpoints, in priority order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Choice {
    /// Published: where writes go now.
    pub write: Option<usize>,
    pub read: Option<usize>,
    /// Not published: the endpoint writes belong to while it cannot serve them
    /// (`write` is None meanwhile), and return to when it can.
    pub waiting: Option<usize>,
}

impl Choice {
    /// The endpoint writes belong to: where they go, or wait to go.
    pub fn owner(&self) -> Option<usize> {
        self.write.or(self.waiting)
    }
}

/// The configured rules a decision follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub failback: Failback,
    pub writes: Writes,
    pub reads: Reads,
}

/// The write and read choice, and what was noticed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub choice: Choice,
    /// Up endpoints that claim to be primary (more than one: split brain).
    pub primaries: Vec<usize>,
    /// The write endpoint was lost while several others claim primary: NONE was
    /// chosen rather than a guess.
    pub ambiguous: bool,
}

/// Decides the write and read endpoints (index = priority order).
///
/// Two questions are kept apart: whether the endpoint writes belong to can serve
/// them now (if it is down it cannot, and `write` is published as None at once:
/// the truth, and the application fails fast), and whether writes move to another
/// endpoint, which needs more than a few lost probes:
///
/// - `writes = Any` is [`choose`] on health alone; an endpoint down for less than
///   its tolerance ([`Seen::given_up`]) still holds the writes, which wait for it.
/// - `writes = Primary` only ever chooses an endpoint seen as a writable primary:
///   the current one is kept while nothing shows it is no longer primary; writes
///   move only to a confirmed primary elsewhere, and only when exactly one endpoint
///   is a writable primary (two means a split brain, and guessing could send
///   writes to the wrong side); auto failback never moves writes, since moving
///   would mean two primaries.
///
/// A fenced endpoint is never chosen for writes.
pub fn decide(seen: &[Seen], current: Choice, policy: Policy, phase: Phase) -> Decision {
    decide_under(seen, current, policy, phase, None)
}

/// Under `[dcs]`, where writes go as the DCS decided (`dcs::writes`, which
/// also applied the probes' second opinion): to an endpoint, or to none while
/// they belong to the leader's endpoint (`owner`), or to no endpoint at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    Writes(usize),
    None { owner: Option<usize> },
}

/// [`decide`], with the writes taken from the DCS when `leader` is given
/// (reads are chosen as always, around them).
pub fn decide_under(
    seen: &[Seen],
    current: Choice,
    policy: Policy,
    phase: Phase,
    leader: Option<Leader>,
) -> Decision {
    let primaries: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].up_as(Role::Primary))
        .collect();
    let mut ambiguous = false;
    let health: Vec<Health> = seen.iter().map(|s| s.health).collect();
    let owner = current.owner();
    let owner = match policy.writes {
        Writes::Any => {
            // For the choice, fenced counts as down, and the owner down within
            // its tolerance as not judged yet (which `choose` keeps). Any other
            // endpoint that is down is down: it holds nothing up.
            let judged: Vec<Health> = seen
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    _ if s.fenced => Health::Down,
                    _ if owner == Some(i) && s.unavailable() => Health::Unknown,
                    _ => s.health,
                })
                .collect();
            choose(&judged, owner, policy.failback, phase)
        }
        Writes::Primary => {
            let keep = owner.filter(|&c| {
                seen.get(c).is_some_and(|s| {
                    !s.fenced
                        && s.role() != Some(Role::Standby)
                        && !s.claim.is_some_and(|c| c.read_only)
                })
            });
            match keep {
                Some(c) if seen[c].health != Health::Down => Some(c),
                kept => {
                    let writable: Vec<usize> =
                        (0..seen.len()).filter(|&i| seen[i].writable()).collect();
                    match writable[..] {
                        [only] if !passes_over_unknown(phase, &health[..only]) => Some(only),
                        [_, _, ..] => {
                            ambiguous = true;
                            kept
                        }
                        _ => kept,
                    }
                }
            }
        }
    };
    let down = |i: usize| seen.get(i).is_some_and(|s| s.health == Health::Down);
    let (write, waiting) = match (leader, owner) {
        (Some(Leader::Writes(i)), _) => (Some(i), None),
        (Some(Leader::None { owner }), _) => (None, owner),
        (None, Some(o)) if down(o) => (None, Some(o)),
        (None, o) => (o, None),
    };
    // A fenced endpoint takes no reads either: it is a primary on a history the
    // others left, or beside the write endpoint.
    let fit = |i: usize, want: Option<Role>| {
        seen.get(i).is_some_and(|s| {
            s.health == Health::Up
                && !s.lagging
                && !s.fenced
                && want.is_none_or(|r| s.role() == Some(r))
        })
    };
    // The current read endpoint is kept while it has no verdict yet: a restarted
    // agent keeps the published reads until its probes conclude, as it keeps the
    // writes.
    let keep_read = |i: usize, want: Option<Role>| {
        fit(i, want) || seen.get(i).is_some_and(|s| s.health == Health::Unknown)
    };
    // A new read endpoint is the first fit one; while settling, not one past an
    // endpoint still Unknown (as for writes in `choose`): otherwise whichever
    // standby answered first would take the reads, and keep them while fit.
    let first_fit = |want: Option<Role>| {
        (0..seen.len())
            .find(|&i| fit(i, want))
            .filter(|&i| !passes_over_unknown(phase, &health[..i]))
    };
    // No write endpoint is not no database: while writes have none (a failover
    // window, a split brain), reads go to an endpoint fit for them, a standby
    // first, whatever `reads` says, and the record shows reads only.
    let read = match policy.reads {
        Reads::Primary => write.or_else(|| {
            current
                .read
                .filter(|&r| keep_read(r, None))
                .or_else(|| first_fit(Some(Role::Standby)))
                .or_else(|| first_fit(None))
        }),
        Reads::PreferStandby => current
            .read
            .filter(|&r| keep_read(r, Some(Role::Standby)))
            .or_else(|| first_fit(Some(Role::Standby)))
            .or(write),
        Reads::Any => current
            .read
            .filter(|&r| keep_read(r, None))
            .or_else(|| first_fit(None))
            .or(write),
    };
    Decision {
        choice: Choice {
            write,
            read,
            waiting,
        },
        primaries,
        ambiguous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::{Down, Unknown, Up};
    use Phase::{Settled, Settling};

    /// Feeds `results` ("+" success, "-" failure) and returns the health after each.
    fn run(rise: u32, fall: u32, results: &str) -> Vec<Health> {
        let mut t = Tracker::new(rise, fall);
        results
            .chars()
            .map(|c| {
                t.observe(c == '+');
                t.health
            })
            .collect()
    }

    #[test]
    fn rise_and_fall_tables() {
        let cases: &[(u32, u32, &str, &[Health])] = &[
            // A fresh endpoint needs `rise` successes or `fall` failures.
            (2, 3, "+", &[Unknown]),
            (2, 3, "++", &[Unknown, Up]),
            (2, 3, "--", &[Unknown, Unknown]),
            (2, 3, "---", &[Unknown, Unknown, Down]),
            // One lost probe changes nothing.
            (2, 3, "++-+", &[Unknown, Up, Up, Up]),
            (2, 3, "++--+--", &[Unknown, Up, Up, Up, Up, Up, Up]),
            (2, 3, "++---", &[Unknown, Up, Up, Up, Down]),
            // Down needs `rise` consecutive successes to come back.
            (2, 3, "---+-+", &[Unknown, Unknown, Down, Down, Down, Down]),
            (2, 3, "---++", &[Unknown, Unknown, Down, Down, Up]),
            // rise = fall = 1: every result counts.
            (1, 1, "+-+", &[Up, Down, Up]),
        ];
        for (rise, fall, results, want) in cases {
            assert_eq!(
                run(*rise, *fall, results),
                *want,
                "rise {rise} fall {fall}: {results}"
            );
        }
    }

    #[test]
    fn flapping_faster_than_rise_and_fall_never_transitions() {
        let mut t = Tracker::new(2, 2);
        for _ in 0..2 {
            t.observe(true);
        }
        assert_eq!(t.health, Up);
        for i in 0..100 {
            assert_eq!(t.observe(i % 2 == 0), None, "probe {i}");
        }
    }

    #[test]
    fn alternating_results_get_one_fast_attempt_then_the_normal_pace() {
        // Issue 20 row 7: a server that admits every other login never reached a
        // verdict and was probed at fastinter forever.
        let mut t = Tracker::new(2, 3);
        let mut fast = Vec::new();
        let mut stalled = 0;
        for i in 0..12 {
            t.observe(i % 2 == 0);
            fast.push(t.fast());
            stalled += usize::from(t.stalled());
        }
        assert_eq!(t.health, Unknown);
        // max(rise, fall) = 3 probes at fastinter, then interval.
        assert_eq!(fast[..3], [true, true, false]);
        assert!(fast[3..].iter().all(|f| !f), "{fast:?}");
        assert_eq!(stalled, 1, "logged once per streak");
        // A verdict starts a new attempt the next time one is pending.
        t.observe(true);
        t.observe(true);
        assert_eq!(t.health, Up);
        assert!(!t.fast());
        t.observe(false);
        assert!(t.fast(), "a first failure while up is probed again fast");
        // Up with alternating results: one fast probe after each failure, never
        // a run of them.
        t.observe(true);
        assert!(!t.fast());
    }

    #[test]
    fn a_down_endpoint_is_probed_again_soon_then_ever_less_often() {
        let mut t = Tracker::new(2, 2);
        assert_eq!(t.backoff(), None);
        t.observe(false);
        t.observe(false);
        assert_eq!(t.health, Down);
        let mut waits = vec![t.backoff()];
        for _ in 0..4 {
            t.observe(false);
            waits.push(t.backoff());
        }
        assert_eq!(waits, [Some(1), Some(2), Some(4), Some(8), Some(16)]);
        // Back up: no backoff; down again: it starts over.
        t.observe(true);
        t.observe(true);
        assert_eq!((t.health, t.backoff()), (Up, None));
        t.observe(false);
        t.observe(false);
        assert_eq!(t.backoff(), Some(1));
    }

    #[test]
    fn transitions_report_the_count() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(
            t.observe(false),
            Some(Transition {
                from: Unknown,
                to: Down,
                after: 3
            })
        );
    }

    #[test]
    fn choose_tables() {
        use Failback::{Auto, Sticky};
        /// (health by priority, current, failback, expected choice, what it shows)
        type Case<'a> = (
            &'a [Health],
            Option<usize>,
            Failback,
            Option<usize>,
            &'a str,
        );
        // Not settling: every verdict is in, or the settling time is over.
        let cases: &[Case] = &[
            (
                &[Unknown, Unknown, Unknown],
                None,
                Sticky,
                None,
                "fresh agent: nothing yet",
            ),
            (
                &[Unknown, Up, Unknown],
                None,
                Sticky,
                Some(1),
                "first up wins",
            ),
            (&[Up, Up, Up], None, Sticky, Some(0), "priority order"),
            (
                &[Down, Up, Up],
                Some(0),
                Sticky,
                Some(1),
                "write endpoint down: next up",
            ),
            (&[Down, Down, Up], Some(1), Sticky, Some(2), "two down"),
            (&[Down, Down, Down], Some(2), Sticky, None, "all down: none"),
            (
                &[Up, Up, Up],
                Some(1),
                Sticky,
                Some(1),
                "sticky stays on failover",
            ),
            (
                &[Up, Up, Up],
                Some(1),
                Auto,
                Some(0),
                "auto returns to default",
            ),
            (
                &[Unknown, Up, Up],
                Some(1),
                Auto,
                Some(1),
                "auto waits for rise",
            ),
            (
                &[Up, Unknown, Up],
                Some(1),
                Auto,
                Some(0),
                "auto prefers up over unknown",
            ),
            (
                &[Unknown, Unknown],
                Some(1),
                Sticky,
                Some(1),
                "restart keeps published until a verdict",
            ),
            (
                &[Down, Up, Up],
                Some(2),
                Auto,
                Some(1),
                "auto moves to higher priority",
            ),
            (
                &[Up],
                Some(5),
                Sticky,
                Some(0),
                "current out of range after reload",
            ),
        ];
        for (health, current, failback, want, what) in cases {
            assert_eq!(
                choose(health, *current, *failback, Settled),
                *want,
                "{what}"
            );
        }
    }

    #[test]
    fn a_first_choice_waits_for_higher_priority_verdicts_while_settling() {
        use Failback::Sticky;
        // failover2 answered first; default has no verdict yet.
        assert_eq!(choose(&[Unknown, Down, Up], None, Sticky, Settling), None);
        assert_eq!(choose(&[Up, Down, Up], None, Sticky, Settling), Some(0));
        assert_eq!(choose(&[Down, Down, Up], None, Sticky, Settling), Some(2));
        // Lower-priority pending verdicts do not hold anything up.
        assert_eq!(
            choose(&[Up, Unknown, Unknown], None, Sticky, Settling),
            Some(0)
        );
        // Once settled, an endpoint that never got a verdict no longer blocks.
        assert_eq!(choose(&[Unknown, Down, Up], None, Sticky, Settled), Some(2));
        // A current choice is kept as before.
        assert_eq!(
            choose(&[Unknown, Up, Up], Some(2), Sticky, Settling),
            Some(2)
        );
    }

    #[test]
    fn recovery_sequence_sticky_vs_auto() {
        /// Trackers and the write choice, stepped one probe round at a time.
        struct Sim {
            t: Vec<Tracker>,
            write: Option<usize>,
            failback: Failback,
        }
        impl Sim {
            fn step(&mut self, up: [bool; 3]) -> Option<usize> {
                for (tr, ok) in self.t.iter_mut().zip(up) {
                    tr.observe(ok);
                }
                let h: Vec<Health> = self.t.iter().map(|t| t.health).collect();
                self.write = choose(&h, self.write, self.failback, Settled);
                self.write
            }
        }
        // default dies, failover1 takes over, default comes back.
        for (failback, want_final) in [(Failback::Sticky, Some(1)), (Failback::Auto, Some(0))] {
            let mut sim = Sim {
                t: (0..3).map(|_| Tracker::new(2, 3)).collect(),
                write: None,
                failback,
            };
            assert_eq!(sim.step([true; 3]), None, "one success is not rise");
            assert_eq!(sim.step([true; 3]), Some(0));
            assert_eq!(
                sim.step([false, true, true]),
                Some(0),
                "one failure is not fall"
            );
            sim.step([false, true, true]);
            assert_eq!(sim.step([false, true, true]), Some(1));
            assert_eq!(sim.step([true; 3]), Some(1), "one success is not rise");
            assert_eq!(sim.step([true; 3]), want_final, "{failback:?}");
        }
    }

    fn seen(spec: &str) -> Vec<Seen> {
        // One letter per endpoint: P primary, S standby, L lagging standby,
        // R read-only primary, D down, U unknown, ? up with no role known.
        spec.chars()
            .map(|c| {
                let claim = |role, read_only| Some(Claim { role, read_only });
                let (health, claim) = match c {
                    'P' => (Up, claim(Role::Primary, false)),
                    'S' | 'L' => (Up, claim(Role::Standby, false)),
                    'R' => (Up, claim(Role::Primary, true)),
                    'D' => (Down, None),
                    'U' => (Unknown, None),
                    _ => (Up, None),
                };
                Seen {
                    health,
                    claim,
                    lagging: c == 'L',
                    fenced: false,
                    given_up: health == Down,
                    down_at: None,
                }
            })
            .collect()
    }

    #[test]
    fn writes_primary_tables() {
        use Failback::{Auto, Sticky};
        // (endpoints, current write, failback, expected write, ambiguous, what)
        type Case<'a> = (
            &'a str,
            Option<usize>,
            Failback,
            Option<usize>,
            bool,
            &'a str,
        );
        let cases: &[Case] = &[
            ("PSS", None, Sticky, Some(0), false, "the primary"),
            (
                "SPS",
                None,
                Sticky,
                Some(1),
                false,
                "a standby listed first is never the write alias",
            ),
            (
                "DSS",
                Some(0),
                Sticky,
                None,
                false,
                "primary lost, standbys are not writable",
            ),
            (
                "DPS",
                Some(0),
                Sticky,
                Some(1),
                false,
                "the promoted standby",
            ),
            (
                "PPS",
                Some(1),
                Auto,
                Some(1),
                false,
                "split brain: writes stay, even with auto failback",
            ),
            (
                "PPS",
                Some(1),
                Sticky,
                Some(1),
                false,
                "split brain, sticky",
            ),
            (
                "DPP",
                Some(0),
                Sticky,
                None,
                true,
                "lost, two others claim primary: NONE, no guess",
            ),
            (
                "RSS",
                None,
                Sticky,
                None,
                false,
                "a read-only primary takes no writes",
            ),
            (
                "?SS",
                None,
                Sticky,
                None,
                false,
                "a role never seen is not writable",
            ),
            (
                "SSS",
                Some(0),
                Sticky,
                None,
                false,
                "the written-to server became a standby",
            ),
            (
                "USP",
                Some(0),
                Sticky,
                Some(0),
                false,
                "restart: keep the published choice until a verdict",
            ),
        ];
        for (spec, current, failback, want, ambiguous, what) in cases {
            let policy = Policy {
                failback: *failback,
                writes: Writes::Primary,
                reads: Reads::Primary,
            };
            let current = Choice {
                write: *current,
                ..Choice::default()
            };
            let d = decide(&seen(spec), current, policy, Settled);
            assert_eq!((d.choice.write, d.ambiguous), (*want, *ambiguous), "{what}");
            // Reads follow writes; without a write endpoint, the first fit
            // standby takes them, else the first other endpoint up and fit.
            let window = spec.find('S').or_else(|| spec.find(|c| "PR?".contains(c)));
            assert_eq!(
                d.choice.read,
                d.choice.write.or(window),
                "{what}: reads = primary follows writes"
            );
        }
    }

    #[test]
    fn without_a_write_endpoint_reads_go_to_a_fit_standby_under_every_reads_policy() {
        // Issue 21: no primary is not no database.
        for reads in [Reads::Primary, Reads::PreferStandby, Reads::Any] {
            let policy = Policy { reads, ..PRIMARY };
            // The primary went down: writes wait for it, reads go to a standby.
            let d = decide(&seen("DSS"), writing_to(0), policy, Settled);
            assert_eq!(
                (d.choice.write, d.choice.waiting, d.choice.read),
                (None, Some(0), Some(1)),
                "{reads:?}"
            );
            // A lagging standby is passed over; the current read is kept while fit.
            let d = decide(&seen("DLS"), writing_to(0), policy, Settled);
            assert_eq!(d.choice.read, Some(2), "{reads:?}: lagging");
            let reading = Choice {
                read: Some(2),
                ..writing_to(0)
            };
            let d = decide(&seen("DSS"), reading, policy, Settled);
            assert_eq!(d.choice.read, Some(2), "{reads:?}: kept");
            // Nothing fit: nothing for reads either.
            let d = decide(&seen("DLD"), writing_to(0), policy, Settled);
            assert_eq!((d.choice.write, d.choice.read), (None, None), "{reads:?}");
            // A fenced endpoint takes neither writes nor reads.
            let mut fenced = seen("DPS");
            fenced[1].fenced = true;
            let d = decide(&fenced, writing_to(0), policy, Settled);
            assert_eq!(
                (d.choice.write, d.choice.read),
                (None, Some(2)),
                "{reads:?}"
            );
            fenced[2].health = Down;
            let d = decide(&fenced, writing_to(0), policy, Settled);
            assert_eq!((d.choice.write, d.choice.read), (None, None), "{reads:?}");
        }
        // With a write endpoint, reads = primary follows it again.
        let d = decide(&seen("PSS"), writing_to(0), PRIMARY, Settled);
        assert_eq!(d.choice.read, Some(0));
    }

    const PRIMARY: Policy = Policy {
        failback: Failback::Sticky,
        writes: Writes::Primary,
        reads: Reads::Primary,
    };

    fn writing_to(i: usize) -> Choice {
        Choice {
            write: Some(i),
            ..Choice::default()
        }
    }

    #[test]
    fn split_brain_is_noticed() {
        let d = decide(&seen("PPS"), writing_to(1), PRIMARY, Settled);
        assert_eq!(d.primaries, [0, 1]);
        let d = decide(&seen("PSS"), writing_to(0), PRIMARY, Settled);
        assert_eq!(d.primaries, [0]);
    }

    #[test]
    fn a_settling_agent_does_not_give_reads_to_the_first_standby_that_answered() {
        let read = |spec: &str, phase: Phase| {
            let policy = Policy {
                failback: Failback::Auto,
                reads: Reads::PreferStandby,
                ..PRIMARY
            };
            decide(&seen(spec), writing_to(0), policy, phase)
                .choice
                .read
        };
        // failover1 not heard from yet: reads wait on the primary, not failover2.
        assert_eq!(read("PUS", Settling), Some(0));
        assert_eq!(read("PSS", Settling), Some(1));
        // Settled: an endpoint still unknown is passed over.
        assert_eq!(read("PUS", Settled), Some(2));
    }

    #[test]
    fn read_policies() {
        let read = |spec: &str, current: Option<usize>, reads: Reads| {
            let current = Choice {
                read: current,
                ..writing_to(0)
            };
            let policy = Policy { reads, ..PRIMARY };
            decide(&seen(spec), current, policy, Settled).choice.read
        };
        assert_eq!(read("PSS", None, Reads::PreferStandby), Some(1));
        assert_eq!(
            read("PSS", Some(2), Reads::PreferStandby),
            Some(2),
            "sticky while fit"
        );
        assert_eq!(read("PDS", Some(1), Reads::PreferStandby), Some(2));
        assert_eq!(
            read("PDD", None, Reads::PreferStandby),
            Some(0),
            "no standby: the primary"
        );
        assert_eq!(
            read("PLS", None, Reads::PreferStandby),
            Some(2),
            "a lagging standby is passed over"
        );
        assert_eq!(
            read("PLS", Some(1), Reads::PreferStandby),
            Some(2),
            "and loses the reads it had"
        );
        assert_eq!(
            read("PLL", Some(1), Reads::PreferStandby),
            Some(0),
            "every standby lags: the primary"
        );
        assert_eq!(read("LSS", Some(0), Reads::Any), Some(1));
        assert_eq!(read("PSS", None, Reads::Any), Some(0));
        assert_eq!(read("DSS", Some(2), Reads::Any), Some(2));
        assert_eq!(read("PSS", Some(2), Reads::Primary), Some(0));
    }

    #[test]
    fn writes_any_a_fresh_choice_is_not_held_up_by_an_endpoint_that_is_down() {
        // Only the endpoint writes belong to waits out its tolerance; a fresh
        // agent whose first endpoint is already down chooses the next at once.
        let policy = Policy {
            writes: Writes::Any,
            ..PRIMARY
        };
        let mut s = seen("DS");
        s[0].given_up = false;
        let d = decide(&s, Choice::default(), policy, Settling);
        assert_eq!(d.choice.write, Some(1));
        // The owner down within its tolerance keeps the writes (unavailable).
        let d = decide(&s, writing_to(0), policy, Settling);
        assert_eq!((d.choice.write, d.choice.waiting), (None, Some(0)));
    }

    #[test]
    fn writes_any_ignores_roles() {
        let policy = Policy {
            writes: Writes::Any,
            ..PRIMARY
        };
        let d = decide(&seen("SPS"), Choice::default(), policy, Settled);
        assert_eq!(d.choice.write, Some(0));
    }
}
