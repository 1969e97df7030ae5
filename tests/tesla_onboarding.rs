//! Tesla onboarding from a VIN to a streaming car, against a stand-in for Tesla's Fleet API
//! (tests/common/fleet_api.rs: rotating refresh tokens, revoked access tokens, 429 with
//! Retry-After, `synced: false` for a while, skipped vehicles; every pushed token verified)
//! and a simulated car that takes the synced config, trusts only its `ca`, connects to the
//! config's hostname and port with its own certificate and streams the configured fields.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fleet_api::{Car, StandIn, CLIENT_ID};
use common::*;
use fleetgate::tesla::jws::PartnerKey;
use fleetgate::wire::proto::vehicle_data::{value::Value as V, Field, LocationValue};
use serde_json::{json, Value};

/// The token key the servers seal tokens with (64 hex characters).
const TOKEN_KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const ENV: &[(&str, &str)] = &[("FLEETGATE_TESLA_TOKEN_KEY", TOKEN_KEY)];
const HEADERS: &[(&str, &str)] = &[("Version", "2025.20.6")];

/// A partner key written into the PKI folder; returns it.
fn partner_key(pki: &Pki) -> PartnerKey {
    let key = PartnerKey::generate();
    std::fs::write(pki.dir.path().join("partner.pem"), key.private_pem()).unwrap();
    key
}

/// [`base_config`] with `fleetgate.tesla` against the stand-in; vehicles connect to
/// `localhost:{port}` and trust the dev root (which issued the server certificate).
fn tesla_config(pki: &Pki, api: &StandIn, port: u16) -> Value {
    let mut config = base_config(pki);
    merge(
        &mut config,
        &json!({
            "port": port,
            "fleetgate": {"tesla": {
                "private_key_file": pki.path("partner.pem"),
                "hostname": "localhost",
                "ca_file": pki.path("ca.pem"),
                "preset": "arrival",
                "fleet_api_url": api.url,
                "auth_url": api.url,
                "client_id": CLIENT_ID,
                "partner_domain": "localhost",
                "reconcile_interval_s": 2,
                "poll_interval_s": 1,
            }},
        }),
    );
    config
}

/// `PUT /v1/tesla/vehicles/{vin}` with the account's default fields; asserts 201.
fn onboard(server: &Server, vin: &str, account: &str) {
    let body = json!({ "account_id": account }).to_string();
    let (status, answer) = server.admin("PUT", &format!("/v1/tesla/vehicles/{vin}"), Some(&body));
    assert_eq!(status, 201, "{answer}");
}

fn vehicle(server: &Server, vin: &str) -> (u16, Value) {
    server.admin("GET", &format!("/v1/tesla/vehicles/{vin}"), None)
}

