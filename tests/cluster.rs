//! Cluster mode against the real test broker: three instances share sites, watches and VIN
//! lists through compacted topics; a write on one is read back by it at once
//! (read-your-writes) and reaches the others within a bounded time; an instance that starts
//! later restores everything before it listens; a VIN blocked on one instance closes the
//! vehicle's socket on the instance that holds it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The longest an admin write may take to reach another instance in these tests.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

fn cluster_config(pki: &Pki, broker: &str, namespace: &str, instance: &str) -> Value {
    let mut config = base_config(pki);
    merge(
        &mut config,
        &json!({
            "namespace": namespace,
            "kafka": {"bootstrap.servers": broker},
            "fleetgate": {
                "data_dir": pki.dir.path().join(format!("data-{instance}")).display().to_string(),
                "cluster": {"name": "test", "instance_id": instance, "write_timeout_s": 15},
            },
        }),
    );
    config
}

/// Polls `GET path` on `server` until `done(status, body)`; returns how long it took.
fn until(server: &Server, path: &str, done: impl Fn(u16, &Value) -> bool) -> Duration {
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

fn site(lat: f64) -> String {
    json!({"name": "Store", "kind": "merchant", "radius_m": 120,
        "geometry": {"type": "Point", "coordinates": [-97.74, lat]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_on_one_instance_reach_every_instance_and_a_late_one_restores_them() {
    let broker = require_broker();
    let namespace = unique_namespace("fgcluster");
    let pki = Pki::new();
    let a = Server::start(&cluster_config(&pki, &broker, &namespace, "a"));
    let b = Server::start(&cluster_config(&pki, &broker, &namespace, "b"));
    let c = Server::start(&cluster_config(&pki, &broker, &namespace, "c"));
    let mut slowest = Duration::ZERO;

    // a site written on A: read back on A at once, seen on B and C
    let (s, v) = a.admin("PUT", "/v1/sites/s1", Some(&site(30.26)));
    assert_eq!(s, 201, "{v}");
    let (s, v) = a.admin("GET", "/v1/sites/s1", None);
    assert_eq!(
        (s, v["radius_m"].clone()),
        (200, json!(120.0)),
        "read-your-writes on A: {v}"
    );
    for other in [&b, &c] {
        slowest = slowest.max(until(other, "/v1/sites/s1", |s, _| s == 200));
    }
    // replaced on B: 200, and A sees the new value
    let (s, _) = b.admin("PUT", "/v1/sites/s1", Some(&site(30.27)));
    assert_eq!(s, 200, "the site exists cluster-wide, so this is a replace");
    slowest = slowest.max(until(&a, "/v1/sites/s1", |_, v| {
        v["geometry"]["coordinates"] == json!([-97.74, 30.27])
    }));

    // a watch created on B for that site: A and C list it; a second create anywhere conflicts
    let watch = json!({"watch_id": "w1", "vin": VIN, "site_id": "s1", "expires_at": "2099-01-01T00:00:00Z"});
    let (s, v) = b.admin("POST", "/v1/watches", Some(&watch.to_string()));
    assert_eq!(s, 201, "{v}");
    for other in [&a, &c] {
        slowest = slowest.max(until(other, "/v1/watches/w1", |s, _| s == 200));
    }
    assert_eq!(
        c.admin("POST", "/v1/watches", Some(&watch.to_string())).0,
        409
    );

    // an import on C is one transaction: every site appears on A and B
    let fc = json!({"type": "FeatureCollection", "features": (2..=4).map(|i| json!({
        "type": "Feature", "id": format!("s{i}"),
        "geometry": {"type": "Point", "coordinates": [-97.7 - f64::from(i) / 100.0, 30.3]},
        "properties": {"radius_m": 80, "kind": "charger"}})).collect::<Vec<_>>()});
    let (s, v) = c.admin("POST", "/v1/sites/import", Some(&fc.to_string()));
    assert_eq!((s, v["imported"].clone()), (200, json!(3)), "{v}");
    for other in [&a, &b] {
        slowest = slowest.max(until(other, "/v1/sites", |_, v| v["count"] == json!(4)));
    }

    // a vehicle on A; its VIN blocked through C: A closes the socket (1008)
    let ca = pki.ca_pem();
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&a, &ca, &cert, &[]).await.unwrap();
    assert_eq!(connected_vins(&a, 1).await, vec![VIN.to_owned()]);
    let (s, v) = c.admin("PUT", &format!("/v1/vins/block/{VIN}"), None);
    assert_eq!(
        (s, v["connections_closed"].clone()),
        (201, json!(0)),
        "C holds no socket of it: {v}"
    );
    let end = tokio::time::timeout(PROPAGATION_LIMIT, futures_util::StreamExt::next(&mut ws))
        .await
        .expect("A must close the blocked vehicle's socket");
    match end {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    slowest = slowest.max(until(&b, "/v1/vins", |_, v| {
        v["admin"]["block"] == json!([VIN])
    }));

    // deletes are tombstones: gone everywhere
    assert_eq!(c.admin("DELETE", "/v1/sites/s1", None).0, 204);
    assert_eq!(
        c.admin("GET", "/v1/sites/s1", None).0,
        404,
        "read-your-writes on C"
    );
    assert_eq!(a.admin("DELETE", "/v1/watches/w1", None).0, 204);
    for other in [&a, &b] {
        slowest = slowest.max(until(other, "/v1/sites/s1", |s, _| s == 404));
    }
    for other in [&b, &c] {
        slowest = slowest.max(until(other, "/v1/watches/w1", |s, _| s == 404));
    }
    assert_eq!(
        b.admin("DELETE", "/v1/sites/s1", None).0,
        404,
        "already deleted cluster-wide"
    );
    eprintln!("slowest propagation to another instance: {slowest:?}");

    // an instance started now restores the whole state before it listens
    let d = Server::start(&cluster_config(&pki, &broker, &namespace, "d"));
    let (_, sites) = d.admin("GET", "/v1/sites", None);
    let mut ids: Vec<&str> = sites["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["s2", "s3", "s4"], "{sites}");
    assert_eq!(d.admin("GET", "/v1/watches/w1", None).0, 404);
    assert_eq!(
        d.admin("GET", "/v1/vins", None).1["admin"]["block"],
        json!([VIN])
    );
    assert_eq!(d.metric("fleetgate_cluster_restored"), 1.0);
    assert!(d.metric("fleetgate_cluster_shared_applied_total{kind=\"sites\"}") >= 6.0);
    assert!(
        connect(&d, &ca, &cert, &[]).await.is_err(),
        "blocked on D too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_kafka_cannot_take_is_refused_and_nothing_is_applied() {
    let broker = require_broker();
    let namespace = unique_namespace("fgcluster");
    let pki = Pki::new();
    let a = Server::start(&cluster_config(&pki, &broker, &namespace, "a"));
    // a second process with the same instance id fences A's transactional producer
    let a2 = Server::start(&cluster_config(&pki, &broker, &namespace, "a"));
    let (s, v) = a.admin("PUT", "/v1/sites/x", Some(&site(30.1)));
    assert_eq!(s, 503, "a fenced producer must not report success: {v}");
    assert_eq!(v["error"], json!("cluster_unavailable"), "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("instance_id"),
        "says why: {v}"
    );
    assert_eq!(
        a.admin("GET", "/v1/sites/x", None).0,
        404,
        "nothing applied"
    );
    assert_eq!(
        a2.admin("GET", "/v1/sites/x", None).0,
        404,
        "nothing committed"
    );
    // the next write on A replaces the fenced producer (and fences a2's in turn)
    let (s, v) = a.admin("PUT", "/v1/sites/x", Some(&site(30.1)));
    assert_eq!(s, 201, "{v}");
    until(&a2, "/v1/sites/x", |s, _| s == 200);
    assert!(
        a.metric("fleetgate_cluster_transaction_aborts_total{reason=\"produce\"}")
            + a.metric("fleetgate_cluster_transaction_aborts_total{reason=\"commit\"}")
            >= 1.0
    );
}
