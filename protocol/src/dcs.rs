//! The DCS area: for display (`dbha-agent status` and `watch`), what the agent
//! knows of the distributed configuration store it follows (Patroni's etcd):
//! whether it is connected, the revision applied, the leader and the database
//! it matched, when the leader was last confirmed, and why writes go to no
//! endpoint when they do. Sixteen 64-bit words under a seqlock of their own
//! (word 0), so that the leader's name is never read torn; not part of the
//! decision, which the record alone carries.

use crate::NONE;
use std::time::Duration;

/// Index of each word in the area (word 0 is the area's own sequence word).
pub mod word {
    /// The [`super::flags`] bits.
    pub const FLAGS: usize = 1;
    /// The store's revision the agent last applied (0: none yet).
    pub const REVISION: usize = 2;
    /// Full reads after a break (a watch that ended, a heartbeat that failed),
    /// since the agent started.
    pub const RESYNCS: usize = 3;
    /// `CLOCK_MONOTONIC` of the last confirmation of the leader, in ns (0:
    /// never confirmed).
    pub const CONFIRMED_MONO_NS: usize = 4;
    /// How long a confirmation lasts (Patroni's `ttl - loop_wait`), in ns (0:
    /// not known yet).
    pub const WINDOW_NS: usize = 5;
    /// The endpoint the leader matched, in the low 32 bits; `NONE` when there
    /// is no leader or it matches no endpoint.
    pub const LEADER_INDEX: usize = 6;
    /// Why writes go to no endpoint under the DCS: a [`super::no_writes`] kind
    /// (0: they do not, or no verdict).
    pub const NO_WRITES: usize = 7;
    /// The leader's member name: UTF-8, NUL-padded, in words 8 to 15 (at most
    /// 63 bytes, then a NUL).
    pub const NAME: usize = 8;
}

/// Size of the leader name field, in bytes (its terminating NUL included).
pub const NAME_BYTES: usize = 64;

/// Bits of the area's flags word.
pub mod flags {
    /// The agent follows a DCS (`[dcs]` is configured). An area without it
    /// says nothing: the other words are zero.
    pub const FOLLOWING: u64 = 1 << 0;
    /// Connected: everything read, the watch in place, heartbeats answered.
    pub const CONNECTED: u64 = 1 << 1;
    /// etcd lost past the window and Patroni's `failsafe_mode` on: writes go
    /// to the single member whose `/primary` answers 200.
    pub const FAILSAFE: u64 = 1 << 2;
}

/// Why writes go to no endpoint under the DCS (the [`word::NO_WRITES`] word).
pub mod no_writes {
    /// Writes are not withheld by the DCS (or there is no verdict yet).
    pub const NONE: u8 = 0;
    /// The leader was never confirmed, or not within the window.
    pub const UNCONFIRMED: u8 = 1;
    /// No leader key.
    pub const NO_LEADER: u8 = 2;
    /// The leader names a member that has no (parsable) member key.
    pub const UNKNOWN_MEMBER: u8 = 3;
    /// The leader matches no configured database (or more than one).
    pub const UNMATCHED: u8 = 4;
    /// The leader is not a primary yet.
    pub const NOT_PROMOTED: u8 = 5;
    /// This host's probes do not see the leader up.
    pub const UNREACHABLE: u8 = 6;
    /// The leader's endpoint is fenced.
    pub const FENCED: u8 = 7;
    /// The leader was seen down after its last confirmation (restarted).
    pub const RESTARTED: u8 = 8;
    /// Another endpoint is seen as a primary beside the leader.
    pub const OTHER_PRIMARY: u8 = 9;

    /// The stable name of a kind (as `dbha-agent status` prints it); "unknown"
    /// for a number this version does not know.
    pub fn name(kind: u8) -> &'static str {
        match kind {
            NONE => "none",
            UNCONFIRMED => "unconfirmed",
            NO_LEADER => "no_leader",
            UNKNOWN_MEMBER => "unknown_member",
            UNMATCHED => "unmatched",
            NOT_PROMOTED => "not_promoted",
            UNREACHABLE => "unreachable",
            FENCED => "fenced",
            RESTARTED => "restarted",
            OTHER_PRIMARY => "other_primary",
            _ => "unknown",
        }
    }
}

/// What the DCS area says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dcs {
    /// Everything read, the watch in place, heartbeats answered.
    pub connected: bool,
    /// Writes are on the failsafe fallback (etcd lost, `failsafe_mode` on).
    pub failsafe: bool,
    /// The revision applied (0: none yet).
    pub revision: u64,
    /// Full reads after a break, since the agent started.
    pub resyncs: u64,
    /// `CLOCK_MONOTONIC` of the last confirmation, ns; None: never confirmed.
    pub confirmed_mono_ns: Option<u64>,
    /// How long a confirmation lasts; None: not known yet.
    pub window: Option<Duration>,
    /// The leader's member name, cut to 63 bytes; None: no leader key.
    pub leader: Option<String>,
    /// The endpoint the leader matched.
    pub leader_index: Option<u32>,
    /// A [`no_writes`] kind.
    pub no_writes: u8,
}

