//! Configuration: a Tesla `config.json` read unchanged, plus fleetgate's own `"fleetgate"`
//! section. Tesla's keys are accepted as they are (unknown ones are warned about); fleetgate's
//! section is strict. Validation reports every problem at once, each naming the key and the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod preflight;
mod validate;

/// Sink names fleetgate implements.
pub const SINK_NAMES: &[&str] = &["logger", "kafka", "mqtt", "webhook"];
/// Sink names of the reference server that fleetgate does not implement.
const REFERENCE_ONLY_SINKS: &[&str] = &["kinesis", "pubsub", "zmq", "redis", "nats"];

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Config {
    /// Listen host for vehicles (Tesla key; default all interfaces).
    #[serde(default)]
    pub host: String,
    /// Listen port for vehicles (Tesla key; default 443; 0 picks a free port).
    #[serde(default)]
    pub port: Option<u16>,
    /// Optional plain-HTTP port answering `GET /status` with `ok` (Tesla key).
    #[serde(default)]
    pub status_port: Option<u16>,
    /// Server certificate, key and the CA bundle vehicles' certificates chain to (Tesla key).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Reference: use Tesla's embedded engineering CA when `tls.ca_file` is empty.
    #[serde(default)]
    pub use_default_eng_ca: bool,
    /// Per-connection rate limit (Tesla key).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Topics whose ack waits for the named sink's delivery report (Tesla key).
    #[serde(default)]
    pub reliable_ack_sources: BTreeMap<String, String>,
    /// librdkafka producer properties, passed through unchanged (Tesla key).
    #[serde(default)]
    pub kafka: Option<serde_json::Map<String, Value>>,
    /// Prefix of Kafka topic names: `{namespace}_{topic}` (Tesla key).
    #[serde(default)]
    pub namespace: String,
    /// Prometheus metrics and profiler (Tesla key).
    #[serde(default)]
    pub monitoring: Option<MonitoringConfig>,
    /// `error`, `warn`, `info`, `debug` or `trace` (Tesla key).
    #[serde(default)]
    pub log_level: Option<String>,
    /// Log as JSON lines (Tesla key).
    #[serde(default)]
    pub json_log_enable: bool,
    /// Topic → sinks (Tesla key), e.g. `{"V": ["kafka"], "alerts": ["logger"]}`.
    #[serde(default)]
    pub records: BTreeMap<String, Vec<String>>,
    /// Send proto3 JSON instead of protobuf bytes to Kafka (Tesla key).
    #[serde(default)]
    pub transmit_decoded_records: bool,
    /// VINs whose signals get per-VIN metrics (Tesla key, at most 20).
    #[serde(default)]
    pub vins_signal_tracking_enabled: Vec<String>,
    /// Tesla's data connectors (`file` with the `vin_allowed` capability is implemented).
    #[serde(default)]
    pub data_connectors: Option<DataConnectorsConfig>,
    /// Tesla keys of features fleetgate does not have (sinks it does not implement, the old
    /// `reliable_ack` switch, error reporting): parsed so a Tesla config starts, warned about.
    #[serde(default)]
    pub kinesis: Option<Value>,
    /// Tesla key (Google Pub/Sub sink): not implemented, warned about.
    #[serde(default)]
    pub pubsub: Option<Value>,
    /// Tesla key (ZeroMQ sink): not implemented, warned about.
    #[serde(default)]
    pub zmq: Option<Value>,
    /// The MQTT sink's broker and layout (Tesla key; `fleetgate.mqtt` adds TLS and v5).
    #[serde(default)]
    pub mqtt: Option<crate::sinks::mqtt::config::MqttConfig>,
    /// Tesla key (NATS sink): not implemented, warned about.
    #[serde(default)]
    pub nats: Option<Value>,
    /// Tesla key (Airbrake error reporting): not implemented, warned about.
    #[serde(default)]
    pub airbrake: Option<Value>,
    /// Tesla's older switch for reliable acks; `reliable_ack_sources` replaces it.
    #[serde(default)]
    pub reliable_ack: Option<Value>,
    /// Tesla's ack worker count: fleetgate needs none, warned about.
    #[serde(default)]
    pub reliable_ack_workers: Option<Value>,
    /// fleetgate's own settings.
    #[serde(default)]
    pub fleetgate: FleetgateConfig,
    /// Full paths of the keys no part of fleetgate reads (`tls.ca_flie`), found while parsing.
    #[serde(skip)]
    pub unknown_keys: Vec<String>,
}

/// `data_connectors` (Tesla key): external sources of per-VIN facts.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct DataConnectorsConfig {
    /// A JSON file `{"vins_allowed": [...]}`, re-read when it changes.
    #[serde(default)]
    pub file: Option<FileConnectorConfig>,
    /// Tesla's Redis connector: not implemented, warned about.
    #[serde(default)]
    pub redis: Option<Value>,
    /// Tesla's HTTP connector: not implemented, warned about.
    #[serde(default)]
    pub http: Option<Value>,
    /// Tesla's gRPC connector: not implemented, warned about.
    #[serde(default)]
    pub grpc: Option<Value>,
}

/// `data_connectors.file`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct FileConnectorConfig {
    /// What the connector is used for; `vin_allowed` is the one capability.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Path of the JSON file (relative to the config file).
    #[serde(default)]
    pub path: Option<String>,
    /// The same path in its nested form (`vin_allowed.path`).
    #[serde(default)]
    pub vin_allowed: Option<FileVinAllowedConfig>,
}

/// `data_connectors.file.vin_allowed`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct FileVinAllowedConfig {
    /// Path of the JSON file.
    #[serde(default)]
    pub path: Option<String>,
}

