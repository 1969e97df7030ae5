//! Hostile clients against the real server: slowloris on the TLS handshake and on the upgrade,
//! idle TLS connections, fragmented giant messages, compression bombs, ping floods, a second
//! connection of the same VIN, and per-IP handshake floods. During each, a well-behaved
//! vehicle keeps getting prompt acks, and the server's memory stays bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn hostile_config(pki: &Pki) -> serde_json::Value {
    let mut c = base_config(pki);
    merge(
        &mut c,
        &json!({"fleetgate": {"limits": {
            "handshake_timeout_s": 1, "upgrade_timeout_s": 1, "handshakes_per_ip_per_s": 0,
            "max_message_bytes": 1_500_000
        }}}),
    );
    c
}

/// A well-behaved vehicle: 20 frames, each acked within `max` (returns the worst latency).
async fn well_behaved(server: &Server, pki: &Pki, max: Duration) -> Duration {
    let cert = pki.pki.vehicle("5YJ3E1EA7KF777777").unwrap();
    let mut ws = connect(server, &pki.ca_pem(), &cert, &[])
        .await
        .expect("well-behaved vehicle connects");
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let txid = format!("good-{i}");
        let started = Instant::now();
        fleetgate::tools::client::send_frame(
            &mut ws,
            frame(&txid, "V", "vehicle_device.5YJ3E1EA7KF777777", b""),
        )
        .await
        .unwrap();
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(txid.as_bytes(), b"V", b"")
        );
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        worst < max,
        "ack latency {worst:?} exceeds {max:?} under attack"
    );
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connections_are_cut_and_bounded() {
    let pki = Pki::new();
    let server = Server::start(&hostile_config(&pki));
    let before = rss_kib(server.child.id());

    // 300 TCP connections that never start TLS
    let mut raw = Vec::new();
    for _ in 0..300 {
        raw.push(
            tokio::net::TcpStream::connect(&server.vehicles)
                .await
                .unwrap(),
        );
    }
    // 100 that finish TLS but trickle the HTTP request one byte at a time
    let cert = pki.pki.vehicle(VIN).unwrap();
    let config = fleetgate::tools::client::client_config_from_pem(
        &pki.ca_pem(),
        &cert.chain_pem,
        &cert.key_pem,
    )
    .unwrap();
    let mut trickling = Vec::new();
    for _ in 0..100 {
        let tcp = tokio::net::TcpStream::connect(&server.vehicles)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        trickling.push(tls);
    }
    let mid = rss_kib(server.child.id());
    for _ in 0..3 {
        for t in trickling.iter_mut() {
            let _ = t.write_all(b"X").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // meanwhile a real vehicle is served promptly
    well_behaved(&server, &pki, Duration::from_millis(500)).await;

    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_handshakes_total{result=\"timeout\"}",
            300.0
        )
        .await,
        300.0
    );
    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_http_requests_total{outcome=\"timeout\"}",
            100.0
        )
        .await,
        100.0
    );
    // the connections were closed by the server: reads return EOF
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), raw[0].read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let after = rss_kib(server.child.id());
    eprintln!("RSS KiB: before {before}, with 400 hostile connections {mid}, after {after}");
    assert!(
        mid - before.min(mid) < 64 * 1024,
        "400 hostile connections cost {} KiB",
        mid - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_fragmented_messages_bombs_and_ping_floods() {
    let pki = Pki::new();
    let server = Server::start(&hostile_config(&pki));
    let pid = server.child.id();
    let before = rss_kib(pid);
    let cert = pki.pki.vehicle(VIN).unwrap();

    // a message fragmented into 100 KB continuation frames, growing past max_message_bytes
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let chunk = vec![0u8; 100_000];
    ws.send(Message::Frame(Frame::message(
        chunk.clone(),
        OpCode::Data(Data::Binary),
        false,
    )))
    .await
    .unwrap();
    for _ in 0..30 {
        if ws
            .send(Message::Frame(Frame::message(
                chunk.clone(),
                OpCode::Data(Data::Continue),
                false,
            )))
            .await
            .is_err()
        {
            break;
        }
    }
    let end = tokio::time::timeout(
        Duration::from_secs(5),
        fleetgate::tools::client::next_binary(&mut ws),
    )
    .await
    .unwrap();
    assert!(
        end.is_none() || end.unwrap().is_err(),
        "a message past the limit must end the connection"
    );
    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_ws_closed_total{reason=\"message_too_large\"}",
            1.0
        )
        .await,
        1.0
    );

    // a "compressed" frame (RSV1) although no extension was negotiated: protocol error, closed
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let mut bomb = Frame::message(
        vec![0x78, 0x9c, 0xff, 0xff],
        OpCode::Data(Data::Binary),
        true,
    );
    bomb.header_mut().rsv1 = true;
    let _ = ws.send(Message::Frame(bomb)).await;
    let end = tokio::time::timeout(
        Duration::from_secs(5),
        fleetgate::tools::client::next_binary(&mut ws),
    )
    .await
    .unwrap();
    assert!(end.is_none() || end.unwrap().is_err());
    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_ws_closed_total{reason=\"protocol_error\"}",
            1.0
        )
        .await,
        1.0
    );

    // a ping flood from one vehicle while another streams
    let flooder = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let flood = tokio::spawn(async move {
        let mut ws = flooder;
        let mut sent = 0;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if ws.send(Message::Ping(vec![1u8; 64].into())).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    well_behaved(&server, &pki, Duration::from_millis(500)).await;
    let pings = flood.await.unwrap();
    eprintln!("ping flood: {pings} pings in 2 s");
    assert!(pings > 1000);
    let after = rss_kib(pid);
    eprintln!("RSS KiB: before {before}, after giant/bomb/flood {after}");
    assert!(
        after < before + 48 * 1024,
        "memory grew by {} KiB",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_the_same_vin_wins_after_the_handover_grace() {
    let pki = Pki::new();
    let mut config = hostile_config(&pki);
    merge(
        &mut config,
        &json!({"fleetgate": {"connectivity": {"handover_s": 1}}}),
    );
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut old = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let mut new = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let sender = format!("vehicle_device.{VIN}");
    // during the hand-over both sockets work
    fleetgate::tools::client::send_frame(&mut old, frame("old-1", "V", &sender, b""))
        .await
        .unwrap();
    assert_eq!(answer(&mut old).await, expected_ack(b"old-1", b"V", b""));
    // then the older one is closed with a normal close, reason `superseded`
    let end = tokio::time::timeout(
        Duration::from_secs(4),
        futures_util::StreamExt::next(&mut old),
    )
    .await
    .unwrap();
    match end {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1000);
            assert_eq!(f.reason.as_str(), "superseded");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    fleetgate::tools::client::send_frame(&mut new, frame("new-1", "V", &sender, b""))
        .await
        .unwrap();
    assert_eq!(answer(&mut new).await, expected_ack(b"new-1", b"V", b""));
    assert_eq!(
        server.metric("fleetgate_ws_closed_total{reason=\"superseded\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_ip_is_limited() {
    let pki = Pki::new();
    let mut config = hostile_config(&pki);
    merge(
        &mut config,
        &json!({"fleetgate": {"limits": {"handshakes_per_ip_per_s": 5}}}),
    );
    let server = Server::start(&config);
    let mut conns = Vec::new();
    for _ in 0..50 {
        conns.push(
            tokio::net::TcpStream::connect(&server.vehicles)
                .await
                .unwrap(),
        );
    }
    let limited = wait_metric(
        &server,
        "fleetgate_connections_total{result=\"ip_rate_limited\"}",
        40.0,
    )
    .await;
    assert!((40.0..=46.0).contains(&limited), "limited {limited}");
    drop(conns);
    // after a second the bucket refills: a real vehicle gets in
    tokio::time::sleep(Duration::from_millis(1200)).await;
    well_behaved(&server, &pki, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_cap_closes_extra_connections_at_accept() {
    let pki = Pki::new();
    let mut config = hostile_config(&pki);
    merge(
        &mut config,
        &json!({"fleetgate": {"limits": {"max_connections": 2, "handshake_timeout_s": 5}}}),
    );
    let server = Server::start(&config);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let a = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let _b = connect(&server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    assert!(
        connect(&server, &pki.ca_pem(), &cert, &[]).await.is_err(),
        "a third connection must be refused"
    );
    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_connections_total{result=\"over_capacity\"}",
            1.0
        )
        .await,
        1.0
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        connect(&server, &pki.ca_pem(), &cert, &[]).await.is_ok(),
        "a slot frees when a vehicle leaves"
    );
}
