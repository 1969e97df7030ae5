//! Test harness: a dev PKI in a temp folder, the real `fleetgate serve` binary on ephemeral
//! loopback ports, its stdout (logger sink) and stderr captured, and mTLS websocket clients.
#![allow(dead_code)]

pub mod cluster;
pub mod fleet_api;
pub mod mosquitto;
pub mod webhook;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetgate::tools::certs::{DevPki, PemPair};
use fleetgate::tools::client::{self, VehicleSocket};
use fleetgate::wire::{EnvelopeWriter, StreamView};
use serde_json::Value;

/// The VIN of the shared vectors' sender.
pub const VIN: &str = "5YJ3E1EA7KF000001";

pub fn frames_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/frames")
}

pub fn vector(name: &str) -> Vec<u8> {
    std::fs::read(frames_dir().join(format!("{name}.bin"))).unwrap()
}

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate().unwrap();
        pki.write(
            dir.path(),
            &["localhost", "127.0.0.1"],
            &[VIN.to_owned()],
            false,
        )
        .unwrap();
        Pki { dir, pki }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn ca_pem(&self) -> String {
        self.pki.root.cert_pem.clone()
    }
}

/// The `fleetgate` binary the servers run: this build's, or `FLEETGATE_TEST_BIN` (to run a
/// test against another build, e.g. an older commit's, and see what it catches).
pub fn server_binary() -> PathBuf {
    std::env::var_os("FLEETGATE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fleetgate")))
}

/// A running `fleetgate serve` process.
pub struct Server {
    pub child: Child,
    pub vehicles: String,
    pub metrics: Option<String>,
    pub status: Option<String>,
    pub admin: Option<String>,
    pub proxy: Option<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    _config_dir: tempfile::TempDir,
}

/// A config with loopback listeners, the dev PKI and every topic to the logger; `extra` is
/// merged on top (objects merge key by key).
pub fn base_config(pki: &Pki) -> Value {
    serde_json::json!({
        "host": "127.0.0.1",
        "port": 0,
        "status_port": 0,
        "log_level": "info",
        "namespace": "tesla_telemetry",
        "tls": {
            "ca_file": pki.path("ca.pem"),
            "server_cert": pki.path("server.pem"),
            "server_key": pki.path("server.key"),
        },
        "monitoring": {"prometheus_metrics_port": 0, "prometheus_metrics_host": "127.0.0.1"},
        "records": {"V": ["logger"], "alerts": ["logger"], "errors": ["logger"], "connectivity": ["logger"]},
        "fleetgate": {
            "admin": {"listen": "127.0.0.1:0", "token": TOKEN},
            "data_dir": pki.dir.path().join("data").display().to_string(),
        },
    })
}

/// The admin token of [`base_config`].
pub const TOKEN: &str = "test-token-0123456789";

pub fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, e) => *b = e.clone(),
    }
}