impl FileConnectorConfig {
    /// The file of allowed VINs, when the `vin_allowed` capability is on.
    pub fn vin_allowed_path(&self) -> Option<&str> {
        if !self.capabilities.iter().any(|c| c == "vin_allowed") {
            return None;
        }
        self.vin_allowed
            .as_ref()
            .and_then(|v| v.path.as_deref())
            .or(self.path.as_deref())
    }
}

/// `tls` (Tesla key).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct TlsConfig {
    /// PEM bundle of CAs that vehicle certificates must chain to.
    #[serde(default)]
    pub ca_file: String,
    /// PEM server certificate chain.
    #[serde(default)]
    pub server_cert: String,
    /// PEM server private key.
    #[serde(default)]
    pub server_key: String,
}

/// `rate_limit` (Tesla key).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RateLimitConfig {
    /// Drop (unacked) frames over the limit; when false they are only counted.
    #[serde(default)]
    pub enabled: bool,
    /// Frames allowed per interval (default 100).
    #[serde(default = "default_message_limit")]
    pub message_limit: u32,
    /// Interval in seconds (default 60).
    #[serde(default = "default_message_interval")]
    pub message_interval_time: u32,
}

fn default_message_limit() -> u32 {
    100
}
fn default_message_interval() -> u32 {
    60
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            message_limit: default_message_limit(),
            message_interval_time: default_message_interval(),
        }
    }
}

/// `monitoring` (Tesla key).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct MonitoringConfig {
    /// Port of the Prometheus `/metrics` endpoint (0 picks a free port; unset disables it).
    #[serde(default)]
    pub prometheus_metrics_port: Option<u16>,
    /// Host of the metrics endpoint (default 0.0.0.0).
    #[serde(default)]
    pub prometheus_metrics_host: Option<String>,
    /// Reference profiler port (parsed, not served by fleetgate).
    #[serde(default)]
    pub profiler_port: Option<u16>,
    /// Reference profiler host (parsed, not served by fleetgate).
    #[serde(default)]
    pub profiler_host: Option<String>,
    /// Reference profile output path (parsed, not used).
    #[serde(default)]
    pub profiling_path: Option<String>,
    /// Reference statsd settings (parsed, not used: metrics are Prometheus only).
    #[serde(default)]
    pub statsd: Option<Value>,
}

/// The `"fleetgate"` section: settings Tesla's server does not have.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FleetgateConfig {
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// GeoJSON FeatureCollection of sites loaded at start (relative to the config file).
    #[serde(default)]
    pub sites_file: Option<String>,
    /// Watches to register at start (same JSON as the admin API body).
    #[serde(default)]
    pub watches: Vec<crate::rules::arrival::WatchSpec>,
    /// Where events go.
    #[serde(default)]
    pub events: EventsConfig,
    /// Rule thresholds.
    #[serde(default)]
    pub rules: crate::rules::RulesConfig,
    /// The admin API; absent = no admin listener (a plain Tesla config runs without one).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Folder of the durable store (sites, watches); unset = in memory, lost on restart.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Vehicle-level connectivity.
    #[serde(default)]
    pub connectivity: ConnectivityConfig,
    /// Forward only changed values to the sinks (off unless topics are listed).
    #[serde(default)]
    pub changes_only: crate::pipeline::changes::ChangesOnlyConfig,
    /// mTLS terminated at a trusted proxy: a second listener that takes the client
    /// certificate from a header (off unless set).
    #[serde(default)]
    pub proxy_mtls: Option<crate::ingest::proxy::ProxyMtlsConfig>,
    /// VIN allow / block lists (the admin API adds to them, durably).
    #[serde(default)]
    pub vins: crate::ingest::vins::VinLists,
    /// Log line shape: `text`, `json` (tracing's) or `tesla` (Tesla's server's logrus JSON);
    /// unset = `json` when `json_log_enable`, else text. `serve --log-format` wins.
    #[serde(default)]
    pub log_format: Option<crate::logging::LogFormat>,
    /// Write the `logger` sink's lines to this file (appending) instead of stdout.
    #[serde(default)]
    pub logger_file: Option<String>,
    /// Seconds a graceful shutdown may take before connections are cut (default 10).
    #[serde(default = "default_shutdown_grace_s")]
    pub shutdown_grace_s: u64,
    /// Kafka settings that are not librdkafka properties (secrets from files).
    #[serde(default)]
    pub kafka: crate::kafka::KafkaExtrasConfig,
    /// Vehicle state from other systems than Tesla's telemetry (Smartcar webhooks).
    #[serde(default)]
    pub sources: SourcesConfig,
    /// MQTT settings Tesla's `mqtt` section has no key for (protocol version, CA file).
    #[serde(default)]
    pub mqtt: crate::sinks::mqtt::config::MqttExtrasConfig,
    /// The `webhook` sink: receivers, their filters and secrets, the durable outbox.
    #[serde(default)]
    pub webhook: Option<crate::sinks::webhook::WebhookConfig>,
    /// Cluster mode: instances sharing this name share sites, watches and VIN lists through
    /// compacted Kafka topics (needs the top-level `kafka` section). Unset = embedded mode.
    #[serde(default)]
    pub cluster: Option<crate::cluster::config::ClusterConfig>,
    /// Tesla onboarding: the partner key, the signed telemetry config vehicles get, and the
    /// Fleet API reconciler (off unless set).
    #[serde(default)]
    pub tesla: Option<crate::tesla::config::TeslaConfig>,
}

