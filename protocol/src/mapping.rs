//! The one place where bytes of a mapped state file become atomic words: the
//! record (sequence word and data words), the probe-results area and the
//! replication-lag slots. The writer,
//! the reader, the stress test and the benchmarks all go through here.
//!
//! Every process that maps a state file accesses these bytes only as aligned
//! 64-bit atomics (LAYOUT.md), so handing out `&AtomicU64` into a mapping is
//! sound: shared and read-only mappings alike (relaxed 8-byte atomic loads are
//! defined on read-only memory on the 64-bit targets dbha supports).

use crate::{DATA_WORDS, RECORD_WORDS};
use memmap2::MmapRaw;
use std::sync::atomic::AtomicU64;

/// `N` atomic 64-bit words at byte `offset` of `map`, or None when they are not
/// wholly inside the mapping or `offset` is not a multiple of 8.
#[inline(always)]
pub fn words<const N: usize>(map: &MmapRaw, offset: usize) -> Option<&[AtomicU64; N]> {
    let end = offset.checked_add(N.checked_mul(8)?)?;
    if !offset.is_multiple_of(8) || end > map.len() {
        return None;
    }
    // SAFETY: the N words are inside the mapping (checked above) and 8-byte aligned
    // (a mapping starts on a page boundary and `offset` is a multiple of 8). Every
    // process accesses these bytes only atomically, 8 bytes at a time (module
    // docs), and the returned reference borrows `map`, so it cannot outlive the
    // mapping.
    Some(unsafe { &*(map.as_ptr().add(offset) as *const [AtomicU64; N]) })
}

/// The record at byte `offset` of `map`: its sequence word and data words; None
/// when it is not inside the mapping or not 8-byte aligned.
#[inline(always)]
pub fn record(map: &MmapRaw, offset: usize) -> Option<(&AtomicU64, &[AtomicU64; DATA_WORDS])> {
    let all: &[AtomicU64; RECORD_WORDS] = words(map, offset)?;
    let (seq, data) = all.split_first()?;
    Some((seq, data.try_into().ok()?))
}

/// The 64-byte probe-results area at byte `offset` of `map` (eight words, one
/// byte per endpoint); None when it is not inside the mapping or not aligned.
#[inline(always)]
pub fn probe_results(map: &MmapRaw, offset: usize) -> Option<&[AtomicU64; 8]> {
    words(map, offset)
}

/// Endpoint `index`'s four-word slot of the replication-lag area at byte `offset`
/// of `map`; None when it is not inside the mapping or not aligned.
#[inline(always)]
pub fn lag_slot(map: &MmapRaw, offset: usize, index: usize) -> Option<&[AtomicU64; 4]> {
    let at = index
        .checked_mul(crate::LAG_WIDTH as usize)?
        .checked_add(offset)?;
    words(map, at)
}

/// The DCS area at byte `offset` of `map`: its sequence word and 15 data words
/// (the record's shape); None when it is not inside the mapping or not aligned.
#[inline(always)]
pub fn dcs(map: &MmapRaw, offset: usize) -> Option<(&AtomicU64, &[AtomicU64; DATA_WORDS])> {
    record(map, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_outside_the_mapping_or_unaligned_are_refused() {
        let map = memmap2::MmapOptions::new().len(4096).map_anon().unwrap();
        let raw = MmapRaw::from(map);
        assert!(record(&raw, 128).is_some());
        assert!(record(&raw, 4096 - 128).is_some());
        assert!(record(&raw, 4096 - 120).is_none());
        assert!(record(&raw, 132).is_none());
        assert!(probe_results(&raw, usize::MAX - 7).is_none());
        assert!(lag_slot(&raw, 4096 - 64, 1).is_some());
        assert!(lag_slot(&raw, 4096 - 64, 2).is_none());
        assert!(lag_slot(&raw, 8, usize::MAX).is_none());
        assert!(words::<1>(&raw, 4088).is_some());
        assert!(words::<1>(&raw, 4096).is_none());
    }
}
