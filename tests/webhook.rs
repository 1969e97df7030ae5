//! The webhook sink against a receiver written as an order service would write one (Standard
//! Webhooks signature checks, the CloudEvents SDK's HTTP binding): nothing is lost while the
//! receiver is down under load or across a fleetgate restart, each vehicle's messages arrive
//! in order, and what can never be delivered ends in the dead-letter file.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::webhook::{Receiver, SECRET};
use common::*;
use serde_json::{json, Value};

/// A config whose records and events go to one webhook endpoint `orders` at `url`.
fn webhook_config(pki: &Pki, url: &str, endpoint: Value, extra: Value) -> Value {
    let mut c = base_config(pki);
    let mut endpoint_all = json!({"name": "orders", "url": url, "secret": SECRET});
    merge(&mut endpoint_all, &endpoint);
    merge(
        &mut c,
        &json!({
            "records": {"V": ["webhook"]},
            "reliable_ack_sources": {"V": "webhook"},
            "fleetgate": {
                "events": {"sinks": ["webhook"]},
                "webhook": {"endpoints": [endpoint_all], "retry_initial_ms": 200,
                            "retry_max_ms": 2000, "timeout_ms": 2000},
            },
        }),
    );
    merge(&mut c, &extra);
    c
}

/// `fleetgate sim` as a child process (its summary on stdout).
fn sim(server: &Server, pki: &Pki, vehicles: u32, seconds: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["sim", "--server", &server.vehicles, "--rate", "1"])
        .args(["--vehicles", &vehicles.to_string()])
        .args(["--duration", &seconds.to_string()])
        .arg("--certs")
        .arg(pki.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the sim; returns (frames sent, frames acked).
fn sim_result(child: Child) -> (u64, u64) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sim failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |label: &str| -> u64 {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no `{label}` in the sim's summary:\n{stdout}"))
            as u64
    };
    (value("frames sent"), value("frames acked"))
}

/// A dead-letter line that holds a `V` record.
fn is_dead_record(line: &Value) -> bool {
    line["body"]["type"] == "fleetgate.record.V"
}

