//! A production-shaped Kafka: the test broker's SASL_SSL listener (a CA made at start, a
//! SCRAM-SHA-512 user made with Kafka's own tools, the authorizer on and ACLs that let the user
//! write only topics starting with `fgsasl`). Records, connectivity records and events are
//! delivered through it with reliable acks and zstd; a wrong password, an untrusted broker
//! certificate and a topic the ACLs refuse each give a clear, counted error and never an ack.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PASSWORD: &str = "fleetgate-secret";

/// A config that reaches the broker's SASL_SSL listener as user `fleetgate`.
fn secure_config(pki: &Pki, broker: &SaslBroker, ns: &str, kafka_extra: Value) -> Value {
    let mut config = base_config(pki);
    config["namespace"] = json!(ns);
    config["records"] = json!({"V": ["kafka"], "connectivity": ["kafka"]});
    config["reliable_ack_sources"] = json!({"V": "kafka"});
    let mut kafka = json!({
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "fleetgate",
        "ssl.ca.location": broker.ca,
        "compression.type": "zstd",
        "reconnect.backoff.max.ms": 1000,
    });
    merge(&mut kafka, &kafka_extra);
    config["kafka"] = kafka;
    config
}

/// Both broker listeners must answer; a fresh PKI and a config for a new namespace starting
/// with `prefix` (the ACLs allow `fgsasl*` only), with `kafka_extra` merged in.
fn secure_setup(prefix: &str, kafka_extra: Value) -> (Pki, Value) {
    require_broker();
    let broker = require_sasl_broker();
    let pki = Pki::new();
    let ns = unique_namespace(prefix);
    let config = secure_config(&pki, &broker, &ns, kafka_extra);
    (pki, config)
}

fn password_file(pki: &Pki, password: &str) -> String {
    write_file(pki.dir.path(), "kafka-password", &format!("{password}\n"))
        .display()
        .to_string()
}

/// The Kafka sink is not healthy, for `reason`: counted, and named by `/healthz/sinks`.
async fn assert_sink_unhealthy(server: &Server, reason: &str) {
    let series = format!("fleetgate_kafka_client_errors_total{{reason=\"{reason}\"}}");
    assert!(wait_metric(server, &series, 1.0).await >= 1.0, "{series}");
    let (status, sinks) = server.admin("GET", "/healthz/sinks", None);
    assert_eq!(status, 503, "{sinks}");
    let detail = sinks["sinks"][0]["detail"].as_str().unwrap();
    assert!(detail.contains(reason), "{detail}");
}

/// Sends one reliable V frame; true when it was acked within `wait`.
async fn reliable_frame_acked(server: &Server, pki: &Pki, txid: &str, wait: Duration) -> bool {
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let sender = format!("vehicle_device.{VIN}");
    fleetgate::tools::client::send_frame(&mut ws, frame(txid, "V", &sender, b""))
        .await
        .unwrap();
    match tokio::time::timeout(wait, fleetgate::tools::client::next_binary(&mut ws)).await {
        Ok(Some(Ok(bytes))) => {
            assert_eq!(bytes, expected_ack(txid.as_bytes(), b"V", b""));
            true
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_zstd_delivers_records_connectivity_and_events_with_reliable_acks() {
    let plain = require_broker();
    let broker = require_sasl_broker();
    let pki = Pki::new();
    let ns = unique_namespace("fgsasl");
    let mut config = secure_config(&pki, &broker, &ns, json!({}));
    config["fleetgate"]["kafka"] = json!({"sasl_password_file": password_file(&pki, PASSWORD)});
    let server = Server::start(&config);
    assert!(
        reliable_frame_acked(&server, &pki, "sasl-1", Duration::from_secs(30)).await,
        "a reliable frame is acked once Kafka (SASL_SSL, SCRAM-SHA-512) confirmed it"
    );
    // read back through the plain listener: what the SASL user wrote is there, zstd and all
    let v = consume(&plain, &format!("{ns}_V"), 1, Duration::from_secs(20));
    assert_eq!(v.len(), 1);
    assert_eq!(header(&v[0], "txid").as_deref(), Some("sasl-1"));
    let connectivity = consume(
        &plain,
        &format!("{ns}_connectivity"),
        1,
        Duration::from_secs(20),
    );
    assert!(!connectivity.is_empty(), "connectivity records delivered");
    let events = consume(&plain, &format!("{ns}_events"), 1, Duration::from_secs(20));
    assert!(!events.is_empty(), "events delivered");
    assert_eq!(server.metric("fleetgate_kafka_connected"), 1.0);
    let (status, sinks) = server.admin("GET", "/healthz/sinks", None);
    assert_eq!(status, 200, "{sinks}");
    // the password is never printed
    assert!(!server.stderr_text().contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_with_the_password_from_the_environment() {
    let (pki, config) = secure_setup(
        "fgsasl",
        json!({"sasl.mechanisms": "PLAIN", "sasl.username": "fgplain"}),
    );
    let server = Server::start_with_env(
        &config,
        &[("FLEETGATE_KAFKA_SASL_PASSWORD", "fgplain-secret")],
    );
    assert!(reliable_frame_acked(&server, &pki, "plain-1", Duration::from_secs(30)).await);
    assert!(!server.stderr_text().contains("fgplain-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_counted_error_and_never_an_ack() {
    let (pki, config) = secure_setup("fgsasl", json!({"sasl.password": "not-the-password"}));
    let server = Server::start(&config);
    assert!(
        !reliable_frame_acked(&server, &pki, "wrong-1", Duration::from_secs(6)).await,
        "no ack for a frame Kafka never took"
    );
    assert_sink_unhealthy(&server, "authentication").await;
    assert!(server
        .stderr_text()
        .contains("check sasl.mechanisms, sasl.username and the password"));
    assert!(!server.stderr_text().contains("not-the-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_a_clear_counted_error_and_never_an_ack() {
    let (pki, mut config) = secure_setup("fgsasl", json!({"sasl.password": PASSWORD}));
    // the dev PKI's root did not sign the broker's certificate
    config["kafka"]["ssl.ca.location"] = json!(pki.path("ca.pem"));
    let server = Server::start(&config);
    assert!(!reliable_frame_acked(&server, &pki, "tls-1", Duration::from_secs(6)).await);
    assert_sink_unhealthy(&server, "tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_acls_refuse_is_never_acked() {
    // outside the user's `fgsasl` prefix
    let (pki, config) = secure_setup("fgdenied", json!({"sasl.password": PASSWORD}));
    let server = Server::start(&config);
    assert!(!reliable_frame_acked(&server, &pki, "acl-1", Duration::from_secs(10)).await);
    // Kafka refused the topic: a delivery error, and the frame is failed (the vehicle resends)
    assert!(
        wait_metric(
            &server,
            "fleetgate_kafka_delivery_errors_total{topic=\"V\"}",
            1.0
        )
        .await
            >= 1.0,
        "{}",
        server.metrics_text()
    );
    assert!(wait_metric(&server, "fleetgate_reliable_ack_failed_total", 1.0).await >= 1.0);
    assert!(
        server.stderr_text().to_lowercase().contains("authoriz"),
        "{}",
        server.stderr_text()
    );
}
