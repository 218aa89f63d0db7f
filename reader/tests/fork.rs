//! A reader used by several threads, in a process that forks (gunicorn and uwsgi
//! fork workers from a master that may already read): the child must never
//! inherit a lock some thread of the parent held at the moment of the fork, or its
//! first lookup of an older generation, or its next reopen, waits forever.
//!
//! Alone in its test binary: it forks.

use dbha::Reader;
use dbha_protocol::writer::{Publication, Settings, StateFile};
use dbha_protocol::Endpoint;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn endpoints(names: &[&str]) -> Vec<Endpoint> {
    names
        .iter()
        .zip(5432u16..)
        .map(|(n, p)| Endpoint::new(*n, "127.0.0.1", p))
        .collect()
}

#[test]
fn a_child_forked_while_other_threads_read_older_generations_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let settings = Settings {
        stale_after_ns: 60_000_000_000,
        mode: 0o644,
    };
    let one = Publication {
        write_index: 0,
        read_index: 0,
        health_mask: 1,
        ..Publication::NOTHING
    };
    let (mut w, _) = StateFile::open(&path, &endpoints(&["a"]), settings, &one).unwrap();
    let r = Arc::new(Reader::open(&path).unwrap());
    // A second generation: the file replaced (new aliases), the reader following.
    w.reconfigure(&endpoints(&["a", "b"]), settings, &one)
        .unwrap();
    w.publish(&one);
    assert_eq!(r.snapshot().unwrap().generation, 2);
    // Threads looking up generation 1 all the time: the slow path of every
    // lookup that is not the current generation.
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (r, stop) = (r.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(r.alias_in(1, 0), Some("a"));
                }
            })
        })
        .collect();
    let (mut hung, mut forks) = (0, 0);
    // Until 200 children, or the third that waited (each costs 2 s).
    while forks < 200 && hung < 3 {
        forks += 1;
        // SAFETY: the child only reads through the reader (no lock the test
        // harness holds is needed: it allocates nothing the parent's threads
        // could hold the allocator's lock for, beyond what glibc's fork handlers
        // make safe) and leaves with _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SIGALRM ends a child that waits: the parent counts it.
                unsafe { nix::libc::alarm(2) };
                let ok = r.alias_in(1, 0) == Some("a") && r.alias_in(2, 1) == Some("b");
                unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) };
            }
            ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, 0) => {}
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGALRM, _) => hung += 1,
                other => panic!("child: {other:?}"),
            },
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        hung, 0,
        "{hung} of {forks} children waited for a lock held at fork"
    );
}
