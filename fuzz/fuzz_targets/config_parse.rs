//! The configuration parser on arbitrary text: a located error or a configuration,
//! never a panic (spans at any offset, any value in any key).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = match dbha_agent::config::Config::parse(std::path::Path::new("fuzz.toml"), text) {
            Ok(c) => c.to_string(),
            Err(e) => e.to_string(),
        };
    }
});