/// `fleetgate.sources`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// Smartcar webhooks on `POST /v1/sources/smartcar` of the admin listener (off unless set).
    #[serde(default)]
    pub smartcar: Option<crate::sources::smartcar::SmartcarConfig>,
}

/// `fleetgate.admin`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address of the admin API (default 127.0.0.1:8081; port 0 picks a free one).
    #[serde(default = "AdminConfig::default_listen")]
    pub listen: String,
    /// Bearer token; `FLEETGATE_ADMIN_TOKEN` overrides it. Required unless `--insecure-admin`
    /// on a loopback address.
    #[serde(default)]
    pub token: Option<String>,
}

impl AdminConfig {
    fn default_listen() -> String {
        "127.0.0.1:8081".into()
    }

    /// Why `serve` refuses this section's token, if it does: an empty token is only allowed
    /// with `--insecure-admin` on a loopback address.
    pub fn token_problem(&self, insecure_admin: bool) -> Option<String> {
        if !self.effective_token().is_empty() {
            return None;
        }
        let loopback = self
            .listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        if insecure_admin && loopback {
            return None;
        }
        Some("empty: set it (or FLEETGATE_ADMIN_TOKEN); only a loopback listen address with --insecure-admin may run without one".into())
    }

    /// The effective token (environment first).
    pub fn effective_token(&self) -> String {
        std::env::var("FLEETGATE_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.clone())
            .unwrap_or_default()
    }
}

/// `fleetgate.connectivity`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectivityConfig {
    /// Seconds after a vehicle's last socket closes before it counts as disconnected.
    #[serde(default = "ConnectivityConfig::default_grace")]
    pub vehicle_grace_s: u64,
    /// When a vehicle opens a new socket, its older sockets are closed after this many
    /// seconds (newest wins; the overlap covers a wifi/cellular hand-over).
    #[serde(default = "ConnectivityConfig::default_handover")]
    pub handover_s: u64,
}

impl ConnectivityConfig {
    fn default_grace() -> u64 {
        5
    }
    fn default_handover() -> u64 {
        10
    }
}

impl Default for ConnectivityConfig {
    fn default() -> Self {
        Self {
            vehicle_grace_s: Self::default_grace(),
            handover_s: Self::default_handover(),
        }
    }
}

/// `fleetgate.events`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Kafka topic of events (default `{namespace}_events`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Sinks that receive events (default: the sinks of topic `V`).
    #[serde(default)]
    pub sinks: Option<Vec<String>>,
    /// CloudEvents Kafka binding: `structured` (default: the event JSON as the value,
    /// `content-type: application/cloudevents+json`) or `binary` (`data` as the value, every
    /// attribute a `ce_` header).
    #[serde(default)]
    pub kafka_content_mode: crate::kafka::cloudevents::EventContentMode,
}

fn default_shutdown_grace_s() -> u64 {
    10
}

/// `fleetgate.limits`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Vehicle connections held at once; further TCP connections are closed at accept.
    #[serde(default = "LimitsConfig::default_max_connections")]
    pub max_connections: usize,
    /// Seconds allowed for the TLS handshake.
    #[serde(default = "LimitsConfig::default_handshake_timeout_s")]
    pub handshake_timeout_s: u64,
    /// Seconds allowed, after TLS, for the HTTP request (upgrade or /status).
    #[serde(default = "LimitsConfig::default_upgrade_timeout_s")]
    pub upgrade_timeout_s: u64,
    /// Seconds without any message from the vehicle before the connection is closed.
    #[serde(default = "LimitsConfig::default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// Seconds between websocket pings sent to a quiet vehicle.
    #[serde(default = "LimitsConfig::default_ping_interval_s")]
    pub ping_interval_s: u64,
    /// Seconds a vehicle may leave our acks unread before the connection is closed.
    #[serde(default = "LimitsConfig::default_write_timeout_s")]
    pub write_timeout_s: u64,
    /// Frames of reliable topics awaiting their delivery report before the connection stops
    /// reading from the vehicle (backpressure).
    #[serde(default = "LimitsConfig::default_max_pending_acks")]
    pub max_pending_acks_per_connection: usize,
    /// Reliable records in flight across all connections; when reached, connections stop
    /// reading until deliveries complete (bounded memory while Kafka is down).
    #[serde(default = "LimitsConfig::default_max_pending_acks_total")]
    pub max_pending_acks_total: usize,
    /// Largest websocket message buffered at all; larger ones close the connection (1009).
    /// Messages over 1,000,000 bytes and up to this size get an error reply instead.
    #[serde(default = "LimitsConfig::default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// New connections accepted per source IP per second (0 = unlimited, the default: vehicles
    /// share carrier-NAT addresses and a load balancer may show one address); more are closed
    /// at accept and counted.
    #[serde(default)]
    pub handshakes_per_ip_per_s: f64,
    /// TLS handshakes run at once, over all sources; further accepted connections wait for a
    /// slot (bounded by `handshake_timeout_s`), so a reconnect storm is paced by CPU instead
    /// of refused.
    #[serde(default = "LimitsConfig::default_max_handshakes_in_flight")]
    pub max_handshakes_in_flight: usize,
    /// Websocket read buffer per connection (bytes): the main per-connection memory cost.
    #[serde(default = "LimitsConfig::default_ws_read_buffer_bytes")]
    pub ws_read_buffer_bytes: usize,
}

