//! The replication-lag area: for display (`dbha-agent status`), each endpoint's
//! last measured lag behind the primary and whether it is over the configured
//! limit. Outside the seqlock, like the probe results: each word stands alone.

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
}

/// Bits of a slot's flags word.
pub mod flags {
    /// Over `max_replica_lag` or `max_replica_lag_bytes` for `fall` probes: the
    /// standby takes no reads until `rise` probes within the limits.
    pub const LAGGING: u64 = 1 << 0;
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
    /// The slot's four words (the last is reserved and zero). Values too large
    /// for a word are stored as the largest one.
    pub fn to_words(&self) -> [u64; 4] {
        let plus_one = |v: Option<u64>| v.map_or(0, |v| v.saturating_add(1));
        let delay_us = self
            .delay
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut w = [0u64; 4];
        w[word::DELAY_US] = plus_one(delay_us);
        w[word::BYTES] = plus_one(self.bytes);
        w[word::FLAGS] = if self.lagging { flags::LAGGING } else { 0 };
        w
    }

    /// Decodes a slot's words; unknown flag bits and the reserved word are ignored.
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
        assert_eq!(l.to_words(), [1_500_001, 1, 1, 0]);
        assert_eq!(ReplicaLag::from_words(&l.to_words()), l);
        let zero = ReplicaLag {
            delay: Some(Duration::ZERO),
            bytes: None,
            lagging: false,
        };
        assert_eq!(ReplicaLag::from_words(&zero.to_words()), zero);
    }

    #[test]
    fn huge_values_saturate_and_unknown_bits_are_ignored() {
        let l = ReplicaLag {
            delay: Some(Duration::MAX),
            bytes: Some(u64::MAX),
            lagging: false,
        };
        let w = l.to_words();
        assert_eq!(w[..2], [u64::MAX, u64::MAX]);
        let back = ReplicaLag::from_words(&[w[0], w[1], 0xF0, 7]);
        assert_eq!(back.bytes, Some(u64::MAX - 1));
        assert!(!back.lagging);
    }
}
