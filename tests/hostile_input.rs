//! Hostile buffers never panic: random bytes, every truncation and random corruption of the
//! shared vectors, and random payloads inside valid envelopes.

use fleetgate::wire::{decode_standalone, json::RecordLine, EnvelopeWriter, StreamView};
use proptest::prelude::*;

fn vector_bins() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/frames");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Decode, and render as JSON when it decoded: neither may panic.
fn exercise(buf: Vec<u8>) {
    if let Ok(record) = decode_standalone(&buf, 0) {
        let _ = serde_json::to_string(&RecordLine::new(&record));
    }
}

#[test]
fn every_truncation_of_every_vector_is_handled() {
    for bin in vector_bins() {
        for len in 0..bin.len() {
            exercise(bin[..len].to_vec());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(buf);
    }

    #[test]
    fn corrupted_vectors_never_panic(
        which in 0usize..64,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let bins = vector_bins();
        let mut buf = bins[which % bins.len()].clone();
        if !buf.is_empty() {
            for (pos, byte) in flips {
                let i = pos % buf.len();
                buf[i] ^= byte;
            }
        }
        exercise(buf);
    }

    #[test]
    fn random_payloads_in_valid_envelopes_never_panic(
        topic in prop::sample::select(vec!["V", "alerts", "errors", "connectivity", "x"]),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut w = EnvelopeWriter::new();
        let frame = w.stream(b"tx", topic.as_bytes(), b"", &StreamView {
            created_at: 1,
            sender_id: b"vehicle_device.VIN",
            payload: &payload,
            device_type: b"vehicle_device",
            device_id: b"VIN",
            delivered_at_epoch_ms: 0,
        }).to_vec();
        exercise(frame);
    }
}