impl LimitsConfig {
    /// Problems (key, problem) of the limits.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut issue = |key: &str, problem: String| out.push((key.to_owned(), problem));
        let at_least_one = "must be at least 1".to_owned();
        for (key, v) in [
            ("fleetgate.limits.max_connections", self.max_connections),
            (
                "fleetgate.limits.max_handshakes_in_flight",
                self.max_handshakes_in_flight,
            ),
            (
                "fleetgate.limits.max_pending_acks_total",
                self.max_pending_acks_total,
            ),
            (
                "fleetgate.limits.max_pending_acks_per_connection",
                self.max_pending_acks_per_connection,
            ),
        ] {
            if v == 0 {
                issue(key, at_least_one.clone());
            }
        }
        for (key, v) in [
            (
                "fleetgate.limits.handshake_timeout_s",
                self.handshake_timeout_s,
            ),
            ("fleetgate.limits.upgrade_timeout_s", self.upgrade_timeout_s),
            ("fleetgate.limits.idle_timeout_s", self.idle_timeout_s),
            ("fleetgate.limits.ping_interval_s", self.ping_interval_s),
            ("fleetgate.limits.write_timeout_s", self.write_timeout_s),
        ] {
            if v == 0 {
                issue(key, "must be at least 1 second".into());
            }
        }
        if !self.handshakes_per_ip_per_s.is_finite() || self.handshakes_per_ip_per_s < 0.0 {
            issue(
                "fleetgate.limits.handshakes_per_ip_per_s",
                "must be a number >= 0 (0 = unlimited)".into(),
            );
        }
        if self.max_message_bytes <= crate::wire::MAX_FRAME_BYTES {
            issue(
                "fleetgate.limits.max_message_bytes",
                format!(
                    "must exceed the {}-byte frame limit so oversized frames get an error reply",
                    crate::wire::MAX_FRAME_BYTES
                ),
            );
        }
        if !(256..=1 << 20).contains(&self.ws_read_buffer_bytes) {
            issue(
                "fleetgate.limits.ws_read_buffer_bytes",
                "must be between 256 and 1048576".into(),
            );
        }
        out
    }

    fn default_max_connections() -> usize {
        19_000
    }
    fn default_handshake_timeout_s() -> u64 {
        10
    }
    fn default_upgrade_timeout_s() -> u64 {
        10
    }
    fn default_idle_timeout_s() -> u64 {
        300
    }
    fn default_ping_interval_s() -> u64 {
        60
    }
    fn default_write_timeout_s() -> u64 {
        10
    }
    fn default_max_pending_acks() -> usize {
        256
    }
    fn default_max_pending_acks_total() -> usize {
        100_000
    }
    fn default_max_handshakes_in_flight() -> usize {
        256
    }
    fn default_max_message_bytes() -> usize {
        2 * 1024 * 1024
    }
    fn default_ws_read_buffer_bytes() -> usize {
        1024
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: Self::default_max_connections(),
            handshake_timeout_s: Self::default_handshake_timeout_s(),
            upgrade_timeout_s: Self::default_upgrade_timeout_s(),
            idle_timeout_s: Self::default_idle_timeout_s(),
            ping_interval_s: Self::default_ping_interval_s(),
            write_timeout_s: Self::default_write_timeout_s(),
            max_pending_acks_per_connection: Self::default_max_pending_acks(),
            max_pending_acks_total: Self::default_max_pending_acks_total(),
            max_message_bytes: Self::default_max_message_bytes(),
            ws_read_buffer_bytes: Self::default_ws_read_buffer_bytes(),
            handshakes_per_ip_per_s: 0.0,
            max_handshakes_in_flight: Self::default_max_handshakes_in_flight(),
        }
    }
}

/// One configuration problem: the key, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `tls.ca_file`.
    pub key: String,
    /// What is wrong and what to do.
    pub problem: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON or a value has the wrong type.
    #[error("config file {path} is not valid: {key}{source} (line {line}, column {column})")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where the wrong value sits (`fleetgate.tesla.port: `), empty when unknown.
        key: String,
        /// serde_json's message (names the key for type errors).
        source: serde_json::Error,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// Values parsed but are not usable; every problem is listed.
    #[error("config file {path} has {} problem(s):\n{}", issues.len(), issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
        /// The warnings found beside them (shown too: fixing the problems should not reveal
        /// new findings).
        warnings: Vec<String>,
    },
}

/// A listen address of the config: an IP address, or a host name `serve` resolves when it
/// binds (a name that only exists where the config is deployed is not resolved by a
/// `check-config --no-file-checks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A host name and port.
    Name {
        /// The name.
        host: String,
        /// The port.
        port: u16,
    },
}

