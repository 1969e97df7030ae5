//! The bench's load client: a fleet of mTLS websocket vehicles, each with its own certificate
//! (CN = VIN), driven through phases — connect (a ramp and a concurrency), stream `V` frames at
//! a rate with every ack matched by txid, hold idle, reconnect all at once — with counters and
//! hdrhistogram latencies shared by all vehicle tasks.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use prost::Message as _;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::procstat::{self, ProcSample};
use crate::tools::client::VehicleSocket;
use crate::wire::proto::vehicle_data::{
    value::Value as V, Datum, Field, LocationValue, Payload, Value,
};
use crate::wire::{read_envelope, EnvelopeWriter, StreamView};

/// Who to load and how.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The vehicle listener.
    pub target: SocketAddr,
    /// TLS server name (the dev server certificate is for `localhost`).
    pub server_name: String,
    /// Dev PKI folder (`certs dev --out`): trusted CA, and the issuing CA that signs (and
    /// caches, under `vehicles/`) one certificate per bench vehicle.
    pub pki: PathBuf,
    /// Vehicles.
    pub vehicles: usize,
    /// Loopback source addresses 127.0.0.1 … 127.0.0.N to spread connections over (past the
    /// ephemeral-port limit of one address pair); ignored for non-loopback targets.
    pub sources: u8,
    /// Where vehicles start: a box (south, west, north, east) in degrees.
    pub area: (f64, f64, f64, f64),
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Result of a connect phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectStats {
    /// Connections attempted.
    pub attempted: usize,
    /// Connections established (websocket upgraded).
    pub established: usize,
    /// Failures by reason.
    pub failed: BTreeMap<String, u64>,
    /// One example error per failure reason.
    pub failure_examples: BTreeMap<String, String>,
    /// Seconds from the first attempt to the last success.
    pub seconds: f64,
    /// Established connections per second (TCP + mTLS handshake + upgrade).
    pub handshakes_per_s: f64,
    /// Time to connect (TCP + TLS + upgrade).
    pub connect_latency: Percentiles,
}

/// Result of a streaming phase (its measurement window, after the warm-up).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStats {
    /// Frames per second per vehicle asked for.
    pub rate_hz: f64,
    /// Vehicles streaming.
    pub vehicles: usize,
    /// Frames per second asked for in total.
    pub offered_per_s: f64,
    /// Window length, seconds.
    pub window_s: f64,
    /// Frames sent in the window.
    pub sent: u64,
    /// Acks received in the window.
    pub acked: u64,
    /// Error replies in the window.
    pub errors: u64,
    /// Frames sent per second.
    pub sent_per_s: f64,
    /// Acks per second.
    pub acked_per_s: f64,
    /// Frames without an ack when the phase ended (after a 5 s drain).
    pub unacked_at_end: u64,
    /// Connections that closed during the phase.
    pub closed: u64,
    /// Ack latency over the window.
    pub ack_latency: Percentiles,
    /// Server CPU seconds in the window (when a server pid is known).
    pub server_cpu_s: Option<f64>,
    /// Server CPU per acked frame, microseconds.
    pub server_cpu_us_per_frame: Option<f64>,
    /// Of it, the server's time in the kernel (system CPU) per acked frame, microseconds.
    pub server_system_us_per_frame: Option<f64>,
    /// Server resident memory at the end of the window.
    pub server_rss_bytes: Option<u64>,
    /// This client's CPU seconds in the window.
    pub client_cpu_s: f64,
}

/// One vehicle: identity, TLS config, moving signals and (while connected) its socket.
struct Vehicle {
    vin: Arc<str>,
    config: Arc<ClientConfig>,
    source: Option<IpAddr>,
    signals: Signals,
    socket: Option<VehicleSocket>,
}

