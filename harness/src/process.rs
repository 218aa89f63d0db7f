//! Child processes that never outlive their owner: stopped and reaped when the
//! owner drops them, also when a test panics.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::Child;
use std::time::{Duration, Instant};

/// How a child is stopped when its [`Children`] is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL at once.
    Kill,
    /// SIGTERM, so that it can clean up (an agent marks its state file
    /// "stopped"), then SIGKILL if it is still running after the grace time.
    Term(Duration),
}

/// Child processes stopped by their pid and reaped when dropped.
#[derive(Default)]
pub struct Children(Vec<(Child, Stop)>);

impl Children {
    /// Owns `c`, killed when dropped.
    pub fn push(&mut self, c: Child) -> &mut Child {
        self.push_with(c, Stop::Kill)
    }

    /// Owns `c`, stopped as `stop` says when dropped.
    pub fn push_with(&mut self, c: Child, stop: Stop) -> &mut Child {
        self.0.push((c, stop));
        &mut self.0.last_mut().expect("just pushed").0
    }

    /// The children, oldest first.
    pub fn get(&self, i: usize) -> Option<&Child> {
        self.0.get(i).map(|(c, _)| c)
    }

    /// Hands the children over (oldest first), for a caller that waits for their
    /// output itself.
    pub fn take(&mut self) -> Vec<Child> {
        self.0.drain(..).map(|(c, _)| c).collect()
    }

    /// The children, oldest first, still owned (and stopped on drop).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Child> {
        self.0.iter_mut().map(|(c, _)| c)
    }

    /// The newest child.
    pub fn last_mut(&mut self) -> Option<&mut Child> {
        self.0.last_mut().map(|(c, _)| c)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (c, stop) in &mut self.0 {
            if let Stop::Term(grace) = *stop {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