/// How long resolving a listen host name may take.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl ListenAddr {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            ListenAddr::Ip(a) => a.port(),
            ListenAddr::Name { port, .. } => *port,
        }
    }

    /// The same host on another port.
    pub fn with_port(&self, port: u16) -> ListenAddr {
        match self {
            ListenAddr::Ip(a) => ListenAddr::Ip(SocketAddr::new(a.ip(), port)),
            ListenAddr::Name { host, .. } => ListenAddr::Name {
                host: host.clone(),
                port,
            },
        }
    }

    /// The address to bind: an IP as it is, a name resolved (its first address, within 5 s).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        let (host, port) = match self {
            ListenAddr::Ip(a) => return Ok(*a),
            ListenAddr::Name { host, port } => (host.clone(), *port),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let name = host.clone();
        std::thread::spawn(move || {
            use std::net::ToSocketAddrs;
            let _ = tx.send(
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|mut a| a.next()),
            );
        });
        match rx.recv_timeout(RESOLVE_TIMEOUT) {
            Ok(Ok(Some(addr))) => Ok(addr),
            Ok(Ok(None)) => Err(format!("host name `{host}` resolves to no address")),
            Ok(Err(e)) => Err(format!("host name `{host}` does not resolve: {e}")),
            Err(_) => Err(format!(
                "host name `{host}` did not resolve within {} s",
                RESOLVE_TIMEOUT.as_secs()
            )),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Ip(a) => write!(f, "{a}"),
            ListenAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A DNS host name (RFC 1123): dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // all-digit dotted text is a mistyped IP address, not a name
        && !text.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

/// What `serve` uses of the config, parsed once into real types (addresses, durations,
/// networks): nothing downstream parses a string of the config again.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The vehicle listener (`host`, `port`; `localhost` is 127.0.0.1).
    pub vehicles: ListenAddr,
    /// The plain `/status` listener (`status_port`, on the vehicle host).
    pub status: Option<ListenAddr>,
    /// The Prometheus listener (`monitoring.prometheus_metrics_host` / `_port`).
    pub metrics: Option<SocketAddr>,
    /// The admin API (`fleetgate.admin.listen`).
    pub admin: Option<SocketAddr>,
    /// The proxy-terminated mTLS listener and the proxies it trusts.
    pub proxy: Option<(SocketAddr, crate::ingest::proxy::TrustedProxies)>,
    /// TLS handshake limit.
    pub handshake_timeout: std::time::Duration,
    /// HTTP request limit after TLS.
    pub upgrade_timeout: std::time::Duration,
    /// Idle connections close after this.
    pub idle_timeout: std::time::Duration,
    /// Quiet vehicles are pinged this often.
    pub ping_interval: std::time::Duration,
    /// A vehicle that does not read its acks for this long is dropped.
    pub write_timeout: std::time::Duration,
    /// The whole shutdown: drain, flush, stop.
    pub shutdown_grace: std::time::Duration,
    /// After a vehicle's last socket closes, before `vehicle.disconnected`.
    pub vehicle_grace: std::time::Duration,
    /// How long an older socket stays after a newer one of the vehicle opens.
    pub handover_grace: std::time::Duration,
    /// `rate_limit`, with its interval as a duration.
    pub rate_limit: crate::pipeline::RateLimit,
}

fn parse_addr(key: &str, text: &str, issues: &mut Vec<ConfigIssue>) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            issues.push(ConfigIssue {
                key: key.to_owned(),
                problem: format!("`{text}` is not IP:PORT"),
            });
            None
        }
    }
}

impl Config {
    /// Parses what `serve` uses into [`Settings`], reporting every problem at once.
    pub fn settings(&self) -> Result<Settings, Vec<ConfigIssue>> {
        use std::time::Duration;
        let mut issues = Vec::new();
        let vehicles = self
            .listen_addr()
            .map_err(|problem| {
                issues.push(ConfigIssue {
                    key: "host".into(),
                    problem,
                })
            })
            .ok();
        let metrics = self
            .monitoring
            .as_ref()
            .and_then(|m| m.prometheus_metrics_port.map(|p| (m, p)))
            .and_then(|(m, port)| {
                let host = m.prometheus_metrics_host.as_deref().unwrap_or("0.0.0.0");
                let host = if host == "localhost" {
                    "127.0.0.1"
                } else {
                    host
                };
                match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => Some(SocketAddr::new(ip, port)),
                    Err(_) => {
                        issues.push(ConfigIssue {
                            key: "monitoring.prometheus_metrics_host".into(),
                            problem: format!("`{host}` is not an IP address"),
                        });
                        None
                    }
                }
            });
        let admin = self
            .fleetgate
            .admin
            .as_ref()
            .and_then(|a| parse_addr("fleetgate.admin.listen", &a.listen, &mut issues));
        let proxy = self.fleetgate.proxy_mtls.as_ref().and_then(|p| {
            let listen = parse_addr("fleetgate.proxy_mtls.listen", &p.listen, &mut issues);
            let trusted = p
                .trusted()
                .map_err(|problem| {
                    issues.push(ConfigIssue {
                        key: "fleetgate.proxy_mtls.trusted_proxies".into(),
                        problem,
                    })
                })
                .ok();
            listen.zip(trusted)
        });
        let (Some(vehicles), true) = (vehicles, issues.is_empty()) else {
            return Err(issues);
        };
        let l = &self.fleetgate.limits;
        let rl = self.rate_limit.clone().unwrap_or_default();
        Ok(Settings {
            status: self.status_port.map(|p| vehicles.with_port(p)),
            vehicles,
            metrics,
            admin,
            proxy,
            handshake_timeout: Duration::from_secs(l.handshake_timeout_s),
            upgrade_timeout: Duration::from_secs(l.upgrade_timeout_s),
            idle_timeout: Duration::from_secs(l.idle_timeout_s),
            ping_interval: Duration::from_secs(l.ping_interval_s),
            write_timeout: Duration::from_secs(l.write_timeout_s),
            shutdown_grace: Duration::from_secs(self.fleetgate.shutdown_grace_s.max(1)),
            vehicle_grace: Duration::from_secs(self.fleetgate.connectivity.vehicle_grace_s),
            handover_grace: Duration::from_secs(self.fleetgate.connectivity.handover_s),
            rate_limit: crate::pipeline::RateLimit {
                enabled: rl.enabled,
                message_limit: rl.message_limit,
                interval: Duration::from_secs(u64::from(rl.message_interval_time)),
            },
        })
    }
}

/// What a config is checked against beyond its values.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// Open the files the config names (false for a config rendered for another machine:
    /// `check-config --no-file-checks`).
    pub files: bool,
    /// `serve --insecure-admin`: an admin API without a token is allowed on loopback.
    pub insecure_admin: bool,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks {
            files: true,
            insecure_admin: false,
        }
    }
}

