//! The admin API, black-box against the running server: auth, every route's success and error
//! cases, the OpenAPI document, a watch driving `arrival.arrived` over mTLS, durability across
//! restarts and `kill -9`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const CAFE: &str = r#"{"name":"Cafe","kind":"merchant","radius_m":250,"tags":{"brand":"x"},"geometry":{"type":"Point","coordinates":[-97.7431,30.2672]}}"#;

fn start() -> (Pki, Server) {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    (pki, server)
}

#[test]
fn malformed_json_bodies_are_400_and_well_formed_invalid_ones_422() {
    let (_pki, server) = start();
    for (method, path) in [
        ("PUT", "/v1/sites/cafe"),
        ("POST", "/v1/sites/import"),
        ("POST", "/v1/watches"),
    ] {
        for body in ["{not json", "{\"a\":", "[1,2", "{} trailing", "\u{0}"] {
            let (status, v) = server.admin(method, path, Some(body));
            assert_eq!(status, 400, "{method} {path} {body:?}: {v}");
            assert_eq!(v["error"], "bad_json", "{method} {path} {body:?}: {v}");
        }
        // well-formed JSON of the wrong shape stays 422
        let (status, v) = server.admin(method, path, Some("[]"));
        assert_eq!(status, 422, "{method} {path} []: {v}");
    }
}

#[test]
fn every_documented_operation_is_served_typed_and_guarded() {
    let (_pki, server) = start();
    let addr = server.admin.clone().unwrap();
    let (status, text) = http(&addr, "GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            // every response but 204 has a typed body
            for (code, response) in responses {
                if code == "204" {
                    continue;
                }
                let content = response["content"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path} {code}: no content schema"));
                assert!(
                    content.values().all(|m| m.get("schema").is_some()),
                    "{method} {path} {code}: no schema"
                );
            }
            // parameters have real types, not all strings
            for p in op["parameters"].as_array().into_iter().flatten() {
                assert!(
                    p["schema"].is_object(),
                    "{method} {path}: untyped parameter {p}"
                );
            }
            let concrete = path
                .replace("{id}", "x")
                .replace("{vin}", "x")
                .replace("{list}", "allow");
            let body = matches!(method.as_str(), "put" | "post").then_some("{}");
            let verb = method.to_uppercase();
            let secured = op.get("security").is_some();
            if secured {
                assert!(
                    responses.contains_key("401"),
                    "{method} {path}: 401 not listed"
                );
                for token in [None, Some("wrong-token"), Some("")] {
                    let (status, text) = http(&addr, &verb, &concrete, token, body);
                    assert_eq!(status, 401, "{verb} {concrete} with {token:?}");
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["error"], "unauthorized");
                }
            } else if path.starts_with("/v1/sources/") {
                // webhooks from other systems prove themselves with their own signature
                assert!(
                    responses.contains_key("401"),
                    "{method} {path}: a webhook refuses a bad signature with 401"
                );
            } else {
                assert!(!path.starts_with("/v1/"), "{path} must need the token");
            }
            // with the token the operation is served (never the fallback 404 or a 405), and
            // answers with a status the document lists
            let (status, text) = http(&addr, &verb, &concrete, Some(TOKEN), body);
            assert_ne!(status, 405, "{verb} {concrete}");
            assert!(
                !text.contains("no such route"),
                "{verb} {concrete} is documented but not served"
            );
            assert!(
                responses.contains_key(&status.to_string()),
                "{verb} {concrete} answered {status}, which the document does not list: {text}"
            );
        }
    }
    assert!(operations >= 19, "{operations} operations");
    // and what is not documented is not served
    assert_eq!(http(&addr, "GET", "/v1/nope", Some(TOKEN), None).0, 404);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "ErrorBody",
        "SiteBody",
        "Watch",
        "VehicleView",
        "ConnectionPage",
        "VehicleState",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
}

