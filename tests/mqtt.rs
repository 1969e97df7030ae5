//! The MQTT sink against a real broker (Mosquitto, started per test on a free loopback port)
//! read by a client we did not write (`mosquitto_sub`): Tesla's topic layout, events, reliable
//! acks that wait for the broker, a broker outage, and MQTT 5 over TLS with a password.
//! Fails loudly when Mosquitto is not installed (scripts/test.sh installs it).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::mosquitto::{Broker, Subscriber};
use common::*;
use fleetgate::wire::read_envelope;
use serde_json::{json, Value};

fn mqtt_config(pki: &Pki, mqtt: Value, extra: Value) -> Value {
    let mut config = base_config(pki);
    config["records"] =
        json!({"V": ["mqtt"], "alerts": ["mqtt"], "errors": ["mqtt"], "connectivity": ["mqtt"]});
    config["reliable_ack_sources"] = json!({"V": "mqtt"});
    config["mqtt"] = mqtt;
    merge(
        &mut config,
        &json!({"fleetgate": {"events": {"sinks": ["mqtt"]}}}),
    );
    merge(&mut config, &extra);
    config
}

async fn send(ws: &mut fleetgate::tools::client::VehicleSocket, bin: &[u8]) {
    fleetgate::tools::client::send_frame(ws, bin.to_vec())
        .await
        .unwrap();
}