/// Polls the vehicle's onboarding status until `done`; panics with the last answer.
fn wait_vehicle(
    server: &Server,
    vin: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = vehicle(server, vin);
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{vin}: the onboarding status did not get there within {timeout:?}: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_state(server: &Server, vin: &str, state: &str) -> Value {
    wait_vehicle(server, vin, Duration::from_secs(20), |v| {
        v["state"] == state
    })
}

/// The car: reads the config Tesla holds for it, trusts only the config's `ca`, connects to
/// the config's hostname and port with its own certificate, and streams the configured fields
/// it has (location and state of charge), each frame acked.
async fn car_streams(api: &StandIn, pki: &Pki, vin: &str, first_txid: usize) {
    car_streams_via(api, pki, vin, first_txid, None).await
}

/// [`car_streams`] through a load balancer: `via` is the loopback port the config's port
/// leads to (None: the config's port itself).
async fn car_streams_via(api: &StandIn, pki: &Pki, vin: &str, first_txid: usize, via: Option<u16>) {
    let config = api
        .car(vin)
        .config
        .expect("the car holds a config before it streams");
    let hostname = config["hostname"].as_str().unwrap().to_owned();
    let port = config["port"].as_u64().expect("an integer port");
    let port = via.map_or(port, u64::from);
    let ca = config["ca"].as_str().unwrap().to_owned();
    let fields = config["fields"].as_object().unwrap();
    assert!(
        fields.contains_key("Location") && fields.contains_key("Soc"),
        "{fields:?}"
    );
    let cert = pki.pki.vehicle(vin).unwrap();
    let tls = fleetgate::tools::client::client_config_from_pem(&ca, &cert.chain_pem, &cert.key_pem)
        .unwrap();
    // `hostname` is localhost: the car resolves it to the loopback address fleetgate binds
    assert_eq!(hostname, "localhost");
    let mut ws =
        fleetgate::tools::client::connect(&format!("127.0.0.1:{port}"), &hostname, tls, HEADERS)
            .await
            .expect("the car connects trusting only the config's ca");
    let sender = format!("vehicle_device.{vin}");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for i in 0..2 {
        let txid = format!("{vin}-{}", first_txid + i);
        let payload = v_payload(
            now_s,
            vec![
                datum(
                    Field::Location,
                    V::LocationValue(LocationValue {
                        latitude: 30.2672 + i as f64 * 0.001,
                        longitude: -97.7431,
                    }),
                ),
                datum(Field::Soc, V::DoubleValue(61.0)),
            ],
        );
        fleetgate::tools::client::send_frame(&mut ws, frame(&txid, "V", &sender, &payload))
            .await
            .unwrap();
        assert_eq!(
            answer(&mut ws).await,
            expected_ack(txid.as_bytes(), b"V", b"")
        );
    }
}

/// Onboarding events of `vin` the logger printed: (state, previous_state).
fn onboarding_events(server: &Server, vin: &str, n: usize) -> Vec<(String, Value)> {
    server
        .wait_for_records(n, Duration::from_secs(10), |v| {
            v["type"] == "fleetgate.vehicle.onboarding" && v["data"]["vin"] == vin
        })
        .iter()
        .map(|v| {
            assert!(v["data"].get("reason").is_some(), "{v}");
            (
                v["data"]["state"].as_str().unwrap().to_owned(),
                v["data"]["previous_state"].clone(),
            )
        })
        .collect()
}

/// Every file under `dir`, read as bytes.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// No token the stand-in issued is in any file of `data_dir` or in the server's output.
fn assert_no_plaintext_tokens(api: &StandIn, data_dir: &Path, output: &str) {
    let tokens = api.issued_tokens();
    assert!(tokens.len() >= 3, "{tokens:?}");
    let files = files_under(data_dir);
    assert!(!files.is_empty());
    for token in &tokens {
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, token),
                "{path} holds a token in plain text"
            );
        }
        assert!(!output.contains(token), "the server's output holds a token");
        // no part of one either (a log line cut short)
        assert!(!output.contains(&token[..token.len() - 8]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vin_becomes_a_streaming_car_and_survives_a_restart() {
    let pki = Pki::new();
    let key = partner_key(&pki);
    let api = StandIn::start(&key.issuer());
    let vin = "5YJ3E1EA7KF100001";
    api.add_car(vin, Car::new("acct-1"));
    // access tokens die after 3 s: the reconciler meets 401s and refreshes on them
    api.set_access_lifetime(Duration::from_secs(3));
    let port = free_port();
    let config = tesla_config(&pki, &api, port);
    let server = Server::start_with_env(&config, ENV);

    // the public key cars fetch from the partner domain is on the status port
    let served = http_get(
        server.status.as_deref().unwrap(),
        "/.well-known/appspecific/com.tesla.3p.public-key.pem",
    );
    assert_eq!(served, key.public_pem());

    assert_eq!(vehicle(&server, vin).0, 404);
    let grant = api.grant("acct-1");
    let (status, body) = server.admin(
        "PUT",
        "/v1/tesla/accounts/acct-1",
        Some(&json!({"refresh_token": grant}).to_string()),
    );
    assert_eq!(status, 201, "{body}");
    assert!(
        !body.to_string().contains(&grant),
        "a token was returned: {body}"
    );
    assert_eq!(body["state"], "ok");

    // a rate limit on fleet_status: nothing calls it again before its Retry-After
    api.rate_limit("fleet_status", 1, Duration::from_secs(2));
    let (status, body) = server.admin(
        "PUT",
        &format!("/v1/tesla/vehicles/{vin}"),
        Some(&json!({"account_id": "acct-1", "preset": "arrival"}).to_string()),
    );
    assert_eq!(status, 201, "{body}");

    // 1. no virtual key yet: the pairing link
    let v = wait_state(&server, vin, "pending_key");
    assert_eq!(v["pairing_link"], "https://tesla.com/_ak/localhost");
    assert_eq!(v["key_paired"], false);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("tesla.com/_ak/localhost"),
        "{v}"
    );
    assert!(
        api.pushes().is_empty(),
        "a config was pushed to a car without the key"
    );

    // 2. the driver pairs the key: the signed config is pushed, the car takes it a while later
    api.edit_car(vin, |c| c.key_paired = true);
    let v = wait_vehicle(&server, vin, Duration::from_secs(20), |v| {
        v["state"] == "configuring" || v["state"] == "synced"
    });
    assert_eq!(v["firmware"], "2025.20.6 1b2c3d4e5f");
    let pushes = api.pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    let (vins, claims) = &pushes[0];
    assert_eq!(vins, &vec![vin.to_owned()]);
    assert_eq!(claims["hostname"], "localhost");
    assert_eq!(claims["port"], json!(port));
    assert_eq!(claims["ca"].as_str().unwrap().trim(), pki.ca_pem().trim());
    assert_eq!(claims["delivery_policy"], "latest");
    assert_eq!(claims["prefer_typed"], true);
    assert_eq!(claims["iss"], key.issuer());
    assert!(
        claims["fields"]["Location"]["interval_seconds"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(
        api.refused_tokens().is_empty(),
        "{:?}",
        api.refused_tokens()
    );

    // 3. synced, and no frame yet: the diagnostic users lack
    let v = wait_state(&server, vin, "synced");
    assert_eq!(v["synced"], true);
    assert!(v["last_frame_ms"].is_null(), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("no frame"), "{v}");

    // 4. the car streams: `streaming` for real
    car_streams(&api, &pki, vin, 0).await;
    let v = wait_state(&server, vin, "streaming");
    assert!(v["first_frame_ms"].as_i64().unwrap() > 0, "{v}");
    assert!(v["last_frame_ms"].as_i64().unwrap() > 0, "{v}");
    assert!(v["config_exp"].as_i64().unwrap() > 1_700_000_000, "{v}");
    assert_eq!(v["state"], "streaming");

    let events = onboarding_events(&server, vin, 4);
    assert_eq!(
        events,
        vec![
            ("pending_key".to_owned(), Value::Null),
            ("configuring".to_owned(), json!("pending_key")),
            ("synced".to_owned(), json!("configuring")),
            ("streaming".to_owned(), json!("synced")),
        ],
        "one event per state change, in order"
    );
    // one streaming car, as the metrics say
    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_tesla_vehicles{state=\"streaming\"}",
            1.0
        )
        .await,
        1.0
    );
    assert!(server.metric("fleetgate_tesla_configs_pushed_total") >= 1.0);
    assert!(api.early_calls().is_empty(), "{:?}", api.early_calls());
    let calls = api.calls();
    assert!(
        calls.iter().filter(|c| *c == "fleet_status").count() >= 2,
        "the 429'd call was made again after its wait: {calls:?}"
    );

    // revoked access tokens were met with a refresh (each refresh token used once)
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pushed_before = api.pushes().len();
    let (status, _) = server.admin("POST", &format!("/v1/tesla/vehicles/{vin}/resync"), None);
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.pushes().len() == pushed_before {
        assert!(Instant::now() < deadline, "resync pushed nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (refreshes, refused, reused) = api.refreshes();
    assert!(
        refreshes >= 2,
        "no refresh after the access token was revoked"
    );
    assert!(api.expired_access_calls() >= 1);
    assert_eq!(
        (refused, reused),
        (0, 0),
        "a spent refresh token was used again"
    );

    // the car takes the resynced config and streams again
    wait_vehicle(&server, vin, Duration::from_secs(20), |v| {
        v["state"] == "streaming" || v["state"] == "synced"
    });
    car_streams(&api, &pki, vin, 10).await;
    wait_state(&server, vin, "streaming");

    // a restart keeps the account, the desired vehicle and its status; the tokens stay sealed
    let refreshes_before_restart = api.refreshes().0;
    let mut server = server;
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(20));
    let output = format!(
        "{}\n{}",
        server.stdout_lines().join("\n"),
        server.stderr_text()
    );
    drop(server);
    let data_dir = pki.dir.path().join("data");
    assert_no_plaintext_tokens(&api, &data_dir, &output);

    let server = Server::start_with_env(&config, ENV);
    let (status, account) = server.admin("GET", "/v1/tesla/accounts/acct-1", None);
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["vehicles"], 1);
    let (status, v) = vehicle(&server, vin);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "streaming", "{v}");
    assert_eq!(v["account_id"], "acct-1");

    // the refresh token persisted before the restart is the live one: the next refresh works
    // (the access token held at the stop is revoked by now)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pushed_before = api.pushes().len();
    let (status, _) = server.admin("POST", &format!("/v1/tesla/vehicles/{vin}/resync"), None);
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.pushes().len() == pushed_before {
        assert!(
            Instant::now() < deadline,
            "resync after the restart pushed nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (refreshes, refused, reused) = api.refreshes();
    assert!(
        refreshes > refreshes_before_restart,
        "no refresh after the restart"
    );
    assert_eq!(
        (refused, reused),
        (0, 0),
        "the restart lost the rotated refresh token"
    );
    assert_eq!(
        server.admin("GET", "/v1/tesla/accounts/acct-1", None).1["state"],
        "ok"
    );

    // DELETE removes the config at Tesla, then the vehicle is forgotten
    let (status, v) = server.admin("DELETE", &format!("/v1/tesla/vehicles/{vin}"), None);
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["state"], "removing");
    let deadline = Instant::now() + Duration::from_secs(15);
    while vehicle(&server, vin).0 != 404 {
        assert!(Instant::now() < deadline, "the vehicle was not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(api.deletes(), vec![vin.to_owned()]);
    assert!(api.car(vin).config.is_none());
    let (status, _) = server.admin("DELETE", "/v1/tesla/accounts/acct-1", None);
    assert_eq!(status, 204);
}

#[test]
fn refusals_name_the_car_and_the_fix() {
    let pki = Pki::new();
    let key = partner_key(&pki);
    let api = StandIn::start(&key.issuer());
    let old = "5YJ3E1EA7KF200001";
    let full = "5YJ3E1EA7KF200002";
    let silent = "5YJ3E1EA7KF200003";
    let refused = "5YJ3E1EA7KF200004";
    api.add_car(
        old,
        Car {
            key_paired: true,
            firmware: "2024.20.9 aa11".into(),
            ..Car::new("acct-1")
        },
    );
    api.add_car(
        full,
        Car {
            key_paired: true,
            max_configs: true,
            ..Car::new("acct-1")
        },
    );
    api.add_car(
        silent,
        Car {
            key_paired: true,
            sync_after_reads: 0,
            errors: vec![json!({"name": "fleetgate", "error": "x509: certificate signed by unknown authority", "vin": silent})],
            ..Car::new("acct-1")
        },
    );
    api.add_car(
        refused,
        Car {
            key_paired: true,
            ..Car::new("acct-2")
        },
    );
    let config = tesla_config(&pki, &api, free_port());
    let server = Server::start_with_env(&config, ENV);

    // bad requests are refused with what to do
    let put = |path: &str, body: Value| server.admin("PUT", path, Some(&body.to_string()));
    let (status, body) = put("/v1/tesla/vehicles/SHORT", json!({"account_id": "acct-1"}));
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_vin")),
        "{body}"
    );
    let (status, body) = put(
        &format!("/v1/tesla/vehicles/{old}"),
        json!({"account_id": "nobody"}),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("unknown_account")),
        "{body}"
    );
    let (status, body) = put("/v1/tesla/accounts/acct-1", json!({"refresh_token": ""}));
    assert_eq!(status, 422, "{body}");

    assert_eq!(
        put(
            "/v1/tesla/accounts/acct-1",
            json!({"refresh_token": api.grant("acct-1")})
        )
        .0,
        201
    );
    // a refresh token Tesla does not know (expired, or issued to another client)
    assert_eq!(
        put(
            "/v1/tesla/accounts/acct-2",
            json!({"refresh_token": "rt-made-up"})
        )
        .0,
        201
    );
    for vin in [old, full, silent] {
        onboard(&server, vin, "acct-1");
    }
    assert_eq!(
        put(
            &format!("/v1/tesla/vehicles/{refused}"),
            json!({"account_id": "acct-2"})
        )
        .0,
        201
    );
    let (status, body) = put(
        "/v1/tesla/vehicles/5YJ3E1EA7KF200009",
        json!({"account_id": "acct-1", "fields": {"Location": {"interval_seconds": 0}}}),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_fields")),
        "{body}"
    );

    let v = wait_state(&server, old, "error");
    assert!(
        v["reason"].as_str().unwrap().contains("firmware 2024.20.9"),
        "{v}"
    );
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("update its software"),
        "{v}"
    );

    let v = wait_state(&server, full, "error");
    assert!(v["reason"].as_str().unwrap().contains("max_configs"), "{v}");
    assert_eq!(api.car(full).config, None);

    // synced, never connected: what the car reported is the last error
    let v = wait_state(&server, silent, "synced");
    let v = if v["tesla_errors"].as_array().unwrap().is_empty() {
        wait_vehicle(&server, silent, Duration::from_secs(10), |v| {
            !v["tesla_errors"].as_array().unwrap().is_empty()
        })
    } else {
        v
    };
    assert!(
        v["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown authority"),
        "{v}"
    );

    let v = wait_state(&server, refused, "error");
    assert!(
        v["reason"].as_str().unwrap().contains("authorize again"),
        "{v}"
    );
    let (_, account) = server.admin("GET", "/v1/tesla/accounts/acct-2", None);
    assert_eq!(account["state"], "refresh_refused", "{account}");

    // a new grant heals the account and the car goes on
    put(
        "/v1/tesla/accounts/acct-2",
        json!({"refresh_token": api.grant("acct-2")}),
    );
    wait_vehicle(&server, refused, Duration::from_secs(20), |v| {
        v["state"] == "configuring" || v["state"] == "synced"
    });
    assert_eq!(
        server.admin("GET", "/v1/tesla/accounts/acct-2", None).1["state"],
        "ok"
    );

    // listing by state
    let (_, errors) = server.admin("GET", "/v1/tesla/vehicles?state=error", None);
    let listed: Vec<&str> = errors
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vin"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![old, full]);
    let (status, _) = server.admin("GET", "/v1/tesla/vehicles?state=bogus", None);
    assert_eq!(status, 400);

    // the config a car already has: kept when it is what fleetgate would push, renewed when
    // its exp is near, and a car whose reads fail backs off alone, then goes on
    let mut current_config = api.car(silent).config.unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let current = "5YJ3E1EA7KF200005";
    let expiring = "5YJ3E1EA7KF200006";
    let flaky = "5YJ3E1EA7KF200007";
    current_config.insert("exp".into(), json!(now_s + 80 * 86_400));
    let mut expiring_config = current_config.clone();
    expiring_config.insert("exp".into(), json!(now_s + 3600));
    api.add_car(
        current,
        Car {
            key_paired: true,
            config: Some(current_config),
            sync_after_reads: 0,
            ..Car::new("acct-1")
        },
    );
    api.add_car(
        expiring,
        Car {
            key_paired: true,
            config: Some(expiring_config),
            sync_after_reads: 0,
            ..Car::new("acct-1")
        },
    );
    api.add_car(
        flaky,
        Car {
            key_paired: true,
            failing_reads: 2,
            ..Car::new("acct-1")
        },
    );
    for vin in [current, expiring, flaky] {
        onboard(&server, vin, "acct-1");
    }
    wait_vehicle(&server, flaky, Duration::from_secs(10), |v| {
        v["last_error"].as_str().is_some_and(|e| e.contains("503"))
    });
    wait_state(&server, current, "synced");
    let v = wait_state(&server, expiring, "synced");
    assert!(
        v["config_exp"].as_i64().unwrap() > now_s + 80 * 86_400,
        "{v}"
    );
    let pushed_to = |vin: &str| {
        api.pushes()
            .iter()
            .filter(|(v, _)| v.contains(&vin.to_owned()))
            .count()
    };
    assert_eq!(
        pushed_to(current),
        0,
        "a config the car already has was pushed again"
    );
    assert_eq!(
        pushed_to(expiring),
        1,
        "a config near its exp was not renewed"
    );
    let v = wait_vehicle(&server, flaky, Duration::from_secs(20), |v| {
        v["state"] == "synced"
    });
    assert!(
        v["last_error"].is_null() || !v["last_error"].as_str().unwrap().contains("503"),
        "{v}"
    );
    assert_eq!(pushed_to(flaky), 1);

    // an account with vehicles cannot be deleted
    let (status, body) = server.admin("DELETE", "/v1/tesla/accounts/acct-1", None);
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("account_in_use")),
        "{body}"
    );
    assert!(
        api.refused_tokens().is_empty(),
        "{:?}",
        api.refused_tokens()
    );
}