/// A validated configuration plus the warnings to log at start-up.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// What `serve` uses of it, in real types.
    pub settings: Settings,
    /// Where it was read from (relative paths in it are relative to this file's folder).
    pub path: PathBuf,
    /// Non-fatal findings (unknown keys, reference features fleetgate does not implement).
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses JSON text (no validation). Every key no field reads is recorded with its full
    /// path in [`Config::unknown_keys`].
    pub fn from_json(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_err = |source: serde_json::Error| ConfigError::Parse {
            path: path.to_owned(),
            key: String::new(),
            line: source.line(),
            column: source.column(),
            source,
        };
        let mut unknown = Vec::new();
        let mut de = serde_json::Deserializer::from_str(text);
        let mut record_unknown = |p: serde_ignored::Path<'_>| unknown.push(key_path(&p));
        let ignoring = serde_ignored::Deserializer::new(&mut de, &mut record_unknown);
        // the key a wrong type sits at (`fleetgate.tesla.port`), for the message
        let mut config: Config = serde_path_to_error::deserialize(ignoring).map_err(|e| {
            let key = e.path().to_string();
            let source = e.into_inner();
            ConfigError::Parse {
                path: path.to_owned(),
                key: if key == "." || key == "?" {
                    String::new()
                } else {
                    format!("{key}: ")
                },
                line: source.line(),
                column: source.column(),
                source,
            }
        })?;
        de.end().map_err(parse_err)?;
        config.unknown_keys = unknown;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        Config::load_with(path, Checks::default())
    }

    /// [`Config::load`] with `serve`'s and `check-config`'s options.
    pub fn load_with(path: &Path, checks: Checks) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_json(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (issues, warnings) = config.validate_with(base, checks);
        // `validate_with` reported the settings' problems too: here they parse
        let invalid = |issues| ConfigError::Invalid {
            path: path.to_owned(),
            issues,
            warnings: warnings.clone(),
        };
        if !issues.is_empty() {
            return Err(invalid(issues));
        }
        let settings = config.settings().map_err(invalid)?;
        Ok(LoadedConfig {
            config,
            settings,
            path: path.to_owned(),
            warnings,
        })
    }

    /// The sites of `fleetgate.sites_file` (None when unset), read and parsed as `serve`
    /// imports them; the error says which file and which features (without the key).
    pub fn sites_file_sites(
        &self,
        base: &Path,
    ) -> Option<Result<Vec<crate::rules::sites::Site>, String>> {
        let path = Config::resolve(base, self.fleetgate.sites_file.as_ref()?);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => return Some(Err(format!("cannot read {}: {e}", path.display()))),
        };
        Some(
            crate::rules::geojson::sites_from_geojson(&text, self.fleetgate.rules.default_radius_m)
                .map_err(|errors| {
                    let list: Vec<String> = errors
                        .iter()
                        .map(|(i, e)| format!("feature {i}: {e}"))
                        .collect();
                    format!("{}: {}", path.display(), list.join("; "))
                }),
        )
    }

    /// Resolves a path from the config relative to the config file's folder.
    pub fn resolve(base: &Path, value: &str) -> PathBuf {
        crate::paths::resolve(base, value)
    }

    /// Where vehicle certificates must chain to: `tls.ca_file`, else Tesla's embedded bundle
    /// (the engineering one with `use_default_eng_ca`), as Tesla's server does.
    pub fn client_roots(&self, base: &Path) -> crate::ingest::tesla_ca::ClientRoots {
        use crate::ingest::tesla_ca::ClientRoots;
        match self.tls.as_ref().map(|t| t.ca_file.as_str()) {
            Some(ca) if !ca.is_empty() => ClientRoots::File(Config::resolve(base, ca)),
            _ if self.use_default_eng_ca => ClientRoots::EmbeddedEng,
            _ => ClientRoots::EmbeddedProd,
        }
    }

    /// Address the vehicle listener binds: `host` (an IP address or a host name, as Tesla's
    /// server accepts) and `port`.
    pub fn listen_addr(&self) -> Result<ListenAddr, String> {
        let host = if self.host.is_empty() {
            "0.0.0.0"
        } else {
            &self.host
        };
        let host = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        let port = self.port.unwrap_or(443);
        let ip = host
            .parse::<std::net::IpAddr>()
            .or_else(|_| host.trim_matches(['[', ']']).parse());
        match ip {
            Ok(ip) => Ok(ListenAddr::Ip(SocketAddr::new(ip, port))),
            Err(_) if is_host_name(host) => Ok(ListenAddr::Name {
                host: host.to_owned(),
                port,
            }),
            Err(_) => Err(format!("`{host}` is neither an IP address nor a host name")),
        }
    }

    /// The sinks events go to: `fleetgate.events.sinks`, else the sinks of `V`.
    pub fn event_sinks(&self) -> Vec<String> {
        self.fleetgate
            .events
            .sinks
            .clone()
            .unwrap_or_else(|| self.sinks_for("V").to_vec())
    }

    /// Kafka topic of events.
    pub fn events_topic(&self) -> String {
        self.fleetgate
            .events
            .topic
            .clone()
            .unwrap_or_else(|| crate::kafka::topic_name(&self.namespace, "events"))
    }

    /// The sinks of a topic (empty when the topic is not routed).
    pub fn sinks_for(&self, topic: &str) -> &[String] {
        self.records.get(topic).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A key path as the config file spells it: `tls.ca_file`, `records.V[0]`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// The keys fleetgate reads in the section at `parent` (a Tesla section), for "did you mean".
fn known_keys(parent: &str) -> &'static [&'static str] {
    use serde_aux::serde_introspection::serde_introspect;
    match parent {
        "" => serde_introspect::<Config>(),
        "tls" => serde_introspect::<TlsConfig>(),
        "rate_limit" => serde_introspect::<RateLimitConfig>(),
        "monitoring" => serde_introspect::<MonitoringConfig>(),
        "data_connectors" => serde_introspect::<DataConnectorsConfig>(),
        "data_connectors.file" => serde_introspect::<FileConnectorConfig>(),
        "data_connectors.file.vin_allowed" => serde_introspect::<FileVinAllowedConfig>(),
        _ => &[],
    }
}

