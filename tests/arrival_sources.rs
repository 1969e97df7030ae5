//! "The driver has arrived", known three ways — Tesla telemetry, a Smartcar webhook, the
//! driver's "I'm here" — each yields exactly one `arrival.arrived` per watch with its `source`,
//! delivered through Kafka, MQTT and webhooks alike (real broker, real Mosquitto, a receiver
//! using the Standard Webhooks and CloudEvents libraries: clients we did not write); a later
//! source is recorded on the watch, never re-emitted.

mod common;

use std::time::Duration;

use common::mosquitto::{Broker, Subscriber};
use common::*;
use fleetgate::sources::smartcar;
use fleetgate::wire::proto::vehicle_data::{value::Value as V, Field};
use serde_json::{json, Value};

const CAFE: &str = r#"{"name":"Cafe","kind":"merchant","radius_m":250,"geometry":{"type":"Point","coordinates":[-97.7431,30.2672]}}"#;
const AMT: &str = "amt-test-0123456789";
const VIN_TELEMETRY: &str = "5YJ3E1EA7KF000001";
const VIN_SMARTCAR: &str = "5YJ3E1EA7KF000002";
const VIN_MANUAL: &str = "5YJ3E1EA7KF000003";

fn watch(id: &str, vin: &str) -> String {
    json!({"watch_id": id, "vin": vin, "site_id": "cafe", "expires_at": "2099-01-01T00:00:00Z"})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_arrival_per_watch_whichever_source_sees_it_first_through_kafka_mqtt_and_webhook() {
    let bootstrap = require_broker();
    let pki = Pki::new();
    let broker = Broker::plain(pki.dir.path());
    let port = broker.port.to_string();
    let sub = Subscriber::start(&["-p", &port, "-t", "orders/+/events/#"]);
    let receiver = common::webhook::Receiver::start();
    let ns = unique_namespace("src");
    let mut config = base_config(&pki);
    config["namespace"] = json!(ns);
    config["kafka"] = json!({"bootstrap.servers": bootstrap});
    config["mqtt"] =
        json!({"broker": format!("127.0.0.1:{port}"), "topic_base": "orders", "qos": 1});
    merge(
        &mut config,
        &json!({"fleetgate": {
            "events": {"sinks": ["kafka", "mqtt", "webhook"]},
            "webhook": {"endpoints": [
                {"name": "orders", "url": receiver.url("/orders"), "secret": common::webhook::SECRET,
                 "events": ["fleetgate.arrival.*"]},
                {"name": "orders-binary", "url": receiver.url("/binary"), "secret": common::webhook::SECRET,
                 "events": ["fleetgate.arrival.arrived"], "content_mode": "binary"}]},
            "sources": {"smartcar": {"management_token": AMT, "vehicles": {"sc-2": VIN_SMARTCAR, "sc-3": VIN_MANUAL}}},
        }}),
    );
    let server = Server::start(&config);
    let admin = server.admin.clone().unwrap();

    assert_eq!(server.admin("PUT", "/v1/sites/cafe", Some(CAFE)).0, 201);
    for (id, vin) in [
        ("w-tele", VIN_TELEMETRY),
        ("w-sc", VIN_SMARTCAR),
        ("w-manual", VIN_MANUAL),
    ] {
        let (code, body) = server.admin("POST", "/v1/watches", Some(&watch(id, vin)));
        assert_eq!(code, 201, "{body}");
    }

    // 1. telemetry: the car's own frame at the cafe
    let cert = pki.pki.vehicle(VIN_TELEMETRY).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let at_cafe = frame(
        "tx-1",
        "V",
        VIN_TELEMETRY,
        &v_payload(
            1_764_000_000,
            vec![
                datum(
                    Field::Location,
                    V::LocationValue(fleetgate::wire::proto::vehicle_data::LocationValue {
                        latitude: 30.2672,
                        longitude: -97.7431,
                    }),
                ),
                datum(Field::Soc, V::DoubleValue(41.0)),
            ],
        ),
    );
    fleetgate::tools::client::send_frame(&mut ws, at_cafe)
        .await
        .unwrap();
    let _ack = answer(&mut ws).await;

    // 2. Smartcar: VERIFY first (as the dashboard does), then a signed state at the cafe
    let verify =
        json!({"eventId": "v", "eventType": "VERIFY", "data": {"challenge": "ch-42"}}).to_string();
    // a delivery as Smartcar sends it: signed with the management token
    let post_signed = |body: &str| {
        post(
            &admin,
            "/v1/sources/smartcar",
            &[("SC-Signature", &smartcar::sign(AMT, body.as_bytes()))],
            body,
        )
    };
    // unsigned, it is refused: the answer would be the signature of a text the caller chose
    let (code, body) = post(&admin, "/v1/sources/smartcar", &[], &verify);
    assert_eq!(code, 401, "{body}");
    let (code, body) = post_signed(&verify);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["challenge"], smartcar::sign(AMT, b"ch-42"));

    let delivery = smartcar_state("sc-2", 30.2673, -97.7430, 63.0);
    let (code, body) = post(&admin, "/v1/sources/smartcar", &[], &delivery);
    assert_eq!(code, 401, "unsigned deliveries are refused: {body}");
    let (code, body) = post(
        &admin,
        "/v1/sources/smartcar",
        &[(
            "SC-Signature",
            &smartcar::sign("wrong-token", delivery.as_bytes()),
        )],
        &delivery,
    );
    assert_eq!(code, 401, "{body}");
    let (code, body) = post_signed(&delivery);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["vin"], VIN_SMARTCAR);
    assert!(
        body["events"]
            .as_array()
            .unwrap()
            .contains(&json!("fleetgate.arrival.arrived")),
        "{body}"
    );
    // Smartcar redelivers on a timeout: the same delivery again emits nothing new
    let (code, body) = post_signed(&delivery);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["events"], json!([]), "{body}");

    // the charge, as Smartcar's v4 payload says it: the vehicle id at the top level, and
    // `charge-detailedchargingstatus` (the only signal that says complete) beside
    // `charge-ischarging`, which reads false once the charge is complete
    let charge = |is_charging: bool, detailed: &str| {
        json!({
            "eventId": uuid::Uuid::new_v4().to_string(),
            "eventType": "VEHICLE_STATE",
            "vehicleId": "sc-2",
            "data": {"signals": [
                {"code": "charge-ischarging", "name": "IsCharging", "group": "Charge",
                 "body": {"value": is_charging}, "status": {"value": "SUCCESS"}},
                {"code": "charge-detailedchargingstatus", "name": "DetailedChargingStatus", "group": "Charge",
                 "body": {"value": detailed}, "status": {"value": "SUCCESS"}},
            ]},
            "meta": {"version": "4.0", "deliveryId": "d-2", "deliveredAt": 1_764_000_200_000i64, "mode": "LIVE"},
        })
        .to_string()
    };
    for (is_charging, detailed, expected) in [
        (true, "CHARGING", "fleetgate.charging.started"),
        (false, "FULLY_CHARGED", "fleetgate.charging.stopped"),
    ] {
        let delivery = charge(is_charging, detailed);
        let (code, body) = post_signed(&delivery);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["vin"], VIN_SMARTCAR);
        assert!(
            body["events"]
                .as_array()
                .unwrap()
                .contains(&json!(expected)),
            "{detailed}: {body}"
        );
    }
    let (_, v) = server.admin("GET", &format!("/v1/vehicles/{VIN_SMARTCAR}"), None);
    assert_eq!(v["state"]["charge_state"], "complete", "{v}");

    // 3. manual: the driver taps "I'm here"; a second tap and a later Smartcar fix are recorded only
    let (code, body) = server.admin(
        "POST",
        "/v1/watches/w-manual/arrive",
        Some(r#"{"reason": "driver_tapped_im_here"}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["emitted"], true);
    assert_eq!(body["arrival_source"], "manual");
    let (code, body) = server.admin("POST", "/v1/watches/w-manual/arrive", Some("{}"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["emitted"], false);
    let later = smartcar_state("sc-3", 30.2672, -97.7431, 70.0);
    let (code, body) = post_signed(&later);
    assert_eq!(code, 200, "{body}");
    assert!(
        !body["events"]
            .as_array()
            .unwrap()
            .contains(&json!("fleetgate.arrival.arrived")),
        "{body}"
    );
    let (_, w) = server.admin("GET", "/v1/watches/w-manual", None);
    assert_eq!(w["progress"]["arrival_source"], "manual");
    assert_eq!(w["progress"]["later_sources"], json!(["smartcar"]));
    let (_, w) = server.admin("GET", "/v1/watches/w-sc", None);
    assert_eq!(w["progress"]["arrival_source"], "smartcar");
    assert_eq!(w["progress"]["soc_at_arrival"], 63.0);
    let (code, _) = server.admin("POST", "/v1/watches/nope/arrive", Some("{}"));
    assert_eq!(code, 404);

    // Kafka: exactly one arrival per watch, each with its source
    let events = consume(
        &bootstrap,
        &format!("{ns}_events"),
        8,
        Duration::from_secs(30),
    );
    let arrivals: Vec<Value> = events
        .iter()
        .filter_map(|m| {
            use rdkafka::Message;
            serde_json::from_slice::<Value>(m.payload()?).ok()
        })
        .filter(|e| e["type"] == "fleetgate.arrival.arrived")
        .collect();
    let mut sources: Vec<(String, String)> = arrivals
        .iter()
        .map(|e| {
            (
                e["data"]["watch_id"].as_str().unwrap().to_owned(),
                e["data"]["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        vec![
            ("w-manual".to_owned(), "manual".to_owned()),
            ("w-sc".to_owned(), "smartcar".to_owned()),
            ("w-tele".to_owned(), "fleet_telemetry".to_owned()),
        ],
        "{arrivals:#?}"
    );

    // MQTT: the same three, one per vehicle, same ids as in Kafka
    for (vin, source) in [
        (VIN_TELEMETRY, "fleet_telemetry"),
        (VIN_SMARTCAR, "smartcar"),
        (VIN_MANUAL, "manual"),
    ] {
        let topic = format!("orders/{vin}/events/arrival.arrived");
        let event = sub.wait(&topic);
        assert_eq!(event["data"]["source"], source);
        assert_eq!(sub.count(&topic), 1, "{topic}");
        assert!(
            arrivals.iter().any(|a| a["id"] == event["id"]),
            "same id on MQTT and Kafka"
        );
    }

    // webhooks: the same three on each receiver (structured and binary), same ids, signed
    let got = receiver.wait_until(Duration::from_secs(30), |got| {
        got.iter()
            .filter(|m| m["type"] == "fleetgate.arrival.arrived")
            .count()
            >= 6
    });
    for (path, mode) in [("/orders", "structured"), ("/binary", "binary")] {
        let mut seen: Vec<(String, String)> = got
            .iter()
            .filter(|m| m["path"] == path && m["type"] == "fleetgate.arrival.arrived")
            .map(|m| {
                assert_eq!(m["mode"], mode);
                assert_eq!(m["webhook_id"], m["id"]);
                assert!(
                    arrivals.iter().any(|a| a["id"] == m["id"]),
                    "same id as Kafka"
                );
                (
                    m["data"]["watch_id"].as_str().unwrap().to_owned(),
                    m["data"]["source"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(seen, sources, "{path}");
    }
    assert!(
        got.iter()
            .all(|m| m["path"] == "/orders" || m["type"] == "fleetgate.arrival.arrived"),
        "the binary receiver gets arrivals only"
    );
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());
}
