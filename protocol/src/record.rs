//! The record's words, decoded, and the status rule every reader applies.

use crate::{flags, DATA_WORDS, NONE};

/// Index of each data word in the array that follows the sequence word (the data
/// word at index `i` sits at record offset `8 * (i + 1)`).
pub mod word {
    /// The decision's epoch.
    pub const EPOCH: usize = 0;
    /// The writer's CLOCK_MONOTONIC at its last publication, ns.
    pub const HEARTBEAT_MONO_NS: usize = 1;
    /// The same moment on the wall clock, ns since the Unix epoch.
    pub const HEARTBEAT_WALL_NS: usize = 2;
    /// Index of the write endpoint, or NONE.
    pub const WRITE_INDEX: usize = 3;
    /// Index of the read endpoint, or NONE.
    pub const READ_INDEX: usize = 4;
    /// Bit i: endpoint i is healthy.
    pub const HEALTH_MASK: usize = 5;
    /// Bit i: endpoint i was seen as a primary.
    pub const PRIMARY_MASK: usize = 6;
    /// Bit i: endpoint i was seen as a standby.
    pub const STANDBY_MASK: usize = 7;
    /// The [`crate::flags`] bits.
    pub const FLAGS: usize = 8;
    /// The writer's staleness threshold, ns.
    pub const STALE_AFTER_NS: usize = 9;
    /// Process id of the writer.
    pub const WRITER_PID: usize = 10;
    /// Goes up each time the writer applies a configuration.
    pub const CONFIG_GENERATION: usize = 11;
}

/// What a reader concludes from a consistent copy of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Status {
    /// The agent is alive and names a database to use.
    Active = 0,
    /// The agent is alive and no database is fit for writes or reads: the app
    /// falls back per its own policy.
    NoHealthyDatabase = 1,
    /// The heartbeat is older than `stale_after`: the agent is dead or wedged.
    Stale = 2,
    /// The agent stopped cleanly.
    AgentStopped = 3,
    /// The agent is alive and no database takes writes, but one is fit for
    /// reads: the app serves reads there and refuses writes (a failover window).
    /// Numbered after the others, so that a program that only knows 0 to 3 and
    /// checks for `Active` does not take it for active; a reader that predates
    /// it sees such a record as `NoHealthyDatabase`.
    ReadOnly = 4,
}

impl Status {
    /// The stable name: as `dbha-agent status`, the metrics, the C ABI's
    /// `DBHA_STATUS_*` (lowercased) and the Python package spell it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::NoHealthyDatabase => "no_healthy_database",
            Status::Stale => "stale",
            Status::AgentStopped => "agent_stopped",
            Status::ReadOnly => "read_only",
        }
    }

    /// Writes have an endpoint: `Active`.
    pub fn writes(self) -> bool {
        self == Status::Active
    }

    /// Reads have an endpoint: `Active` or `ReadOnly`.
    pub fn reads(self) -> bool {
        matches!(self, Status::Active | Status::ReadOnly)
    }

    /// The agent is alive and deciding (whatever it decided): not stale, not
    /// stopped.
    pub fn live(self) -> bool {
        matches!(
            self,
            Status::Active | Status::ReadOnly | Status::NoHealthyDatabase
        )
    }
}

/// A consistent copy of the record's data words, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordValues {
    /// Goes up by one each time the write or read index changes.
    pub epoch: u64,
    /// The writer's CLOCK_MONOTONIC at its last publication, ns.
    pub heartbeat_mono_ns: u64,
    /// The same moment on the wall clock (display only), ns since the Unix epoch.
    pub heartbeat_wall_ns: u64,
    /// Index of the write endpoint, or [`crate::NONE`].
    pub write_index: u32,
    /// Index of the read endpoint, or [`crate::NONE`].
    pub read_index: u32,
    /// Bit i: endpoint i is healthy.
    pub health_mask: u64,
    /// Bit i: endpoint i was seen as a primary.
    pub primary_mask: u64,
    /// Bit i: endpoint i was seen as a standby.
    pub standby_mask: u64,
    /// The [`crate::flags`] bits.
    pub flags: u64,
    /// Readers call a heartbeat older than this stale, ns.
    pub stale_after_ns: u64,
    /// Process id of the writer.
    pub writer_pid: u32,
    /// Goes up each time the writer applies a configuration.
    pub config_generation: u64,
}

/// Index words hold a `u32` in the low half; anything else is read as [`NONE`].
fn index_of(w: u64) -> u32 {
    u32::try_from(w).unwrap_or(NONE)
}

impl RecordValues {
    /// These values with every index that is not below `endpoint_count` read as
    /// [`NONE`], as LAYOUT.md prescribes: no index ever names an endpoint the
    /// file does not have.
    pub fn within(mut self, endpoint_count: usize) -> RecordValues {
        for i in [&mut self.write_index, &mut self.read_index] {
            if *i as usize >= endpoint_count {
                *i = NONE;
            }
        }
        self
    }

    /// Decodes the data words (an index that does not fit 32 bits reads as NONE).
    pub fn from_words(w: &[u64; DATA_WORDS]) -> RecordValues {
        RecordValues {
            epoch: w[word::EPOCH],
            heartbeat_mono_ns: w[word::HEARTBEAT_MONO_NS],
            heartbeat_wall_ns: w[word::HEARTBEAT_WALL_NS],
            write_index: index_of(w[word::WRITE_INDEX]),
            read_index: index_of(w[word::READ_INDEX]),
            health_mask: w[word::HEALTH_MASK],
            primary_mask: w[word::PRIMARY_MASK],
            standby_mask: w[word::STANDBY_MASK],
            flags: w[word::FLAGS],
            stale_after_ns: w[word::STALE_AFTER_NS],
            writer_pid: u32::try_from(w[word::WRITER_PID]).unwrap_or(0),
            config_generation: w[word::CONFIG_GENERATION],
        }
    }

