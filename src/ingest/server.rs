//! The vehicle listener: accept with a connection cap, TLS handshake with a timeout, identity,
//! one HTTP request (`/status` or a websocket upgrade), then the frame loop. Also the optional
//! plain-HTTP status listener and the connectivity records made on connect and disconnect.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{self, ConnectionInfo, ConnectionSettings};
use super::http::{self, HeadError, MAX_HEAD_BYTES, MAX_PROXIED_HEAD_BYTES};
use super::identity::{identity_from_der, Identity};
use super::proxy::ProxyAuth;
use super::registry::Closed;
use super::stop::{StopReason, StopSignal};
use super::tls::handshake_failure_reason;
use crate::metrics as m;
use crate::pipeline::SocketInfo;
use crate::wire::proto::vehicle_connectivity::ConnectivityEvent;

/// Everything the listener needs, shared by all connections.
#[derive(Clone)]
pub struct ServerSettings {
    /// TLS acceptor (mTLS).
    pub tls: TlsAcceptor,
    /// Connection cap.
    pub max_connections: usize,
    /// TLS handshake time limit.
    pub handshake_timeout: Duration,
    /// Time limit for the HTTP request after TLS.
    pub upgrade_timeout: Duration,
    /// Websocket buffer and size limits.
    pub websocket: WebSocketConfig,
    /// Per-connection frame loop settings.
    pub connection: ConnectionSettings,
    /// How long shutdown waits for connections to drain.
    pub shutdown_grace: Duration,
    /// Open connections (for the admin API).
    pub registry: Arc<super::registry::Registry>,
    /// Grace after a vehicle's last socket closes before `vehicle.disconnected`.
    pub vehicle_grace: Duration,
    /// How long an older socket of a vehicle may stay open after a newer one arrives.
    pub handover_grace: Duration,
    /// New connections per source IP per second.
    pub ip_limiter: Arc<super::rate::IpRateLimiter>,
    /// TLS handshakes allowed at once (accept-time admission: CPU, not a refusal, paces a
    /// reconnect storm).
    pub handshake_slots: Arc<Semaphore>,
    /// VIN allow / block lists.
    pub vins: Arc<super::vins::VinPolicy>,
    /// Grace timers (hand-over, vehicle gone): tracked, and stopped at shutdown.
    pub timers: TaskTracker,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The socket as the pipeline's connectivity records and vehicle events see it.
fn socket_info(info: &ConnectionInfo) -> SocketInfo<'_> {
    SocketInfo {
        vin: &info.identity.device_id,
        connection_id: &info.connection_id,
        client_type: info.identity.client_type,
        client_version: &info.client_version,
        network_interface: &info.network_interface,
    }
}

/// A new connection id: a UUID v4 made by the server, unique per socket. The client's
/// `X-TXID` header is kept beside it (`ConnectionInfo::client_txid`), never used as the id:
/// two sockets of one vehicle may send the same header.
pub fn new_connection_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// How a listener learns who the client is.
#[derive(Clone)]
pub enum ListenerKind {
    /// The vehicle listener: mTLS, identity from the handshake's verified certificate.
    Direct,
    /// The proxy listener: identity from a trusted proxy's certificate header.
    Proxy(Arc<ProxyListener>),
}

/// The proxy-facing listener (`fleetgate.proxy_mtls`).
pub struct ProxyListener {
    /// Who may forward certificates, in which header form, verified against which roots.
    pub auth: ProxyAuth,
    /// Server-only TLS, when configured (else plain HTTP).
    pub tls: Option<TlsAcceptor>,
}

