//! Black-box tests of `fleetgate serve`: the real binary, a real TLS handshake with dev
//! certificates, a real websocket client, exact answer bytes, logger output and metrics.

mod common;

use std::time::Duration;

use common::*;
use fleetgate::wire::read_envelope;
use serde_json::{json, Value};

const VEHICLE_HEADERS: &[(&str, &str)] = &[
    ("Version", "2025.44.1"),
    ("X-Network-Interface", "wifi"),
    ("X-TXID", "6d1f0a4e-3c1b-4a8e-9f00-0123456789ab"),
];

fn ok_vectors() -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = std::fs::read_dir(frames_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("bad_"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let b = vector(&n);
            (n, b)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_vehicle_streams_every_vector_and_gets_exact_acks() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();

    let vectors = ok_vectors();
    assert!(vectors.len() >= 10);
    for (name, bin) in &vectors {
        client_send(&mut ws, bin.clone()).await;
        let env = read_envelope(bin).unwrap();
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(env.txid, env.topic, env.message_id),
            "{name}: ack bytes"
        );
    }
    // every vector reached the logger sink, transformed, with the certificate's VIN
    let records = server.wait_for_records(vectors.len(), Duration::from_secs(5), |v| {
        v["topic"] != "connectivity" && v.get("payload").is_some()
    });
    assert_eq!(records.len(), vectors.len(), "{:?}", server.stdout_lines());
    for r in &records {
        assert_eq!(r["vin"], VIN);
        assert_eq!(r["payload"]["vin"], VIN);
    }
    let legacy = records
        .iter()
        .find(|r| r["txid"] == "4f1c2a90-0003")
        .unwrap();
    assert_eq!(
        legacy["payload"]["data"][0]["value"]["locationValue"],
        json!({"latitude": 30.2672, "longitude": -97.7431})
    );
    assert_eq!(
        server.metric("fleetgate_frames_total{topic=\"V\",result=\"ok\"}"),
        8.0
    );
    assert_eq!(server.metric("fleetgate_acks_total"), vectors.len() as f64);
    assert_eq!(server.metric("fleetgate_connections_open"), 1.0);
    assert_eq!(
        server.metric("fleetgate_handshakes_total{result=\"ok\"}"),
        1.0
    );
}