#[test]
fn sites_crud_and_validation() {
    let (_pki, server) = start();
    let (s, v) = server.admin("PUT", "/v1/sites/cafe", Some(CAFE));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["id"], "cafe");
    assert_eq!(v["radius_m"], 250.0);
    assert_eq!(
        server.admin("PUT", "/v1/sites/cafe", Some(CAFE)).0,
        200,
        "replace"
    );
    let (s, v) = server.admin("GET", "/v1/sites/cafe", None);
    assert_eq!((s, v["tags"]["brand"].clone()), (200, json!("x")));
    assert_eq!(server.admin("GET", "/v1/sites", None).1["count"], 1);

    let polygon = r#"{"kind":"merchant","geometry":{"type":"Polygon","coordinates":[[[-97.75,30.26],[-97.74,30.26],[-97.74,30.27],[-97.75,30.27],[-97.75,30.26]]]}}"#;
    assert_eq!(server.admin("PUT", "/v1/sites/mall", Some(polygon)).0, 201);

    for (body, status, error) in [
        ("{not json", 400, "bad_json"),
        (
            r#"{"geometry":{"type":"Point","coordinates":[-97.7,95.0]}}"#,
            422,
            "invalid_site",
        ),
        (
            r#"{"geometry":{"type":"Point","coordinates":[-197.7,30.0]}}"#,
            422,
            "invalid_site",
        ),
        (
            r#"{"radius_m":0,"geometry":{"type":"Point","coordinates":[-97.7,30.0]}}"#,
            422,
            "invalid_site",
        ),
        (
            r#"{"radius_m":-3,"geometry":{"type":"Point","coordinates":[-97.7,30.0]}}"#,
            422,
            "invalid_site",
        ),
        (
            r#"{"radius_m":1e12,"geometry":{"type":"Point","coordinates":[-97.7,30.0]}}"#,
            422,
            "invalid_site",
        ),
        (
            r#"{"radius_m":"NaN","geometry":{"type":"Point","coordinates":[-97.7,30.0]}}"#,
            422,
            "invalid_body",
        ),
        (
            r#"{"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}}"#,
            422,
            "invalid_site",
        ),
        (
            r#"{"geometry":{"type":"LineString","coordinates":[[0,0],[1,1]]}}"#,
            422,
            "invalid_site",
        ),
        (
            r#"{"id":"other","geometry":{"type":"Point","coordinates":[0,0]}}"#,
            422,
            "invalid_site",
        ),
        (
            r#"{"geometry":{"type":"Point","coordinates":[0,0]},"colour":"red"}"#,
            422,
            "invalid_body",
        ),
    ] {
        let (s, v) = server.admin("PUT", "/v1/sites/bad", Some(body));
        assert_eq!(
            (s, v["error"].as_str().unwrap_or("")),
            (status, error),
            "{body}: {v}"
        );
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let huge = format!(
        r#"{{"name":"{}","geometry":{{"type":"Point","coordinates":[0,0]}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (s, _) = server.admin("PUT", "/v1/sites/huge", Some(&huge));
    assert_eq!(s, 413);
    // nothing partial was written
    assert_eq!(server.admin("GET", "/v1/sites/bad", None).0, 404);
    assert_eq!(server.admin("GET", "/v1/sites", None).1["count"], 2);

    assert_eq!(server.admin("DELETE", "/v1/sites/mall", None).0, 204);
    assert_eq!(server.admin("DELETE", "/v1/sites/mall", None).0, 404);
    assert_eq!(server.admin("GET", "/v1/sites/mall", None).0, 404);
}

#[test]
fn import_is_all_or_nothing_and_export_round_trips() {
    let (_pki, server) = start();
    let bad = r#"{"type":"FeatureCollection","features":[
        {"type":"Feature","id":"a","properties":{},"geometry":{"type":"Point","coordinates":[10,10]}},
        {"type":"Feature","id":"b","properties":{"radius_m":-1},"geometry":{"type":"Point","coordinates":[10,10]}},
        {"type":"Feature","id":"c","properties":{},"geometry":{"type":"Point","coordinates":[10,100]}}]}"#;
    let (s, v) = server.admin("POST", "/v1/sites/import", Some(bad));
    assert_eq!(s, 422, "{v}");
    let indexes: Vec<i64> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2]);
    assert_eq!(
        server.admin("GET", "/v1/sites", None).1["count"],
        0,
        "nothing imported"
    );
    let good = r#"{"type":"FeatureCollection","features":[
        {"type":"Feature","id":"a","properties":{"kind":"charger"},"geometry":{"type":"Point","coordinates":[10,10]}},
        {"type":"Feature","properties":{"id":"b","radius_m":80},"geometry":{"type":"Point","coordinates":[11,11]}}]}"#;
    let (s, v) = server.admin("POST", "/v1/sites/import", Some(good));
    assert_eq!((s, v["imported"].clone()), (200, json!(2)));
    let (s, text) = http(
        server.admin.as_deref().unwrap(),
        "GET",
        "/v1/sites/export",
        Some(TOKEN),
        None,
    );
    assert_eq!(s, 200);
    let sites = fleetgate::rules::geojson::sites_from_geojson(&text, 250.0).unwrap();
    assert_eq!(sites.len(), 2);
    assert_eq!(server.admin("POST", "/v1/sites/import", Some("[]")).0, 422);
}

