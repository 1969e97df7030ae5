//! Payload decode + transforms + proto3 JSON for every topic; the first byte picks the topic.
#![no_main]
use fleetgate::wire::payload::decode_and_transform;
use fleetgate::wire::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    let topic = Topic::ALL[selector as usize % Topic::ALL.len()];
    if let Ok((decoded, bytes)) = decode_and_transform(topic, payload, "5YJ3E1EA7KF000001") {
        let _ = fleetgate::wire::json::payload_to_json(topic, &bytes);
        if let Some(p) = decoded.vehicle() {
            let engine = fleetgate::rules::Fleet::new(Default::default(), Vec::new());
            let _ = engine.on_vehicle_data("5YJ3E1EA7KF000001", p, 1_764_000_000);
        }
    }
});