async fn client_send(ws: &mut fleetgate::tools::client::VehicleSocket, frame: Vec<u8>) {
    fleetgate::tools::client::send_frame(ws, frame)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_get_the_reference_answers_and_the_connection_stays_open() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    let sender = format!("vehicle_device.{VIN}");

    // unreadable envelopes: nothing to answer with
    for bad in ["bad_empty", "bad_not_flatbuffers", "bad_truncated"] {
        client_send(&mut ws, vector(bad)).await;
    }
    assert!(no_answer(&mut ws, Duration::from_millis(300)).await);

    // a payload that is not the topic's protobuf: error reply with the txid
    client_send(
        &mut ws,
        frame("tx-bad-payload", "V", &sender, &[0xff, 0xff, 0xff]),
    )
    .await;
    assert_eq!(answer(&mut ws).await, expected_error(b"tx-bad-payload"));

    // 1,000,001 bytes: error reply, connection stays open
    let mut big = frame("tx-big", "V", &sender, &vec![0u8; 1_000_100]);
    big.truncate(1_000_001.max(big.len()));
    assert!(big.len() > 1_000_000);
    client_send(&mut ws, big).await;
    assert_eq!(answer(&mut ws).await, expected_error(b"tx-big"));

    // unknown message type: acked
    let odd = fleetgate::wire::EnvelopeWriter::new()
        .raw_envelope(b"tx-odd", b"V", 9)
        .to_vec();
    client_send(&mut ws, odd).await;
    assert_eq!(answer(&mut ws).await, expected_ack(b"tx-odd", b"V", b""));

    // unknown topic and the server-owned connectivity topic: acked, never dispatched
    client_send(&mut ws, frame("tx-topic", "mystery", &sender, b"")).await;
    assert_eq!(
        answer(&mut ws).await,
        expected_ack(b"tx-topic", b"mystery", b"")
    );
    client_send(&mut ws, frame("tx-conn", "connectivity", &sender, b"")).await;
    assert_eq!(
        answer(&mut ws).await,
        expected_ack(b"tx-conn", b"connectivity", b"")
    );

    // still serving
    let good = vector("v_typed_drive");
    client_send(&mut ws, good).await;
    assert_eq!(
        answer(&mut ws).await,
        expected_ack(
            b"4f1c2a90-0001",
            b"V",
            read_envelope(&vector("v_typed_drive")).unwrap().message_id
        )
    );

    let text = server.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            "fleetgate_frames_total{topic=\"other\",result=\"malformed\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &text,
            "fleetgate_frames_total{topic=\"V\",result=\"bad_payload\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "fleetgate_frames_total{topic=\"other\",result=\"too_big\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "fleetgate_frames_total{topic=\"V\",result=\"unknown_message_type\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "fleetgate_frames_total{topic=\"other\",result=\"unknown_topic\"}"
        ),
        2.0
    );
    assert_eq!(metric_value(&text, "fleetgate_error_replies_total"), 2.0);
    // nothing but the good frame was dispatched
    let dispatched = server.wait_for_records(1, Duration::from_secs(2), |v| v["topic"] == "V");
    assert_eq!(dispatched.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_sender_id_is_dispatched_under_the_certificates_vin() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let other = pki.pki.vehicle("5YJ3E1EA7KF999999").unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &other, VEHICLE_HEADERS)
        .await
        .unwrap();
    // the shared vector claims vehicle_device.5YJ3E1EA7KF000001 and carries vin ...000001
    let bin = vector("v_typed_drive");
    let env = read_envelope(&bin).unwrap();
    let expected = expected_ack(env.txid, env.topic, env.message_id);
    client_send(&mut ws, bin.clone()).await;
    assert_eq!(answer(&mut ws).await, expected);
    // its own sender id works
    client_send(
        &mut ws,
        frame("tx-own", "V", "vehicle_device.5YJ3E1EA7KF999999", b""),
    )
    .await;
    assert_eq!(answer(&mut ws).await, expected_ack(b"tx-own", b"V", b""));
    // and the bare device id is accepted as sender id too
    client_send(&mut ws, frame("tx-bare", "V", "5YJ3E1EA7KF999999", b"")).await;
    assert_eq!(answer(&mut ws).await, expected_ack(b"tx-bare", b"V", b""));
    let v = server.wait_for_records(3, Duration::from_secs(2), |v| v["topic"] == "V");
    assert_eq!(
        v.len(),
        3,
        "every frame is dispatched, the mismatched one too"
    );
    // never under the claimed identity: the certificate's VIN, the data kept
    assert!(v.iter().all(|r| r["vin"] == "5YJ3E1EA7KF999999"), "{v:?}");
    let mismatched = v
        .iter()
        .find(|r| r["txid"] != "tx-own" && r["txid"] != "tx-bare")
        .unwrap();
    assert!(
        !mismatched["payload"]["data"].as_array().unwrap().is_empty(),
        "the mismatched frame's data is dispatched: {mismatched}"
    );
    assert_eq!(server.metric("fleetgate_sender_mismatch_total"), 1.0);
    assert_eq!(
        server.metric("fleetgate_frames_total{topic=\"V\",result=\"ok\"}"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_negative_certificate_is_refused_with_a_counted_reason() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let ca = pki.ca_pem();

    // refused by the TLS handshake
    for (case, reason) in [
        ("untrusted-ca", "untrusted_issuer"),
        ("expired", "expired"),
        ("not-yet-valid", "not_yet_valid"),
    ] {
        let cert = pki.pki.negative(case, VIN).unwrap();
        let result = connect(&server, &ca, &cert, VEHICLE_HEADERS).await;
        assert!(result.is_err(), "{case} must be refused");
        let series = format!("fleetgate_handshakes_total{{result=\"{reason}\"}}");
        wait_metric(&server, &series, 1.0).await;
        assert_eq!(server.metric(&series), 1.0, "{case}: {series}");
    }
    // an operator sees why at info level (one line per reason every 10 s)
    let log = server.stderr_text();
    for reason in ["untrusted_issuer", "expired", "not_yet_valid"] {
        assert!(
            log.lines()
                .any(|l| l.contains("tls handshake refused") && l.contains(reason)),
            "no info line for {reason}:\n{log}"
        );
    }

    // verified by TLS, refused by the identity rules (403 at the upgrade)
    for (case, reason) in [
        ("unknown-issuer", "issuer_not_allowed"),
        ("excluded-oid", "excluded_oid"),
        ("oid-issuer-no-oid", "no_client_type_oid"),
    ] {
        let cert = pki.pki.negative(case, VIN).unwrap();
        let err = connect(&server, &ca, &cert, VEHICLE_HEADERS)
            .await
            .err()
            .unwrap_or_else(|| panic!("{case} must be refused"));
        assert!(err.to_string().contains("403"), "{case}: {err}");
        assert_eq!(
            server.metric(&format!(
                "fleetgate_identity_refused_total{{reason=\"{reason}\"}}"
            )),
            1.0,
            "{case}"
        );
    }

    // no client certificate at all
    {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let config = std::sync::Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let result = fleetgate::tools::client::connect(
            &server.vehicles,
            "localhost",
            config,
            VEHICLE_HEADERS,
        )
        .await;
        assert!(result.is_err());
        wait_metric(
            &server,
            "fleetgate_handshakes_total{result=\"no_client_cert\"}",
            1.0,
        )
        .await;
        assert_eq!(
            server.metric("fleetgate_handshakes_total{result=\"no_client_cert\"}"),
            1.0
        );
    }

    // an OID issuer with a client-type OID is accepted, as energy_device
    let energy = pki.pki.negative("oid-energy-device", VIN).unwrap();
    let mut ws = connect(&server, &ca, &energy, VEHICLE_HEADERS)
        .await
        .unwrap();
    client_send(
        &mut ws,
        frame("tx-e", "V", &format!("energy_device.{VIN}"), b""),
    )
    .await;
    assert_eq!(answer(&mut ws).await, expected_ack(b"tx-e", b"V", b""));
    assert_eq!(server.metric("fleetgate_connections_open"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoints_and_connectivity_records() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    // the plain status port
    assert_eq!(http_get(server.status.as_deref().unwrap(), "/status"), "ok");

    // GET /status over mTLS on the vehicle port
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cert = pki.pki.vehicle(VIN).unwrap();
        let config = fleetgate::tools::client::client_config_from_pem(
            &pki.ca_pem(),
            &cert.chain_pem,
            &cert.key_pem,
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(&server.vehicles)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tls.read_to_string(&mut text).await.ok();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("mtls ok"), "{text}");
    }

    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    let connected =
        server.wait_for_records(1, Duration::from_secs(3), |v| v["topic"] == "connectivity");
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0]["payload"]["status"], "CONNECTED");
    // the id is the server's own, never the client's X-TXID header
    let first_id = connected[0]["payload"]["connectionId"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(first_id).is_ok(), "{first_id}");
    assert_ne!(first_id, "6d1f0a4e-3c1b-4a8e-9f00-0123456789ab");
    assert_eq!(connected[0]["payload"]["networkInterface"], "wifi");
    assert_eq!(connected[0]["vin"], VIN);
    ws.close(None).await.ok();
    drop(ws);
    let both = server.wait_for_records(2, Duration::from_secs(3), |v| v["topic"] == "connectivity");
    assert_eq!(both.len(), 2);
    assert_eq!(both[1]["payload"]["status"], "DISCONNECTED");
    assert_eq!(
        both[1]["payload"]["connectionId"],
        both[0]["payload"]["connectionId"]
    );

    // two sockets of one vehicle sending the same X-TXID header get different ids
    let _ws2 = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    let _ws3 = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    let all = server.wait_for_records(4, Duration::from_secs(3), |v| v["topic"] == "connectivity");
    let ids: std::collections::HashSet<&str> = all
        .iter()
        .filter(|r| r["payload"]["status"] == "CONNECTED")
        .map(|r| r["payload"]["connectionId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "every socket has its own connection id: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frames_close_the_socket_and_other_vehicles_are_unaffected() {
    use futures_util::SinkExt;
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut bad = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    let mut good = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    bad.send(tokio_tungstenite::tungstenite::Message::Text(
        "hello".into(),
    ))
    .await
    .unwrap();
    let closed = tokio::time::timeout(
        Duration::from_secs(3),
        fleetgate::tools::client::next_binary(&mut bad),
    )
    .await
    .unwrap();
    assert!(
        closed.is_none() || closed.unwrap().is_err(),
        "text message must end the connection"
    );
    client_send(&mut good, vector("v_charging")).await;
    assert_eq!(
        answer(&mut good).await,
        expected_ack(
            b"4f1c2a90-0004",
            b"V",
            read_envelope(&vector("v_charging")).unwrap().message_id
        )
    );
    assert_eq!(
        server.metric("fleetgate_ws_closed_total{reason=\"text_message\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_that_stops_reading_is_cut_off_without_slowing_others() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    merge(
        &mut config,
        &json!({"records": {"V": []}, "fleetgate": {"limits": {"write_timeout_s": 1}}}),
    );
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut stuck = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    let mut good = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    // the stuck vehicle writes thousands of frames and never reads a single ack
    let sender = format!("vehicle_device.{VIN}");
    let flood = tokio::spawn(async move {
        let payload = vec![0u8; 0];
        for i in 0..200_000 {
            let f = frame(
                &format!("tx-{i:08}-{}", "x".repeat(200)),
                "V",
                &sender,
                &payload,
            );
            if tokio::time::timeout(
                Duration::from_secs(5),
                fleetgate::tools::client::send_frame(&mut stuck, f),
            )
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
            {
                return i;
            }
        }
        200_000
    });
    // meanwhile the other vehicle keeps getting prompt acks
    for i in 0..20 {
        let txid = format!("good-{i}");
        let started = std::time::Instant::now();
        client_send(
            &mut good,
            frame(&txid, "V", &format!("vehicle_device.{VIN}"), b""),
        )
        .await;
        assert_eq!(
            answer(&mut good).await,
            expected_ack(txid.as_bytes(), b"V", b"")
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "ack took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("stuck client was never cut off")
        .unwrap();
    assert!(
        sent < 200_000,
        "server must stop a vehicle that does not read its acks"
    );
    wait_metric(
        &server,
        "fleetgate_ws_closed_total{reason=\"write_timeout\"}",
        1.0,
    )
    .await;
    assert_eq!(
        server.metric("fleetgate_ws_closed_total{reason=\"write_timeout\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_drops_frames_over_the_limit_only_when_enabled() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    merge(
        &mut config,
        &json!({"rate_limit": {"enabled": true, "message_limit": 3, "message_interval_time": 60}}),
    );
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    let sender = format!("vehicle_device.{VIN}");
    for i in 0..3 {
        client_send(&mut ws, frame(&format!("rl-{i}"), "V", &sender, b"")).await;
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(format!("rl-{i}").as_bytes(), b"V", b"")
        );
    }
    client_send(&mut ws, frame("rl-over", "V", &sender, b"")).await;
    assert!(
        no_answer(&mut ws, Duration::from_millis(500)).await,
        "over the limit: dropped unacked"
    );
    assert_eq!(
        server.metric("fleetgate_rate_limited_total{topic=\"V\"}"),
        1.0
    );
    assert_eq!(
        server.metric("fleetgate_frames_total{topic=\"V\",result=\"rate_limited\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let pki = Pki::new();
    let mut server = Server::start(&base_config(&pki));
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, VEHICLE_HEADERS)
        .await
        .unwrap();
    client_send(&mut ws, vector("v_route")).await;
    let _ = answer(&mut ws).await;
    server.signal("TERM");
    // the vehicle is told the server is going away
    let end = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut ws),
    )
    .await
    .unwrap();
    match end {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1001)
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    assert!(server.stderr_text().contains("shutdown complete"));
    // new connections are refused after shutdown
    assert!(std::net::TcpStream::connect(&server.vehicles).is_err());
    let disconnected = server.wait_for_records(1, Duration::from_secs(1), |v: &Value| {
        v["payload"]["status"] == "DISCONNECTED"
    });
    assert_eq!(disconnected.len(), 1);
}

#[test]
fn bad_configs_stop_start_up_naming_the_key() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        let path = write_file(dir.path(), "c.json", config);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .args(["serve", "--config"])
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("{ not json");
    assert_eq!(code, Some(2));
    assert!(err.contains("line 1"), "{err}");

    let mut c = base_config(&pki);
    c["tls"]["server_cert"] = json!("/nonexistent/server.pem");
    c["records"]["V"] = json!(["kinesis"]);
    let (code, err) = run(&c.to_string());
    assert_eq!(code, Some(2));
    assert!(err.contains("tls.server_cert"), "{err}");
    assert!(
        err.contains("records.V") && err.contains("kinesis"),
        "{err}"
    );

    let (code, err) = run(&json!({"port": 0}).to_string());
    assert_eq!(code, Some(2));
    assert!(err.contains("tls:") && err.contains("certs dev"), "{err}");

    // a key file that is not a key: named at start-up
    let mut c = base_config(&pki);
    c["tls"]["server_key"] = json!(pki.path("ca.pem"));
    let (code, err) = run(&c.to_string());
    assert_eq!(code, Some(2));
    assert!(err.contains("tls.server_key"), "{err}");
}

#[test]
fn certs_dev_writes_a_usable_pki() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["certs", "dev", "--vehicles", "2", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "issuing-ca.pem",
        "vehicles/5YJ3E1EA7KF000002.pem",
        "negative/expired.pem",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    // the written vehicle cert chains to the written CA and maps to its VIN
    let chain = std::fs::read_to_string(dir.path().join("vehicles/5YJ3E1EA7KF000001.pem")).unwrap();
    let leaf = rustls_pki_types::pem::PemObject::pem_slice_iter(chain.as_bytes())
        .next()
        .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap())
        .unwrap();
    let id = fleetgate::ingest::identity::identity_from_der(&leaf).unwrap();
    assert_eq!(id.sender_id, "vehicle_device.5YJ3E1EA7KF000001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_truth_per_vehicle_across_overlapping_sockets() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    merge(
        &mut config,
        &json!({"fleetgate": {"connectivity": {"vehicle_grace_s": 1}}}),
    );
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let kind = |t: &'static str| move |v: &Value| v["type"] == t;
    let mut wifi = connect(
        &server,
        &pki.ca_pem(),
        &cert,
        &[("X-Network-Interface", "wifi")],
    )
    .await
    .unwrap();
    let mut cell = connect(
        &server,
        &pki.ca_pem(),
        &cert,
        &[("X-Network-Interface", "cellular")],
    )
    .await
    .unwrap();
    assert_eq!(
        server
            .wait_for_records(
                1,
                Duration::from_secs(2),
                kind("fleetgate.vehicle.connected")
            )
            .len(),
        1
    );
    // hand-over: wifi drops, cellular stays; then cellular drops and wifi comes back within the grace
    wifi.close(None).await.ok();
    drop(wifi);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cell.close(None).await.ok();
    drop(cell);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = connect(
        &server,
        &pki.ca_pem(),
        &cert,
        &[("X-Network-Interface", "wifi")],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server
            .wait_for_records(
                1,
                Duration::from_millis(100),
                kind("fleetgate.vehicle.connected")
            )
            .len(),
        1,
        "no second connected"
    );
    assert!(
        server
            .wait_for_records(
                1,
                Duration::from_millis(100),
                kind("fleetgate.vehicle.disconnected")
            )
            .is_empty(),
        "no disconnect during a hand-over"
    );
    // per-socket connectivity records are still there for every socket
    assert_eq!(
        server
            .wait_for_records(3, Duration::from_secs(1), |v| v["topic"] == "connectivity"
                && v["payload"]["status"] == "CONNECTED")
            .len(),
        3
    );
    // a real disconnect fires once after the grace
    again.close(None).await.ok();
    drop(again);
    let gone = server.wait_for_records(
        1,
        Duration::from_secs(4),
        kind("fleetgate.vehicle.disconnected"),
    );
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0]["data"]["vin"], VIN);
    let (_, v) = server.admin("GET", &format!("/v1/vehicles/{VIN}"), None);
    assert_eq!(v["state"]["connected"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_only_forwards_changed_datums_and_acks_everything() {
    use fleetgate::wire::proto::vehicle_data::{value::Value as V, Field, ShiftState};
    let pki = Pki::new();
    let mut config = base_config(&pki);
    // reliable acks on too: a fully suppressed frame has nothing to wait for and is acked at once
    merge(
        &mut config,
        &json!({"reliable_ack_sources": {"V": "logger"},
        "fleetgate": {"changes_only": {"topics": ["V"], "min_delta": {"Soc": 0.5}, "max_age_s": 300}}}),
    );
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let payload = |t: i64, soc: f64| {
        v_payload(
            1_764_000_000 + t,
            vec![
                datum(Field::Soc, V::DoubleValue(soc)),
                datum(Field::Gear, V::ShiftStateValue(ShiftState::D as i32)),
            ],
        )
    };
    let sender = format!("vehicle_device.{VIN}");
    for (i, (t, soc)) in [(0, 60.0), (1, 60.2), (2, 61.0)].into_iter().enumerate() {
        let txid = format!("co-{i}");
        fleetgate::tools::client::send_frame(&mut ws, frame(&txid, "V", &sender, &payload(t, soc)))
            .await
            .unwrap();
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(txid.as_bytes(), b"V", b""),
            "every frame is acked"
        );
    }
    let lines = server.wait_for_records(2, Duration::from_secs(2), |v| v["topic"] == "V");
    assert_eq!(
        lines.len(),
        2,
        "the unchanged frame is not forwarded: {lines:?}"
    );
    assert_eq!(lines[0]["payload"]["data"].as_array().unwrap().len(), 2);
    let last = lines[1]["payload"]["data"].as_array().unwrap();
    assert_eq!(last.len(), 1, "only the changed Soc: {last:?}");
    assert_eq!(last[0]["key"], "Soc");
    assert_eq!(
        server.metric("fleetgate_changes_suppressed_datums_total"),
        3.0
    );
    assert_eq!(
        server.metric("fleetgate_changes_suppressed_records_total"),
        1.0
    );
}

#[test]
fn every_metric_family_has_help_and_known_counters_start_at_zero() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let text = server.metrics_text();
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(typed.len() > 20, "{text}");
    for name in &typed {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "{name} has no HELP line"
        );
    }
    // dashboards show 0, not "No data", before the first occurrence
    for series in [
        "fleetgate_frames_total{topic=\"V\",result=\"bad_payload\"}",
        "fleetgate_connections_total{result=\"over_capacity\"}",
        "fleetgate_ws_closed_total{reason=\"idle\"}",
        "fleetgate_events_total{type=\"fleetgate.arrival.arrived\"}",
        "fleetgate_sender_mismatch_total",
        "fleetgate_handshake_admission_total{result=\"waited\"}",
    ] {
        assert_eq!(metric_value(&text, series), 0.0, "{series}");
        assert!(text.contains(series), "{series} is not registered:\n{text}");
    }
    // process metrics
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(text.contains("process_open_fds"), "{text}");
    // no Kafka sink configured: no Kafka series
    assert!(!text.contains("sink=\"kafka\""), "{text}");
    assert!(
        !text.contains("fleetgate_kafka_produce_errors_total{"),
        "{text}"
    );
    // CPU time with its fraction (the metrics crate's counters are whole numbers)
    let cpu = text
        .lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .expect("process_cpu_seconds_total");
    assert!(cpu.contains('.'), "whole seconds only: {cpu}");
    drop(server);

    // every sink's series, once the sink is configured (brokers and receiver need not answer)
    let mut config = base_config(&pki);
    merge(
        &mut config,
        &serde_json::json!({
            "records": {"V": ["logger", "kafka", "mqtt", "webhook"]},
            "kafka": {"bootstrap.servers": "127.0.0.1:1"},
            "mqtt": {"broker": "127.0.0.1:1", "topic_base": "t", "qos": 1},
            "fleetgate": {
                "events": {"sinks": ["kafka", "mqtt", "webhook"]},
                "webhook": {"endpoints": [{"name": "orders", "url": "http://127.0.0.1:9/hook",
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]},
            },
        }),
    );
    let server = Server::start(&config);
    let text = server.metrics_text();
    for series in [
        "fleetgate_handshakes_in_flight",
        "fleetgate_kafka_delivered_total{topic=\"V\"}",
        "fleetgate_kafka_delivery_errors_total{topic=\"events\"}",
        "fleetgate_mqtt_published_total{record_type=\"event\"}",
        "fleetgate_mqtt_published_bytes_total{record_type=\"V\"}",
        "fleetgate_mqtt_errors_total{reason=\"timeout\"}",
        "fleetgate_mqtt_in_flight",
        "fleetgate_webhook_delivered_total{endpoint=\"orders\"}",
        "fleetgate_webhook_retried_total{endpoint=\"orders\"}",
        "fleetgate_webhook_dead_lettered_total{endpoint=\"orders\"}",
        "fleetgate_webhook_outbox_errors_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{series} "))),
            "{series} is not registered:\n{text}"
        );
    }
}