/// The dead-letter file's lines, read until it holds `records` records or `timeout` passed.
fn dead_letters(path: &std::path::Path, records: u64, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.iter().filter(|l| is_dead_record(l)).count() as u64 >= records
            || Instant::now() > deadline
        {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn records(received: &[Value]) -> Vec<&Value> {
    received
        .iter()
        .filter(|m| m["type"] == "fleetgate.record.V")
        .collect()
}

fn unique_ids(received: &[&Value]) -> HashSet<String> {
    received
        .iter()
        .map(|m| m["webhook_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Per vehicle, the records arrived in the order the vehicle made them.
fn assert_in_order_per_vehicle(received: &[&Value]) {
    let mut last: HashMap<&str, &str> = HashMap::new();
    for m in received {
        let vin = m["subject"].as_str().unwrap();
        let time = m["time"].as_str().unwrap();
        if let Some(prev) = last.insert(vin, time) {
            assert!(
                prev <= time,
                "{vin}: a record of {time} arrived after one of {prev}"
            );
        }
    }
}

#[test]
fn receiver_down_for_60_s_under_load_loses_nothing_and_keeps_each_vehicles_order() {
    let pki = Pki::new();
    let mut receiver = Receiver::start();
    let server = Server::start(&webhook_config(
        &pki,
        &receiver.url("/orders"),
        json!({}),
        json!({}),
    ));
    const VEHICLES: u32 = 60;
    let load = sim(&server, &pki, VEHICLES, 100);
    let started = Instant::now();
    let at = |s: u64| {
        let t = Duration::from_secs(s);
        if let Some(wait) = t.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    };
    at(15);
    let before_outage = records(&receiver.received()).len();
    assert!(
        before_outage > 100,
        "records flow before the outage: {before_outage}"
    );
    receiver.down();
    eprintln!("receiver down at {:?}", started.elapsed());
    at(30);
    let (status, sinks) = server.admin("GET", "/healthz/sinks", None);
    assert_eq!(status, 503, "the outage shows on /healthz/sinks: {sinks}");
    assert!(sinks.to_string().contains("orders"), "{sinks}");
    let depth = server.metric("fleetgate_webhook_outbox_depth{endpoint=\"orders\"}");
    assert!(depth > 500.0, "messages wait in the outbox: {depth}");
    at(75);
    receiver.up();
    eprintln!("receiver up at {:?}", started.elapsed());
    let (sent, acked) = sim_result(load);
    assert!(
        acked >= u64::from(VEHICLES) * 90,
        "sent {sent}, acked {acked}"
    );
    eprintln!("sim: {sent} frames sent, {acked} acked");
    let received = receiver.wait_until(Duration::from_secs(90), |got| {
        unique_ids(&records(got)).len() as u64 >= acked
    });
    let recs = records(&received);
    let unique = unique_ids(&recs).len() as u64;
    assert!(
        unique >= acked && unique <= sent,
        "every acked frame reached the receiver once the outage ended: {unique} unique records, {acked} acked, {sent} sent"
    );
    assert_in_order_per_vehicle(&recs);
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());
    // the records are the vehicles' data as CloudEvents
    let any = recs[recs.len() / 2];
    assert_eq!(any["mode"], "structured");
    assert!(
        any["data"]["data"].is_array(),
        "the payload's datums: {any}"
    );
    let retried = server.metric("fleetgate_webhook_retried_total{endpoint=\"orders\"}");
    assert!(retried > 0.0, "the outage was retried");
    assert_eq!(
        server.metric("fleetgate_webhook_dead_lettered_total{endpoint=\"orders\"}"),
        0.0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("fleetgate_webhook_outbox_depth{endpoint=\"orders\"}") > 0.0 {
        assert!(Instant::now() < deadline, "the outbox drains to 0");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, sinks) = server.admin("GET", "/healthz/sinks", None);
    assert_eq!(status, 200, "healthy again: {sinks}");
}

#[test]
fn an_outage_across_a_fleetgate_restart_loses_nothing() {
    let pki = Pki::new();
    let mut receiver = Receiver::start();
    receiver.down();
    let config = webhook_config(
        &pki,
        &receiver.url("/orders"),
        json!({"content_mode": "binary"}),
        json!({}),
    );
    let mut server = Server::start(&config);
    let (sent, acked) = sim_result(sim(&server, &pki, 5, 6));
    assert!(acked >= 25, "sent {sent}, acked {acked}");
    // graceful stop with everything still undelivered
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    assert!(receiver.received().is_empty());
    let outbox = pki.dir.path().join("data/webhook-outbox/outbox.sqlite");
    assert!(outbox.is_file(), "{} holds them", outbox.display());
    drop(server);
    let server = Server::start(&config);
    receiver.up();
    let received = receiver.wait_until(Duration::from_secs(30), |got| {
        unique_ids(&records(got)).len() as u64 >= acked
    });
    let recs = records(&received);
    let unique = unique_ids(&recs).len() as u64;
    assert!(
        unique >= acked && unique <= sent,
        "{unique} unique records after the restart, {acked} acked, {sent} sent"
    );
    assert_in_order_per_vehicle(&recs);
    assert!(recs.iter().all(|m| m["mode"] == "binary"));
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());
    assert!(server.stderr_text().contains("resuming delivery"));
}

#[test]
fn a_message_never_accepted_is_retried_then_dead_lettered_never_dropped() {
    let pki = Pki::new();
    let receiver = Receiver::start();
    let dead = pki.dir.path().join("dead.jsonl");
    // a secret the receiver does not know: it answers 401 to every request
    let config = webhook_config(
        &pki,
        &receiver.url("/orders"),
        json!({"secret": "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
        json!({"fleetgate": {"webhook": {"dead_letter_after_s": 3,
            "dead_letter_file": dead.display().to_string()}}}),
    );
    let server = Server::start(&config);
    let (_, acked) = sim_result(sim(&server, &pki, 2, 3));
    assert!(acked >= 4);
    let lines = dead_letters(&dead, acked, Duration::from_secs(30));
    let dead_records: Vec<&Value> = lines.iter().filter(|l| is_dead_record(l)).collect();
    assert_eq!(
        dead_records.len() as u64,
        acked,
        "every acked frame is dead-lettered"
    );
    // the vehicles' connected events too: everything routed there, nothing dropped
    assert!(lines
        .iter()
        .any(|l| l["body"]["type"] == "fleetgate.vehicle.connected"));
    let first = dead_records[0];
    assert_eq!(first["endpoint"], "orders");
    assert!(first["reason"].as_str().unwrap().contains("401"), "{first}");
    assert!(receiver.received().is_empty());
    assert!(!receiver.refused().is_empty(), "the receiver refused them");
    // the counter matches the file (read until they agree: disconnect events may still be
    // on their way to the file)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counted = server.metric("fleetgate_webhook_dead_lettered_total{endpoint=\"orders\"}");
        let in_file = std::fs::read_to_string(&dead).unwrap().lines().count();
        if counted == in_file as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead-lettered counter {counted} vs {in_file} lines"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.metric("fleetgate_webhook_retried_total{endpoint=\"orders\"}") > 0.0);
}

/// A receiver that answers `410 Gone` to every request (Standard Webhooks: the endpoint is
/// gone for good) and counts them.
fn gone_receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream
                .write_all(b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, count)
}

#[test]
fn a_receiver_that_answers_410_gone_is_disabled_and_its_messages_dead_lettered() {
    let pki = Pki::new();
    let (url, requests) = gone_receiver();
    let dead = pki.dir.path().join("dead.jsonl");
    let config = webhook_config(
        &pki,
        &url,
        json!({}),
        json!({"fleetgate": {"webhook": {"dead_letter_file": dead.display().to_string()}}}),
    );
    let server = Server::start(&config);
    let (_, acked) = sim_result(sim(&server, &pki, 1, 3));
    assert!(acked >= 2);
    // every acked frame ends in the dead-letter file, with the reason, none retried
    let lines = dead_letters(&dead, acked, Duration::from_secs(15));
    assert_eq!(
        lines.iter().filter(|l| is_dead_record(l)).count() as u64,
        acked
    );
    assert!(lines
        .iter()
        .all(|l| l["reason"].as_str().unwrap().contains("410 Gone")));
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one vehicle, one 410: nothing is sent (or retried) after it"
    );
    assert!(
        server.metric("fleetgate_webhook_dead_lettered_total{endpoint=\"orders\"}") >= acked as f64
    );
    assert!(server.metric("fleetgate_webhook_retried_total{endpoint=\"orders\"}") == 0.0);
}
