//! The reader on a file of arbitrary bytes: open (validation of the header, the
//! alias and address tables), then every read of the C and Rust APIs. Whatever the
//! bytes, an error or a snapshot, never a panic or an out-of-bounds access.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One file per fuzzing process, rewritten for each input.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("dbha-fuzz-state.{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("write the input file");
    let Ok(r) = dbha::Reader::open(path) else {
        return;
    };
    let _ = (r.write_endpoint(), r.read_endpoint());
    if let Ok(s) = r.snapshot() {
        let _ = (s.write_alias(), s.read_alias(), s.endpoint_count());
        let _ = (s.write_endpoint(), s.read_endpoint());
        for i in 0..70 {
            let _ = (s.last_probe_name(i), s.is_healthy(i), s.replica_lag(i));
        }
    }
});
