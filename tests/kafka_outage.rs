//! Reliable acks through a broker outage (the broker is killed with -9), against a real broker of its own (port 19092, so
//! stopping it disturbs no other test): while the broker is down a reliable frame is not
//! acked, non-reliable frames are, in-flight records stay bounded and reading stops; when
//! the broker returns every frame is acked and stored exactly once.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fleetgate::wire::read_envelope;
use serde_json::json;

const PORT: u16 = 19092;

fn broker(action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(action)
        .env("KAFKA_PORT", PORT.to_string())
        .status()
        .expect("run scripts/kafka.sh");
    assert!(
        status.success(),
        "scripts/kafka.sh {action} (port {PORT}) failed: see target/kafka-{PORT}/logs"
    );
}

/// Stops the outage broker at the end of the test, whatever happens.
struct BrokerGuard;
impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("stop")
            .env("KAFKA_PORT", PORT.to_string())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_acks_wait_for_the_broker_and_nothing_is_lost_or_duplicated() {
    require_broker(); // the shared broker proves Java/Kafka are installed; this test runs its own
    broker("start");
    let _guard = BrokerGuard;
    let bootstrap = format!("127.0.0.1:{PORT}");
    let pki = Pki::new();
    let ns = unique_namespace("fgout");
    let mut config = base_config(&pki);
    config["namespace"] = json!(ns);
    config["records"] = json!({"V": ["kafka"], "alerts": ["kafka"]});
    config["reliable_ack_sources"] = json!({"V": "kafka"});
    config["kafka"] = json!({"bootstrap.servers": bootstrap, "reconnect.backoff.max.ms": 1000});
    config["fleetgate"]["limits"] = json!({"max_pending_acks_per_connection": 5});
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let sender = format!("vehicle_device.{VIN}");

    // broker up: a reliable frame is acked
    fleetgate::tools::client::send_frame(&mut ws, frame("before", "V", &sender, b""))
        .await
        .unwrap();
    assert_eq!(answer(&mut ws).await, expected_ack(b"before", b"V", b""));

    broker("kill");
    // broker killed (-9): the reliable frame is not acked within 5 s
    fleetgate::tools::client::send_frame(&mut ws, frame("during-0", "V", &sender, b""))
        .await
        .unwrap();
    assert!(
        no_answer(&mut ws, Duration::from_secs(5)).await,
        "a reliable frame must not be acked while the broker is down"
    );
    // non-reliable topics are acked at once (queued in the producer)
    fleetgate::tools::client::send_frame(&mut ws, frame("alert-during", "alerts", &sender, b""))
        .await
        .unwrap();
    assert_eq!(
        answer(&mut ws).await,
        expected_ack(b"alert-during", b"alerts", b"")
    );

    // bounded: at most 5 reliable frames in flight; the rest are not even read
    for i in 1..20 {
        fleetgate::tools::client::send_frame(
            &mut ws,
            frame(&format!("during-{i}"), "V", &sender, b""),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server.metric("fleetgate_reliable_acks_pending"),
        5.0,
        "in-flight bound per connection"
    );
    assert_eq!(server.metric("fleetgate_kafka_connected"), 0.0);
    // still ready (vehicles keep connecting and are back-pressured); the broker's health is
    // its own endpoint
    let (ready, body) = server.admin("GET", "/readyz", None);
    assert_eq!(ready, 200, "{body}");
    assert_eq!(body["sinks"][0]["ready"], false, "{body}");
    let (status, sinks) = server.admin("GET", "/healthz/sinks", None);
    assert_eq!(status, 503, "{sinks}");
    assert!(
        sinks["sinks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("kafka"),
        "{sinks}"
    );
    let _second = connect(
        &server,
        &pki.ca_pem(),
        &pki.pki.vehicle("5YJ3E1EA7KF000002").unwrap(),
        &[],
    )
    .await
    .expect("a vehicle connects while the broker is down");
    let read_so_far = server.metric("fleetgate_frames_total{topic=\"V\",result=\"ok\"}");
    assert!(
        read_so_far <= 6.0,
        "reading must stop at the bound, read {read_so_far}"
    );

    broker("start");
    // every frame is acked once the broker is back (reading resumes as acks free slots)
    let mut acked = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.len() < 20 && Instant::now() < deadline {
        if let Ok(Some(Ok(bytes))) = tokio::time::timeout(
            Duration::from_secs(5),
            fleetgate::tools::client::next_binary(&mut ws),
        )
        .await
        {
            acked.insert(String::from_utf8(read_envelope(&bytes).unwrap().txid.to_vec()).unwrap());
        }
    }
    assert_eq!(acked.len(), 20, "acked after recovery: {acked:?}");

    let stored = consume(&bootstrap, &format!("{ns}_V"), 21, Duration::from_secs(30));
    let mut txids: Vec<String> = stored.iter().filter_map(|m| header(m, "txid")).collect();
    txids.sort();
    let mut expected: Vec<String> = (0..20)
        .map(|i| format!("during-{i}"))
        .chain(["before".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(txids, expected, "every frame stored exactly once");
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
    // vehicle.connected of the vehicle before the outage and of the one that connected
    // during it: each in Kafka exactly once
    let events = consume(
        &bootstrap,
        &format!("{ns}_events"),
        2,
        Duration::from_secs(20),
    );
    let mut keys: Vec<String> = events
        .iter()
        .map(|m| String::from_utf8_lossy(rdkafka::Message::key(m).unwrap_or_default()).into_owned())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [VIN, "5YJ3E1EA7KF000002"],
        "events lost or duplicated"
    );
    assert_eq!(server.metric("fleetgate_reliable_acks_pending"), 0.0);
    assert_eq!(server.metric("fleetgate_kafka_connected"), 1.0);
}
