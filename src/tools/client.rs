//! A vehicle-side client: mTLS websocket to fleetgate (or Tesla's server), sending frames and
//! reading answers. Used by `sim`, `bench`, the demo and the tests.

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::ingest::tls::{load_certs, load_key};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS setup (files, keys).
    #[error("client tls setup: {0}")]
    Setup(String),
    /// TCP or TLS failure.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// Websocket failure (including a refused upgrade: the HTTP status is in the message).
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
}

/// A TLS client config presenting `chain` / `key` and trusting `ca`.
pub fn client_config_from_pem(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, ClientError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| ClientError::Setup(e.to_string()))?)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
    }
    Ok(Arc::new(client_config_with_roots(
        Arc::new(roots),
        chain_pem,
        key_pem,
    )?))
}

/// A TLS client config presenting `chain_pem` / `key_pem` and trusting `roots` (shared by
/// many vehicles, as the bench's fleet does).
pub fn client_config_with_roots(
    roots: Arc<RootCertStore>,
    chain_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, ClientError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let setup = |e: &dyn std::fmt::Display| ClientError::Setup(e.to_string());
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| setup(&e))?;
    ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| setup(&e))
}

/// A TLS client config from PEM files.
pub fn client_config_from_files(
    ca: &Path,
    chain: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("ca", ca).map_err(|e| ClientError::Setup(e.to_string()))? {
        roots
            .add(cert)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
    }
    let chain = load_certs("cert", chain).map_err(|e| ClientError::Setup(e.to_string()))?;
    let key = load_key("key", key).map_err(|e| ClientError::Setup(e.to_string()))?;
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    Ok(Arc::new(config))
}

/// An open vehicle connection.
pub type VehicleSocket = WebSocketStream<TlsStream<TcpStream>>;

/// Connects over mTLS to `addr` (host:port, server name `server_name`) and upgrades to a
/// websocket, sending the headers a vehicle sends.
pub async fn connect(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    headers: &[(&str, &str)],
) -> Result<VehicleSocket, ClientError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let mut request = format!("wss://{server_name}/").into_client_request()?;
    for (k, v) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ClientError::Setup(e.to_string()))?,
            http::HeaderValue::from_str(v).map_err(|e| ClientError::Setup(e.to_string()))?,
        );
    }
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config)).await?;
    Ok(ws)
}

/// Sends one binary frame.
pub async fn send_frame<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    frame: Vec<u8>,
) -> Result<(), ClientError> {
    ws.send(Message::Binary(frame.into())).await?;
    Ok(())
}

/// Waits for the next binary message from the server (skipping pings); `None` when closed.
pub async fn next_binary<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<Result<Vec<u8>, ClientError>> {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Binary(b)) => return Some(Ok(b.to_vec())),
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(e) => return Some(Err(e.into())),
        }
    }
    None
}
