//! Every shared test vector decodes to its truth (after the reference transforms), and every
//! refusal is refused with the expected kind; the `decode` binary reports the same.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleetgate::wire::{decode_standalone, json::RecordLine};
use serde_json::Value;

fn frames_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/frames")
}

fn vectors() -> Vec<(String, Vec<u8>, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(frames_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let truth: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}.json: {e}"));
            let bin = std::fs::read(path.with_extension("bin")).unwrap();
            out.push((name, bin, truth));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 13,
        "expected the shared vectors in testdata/frames"
    );
    out
}

/// Applies the reference transforms to a truth payload, in JSON form (an independent
/// implementation of what `wire::payload` does to protobuf).
fn transform_truth(topic: &str, device_id: &str, payload: &mut Value) {
    payload["vin"] = Value::from(device_id);
    if topic == "V" {
        let data = payload["data"].as_array_mut().unwrap();
        if let Some(datum) = data.iter_mut().find(|d| d["key"] == "Location") {
            if let Some(s) = datum["value"]["stringValue"].as_str() {
                let nums: Vec<f64> = s
                    .trim_matches(|c| c == '(' || c == ')')
                    .split(',')
                    .map(|p| {
                        let mut it = p.split_whitespace();
                        let n: f64 = it.next().unwrap().parse().unwrap();
                        match it.next().unwrap() {
                            "S" | "W" => -n,
                            _ => n,
                        }
                    })
                    .collect();
                datum["value"] = serde_json::json!({"locationValue": {"latitude": nums[0], "longitude": nums[1]}});
            }
        }
        for datum in data.iter_mut() {
            if let Some(s) = datum["value"]["stringValue"].as_str() {
                if s.contains(['e', 'E']) && s.contains('.') {
                    if let Ok(v) = s.parse::<f32>() {
                        datum["value"]["stringValue"] = Value::from(format!("{:.5}", v as f64));
                    }
                }
            }
        }
    }
}

/// JSON equality where numbers compare by value (80 == 80.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn every_vector_decodes_to_its_truth_or_is_refused() {
    let mut ok = 0;
    let mut refused = 0;
    for (name, bin, truth) in vectors() {
        let result = decode_standalone(&bin, 0);
        let kind = truth["kind"].as_str().unwrap();
        if kind != "ok" {
            let err = result.expect_err(&format!("{name}: expected refusal {kind}"));
            assert_eq!(err.kind(), kind, "{name}: {err}");
            refused += 1;
            continue;
        }
        let record = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let line: Value = serde_json::to_value(RecordLine::new(&record)).unwrap();
        let device_id = truth["device_id"].as_str().unwrap();
        let topic = truth["topic"].as_str().unwrap();
        assert_eq!(line["topic"], truth["topic"], "{name}");
        assert_eq!(line["txid"], truth["txid"], "{name}");
        assert_eq!(line["vin"], device_id, "{name}");
        assert_eq!(line["device_type"], truth["device_type"], "{name}");
        assert_eq!(line["created_at"], truth["created_at"], "{name}");
        assert_eq!(record.frame.device_id, device_id.as_bytes(), "{name}");
        let mut expected = truth["payload"].clone();
        transform_truth(topic, device_id, &mut expected);
        assert!(
            same(&line["payload"], &expected),
            "{name}: payload differs\n got:  {}\n want: {}",
            line["payload"],
            expected
        );
        ok += 1;
    }
    assert!(ok >= 10 && refused >= 3, "ok={ok} refused={refused}");
}

#[test]
fn legacy_location_string_becomes_a_location_value() {
    let bin = std::fs::read(frames_dir().join("v_legacy_location_string.bin")).unwrap();
    let record = decode_standalone(&bin, 0).unwrap();
    let payload = record.decoded.vehicle().unwrap();
    let loc = match &payload.data[0].value.as_ref().unwrap().value {
        Some(fleetgate::wire::proto::vehicle_data::value::Value::LocationValue(l)) => *l,
        other => panic!("not a location: {other:?}"),
    };
    assert_eq!((loc.latitude, loc.longitude), (30.2672, -97.7431));
}

#[test]
fn decode_binary_prints_one_line_per_file_and_fails_on_any_bad_one() {
    let bins: Vec<PathBuf> = vectors()
        .into_iter()
        .map(|(name, _, _)| frames_dir().join(format!("{name}.bin")))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("decode")
        .args(&bins)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad vectors must make the exit code non-zero"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), bins.len());
    for (line, bin) in lines.iter().zip(&bins) {
        let name = bin.file_stem().unwrap().to_string_lossy();
        if name.starts_with("bad_") {
            assert_eq!(line["error"], "malformed", "{name}");
            assert_eq!(line["file"], bin.to_string_lossy().as_ref());
            assert!(line["detail"].as_str().is_some_and(|d| !d.is_empty()));
        } else {
            assert!(line["payload"].is_object(), "{name}: {line}");
        }
    }
    // only good files: exit 0; stdin works too
    let good = frames_dir().join("v_typed_drive.bin");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["decode", "-"])
        .stdin(std::fs::File::open(&good).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["txid"], "4f1c2a90-0001");
}

#[test]
fn a_missing_file_is_reported_and_the_rest_still_decode() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("decode")
        .arg("/nonexistent/frame.bin")
        .arg(frames_dir().join("alerts.bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].contains("\"error\":\"unreadable\""),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("\"topic\":\"alerts\""));
}
