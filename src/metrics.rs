//! Every metric fleetgate exports: names, labels and help text in one place. Labels are bounded
//! (topics, results, reasons, sink names); never a VIN.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Open vehicle connections (websocket established).
pub const CONNECTIONS_OPEN: &str = "fleetgate_connections_open";
/// TCP connections by result at accept: `accepted`, `over_capacity`.
pub const CONNECTIONS_TOTAL: &str = "fleetgate_connections_total";
/// TLS handshakes by result: `ok` or a failure reason (`expired`, `untrusted_issuer`, …).
pub const HANDSHAKES_TOTAL: &str = "fleetgate_handshakes_total";
/// Verified certificates refused by the identity rules, by reason.
pub const IDENTITY_REFUSED_TOTAL: &str = "fleetgate_identity_refused_total";
/// Proxy listener: forwarded client certificates by result: `ok`, `untrusted_proxy` (a
/// certificate header from an address outside `trusted_proxies`), `no_client_cert`,
/// `malformed_header`, or a chain verification reason (`expired`, `untrusted_issuer`, …).
pub const PROXY_CLIENT_CERTS_TOTAL: &str = "fleetgate_proxy_client_certs_total";
/// HTTP requests after TLS by outcome: `upgrade`, `status`, `bad_request`, `timeout`, `forbidden`.
pub const HTTP_REQUESTS_TOTAL: &str = "fleetgate_http_requests_total";
/// Frames by topic and result (`ok`, `too_big`, `malformed`, `unknown_message_type`,
/// `unknown_topic`, `bad_payload`, `rate_limited`, `not_routed`).
pub const FRAMES_TOTAL: &str = "fleetgate_frames_total";
/// Bytes of frames received, by topic.
pub const FRAME_BYTES_TOTAL: &str = "fleetgate_frame_bytes_total";
/// Acks sent to vehicles.
pub const ACKS_TOTAL: &str = "fleetgate_acks_total";
/// Error replies (`incorrect message format`) sent to vehicles.
pub const ERROR_REPLIES_TOTAL: &str = "fleetgate_error_replies_total";
/// Frames whose `sender_id` differs from the certificate's identity; they are dispatched under
/// the certificate's VIN, never the claimed one.
pub const SENDER_MISMATCH_TOTAL: &str = "fleetgate_sender_mismatch_total";
/// Frames over the rate limit, by topic (dropped only when `rate_limit.enabled`).
pub const RATE_LIMITED_TOTAL: &str = "fleetgate_rate_limited_total";
/// Seconds to decode and transform one frame (one frame in 8 per connection is timed).
pub const DECODE_SECONDS: &str = "fleetgate_decode_seconds";
/// Seconds a sink's `publish` took, by sink (one frame in 8 per connection is timed).
pub const SINK_PUBLISH_SECONDS: &str = "fleetgate_sink_publish_seconds";
/// Records handed to sinks, by sink, topic and result (`ok`, `error`).
pub const SINK_RECORDS_TOTAL: &str = "fleetgate_sink_records_total";
/// Websocket connections closed, by reason.
pub const WS_CLOSED_TOTAL: &str = "fleetgate_ws_closed_total";
/// Reliable acks waiting for a sink's delivery report.
pub const RELIABLE_ACKS_PENDING: &str = "fleetgate_reliable_acks_pending";
/// Frames never acked because their reliable delivery failed (the vehicle resends).
pub const RELIABLE_ACK_FAILED_TOTAL: &str = "fleetgate_reliable_ack_failed_total";

/// 1 when a Kafka broker of the cluster is reachable.
pub const KAFKA_CONNECTED: &str = "fleetgate_kafka_connected";
/// Records queued in the Kafka producer (librdkafka `msg_cnt`).
pub const KAFKA_QUEUE_MESSAGES: &str = "fleetgate_kafka_queue_messages";
/// Bytes queued in the Kafka producer.
pub const KAFKA_QUEUE_BYTES: &str = "fleetgate_kafka_queue_bytes";
/// Records Kafka confirmed, by topic.
pub const KAFKA_DELIVERED_TOTAL: &str = "fleetgate_kafka_delivered_total";
/// Records Kafka failed to deliver (after librdkafka's retries), by topic.
pub const KAFKA_DELIVERY_ERRORS_TOTAL: &str = "fleetgate_kafka_delivery_errors_total";
/// Records the producer refused at once, by reason (`queue_full`, …).
pub const KAFKA_PRODUCE_ERRORS_TOTAL: &str = "fleetgate_kafka_produce_errors_total";
/// Errors reported by the Kafka client (connection loss, …).
pub const KAFKA_CLIENT_ERRORS_TOTAL: &str = "fleetgate_kafka_client_errors_total";
/// Seconds from produce to delivery report.
pub const KAFKA_DELIVERY_SECONDS: &str = "fleetgate_kafka_delivery_seconds";
/// Records a sink refused at once, by sink (the frame is not acked).
pub const SINK_REFUSED_TOTAL: &str = "fleetgate_sink_refused_total";