fn ack_of(bin: &[u8]) -> Vec<u8> {
    let env = read_envelope(bin).unwrap();
    expected_ack(env.txid, env.topic, env.message_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_events_reach_the_broker_in_teslas_layout_and_acks_wait_for_it() {
    let pki = Pki::new();
    let broker = Broker::plain(pki.dir.path());
    let port = broker.port.to_string();
    let sub = Subscriber::start(&["-p", &port, "-t", "tele/#"]);
    let server = Server::start(&mqtt_config(
        &pki,
        json!({"broker": format!("127.0.0.1:{port}"), "topic_base": "tele", "qos": 1, "client_id": "fg-test"}),
        json!({}),
    ));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();

    for name in ["v_typed_drive", "alerts", "errors"] {
        let bin = vector(name);
        send(&mut ws, &bin).await;
        assert_eq!(answer(&mut ws).await, ack_of(&bin), "{name} acked");
    }

    let v = format!("tele/{VIN}/v");
    assert_eq!(
        sub.wait(&format!("{v}/Location")),
        json!({"value": {"latitude": 30.2672, "longitude": -97.7431}})
    );
    assert_eq!(
        sub.wait(&format!("{v}/VehicleSpeed")),
        json!({"value": 41.5})
    );
    assert_eq!(
        sub.wait(&format!("{v}/Gear")),
        json!({"value": "ShiftStateD"})
    );
    assert_eq!(sub.wait(&format!("{v}/Soc")), json!({"value": 64.52}));
    // every datum of the frame, once
    let truth: Value =
        serde_json::from_slice(&std::fs::read(frames_dir().join("v_typed_drive.json")).unwrap())
            .unwrap();
    for d in truth["payload"]["data"].as_array().unwrap() {
        let topic = format!("{v}/{}", d["key"].as_str().unwrap());
        sub.wait(&topic);
        assert_eq!(sub.count(&topic), 1, "{topic} published once");
    }

    // alerts: a current state and a history per name; errors by name
    let alert = format!("tele/{VIN}/alerts/BMS_a066_SW_Over_Current");
    assert_eq!(
        sub.wait(&format!("{alert}/current")),
        json!({"Name": "BMS_a066_SW_Over_Current", "StartedAt": "2025-11-24T15:59:00Z", "Audiences": ["Customer", "Service"]})
    );
    assert_eq!(
        sub.wait(&format!("{alert}/history"))
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sub
        .topics()
        .iter()
        .any(|t| t.starts_with(&format!("tele/{VIN}/errors/")))
    {
        assert!(
            Instant::now() < deadline,
            "no errors message: {:?}",
            sub.topics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // the connectivity record and the vehicle.connected event
    let connectivity = sub.wait(&format!("tele/{VIN}/connectivity"));
    assert_eq!(connectivity["Status"], "CONNECTED");
    let event = sub.wait(&format!("tele/{VIN}/events/vehicle.connected"));
    assert_eq!(event["type"], "fleetgate.vehicle.connected");
    assert_eq!(event["specversion"], "1.0");
    assert!(event["id"].as_str().is_some_and(|id| !id.is_empty()));

    let metrics = server.metrics_text();
    assert!(
        metric_value(&metrics, "fleetgate_mqtt_connected") == 1.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "fleetgate_mqtt_published_total{record_type=\"V\"}"
        ) >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_down_frames_are_not_acked_and_once_it_is_back_they_are() {
    let pki = Pki::new();
    let mut broker = Broker::plain(pki.dir.path());
    let port = broker.port.to_string();
    let server = Server::start(&mqtt_config(
        &pki,
        json!({
            "broker": format!("127.0.0.1:{port}"), "topic_base": "tele", "qos": 1,
            "publish_timeout_ms": 1000, "connect_retry_interval_ms": 300, "connect_timeout_ms": 1000,
        }),
        json!({}),
    ));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let first = frame(
        "tx-1",
        "V",
        VIN,
        &v_payload(
            1_764_000_000,
            vec![datum(
                fleetgate::wire::proto::vehicle_data::Field::Soc,
                fleetgate::wire::proto::vehicle_data::value::Value::DoubleValue(50.0),
            )],
        ),
    );
    send(&mut ws, &first).await;
    assert_eq!(
        answer(&mut ws).await,
        ack_of(&first),
        "acked while the broker is up"
    );

    broker.stop();
    // wait until fleetgate saw the broker go
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("fleetgate_mqtt_connected") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "fleetgate never noticed the broker stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = server.admin("GET", "/healthz/sinks", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.to_string().contains("mqtt"), "{body}");

    let during = frame(
        "tx-2",
        "V",
        VIN,
        &v_payload(
            1_764_000_010,
            vec![datum(
                fleetgate::wire::proto::vehicle_data::Field::Soc,
                fleetgate::wire::proto::vehicle_data::value::Value::DoubleValue(51.0),
            )],
        ),
    );
    send(&mut ws, &during).await;
    assert!(
        no_answer(&mut ws, Duration::from_secs(3)).await,
        "a frame the broker never confirmed must not be acked"
    );
    assert!(server.metric("fleetgate_reliable_ack_failed_total") >= 1.0);

    broker.start();
    let sub = Subscriber::start(&["-p", &port, "-t", "tele/#"]);
    // the vehicle resends what was never acked; fleetgate reconnects within the retry interval
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        send(&mut ws, &during).await;
        if !no_answer(&mut ws, Duration::from_millis(1500)).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never acked after the broker came back"
        );
    }
    assert_eq!(
        sub.wait(&format!("tele/{VIN}/v/Soc")),
        json!({"value": 51.0})
    );
    let (code, body) = server.admin("GET", "/healthz/sinks", None);
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_5_over_tls_with_a_password() {
    let pki = Pki::new();
    let broker = Broker::tls_with_password(&pki, "fleet", "s3cret-pass");
    let port = broker.port.to_string();
    let sub = Subscriber::start(&[
        "-p",
        &port,
        "-V",
        "mqttv5",
        "--cafile",
        &pki.path("ca.pem"),
        "--insecure", // mosquitto_sub connects to 127.0.0.1; the certificate names localhost
        "-u",
        "fleet",
        "-P",
        "s3cret-pass",
        "-t",
        "secure/#",
    ]);
    let server = Server::start(&mqtt_config(
        &pki,
        json!({
            "broker": format!("ssl://localhost:{port}"), "topic_base": "secure", "qos": 1,
            "username": "fleet", "password": "s3cret-pass",
        }),
        json!({"fleetgate": {"mqtt": {"protocol_version": "5", "ca_file": pki.path("ca.pem")}}}),
    ));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let bin = vector("v_typed_drive");
    send(&mut ws, &bin).await;
    assert_eq!(answer(&mut ws).await, ack_of(&bin));
    assert_eq!(
        sub.wait(&format!("secure/{VIN}/v/Soc")),
        json!({"value": 64.52})
    );
    assert_eq!(
        sub.wait(&format!("secure/{VIN}/events/vehicle.connected"))["type"],
        "fleetgate.vehicle.connected"
    );

    // a wrong password: the broker refuses, fleetgate says so and acks nothing
    let pki2 = Pki::new();
    let wrong = Server::start(&mqtt_config(
        &pki2,
        json!({
            "broker": format!("ssl://localhost:{port}"), "topic_base": "secure", "qos": 1,
            "username": "fleet", "password": "wrong", "connect_retry_interval_ms": 300,
            "publish_timeout_ms": 1000,
        }),
        json!({"fleetgate": {"mqtt": {"protocol_version": "5", "ca_file": pki.path("ca.pem")}}}),
    ));
    let cert2 = pki2.pki.vehicle(VIN).unwrap();
    let mut ws2 = connect(&wrong, &pki2.ca_pem(), &cert2, &[]).await.unwrap();
    send(&mut ws2, &bin).await;
    assert!(no_answer(&mut ws2, Duration::from_secs(3)).await);
    let (code, body) = wrong.admin("GET", "/healthz/sinks", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.to_string().contains("mqtt"), "{body}");
}

#[test]
fn a_config_that_routes_to_mqtt_without_a_section_or_with_a_bad_broker_is_refused() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["records"] = json!({"V": ["mqtt"]});
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "c.json", &config.to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("records.V") && text.contains("no `mqtt` section"),
        "{text}"
    );

    config["mqtt"] = json!({"broker": "ws://x:1", "qos": 3});
    config["reliable_ack_sources"] = json!({"V": "mqtt"});
    let path = write_file(dir.path(), "c.json", &config.to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("mqtt.broker") && text.contains("ws://"),
        "{text}"
    );
    assert!(text.contains("mqtt.qos"), "{text}");
}
