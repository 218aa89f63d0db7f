//! What etcd's JSON gateway sends, arbitrary: a range answer, then a watch
//! stream in pieces (and the range answer read as a refusal), each applied to the follower, then the Patroni keys read
//! from what it holds. An error that says what was wrong, never a panic, and
//! never an allocation sized by the input beyond the caps.
//!
//! The first input byte sets the piece size of the watch stream (1 to 256);
//! the rest is split at its first NUL byte: before it the range answer, after
//! it the watch stream.
#![no_main]

use dbha_agent::dcs::{cluster, etcd, follow::Follower};
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let (range, watch) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut f = Follower::new("/service/dbha/");
    // A refusal's text, as the log would say it: escaped and cut.
    assert!(etcd::error_text(range).len() <= 2048);
    if let Ok(r) = etcd::parse_range(range) {
        let _ = f.snapshot(&r, Instant::now());
        let _ = f.heartbeat("leader", &r, Instant::now());
    }
    let mut stream = etcd::Stream::default();
    for chunk in watch.chunks(usize::from(piece).max(1)) {
        match stream.push(chunk) {
            Ok(messages) => {
                for m in &messages {
                    if f.watched(m).is_err() {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let c = cluster(&f);
    let _ = c.config.window();
});