fn capture(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>, echo: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("[server] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
}

impl Server {
    pub fn start(config: &Value) -> Server {
        Server::start_with_env(config, &[])
    }

    /// Starts the server with extra environment variables (secrets, tokens).
    pub fn start_with_env(config: &Value, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let addrs_path = dir.path().join("addrs.json");
        let mut child = Command::new(server_binary())
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--addrs-file")
            .arg(&addrs_path)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        capture(child.stdout.take().unwrap(), stdout.clone(), false);
        capture(child.stderr.take().unwrap(), stderr.clone(), true);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // the addresses the server bound, as it reports them (not parsed from a log line)
            if let Ok(text) = std::fs::read_to_string(&addrs_path) {
                let addrs: fleetgate::app::BoundAddrs =
                    serde_json::from_str(&text).expect("--addrs-file is BoundAddrs JSON");
                let shown = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
                return Server {
                    vehicles: addrs.vehicles.to_string(),
                    metrics: shown(addrs.metrics),
                    status: shown(addrs.status),
                    admin: shown(addrs.admin),
                    proxy: shown(addrs.proxy),
                    child,
                    stdout,
                    stderr,
                    _config_dir: dir,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "server exited with {status} before listening:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "server did not start within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// JSON lines on stdout matching `pred`, waiting up to `timeout` for at least `n`.
    pub fn wait_for_records(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Value> = self
                .stdout_lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| pred(v))
                .collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics_text(&self) -> String {
        http_get(
            self.metrics.as_deref().expect("metrics enabled"),
            "/metrics",
        )
    }

    /// The value of one metric series (exact label text), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text(), series)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A blocking HTTP/1.1 GET on plain TCP; returns the body.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Connects as a vehicle with `cert`, sending the usual vehicle headers.
pub async fn connect(
    server: &Server,
    ca_pem: &str,
    cert: &PemPair,
    headers: &[(&str, &str)],
) -> Result<VehicleSocket, client::ClientError> {
    let config = client::client_config_from_pem(ca_pem, &cert.chain_pem, &cert.key_pem)?;
    client::connect(&server.vehicles, "localhost", config, headers).await
}

/// Next binary answer within 5 s (panics on timeout or close).
pub async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), client::next_binary(ws))
        .await
        .expect("no answer within 5 s")
        .expect("connection closed")
        .expect("websocket error")
}

/// True when no binary answer arrives within `wait`.
pub async fn no_answer(ws: &mut VehicleSocket, wait: Duration) -> bool {
    tokio::time::timeout(wait, client::next_binary(ws))
        .await
        .is_err()
}

/// A frame as a vehicle sends it.
pub fn frame(txid: &str, topic: &str, sender_id: &str, payload: &[u8]) -> Vec<u8> {
    EnvelopeWriter::new()
        .stream(
            txid.as_bytes(),
            topic.as_bytes(),
            b"",
            &StreamView {
                created_at: 1_764_000_000,
                sender_id: sender_id.as_bytes(),
                payload,
                device_type: b"vehicle_device",
                device_id: VIN.as_bytes(),
                delivered_at_epoch_ms: 0,
            },
        )
        .to_vec()
}

pub fn expected_ack(txid: &[u8], topic: &[u8], message_id: &[u8]) -> Vec<u8> {
    EnvelopeWriter::new().ack(txid, topic, message_id).to_vec()
}

pub fn expected_error(txid: &[u8]) -> Vec<u8> {
    EnvelopeWriter::new().error_reply(txid).to_vec()
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

/// Address of the test broker (`FLEETGATE_TEST_KAFKA`, default 127.0.0.1:9092). Panics with
/// instructions when no broker answers: Kafka tests never skip.
pub fn require_broker() -> String {
    let addr = std::env::var("FLEETGATE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if std::net::TcpStream::connect_timeout(
        &addr
            .parse()
            .expect("FLEETGATE_TEST_KAFKA must be host:port"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "no Kafka broker answers on {addr}: start one with `scripts/kafka.sh start` \
             (scripts/test.sh starts it for you), or point FLEETGATE_TEST_KAFKA at a broker"
        );
    }
    addr
}

/// The test broker's SASL_SSL listener (scripts/kafka.sh): address and the CA its certificate
/// chains to. `FLEETGATE_TEST_KAFKA_SASL` / `FLEETGATE_TEST_KAFKA_CA` point elsewhere. Panics
/// with instructions when it does not answer: these tests never skip.
pub struct SaslBroker {
    pub bootstrap: String,
    pub ca: String,
}

pub fn require_sasl_broker() -> SaslBroker {
    let bootstrap =
        std::env::var("FLEETGATE_TEST_KAFKA_SASL").unwrap_or_else(|_| "127.0.0.1:9094".into());
    let ca = std::env::var("FLEETGATE_TEST_KAFKA_CA").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/kafka/tls/ca.pem")
            .display()
            .to_string()
    });
    let answers = std::net::TcpStream::connect_timeout(
        &bootstrap
            .parse()
            .expect("FLEETGATE_TEST_KAFKA_SASL must be host:port"),
        Duration::from_secs(2),
    )
    .is_ok();
    if !answers || !Path::new(&ca).is_file() {
        panic!(
            "no SASL_SSL Kafka listener on {bootstrap} (CA {ca}): start the test broker with              `scripts/kafka.sh start` (scripts/test.sh starts it for you; it makes the CA, the              SCRAM user and the ACLs)"
        );
    }
    SaslBroker { bootstrap, ca }
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on loopback `port`; panics after `timeout` with `what()` said.
pub fn wait_listening(port: u16, timeout: Duration, what: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {port} within {timeout:?}",
            what()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Python of the test environment (CloudEvents SDK installed): `FLEETGATE_TEST_PYTHON`,
/// else target/venv/bin/python. Panics with instructions when it is missing.
pub fn test_python() -> PathBuf {
    let python = std::env::var("FLEETGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"));
    let ok = Command::new(&python)
        .args([
            "-c",
            "import cloudevents.core.bindings.kafka, standardwebhooks",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import the CloudEvents SDK and Standard Webhooks: run scripts/test.sh (it makes target/venv), or          `python3 -m venv target/venv && target/venv/bin/pip install -r tests/sdk/requirements.txt`",
        python.display()
    );
    python
}

/// A unique namespace so every test gets fresh topics.
pub fn unique_namespace(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Reads `topic` from the beginning until `n` messages arrived or `timeout` passed.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", uuid::Uuid::new_v4().to_string())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .expect("test consumer");
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    // linger briefly to catch duplicates beyond `n`
    let linger = Instant::now() + Duration::from_millis(700);
    while Instant::now() < linger {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// The value of a header of a consumed message.
pub fn header(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = rdkafka::Message::headers(m)?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// A blocking HTTP/1.1 request; returns (status, body). `token` adds a bearer header.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

impl Server {
    /// An authorized admin request; the body parsed as JSON (Null when empty).
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = http(
            self.admin.as_deref().expect("admin enabled"),
            method,
            path,
            Some(TOKEN),
            body,
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Polls a metric series until it reaches `at_least` (or 5 s pass); returns its value.
pub async fn wait_metric(server: &Server, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = server.metric(series);
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One datum of a `V` payload.
pub fn datum(
    key: fleetgate::wire::proto::vehicle_data::Field,
    value: fleetgate::wire::proto::vehicle_data::value::Value,
) -> fleetgate::wire::proto::vehicle_data::Datum {
    fleetgate::wire::proto::vehicle_data::Datum {
        key: key as i32,
        value: Some(fleetgate::wire::proto::vehicle_data::Value { value: Some(value) }),
    }
}

/// An encoded `V` payload created at `created_s` (unix seconds).
pub fn v_payload(
    created_s: i64,
    data: Vec<fleetgate::wire::proto::vehicle_data::Datum>,
) -> Vec<u8> {
    prost::Message::encode_to_vec(&fleetgate::wire::proto::vehicle_data::Payload {
        data,
        created_at: Some(fleetgate::wire::Timestamp {
            seconds: created_s,
            nanos: 0,
        }),
        vin: String::new(),
        is_resend: false,
    })
}

/// VINs of the open connections (admin API), polled until at least `expect` are listed or 3 s
/// pass: the client sees the 101 a moment before the server registers the connection.
pub async fn connected_vins(server: &Server, expect: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, v) = server.admin("GET", "/v1/connections", None);
        let vins: Vec<String> = v["connections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["vin"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if vins.len() >= expect || Instant::now() > deadline {
            return vins;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A POST with extra headers (a webhook delivery); (status, body as JSON or Null).
pub fn post(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A Smartcar `VEHICLE_STATE` delivery (v4 payload) with a location and a SoC.
pub fn smartcar_state(vehicle_id: &str, lat: f64, lon: f64, soc: f64) -> String {
    serde_json::json!({
        "eventId": uuid::Uuid::new_v4().to_string(),
        "eventType": "VEHICLE_STATE",
        "data": {
            "vehicle": {"id": vehicle_id, "make": "TESLA", "model": "Model 3", "year": 2024},
            "signals": [
                {"code": "location-preciselocation", "name": "PreciseLocation", "group": "Location",
                 "body": {"latitude": lat, "longitude": lon}, "status": {"value": "SUCCESS"},
                 "meta": {"retrievedAt": 1_764_000_100_000i64, "oemUpdatedAt": 1_764_000_100_000i64}},
                {"code": "tractionbattery-stateofcharge", "name": "StateOfCharge", "group": "TractionBattery",
                 "body": {"unit": "percent", "value": soc}, "status": {"value": "SUCCESS"}},
            ],
        },
        "triggers": [{"type": "SIGNAL_UPDATED", "signal": {"code": "location-preciselocation"}}],
        "meta": {"version": "4.0", "deliveryId": "d-1", "deliveredAt": 1_764_000_101_000i64, "mode": "LIVE"},
    })
    .to_string()
}
