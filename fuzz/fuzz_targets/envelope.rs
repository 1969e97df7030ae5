//! The envelope reader and frame decode on arbitrary websocket messages.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fleetgate::wire::read_envelope(data);
    if let Ok(record) = fleetgate::wire::decode_standalone(data, 0) {
        let _ = serde_json::to_vec(&fleetgate::wire::json::RecordLine::new(&record));
    }
});
