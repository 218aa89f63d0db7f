//! The seqlock over the record: one writer, any number of readers that may only
//! read the memory (they map it `PROT_READ`).
//!
//! Every data word is an atomic and is accessed atomically: a seqlock that copies
//! the data with plain or volatile reads races with the writer, and a race on a
//! non-atomic location is undefined behaviour in the C11/Rust memory model even when
//! the sequence check later throws the copy away (Boehm, HPL-2012-68; RFC 3301).
//! The code is generic over the atomic type so that the very same functions run on
//! `core` atomics over the mapping and on loom's atomics in the model checker.

use core::sync::atomic::Ordering;

/// The operations the seqlock needs from a 64-bit atomic word.
pub trait Word {
    /// An atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// An atomic store.
    fn store(&self, value: u64, order: Ordering);
    /// A memory fence of the same family as the atomics (loom needs its own).
    fn fence(order: Ordering);
}

impl Word for core::sync::atomic::AtomicU64 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u64 {
        core::sync::atomic::AtomicU64::load(self, order)
    }
    #[inline(always)]
    fn store(&self, value: u64, order: Ordering) {
        core::sync::atomic::AtomicU64::store(self, value, order)
    }
    #[inline(always)]
    fn fence(order: Ordering) {
        core::sync::atomic::fence(order)
    }
}

#[cfg(loom)]
impl Word for loom::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        loom::sync::atomic::AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        loom::sync::atomic::AtomicU64::store(self, value, order)
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

/// The seqlock stayed busy (odd, or changing) for every allowed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contended;

/// One attempt at a consistent copy of `data`. `None` when a write was in progress
/// or completed during the copy; the caller retries.
#[inline(always)]
pub fn try_read<W: Word, const N: usize>(seq: &W, data: &[W; N]) -> Option<[u64; N]> {
    // Relaxed + fence(Acquire) rather than an acquire load: readers map the file
    // read-only, and only relaxed loads are defined on read-only memory. The fence
    // orders every load below after this one, pairing with the writer's final
    // Release store of `seq`.
    let s0 = seq.load(Ordering::Relaxed);
    W::fence(Ordering::Acquire);
    if s0 & 1 == 1 {
        return None;
    }
    let mut out = [0u64; N];
    for (o, w) in out.iter_mut().zip(data.iter()) {
        *o = w.load(Ordering::Relaxed);
    }
    // This fence orders the data loads above before the re-load of `seq` below. If
    // any of them saw a value stored after the writer's fence(Release), the writer's
    // odd sequence store is visible to the re-load, which then differs from s0.
    W::fence(Ordering::Acquire);
    let s1 = seq.load(Ordering::Relaxed);
    (s0 == s1).then_some(out)
}

/// Reads a consistent copy of `data`, retrying at most `max_retries` times.
/// Returns the copy and how many retries it took.
#[inline(always)]
pub fn read<W: Word, const N: usize>(
    seq: &W,
    data: &[W; N],
    max_retries: u32,
) -> Result<([u64; N], u32), Contended> {
    let mut retries = 0;
    loop {
        if let Some(v) = try_read(seq, data) {
            return Ok((v, retries));
        }
        if retries == max_retries {
            return Err(Contended);
        }
        retries += 1;
        core::hint::spin_loop();
    }
}

/// Publishes `values` into `data`. Only one writer may ever call this on a record.
#[inline]
pub fn write<W: Word, const N: usize>(seq: &W, data: &[W; N], values: &[u64; N]) {
    // The single writer is the only one to store `seq`, so a relaxed load sees its
    // own last store. `| 1` makes it odd; it already is if a previous writer was
    // killed mid-publication, and then it stays odd until this write completes.
    let odd = seq.load(Ordering::Relaxed) | 1;
    seq.store(odd, Ordering::Relaxed);
    // Orders the odd store before every data store below: a reader that sees new
    // data also sees the odd sequence (and retries).
    W::fence(Ordering::Release);
    for (w, &v) in data.iter().zip(values.iter()) {
        w.store(v, Ordering::Relaxed);
    }
    // Release: a reader that sees the even value s+2 sees every data store above.
    seq.store(odd.wrapping_add(1), Ordering::Release);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn odd_sequence_is_never_read() {
        let seq = AtomicU64::new(1);
        let data = [AtomicU64::new(7)];
        assert_eq!(try_read(&seq, &data), None);
        assert_eq!(read(&seq, &data, 3), Err(Contended));
        seq.store(2, Ordering::Relaxed);
        assert_eq!(read(&seq, &data, 3), Ok(([7], 0)));
    }

    /// A writer thread publishes records whose words all derive from one counter;
    /// reader threads check every copy they get. Runs natively and under Miri,
    /// whose data-race detector would flag any non-atomic access.
    #[test]
    fn threads_never_observe_a_torn_record() {
        const WORDS: usize = 4;
        let writes: u64 = if cfg!(miri) { 300 } else { 200_000 };
        let rec: Arc<(AtomicU64, [AtomicU64; WORDS])> = Arc::new((
            AtomicU64::new(0),
            std::array::from_fn(|_| AtomicU64::new(0)),
        ));
        let writer = {
            let rec = Arc::clone(&rec);
            std::thread::spawn(move || {
                for n in 1..=writes {
                    let v: [u64; WORDS] = std::array::from_fn(|i| n.wrapping_mul(i as u64 + 1));
                    write(&rec.0, &rec.1, &v);
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let rec = Arc::clone(&rec);
                std::thread::spawn(move || {
                    let mut last = 0;
                    loop {
                        if let Ok((v, _)) = read(&rec.0, &rec.1, 1000) {
                            for (i, w) in v.iter().enumerate() {
                                assert_eq!(*w, v[0].wrapping_mul(i as u64 + 1), "torn: {v:?}");
                            }
                            assert!(v[0] >= last, "went backwards: {} < {last}", v[0]);
                            last = v[0];
                            if last == writes {
                                return;
                            }
                        }
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    }
}