#[test]
fn onboarding_is_off_without_its_section() {
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let (status, body) = server.admin("GET", "/v1/tesla/vehicles", None);
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("tesla_not_configured")),
        "{body}"
    );
    let (status, _) = http(
        server.status.as_deref().unwrap(),
        "GET",
        "/.well-known/appspecific/com.tesla.3p.public-key.pem",
        None,
        None,
    );
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_one_reconciler_per_vin_and_status_from_any_instance() {
    use common::cluster::*;
    let broker = require_broker();
    let pki = Pki::new();
    let key = partner_key(&pki);
    let api = StandIn::start(&key.issuer());
    let vins = [
        "5YJ3E1EA7KF300001",
        "5YJ3E1EA7KF300002",
        "5YJ3E1EA7KF300003",
    ];
    for vin in vins {
        api.add_car(
            vin,
            Car {
                key_paired: true,
                ..Car::new("fleet")
            },
        );
    }
    api.set_access_lifetime(Duration::from_secs(4));
    let namespace = unique_namespace("tesla");
    let port_a = free_port();
    let port_b = free_port();
    // vehicles reach every instance at one hostname and port (a load balancer in production):
    // both sign the same config, whichever owns the car
    let instance = |name: &str, port: u16| {
        let mut config = cluster_config(&pki, &broker, &namespace, name);
        let mut tesla = tesla_config(&pki, &api, port)["fleetgate"]["tesla"].clone();
        tesla["port"] = json!(port_a);
        merge(
            &mut config,
            &json!({"port": port, "fleetgate": {"tesla": tesla}}),
        );
        config
    };
    let a = Server::start_with_env(&instance("a", port_a), ENV);
    let b = Server::start_with_env(&instance("b", port_b), ENV);
    wait_for_rules(&[&a, &b], 3);

    let (status, body) = a.admin(
        "PUT",
        "/v1/tesla/accounts/fleet",
        Some(&json!({"refresh_token": api.grant("fleet")}).to_string()),
    );
    assert_eq!(status, 201, "{body}");
    for vin in vins {
        let (status, body) = b.admin(
            "PUT",
            &format!("/v1/tesla/vehicles/{vin}"),
            Some(&json!({"account_id": "fleet"}).to_string()),
        );
        assert_eq!(status, 201, "{body}");
    }
    // each car is configured once, by its rules owner, and both instances answer the same
    for vin in vins {
        for server in [&a, &b] {
            wait_vehicle(server, vin, Duration::from_secs(30), |v| {
                v["state"] == "synced"
            });
        }
    }
    let pushes = api.pushes();
    for vin in vins {
        let n = pushes
            .iter()
            .filter(|(v, _)| v.contains(&vin.to_owned()))
            .count();
        assert_eq!(
            n, 1,
            "{vin} was pushed {n} times: two reconcilers acted on it"
        );
    }
    assert!(api.refused_tokens().is_empty());

    // the load balancer sends the cars to either instance
    for (i, vin) in vins.iter().enumerate() {
        let via = if i % 2 == 0 { port_a } else { port_b };
        car_streams_via(&api, &pki, vin, 0, Some(via)).await;
    }
    for vin in vins {
        for server in [&a, &b] {
            wait_vehicle(server, vin, Duration::from_secs(30), |v| {
                v["state"] == "streaming"
            });
        }
    }
    // rotated refresh tokens were never used twice by the two instances
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, refused, reused) = api.refreshes();
    assert_eq!((refused, reused), (0, 0));
    for server in [&a, &b] {
        assert_eq!(
            server.admin("GET", "/v1/tesla/accounts/fleet", None).1["state"],
            "ok"
        );
    }

    // the onboarding events are in Kafka, in order per car, once per change
    let topic = format!("{namespace}_events");
    let events = committed_onboarding_events(&broker, &topic, 9);
    for vin in vins {
        assert_eq!(
            states_of(&events, vin),
            ["configuring", "synced", "streaming"],
            "{vin}"
        );
    }

    // an instance dies: the survivor reconciles its cars and refreshes its account with the
    // refresh token the dead one made durable
    drop(b);
    wait_for_rules(&[&a], 3);
    tokio::time::sleep(Duration::from_secs(4)).await; // every access token held is revoked
    for vin in vins {
        let (status, body) = a.admin("POST", &format!("/v1/tesla/vehicles/{vin}/resync"), None);
        assert_eq!(status, 202, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let pushes = api.pushes();
        let all = vins.iter().all(|vin| {
            pushes
                .iter()
                .filter(|(v, _)| v.contains(&vin.to_string()))
                .count()
                == 2
        });
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor did not push: {:?}",
            pushes.iter().map(|p| &p.0).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, refused, reused) = api.refreshes();
    assert_eq!(
        (refused, reused),
        (0, 0),
        "a spent refresh token was used after the failover"
    );
    assert_eq!(
        a.admin("GET", "/v1/tesla/accounts/fleet", None).1["state"],
        "ok"
    );
    let events = committed_onboarding_events(&broker, &topic, 12);
    for vin in vins {
        assert_eq!(
            &states_of(&events, vin)[..4],
            ["configuring", "synced", "streaming", "configuring"],
            "{vin}"
        );
    }
}