/// Datums not forwarded because their value did not change (`changes_only`).
pub const CHANGES_SUPPRESSED_DATUMS_TOTAL: &str = "fleetgate_changes_suppressed_datums_total";
/// Records not forwarded at all because no datum changed (`changes_only`).
pub const CHANGES_SUPPRESSED_RECORDS_TOTAL: &str = "fleetgate_changes_suppressed_records_total";

/// Events emitted, by type.
pub const EVENTS_TOTAL: &str = "fleetgate_events_total";
/// Seconds the rules took for one `V` frame (one frame in 8 per connection is timed).
pub const RULES_SECONDS: &str = "fleetgate_rules_seconds";
/// Sites indexed.
pub const SITES: &str = "fleetgate_sites";
/// Live watches.
pub const WATCHES: &str = "fleetgate_watches";
/// Vehicles in the vehicle table.
pub const VEHICLES_KNOWN: &str = "fleetgate_vehicles_known";

/// Every metric name fleetgate exports.
pub const ALL: &[&str] = &[
    CHANGES_SUPPRESSED_DATUMS_TOTAL,
    CHANGES_SUPPRESSED_RECORDS_TOTAL,
    CONNECTIONS_OPEN,
    CONNECTIONS_TOTAL,
    HANDSHAKES_TOTAL,
    IDENTITY_REFUSED_TOTAL,
    PROXY_CLIENT_CERTS_TOTAL,
    HTTP_REQUESTS_TOTAL,
    FRAMES_TOTAL,
    FRAME_BYTES_TOTAL,
    ACKS_TOTAL,
    ERROR_REPLIES_TOTAL,
    RATE_LIMITED_TOTAL,
    DECODE_SECONDS,
    SINK_PUBLISH_SECONDS,
    SINK_RECORDS_TOTAL,
    WS_CLOSED_TOTAL,
    RELIABLE_ACKS_PENDING,
    RELIABLE_ACK_FAILED_TOTAL,
    KAFKA_CONNECTED,
    KAFKA_QUEUE_MESSAGES,
    KAFKA_QUEUE_BYTES,
    KAFKA_DELIVERED_TOTAL,
    KAFKA_DELIVERY_ERRORS_TOTAL,
    KAFKA_PRODUCE_ERRORS_TOTAL,
    KAFKA_CLIENT_ERRORS_TOTAL,
    KAFKA_DELIVERY_SECONDS,
    SINK_REFUSED_TOTAL,
    EVENTS_TOTAL,
    RULES_SECONDS,
    SITES,
    WATCHES,
    VEHICLES_KNOWN,
];

/// Counts one emitted event.
pub fn count_event(kind: &'static str) {
    metrics::counter!(EVENTS_TOTAL, "type" => kind).increment(1);
}

/// Buckets for delivery latency.
const DELIVERY_BUCKETS: &[f64] = &[
    5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Buckets for sub-millisecond work (decode, publish).
const FAST_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(KAFKA_DELIVERY_SECONDS.into()),
                    DELIVERY_BUCKETS,
                )
                .expect("static bucket list is valid")
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), FAST_BUCKETS)
                .expect("static bucket list is valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests, embedding); ours then only renders.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, "Open vehicle websocket connections");
    describe_counter!(CONNECTIONS_TOTAL, "TCP connections at accept, by result");
    describe_counter!(
        HANDSHAKES_TOTAL,
        "TLS handshakes by result or failure reason"
    );
    describe_counter!(
        IDENTITY_REFUSED_TOTAL,
        "Verified client certificates refused by the identity rules"
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests on the vehicle listener by outcome"
    );
    describe_counter!(FRAMES_TOTAL, "Frames by topic and result");
    describe_counter!(FRAME_BYTES_TOTAL, "Bytes of frames received by topic");
    describe_counter!(ACKS_TOTAL, "Acks sent to vehicles");
    describe_counter!(ERROR_REPLIES_TOTAL, "Error replies sent to vehicles");
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Frames over the per-connection rate limit"
    );
    describe_histogram!(
        DECODE_SECONDS,
        metrics::Unit::Seconds,
        "Decode and transform time per frame"
    );
    describe_histogram!(
        SINK_PUBLISH_SECONDS,
        metrics::Unit::Seconds,
        "Time to hand a record to a sink"
    );
    describe_counter!(
        SINK_RECORDS_TOTAL,
        "Records handed to sinks by sink, topic and result"
    );
    describe_counter!(WS_CLOSED_TOTAL, "Closed vehicle connections by reason");
    describe_gauge!(
        RELIABLE_ACKS_PENDING,
        "Frames waiting for a delivery report before their ack"
    );
    describe_counter!(
        RELIABLE_ACK_FAILED_TOTAL,
        "Frames whose reliable delivery failed (not acked)"
    );
}