/// A client identity, or why there is none (metric label, message).
type IdentityResult = Result<Identity, (&'static str, String)>;

/// TLS handshake within the time limit; failures are counted and logged.
async fn tls_handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    settings: &ServerSettings,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let (limit, slots) = (settings.handshake_timeout, &settings.handshake_slots);
    // Admission: a bounded number of handshakes use the CPU at once; the others wait here,
    // up to the handshake timeout, instead of being refused.
    let _slot = match slots.try_acquire() {
        Ok(slot) => {
            metrics::counter!(m::HANDSHAKE_ADMISSION_TOTAL, "result" => "immediate").increment(1);
            slot
        }
        Err(_) => match tokio::time::timeout(limit, slots.acquire()).await {
            Ok(Ok(slot)) => {
                metrics::counter!(m::HANDSHAKE_ADMISSION_TOTAL, "result" => "waited").increment(1);
                slot
            }
            _ => {
                metrics::counter!(m::HANDSHAKE_ADMISSION_TOTAL, "result" => "timeout").increment(1);
                tracing::debug!(%peer, "no handshake slot within the handshake timeout");
                return None;
            }
        },
    };
    let in_flight = metrics::gauge!(m::HANDSHAKES_IN_FLIGHT);
    in_flight.increment(1.0);
    let result = tokio::time::timeout(limit, acceptor.accept(tcp)).await;
    in_flight.decrement(1.0);
    match result {
        Ok(Ok(tls)) => {
            metrics::counter!(m::HANDSHAKES_TOTAL, "result" => "ok").increment(1);
            Some(tls)
        }
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            metrics::counter!(m::HANDSHAKES_TOTAL, "result" => reason).increment(1);
            if let Some(suppressed) = refusal_log_slot(reason) {
                tracing::info!(%peer, reason, error = %e, similar_since_last_line = suppressed,
                    "tls handshake refused (one line per reason every 10 s; all are counted in fleetgate_handshakes_total)");
            } else {
                tracing::debug!(%peer, reason, error = %e, "tls handshake failed");
            }
            None
        }
        Err(_) => {
            metrics::counter!(m::HANDSHAKES_TOTAL, "result" => "timeout").increment(1);
            tracing::debug!(%peer, "tls handshake timed out");
            None
        }
    }
}

/// Refused handshakes are logged at info, one line per reason every 10 s at most: an operator
/// sees why a car cannot connect (an expired or foreign certificate) without a reconnect storm
/// flooding the log. Some(refusals of this reason not logged since the last line) when this
/// one may be logged.
fn refusal_log_slot(reason: &'static str) -> Option<u64> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;
    static LAST: OnceLock<Mutex<HashMap<&'static str, (Instant, u64)>>> = OnceLock::new();
    let mut last = LAST
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match last.get_mut(reason) {
        Some((at, suppressed)) if now.duration_since(*at) < Duration::from_secs(10) => {
            *suppressed += 1;
            None
        }
        Some((at, suppressed)) => {
            let logged = Some(*suppressed);
            *at = now;
            *suppressed = 0;
            logged
        }
        None => {
            last.insert(reason, (now, 0));
            Some(0)
        }
    }
}

/// Serves one accepted TCP connection to its end.
async fn serve_connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    settings: Arc<ServerSettings>,
    kind: ListenerKind,
    shutdown: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    match kind {
        ListenerKind::Direct => {
            let Some(tls) = tls_handshake(&settings.tls, tcp, peer, &settings).await else {
                return;
            };
            let identity: IdentityResult = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| identity_from_der(leaf))
                .unwrap_or(Err(super::identity::IdentityError::NoCertificate))
                .map_err(|e| (e.reason(), e.to_string()));
            serve_request(tls, peer, settings, shutdown, MAX_HEAD_BYTES, |_| identity).await;
        }
        ListenerKind::Proxy(proxy) => {
            let identify = |head: &http::RequestHead| -> IdentityResult {
                let result = proxy.auth.identity(peer.ip(), &head.forwarded);
                let label: &'static str = match &result {
                    Ok(_) => "ok",
                    Err((reason, _)) => reason,
                };
                metrics::counter!(m::PROXY_CLIENT_CERTS_TOTAL, "result" => label).increment(1);
                result
            };
            match &proxy.tls {
                Some(acceptor) => {
                    let Some(tls) = tls_handshake(acceptor, tcp, peer, &settings).await else {
                        return;
                    };
                    serve_request(
                        tls,
                        peer,
                        settings,
                        shutdown,
                        MAX_PROXIED_HEAD_BYTES,
                        identify,
                    )
                    .await;
                }
                None => {
                    serve_request(
                        tcp,
                        peer,
                        settings,
                        shutdown,
                        MAX_PROXIED_HEAD_BYTES,
                        identify,
                    )
                    .await;
                }
            }
        }
    }
}