impl Dcs {
    /// The area's data words (words 1 to 15), FOLLOWING set.
    pub fn to_words(&self) -> [u64; 15] {
        let mut w = [0u64; 16];
        w[word::FLAGS] = flags::FOLLOWING
            | if self.connected { flags::CONNECTED } else { 0 }
            | if self.failsafe { flags::FAILSAFE } else { 0 };
        w[word::REVISION] = self.revision;
        w[word::RESYNCS] = self.resyncs;
        w[word::CONFIRMED_MONO_NS] = self.confirmed_mono_ns.unwrap_or(0);
        w[word::WINDOW_NS] = self
            .window
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        w[word::LEADER_INDEX] = u64::from(self.leader_index.unwrap_or(NONE));
        w[word::NO_WRITES] = u64::from(self.no_writes);
        let mut name = [0u8; NAME_BYTES];
        if let Some(l) = &self.leader {
            let cut = cut(l, NAME_BYTES - 1);
            name[..cut.len()].copy_from_slice(cut.as_bytes());
        }
        for (i, chunk) in name.chunks_exact(8).enumerate() {
            w[word::NAME + i] = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        std::array::from_fn(|i| w[i + 1])
    }

    /// Decodes the data words (words 1 to 15); None when FOLLOWING is not set
    /// (the agent follows no DCS, or the file predates the area). A name that
    /// is not UTF-8 is shown with replacement characters; an index that does
    /// not fit in 32 bits is none.
    pub fn from_words(d: &[u64; 15]) -> Option<Dcs> {
        let w = |k: usize| d[k - 1];
        let f = w(word::FLAGS);
        if f & flags::FOLLOWING == 0 {
            return None;
        }
        let mut name = [0u8; NAME_BYTES];
        for i in 0..NAME_BYTES / 8 {
            name[i * 8..i * 8 + 8].copy_from_slice(&w(word::NAME + i).to_ne_bytes());
        }
        let len = name.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
        let leader = (len > 0).then(|| String::from_utf8_lossy(&name[..len]).into_owned());
        let index = u32::try_from(w(word::LEADER_INDEX))
            .ok()
            .filter(|&i| i != NONE);
        Some(Dcs {
            connected: f & flags::CONNECTED != 0,
            failsafe: f & flags::FAILSAFE != 0,
            revision: w(word::REVISION),
            resyncs: w(word::RESYNCS),
            confirmed_mono_ns: Some(w(word::CONFIRMED_MONO_NS)).filter(|&t| t != 0),
            window: Some(w(word::WINDOW_NS))
                .filter(|&n| n != 0)
                .map(Duration::from_nanos),
            leader,
            leader_index: index,
            no_writes: u8::try_from(w(word::NO_WRITES)).unwrap_or(u8::MAX),
        })
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary and holds no NUL.
fn cut(s: &str, max: usize) -> &str {
    let s = s.split('\0').next().unwrap_or("");
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_round_trips_and_cuts_a_long_name_on_a_character() {
        let d = Dcs {
            connected: true,
            failsafe: false,
            revision: 1234,
            resyncs: 3,
            confirmed_mono_ns: Some(99),
            window: Some(Duration::from_secs(8)),
            leader: Some("pg1".into()),
            leader_index: Some(2),
            no_writes: no_writes::NONE,
        };
        assert_eq!(Dcs::from_words(&d.to_words()), Some(d.clone()));
        let long = Dcs {
            leader: Some("é".repeat(40)),
            leader_index: None,
            ..d
        };
        let back = Dcs::from_words(&long.to_words()).unwrap();
        assert_eq!(back.leader.unwrap(), "é".repeat(31));
        assert_eq!(back.leader_index, None);
        // No FOLLOWING bit: nothing is said.
        assert_eq!(Dcs::from_words(&[0; 15]), None);
        let mut odd = Dcs::default().to_words();
        odd[word::LEADER_INDEX - 1] = u64::MAX;
        odd[word::NO_WRITES - 1] = 300;
        let back = Dcs::from_words(&odd).unwrap();
        assert_eq!((back.leader_index, back.no_writes), (None, u8::MAX));
        assert_eq!(no_writes::name(back.no_writes), "unknown");
        assert_eq!(no_writes::name(no_writes::OTHER_PRIMARY), "other_primary");
    }
}