/// Renders the current metrics in the Prometheus text format.
pub fn render() -> String {
    install().render()
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { render() }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics listener stopped");
    }
}

/// Binds the metrics listener (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Handles of the per-frame metrics, registered once so the hot path does no label lookups.
#[derive(Clone)]
pub struct FrameMetrics {
    /// `fleetgate_frames_total{topic="V",result="ok"}` …, indexed by [`FrameMetrics::topic_index`].
    ok: [Counter; 5],
    bytes: [Counter; 5],
    /// Acks sent.
    pub acks: Counter,
    /// Error replies sent.
    pub error_replies: Counter,
    /// Frames whose sender id differs from the certificate's identity.
    pub sender_mismatch: Counter,
    /// Decode time.
    pub decode_seconds: Histogram,
    /// Open connections.
    pub connections_open: Gauge,
    /// Pending reliable acks.
    pub reliable_pending: Gauge,
    /// Rule evaluation time.
    pub rules_seconds: Histogram,
    /// `fleetgate_sink_publish_seconds` of the built-in sinks, by [`SINK_LABELS`] index.
    sink_publish: [Histogram; 2],
}

/// Sinks whose publish-time histogram handle is registered up front.
pub const SINK_LABELS: [&str; 2] = ["logger", "kafka"];

/// Topic label values (the fifth is every topic without a known schema).
pub const TOPIC_LABELS: [&str; 5] = ["V", "alerts", "errors", "connectivity", "other"];

impl FrameMetrics {
    /// Registers the handles (call after [`install`]).
    pub fn new() -> Self {
        let ok =
            TOPIC_LABELS.map(|t| metrics::counter!(FRAMES_TOTAL, "topic" => t, "result" => "ok"));
        let bytes = TOPIC_LABELS.map(|t| metrics::counter!(FRAME_BYTES_TOTAL, "topic" => t));
        Self {
            ok,
            bytes,
            acks: metrics::counter!(ACKS_TOTAL),
            error_replies: metrics::counter!(ERROR_REPLIES_TOTAL),
            sender_mismatch: metrics::counter!(SENDER_MISMATCH_TOTAL),
            decode_seconds: metrics::histogram!(DECODE_SECONDS),
            connections_open: metrics::gauge!(CONNECTIONS_OPEN),
            reliable_pending: metrics::gauge!(RELIABLE_ACKS_PENDING),
            rules_seconds: metrics::histogram!(RULES_SECONDS),
            sink_publish: SINK_LABELS
                .map(|s| metrics::histogram!(SINK_PUBLISH_SECONDS, "sink" => s)),
        }
    }

    /// Records how long a sink's `publish` took (a registry lookup only for other sinks).
    pub fn sink_published(&self, sink: &'static str, seconds: f64) {
        match SINK_LABELS.iter().position(|s| *s == sink) {
            Some(i) => self.sink_publish[i].record(seconds),
            None => metrics::histogram!(SINK_PUBLISH_SECONDS, "sink" => sink).record(seconds),
        }
    }

    /// Index of a topic label.
    pub fn topic_index(topic: Option<crate::wire::Topic>) -> usize {
        match topic {
            Some(t) => crate::wire::Topic::ALL
                .iter()
                .position(|x| *x == t)
                .unwrap_or(4),
            None => 4,
        }
    }

    /// Counts a frame that was dispatched.
    pub fn frame_ok(&self, topic: Option<crate::wire::Topic>, len: usize) {
        let i = Self::topic_index(topic);
        self.ok[i].increment(1);
        self.bytes[i].increment(len as u64);
    }

    /// Counts a frame that was not dispatched, with its result label.
    pub fn frame_refused(
        &self,
        topic: Option<crate::wire::Topic>,
        result: &'static str,
        len: usize,
    ) {
        let t = TOPIC_LABELS[Self::topic_index(topic)];
        metrics::counter!(FRAMES_TOTAL, "topic" => t, "result" => result).increment(1);
        self.bytes[Self::topic_index(topic)].increment(len as u64);
    }
}

impl Default for FrameMetrics {
    fn default() -> Self {
        Self::new()
    }
}
