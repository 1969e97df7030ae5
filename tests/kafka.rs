//! The Kafka sink against a real broker (scripts/kafka.sh): topics, keys, headers, values,
//! JSON mode, reliable acks. Fails loudly when no broker answers.

mod common;

use std::time::Duration;

use common::*;
use fleetgate::wire::proto::{vehicle_connectivity::VehicleConnectivity, vehicle_data::Payload};
use fleetgate::wire::{decode_standalone, read_envelope};
use prost::Message as _;
use rdkafka::Message;
use serde_json::json;

fn kafka_config(
    pki: &Pki,
    bootstrap: &str,
    namespace: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut config = base_config(pki);
    config["records"] = json!({"V": ["kafka"], "alerts": ["kafka", "logger"], "errors": ["kafka"], "connectivity": ["kafka"]});
    config["namespace"] = json!(namespace);
    config["kafka"] = json!({"bootstrap.servers": bootstrap});
    merge(&mut config, &extra);
    config
}

const HEADERS: &[(&str, &str)] = &[
    ("Version", "2025.44.1"),
    ("X-Network-Interface", "cellular"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_on_their_topics_with_key_headers_and_transformed_value() {
    let bootstrap = require_broker();
    let pki = Pki::new();
    let ns = unique_namespace("fg");
    let server = Server::start(&kafka_config(&pki, &bootstrap, &ns, json!({})));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, HEADERS)
        .await
        .unwrap();

    let names = [
        "v_typed_drive",
        "v_legacy_location_string",
        "v_string_values",
        "v_future_field",
        "alerts",
        "errors",
    ];
    for name in names {
        let bin = vector(name);
        fleetgate::tools::client::send_frame(&mut ws, bin.clone())
            .await
            .unwrap();
        let env = read_envelope(&bin).unwrap();
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(env.txid, env.topic, env.message_id),
            "{name}"
        );
    }

    let v = consume(&bootstrap, &format!("{ns}_V"), 4, Duration::from_secs(30));
    assert_eq!(v.len(), 4, "exactly the four V frames, once each");
    for m in &v {
        assert_eq!(m.key(), Some(VIN.as_bytes()));
        for h in [
            "vin",
            "receivedat",
            "timestamp",
            "txid",
            "txtype",
            "version",
            "device_client_version",
        ] {
            assert!(header(m, h).is_some(), "header {h} missing");
        }
        assert_eq!(header(m, "vin").as_deref(), Some(VIN));
        assert_eq!(header(m, "txtype").as_deref(), Some("V"));
        assert_eq!(
            header(m, "device_client_version").as_deref(),
            Some("2025.44.1")
        );
        assert!(header(m, "receivedat").unwrap().parse::<u64>().unwrap() > 1_700_000_000_000);
        let txid = header(m, "txid").unwrap();
        let name = names
            .iter()
            .find(|n| read_envelope(&vector(n)).unwrap().txid == txid.as_bytes())
            .expect("known txid");
        // the value is exactly the transformed payload
        let bin = vector(name);
        let expected = decode_standalone(&bin, 0).unwrap();
        assert_eq!(m.payload(), Some(expected.payload.as_slice()), "{name}");
        let p = Payload::decode(m.payload().unwrap()).unwrap();
        assert_eq!(p.vin, VIN);
    }
    let legacy = v
        .iter()
        .find(|m| header(m, "txid").as_deref() == Some("4f1c2a90-0003"))
        .unwrap();
    let p = Payload::decode(legacy.payload().unwrap()).unwrap();
    assert!(matches!(
        p.data[0].value.as_ref().unwrap().value,
        Some(fleetgate::wire::proto::vehicle_data::value::Value::LocationValue(_))
    ));
    // the future field passes through
    let future = v
        .iter()
        .find(|m| header(m, "txid").as_deref() == Some("4f1c2a90-0008"))
        .unwrap();
    assert_eq!(
        Payload::decode(future.payload().unwrap()).unwrap().data[0].key,
        400
    );

    assert_eq!(
        consume(
            &bootstrap,
            &format!("{ns}_alerts"),
            1,
            Duration::from_secs(20)
        )
        .len(),
        1
    );
    assert_eq!(
        consume(
            &bootstrap,
            &format!("{ns}_errors"),
            1,
            Duration::from_secs(20)
        )
        .len(),
        1
    );
    // alerts also went to the logger
    assert_eq!(
        server
            .wait_for_records(1, Duration::from_secs(2), |r| r["topic"] == "alerts")
            .len(),
        1
    );

    // connectivity records are produced by the server
    let conn = consume(
        &bootstrap,
        &format!("{ns}_connectivity"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(conn.len(), 1);
    let c = VehicleConnectivity::decode(conn[0].payload().unwrap()).unwrap();
    assert_eq!(
        (c.vin.as_str(), c.status, c.network_interface.as_str()),
        (VIN, 1, "cellular")
    );

    let text = server.metrics_text();
    assert_eq!(metric_value(&text, "fleetgate_kafka_connected"), 1.0);
    assert!(metric_value(&text, "fleetgate_kafka_delivered_total{topic=\"V\"}") >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_sends_proto3_json() {
    let bootstrap = require_broker();
    let pki = Pki::new();
    let ns = unique_namespace("fgjson");
    let server = Server::start(&kafka_config(
        &pki,
        &bootstrap,
        &ns,
        json!({"transmit_decoded_records": true}),
    ));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, HEADERS)
        .await
        .unwrap();
    fleetgate::tools::client::send_frame(&mut ws, vector("v_charging"))
        .await
        .unwrap();
    let _ = answer(&mut ws).await;
    let v = consume(&bootstrap, &format!("{ns}_V"), 1, Duration::from_secs(30));
    assert_eq!(v.len(), 1);
    let value: serde_json::Value = serde_json::from_slice(v[0].payload().unwrap()).unwrap();
    assert_eq!(value["vin"], VIN);
    assert_eq!(
        value["data"][0]["value"]["detailedChargeStateValue"],
        "DetailedChargeStateCharging"
    );
    assert_eq!(value["isResend"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_ack_means_the_record_is_in_kafka() {
    let bootstrap = require_broker();
    let pki = Pki::new();
    let ns = unique_namespace("fgrel");
    let server = Server::start(&kafka_config(
        &pki,
        &bootstrap,
        &ns,
        json!({"reliable_ack_sources": {"V": "kafka"}}),
    ));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, HEADERS)
        .await
        .unwrap();
    let sender = format!("vehicle_device.{VIN}");
    for i in 0..50 {
        let txid = format!("rel-{i}");
        fleetgate::tools::client::send_frame(&mut ws, frame(&txid, "V", &sender, b""))
            .await
            .unwrap();
    }
    let mut acked = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let ack = answer(&mut ws).await;
        acked.insert(String::from_utf8(read_envelope(&ack).unwrap().txid.to_vec()).unwrap());
    }
    assert_eq!(acked.len(), 50);
    // every acked frame is already in the topic
    let v = consume(&bootstrap, &format!("{ns}_V"), 50, Duration::from_secs(30));
    let stored: std::collections::BTreeSet<String> =
        v.iter().filter_map(|m| header(m, "txid")).collect();
    assert_eq!(stored, acked);
    assert_eq!(v.len(), 50, "each exactly once");
    assert_eq!(server.metric("fleetgate_reliable_acks_pending"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_produces_its_events_on_the_events_topic() {
    use fleetgate::event::{event_id, EventType};
    use fleetgate::wire::proto::vehicle_data::{
        value::Value as V, DetailedChargeStateValue, Field, LocationValue,
    };
    let bootstrap = require_broker();
    let pki = Pki::new();
    let ns = unique_namespace("fgev");
    let sites = pki.dir.path().join("sites.geojson");
    std::fs::write(&sites, r#"{"type":"FeatureCollection","features":[
        {"type":"Feature","id":"cafe","properties":{"name":"Cafe","kind":"merchant","radius_m":250},"geometry":{"type":"Point","coordinates":[-97.7431,30.2672]}}]}"#).unwrap();
    let config = kafka_config(
        &pki,
        &bootstrap,
        &ns,
        json!({
            "reliable_ack_sources": {"V": "kafka"},
            "fleetgate": {
                "sites_file": sites.display().to_string(),
                "watches": [{"watch_id": "order-42", "vin": VIN, "site_id": "cafe", "target_soc": 80, "expires_at": "2030-01-01T00:00:00Z"}]
            }
        }),
    );
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, HEADERS)
        .await
        .unwrap();
    let sender = format!("vehicle_device.{VIN}");
    let d = datum;
    let loc = |lat: f64, lon: f64| {
        V::LocationValue(LocationValue {
            latitude: lat,
            longitude: lon,
        })
    };
    let t0 = 1_764_000_000i64;
    let frames = vec![
        (
            t0,
            vec![
                d(Field::Location, loc(30.2852, -97.7431)),
                d(Field::Soc, V::DoubleValue(61.0)),
                d(Field::DestinationLocation, loc(30.2672, -97.7431)),
                d(Field::MinutesToArrival, V::DoubleValue(4.0)),
            ],
        ),
        (
            t0 + 240,
            vec![
                d(Field::Location, loc(30.2680, -97.7431)),
                d(Field::Soc, V::DoubleValue(60.0)),
            ],
        ),
        (
            t0 + 300,
            vec![d(
                Field::DetailedChargeState,
                V::DetailedChargeStateValue(
                    DetailedChargeStateValue::DetailedChargeStateCharging as i32,
                ),
            )],
        ),
        (t0 + 1500, vec![d(Field::Soc, V::DoubleValue(80.0))]),
    ];
    for (i, (created, data)) in frames.into_iter().enumerate() {
        let txid = format!("drive-{i}");
        fleetgate::tools::client::send_frame(
            &mut ws,
            frame(&txid, "V", &sender, &v_payload(created, data)),
        )
        .await
        .unwrap();
        // reliable: the ack means the record and its events are in Kafka
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(txid.as_bytes(), b"V", b"")
        );
    }
    let events = consume(
        &bootstrap,
        &format!("{ns}_events"),
        6,
        Duration::from_secs(30),
    );
    let parsed: Vec<serde_json::Value> = events
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect();
    let types: Vec<&str> = parsed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "fleetgate.vehicle.connected",
            "fleetgate.arrival.approaching",
            "fleetgate.site.entered",
            "fleetgate.arrival.arrived",
            "fleetgate.charging.started",
            "fleetgate.arrival.charge_complete",
        ]
    );
    for (m, e) in events.iter().zip(&parsed) {
        assert_eq!(m.key(), Some(VIN.as_bytes()));
        // structured mode: the event in the value, no ce_ headers
        assert_eq!(
            header(m, "content-type").as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(header(m, "ce_type"), None);
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["subject"], VIN);
    }
    assert_eq!(
        parsed[3]["id"],
        event_id(
            EventType::ArrivalArrived,
            VIN,
            "order-42",
            (t0 + 240) * 1000
        )
    );
    assert_eq!(parsed[3]["data"]["soc_at_arrival"], 60.0);
    assert_eq!(parsed[5]["data"]["watch_id"], "order-42");
    assert_eq!(
        server.metric("fleetgate_events_total{type=\"fleetgate.arrival.arrived\"}"),
        1.0
    );
}