/// The committed onboarding events on `topic`, read until at least `n` arrived.
fn committed_onboarding_events(broker: &str, topic: &str, n: usize) -> Vec<Value> {
    let onboarding = |e: &&Value| e["type"] == "fleetgate.vehicle.onboarding";
    common::cluster::committed_events(broker, topic, |events| {
        events.iter().filter(onboarding).count() >= n
    })
    .into_iter()
    .filter(|e| onboarding(&e))
    .collect()
}

/// The states `vin`'s onboarding events announce, in order.
fn states_of<'a>(events: &'a [Value], vin: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["data"]["vin"] == vin)
        .map(|e| e["data"]["state"].as_str().unwrap())
        .collect()
}

mod cli {
    //! `fleetgate tesla keygen`, `sign-config` and `doctor` as an operator runs them.
    use super::*;
    use std::process::Command;

    fn fleetgate(args: &[&str]) -> (i32, String, String) {
        let out = Command::new(server_binary()).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A config file for the CLI (no Fleet API: signing and checks need none).
    fn write_config(pki: &Pki, port: u16, tesla_extra: Value) -> std::path::PathBuf {
        let mut config = base_config(pki);
        merge(
            &mut config,
            &json!({"port": port, "fleetgate": {"tesla": {
                "private_key_file": pki.path("keys/private-key.pem"),
                "hostname": "localhost",
                "ca_file": pki.path("ca.pem"),
                "partner_domain": "localhost",
            }}}),
        );
        merge(&mut config, &json!({"fleetgate": {"tesla": tesla_extra}}));
        let path = pki
            .dir
            .path()
            .join(format!("cli-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        path
    }

    /// `fleetgate tesla doctor` of `config` against the server on loopback `port`.
    fn doctor(config: &Path, port: u16) -> (i32, String, String) {
        let connect = format!("127.0.0.1:{port}");
        let config = config.to_str().unwrap();
        fleetgate(&["tesla", "doctor", "--config", config, "--connect", &connect])
    }

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let pki = Pki::new();
        let out = pki.path("keys");
        let (code, stdout, stderr) = fleetgate(&["tesla", "keygen", "--out", &out]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("private-key.pem"), "{stdout}");
        let private = pki.dir.path().join("keys/private-key.pem");
        let public = pki.dir.path().join("keys/com.tesla.3p.public-key.pem");
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = PartnerKey::from_pem(&std::fs::read_to_string(&private).unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&public).unwrap(), key.public_pem());
        let before = std::fs::read(&private).unwrap();
        let (code, _, stderr) = fleetgate(&["tesla", "keygen", "--out", &out]);
        assert_ne!(code, 0);
        assert!(stderr.contains("exists"), "{stderr}");
        assert_eq!(std::fs::read(&private).unwrap(), before);
    }

    #[test]
    fn sign_config_prints_a_token_tesla_accepts_and_its_claims() {
        let pki = Pki::new();
        assert_eq!(
            fleetgate(&["tesla", "keygen", "--out", &pki.path("keys")]).0,
            0
        );
        let key = PartnerKey::from_pem(
            &std::fs::read_to_string(pki.path("keys/private-key.pem")).unwrap(),
        )
        .unwrap();
        let config = write_config(&pki, 4443, json!({"alert_types": ["service"]}));
        let (code, token, stderr) =
            fleetgate(&["tesla", "sign-config", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        let verified =
            fleetgate::tesla::jws::verify_token(token.trim()).expect("the token verifies");
        assert_eq!(verified.public_key, key.public_bytes().to_vec());
        let claims = verified.claims;
        assert_eq!(claims["aud"], "com.tesla.fleet.TelemetryClient");
        assert_eq!(claims["iss"], key.issuer());
        assert_eq!(claims["port"], 4443);
        assert_eq!(claims["hostname"], "localhost");
        assert_eq!(claims["alert_types"], json!(["service"]));
        assert!(claims["fields"]["Location"].is_object());
        let (code, printed, _) = fleetgate(&[
            "tesla",
            "sign-config",
            "--config",
            config.to_str().unwrap(),
            "--claims",
        ]);
        assert_eq!(code, 0);
        let printed: Value = serde_json::from_str(&printed).unwrap();
        for k in [
            "hostname",
            "port",
            "ca",
            "fields",
            "delivery_policy",
            "prefer_typed",
            "aud",
            "iss",
        ] {
            assert_eq!(printed[k], claims[k], "{k}");
        }
    }

    #[test]
    fn sign_config_refuses_a_ca_that_does_not_verify_the_served_certificate() {
        let pki = Pki::new();
        assert_eq!(
            fleetgate(&["tesla", "keygen", "--out", &pki.path("keys")]).0,
            0
        );
        let stranger = fleetgate::tools::certs::DevCa::root("Someone Else Root").unwrap();
        write_file(pki.dir.path(), "stranger.pem", &stranger.cert_pem);
        let config = write_config(&pki, 4443, json!({"ca_file": pki.path("stranger.pem")}));
        let (code, stdout, stderr) =
            fleetgate(&["tesla", "sign-config", "--config", config.to_str().unwrap()]);
        assert_ne!(code, 0, "{stdout}");
        assert!(stdout.trim().is_empty());
        assert!(stderr.contains("ca_file"), "{stderr}");

        // a string port is what vehicles ignore silently: refused by the config itself
        let mut raw: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        raw["fleetgate"]["tesla"]["port"] = json!("4443");
        raw["fleetgate"]["tesla"]["ca_file"] = json!(pki.path("ca.pem"));
        std::fs::write(&config, raw.to_string()).unwrap();
        let (code, _, stderr) =
            fleetgate(&["tesla", "sign-config", "--config", config.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(stderr.contains("port"), "{stderr}");
        let (code, stdout, _) =
            fleetgate(&["tesla", "doctor", "--config", config.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(
            stdout.contains("FAIL  port") && stdout.contains("without quotes"),
            "{stdout}"
        );
    }

    #[test]
    fn doctor_passes_against_the_running_server_and_names_each_fix() {
        let pki = Pki::new();
        assert_eq!(
            fleetgate(&["tesla", "keygen", "--out", &pki.path("keys")]).0,
            0
        );
        let port = free_port();
        let good = write_config(&pki, port, json!({}));
        let config: Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
        let _server = Server::start(&config);
        let (code, stdout, stderr) = doctor(&good, port);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        assert!(!stdout.contains("FAIL"), "{stdout}");
        assert!(stdout.contains("what cars check passes"), "{stdout}");

        // a ca that is not the server's issuer: the served chain does not verify
        let stranger = fleetgate::tools::certs::DevCa::root("Someone Else Root").unwrap();
        write_file(pki.dir.path(), "stranger.pem", &stranger.cert_pem);
        let wrong_ca = write_config(&pki, port, json!({"ca_file": pki.path("stranger.pem")}));
        let (code, stdout, _) = doctor(&wrong_ca, port);
        assert_ne!(code, 0);
        assert!(stdout.contains("FAIL"), "{stdout}");

        // a hostname outside the partner domain
        let outside = write_config(&pki, port, json!({"partner_domain": "fleet.example.com"}));
        let (code, stdout, _) = doctor(&outside, port);
        assert_ne!(code, 0);
        assert!(
            stdout.contains("FAIL") && stdout.contains("fleet.example.com"),
            "{stdout}"
        );

        // nothing listens: the doctor says so rather than passing
        let nobody = free_port();
        let (code, stdout, _) = doctor(&good, nobody);
        assert_ne!(code, 0);
        assert!(stdout.contains("FAIL"), "{stdout}");
    }

    #[test]
    fn check_config_names_tesla_problems() {
        let pki = Pki::new();
        let config = write_config(
            &pki,
            4443,
            json!({"private_key_file": pki.path("missing.pem"), "fleet_api_url": "http://fleet.example.com", "client_id": "x"}),
        );
        let (code, stdout, stderr) = fleetgate(&["check-config", config.to_str().unwrap()]);
        let text = format!("{stdout}{stderr}");
        assert_ne!(code, 0, "{text}");
        assert!(text.contains("fleetgate.tesla.private_key_file"), "{text}");
        assert!(text.contains("fleetgate.tesla.fleet_api_url"), "{text}");
    }
}