/// What a bench vehicle reports: a position that moves, speed, heading, state of charge.
#[derive(Debug, Clone, Copy)]
struct Signals {
    lat: f64,
    lon: f64,
    heading_deg: f64,
    speed_kmh: f64,
    soc: f64,
    seq: u64,
}

impl Signals {
    /// Advances by `dt_s` seconds: drives on, turns a little, uses charge.
    fn advance(&mut self, dt_s: f64) {
        let step = self.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58; // 0..63, deterministic
        self.heading_deg = (self.heading_deg + step as f64 - 31.5).rem_euclid(360.0);
        self.speed_kmh = (self.speed_kmh + (step as f64 - 31.5) / 8.0).clamp(0.0, 110.0);
        let meters = self.speed_kmh / 3.6 * dt_s;
        let rad = self.heading_deg.to_radians();
        self.lat += meters * rad.cos() / 111_320.0;
        self.lon += meters * rad.sin() / (111_320.0 * self.lat.to_radians().cos().max(0.01));
        self.soc = (self.soc - meters / 6_000.0 / 75.0 * 100.0 * 0.15).max(5.0);
    }

    fn payload(&self, created_s: i64) -> Payload {
        let d = |key: Field, v: V| Datum {
            key: key as i32,
            value: Some(Value { value: Some(v) }),
        };
        Payload {
            data: vec![
                d(
                    Field::Location,
                    V::LocationValue(LocationValue {
                        latitude: self.lat,
                        longitude: self.lon,
                    }),
                ),
                d(
                    Field::VehicleSpeed,
                    V::DoubleValue((self.speed_kmh * 0.621_371 * 10.0).round() / 10.0),
                ),
                d(Field::GpsHeading, V::DoubleValue(self.heading_deg.round())),
                d(
                    Field::Soc,
                    V::DoubleValue((self.soc * 100.0).round() / 100.0),
                ),
                d(
                    Field::Odometer,
                    V::DoubleValue(12_000.0 + self.seq as f64 * 0.01),
                ),
            ],
            created_at: Some(crate::wire::Timestamp {
                seconds: created_s,
                nanos: 0,
            }),
            vin: String::new(),
            is_resend: false,
        }
    }
}

/// Counters and histograms shared by every vehicle task of a phase.
#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    closed: AtomicU64,
    unacked: AtomicU64,
    recording: AtomicBool,
    latency: Mutex<Option<Histogram<u64>>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds")
}

/// A fleet of bench vehicles.
pub struct Fleet {
    options: FleetOptions,
    vehicles: Vec<Vehicle>,
}

fn classify_io(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    if e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        return "tls_refused";
    }
    match e.kind() {
        K::ConnectionRefused => "tcp_refused",
        K::ConnectionReset | K::BrokenPipe => "reset",
        K::TimedOut => "timeout",
        K::AddrInUse | K::AddrNotAvailable => "no_local_port",
        K::UnexpectedEof => "closed_by_server",
        _ => "io_error",
    }
}

/// Connects one vehicle: TCP (from its source address), mTLS, websocket upgrade.
async fn connect_vehicle(
    target: SocketAddr,
    server_name: ServerName<'static>,
    host: &str,
    config: Arc<ClientConfig>,
    source: Option<IpAddr>,
) -> Result<VehicleSocket, (&'static str, String)> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| (classify_io(&e), e.to_string()))?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| (classify_io(&e), format!("bind {source}: {e}")))?;
    }
    let tcp = socket
        .connect(target)
        .await
        .map_err(|e| (classify_io(&e), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| (classify_io(&e), e.to_string()))?;
    let mut request = format!("wss://{host}/")
        .into_client_request()
        .map_err(|e| ("bad_request", e.to_string()))?;
    let headers = request.headers_mut();
    headers.insert(
        "X-Network-Interface",
        http::HeaderValue::from_static("wifi"),
    );
    headers.insert("Version", http::HeaderValue::from_static("fleetgate-bench"));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    match tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            match response.status().as_u16() {
                403 => "http_403",
                400 => "http_400",
                429 => "http_429",
                503 => "http_503",
                _ => "http_other",
            },
            format!("HTTP {}", response.status()),
        )),
        Err(tokio_tungstenite::tungstenite::Error::Io(e)) => Err((classify_io(&e), e.to_string())),
        Err(e) => Err(("websocket", e.to_string())),
    }
}

