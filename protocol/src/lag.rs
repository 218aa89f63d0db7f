//! The replication-lag area: for display (`dbha-agent status`), each endpoint's
//! last measured lag behind the primary and whether it is over the configured
//! limit; and the agent's memory of which endpoints are fenced, which outlives an
//! agent restart. Outside the seqlock, like the probe results: each word stands
//! alone.

use std::time::Duration;

/// Index of each word in an endpoint's slot.
pub mod word {
    /// The standby's replay delay in microseconds, plus one (0: not measured).
    pub const DELAY_US: usize = 0;
    /// Bytes of WAL the standby's replay is behind the primary, plus one (0: not
    /// measured).
    pub const BYTES: usize = 1;
    /// The [`super::flags`] bits.
    pub const FLAGS: usize = 2;
    /// The timeline the endpoint was on when last seen as a primary, plus one (0:
    /// never seen as a primary with its timeline).
    pub const TIMELINE: usize = 3;
}

/// Bits of a slot's flags word.
pub mod flags {
    /// Over `max_replica_lag` or `max_replica_lag_bytes` for `fall` probes: the
    /// standby takes no reads until `rise` probes within the limits.
    pub const LAGGING: u64 = 1 << 0;
    /// Fenced: the endpoint claimed to be primary beside the one writes went to,
    /// or on an older timeline than one already seen; it takes no writes until it
    /// is seen as a standby or an operator clears it (`dbha-agent unfence`).
    pub const FENCED: u64 = 1 << 1;
    /// The agent's verdict is down (`fall` failed probes). An endpoint neither
    /// healthy (the record's `health_mask`) nor DOWN has no verdict yet.
    pub const DOWN: u64 = 1 << 2;
}

/// One endpoint's replication lag as the agent last measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaLag {
    /// How far behind the standby's replay is in time, when it reported it.
    pub delay: Option<Duration>,
    /// How many bytes of WAL the standby's replay is behind the primary's last
    /// reported write position, when both are known.
    pub bytes: Option<u64>,
    /// Over a configured limit: out of the reads.
    pub lagging: bool,
}

impl ReplicaLag {
    /// The slot's words with this lag written over `slot`: the delay, the bytes
    /// and the LAGGING bit; the [`Fence`] bits stay as they are. Values too large
    /// for a word are stored as the largest one.
    pub fn onto(&self, slot: [u64; 4]) -> [u64; 4] {
        let plus_one = |v: Option<u64>| v.map_or(0, |v| v.saturating_add(1));
        let delay_us = self
            .delay
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut w = slot;
        w[word::DELAY_US] = plus_one(delay_us);
        w[word::BYTES] = plus_one(self.bytes);
        w[word::FLAGS] =
            (w[word::FLAGS] & !flags::LAGGING) | if self.lagging { flags::LAGGING } else { 0 };
        w
    }

    /// Decodes a slot's words; unknown flag bits and the fence are ignored.
    pub fn from_words(w: &[u64; 4]) -> ReplicaLag {
        let minus_one = |v: u64| v.checked_sub(1);
        ReplicaLag {
            delay: minus_one(w[word::DELAY_US]).map(Duration::from_micros),
            bytes: minus_one(w[word::BYTES]),
            lagging: w[word::FLAGS] & flags::LAGGING != 0,
        }
    }

    /// Nothing measured and not lagging (a primary, a down endpoint, or a file
    /// that has no lag area).
    pub fn is_empty(&self) -> bool {
        *self == ReplicaLag::default()
    }
}

/// What the agent remembers of an endpoint across its own restarts: whether it
/// is fenced, and the timeline it was on as a primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fence {
    /// Takes no writes (the [`flags::FENCED`] bit).
    pub fenced: bool,
    /// The endpoint's timeline when last seen as a primary.
    pub timeline: Option<u32>,
}

impl Fence {
    /// The slot's words with this fence written over `slot` (FENCED and the
    /// timeline); the lag stays as it is.
    pub fn onto(&self, slot: [u64; 4]) -> [u64; 4] {
        let mut w = slot;
        w[word::FLAGS] =
            (w[word::FLAGS] & !flags::FENCED) | if self.fenced { flags::FENCED } else { 0 };
        w[word::TIMELINE] = self.timeline.map_or(0, |t| u64::from(t) + 1);
        w
    }

    /// Decodes a slot's words; a timeline past `u32` reads as unknown.
    pub fn from_words(w: &[u64; 4]) -> Fence {
        Fence {
            fenced: w[word::FLAGS] & flags::FENCED != 0,
            timeline: w[word::TIMELINE]
                .checked_sub(1)
                .and_then(|t| u32::try_from(t).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_zero_means_not_measured() {
        assert_eq!(ReplicaLag::from_words(&[0; 4]), ReplicaLag::default());
        assert!(ReplicaLag::default().is_empty());
        let l = ReplicaLag {
            delay: Some(Duration::from_micros(1_500_000)),
            bytes: Some(0),
            lagging: true,
        };
        assert_eq!(l.onto([0; 4]), [1_500_001, 1, 1, 0]);
        assert_eq!(ReplicaLag::from_words(&l.onto([0; 4])), l);
        let zero = ReplicaLag {
            delay: Some(Duration::ZERO),
            bytes: None,
            lagging: false,
        };
        assert_eq!(ReplicaLag::from_words(&zero.onto([0; 4])), zero);
    }

    #[test]
    fn a_lag_and_a_fence_share_a_slot_without_overwriting_each_other() {
        let fence = Fence {
            fenced: true,
            timeline: Some(3),
        };
        let lag = ReplicaLag {
            delay: Some(Duration::from_micros(9)),
            bytes: None,
            lagging: true,
        };
        let w = lag.onto(fence.onto([0; 4]));
        assert_eq!(w, [10, 0, flags::LAGGING | flags::FENCED, 4]);
        assert_eq!(
            (Fence::from_words(&w), ReplicaLag::from_words(&w)),
            (fence, lag)
        );
        // Clearing one leaves the other.
        let w = ReplicaLag::default().onto(w);
        assert_eq!(Fence::from_words(&w), fence);
        let w = Fence::default().onto(lag.onto([0; 4]));
        assert_eq!(
            (Fence::from_words(&w), ReplicaLag::from_words(&w)),
            (Fence::default(), lag)
        );
        assert_eq!(Fence::from_words(&[0, 0, 0, u64::MAX]).timeline, None);
    }

    #[test]
    fn huge_values_saturate_and_unknown_bits_are_ignored() {
        let l = ReplicaLag {
            delay: Some(Duration::MAX),
            bytes: Some(u64::MAX),
            lagging: false,
        };
        let w = l.onto([0; 4]);
        assert_eq!(w[..2], [u64::MAX, u64::MAX]);
        let back = ReplicaLag::from_words(&[w[0], w[1], 0xF0, 7]);
        assert_eq!(back.bytes, Some(u64::MAX - 1));
        assert!(!back.lagging);
    }
}
