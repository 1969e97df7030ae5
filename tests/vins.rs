//! VIN allow / block lists: from the config and the admin API (durable), checked after the
//! handshake, and a change closes the connections it now refuses.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const OTHER: &str = "5YJ3E1EA7KF000002";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vin_lists_refuse_new_connections_and_close_existing_ones() {
    let pki = Pki::new();
    let mut config = base_config(&pki);
    config["fleetgate"]["vins"] = json!({"block": [OTHER]});
    let server = Server::start(&config);
    let ca = pki.ca_pem();

    // blocked in the config: 403 right after the handshake, counted
    let blocked = pki.pki.vehicle(OTHER).unwrap();
    let Err(err) = connect(&server, &ca, &blocked, &[]).await else {
        panic!("a blocked VIN must be refused")
    };
    assert!(err.to_string().contains("403"), "{err}");
    assert_eq!(
        server.metric("fleetgate_identity_refused_total{reason=\"vin_blocked\"}"),
        1.0
    );

    // blocking a connected vehicle through the API closes its socket (1008)
    let cert = pki.pki.vehicle(VIN).unwrap();
    let mut ws = connect(&server, &ca, &cert, &[]).await.unwrap();
    assert_eq!(connected_vins(&server, 1).await, vec![VIN.to_owned()]);
    let (s, v) = server.admin("PUT", &format!("/v1/vins/block/{VIN}"), None);
    assert_eq!((s, v["connections_closed"].clone()), (201, json!(1)), "{v}");
    let end = tokio::time::timeout(
        Duration::from_secs(3),
        futures_util::StreamExt::next(&mut ws),
    )
    .await
    .unwrap();
    match end {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_ws_closed_total{reason=\"vin_refused\"}",
            1.0
        )
        .await,
        1.0
    );
    assert!(connect(&server, &ca, &cert, &[]).await.is_err());
    assert_eq!(
        server
            .admin("PUT", &format!("/v1/vins/block/{VIN}"), None)
            .0,
        200,
        "idempotent"
    );

    // unblock: the vehicle gets in again
    assert_eq!(
        server
            .admin("DELETE", &format!("/v1/vins/block/{VIN}"), None)
            .0,
        204
    );
    assert_eq!(
        server
            .admin("DELETE", &format!("/v1/vins/block/{VIN}"), None)
            .0,
        404
    );
    let _ws = connect(&server, &ca, &cert, &[]).await.expect("unblocked");

    // an allow list refuses everyone else
    assert_eq!(
        server
            .admin("PUT", "/v1/vins/allow/5YJ3E1EA7KF000009", None)
            .0,
        201
    );
    assert_eq!(
        wait_metric(
            &server,
            "fleetgate_ws_closed_total{reason=\"vin_refused\"}",
            2.0
        )
        .await,
        2.0,
        "the now-unlisted vehicle is closed"
    );
    assert!(connect(&server, &ca, &cert, &[]).await.is_err());
    assert_eq!(
        server.metric("fleetgate_identity_refused_total{reason=\"vin_not_allowed\"}"),
        1.0
    );
    let (_, v) = server.admin("GET", "/v1/vins", None);
    assert_eq!(v["admin"]["allow"], json!(["5YJ3E1EA7KF000009"]));
    assert_eq!(v["effective"]["block"], json!([OTHER]));
    assert_eq!(server.admin("PUT", "/v1/vins/grey/X", None).0, 404);
}

#[test]
fn admin_vin_lists_survive_a_restart() {
    let pki = Pki::new();
    let config = base_config(&pki);
    {
        let server = Server::start(&config);
        assert_eq!(
            server
                .admin("PUT", &format!("/v1/vins/block/{OTHER}"), None)
                .0,
            201
        );
    }
    let server = Server::start(&config);
    let (_, v) = server.admin("GET", "/v1/vins", None);
    assert_eq!(v["admin"]["block"], json!([OTHER]));
}
