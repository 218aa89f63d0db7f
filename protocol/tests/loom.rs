//! Model check of the seqlock with loom: every interleaving (up to the preemption
//! bound) of one writer publishing while a reader reads, on the same generic code
//! the agent and readers run. A torn copy (words from two publications) fails it.
//!
//! CI runs it with loom's preemption bound at 2 (a few seconds):
//!     RUSTFLAGS="--cfg loom" cargo test -p dbha-protocol --test loom --release
//! The full-size run raises the bound to 3 (under a minute on 2 cores):
//!     LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" \
//!         cargo test -p dbha-protocol --test loom --release
//! (Two reader threads besides the main one, or a fourth word, take longer than ten
//! minutes at bound 2.)
#![cfg(loom)]

use dbha_protocol::seqlock;
use loom::sync::atomic::AtomicU64;
use loom::sync::Arc;

struct Record<const N: usize> {
    seq: AtomicU64,
    data: [AtomicU64; N],
}

/// Publication `n` stores `n * (i + 1)` in word `i`: a copy is consistent exactly
/// when every word agrees with word 0.
fn check<const N: usize>(v: &[u64; N]) {
    for (i, w) in v.iter().enumerate() {
        assert_eq!(*w, v[0] * (i as u64 + 1), "torn read: {v:?}");
    }
}

fn model<const N: usize>(publications: u64, readers: usize) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(move || {
        let rec = Arc::new(Record::<N> {
            seq: AtomicU64::new(0),
            data: std::array::from_fn(|_| AtomicU64::new(0)),
        });
        let writer = {
            let rec = rec.clone();
            loom::thread::spawn(move || {
                for n in 1..=publications {
                    let v: [u64; N] = std::array::from_fn(|i| n * (i as u64 + 1));
                    seqlock::write(&rec.seq, &rec.data, &v);
                }
            })
        };
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let rec = rec.clone();
                loom::thread::spawn(move || {
                    if let Some(v) = seqlock::try_read(&rec.seq, &rec.data) {
                        check(&v);
                    }
                })
            })
            .collect();
        if let Some(v) = seqlock::try_read(&rec.seq, &rec.data) {
            check(&v);
        }
        writer.join().unwrap();
        for h in handles {
            h.join().unwrap();
        }
        // After the writer is done, a read succeeds and sees the last publication.
        let (v, _) = seqlock::read(&rec.seq, &rec.data, 0).expect("quiescent read");
        assert_eq!(v[0], publications);
        check(&v);
    });
}

#[test]
fn no_torn_read_between_one_writer_and_readers() {
    // Three words, two publications, one reader thread besides the main thread.
    model::<3>(2, 1);
}