/// After the transport: one HTTP request (`/status` or the upgrade), identity and VIN checks,
/// then the frame loop and the connectivity bookkeeping around it.
async fn serve_request<S, F>(
    mut stream: S,
    peer: std::net::SocketAddr,
    settings: Arc<ServerSettings>,
    shutdown: CancellationToken,
    max_head_bytes: usize,
    identify: F,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: FnOnce(&http::RequestHead) -> IdentityResult,
{
    let head = match tokio::time::timeout(
        settings.upgrade_timeout,
        http::read_head(&mut stream, max_head_bytes),
    )
    .await
    {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            let outcome = match e {
                HeadError::Io(_) => "closed",
                HeadError::TooLarge => "too_large",
                HeadError::Invalid(_) => "bad_request",
            };
            metrics::counter!(m::HTTP_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
            if !matches!(e, HeadError::Io(_)) {
                let _ = http::respond(&mut stream, 400, "Bad Request", "bad request\n").await;
            }
            return;
        }
        Err(_) => {
            metrics::counter!(m::HTTP_REQUESTS_TOTAL, "outcome" => "timeout").increment(1);
            return;
        }
    };

    if head.method == "GET" && head.path == "/status" {
        metrics::counter!(m::HTTP_REQUESTS_TOTAL, "outcome" => "status").increment(1);
        let _ = http::respond(&mut stream, 200, "OK", "mtls ok").await;
        return;
    }
    let identity: Arc<Identity> = match identify(&head) {
        Ok(identity) => Arc::new(identity),
        Err((reason, message)) => {
            metrics::counter!(m::IDENTITY_REFUSED_TOTAL, "reason" => reason).increment(1);
            metrics::counter!(m::HTTP_REQUESTS_TOTAL, "outcome" => "forbidden").increment(1);
            tracing::info!(%peer, reason, error = %message, "client certificate refused");
            let _ = http::respond(
                &mut stream,
                403,
                "Forbidden",
                &format!("identity refused: {reason}\n"),
            )
            .await;
            return;
        }
    };
    if let Some(reason) = settings.vins.refusal(&identity.device_id) {
        metrics::counter!(m::IDENTITY_REFUSED_TOTAL, "reason" => reason).increment(1);
        metrics::counter!(m::HTTP_REQUESTS_TOTAL, "outcome" => "forbidden").increment(1);
        tracing::info!(%peer, vin = %identity.device_id, reason, "vehicle refused by the VIN lists");
        let _ = http::respond(
            &mut stream,
            403,
            "Forbidden",
            &format!("vin refused: {reason}\n"),
        )
        .await;
        return;
    }
    let Some(key) = head.websocket_key.as_deref() else {
        metrics::counter!(m::HTTP_REQUESTS_TOTAL, "outcome" => "not_websocket").increment(1);
        let _ = http::respond(
            &mut stream,
            400,
            "Bad Request",
            "expected a websocket upgrade or GET /status\n",
        )
        .await;
        return;
    };
    if http::accept_upgrade(&mut stream, key).await.is_err() {
        return;
    }
    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "outcome" => "upgrade").increment(1);

    let info = ConnectionInfo {
        connection_id: new_connection_id(),
        client_txid: head.txid,
        identity,
        client_version: head.version,
        network_interface: head.network_interface,
    };
    let ws = WebSocketStream::from_partially_read(
        stream,
        head.leftover,
        Role::Server,
        Some(settings.websocket),
    )
    .await;
    tracing::info!(vin = %info.identity.device_id, client_type = info.identity.client_type, connection_id = %info.connection_id, %peer, "vehicle connected");
    let pipeline = &settings.connection.pipeline;
    pipeline.connectivity(&socket_info(&info), ConnectivityEvent::Connected);
    pipeline.metrics.connections_open.increment(1.0);
    // one stop signal: a newer socket of the vehicle takes over (newest wins, after the
    // hand-over grace), the VIN lists stop allowing it, the server shuts down
    let stop = StopSignal::new();
    let opened = settings.registry.opened(
        super::registry::ConnectionEntry {
            vin: info.identity.device_id.clone(),
            connection_id: info.connection_id.clone(),
            since_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            network_interface: info.network_interface.clone(),
            client_type: info.identity.client_type.to_owned(),
            instance: None,
            client_txid: (!info.client_txid.is_empty()).then(|| info.client_txid.clone()),
        },
        stop.clone(),
    );
    // `run` stops every registered connection after the shutdown fires; one registered
    // after that sees the shutdown here
    if shutdown.is_cancelled() {
        stop.stop(StopReason::Shutdown);
    }
    if opened.first_socket {
        pipeline.vehicle_connected(&socket_info(&info));
    }
    if settings.vins.refusal(&info.identity.device_id).is_some() {
        stop.stop(StopReason::VinRefused); // the lists changed during the upgrade
    }
    if !opened.older.is_empty() {
        let grace = settings.handover_grace;
        let older = opened.older;
        let shutting_down = shutdown.clone();
        settings.timers.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {
                    for signal in older {
                        signal.stop(StopReason::Superseded);
                    }
                }
                _ = shutting_down.cancelled() => {} // every socket closes anyway
            }
        });
    }

    let info = Arc::new(info);
    let reason = connection::run(
        ws,
        info.clone(),
        settings.connection.clone(),
        stop,
        settings.shutdown_grace,
    )
    .await;

    let pipeline = &settings.connection.pipeline;
    pipeline.metrics.connections_open.decrement(1.0);
    metrics::counter!(m::WS_CLOSED_TOTAL, "reason" => reason.label()).increment(1);
    pipeline.connectivity(&socket_info(&info), ConnectivityEvent::Disconnected);
    if let Closed::LastSocket { generation } = settings.registry.closed(&info.connection_id) {
        // connected while any socket is open; gone only if none reopens within the grace
        let timers = settings.timers.clone();
        let settings = settings.clone();
        let info = info.clone();
        timers.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(settings.vehicle_grace) => {}
                // at shutdown the vehicle reconnects to another instance: not "gone"
                _ = shutdown.cancelled() => return,
            }
            let vin = &info.identity.device_id;
            if let Some(connected_ms) = settings.registry.gone(vin, generation, now_ms()) {
                settings.connection.pipeline.vehicle_disconnected(
                    vin,
                    &info.connection_id,
                    connected_ms,
                );
            }
        });
    }
    tracing::info!(vin = %info.identity.device_id, reason = reason.label(), "vehicle disconnected");
}

