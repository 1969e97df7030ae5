//! Cluster mode's event sinks other than Kafka get every event, as an order service's
//! receivers see them: a webhook receiver built on the Standard Webhooks and CloudEvents
//! libraries and an MQTT client (`mosquitto_sub`) on a real Mosquitto broker, while the owner of
//! a vehicle's rules is killed with `-9` right after the vehicle arrived. Every event of the
//! committed events topic reaches both (at least once, with the same ids), in order per
//! vehicle.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::*;
use common::mosquitto::{Broker, Subscriber};
use common::*;
use serde_json::{json, Value};

const IDS: [&str; 3] = ["a", "b", "c"];

/// The ids of `events` that are not vehicle.* (connectivity), per vehicle in order.
fn ids_per_vehicle<'a>(events: impl Iterator<Item = &'a Value>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        let kind = e["type"].as_str().unwrap_or_default();
        if kind.starts_with("fleetgate.vehicle.") {
            continue;
        }
        let id = e["id"].as_str().unwrap_or_default().to_owned();
        let list = out
            .entry(e["subject"].as_str().unwrap_or_default().to_owned())
            .or_default();
        if !list.contains(&id) {
            list.push(id);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_and_mqtt_receive_every_event_across_kill_9_of_the_owner_right_after_an_arrival() {
    let broker = require_broker();
    let namespace = unique_namespace("fgrelay");
    let pki = Pki::new();
    let mqtt = Broker::plain(pki.dir.path());
    let port = mqtt.port.to_string();
    let sub = Subscriber::start(&["-p", &port, "-t", "orders/+/events/#"]);
    let receiver = common::webhook::Receiver::start();
    let config = |id: &str| {
        let mut c = cluster_config(&pki, &broker, &namespace, id);
        c["mqtt"] =
            json!({"broker": format!("127.0.0.1:{port}"), "topic_base": "orders", "qos": 1});
        merge(
            &mut c,
            &json!({"fleetgate": {
                "events": {"sinks": ["kafka", "webhook", "mqtt"]},
                "webhook": {"endpoints": [{"name": "orders", "url": receiver.url("/orders"),
                    "secret": common::webhook::SECRET,
                    "events": ["fleetgate.site.*", "fleetgate.arrival.*"]}]},
            }}),
        );
        c
    };
    let mut servers: Vec<Option<Server>> = IDS
        .iter()
        .map(|i| Some(Server::start(&config(i))))
        .collect();
    let refs: Vec<&Server> = servers.iter().flatten().collect();
    wait_for_rules(&refs, 3);
    let site = json!({"name": "Cafe", "kind": "merchant", "radius_m": 100,
        "geometry": {"type": "Point", "coordinates": [CAFE.1, CAFE.0]}});
    assert_eq!(
        refs[0]
            .admin("PUT", "/v1/sites/cafe", Some(&site.to_string()))
            .0,
        201
    );
    // the watches are created through another instance: it must have applied the site first
    until(refs[1], "/v1/sites/cafe", |s, _| s == 200);
    let vins: Vec<String> = (0..4).map(|i| format!("RELAYVIN{i:09}")).collect();
    for (i, vin) in vins.iter().enumerate() {
        let watch = json!({"watch_id": format!("order-{i}"), "vin": vin, "site_id": "cafe",
            "expires_at": "2099-01-01T00:00:00Z"});
        assert_eq!(
            refs[1]
                .admin("POST", "/v1/watches", Some(&watch.to_string()))
                .0,
            201
        );
    }
    for s in &refs {
        until(s, "/v1/watches", |_, v| v["count"] == json!(4));
    }

    // the owner of the first vehicle's rules: it dies right after that vehicle arrives
    let owner = owner_of(&refs, &vins[0], 3);
    let owner_id = refs[owner].admin("GET", "/v1/cluster", None).1["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim = IDS.iter().position(|i| *i == owner_id).unwrap();
    let front = (victim + 1) % 3;
    for vin in &vins {
        send_frames(
            servers[front].as_ref().unwrap(),
            &pki,
            vin,
            &[
                (0, vec![loc(CAFE.0 + 0.01, CAFE.1)]),
                (60, vec![loc(CAFE.0, CAFE.1), soc(50.0)]),
            ],
            0,
        )
        .await;
        if vin == &vins[0] {
            let mut dead = servers[victim].take().unwrap();
            dead.signal("KILL");
            dead.wait_exit(Duration::from_secs(5));
        }
    }
    // everyone leaves
    for vin in &vins {
        send_frames(
            servers[front].as_ref().unwrap(),
            &pki,
            vin,
            &[(120, vec![loc(CAFE.0 + 0.01, CAFE.1)])],
            2,
        )
        .await;
    }
    // the killed instance comes back with its data_dir (its webhook outbox, if it held any)
    servers[victim] = Some(Server::start(&config(IDS[victim])));

    let committed = committed_events(&broker, &format!("{namespace}_events"), |e| {
        count(e, "fleetgate.site.exited") >= vins.len()
    });
    let expected = ids_per_vehicle(committed.iter());
    assert_eq!(expected.len(), vins.len());
    for (vin, ids) in &expected {
        assert_eq!(
            ids.len(),
            3,
            "{vin}: entered, arrived, exited: {committed:?}"
        );
    }
    let all: BTreeSet<&String> = expected.values().flatten().collect();

    // the webhook receiver: every event, in order per vehicle, every request verified
    let got = receiver.wait_until(Duration::from_secs(60), |r| {
        let ids: BTreeSet<&str> = r.iter().filter_map(|m| m["id"].as_str()).collect();
        all.iter().all(|id| ids.contains(id.as_str()))
    });
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());
    let by_vehicle = ids_per_vehicle(got.iter());
    assert_eq!(
        by_vehicle, expected,
        "webhook: every event once per id, in order per vehicle"
    );

    // MQTT: every event on orders/{VIN}/events/{type}
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let messages = sub.messages();
        let by_vehicle = ids_per_vehicle(messages.iter().map(|(_, v)| v));
        if by_vehicle == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "MQTT did not get every event: {by_vehicle:?} vs {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let relayed: f64 = servers
        .iter()
        .flatten()
        .map(|s| s.metric("fleetgate_cluster_relay_events_total"))
        .sum();
    eprintln!(
        "relayed by the live instances: {relayed} (the killed one relayed some before it died)"
    );
}
