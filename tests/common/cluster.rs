//! Cluster-mode helpers: configs for N instances on one namespace, convergence waits, the
//! committed events as a `read_committed` consumer sees them, frames over real mTLS
//! websockets and `V` records written as ingest writes them.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message as _;
use serde_json::{json, Value};

use super::*;
use fleetgate::wire::proto::vehicle_data::{value::Value as V, Datum, Field, LocationValue};

/// The longest an admin write may take to reach another instance in these tests.
/// (Socket presence is published every 2 s.)
pub const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

pub fn cluster_config(pki: &Pki, broker: &str, namespace: &str, instance: &str) -> Value {
    let mut config = base_config(pki);
    merge(
        &mut config,
        &json!({
            "namespace": namespace,
            "kafka": {"bootstrap.servers": broker},
            // the rules read V back from Kafka; acks wait until the record is there
            "records": {"V": ["kafka"]},
            "reliable_ack_sources": {"V": "kafka"},
            "fleetgate": {
                "data_dir": pki.dir.path().join(format!("data-{instance}")).display().to_string(),
                "events": {"sinks": ["kafka"]},
                "cluster": {"name": "test", "instance_id": instance, "write_timeout_s": 15,
                            "session_timeout_s": 6, "transaction_timeout_s": 5},
            },
        }),
    );
    config
}

/// Polls `GET path` on `server` until `done(status, body)`; returns how long it took.
pub fn until(server: &Server, path: &str, done: impl Fn(u16, &Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = server.admin("GET", path, None);
        if done(status, &body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PROPAGATION_LIMIT,
            "GET {path} on {} did not converge within {PROPAGATION_LIMIT:?}: last {status} {body}",
            server.admin.as_deref().unwrap_or("?")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn site(lat: f64) -> String {
    json!({"name": "Store", "kind": "merchant", "radius_m": 120,
        "geometry": {"type": "Point", "coordinates": [-97.74, lat]}})
    .to_string()
}

/// Runs `fleetgate serve` with `config` until it exits (it must refuse to start); returns its
/// exit code and stderr.
pub fn refused_start(config: &Value) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "config.json", &config.to_string());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the instances own every `V` partition between them, each owning one when there
/// are enough partitions (the group is stable), and each is ready; returns who owns what.
pub fn wait_for_rules(servers: &[&Server], partitions: usize) -> Vec<Vec<i64>> {
    let started = Instant::now();
    loop {
        let owned: Vec<Vec<i64>> = servers
            .iter()
            .map(|s| {
                let (_, v) = s.admin("GET", "/v1/cluster", None);
                v["rules_partitions"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default()
            })
            .collect();
        let total: usize = owned.iter().map(Vec::len).sum();
        // balanced: with no more members than partitions, every member owns one
        let balanced = servers.len() > partitions || owned.iter().all(|o| !o.is_empty());
        let ready = servers
            .iter()
            .all(|s| http(s.admin.as_deref().unwrap(), "GET", "/readyz", None, None).0 == 200);
        if total == partitions && balanced && ready {
            return owned;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rules group did not settle: {owned:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every committed event on `topic`, read until `done` holds for them (or 90 s pass).
pub fn committed_events(broker: &str, topic: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", uuid::Uuid::new_v4().to_string())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .expect("test consumer");
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap());
        }
    }
    // linger to catch duplicates
    let linger = Instant::now() + Duration::from_secs(2);
    while Instant::now() < linger {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap());
        }
    }
    out
}

pub fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == json!(kind)).count()
}

pub const CAFE: (f64, f64) = (30.2672, -97.7431);
pub const HEADERS: &[(&str, &str)] = &[("Version", "2025.44.1")];
pub const T0: i64 = 1_764_000_000;

/// Sends `frames` (seconds after [`T0`], datums) as vehicle `vin` to `server` over an mTLS
/// websocket, each acked once in Kafka (reliable); txids `{vin}-{first + i}`.
pub async fn send_frames(
    server: &Server,
    pki: &Pki,
    vin: &str,
    frames: &[(i64, Vec<Datum>)],
    first: usize,
) {
    let cert = pki.pki.vehicle(vin).unwrap();
    let mut ws = connect(server, &pki.ca_pem(), &cert, HEADERS)
        .await
        .unwrap();
    let sender = format!("vehicle_device.{vin}");
    for (i, (at, data)) in frames.iter().enumerate() {
        let txid = format!("{vin}-{}", first + i);
        fleetgate::tools::client::send_frame(
            &mut ws,
            frame(&txid, "V", &sender, &v_payload(T0 + at, data.clone())),
        )
        .await
        .unwrap();
        // reliable: acked once the record is in Kafka
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(txid.as_bytes(), b"V", b"")
        );
    }
}

/// A `Location` datum.
pub fn loc(lat: f64, lon: f64) -> Datum {
    datum(
        Field::Location,
        V::LocationValue(LocationValue {
            latitude: lat,
            longitude: lon,
        }),
    )
}

/// A `Soc` datum.
pub fn soc(v: f64) -> Datum {
    datum(Field::Soc, V::DoubleValue(v))
}

/// A `ChargeLimitSoc` datum.
pub fn charge_limit(v: f64) -> Datum {
    datum(Field::ChargeLimitSoc, V::DoubleValue(v))
}

/// A `DetailedChargeState` datum.
pub fn charge_state(s: fleetgate::wire::proto::vehicle_data::DetailedChargeStateValue) -> Datum {
    datum(
        Field::DetailedChargeState,
        V::DetailedChargeStateValue(s as i32),
    )
}

/// The instance (index into `servers`) whose rules own `vin`'s partition now.
pub fn owner_of(servers: &[&Server], vin: &str, partitions: usize) -> usize {
    let p = i64::from(fleetgate::cluster::rules::default_partition(
        vin, partitions,
    ));
    let owned = wait_for_rules(servers, partitions);
    owned
        .iter()
        .position(|o| o.contains(&p))
        .expect("every partition has an owner")
}

/// Creates the `depot` site (150 m around [`CAFE`]) through `writer` and waits until every
/// one of `others` has it.
pub fn depot(writer: &Server, others: &[&Server]) {
    let site = json!({"name": "Depot", "kind": "merchant", "radius_m": 150,
        "geometry": {"type": "Point", "coordinates": [CAFE.1, CAFE.0]}});
    let (status, body) = writer.admin("PUT", "/v1/sites/depot", Some(&site.to_string()));
    assert_eq!(status, 201, "{body}");
    for s in others {
        until(s, "/v1/sites/depot", |s, _| s == 200);
    }
}

/// A producer that writes `V` records as an ingest instance would (idempotent, 5 ms linger).
pub fn v_producer(broker: &str) -> rdkafka::producer::BaseProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("a V producer")
}

/// Writes `V` records as ingest does (key VIN, protobuf payload, `timestamp` header in ms).
pub fn produce_v(
    producer: &rdkafka::producer::BaseProducer,
    topic: &str,
    vin: &str,
    at_s: i64,
    lat: f64,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    let payload = v_payload(
        at_s,
        vec![datum(
            Field::Location,
            V::LocationValue(LocationValue {
                latitude: lat,
                longitude: CAFE.1,
            }),
        )],
    );
    let ts = (at_s * 1000).to_string();
    let mut record = rdkafka::producer::BaseRecord::to(topic)
        .key(vin)
        .payload(&payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: "timestamp",
            value: Some(&ts),
        }));
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}