#[test]
fn watches_crud_and_validation() {
    let (_pki, server) = start();
    server.admin("PUT", "/v1/sites/cafe", Some(CAFE));
    let watch = json!({"watch_id": "w1", "vin": VIN, "site_id": "cafe", "target_soc": 80, "expires_at": "2030-01-01T00:00:00Z"});
    let (s, v) = server.admin("POST", "/v1/watches", Some(&watch.to_string()));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["progress"]["approached"], false);
    assert_eq!(
        server
            .admin("POST", "/v1/watches", Some(&watch.to_string()))
            .0,
        409
    );
    for (body, status, error) in [
        (
            json!({"watch_id": "w2", "vin": VIN, "site_id": "nope", "expires_at": "2030-01-01T00:00:00Z"}),
            422,
            "unknown_site",
        ),
        (
            json!({"watch_id": "w2", "vin": VIN, "site_id": "cafe", "expires_at": "tomorrow"}),
            422,
            "invalid_watch",
        ),
        (
            json!({"watch_id": "w2", "vin": VIN, "site_id": "cafe", "target_soc": 140, "expires_at": "2030-01-01T00:00:00Z"}),
            422,
            "invalid_watch",
        ),
        (
            json!({"watch_id": "w2", "vin": VIN, "site_id": "cafe"}),
            422,
            "invalid_body",
        ),
        (
            // expired years ago: it could never fire
            json!({"watch_id": "w2", "vin": VIN, "site_id": "cafe", "expires_at": "2021-01-01T00:00:00Z"}),
            422,
            "invalid_watch",
        ),
    ] {
        let (s, v) = server.admin("POST", "/v1/watches", Some(&body.to_string()));
        assert_eq!(
            (s, v["error"].as_str().unwrap_or("")),
            (status, error),
            "{body}: {v}"
        );
    }
    server.admin("POST", "/v1/watches", Some(&json!({"watch_id": "w3", "vin": "OTHERVIN", "site_id": "cafe", "expires_at": "2030-01-01T00:00:00Z"}).to_string()));
    assert_eq!(
        server
            .admin("GET", &format!("/v1/watches?vin={VIN}"), None)
            .1["count"],
        1
    );
    assert_eq!(
        server.admin("GET", "/v1/watches?site_id=cafe", None).1["count"],
        2
    );
    assert_eq!(
        server.admin("GET", "/v1/watches/w1", None).1["site_id"],
        "cafe"
    );
    assert_eq!(server.admin("DELETE", "/v1/watches/w1", None).0, 204);
    assert_eq!(server.admin("GET", "/v1/watches/w1", None).0, 404);
    assert_eq!(server.admin("DELETE", "/v1/watches/w1", None).0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_watch_produces_arrival_for_a_vehicle_streaming_over_mtls() {
    use fleetgate::wire::proto::vehicle_data::{value::Value as V, Field, LocationValue};
    let (pki, server) = start();
    assert_eq!(server.admin("PUT", "/v1/sites/cafe", Some(CAFE)).0, 201);
    let watch = json!({"watch_id": "order-7", "vin": VIN, "site_id": "cafe", "expires_at": "2030-01-01T00:00:00Z"});
    assert_eq!(
        server
            .admin("POST", "/v1/watches", Some(&watch.to_string()))
            .0,
        201
    );

    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(
        &server,
        &pki.ca_pem(),
        &cert,
        &[
            ("X-Network-Interface", "wifi"),
            ("X-TXID", "6d1f0a4e-3c1b-4a8e-9f00-0123456789ab"),
        ],
    )
    .await
    .unwrap();
    let payload = v_payload(
        1_764_000_100,
        vec![
            datum(
                Field::Location,
                V::LocationValue(LocationValue {
                    latitude: 30.2675,
                    longitude: -97.7431,
                }),
            ),
            datum(Field::Soc, V::DoubleValue(55.0)),
        ],
    );
    fleetgate::tools::client::send_frame(
        &mut ws,
        frame("f1", "V", &format!("vehicle_device.{VIN}"), &payload),
    )
    .await
    .unwrap();
    assert_eq!(answer(&mut ws).await, expected_ack(b"f1", b"V", b""));
    let arrived = server.wait_for_records(1, Duration::from_secs(3), |v| {
        v["type"] == "fleetgate.arrival.arrived"
    });
    assert_eq!(arrived.len(), 1, "{:?}", server.stdout_lines());
    assert_eq!(arrived[0]["data"]["watch_id"], "order-7");
    assert_eq!(arrived[0]["data"]["soc_at_arrival"], 55.0);
    assert_eq!(
        server.admin("GET", "/v1/watches/order-7", None).1["progress"]["arrived_at_ms"],
        1_764_000_100_000i64
    );

    // the vehicle and its connection are visible
    let (s, v) = server.admin("GET", &format!("/v1/vehicles/{VIN}"), None);
    assert_eq!(s, 200);
    assert_eq!(v["state"]["connected"], true);
    assert_eq!(v["sites_inside"], json!(["cafe"]));
    assert_eq!(v["connections"][0]["network_interface"], "wifi");
    // the client's X-TXID is kept beside the server's own connection id
    assert_eq!(
        v["connections"][0]["client_txid"],
        "6d1f0a4e-3c1b-4a8e-9f00-0123456789ab"
    );
    assert_ne!(
        v["connections"][0]["connection_id"],
        v["connections"][0]["client_txid"]
    );
    let (s, v) = server.admin(
        "GET",
        "/v1/vehicles?near=30.2672,-97.7431&radius_m=500",
        None,
    );
    assert_eq!((s, v["count"].clone()), (200, json!(1)));
    assert!(v["vehicles"][0]["distance_m"].as_f64().unwrap() < 50.0);
    assert_eq!(
        server
            .admin("GET", "/v1/vehicles?near=30.2672,-97.7431&radius_m=5", None)
            .1["count"],
        0
    );
    for bad in [
        "near=95,0",
        "near=abc",
        "near=30,-97&radius_m=0",
        "near=30,-97&limit=0",
        "",
    ] {
        assert_eq!(
            server.admin("GET", &format!("/v1/vehicles?{bad}"), None).0,
            400,
            "{bad}"
        );
    }
    let (s, v) = server.admin("GET", "/v1/connections?limit=10", None);
    assert_eq!((s, v["count"].clone()), (200, json!(1)));
    assert_eq!(v["connections"][0]["vin"], VIN);
    assert_eq!(server.admin("GET", "/v1/vehicles/NOPE", None).0, 404);
}

#[test]
fn restart_keeps_sites_and_watches_and_kill_9_keeps_every_acknowledged_write() {
    let pki = Pki::new();
    let config = base_config(&pki);
    {
        let server = Server::start(&config);
        server.admin("PUT", "/v1/sites/cafe", Some(CAFE));
        server.admin("POST", "/v1/watches", Some(&json!({"watch_id": "w1", "vin": VIN, "site_id": "cafe", "expires_at": "2030-01-01T00:00:00Z"}).to_string()));
    }
    let mut server = Server::start(&config);
    assert_eq!(
        server.admin("GET", "/v1/sites/cafe", None).0,
        200,
        "site survives a restart"
    );
    assert_eq!(
        server.admin("GET", "/v1/watches/w1", None).0,
        200,
        "watch survives a restart"
    );

    // a burst of writes from another thread; kill -9 in the middle of it
    let addr = server.admin.clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0..5000 {
            let body = format!(
                r#"{{"geometry":{{"type":"Point","coordinates":[{}, 10]}}}}"#,
                i as f64 / 1000.0
            );
            let addr = addr.clone();
            let result = std::panic::catch_unwind(move || {
                http(
                    &addr,
                    "PUT",
                    &format!("/v1/sites/burst-{i}"),
                    Some(TOKEN),
                    Some(&body),
                )
            });
            match result {
                Ok((s, _)) if s == 200 || s == 201 => acknowledged.push(i),
                _ => break,
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(700));
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(5));
    let acknowledged = writer.join().unwrap();
    assert!(
        acknowledged.len() > 10,
        "the burst was cut short too early to mean anything ({})",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < 5000,
        "kill -9 must have interrupted the burst"
    );

    let server = Server::start(&config);
    let (_, v) = server.admin("GET", "/v1/sites", None);
    let ids: std::collections::HashSet<String> = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    for i in &acknowledged {
        assert!(
            ids.contains(&format!("burst-{i}")),
            "acknowledged write burst-{i} lost after kill -9"
        );
    }
    eprintln!(
        "kill -9 after {} acknowledged writes: all {} present",
        acknowledged.len(),
        acknowledged.len()
    );
}

#[test]
fn an_empty_token_is_refused_unless_insecure_on_loopback() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["fleetgate"]["admin"] = json!({"listen": "127.0.0.1:0"});
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "c.json", &config.to_string());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("FLEETGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fleetgate.admin.token"));

    config["fleetgate"]["admin"] = json!({"listen": "0.0.0.0:0"});
    let path = write_file(dir.path(), "c2.json", &config.to_string());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["serve", "--insecure-admin", "--config"])
        .arg(&path)
        .env_remove("FLEETGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "--insecure-admin only on loopback"
    );
}
