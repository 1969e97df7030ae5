//! The admin API's JSON bodies (site and watch) on arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = fleetgate::admin::site_from_json("fuzz-site", text, 250.0);
    if let Ok(spec) = serde_json::from_str::<fleetgate::rules::arrival::WatchSpec>(text) {
        let _ = spec.into_watch();
    }
});
