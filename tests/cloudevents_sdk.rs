//! Events on Kafka read the way a consumer reads them: with the CloudEvents Python SDK's Kafka
//! protocol binding (auto-detecting the content mode), in structured mode (the default) and in
//! binary mode. Every required attribute must come through, with the same id and data.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};

/// Runs the SDK over the records; returns the events it read.
fn read_with_sdk(records: &[rdkafka::message::OwnedMessage], mode: &str) -> Vec<Value> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut input = String::new();
    for m in records {
        let mut headers = serde_json::Map::new();
        if let Some(h) = m.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_owned(),
                    json!(b64.encode(header.value.unwrap_or_default())),
                );
            }
        }
        let line = json!({
            "headers": headers,
            "key": String::from_utf8_lossy(m.key().unwrap_or_default()),
            "value": b64.encode(m.payload().unwrap_or_default()),
        });
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/read_cloudevents.py");
    let mut child = Command::new(test_python())
        .arg(script)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the CloudEvents SDK refused the records ({mode}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn events_read_by_the_sdk(
    mode: Option<&str>,
) -> (Vec<Value>, Vec<rdkafka::message::OwnedMessage>) {
    let bootstrap = require_broker();
    let pki = Pki::new();
    let ns = unique_namespace("fgce");
    let mut config = base_config(&pki);
    config["namespace"] = json!(ns);
    config["records"] = json!({"V": ["kafka"]});
    config["kafka"] = json!({"bootstrap.servers": bootstrap});
    if let Some(mode) = mode {
        config["fleetgate"]["events"] = json!({"kafka_content_mode": mode});
    }
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let _ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let records = consume(
        &bootstrap,
        &format!("{ns}_events"),
        1,
        Duration::from_secs(30),
    );
    assert_eq!(records.len(), 1, "one vehicle.connected event");
    let events = read_with_sdk(&records, mode.unwrap_or("structured"));
    (events, records)
}

fn assert_connected_event(e: &Value) {
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["type"], "fleetgate.vehicle.connected");
    assert_eq!(e["source"], "fleetgate");
    assert_eq!(e["subject"], VIN);
    assert_eq!(e["datacontenttype"], "application/json");
    assert_eq!(e["id"].as_str().unwrap().len(), 36);
    assert!(e["time"].as_str().unwrap().starts_with("20"), "{e}");
    assert_eq!(e["data"]["vin"], VIN);
    assert!(e["data"]["connection_id"].is_string(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_is_the_default_and_the_sdk_reads_it() {
    let (events, records) = events_read_by_the_sdk(None).await;
    assert_eq!(events.len(), 1);
    assert_connected_event(&events[0]);
    assert_eq!(
        header(&records[0], "content-type").as_deref(),
        Some("application/cloudevents+json")
    );
    // no partial ce_ headers, which would make SDKs read it as binary mode
    let headers = records[0].headers().unwrap();
    assert!(headers.iter().all(|h| !h.key.starts_with("ce_")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_carries_every_attribute_as_a_header_and_the_sdk_reads_it() {
    let (events, records) = events_read_by_the_sdk(Some("binary")).await;
    assert_eq!(events.len(), 1);
    assert_connected_event(&events[0]);
    for key in [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_subject",
        "ce_time",
    ] {
        assert!(header(&records[0], key).is_some(), "{key} missing");
    }
    assert_eq!(
        header(&records[0], "content-type").as_deref(),
        Some("application/json")
    );
    // the value is the data alone
    let value: Value = serde_json::from_slice(records[0].payload().unwrap()).unwrap();
    assert_eq!(value["vin"], VIN);
    assert!(value.get("specversion").is_none());
}
