//! The config parser and validator on arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = fleetgate::config::Config::from_json(text, Path::new("fuzz.json")) {
        let _ = config.validate(Path::new("/nonexistent-fuzz-base"));
        let _ = config.listen_addr();
    }
});