/// The warning for a key nothing reads: its full path and the closest known key, if any.
fn unknown_key_warning(path: &str) -> String {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let closest = known_keys(parent)
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, k)) => {
            let suggestion = if parent.is_empty() {
                k.to_owned()
            } else {
                format!("{parent}.{k}")
            };
            format!("unknown config key `{path}` is ignored: did you mean `{suggestion}`?")
        }
        None => format!("unknown config key `{path}` is ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Config {
        Config::from_json(json, Path::new("t.json")).unwrap()
    }

    #[test]
    fn a_reference_config_parses_unchanged() {
        let c = parse(
            r#"{
            "host": "0.0.0.0", "port": 443, "status_port": 8080,
            "log_level": "info", "json_log_enable": true, "namespace": "tesla_telemetry",
            "reliable_ack_sources": {"V": "kafka"},
            "monitoring": {"prometheus_metrics_port": 9273, "profiler_port": 4269, "profiling_path": "/tmp/x"},
            "rate_limit": {"enabled": true, "message_interval_time": 30, "message_limit": 1000},
            "records": {"alerts": ["logger"], "errors": ["logger"], "V": ["kafka"]},
            "kafka": {"bootstrap.servers": "kafka:9092", "queue.buffering.max.messages": 1000000},
            "tls": {"server_cert": "/etc/certs/server/tls.crt", "server_key": "/etc/certs/server/tls.key"},
            "transmit_decoded_records": false,
            "kinesis": {"max_retries": 3}
        }"#,
        );
        assert_eq!(c.port, Some(443));
        assert_eq!(c.namespace, "tesla_telemetry");
        assert_eq!(c.rate_limit.as_ref().unwrap().message_limit, 1000);
        assert_eq!(c.sinks_for("V"), ["kafka"]);
        let (issues, warnings) = c.validate(Path::new("/"));
        // the cert files do not exist here: named, with fixes; no ca_file = Tesla's CAs
        assert!(!issues.iter().any(|i| i.key == "tls.ca_file"), "{issues:?}");
        assert_eq!(
            c.client_roots(Path::new("/")),
            crate::ingest::tesla_ca::ClientRoots::EmbeddedProd
        );
        assert!(issues
            .iter()
            .any(|i| i.key == "tls.server_cert" && i.problem.contains("does not exist")));
        assert!(warnings.iter().any(|w| w.contains("`kinesis`")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("monitoring.profiling_path")));
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
    }

    #[test]
    fn unknown_keys_are_reported_at_every_depth_with_a_suggestion() {
        let c = parse(
            r#"{"tls": {"ca_flie": "ca.pem", "server_cert": "s.pem"},
                "rate_limit": {"enabeld": true},
                "monitoring": {"prometheus_metric_port": 9273},
                "recrods": {},
                "data_connectors": {"file": {"capabilities": ["vin_allowed"], "paht": "x"}},
                "zzz_unrelated": 1}"#,
        );
        assert_eq!(
            c.unknown_keys,
            [
                "tls.ca_flie",
                "rate_limit.enabeld",
                "monitoring.prometheus_metric_port",
                "recrods",
                "data_connectors.file.paht",
                "zzz_unrelated"
            ]
        );
        let (_, warnings) = c.validate(Path::new("/"));
        for expected in [
            "unknown config key `tls.ca_flie` is ignored: did you mean `tls.ca_file`?",
            "unknown config key `rate_limit.enabeld` is ignored: did you mean `rate_limit.enabled`?",
            "unknown config key `monitoring.prometheus_metric_port` is ignored: did you mean `monitoring.prometheus_metrics_port`?",
            "unknown config key `recrods` is ignored: did you mean `records`?",
            "unknown config key `data_connectors.file.paht` is ignored: did you mean `data_connectors.file.path`?",
            "unknown config key `zzz_unrelated` is ignored",
        ] {
            assert!(warnings.iter().any(|w| w == expected), "{expected}\n{warnings:#?}");
        }
    }

    #[test]
    fn teslas_current_keys_are_recognised_not_called_typos() {
        let c = parse(
            r#"{"data_connectors": {"redis": {"capabilities": ["vin_allowed"]}},
                "mqtt": {"broker": "x"}, "nats": {}, "airbrake": {}, "reliable_ack": true,
                "reliable_ack_workers": 4, "use_default_eng_ca": true, "tls": {}}"#,
        );
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        let (_, warnings) = c.validate(Path::new("/"));
        assert!(!warnings
            .iter()
            .any(|w| w.contains("typo") || w.contains("unknown config key")));
        for key in [
            "data_connectors.redis",
            "`mqtt`",
            "`nats`",
            "`airbrake`",
            "`reliable_ack`",
            "`reliable_ack_workers`",
        ] {
            assert!(
                warnings.iter().any(|w| w.contains(key)),
                "{key}: {warnings:#?}"
            );
        }
        assert_eq!(
            c.client_roots(Path::new("/")),
            crate::ingest::tesla_ca::ClientRoots::EmbeddedEng
        );
    }

    #[test]
    fn unknown_sinks_and_bad_values_are_all_reported() {
        let c = parse(
            r#"{"records": {"V": ["kinesis", "nope"], "alerts": ["kafka"]},
                "reliable_ack_sources": {"errors": "kafka"},
                "log_level": "loud",
                "fleetgate": {"limits": {"idle_timeout_s": 0}}}"#,
        );
        let (issues, _) = c.validate(Path::new("/"));
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        for expected in [
            "tls",
            "records.V",
            "records.alerts",
            "reliable_ack_sources.errors",
            "log_level",
            "fleetgate.limits.idle_timeout_s",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
        assert!(issues
            .iter()
            .any(|i| i.problem.contains("not implemented by fleetgate")));
    }

    #[test]
    fn settings_are_parsed_once_into_real_types_and_every_bad_address_is_reported() {
        let c = parse(
            r#"{"host": "localhost", "port": 4443, "status_port": 8080,
                "monitoring": {"prometheus_metrics_port": 9273},
                "rate_limit": {"message_interval_time": 30},
                "fleetgate": {"admin": {"listen": "127.0.0.1:8081"},
                              "limits": {"idle_timeout_s": 120},
                              "proxy_mtls": {"listen": "0.0.0.0:8444", "header": "rfc9440", "trusted_proxies": ["10.0.0.0/16", "192.0.2.7"]}}}"#,
        );
        let s = c.settings().unwrap();
        assert_eq!(
            s.vehicles,
            ListenAddr::Ip("127.0.0.1:4443".parse().unwrap())
        );
        assert_eq!(
            s.status,
            Some(ListenAddr::Ip("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(s.metrics, Some("0.0.0.0:9273".parse().unwrap()));
        assert_eq!(s.admin, Some("127.0.0.1:8081".parse().unwrap()));
        assert_eq!(s.idle_timeout, std::time::Duration::from_secs(120));
        assert_eq!(s.rate_limit.interval, std::time::Duration::from_secs(30));
        let (listen, trusted) = s.proxy.unwrap();
        assert_eq!(listen, "0.0.0.0:8444".parse().unwrap());
        assert!(trusted.contains("10.0.3.4".parse().unwrap()));
        assert!(trusted.contains("192.0.2.7".parse().unwrap()));

        let bad = parse(
            r#"{"host": "not_a_name",
                "monitoring": {"prometheus_metrics_port": 9273, "prometheus_metrics_host": "nope"},
                "fleetgate": {"admin": {"listen": "8081"},
                              "proxy_mtls": {"listen": "x", "header": "rfc9440", "trusted_proxies": []}}}"#,
        );
        let keys: Vec<String> = bad
            .settings()
            .unwrap_err()
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(
            keys,
            [
                "host",
                "monitoring.prometheus_metrics_host",
                "fleetgate.admin.listen",
                "fleetgate.proxy_mtls.listen",
                "fleetgate.proxy_mtls.trusted_proxies"
            ]
        );
    }

    #[test]
    fn host_is_an_ip_address_or_a_host_name_as_in_teslas_server() {
        let host = |h: &str| parse(&format!(r#"{{"host": "{h}", "port": 4443}}"#)).listen_addr();
        assert_eq!(
            host("::").unwrap(),
            ListenAddr::Ip("[::]:4443".parse().unwrap())
        );
        assert_eq!(
            host("localhost").unwrap(),
            ListenAddr::Ip("127.0.0.1:4443".parse().unwrap())
        );
        for name in [
            "app",
            "telemetry.example.com",
            "fleet-telemetry-0.svc.cluster.local.",
        ] {
            assert_eq!(
                host(name).unwrap(),
                ListenAddr::Name {
                    host: name.into(),
                    port: 4443
                },
                "{name}"
            );
        }
        for bad in ["not_a_name", "-app", "10.0.0.256", "a..b", "app:443", ""] {
            if bad.is_empty() {
                continue; // empty = 0.0.0.0
            }
            assert!(host(bad).is_err(), "{bad}");
        }
        // an IP needs no resolver; its port is kept on the status listener's address too
        let ip = ListenAddr::Ip("10.1.2.3:443".parse().unwrap());
        assert_eq!(ip.resolve().unwrap(), "10.1.2.3:443".parse().unwrap());
        assert_eq!(ip.with_port(8080).port(), 8080);
    }

    #[test]
    fn cluster_mode_needs_kafka_and_a_usable_name() {
        let c = parse(
            r#"{"fleetgate": {"cluster": {"name": "bad name!", "instance_id": " ", "write_timeout_s": 0}}}"#,
        );
        let (issues, _) = c.validate(Path::new("/"));
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        for expected in [
            "fleetgate.cluster",
            "fleetgate.cluster.name",
            "fleetgate.cluster.instance_id",
            "fleetgate.cluster.write_timeout_s",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
        let ok = parse(
            r#"{"kafka": {"bootstrap.servers": "k:9092"}, "records": {"V": ["kafka"]},
                "fleetgate": {"cluster": {"name": "eu-1"}}}"#,
        );
        let (issues, _) = ok.validate(Path::new("/"));
        assert!(
            !issues
                .iter()
                .any(|i| i.key.starts_with("fleetgate.cluster")),
            "{issues:?}"
        );
    }

    #[test]
    fn the_fleetgate_section_is_strict() {
        let err = Config::from_json(r#"{"fleetgate": {"limitz": {}}}"#, Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limitz"), "{err}");
    }

    #[test]
    fn bad_json_names_line_and_column() {
        let err = Config::from_json("{\n  \"port\": \"443\"\n}", Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
