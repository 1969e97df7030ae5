//! Cluster mode against the real test broker: three instances share sites, watches and VIN
//! lists through compacted topics; a write on one is read back by it at once
//! (read-your-writes) and reaches the others within a bounded time; an instance that starts
//! later restores everything before it listens; a VIN blocked on one instance closes the
//! vehicle's socket on the instance that holds it.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use fleetgate::event::{event_id, EventType};
use fleetgate::wire::proto::vehicle_data::{
    value::Value as V, DetailedChargeStateValue as Dcs, Field, LocationValue,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

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
    // every instance lists the socket and names the instance holding it
    for other in [&b, &c] {
        until(other, "/v1/connections", |_, v| {
            v["count"] == json!(1)
                && v["connections"][0]["vin"] == json!(VIN)
                && v["connections"][0]["instance"] == json!("a")
        });
    }
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
    // the closed socket leaves every instance's list
    until(&c, "/v1/connections", |_, v| v["count"] == json!(0));

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

    // a client behind a load balancer: a site created on one instance, at once a watch for
    // it on another — accepted every time (the other instance waits for the site briefly)
    for i in 0..5 {
        let (s, v) = a.admin("PUT", &format!("/v1/sites/lb{i}"), Some(&site(30.4)));
        assert_eq!(s, 201, "{v}");
        let watch = json!({"watch_id": format!("lb-w{i}"), "vin": VIN, "site_id": format!("lb{i}"),
            "expires_at": "2099-01-01T00:00:00Z"});
        let (s, v) = d.admin("POST", "/v1/watches", Some(&watch.to_string()));
        assert_eq!(
            s, 201,
            "a watch for a site just created on another instance: {v}"
        );
    }
    // a site that exists nowhere is still refused
    let watch = json!({"watch_id": "lb-none", "vin": VIN, "site_id": "nowhere",
        "expires_at": "2099-01-01T00:00:00Z"});
    let (s, v) = d.admin("POST", "/v1/watches", Some(&watch.to_string()));
    assert_eq!((s, v["error"].as_str()), (422, Some("unknown_site")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_kafka_cannot_take_is_refused_and_nothing_is_applied() {
    use rdkafka::producer::Producer;
    let broker = require_broker();
    let namespace = unique_namespace("fgcluster");
    let pki = Pki::new();
    let a = Server::start(&cluster_config(&pki, &broker, &namespace, "a"));
    let b = Server::start(&cluster_config(&pki, &broker, &namespace, "b"));
    // another producer takes A's admin transactional id: A's producer is fenced
    let fencer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set(
            "transactional.id",
            format!("fleetgate-{namespace}-test-a-admin"),
        )
        .create()
        .unwrap();
    fencer.init_transactions(Duration::from_secs(30)).unwrap();
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
        b.admin("GET", "/v1/sites/x", None).0,
        404,
        "nothing committed"
    );
    // the next write on A replaces the fenced producer
    let (s, v) = a.admin("PUT", "/v1/sites/x", Some(&site(30.1)));
    assert_eq!(s, 201, "{v}");
    until(&b, "/v1/sites/x", |s, _| s == 200);
    assert!(
        a.metric("fleetgate_cluster_transaction_aborts_total{reason=\"produce\"}")
            + a.metric("fleetgate_cluster_transaction_aborts_total{reason=\"commit\"}")
            >= 1.0
    );
}

/// Two live instances with one id would fence each other's transactions (every admin write a
/// 503); a second cluster name on the same namespace would run the rules over the same `V`
/// records and double every event. Both are refused at start, naming the other party; the
/// default instance ids of three instances on one host are unique, and they form one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_live_id_and_a_second_cluster_name_are_refused_and_default_ids_are_unique() {
    let broker = require_broker();
    let namespace = unique_namespace("fgident");
    let pki = Pki::new();
    let a = Server::start(&cluster_config(&pki, &broker, &namespace, "a"));

    let (code, stderr) = refused_start(&cluster_config(&pki, &broker, &namespace, "a"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("instance id `a` is in use by a live instance `a` of cluster `test`")
            && stderr.contains(&format!("pid {}", a.child.id()))
            && stderr.contains("fleetgate.cluster.instance_id"),
        "names the live instance and the fix: {stderr}"
    );

    let mut green = cluster_config(&pki, &broker, &namespace, "g1");
    green["fleetgate"]["cluster"]["name"] = json!("green");
    let (code, stderr) = refused_start(&green);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cluster `green` would share its topics with live cluster `test`")
            && stderr.contains("instance `a`")
            && stderr.contains("namespace"),
        "names both clusters and the fix: {stderr}"
    );
    // the first instance is untouched: its admin writes still succeed
    assert_eq!(a.admin("PUT", "/v1/sites/s1", Some(&site(30.2))).0, 201);

    // three instances on this host without instance ids: unique defaults, one cluster
    let without_id = || {
        let mut c = cluster_config(&pki, &broker, &namespace, "x");
        c["fleetgate"]["cluster"]
            .as_object_mut()
            .unwrap()
            .remove("instance_id");
        c
    };
    let plain: Vec<Server> = (0..3).map(|_| Server::start(&without_id())).collect();
    let mut ids = std::collections::BTreeSet::new();
    for s in &plain {
        let (_, v) = s.admin("GET", "/v1/cluster", None);
        ids.insert(v["instance"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 3, "unique default ids: {ids:?}");
    let mut refs: Vec<&Server> = plain.iter().collect();
    refs.push(&a);
    wait_for_rules(&refs, 3);
    for (i, s) in plain.iter().enumerate() {
        let (st, v) = s.admin("PUT", &format!("/v1/sites/d{i}"), Some(&site(30.3)));
        assert_eq!(st, 201, "admin writes work on every instance: {v}");
    }
}

/// A shared-state topic someone created with the default `delete` policy would lose sites and
/// watches to retention: the instance refuses to start, names the topic and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_state_topic_that_is_not_compacted_is_refused_at_start() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let broker = require_broker();
    let namespace = unique_namespace("fgdelete");
    let topic = format!("{namespace}_fleetgate_watches");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .unwrap();
    let created =
        admin
            .create_topics(
                [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
                    .set("cleanup.policy", "delete")],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
    assert!(created[0].is_ok(), "{created:?}");

    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.json",
        &cluster_config(&pki, &broker, &namespace, "a").to_string(),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "refused to start: {stderr}");
    assert!(
        stderr.contains(&topic)
            && stderr.contains("cleanup.policy=delete")
            && stderr.contains("--add-config cleanup.policy=compact"),
        "names the topic, its policy and the fix: {stderr}"
    );
}

/// The visit, frame by frame: (seconds after T0, datums).
fn visit() -> Vec<(i64, Vec<fleetgate::wire::proto::vehicle_data::Datum>)> {
    let loc = |lat: f64, lon: f64| {
        datum(
            Field::Location,
            V::LocationValue(LocationValue {
                latitude: lat,
                longitude: lon,
            }),
        )
    };
    let soc = |v: f64| datum(Field::Soc, V::DoubleValue(v));
    let charge = |s: Dcs| {
        datum(
            Field::DetailedChargeState,
            V::DetailedChargeStateValue(s as i32),
        )
    };
    vec![
        (0, vec![loc(CAFE.0 + 0.01, CAFE.1), soc(50.0)]),
        (60, vec![loc(CAFE.0 + 0.005, CAFE.1), soc(50.0)]),
        (120, vec![loc(CAFE.0, CAFE.1), soc(49.0)]), // arrives
        (
            180,
            vec![
                loc(CAFE.0, CAFE.1),
                charge(Dcs::DetailedChargeStateCharging),
                soc(55.0),
            ],
        ),
        (240, vec![loc(CAFE.0, CAFE.1), soc(62.0)]),
        // the instance holding the vehicle (and its rules) dies here
        (300, vec![loc(CAFE.0, CAFE.1), soc(71.0)]),
        (360, vec![loc(CAFE.0, CAFE.1), soc(81.0)]), // charge complete (target 80)
        (
            420,
            vec![
                loc(CAFE.0, CAFE.1),
                charge(Dcs::DetailedChargeStateComplete),
            ],
        ),
        (480, vec![loc(CAFE.0 + 0.003, CAFE.1)]), // 330 m north: beyond radius + margin
        (540, vec![loc(CAFE.0 + 0.01, CAFE.1)]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_survives_kill_9_of_the_instance_holding_the_vehicle_and_its_rules() {
    let broker = require_broker();
    let namespace = unique_namespace("fgrules");
    let pki = Pki::new();
    let mut servers: Vec<Option<Server>> = ["a", "b", "c"]
        .iter()
        .map(|i| {
            Some(Server::start_with_env(
                &cluster_config(&pki, &broker, &namespace, i),
                &[("RUST_LOG", "info,fleetgate::cluster=debug")],
            ))
        })
        .collect();
    let live = |servers: &[Option<Server>]| -> Vec<usize> {
        (0..servers.len())
            .filter(|i| servers[*i].is_some())
            .collect()
    };
    let refs: Vec<&Server> = servers.iter().flatten().collect();
    let owned = wait_for_rules(&refs, 3);

    let site = json!({"name": "Cafe", "kind": "charger", "radius_m": 100,
        "geometry": {"type": "Point", "coordinates": [CAFE.1, CAFE.0]}});
    let a = servers[0].as_ref().unwrap();
    assert_eq!(
        a.admin("PUT", "/v1/sites/cafe", Some(&site.to_string())).0,
        201
    );
    let watch = json!({"watch_id": "order-1", "vin": VIN, "site_id": "cafe", "target_soc": 80,
        "expires_at": "2099-01-01T00:00:00Z"});
    assert_eq!(
        a.admin("POST", "/v1/watches", Some(&watch.to_string())).0,
        201
    );
    for s in servers.iter().flatten() {
        until(s, "/v1/watches/order-1", |s, _| s == 200);
    }

    // the instance that owns the VIN's partition (librdkafka's default partitioner) holds
    // the socket too: killing it takes both the ingest and the rules of this vehicle
    let partition = i64::from(fleetgate::cluster::rules::default_partition(VIN, 3));
    let holder = owned.iter().position(|o| o.contains(&partition)).unwrap();
    let other = (holder + 1) % 3;
    let frames = visit();
    send_frames(
        servers[holder].as_ref().unwrap(),
        &pki,
        VIN,
        &frames[..5],
        0,
    )
    .await;
    servers[holder].as_ref().unwrap().signal("KILL");
    servers[holder]
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(5));
    servers[holder] = None;
    send_frames(servers[other].as_ref().unwrap(), &pki, VIN, &frames[5..], 5).await;

    let topic = format!("{namespace}_events");
    let events = committed_events(&broker, &topic, |e| count(e, "fleetgate.site.exited") >= 1);
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| !t.starts_with("fleetgate.vehicle."))
        .collect();
    // approaching: the car closes in at ~9 m/s without a route (straight-line ETA < 1 min)
    assert_eq!(
        kinds,
        [
            "fleetgate.arrival.approaching",
            "fleetgate.site.entered",
            "fleetgate.arrival.arrived",
            "fleetgate.charging.started",
            "fleetgate.arrival.charge_complete",
            "fleetgate.charging.stopped",
            "fleetgate.site.exited",
        ],
        "each event once, in order, across the kill: {events:?}"
    );
    let arrived = events
        .iter()
        .find(|e| e["type"] == json!("fleetgate.arrival.arrived"))
        .unwrap();
    assert_eq!(
        arrived["id"],
        json!(event_id(
            EventType::ArrivalArrived,
            VIN,
            "order-1",
            (T0 + 120) * 1000
        )),
        "the id a single node gives the same frames"
    );
    assert_eq!(arrived["data"]["soc_at_arrival"], json!(49.0));
    let ids: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no id twice");

    // every instance restarts: nothing fires again, the vehicle's rules pick up where they were
    for i in live(&servers) {
        let s = servers[i].as_ref().unwrap();
        s.signal("TERM");
        servers[i]
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(20));
        servers[i] = None;
    }
    let fresh: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|i| Server::start(&cluster_config(&pki, &broker, &namespace, i)))
        .collect();
    wait_for_rules(&fresh.iter().collect::<Vec<_>>(), 3);
    // the vehicle's rules remember it is outside: a frame further out fires nothing
    send_frames(&fresh[0], &pki, VIN, &[(600, frames[9].1.clone())], 10).await;
    // ... and that the watch arrived: back at the site, only the geofence fires
    send_frames(&fresh[1], &pki, VIN, &[(660, frames[2].1.clone())], 11).await;
    let after = committed_events(&broker, &topic, |e| count(e, "fleetgate.site.entered") >= 2);
    let kinds: Vec<&str> = after
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| !t.starts_with("fleetgate.vehicle."))
        .collect();
    assert_eq!(
        kinds.len(),
        8,
        "one new site.entered, nothing else: {kinds:?}"
    );
    assert_eq!(count(&after, "fleetgate.arrival.arrived"), 1);
    // the cluster-wide view answers on every instance
    for s in &fresh {
        until(s, &format!("/v1/vehicles/{VIN}"), |st, v| {
            st == 200 && v["sites_inside"] == json!(["cafe"])
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_under_load_of_1000_vehicles_loses_no_event_and_doubles_none() {
    use rdkafka::producer::Producer;
    let broker = require_broker();
    let namespace = unique_namespace("fgload");
    let pki = Pki::new();
    let start = |id: &str| Server::start(&cluster_config(&pki, &broker, &namespace, id));
    let a = start("a");
    let mut b = Some(start("b"));
    wait_for_rules(&[&a, b.as_ref().unwrap()], 3);
    depot(&a, &[b.as_ref().unwrap()]);

    let producer = v_producer(&broker);
    let topic = format!("{namespace}_V");
    let vins: Vec<String> = (0..1000).map(|i| format!("LOADVIN{i:010}")).collect();
    // each vehicle: far, inside, inside, far → one entry and one exit
    let rounds = [CAFE.0 + 0.01, CAFE.0, CAFE.0, CAFE.0 + 0.01];
    let mut c = None;
    for (r, lat) in rounds.iter().enumerate() {
        for vin in &vins {
            produce_v(&producer, &topic, vin, T0 + 60 * r as i64, *lat);
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        match r {
            // a third instance joins: every partition is revoked, assigned and restored
            0 => c = Some(start("c")),
            // an owner dies mid-stream: its partitions move after the session timeout
            1 => {
                let mut dead = b.take().unwrap();
                dead.signal("KILL");
                dead.wait_exit(Duration::from_secs(5));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let events = committed_events(&broker, &format!("{namespace}_events"), |e| {
        count(e, "fleetgate.site.exited") >= vins.len()
    });
    let entered = count(&events, "fleetgate.site.entered");
    let exited = count(&events, "fleetgate.site.exited");
    let ids: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(
        (entered, exited),
        (1000, 1000),
        "one entry and one exit per vehicle"
    );
    assert_eq!(ids.len(), events.len(), "no event twice");
    let mut per_vin: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in &events {
        *per_vin.entry(e["subject"].as_str().unwrap()).or_default() += 1;
    }
    assert!(per_vin.values().all(|n| *n == 2), "two events per vehicle");
    let c = c.unwrap();
    let owned = wait_for_rules(&[&a, &c], 3);
    eprintln!(
        "after the rebalances: a owns {:?}, c owns {:?}",
        owned[0], owned[1]
    );
}

/// A TCP forwarder from `listen` to `target`, started once something else is seen: the broker
/// "comes up" at that address (bootstrap only: the broker advertises its own address).
fn forward(listen: std::net::TcpListener, target: String) {
    std::thread::spawn(move || {
        for client in listen.incoming().flatten() {
            let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

/// `GET /healthz` on `admin` until it answers `starting` while waiting for Kafka; returns its
/// detail.
fn seen_starting(admin: &str, limit: Duration) -> String {
    let started = std::time::Instant::now();
    loop {
        if std::net::TcpStream::connect(admin).is_ok() {
            let (status, body) = http(admin, "GET", "/healthz", None, None);
            let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let detail = body["detail"].as_str().unwrap_or_default();
            if status == 200 && body["status"] == "starting" && detail.contains("waiting for Kafka")
            {
                let (ready, text) = http(admin, "GET", "/readyz", None, None);
                assert_eq!(ready, 503, "not ready while starting: {text}");
                assert!(text.contains("\"starting\""), "{text}");
                return body["detail"].as_str().unwrap_or_default().to_owned();
            }
        }
        assert!(
            started.elapsed() < limit,
            "/healthz on {admin} never said `starting`"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The chart's default (cluster mode) with Kafka down at start-up: the admin listener answers
/// at once (`/healthz` 200 `starting` with what it waits for, `/readyz` 503), the wait is
/// logged and bounded by `fleetgate.cluster.startup_wait_s`, then the process exits naming
/// the brokers and the key; a broker that comes up during the wait is used.
#[test]
fn kafka_down_at_start_up_is_waited_for_visibly_and_a_broker_that_comes_up_is_used() {
    let broker = require_broker();
    let pki = Pki::new();
    let namespace = unique_namespace("fgstartup");
    // nothing listens at the bootstrap address
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap().to_string();
    drop(down);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = cluster_config(&pki, &down_addr, &namespace, "a");
    config["fleetgate"]["admin"]["listen"] = json!(admin);
    config["fleetgate"]["cluster"]["startup_wait_s"] = json!(6);
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "config.json", &config.to_string());
    let started = std::time::Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let detail = seen_starting(&admin, Duration::from_secs(10));
    assert!(
        detail.contains("waiting for Kafka at") && detail.contains(&down_addr),
        "{detail}"
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("waiting for Kafka at")
            && stderr.contains(&format!("Kafka at {down_addr} did not answer within 6 s"))
            && stderr.contains("fleetgate.cluster.startup_wait_s"),
        "{stderr}"
    );

    // the broker comes up during the wait: start-up goes on and the server becomes ready
    let late = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let late_addr = late.local_addr().unwrap().to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = cluster_config(&pki, &late_addr, &namespace, "b");
    config["fleetgate"]["admin"]["listen"] = json!(admin);
    config["fleetgate"]["cluster"]["startup_wait_s"] = json!(60);
    // hold the port without accepting (connections are refused once the backlog is full,
    // so close it and rebind after /healthz said `starting`)
    drop(late);
    let watcher = {
        let (admin, late_addr, broker) = (admin.clone(), late_addr.clone(), broker.clone());
        std::thread::spawn(move || {
            let detail = seen_starting(&admin, Duration::from_secs(15));
            std::thread::sleep(Duration::from_secs(2));
            forward(std::net::TcpListener::bind(&late_addr).unwrap(), broker);
            detail
        })
    };
    let b = Server::start(&config);
    let detail = watcher.join().unwrap();
    assert!(detail.contains(&late_addr), "{detail}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while b.admin("GET", "/readyz", None).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.admin("PUT", "/v1/sites/late", Some(&site(30.3))).0, 201);
}