    /// Encodes the values as the record's data words.
    pub fn to_words(&self) -> [u64; DATA_WORDS] {
        let mut w = [0u64; DATA_WORDS];
        w[word::EPOCH] = self.epoch;
        w[word::HEARTBEAT_MONO_NS] = self.heartbeat_mono_ns;
        w[word::HEARTBEAT_WALL_NS] = self.heartbeat_wall_ns;
        w[word::WRITE_INDEX] = u64::from(self.write_index);
        w[word::READ_INDEX] = u64::from(self.read_index);
        w[word::HEALTH_MASK] = self.health_mask;
        w[word::PRIMARY_MASK] = self.primary_mask;
        w[word::STANDBY_MASK] = self.standby_mask;
        w[word::FLAGS] = self.flags;
        w[word::STALE_AFTER_NS] = self.stale_after_ns;
        w[word::WRITER_PID] = u64::from(self.writer_pid);
        w[word::CONFIG_GENERATION] = self.config_generation;
        w
    }

    /// Heartbeat age at monotonic time `now_mono_ns` (0 if the heartbeat is ahead,
    /// which a coarse clock can make happen by up to one tick).
    pub fn heartbeat_age_ns(&self, now_mono_ns: u64) -> u64 {
        now_mono_ns.saturating_sub(self.heartbeat_mono_ns)
    }

    /// The status rule of LAYOUT.md, in its order: stopped, then stale, then the
    /// write index, then the read index. A heartbeat more than `stale_after` ahead of `now` is stale too:
    /// it was written before a reboot restarted the monotonic clock (a coarse clock
    /// behind by a tick is far from that). Indexes are taken as they are: a reader
    /// that knows the file's endpoint count applies [`RecordValues::within`] first.
    pub fn status(&self, now_mono_ns: u64) -> Status {
        if self.flags & flags::STOPPED != 0 {
            Status::AgentStopped
        } else if self.heartbeat_age_ns(now_mono_ns) > self.stale_after_ns
            || self.heartbeat_mono_ns.saturating_sub(now_mono_ns) > self.stale_after_ns
        {
            Status::Stale
        } else if self.write_index == NONE && self.read_index == NONE {
            Status::NoHealthyDatabase
        } else if self.write_index == NONE {
            Status::ReadOnly
        } else {
            Status::Active
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(write_index: u32) -> RecordValues {
        RecordValues {
            heartbeat_mono_ns: 1_000,
            stale_after_ns: 500,
            write_index,
            read_index: write_index,
            ..RecordValues::default()
        }
    }

    #[test]
    fn words_round_trip() {
        let v = RecordValues {
            epoch: 9,
            write_index: 2,
            read_index: NONE,
            flags: flags::CONFLICT,
            writer_pid: 77,
            ..live(2)
        };
        assert_eq!(RecordValues::from_words(&v.to_words()), v);
    }

    #[test]
    fn status_rule_order() {
        assert_eq!(live(0).status(1_200), Status::Active);
        assert_eq!(live(0).status(1_500), Status::Active);
        assert_eq!(live(0).status(1_501), Status::Stale);
        assert_eq!(live(NONE).status(1_200), Status::NoHealthyDatabase);
        assert_eq!(live(NONE).status(9_999), Status::Stale);
        // Reads without writes: a failover window.
        let reads_only = RecordValues {
            read_index: 1,
            ..live(NONE)
        };
        assert_eq!(reads_only.status(1_200), Status::ReadOnly);
        assert_eq!(reads_only.status(9_999), Status::Stale);
        assert_eq!(
            RecordValues {
                flags: flags::STOPPED,
                ..reads_only
            }
            .status(1_200),
            Status::AgentStopped
        );
        let stopped = RecordValues {
            flags: flags::STOPPED,
            ..live(0)
        };
        assert_eq!(stopped.status(9_999), Status::AgentStopped);
        // A coarse clock slightly behind the heartbeat is not "in the future".
        assert_eq!(live(0).status(900), Status::Active);
    }

    #[test]
    fn a_heartbeat_from_before_a_reboot_is_stale() {
        // Written at 1,000 ns of the previous boot's clock; this boot's is at 400.
        assert_eq!(live(0).status(500), Status::Active);
        assert_eq!(live(0).status(499), Status::Stale);
        assert_eq!(live(0).status(0), Status::Stale);
    }

    #[test]
    fn an_index_past_the_endpoints_reads_as_none() {
        let v = RecordValues {
            read_index: 2,
            ..live(3)
        };
        let w = v.within(3);
        assert_eq!((w.write_index, w.read_index), (NONE, 2));
        assert_eq!(w.status(1_000), Status::ReadOnly);
        let both = v.within(2);
        assert_eq!((both.write_index, both.read_index), (NONE, NONE));
        assert_eq!(both.status(1_000), Status::NoHealthyDatabase);
        assert_eq!(v.within(4), v);
    }

    #[test]
    fn an_index_word_above_u32_reads_as_none() {
        let mut w = live(0).to_words();
        w[word::WRITE_INDEX] = 1 << 40;
        assert_eq!(RecordValues::from_words(&w).write_index, NONE);
    }
}
