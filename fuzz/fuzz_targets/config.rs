//! The config parser and validator on arbitrary text.
//!
//! The files a config names are checked too (under a base directory that does not exist), but
//! not when `host` is a host name: that check asks the system's resolver, which is the network
//! (a fuzz input must run the same every time) and, when the answer is slow, leaves the
//! resolving thread running past the input, which LeakSanitizer reports as a leak
//! (`fuzz/corpus/config/host-name-leak.json`, found by CI).
#![no_main]
use fleetgate::config::{Checks, Config, ListenAddr};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::from_json(text, Path::new("fuzz.json")) {
        let listen = config.listen_addr();
        let checks = Checks {
            files: !matches!(listen, Ok(ListenAddr::Name { .. })),
            ..Checks::default()
        };
        let _ = config.validate_with(Path::new("/nonexistent-fuzz-base"), checks);
    }
});