/// One finished connect attempt: the vehicle keeps its socket, or the failure is counted.
/// Returns the time of a success.
fn record_attempt(
    stats: &mut ConnectStats,
    latency: &mut Histogram<u64>,
    vehicles: &mut [Vehicle],
    (i, result, took): (
        usize,
        Result<VehicleSocket, (&'static str, String)>,
        Duration,
    ),
) -> Option<Instant> {
    match result {
        Ok(ws) => {
            vehicles[i].socket = Some(ws);
            stats.established += 1;
            let _ = latency.record(took.as_micros().max(1) as u64);
            Some(Instant::now())
        }
        Err((reason, detail)) => {
            *stats.failed.entry(reason.to_owned()).or_default() += 1;
            stats
                .failure_examples
                .entry(reason.to_owned())
                .or_insert(detail);
            None
        }
    }
}

impl Fleet {
    /// Loads (or makes and caches) a certificate per vehicle and builds their TLS configs.
    pub fn prepare(options: FleetOptions) -> Result<Fleet, String> {
        let _ = procstat::raise_nofile_limit();
        let ca_path = options.pki.join(crate::tools::certs::files::CA);
        let mut roots = RootCertStore::empty();
        for cert in crate::ingest::tls::load_certs("--pki ca.pem", &ca_path)
            .map_err(|e| format!("{e} (make a dev PKI with `fleetgate certs dev --out DIR`)"))?
        {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
        let roots = Arc::new(roots);
        let vins = crate::tools::certs::example_vins(options.vehicles);
        let mut pki = None;
        let mut vehicles = Vec::with_capacity(vins.len());
        let started = Instant::now();
        let loopback_v4 = options.target.ip().is_loopback() && options.target.is_ipv4();
        let (south, west, north, east) = options.area;
        for (i, vin) in vins.iter().enumerate() {
            let pair = crate::tools::commands::sim::vehicle_cert(&options.pki, &mut pki, vin)?;
            let mut config = crate::tools::client::client_config_with_roots(
                roots.clone(),
                &pair.chain_pem,
                &pair.key_pem,
            )
            .map_err(|e| format!("vehicle {vin}: {e}"))?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let config = Arc::new(config);
            // spread vehicles over the area deterministically (golden-ratio sequence)
            let fx = (i as f64 * 0.618_033_988_75).fract();
            let fy = (i as f64 * 0.754_877_666_2).fract();
            let source = (loopback_v4 && options.sources > 1).then(|| {
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    1 + (i % options.sources as usize) as u8,
                ))
            });
            vehicles.push(Vehicle {
                vin: Arc::from(vin.as_str()),
                config,
                source,
                signals: Signals {
                    lat: south + (north - south) * fy,
                    lon: west + (east - west) * fx,
                    heading_deg: fx * 360.0,
                    speed_kmh: 30.0 + fy * 60.0,
                    soc: 20.0 + fx * 70.0,
                    seq: 0,
                },
                socket: None,
            });
            if (i + 1) % 2_000 == 0 {
                eprintln!(
                    "bench: {} / {} vehicle certificates ready ({:.1} s)",
                    i + 1,
                    vins.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(Fleet { options, vehicles })
    }

    /// Vehicles with an open socket.
    pub fn connected(&self) -> usize {
        self.vehicles.iter().filter(|v| v.socket.is_some()).count()
    }

    /// Connects every vehicle without a socket: at most `concurrency` in flight, new attempts
    /// at `ramp_per_s` (0 = as fast as the concurrency allows).
    pub async fn connect_all(&mut self, ramp_per_s: f64, concurrency: usize) -> ConnectStats {
        let target = self.options.target;
        let host: Arc<str> = Arc::from(self.options.server_name.as_str());
        let server_name = ServerName::try_from(self.options.server_name.clone())
            .unwrap_or_else(|_| ServerName::try_from("localhost").expect("valid name"));
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let started = Instant::now();
        let mut stats = ConnectStats::default();
        let mut latency = histogram();
        let mut last_success = started;
        let mut last_report = Instant::now();
        let todo: Vec<usize> = (0..self.vehicles.len())
            .filter(|&i| self.vehicles[i].socket.is_none())
            .collect();
        stats.attempted = todo.len();
        for (n, &i) in todo.iter().enumerate() {
            if ramp_per_s > 0.0 {
                let at = started + Duration::from_secs_f64(n as f64 / ramp_per_s);
                tokio::time::sleep_until(at.into()).await;
            }
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            // collect finished attempts as we go so sockets are not held in the join set
            while let Some(done) = tasks.try_join_next() {
                if let Ok(done) = done {
                    last_success =
                        record_attempt(&mut stats, &mut latency, &mut self.vehicles, done)
                            .unwrap_or(last_success);
                }
            }
            let v = &self.vehicles[i];
            let (config, source) = (v.config.clone(), v.source);
            let (server_name, host) = (server_name.clone(), host.clone());
            tasks.spawn(async move {
                let t0 = Instant::now();
                let result = match tokio::time::timeout(
                    Duration::from_secs(30),
                    connect_vehicle(target, server_name, &host, config, source),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(("timeout", "no upgrade within 30 s".to_owned())),
                };
                drop(permit);
                (i, result, t0.elapsed())
            });
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                eprintln!(
                    "bench: connecting {}/{} established, {} failed ({:.0} s)",
                    stats.established,
                    todo.len(),
                    stats.failed.values().sum::<u64>(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok(done) = done {
                last_success = record_attempt(&mut stats, &mut latency, &mut self.vehicles, done)
                    .unwrap_or(last_success);
            }
        }
        stats.seconds = last_success.duration_since(started).as_secs_f64();
        stats.handshakes_per_s = if stats.seconds > 0.0 {
            stats.established as f64 / stats.seconds
        } else {
            0.0
        };
        stats.connect_latency = Percentiles::of(&latency);
        eprintln!(
            "bench: connected {}/{} in {:.1} s ({:.0} handshakes/s), failed {:?}",
            stats.established, stats.attempted, stats.seconds, stats.handshakes_per_s, stats.failed
        );
        stats
    }

    /// Closes every socket abruptly (as a server restart or network change does) and connects
    /// them all again at once: the reconnect storm.
    pub async fn storm(&mut self, concurrency: usize) -> ConnectStats {
        for v in &mut self.vehicles {
            v.socket = None;
        }
        self.connect_all(0.0, concurrency).await
    }

    /// Keeps the connections open (answering pings) for `duration`, sending nothing.
    pub async fn hold(&mut self, duration: Duration) {
        let until = tokio::time::Instant::now() + duration;
        let mut tasks = JoinSet::new();
        for (i, v) in self.vehicles.iter_mut().enumerate() {
            let Some(mut ws) = v.socket.take() else {
                continue;
            };
            tasks.spawn(async move {
                loop {
                    match tokio::time::timeout_at(until, ws.next()).await {
                        Err(_) => return (i, Some(ws)),
                        Ok(Some(Ok(_))) => continue,
                        Ok(_) => return (i, None),
                    }
                }
            });
        }
        while let Some(Ok((i, ws))) = tasks.join_next().await {
            self.vehicles[i].socket = ws;
        }
    }

    /// Streams `V` frames from every connected vehicle at `rate_hz` for `warmup + window`;
    /// counts and latencies cover the window only. `server_pid` adds the server's CPU and RSS.
    pub async fn stream(
        &mut self,
        rate_hz: f64,
        warmup: Duration,
        window: Duration,
        server_pid: Option<i32>,
    ) -> StreamStats {
        let shared = Arc::new(Shared::default());
        *shared.latency.lock().expect("not poisoned") = Some(histogram());
        let period = Duration::from_secs_f64(1.0 / rate_hz.max(0.001));
        let start = tokio::time::Instant::now() + Duration::from_millis(200);
        let stop_at = start + warmup + window;
        let mut tasks = JoinSet::new();
        let mut streaming = 0usize;
        for (i, v) in self.vehicles.iter_mut().enumerate() {
            let Some(ws) = v.socket.take() else {
                continue;
            };
            streaming += 1;
            // spread first frames evenly over one period
            let offset = period.mul_f64((i as f64 * 0.618_033_988_75).fract());
            let vin = v.vin.clone();
            let signals = v.signals;
            let shared = shared.clone();
            tasks.spawn(async move {
                let (ws, signals) =
                    stream_vehicle(ws, vin, signals, start + offset, period, stop_at, shared).await;
                (i, ws, signals)
            });
        }
        eprintln!(
            "bench: streaming {streaming} vehicles at {rate_hz} Hz ({:.0} frames/s): {:.0} s warm-up, {:.0} s measured",
            rate_hz * streaming as f64,
            warmup.as_secs_f64(),
            window.as_secs_f64()
        );
        tokio::time::sleep_until(start + warmup).await;
        let begin = Snapshot::take(&shared, server_pid);
        shared.recording.store(true, Ordering::Relaxed);
        let mut ticks = 0u64;
        while tokio::time::Instant::now() + Duration::from_secs(5) < stop_at {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ticks += 5;
            eprintln!(
                "bench: {ticks} s measured: {} sent, {} acked",
                shared.sent.load(Ordering::Relaxed) - begin.sent,
                shared.acked.load(Ordering::Relaxed) - begin.acked
            );
        }
        tokio::time::sleep_until(stop_at).await;
        shared.recording.store(false, Ordering::Relaxed);
        let end = Snapshot::take(&shared, server_pid);
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, ws, signals)) = joined {
                self.vehicles[i].socket = ws;
                self.vehicles[i].signals = signals;
            }
        }
        let window_s = end.at.duration_since(begin.at).as_secs_f64();
        let acked = end.acked - begin.acked;
        let (server_cpu, server_system) = match (begin.server, end.server) {
            (Some(b), Some(e)) => (Some(e.cpu_s - b.cpu_s), Some(e.system_s - b.system_s)),
            _ => (None, None),
        };
        let per_frame = |s: Option<f64>| s.filter(|_| acked > 0).map(|c| c * 1e6 / acked as f64);
        let latency = shared
            .latency
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_else(histogram);
        StreamStats {
            rate_hz,
            vehicles: streaming,
            offered_per_s: rate_hz * streaming as f64,
            window_s,
            sent: end.sent - begin.sent,
            acked,
            errors: end.errors - begin.errors,
            sent_per_s: (end.sent - begin.sent) as f64 / window_s,
            acked_per_s: acked as f64 / window_s,
            unacked_at_end: shared.unacked.load(Ordering::Relaxed),
            closed: shared.closed.load(Ordering::Relaxed),
            ack_latency: Percentiles::of(&latency),
            server_cpu_s: server_cpu,
            server_cpu_us_per_frame: per_frame(server_cpu),
            server_system_us_per_frame: per_frame(server_system),
            server_rss_bytes: end.server.map(|s| s.rss_bytes),
            client_cpu_s: end.client.cpu_s - begin.client.cpu_s,
        }
    }
}

/// Counters and process samples at one instant.
struct Snapshot {
    at: Instant,
    sent: u64,
    acked: u64,
    errors: u64,
    server: Option<ProcSample>,
    client: ProcSample,
}

impl Snapshot {
    fn take(shared: &Shared, server_pid: Option<i32>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            sent: shared.sent.load(Ordering::Relaxed),
            acked: shared.acked.load(Ordering::Relaxed),
            errors: shared.errors.load(Ordering::Relaxed),
            server: server_pid.and_then(|pid| procstat::sample(Some(pid)).ok()),
            client: procstat::sample(None).unwrap_or_default(),
        }
    }
}

/// One vehicle's streaming loop: a frame every `period` from `first` until `stop_at`, acks
/// matched by txid (the frame's sequence number) as they come, then up to 5 s of drain.
async fn stream_vehicle(
    mut ws: VehicleSocket,
    vin: Arc<str>,
    mut signals: Signals,
    first: tokio::time::Instant,
    period: Duration,
    stop_at: tokio::time::Instant,
    shared: Arc<Shared>,
) -> (Option<VehicleSocket>, Signals) {
    let sender_id = format!("vehicle_device.{vin}");
    let mut writer = EnvelopeWriter::new();
    let mut payload_buf = Vec::with_capacity(256);
    let mut txid = String::with_capacity(20);
    let mut inflight: VecDeque<(u64, Instant, bool)> = VecDeque::new();
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let drain_until = stop_at + Duration::from_secs(5);
    let created_base = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut sending = true;
    loop {
        if !sending && inflight.is_empty() {
            break;
        }
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let Ok(envelope) = read_envelope(&bytes) else { continue };
                    let seq = std::str::from_utf8(envelope.txid).ok().and_then(|t| t.parse::<u64>().ok());
                    let Some(pos) = seq.and_then(|s| inflight.iter().position(|(q, _, _)| *q == s)) else {
                        continue;
                    };
                    let (_, sent_at, in_window) = inflight.remove(pos).expect("position is valid");
                    if envelope.message_type == crate::wire::envelope::MESSAGE_TYPE_STREAM_ACK {
                        if in_window && shared.recording.load(Ordering::Relaxed) {
                            shared.acked.fetch_add(1, Ordering::Relaxed);
                            if let Some(h) = shared.latency.lock().expect("not poisoned").as_mut() {
                                let _ = h.record(sent_at.elapsed().as_micros().max(1) as u64);
                            }
                        }
                    } else if shared.recording.load(Ordering::Relaxed) {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => continue,
                _ => {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    shared.unacked.fetch_add(inflight.len() as u64, Ordering::Relaxed);
                    return (None, signals);
                }
            },
            at = tick.tick(), if sending => {
                if at >= stop_at {
                    sending = false;
                    continue;
                }
                signals.seq += 1;
                signals.advance(period.as_secs_f64());
                payload_buf.clear();
                let created = created_base + (signals.seq as f64 * period.as_secs_f64()) as i64;
                if signals.payload(created).encode(&mut payload_buf).is_err() {
                    continue;
                }
                txid.clear();
                use std::fmt::Write as _;
                let _ = write!(txid, "{}", signals.seq);
                let frame = writer.stream(
                    txid.as_bytes(),
                    b"V",
                    b"",
                    &StreamView {
                        created_at: created as u32,
                        sender_id: sender_id.as_bytes(),
                        payload: &payload_buf,
                        device_type: b"vehicle_device",
                        device_id: vin.as_bytes(),
                        delivered_at_epoch_ms: 0,
                    },
                );
                let message = Message::Binary(bytes::Bytes::copy_from_slice(frame));
                let in_window = shared.recording.load(Ordering::Relaxed);
                inflight.push_back((signals.seq, Instant::now(), in_window));
                if ws.send(message).await.is_err() {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    return (None, signals);
                }
                if in_window {
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ = tokio::time::sleep_until(drain_until), if !sending => {
                shared.unacked.fetch_add(inflight.len() as u64, Ordering::Relaxed);
                break;
            }
        }
    }
    (Some(ws), signals)
}
