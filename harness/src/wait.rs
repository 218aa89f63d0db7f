//! The one polling loop: the demo, the tests and the benchmarks wait on a reader,
//! a log or a process through it, each with its own period and limit.

use std::time::{Duration, Instant};

/// Calls `f` every `every` until it returns `Some`, for at most `limit`; the
/// value and how long it took, or None when the limit passed first.
pub fn poll<T>(
    every: Duration,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(every);
    }
}
