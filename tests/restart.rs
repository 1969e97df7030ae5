//! Embedded mode keeps rule state across restarts: a vehicle that arrived, entered a site and
//! started charging before a `kill -9` (or a clean restart) does not arrive or enter again
//! afterwards, its charging session and watch progress are still there, and the events that
//! follow (charge complete, exit) fire once.

mod common;

use std::time::Duration;

use common::*;
use fleetgate::wire::proto::vehicle_data::{
    value::Value as V, DetailedChargeStateValue as Dcs, Field, LocationValue,
};
use serde_json::{json, Value};

const CAFE: (f64, f64) = (30.2672, -97.7431);
/// Frames are stamped from now: the sweeper closes sessions whose last frame is older than
/// 15 minutes of wall-clock time.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 600
    })
}

fn loc(lat: f64) -> fleetgate::wire::proto::vehicle_data::Datum {
    datum(
        Field::Location,
        V::LocationValue(LocationValue {
            latitude: lat,
            longitude: CAFE.1,
        }),
    )
}

fn soc(v: f64) -> fleetgate::wire::proto::vehicle_data::Datum {
    datum(Field::Soc, V::DoubleValue(v))
}

async fn send(
    server: &Server,
    pki: &Pki,
    frames: Vec<(i64, Vec<fleetgate::wire::proto::vehicle_data::Datum>)>,
) {
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(server, &pki.ca_pem(), &cert, &[]).await.unwrap();
    let sender = format!("vehicle_device.{VIN}");
    for (at, data) in frames {
        let txid = format!("f{at}");
        fleetgate::tools::client::send_frame(
            &mut ws,
            frame(&txid, "V", &sender, &v_payload(t0() + at, data)),
        )
        .await
        .unwrap();
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(txid.as_bytes(), b"V", b"")
        );
    }
}

/// The `cafe` charger site (100 m) and `watch` on it.
fn cafe_with_watch(server: &Server, watch: Value) {
    let site = json!({"name": "Cafe", "kind": "charger", "radius_m": 100,
        "geometry": {"type": "Point", "coordinates": [CAFE.1, CAFE.0]}});
    let (status, body) = server.admin("PUT", "/v1/sites/cafe", Some(&site.to_string()));
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.admin("POST", "/v1/watches", Some(&watch.to_string()));
    assert_eq!(status, 201, "{body}");
}

/// Rule events (not connectivity) printed by the logger sink, waiting for `n` of them.
fn rule_events(server: &Server, n: usize) -> Vec<String> {
    server
        .wait_for_records(n, Duration::from_secs(5), |v: &Value| {
            v["type"].as_str().is_some_and(|t| {
                t.starts_with("fleetgate.") && !t.starts_with("fleetgate.vehicle.")
            })
        })
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_state_survives_kill_9_and_restarts_fire_nothing_again() {
    let pki = Pki::new();
    let config = base_config(&pki);
    let server = Server::start(&config);
    cafe_with_watch(
        &server,
        json!({"watch_id": "order-9", "vin": VIN, "site_id": "cafe", "target_soc": 80,
            "expires_at": "2099-01-01T00:00:00Z"}),
    );
    let charging = datum(
        Field::DetailedChargeState,
        V::DetailedChargeStateValue(Dcs::DetailedChargeStateCharging as i32),
    );
    send(
        &server,
        &pki,
        vec![
            (0, vec![loc(CAFE.0 + 0.005), soc(50.0)]),
            (60, vec![loc(CAFE.0), soc(49.0)]),
            (120, vec![loc(CAFE.0), charging, soc(55.0)]),
        ],
    )
    .await;
    assert_eq!(
        rule_events(&server, 3),
        [
            "fleetgate.site.entered",
            "fleetgate.arrival.arrived",
            "fleetgate.charging.started"
        ]
    );
    // the journal writes within 50 ms; then the process dies without a chance to flush
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("KILL");
    drop(server);

    let server = Server::start(&config);
    let (_, w) = server.admin("GET", "/v1/watches/order-9", None);
    assert_eq!(
        w["progress"]["arrived_at_ms"],
        json!((t0() + 60) * 1000),
        "{w}"
    );
    let (_, v) = server.admin("GET", &format!("/v1/vehicles/{VIN}"), None);
    assert_eq!(v["sites_inside"], json!(["cafe"]), "{v}");
    assert_eq!(v["charging_session_open"], json!(true), "{v}");
    // still inside, charged to the target: only charge_complete
    send(&server, &pki, vec![(180, vec![loc(CAFE.0), soc(81.0)])]).await;
    assert_eq!(
        rule_events(&server, 1),
        ["fleetgate.arrival.charge_complete"]
    );

    // a clean restart (the journal is flushed at shutdown), then the vehicle leaves
    server.signal("TERM");
    let mut server = server;
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    let server = Server::start(&config);
    let idle = datum(
        Field::DetailedChargeState,
        V::DetailedChargeStateValue(Dcs::DetailedChargeStateComplete as i32),
    );
    send(
        &server,
        &pki,
        vec![
            (240, vec![loc(CAFE.0), idle]),
            (300, vec![loc(CAFE.0 + 0.005)]),
        ],
    )
    .await;
    let after = rule_events(&server, 2);
    assert_eq!(
        after,
        ["fleetgate.charging.stopped", "fleetgate.site.exited"],
        "no arrival, entry or charge-complete again"
    );
    // nothing more than that
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rule_events(&server, 2).len(), 2);
}

/// The car sends its charge limit once; with reliable acks the ack waits for the rule journal,
/// so a `kill -9` right after the ack loses nothing: the SoC reaching the limit after the
/// restart fires `arrival.charge_complete` (before the journal covered every change, a limit
/// that caused no event was only written once a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_limit_acked_reliably_survives_kill_9_right_after_its_ack() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    // the logger confirms at once: the ack waits only for the journal
    config["reliable_ack_sources"] = json!({"V": "logger"});
    let server = Server::start(&config);
    // no target_soc: complete at the car's own limit
    cafe_with_watch(
        &server,
        json!({"watch_id": "order-l", "vin": VIN, "site_id": "cafe",
            "expires_at": "2099-01-01T00:00:00Z"}),
    );
    let limit = datum(Field::ChargeLimitSoc, V::DoubleValue(80.0));
    send(
        &server,
        &pki,
        vec![
            (0, vec![loc(CAFE.0), soc(60.0)]),
            (2, vec![loc(CAFE.0), limit, soc(60.5)]),
        ],
    )
    .await;
    // acked: killed at once
    server.signal("KILL");
    drop(server);
    assert_eq!(
        {
            let restarted = Server::start(&config);
            let (_, v) = restarted.admin("GET", &format!("/v1/vehicles/{VIN}"), None);
            assert_eq!(v["state"]["charge_limit_soc"], json!(80.0), "{v}");
            send(&restarted, &pki, vec![(600, vec![loc(CAFE.0), soc(80.5)])]).await;
            rule_events(&restarted, 1)
        },
        ["fleetgate.arrival.charge_complete"],
        "the limit survived the kill"
    );
}