/// Accepts vehicles until `shutdown` fires, then waits (bounded by the grace period) for the
/// connections to drain. Returns how many connections were still open at the end.
pub async fn run(
    listener: TcpListener,
    proxy: Option<(TcpListener, Arc<ProxyListener>)>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) -> usize {
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let tracker = TaskTracker::new();
    // without a proxy listener this branch never completes
    let accept_proxied = async |p: &Option<(TcpListener, Arc<ProxyListener>)>| match p {
        Some((l, settings)) => (l.accept().await, ListenerKind::Proxy(settings.clone())),
        None => std::future::pending().await,
    };
    loop {
        let (accepted, kind) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => (accepted, ListenerKind::Direct),
            accepted = accept_proxied(&proxy) => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A proxy carries many vehicles from one address: it is not rate limited per IP.
        let from_trusted_proxy = match &kind {
            ListenerKind::Proxy(p) => p.auth.trusts(peer.ip()),
            ListenerKind::Direct => false,
        };
        if !from_trusted_proxy && !settings.ip_limiter.allow(peer.ip()) {
            metrics::counter!(m::CONNECTIONS_TOTAL, "result" => "ip_rate_limited").increment(1);
            drop(tcp);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_TOTAL, "result" => "over_capacity").increment(1);
            drop(tcp);
            continue;
        };
        metrics::counter!(m::CONNECTIONS_TOTAL, "result" => "accepted").increment(1);
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            serve_connection(tcp, peer, settings, kind, shutdown).await;
            drop(permit);
        });
    }
    drop(proxy);
    drop(listener);
    let open = settings.registry.stop_all(StopReason::Shutdown);
    tracing::debug!(open, "stop signalled to every open connection");
    tracker.close();
    tracing::info!(
        open = tracker.len(),
        "listener closed; draining connections"
    );
    // Connections finish their pending acks within the grace period, then close (a second
    // more for the close handshake); the timers stop at once.
    settings.timers.close();
    let grace = settings.shutdown_grace + Duration::from_secs(1);
    let both = async {
        tracker.wait().await;
        settings.timers.wait().await;
    };
    if tokio::time::timeout(grace, both).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "connections still open after the grace period"
        );
        return tracker.len();
    }
    0
}

/// The path Tesla fetches a partner's public key from.
pub const PUBLIC_KEY_PATH: &str = "/.well-known/appspecific/com.tesla.3p.public-key.pem";

/// The plain-HTTP status listener (`status_port`): `GET /status` → `200 ok`; with a partner
/// key (`fleetgate.tesla.private_key_file`), its public half at [`PUBLIC_KEY_PATH`].
pub async fn serve_status(
    listener: TcpListener,
    public_key_pem: Option<String>,
    shutdown: CancellationToken,
) {
    let mut app = axum::Router::new().route("/status", axum::routing::get(|| async { "ok" }));
    if let Some(pem) = public_key_pem {
        app = app.route(
            PUBLIC_KEY_PATH,
            axum::routing::get(move || {
                let pem = pem.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
                        pem,
                    )
                }
            }),
        );
    }
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}
