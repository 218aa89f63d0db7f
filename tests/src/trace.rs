//! What a reader sees through a live sequence: a thread reads the state file
//! every 200 µs and records each change of what an application would act on
//! (epoch, status, write and read alias, health mask), with when it saw it.

use dbha::{Reader, Status};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One read that differed from the one before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub at: Instant,
    pub epoch: u64,
    pub status: Status,
    pub write: Option<String>,
    pub read: Option<String>,
    pub health_mask: u64,
}

impl Seen {
    fn same(&self, o: &Seen) -> bool {
        (
            self.epoch,
            self.status,
            &self.write,
            &self.read,
            self.health_mask,
        ) == (o.epoch, o.status, &o.write, &o.read, o.health_mask)
    }
}

/// Everything a reader thread saw until [`Trace::finish`].
pub struct Trace {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Traced>,
}

/// What [`Trace::finish`] returns.
#[derive(Debug)]
pub struct Traced {
    /// Each change, in order.
    pub seen: Vec<Seen>,
    /// Reads whose epoch was lower than one seen before.
    pub backwards: u64,
    /// How many reads were made.
    pub reads: u64,
}

impl Traced {
    /// The write aliases seen, in order, without repeats.
    pub fn writes(&self) -> Vec<Option<&str>> {
        let mut out: Vec<Option<&str>> = Vec::new();
        for s in &self.seen {
            let w = s.write.as_deref();
            if out.last() != Some(&w) {
                out.push(w);
            }
        }
        out
    }

    /// The longest stretch during which the write alias was None.
    pub fn longest_without_writes(&self, end: Instant) -> Duration {
        let mut longest = Duration::ZERO;
        for (i, s) in self.seen.iter().enumerate() {
            if s.write.is_none() {
                let until = self.seen.get(i + 1).map_or(end, |n| n.at);
                longest = longest.max(until - s.at);
            }
        }
        longest
    }
}

impl Trace {
    /// Starts reading `state` (which must exist).
    pub fn start(state: &Path) -> Trace {
        let r = Reader::open(state).expect("the state file");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut t = Traced {
                seen: Vec::new(),
                backwards: 0,
                reads: 0,
            };
            let mut max_epoch = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(s) = r.snapshot() {
                    t.reads += 1;
                    t.backwards += u64::from(s.epoch < max_epoch);
                    max_epoch = max_epoch.max(s.epoch);
                    let now = Seen {
                        at: Instant::now(),
                        epoch: s.epoch,
                        status: s.status,
                        write: s.write_alias().map(String::from),
                        read: s.read_alias().map(String::from),
                        health_mask: s.health_mask,
                    };
                    if t.seen.last().is_none_or(|l| !l.same(&now)) {
                        t.seen.push(now);
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            t
        });
        Trace { stop, thread }
    }

    pub fn finish(self) -> Traced {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the trace thread")
    }
}
