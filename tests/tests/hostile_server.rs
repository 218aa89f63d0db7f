//! The postgres probe against hostile servers: a message header that claims a
//! gigabyte must not size any allocation, and a server's error text must not reach
//! the log as it was sent (newlines, terminal escapes, any length).
//!
//! This test binary counts every allocation (a global allocator that wraps the
//! system's), so that "no large allocation" is measured, not assumed.

use dbha_agent::config::{Check, Database};
use dbha_agent::probe::{probe, Failure};
use dbha_tests::fakepg::{database, FakePg, Reply};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest single allocation since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Tracking;

// SAFETY: every call is forwarded unchanged to the system allocator; the only
// addition is a relaxed atomic maximum, which allocates nothing.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn db(port: u16) -> Database {
    database(port, Check::Postgres, 2000)
}

#[test]
fn a_message_claiming_a_gigabyte_is_refused_before_anything_is_allocated_for_it() {
    let server = FakePg::start(Reply::HugeMessage);
    LARGEST.store(0, Ordering::Relaxed);
    let got = probe(&db(server.port));
    let largest = LARGEST.load(Ordering::Relaxed);
    match &got {
        Err(Failure::NotPostgres(why)) => assert!(why.contains("1073741824"), "{why}"),
        other => panic!("expected not_postgres, got {other:?}"),
    }
    assert!(
        largest < 1 << 20,
        "the probe allocated {largest} bytes at once for a hostile header"
    );
}

#[test]
fn server_error_text_reaches_the_verdict_escaped_and_bounded() {
    let server = FakePg::start(Reply::HostileError);
    let got = probe(&db(server.port));
    let Err(Failure::Rejected(text)) = &got else {
        panic!("expected rejected, got {got:?}");
    };
    assert!(
        !text.chars().any(char::is_control),
        "control characters reach the log: {text:?}"
    );
    assert!(text.contains("line one\\nFAKE LOG LINE"), "{text}");
    assert!(text.len() <= 600, "{} bytes of server text", text.len());
    assert!(text.contains("bytes"), "says it was cut: {text}");
}
