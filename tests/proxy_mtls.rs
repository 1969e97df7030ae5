//! mTLS terminated at a trusted proxy: the certificate arrives in an RFC 9440 or AWS ALB header
//! on the proxy listener, is believed only from `trusted_proxies`, and is verified against
//! `tls.ca_file` and the identity rules like a handshake's.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use common::*;
use fleetgate::tools::certs::PemPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

const OTHER: &str = "5YJ3E1EA7KF000002";

fn proxy_server(pki: &Pki, header: &str, trusted: &[&str], tls: bool) -> Server {
    let mut config = base_config(pki);
    config["fleetgate"]["proxy_mtls"] = json!({
        "listen": "127.0.0.1:0",
        "header": header,
        "trusted_proxies": trusted,
        "tls": tls,
    });
    Server::start(&config)
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().as_ref().to_vec())
        .collect()
}

fn sf_binary(der: &[u8]) -> String {
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// RFC 9440 headers for a certificate pair: the leaf, and the rest of its chain unless
/// `leaf_only`.
fn rfc9440(cert: &PemPair, leaf_only: bool) -> Vec<(&'static str, String)> {
    let chain = ders(&cert.chain_pem);
    let mut headers = vec![("Client-Cert", sf_binary(&chain[0]))];
    if !leaf_only && chain.len() > 1 {
        let rest: Vec<String> = chain[1..].iter().map(|d| sf_binary(d)).collect();
        headers.push(("Client-Cert-Chain", rest.join(", ")));
    }
    headers
}

/// The AWS ALB header: the URL-encoded PEM chain, leaf first.
fn alb(cert: &PemPair) -> Vec<(&'static str, String)> {
    let encoded =
        percent_encoding::utf8_percent_encode(&cert.chain_pem, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    vec![("X-Amzn-Mtls-Clientcert", encoded)]
}

async fn tcp_from(source: &str, to: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    socket.connect(to.parse().unwrap()).await.unwrap()
}

/// A websocket upgrade over `stream` as the proxy would forward it.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    headers: &[(&'static str, String)],
) -> Result<WebSocketStream<S>, WsError> {
    let mut request = "ws://localhost/".into_client_request().unwrap();
    for (k, v) in headers {
        request
            .headers_mut()
            .insert(*k, http::HeaderValue::from_str(v).unwrap());
    }
    request
        .headers_mut()
        .insert("X-Network-Interface", "wifi".parse().unwrap());
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

fn refused_status(result: Result<impl Sized, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the upgrade succeeded"),
    }
}

/// Sends a `V` frame as `vin` and expects its ack.
async fn acked<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, vin: &str) {
    let payload = v_payload(1_764_000_000, vec![]);
    let sender = format!("vehicle_device.{vin}");
    fleetgate::tools::client::send_frame(ws, frame("tx-1", "V", &sender, &payload))
        .await
        .unwrap();
    assert_eq!(answer(ws).await, expected_ack(b"tx-1", b"V", b""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9440_certificate_from_a_trusted_proxy_is_a_vehicle() {
    let pki = Pki::new();
    let server = proxy_server(&pki, "rfc9440", &["127.0.0.0/30"], false);
    let proxy = server.proxy.clone().expect("proxy listener is announced");
    let cert = pki.pki.vehicle(VIN).unwrap();

    // the proxy's health check needs no certificate
    assert_eq!(http(&proxy, "GET", "/status", None, None).0, 200);

    let mut ws = upgrade(tcp_from("127.0.0.1", &proxy).await, &rfc9440(&cert, false))
        .await
        .expect("a trusted proxy's certificate header is accepted");
    acked(&mut ws, VIN).await;
    assert_eq!(connected_vins(&server, 1).await, vec![VIN.to_owned()]);
    assert_eq!(
        server.metric("fleetgate_proxy_client_certs_total{result=\"ok\"}"),
        1.0
    );
    // the sender id is still checked against the forwarded identity (dispatched under it)
    let sender = format!("vehicle_device.{OTHER}");
    let spoofed = frame("tx-2", "V", &sender, &v_payload(1_764_000_000, vec![]));
    fleetgate::tools::client::send_frame(&mut ws, spoofed)
        .await
        .unwrap();
    assert_eq!(answer(&mut ws).await, expected_ack(b"tx-2", b"V", b""));
    assert_eq!(server.metric("fleetgate_sender_mismatch_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_alb_certificate_from_a_trusted_proxy_is_a_vehicle() {
    let pki = Pki::new();
    let server = proxy_server(&pki, "aws_alb", &["127.0.0.1"], false);
    let proxy = server.proxy.clone().unwrap();
    let cert = pki.pki.vehicle(OTHER).unwrap();
    let mut ws = upgrade(tcp_from("127.0.0.1", &proxy).await, &alb(&cert))
        .await
        .expect("an ALB certificate header is accepted");
    acked(&mut ws, OTHER).await;
    assert_eq!(connected_vins(&server, 1).await, vec![OTHER.to_owned()]);

    // the RFC 9440 form is not what this listener was told to trust
    let status =
        refused_status(upgrade(tcp_from("127.0.0.1", &proxy).await, &rfc9440(&cert, false)).await);
    assert_eq!(status, 403);
    assert_eq!(
        server.metric("fleetgate_proxy_client_certs_total{result=\"no_client_cert\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_an_untrusted_address_is_refused_and_counted() {
    let pki = Pki::new();
    // only 127.0.0.2 is the proxy
    let server = proxy_server(&pki, "rfc9440", &["127.0.0.2/32"], false);
    let proxy = server.proxy.clone().unwrap();
    let cert = pki.pki.vehicle(VIN).unwrap();

    let forged = upgrade(tcp_from("127.0.0.1", &proxy).await, &rfc9440(&cert, false)).await;
    assert_eq!(refused_status(forged), 403);
    assert_eq!(
        server.metric("fleetgate_proxy_client_certs_total{result=\"untrusted_proxy\"}"),
        1.0
    );
    assert_eq!(
        server.metric("fleetgate_identity_refused_total{reason=\"untrusted_proxy\"}"),
        1.0
    );
    let (_, body) = http(&proxy, "GET", "/", None, None);
    assert!(body.contains("no_client_cert"), "{body}");
    assert_eq!(connected_vins(&server, 0).await.len(), 0);

    // the same header from the proxy's address is believed
    let mut ws = upgrade(tcp_from("127.0.0.2", &proxy).await, &rfc9440(&cert, false))
        .await
        .expect("the trusted proxy gets in");
    acked(&mut ws, VIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chains_and_bad_headers_are_refused_with_their_reason() {
    let pki = Pki::new();
    let server = proxy_server(&pki, "rfc9440", &["127.0.0.1"], false);
    let proxy = server.proxy.clone().unwrap();

    let cases: Vec<(&str, Vec<(&'static str, String)>)> = vec![
        (
            "untrusted_issuer",
            rfc9440(&pki.pki.negative("untrusted-ca", VIN).unwrap(), false),
        ),
        // the issuing CA is not in ca_file: without Client-Cert-Chain the chain is incomplete
        (
            "untrusted_issuer",
            rfc9440(&pki.pki.vehicle(VIN).unwrap(), true),
        ),
        (
            "expired",
            rfc9440(&pki.pki.negative("expired", VIN).unwrap(), false),
        ),
        (
            "issuer_not_allowed",
            rfc9440(&pki.pki.negative("unknown-issuer", VIN).unwrap(), false),
        ),
        (
            "malformed_header",
            vec![("Client-Cert", "not-a-byte-sequence".to_owned())],
        ),
        (
            "bad_certificate",
            vec![("Client-Cert", sf_binary(b"\x30\x03\x02\x01\x01"))],
        ),
    ];
    for (reason, headers) in &cases {
        let before = server.metric(&format!(
            "fleetgate_proxy_client_certs_total{{result=\"{reason}\"}}"
        ));
        let status = refused_status(upgrade(tcp_from("127.0.0.1", &proxy).await, headers).await);
        assert_eq!(status, 403, "{reason}");
        let after = server.metric(&format!(
            "fleetgate_proxy_client_certs_total{{result=\"{reason}\"}}"
        ));
        assert_eq!(after, before + 1.0, "counted as {reason}");
    }
    assert_eq!(connected_vins(&server, 0).await.len(), 0);
    // the server is still fine
    let mut ws = upgrade(
        tcp_from("127.0.0.1", &proxy).await,
        &rfc9440(&pki.pki.vehicle(VIN).unwrap(), false),
    )
    .await
    .unwrap();
    acked(&mut ws, VIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_between_proxy_and_fleetgate() {
    let pki = Pki::new();
    let server = proxy_server(&pki, "rfc9440", &["127.0.0.1"], true);
    let proxy = server.proxy.clone().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for der in ders(&pki.ca_pem()) {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            "localhost".try_into().unwrap(),
            tcp_from("127.0.0.1", &proxy).await,
        )
        .await
        .expect("server-only TLS: no client certificate needed at the handshake");
    let mut ws = upgrade(tls, &rfc9440(&pki.pki.vehicle(VIN).unwrap(), false))
        .await
        .unwrap();
    acked(&mut ws, VIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_listener_ignores_certificate_headers() {
    let pki = Pki::new();
    let server = proxy_server(&pki, "rfc9440", &["127.0.0.0/8"], false);
    let cert = pki.pki.vehicle(VIN).unwrap();
    let other = rfc9440(&pki.pki.vehicle(OTHER).unwrap(), false);
    let headers: Vec<(&str, &str)> = other.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut ws = connect(&server, &pki.ca_pem(), &cert, &headers)
        .await
        .unwrap();
    acked(&mut ws, VIN).await;
    assert_eq!(connected_vins(&server, 1).await, vec![VIN.to_owned()]);
}
