//! The reader's clock: `CLOCK_MONOTONIC_COARSE`, answered by the vDSO without a
//! system call, a few nanoseconds a read. Its resolution (one kernel tick, 1 to 10 ms)
//! is far finer than any staleness threshold.

use nix::time::{clock_gettime, ClockId};

#[inline(always)]
pub(crate) fn coarse_monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        // Cannot fail for this clock on Linux; if it did, report the state stale.
        .unwrap_or(u64::MAX)
}
