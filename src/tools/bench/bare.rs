//! The comparison point of the bench: a bare mTLS websocket server that only verifies the
//! envelope and acks it. Same rustls configuration, websocket buffer and runtime as `serve`, and
//! nothing else: no identity rules, no decode, no table, no rules, no sinks.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::ingest::tls;
use crate::tools::certs::files;
use crate::wire::{read_envelope, EnvelopeWriter};

/// Runs the bare ack server on `listen` with the dev PKI in `pki` until the process ends.
/// Prints `bare-ack-server listening ADDR` on stderr once bound.
pub async fn run(pki: &Path, listen: SocketAddr) -> Result<(), String> {
    let verifier = tls::client_verifier(&crate::ingest::tesla_ca::ClientRoots::File(
        pki.join(files::CA),
    ))
    .map_err(|e| e.to_string())?;
    let config = tls::server_config(
        Some(verifier),
        &pki.join(files::SERVER),
        &pki.join(files::SERVER_KEY),
    )
    .map_err(|e| e.to_string())?;
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("bare-ack-server listening {addr}");
    // the read buffer of `serve`'s default (what it costs per read and per connection is the
    // same for both); acks written one by one, as a plain server does
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(crate::config::LimitsConfig::default().ws_read_buffer_bytes)
        .write_buffer_size(0);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(tls, Some(ws_config)).await
            else {
                return;
            };
            let mut writer = EnvelopeWriter::new();
            while let Some(Ok(message)) = ws.next().await {
                let Message::Binary(frame) = message else {
                    continue;
                };
                let Ok(envelope) = read_envelope(&frame) else {
                    continue;
                };
                let ack = writer.ack(envelope.txid, envelope.topic, envelope.message_id);
                let ack = Message::Binary(bytes::Bytes::copy_from_slice(ack));
                if ws.send(ack).await.is_err() {
                    break;
                }
            }
        });
    }
}
