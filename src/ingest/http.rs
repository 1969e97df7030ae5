//! The one HTTP/1.1 request a vehicle connection starts with: `GET /status`, or a websocket
//! upgrade on any other path. Parsed with httparse from a bounded buffer (no request can make
//! the server hold more than [`MAX_HEAD_BYTES`]); the 101 answer uses tungstenite's accept key.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted from a vehicle.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request head accepted from a trusted proxy (certificate chains in headers).
pub const MAX_PROXIED_HEAD_BYTES: usize = 32 * 1024;
const MAX_HEADERS: usize = 48;

/// Client-certificate headers a TLS-terminating proxy may add (only believed on the proxy
/// listener, from trusted addresses; see `ingest::proxy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedCert {
    /// RFC 9440 `Client-Cert`.
    pub client_cert: Option<String>,
    /// RFC 9440 `Client-Cert-Chain`.
    pub client_cert_chain: Option<String>,
    /// AWS ALB `X-Amzn-Mtls-Clientcert`.
    pub amzn_mtls_clientcert: Option<String>,
}

impl ForwardedCert {
    /// True when any certificate header is present.
    pub fn any(&self) -> bool {
        self.client_cert.is_some()
            || self.client_cert_chain.is_some()
            || self.amzn_mtls_clientcert.is_some()
    }
}

/// What the connection asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request method.
    pub method: String,
    /// Request path (without the query).
    pub path: String,
    /// `Sec-WebSocket-Key`, when this is a websocket upgrade.
    pub websocket_key: Option<String>,
    /// `Version` header: the vehicle's client version.
    pub version: String,
    /// `X-Network-Interface` header (`wifi`, `cellular`, …).
    pub network_interface: String,
    /// `X-TXID` header as sent.
    pub txid: String,
    /// Bytes read past the head (a client that did not wait for the 101).
    pub leftover: Vec<u8>,
    /// Client-certificate headers (only believed from trusted proxies).
    pub forwarded: ForwardedCert,
}

/// Why no usable request arrived.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The connection closed or failed.
    #[error("connection ended before a complete request: {0}")]
    Io(#[from] std::io::Error),
    /// More than the limit without the end of the head.
    #[error("request head too large")]
    TooLarge,
    /// Not HTTP/1.1.
    #[error("not a valid HTTP/1.1 request: {0}")]
    Invalid(String),
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Reads and parses the request head (at most `max_bytes`).
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<RequestHead, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/").to_owned();
                let upgrade = has_token(header(req.headers, "upgrade"), "websocket")
                    && has_token(header(req.headers, "connection"), "upgrade")
                    && header(req.headers, "sec-websocket-version") == Some("13");
                return Ok(RequestHead {
                    method: req.method.unwrap_or("").to_owned(),
                    path,
                    websocket_key: upgrade
                        .then(|| header(req.headers, "sec-websocket-key").map(str::to_owned))
                        .flatten(),
                    version: header(req.headers, "version").unwrap_or("").to_owned(),
                    network_interface: header(req.headers, "x-network-interface")
                        .unwrap_or("")
                        .to_owned(),
                    txid: header(req.headers, "x-txid").unwrap_or("").to_owned(),
                    leftover: buf[len..].to_vec(),
                    forwarded: ForwardedCert {
                        client_cert: header(req.headers, "client-cert").map(str::to_owned),
                        client_cert_chain: header(req.headers, "client-cert-chain")
                            .map(str::to_owned),
                        amzn_mtls_clientcert: header(req.headers, "x-amzn-mtls-clientcert")
                            .map(str::to_owned),
                    },
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < max_bytes => continue,
            Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Invalid(e.to_string())),
        }
    }
}

/// Writes a complete plain response and closes the stream.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    body: &str,
) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await?;
    // Ends the TLS session cleanly (close_notify) so the client reads the whole answer.
    stream.shutdown().await
}

/// Writes the `101 Switching Protocols` answer for `key`.
pub async fn accept_upgrade<S: AsyncWrite + Unpin>(
    stream: &mut S,
    key: &str,
) -> std::io::Result<()> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let text = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_an_upgrade_with_tesla_headers() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nVersion: 2024.44.25\r\nX-Network-Interface: wifi\r\nX-TXID: 6d1f0a4e-3c1b-4a8e-9f00-0123456789ab\r\n\r\nEXTRA";
        let head = read_head(&mut &req[..], MAX_HEAD_BYTES).await.unwrap();
        assert_eq!(
            head.websocket_key.as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(head.version, "2024.44.25");
        assert_eq!(head.network_interface, "wifi");
        assert_eq!(head.leftover, b"EXTRA");
    }

    #[tokio::test]
    async fn status_is_not_an_upgrade_and_garbage_is_invalid() {
        let head = read_head(
            &mut &b"GET /status?x=1 HTTP/1.1\r\n\r\n"[..],
            MAX_HEAD_BYTES,
        )
        .await
        .unwrap();
        assert_eq!((head.path.as_str(), head.websocket_key), ("/status", None));
        assert!(matches!(
            read_head(&mut &b"\x16\x03\x01garbage\r\n\r\n"[..], MAX_HEAD_BYTES).await,
            Err(HeadError::Invalid(_))
        ));
        let huge = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert!(matches!(
            read_head(&mut &huge[..], MAX_HEAD_BYTES).await,
            Err(HeadError::TooLarge | HeadError::Invalid(_))
        ));
    }
}
