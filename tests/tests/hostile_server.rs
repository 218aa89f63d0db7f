//! The postgres and mysql probes against hostile servers: a message header that
//! claims a gigabyte (or a MySQL packet of 16 MiB) must not size any
//! allocation, a server's error text must not reach the log as it was sent
//! (newlines, terminal escapes, any length), and replies that are no answer
//! (a bogus column count, a LOCAL INFILE request, rows without end) are
//! refused.
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

mod mysql {
    use super::LARGEST;
    use dbha_agent::config::{Check, Database, Secret, SslMode};
    use dbha_agent::probe::{probe, Failure};
    use dbha_tests::fakemysql::{column, eof, err, greeting, ok, row, FakeMysql, Peer};
    use dbha_tests::fakepg::database;
    use std::sync::atomic::Ordering;

    fn db(port: u16) -> Database {
        Database {
            user: "monitor".into(),
            password: Secret::new("pw"),
            sslmode: SslMode::Disable,
            mysql: Some(dbha_agent::probe::mysql::Settings {
                login: true,
                server_public_key: None,
            }),
            ..database(port, Check::Mysql, 2000)
        }
    }

    /// Logs the client in (any password), takes its query, then runs `then`.
    fn after_query(then: fn(&mut Peer)) -> FakeMysql<()> {
        FakeMysql::start(1, move |peer, _| {
            peer.send(&greeting("8.0.36", "mysql_native_password", false))
                .unwrap();
            peer.recv().unwrap();
            peer.send(&ok(false)).unwrap();
            peer.recv().unwrap();
            then(peer);
            peer.until_closed(std::time::Duration::from_secs(3));
        })
    }

    #[test]
    fn a_packet_claiming_16_mib_is_refused_before_anything_is_allocated_for_it() {
        let server = after_query(|peer| {
            // Length 0xffffff, sequence 1, then filler.
            let _ = peer.send_raw(&[0xff, 0xff, 0xff, 1]);
            let _ = peer.send_raw(&[b'x'; 64 * 1024]);
        });
        LARGEST.store(0, Ordering::Relaxed);
        let got = probe(&db(server.port));
        let largest = LARGEST.load(Ordering::Relaxed);
        match &got {
            Err(Failure::NotMysql(why)) => assert!(why.contains("max_allowed_packet"), "{why}"),
            other => panic!("expected not_mysql, got {other:?}"),
        }
        assert!(
            largest < 1 << 20,
            "the probe allocated {largest} bytes at once"
        );
        server.join();
    }

    #[test]
    fn server_error_text_reaches_the_verdict_escaped_and_bounded() {
        let server = after_query(|peer| {
            let text = format!("line one\nFAKE LOG LINE \x1b[31m{}", "y".repeat(5000));
            peer.send(&err(1105, "HY000", &text)).unwrap();
        });
        let got = probe(&db(server.port)).unwrap_err().to_string();
        assert!(!got.chars().any(char::is_control), "{got:?}");
        assert!(
            got.contains("1105 line one\\nFAKE LOG LINE \\u{1b}[31m"),
            "{got}"
        );
        assert!(got.len() <= 400, "{} bytes of server text", got.len());
        server.join();
    }

    #[test]
    fn replies_that_are_no_answer_are_refused() {
        // A column count of 2^40.
        let server = after_query(|peer| {
            peer.send(&[0xfc, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 1]).unwrap();
        });
        let e = probe(&db(server.port)).unwrap_err();
        assert!(e.to_string().contains("a bad column count"), "{e}");
        server.join();
        // A LOCAL INFILE request: the check sends no file.
        let server = after_query(|peer| {
            peer.send(b"\xfb/etc/passwd").unwrap();
        });
        let e = probe(&db(server.port)).unwrap_err();
        assert!(e.to_string().contains("LOCAL INFILE"), "{e}");
        server.join();
        // Rows without end: refused after a bounded number of packets.
        let server = after_query(|peer| {
            let _ = peer.send(&[2]);
            let _ = peer.send(&column("a"));
            let _ = peer.send(&column("b"));
            let _ = peer.send(&eof(false));
            for _ in 0..10_000 {
                if peer.send(&row(&[Some("1"), Some("1")])).is_err() {
                    return;
                }
            }
        });
        let e = probe(&db(server.port)).unwrap_err();
        assert!(e.to_string().contains("more than 4096 packets"), "{e}");
        server.join();
    }
}
