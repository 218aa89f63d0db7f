//! The mysql check's first packet from arbitrary bytes: framed in pieces (as
//! reads deliver them), then judged. A verdict, never a panic, and never an
//! allocation sized by the server beyond the cap.
//!
//! The first input byte sets the piece size (1 to 256); the rest is what the
//! server sends.
#![no_main]

use dbha_agent::probe::mysql::{judge, Framer, MAX_GREETING};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let mut f = Framer::default();
    for chunk in rest.chunks(usize::from(piece) + 1) {
        match f.push(chunk) {
            Ok(Some(payload)) => {
                assert!(payload.len() <= MAX_GREETING);
                if let Err(e) = judge(&payload) {
                    // Server text is escaped and cut in what the log says.
                    assert!(e.to_string().len() < 1024);
                }
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
    let _ = f.ended();
});
