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
/// TLS handshakes running now (bounded by `limits.max_handshakes_in_flight`).
pub const HANDSHAKES_IN_FLIGHT: &str = "fleetgate_handshakes_in_flight";
/// Handshake admission by result: `immediate` (a slot was free), `waited` (queued for a slot),
/// `timeout` (no slot within the handshake timeout; the connection was closed).
pub const HANDSHAKE_ADMISSION_TOTAL: &str = "fleetgate_handshake_admission_total";
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
/// Errors reported by the Kafka client, by reason (`authentication`, `tls`, `authorization`,
/// `transport`, `all_brokers_down`, `resolve`, `other`).
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

/// Cluster mode: shared-state records applied by this instance, by topic kind (`sites`,
/// `watches`, `vins`).
pub const CLUSTER_SHARED_APPLIED_TOTAL: &str = "fleetgate_cluster_shared_applied_total";
/// Cluster mode: shared-state records that could not be read (skipped), by topic kind.
pub const CLUSTER_SHARED_BAD_RECORDS_TOTAL: &str = "fleetgate_cluster_shared_bad_records_total";
/// Cluster mode: seconds this instance took to restore the shared state at start.
pub const CLUSTER_RESTORE_SECONDS: &str = "fleetgate_cluster_restore_seconds";
/// Cluster mode: 1 once the shared state is restored.
pub const CLUSTER_RESTORED: &str = "fleetgate_cluster_restored";
/// Cluster mode: seconds an admin write took (transaction commit and read-back).
pub const CLUSTER_WRITE_SECONDS: &str = "fleetgate_cluster_write_seconds";
/// Cluster mode: admin write transactions aborted, by reason (`produce`, `commit`,
/// `read_back_timeout`).
pub const CLUSTER_TRANSACTION_ABORTS_TOTAL: &str = "fleetgate_cluster_transaction_aborts_total";
/// Cluster mode: age of the newest shared-state record when this instance applied it (s).
pub const CLUSTER_REPLICATION_LAG_SECONDS: &str = "fleetgate_cluster_replication_lag_seconds";

/// Cluster mode: `V` partitions whose rules this instance owns.
pub const CLUSTER_RULES_PARTITIONS: &str = "fleetgate_cluster_rules_partitions";
/// Cluster mode: seconds the last restore of assigned partitions' rule state took.
pub const CLUSTER_RULES_RESTORE_SECONDS: &str = "fleetgate_cluster_rules_restore_seconds";
/// Cluster mode: `V` records the rules processed (committed).
pub const CLUSTER_RULES_FRAMES_TOTAL: &str = "fleetgate_cluster_rules_frames_total";
/// Cluster mode: rules transactions committed.
pub const CLUSTER_RULES_TRANSACTIONS_TOTAL: &str = "fleetgate_cluster_rules_transactions_total";
/// Cluster mode: seconds each step of a rules transaction took, by `step` (`apply`: the
/// records applied and the events and state produced; `offsets`: the consumed offsets added;
/// `commit`: the produced records acknowledged and the transaction ended).
pub const CLUSTER_RULES_COMMIT_SECONDS: &str = "fleetgate_cluster_rules_commit_seconds";
/// Cluster mode: times the rules processor started again after a Kafka failure (its open
/// transaction aborted).
pub const CLUSTER_RULES_RESTARTS_TOTAL: &str = "fleetgate_cluster_rules_restarts_total";
/// Cluster mode: inputs other than frames (manual arrivals, Smartcar states) the rules applied.
pub const CLUSTER_RULES_INPUTS_TOTAL: &str = "fleetgate_cluster_rules_inputs_total";
/// Cluster mode: partitions whose rule state this instance restored (each assignment of a
/// partition that moved here).
pub const CLUSTER_RULES_PARTITIONS_RESTORED_TOTAL: &str =
    "fleetgate_cluster_rules_partitions_restored_total";
/// Cluster mode: events the relay handed to the other event sinks and every one confirmed.
pub const CLUSTER_RELAY_EVENTS_TOTAL: &str = "fleetgate_cluster_relay_events_total";
/// Cluster mode: times a partition of the relay started again from an event a sink failed.
pub const CLUSTER_RELAY_RETRIES_TOTAL: &str = "fleetgate_cluster_relay_retries_total";
/// Cluster mode: events the relay handed to sinks and not yet confirmed.
pub const CLUSTER_RELAY_PENDING: &str = "fleetgate_cluster_relay_pending";
/// Cluster mode: records of the events topic the relay could not read (skipped).
pub const CLUSTER_RELAY_BAD_RECORDS_TOTAL: &str = "fleetgate_cluster_relay_bad_records_total";
/// Cluster mode: `V` records the rules could not read (skipped).
pub const CLUSTER_RULES_BAD_RECORDS_TOTAL: &str = "fleetgate_cluster_rules_bad_records_total";

/// Vehicle rule states written by the rule state store's commits (embedded: the journal;
/// cluster: the changelog records of each rules transaction).
pub const RULE_STATE_WRITES_TOTAL: &str = "fleetgate_rule_state_writes_total";
/// Seconds one commit of embedded mode's rule journal took (one SQLite transaction).
pub const RULE_STATE_COMMIT_SECONDS: &str = "fleetgate_rule_state_commit_seconds";
/// Commits of embedded mode's rule journal that failed (reliable frames wait for the next).
pub const RULE_STATE_COMMIT_ERRORS_TOTAL: &str = "fleetgate_rule_state_commit_errors_total";

/// MQTT sink: 1 while the broker connection is up.
pub const MQTT_CONNECTED: &str = "fleetgate_mqtt_connected";
/// MQTT sink: messages the broker confirmed, by record type.
pub const MQTT_PUBLISHED_TOTAL: &str = "fleetgate_mqtt_published_total";
/// MQTT sink: JSON bytes handed to the broker, by record type.
pub const MQTT_PUBLISHED_BYTES_TOTAL: &str = "fleetgate_mqtt_published_bytes_total";
/// MQTT sink: messages not confirmed, by reason (timeout, refused, queue_full, closed).
pub const MQTT_ERRORS_TOTAL: &str = "fleetgate_mqtt_errors_total";
/// MQTT sink: messages queued or sent and not yet confirmed.
pub const MQTT_IN_FLIGHT: &str = "fleetgate_mqtt_in_flight";
/// Webhook sink: messages the receivers answered 2xx to, by endpoint.
pub const WEBHOOK_DELIVERED_TOTAL: &str = "fleetgate_webhook_delivered_total";
/// Webhook sink: failed attempts that will be retried, by endpoint.
pub const WEBHOOK_RETRIED_TOTAL: &str = "fleetgate_webhook_retried_total";
/// Webhook sink: messages moved to the dead-letter file, by endpoint.
pub const WEBHOOK_DEAD_LETTERED_TOTAL: &str = "fleetgate_webhook_dead_lettered_total";
/// Webhook sink: messages in the outbox not yet delivered, by endpoint.
pub const WEBHOOK_OUTBOX_DEPTH: &str = "fleetgate_webhook_outbox_depth";
/// Webhook sink: outbox batches that could not be committed (their frames were not acked).
pub const WEBHOOK_OUTBOX_ERRORS_TOTAL: &str = "fleetgate_webhook_outbox_errors_total";
/// Tesla onboarding: vehicles per onboarding state.
pub const TESLA_VEHICLES: &str = "fleetgate_tesla_vehicles";
/// Tesla onboarding: Fleet API requests by endpoint and outcome.
pub const TESLA_API_REQUESTS_TOTAL: &str = "fleetgate_tesla_api_requests_total";
/// Tesla onboarding: access-token refreshes by outcome (ok, refused, failed).
pub const TESLA_TOKEN_REFRESHES_TOTAL: &str = "fleetgate_tesla_token_refreshes_total";
/// Tesla onboarding: onboarding state changes, by the state entered.
pub const TESLA_STATE_CHANGES_TOTAL: &str = "fleetgate_tesla_state_changes_total";
/// Tesla onboarding: signed configs pushed to vehicles.
pub const TESLA_CONFIGS_PUSHED_TOTAL: &str = "fleetgate_tesla_configs_pushed_total";

/// What kind of series a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// One metric family: its name, kind and HELP text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The exported name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The HELP line (what it counts, its labels, and where it is sampled).
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

/// Always 1, labelled with the version that runs (`version`).
pub const BUILD_INFO: &str = "fleetgate_build_info";

/// Every metric family fleetgate exports (process metrics aside), with its HELP text.
pub const FAMILIES: &[Family] = &[
    family(BUILD_INFO, Kind::Gauge, "Always 1; `version` is the fleetgate version that runs (join on it to see which instance runs what)"),
    family(CLUSTER_RULES_PARTITIONS, Kind::Gauge, "Cluster mode: V partitions whose vehicles' rules this instance owns"),
    family(CLUSTER_RULES_RESTORE_SECONDS, Kind::Gauge, "Cluster mode: seconds the last restore of assigned partitions' rule state took"),
    family(CLUSTER_RULES_FRAMES_TOTAL, Kind::Counter, "Cluster mode: V records processed by the rules and committed"),
    family(CLUSTER_RULES_TRANSACTIONS_TOTAL, Kind::Counter, "Cluster mode: rules transactions committed (events, rule state and offsets together)"),
    family(CLUSTER_RULES_COMMIT_SECONDS, Kind::Histogram, "Cluster mode: seconds per step of a rules transaction (apply: records applied, events and state produced; offsets: consumed offsets added; commit: records acknowledged and the transaction ended)"),
    family(CLUSTER_RULES_RESTARTS_TOTAL, Kind::Counter, "Cluster mode: rules processor restarts after a Kafka failure (the open transaction is aborted)"),
    family(CLUSTER_RULES_BAD_RECORDS_TOTAL, Kind::Counter, "Cluster mode: V or inputs records the rules could not read and skipped"),
    family(CLUSTER_RELAY_EVENTS_TOTAL, Kind::Counter, "Cluster mode: events the relay handed to the event sinks other than Kafka and every one confirmed"),
    family(CLUSTER_RELAY_RETRIES_TOTAL, Kind::Counter, "Cluster mode: times a relay partition started again from an event a sink failed"),
    family(CLUSTER_RELAY_PENDING, Kind::Gauge, "Cluster mode: events the relay handed to sinks and not yet confirmed"),
    family(CLUSTER_RELAY_BAD_RECORDS_TOTAL, Kind::Counter, "Cluster mode: records of the events topic the relay could not read and skipped"),
    family(CLUSTER_RULES_INPUTS_TOTAL, Kind::Counter, "Cluster mode: inputs other than frames (manual arrivals, Smartcar states) applied by the rules"),
    family(CLUSTER_RULES_PARTITIONS_RESTORED_TOTAL, Kind::Counter, "Cluster mode: partitions whose rule state this instance restored (only the partitions that moved here)"),
    family(CLUSTER_SHARED_APPLIED_TOTAL, Kind::Counter, "Cluster mode: shared-state records (sites, watches, vins) applied by this instance, by kind"),
    family(CLUSTER_SHARED_BAD_RECORDS_TOTAL, Kind::Counter, "Cluster mode: shared-state records that could not be read and were skipped, by kind"),
    family(CLUSTER_RESTORE_SECONDS, Kind::Gauge, "Cluster mode: seconds this instance took to restore the shared state at start"),
    family(CLUSTER_RESTORED, Kind::Gauge, "Cluster mode: 1 once the shared state is restored (readiness waits for it)"),
    family(CLUSTER_WRITE_SECONDS, Kind::Histogram, "Cluster mode: seconds an admin write took, transaction commit and read-back by this instance"),
    family(CLUSTER_TRANSACTION_ABORTS_TOTAL, Kind::Counter, "Cluster mode: admin write transactions aborted, by reason (produce, commit, read_back_timeout)"),
    family(CLUSTER_REPLICATION_LAG_SECONDS, Kind::Histogram, "Cluster mode: age of a shared-state record when this instance applied it (replication lag)"),
    family(RULE_STATE_WRITES_TOTAL, Kind::Counter, "Vehicle rule states written by the rule state store's commits (embedded journal, cluster changelog)"),
    family(RULE_STATE_COMMIT_SECONDS, Kind::Histogram, "Seconds one commit of the embedded rule journal took (one SQLite transaction of every changed vehicle)"),
    family(RULE_STATE_COMMIT_ERRORS_TOTAL, Kind::Counter, "Commits of the embedded rule journal that failed (reliable frames wait for the next one)"),
    family(CONNECTIONS_OPEN, Kind::Gauge, "Open vehicle websocket connections"),
    family(CONNECTIONS_TOTAL, Kind::Counter, "TCP connections at accept by result (accepted, over_capacity, ip_rate_limited)"),
    family(HANDSHAKES_TOTAL, Kind::Counter, "TLS handshakes by result: ok or the failure reason"),
    family(HANDSHAKES_IN_FLIGHT, Kind::Gauge, "TLS handshakes running now (bounded by limits.max_handshakes_in_flight)"),
    family(HANDSHAKE_ADMISSION_TOTAL, Kind::Counter, "Handshake admission by result: immediate, waited (queued for a slot), timeout (closed)"),
    family(IDENTITY_REFUSED_TOTAL, Kind::Counter, "Verified client certificates refused by the identity rules or the VIN lists, by reason"),
    family(PROXY_CLIENT_CERTS_TOTAL, Kind::Counter, "Proxy listener: forwarded client certificates by result"),
    family(HTTP_REQUESTS_TOTAL, Kind::Counter, "HTTP requests on the vehicle listener by outcome"),
    family(FRAMES_TOTAL, Kind::Counter, "Frames by topic and result (ok or why it was not dispatched)"),
    family(FRAME_BYTES_TOTAL, Kind::Counter, "Bytes of frames received by topic"),
    family(ACKS_TOTAL, Kind::Counter, "Acks sent to vehicles"),
    family(ERROR_REPLIES_TOTAL, Kind::Counter, "Error replies (incorrect message format) sent to vehicles"),
    family(SENDER_MISMATCH_TOTAL, Kind::Counter, "Frames whose sender_id differs from the certificate; dispatched under the certificate's VIN"),
    family(RATE_LIMITED_TOTAL, Kind::Counter, "Frames over the per-connection rate limit by topic (dropped only when rate_limit.enabled)"),
    family(DECODE_SECONDS, Kind::Histogram, "Seconds to decode and transform a frame (sampled: one frame in 8 per connection)"),
    family(SINK_PUBLISH_SECONDS, Kind::Histogram, "Seconds to hand a record to a sink, by sink (sampled: one frame in 8 per connection)"),
    family(SINK_RECORDS_TOTAL, Kind::Counter, "Records handed to sinks by sink, topic and result"),
    family(WS_CLOSED_TOTAL, Kind::Counter, "Closed vehicle connections by reason"),
    family(RELIABLE_ACKS_PENDING, Kind::Gauge, "Frames waiting for a delivery report before their ack"),
    family(RELIABLE_ACK_FAILED_TOTAL, Kind::Counter, "Frames never acked because their reliable delivery failed (the vehicle resends)"),
    family(KAFKA_CONNECTED, Kind::Gauge, "1 when a Kafka broker of the cluster is reachable, else 0"),
    family(KAFKA_QUEUE_MESSAGES, Kind::Gauge, "Records queued in the Kafka producer"),
    family(KAFKA_QUEUE_BYTES, Kind::Gauge, "Bytes queued in the Kafka producer"),
    family(KAFKA_DELIVERED_TOTAL, Kind::Counter, "Records Kafka confirmed, by topic"),
    family(KAFKA_DELIVERY_ERRORS_TOTAL, Kind::Counter, "Records Kafka failed to deliver after its retries, by topic"),
    family(KAFKA_PRODUCE_ERRORS_TOTAL, Kind::Counter, "Records the Kafka producer refused at once, by reason"),
    family(KAFKA_CLIENT_ERRORS_TOTAL, Kind::Counter, "Errors reported by the Kafka client, by reason (authentication, tls, authorization, transport, all_brokers_down, resolve, other)"),
    family(KAFKA_DELIVERY_SECONDS, Kind::Histogram, "Seconds from produce to Kafka's delivery report (every record)"),
    family(MQTT_CONNECTED, Kind::Gauge, "1 while the MQTT broker connection is up, else 0"),
    family(MQTT_PUBLISHED_TOTAL, Kind::Counter, "MQTT messages the broker confirmed (PUBACK/PUBCOMP; written, at QoS 0), by record_type (V, alerts, errors, connectivity, event)"),
    family(MQTT_PUBLISHED_BYTES_TOTAL, Kind::Counter, "JSON bytes handed to the MQTT client, by record_type"),
    family(MQTT_ERRORS_TOTAL, Kind::Counter, "MQTT messages not confirmed, by reason (timeout, refused, queue_full); their frames are not acked"),
    family(WEBHOOK_DELIVERED_TOTAL, Kind::Counter, "Webhook messages a receiver answered 2xx to, by endpoint"),
    family(WEBHOOK_RETRIED_TOTAL, Kind::Counter, "Webhook attempts that failed and will be retried with backoff, by endpoint"),
    family(WEBHOOK_DEAD_LETTERED_TOTAL, Kind::Counter, "Webhook messages moved to the dead-letter file after fleetgate.webhook.dead_letter_after_s, by endpoint"),
    family(WEBHOOK_OUTBOX_DEPTH, Kind::Gauge, "Webhook messages in the durable outbox not yet delivered, by endpoint"),
    family(WEBHOOK_OUTBOX_ERRORS_TOTAL, Kind::Counter, "Webhook outbox batches that could not be committed to disk (their frames were not acked)"),
    family(TESLA_VEHICLES, Kind::Gauge, "Tesla onboarding: vehicles per state (pending_key, configuring, synced, streaming, error, removing), as this instance sees the cluster"),
    family(TESLA_API_REQUESTS_TOTAL, Kind::Counter, "Tesla onboarding: Fleet API requests by endpoint and outcome (ok, client_error, server_error, rate_limited, network, malformed)"),
    family(TESLA_TOKEN_REFRESHES_TOTAL, Kind::Counter, "Tesla onboarding: access-token refreshes by outcome (ok, refused: a new grant is needed, failed: retried)"),
    family(TESLA_STATE_CHANGES_TOTAL, Kind::Counter, "Tesla onboarding: vehicle state changes made by this instance's reconciler, by the state entered"),
    family(TESLA_CONFIGS_PUSHED_TOTAL, Kind::Counter, "Tesla onboarding: signed telemetry configs pushed to Tesla by this instance"),
    family(MQTT_IN_FLIGHT, Kind::Gauge, "MQTT messages queued or sent and not yet confirmed"),
    family(SINK_REFUSED_TOTAL, Kind::Counter, "Records a sink refused at once, by sink (the frame is not acked)"),
    family(CHANGES_SUPPRESSED_DATUMS_TOTAL, Kind::Counter, "Datums not forwarded because their value did not change (changes_only)"),
    family(CHANGES_SUPPRESSED_RECORDS_TOTAL, Kind::Counter, "Records not forwarded because no datum changed (changes_only)"),
    family(EVENTS_TOTAL, Kind::Counter, "Events emitted, by type"),
    family(RULES_SECONDS, Kind::Histogram, "Seconds the rules took for one V frame (sampled: one frame in 8 per connection)"),
    family(SITES, Kind::Gauge, "Sites indexed"),
    family(WATCHES, Kind::Gauge, "Live watches"),
    family(VEHICLES_KNOWN, Kind::Gauge, "Vehicles in the vehicle table"),
];

/// What this process runs, so that only series that can move are registered at zero.
#[derive(Debug, Clone, Default)]
pub struct Registered<'a> {
    /// Sink names in use.
    pub sinks: Vec<&'a str>,
    /// The proxy listener is configured.
    pub proxy: bool,
    /// Every `reason` of closed vehicle connections (ingest's labels).
    pub close_reasons: Vec<&'static str>,
    /// Every `reason` of Kafka client errors (the Kafka sink's labels).
    pub kafka_client_error_reasons: Vec<&'static str>,
    /// The `topic` labels of Kafka deliveries: record topics routed to Kafka, and `events`.
    pub kafka_topics: Vec<&'static str>,
    /// The webhook receivers' names.
    pub webhook_endpoints: Vec<String>,
    /// Cluster mode is on.
    pub cluster: bool,
    /// Tesla onboarding (the reconciler) is on.
    pub tesla: bool,
}

/// MQTT `record_type` labels: the record topics and `event`.
const MQTT_RECORD_TYPES: &[&str] = &["V", "alerts", "errors", "connectivity", "event"];
/// MQTT error `reason` labels.
const MQTT_ERROR_REASONS: &[&str] = &["refused", "timeout", "queue_full"];
/// Cluster transaction abort `reason` labels.
const ABORT_REASONS: &[&str] = &["produce", "commit", "read_back_timeout"];
/// Fleet API request `outcome` labels.
const TESLA_API_OUTCOMES: &[&str] = &[
    "ok",
    "client_error",
    "server_error",
    "rate_limited",
    "network",
    "malformed",
];
/// Token refresh `outcome` labels.
const TOKEN_REFRESH_OUTCOMES: &[&str] = &["ok", "refused", "failed"];

/// Registers at zero every counter whose label set is known up front, so dashboards show 0
/// rather than "No data" before the first occurrence.
pub fn register_zeros(what: &Registered<'_>) {
    let zero = |c: Counter| c.increment(0);
    metrics::gauge!(HANDSHAKES_IN_FLIGHT).set(0.0);
    for result in ["accepted", "over_capacity", "ip_rate_limited"] {
        zero(metrics::counter!(CONNECTIONS_TOTAL, "result" => result));
    }
    for result in [
        "ok",
        "timeout",
        "eof",
        "reset",
        "no_client_cert",
        "expired",
        "not_yet_valid",
        "untrusted_issuer",
        "bad_certificate",
        "not_tls",
    ] {
        zero(metrics::counter!(HANDSHAKES_TOTAL, "result" => result));
    }
    for result in ["immediate", "waited", "timeout"] {
        zero(metrics::counter!(HANDSHAKE_ADMISSION_TOTAL, "result" => result));
    }
    for reason in [
        "no_client_cert",
        "unparsable_cert",
        "no_common_name",
        "issuer_not_allowed",
        "excluded_oid",
        "no_client_type_oid",
        "vin_blocked",
        "vin_not_allowed",
    ] {
        zero(metrics::counter!(IDENTITY_REFUSED_TOTAL, "reason" => reason));
    }
    for outcome in [
        "upgrade",
        "status",
        "bad_request",
        "timeout",
        "forbidden",
        "closed",
        "too_large",
        "not_websocket",
    ] {
        zero(metrics::counter!(HTTP_REQUESTS_TOTAL, "outcome" => outcome));
    }
    for topic in TOPIC_LABELS {
        for result in [
            "ok",
            "too_big",
            "malformed",
            "unknown_message_type",
            "unknown_topic",
            "bad_payload",
            "rate_limited",
            "not_routed",
        ] {
            zero(metrics::counter!(FRAMES_TOTAL, "topic" => topic, "result" => result));
        }
        zero(metrics::counter!(RATE_LIMITED_TOTAL, "topic" => topic));
    }
    for reason in &what.close_reasons {
        zero(metrics::counter!(WS_CLOSED_TOTAL, "reason" => *reason));
    }
    for kind in crate::event::EventType::ALL {
        zero(metrics::counter!(EVENTS_TOTAL, "type" => kind.as_str()));
    }
    for c in [
        ACKS_TOTAL,
        ERROR_REPLIES_TOTAL,
        SENDER_MISMATCH_TOTAL,
        RELIABLE_ACK_FAILED_TOTAL,
        CHANGES_SUPPRESSED_DATUMS_TOTAL,
        CHANGES_SUPPRESSED_RECORDS_TOTAL,
        RULE_STATE_WRITES_TOTAL,
        RULE_STATE_COMMIT_ERRORS_TOTAL,
    ] {
        zero(metrics::counter!(c));
    }
    for sink in &what.sinks {
        let sink = sink.to_string();
        zero(metrics::counter!(SINK_REFUSED_TOTAL, "sink" => sink.clone()));
        for topic in crate::wire::Topic::ALL {
            for result in ["ok", "error"] {
                zero(
                    metrics::counter!(SINK_RECORDS_TOTAL, "sink" => sink.clone(), "topic" => topic.as_str(), "result" => result),
                );
            }
        }
    }
    if what.sinks.contains(&"kafka") {
        for reason in ["queue_full", "too_large", "other"] {
            zero(metrics::counter!(KAFKA_PRODUCE_ERRORS_TOTAL, "reason" => reason));
        }
        for reason in &what.kafka_client_error_reasons {
            zero(metrics::counter!(KAFKA_CLIENT_ERRORS_TOTAL, "reason" => *reason));
        }
        for topic in &what.kafka_topics {
            zero(metrics::counter!(KAFKA_DELIVERED_TOTAL, "topic" => *topic));
            zero(metrics::counter!(KAFKA_DELIVERY_ERRORS_TOTAL, "topic" => *topic));
        }
    }
    if what.sinks.contains(&"mqtt") {
        metrics::gauge!(MQTT_IN_FLIGHT).set(0.0);
        for record_type in MQTT_RECORD_TYPES {
            zero(metrics::counter!(MQTT_PUBLISHED_TOTAL, "record_type" => *record_type));
            zero(metrics::counter!(MQTT_PUBLISHED_BYTES_TOTAL, "record_type" => *record_type));
        }
        for reason in MQTT_ERROR_REASONS {
            zero(metrics::counter!(MQTT_ERRORS_TOTAL, "reason" => *reason));
        }
    }
    if what.sinks.contains(&"webhook") {
        zero(metrics::counter!(WEBHOOK_OUTBOX_ERRORS_TOTAL));
        for name in &what.webhook_endpoints {
            for c in [
                WEBHOOK_DELIVERED_TOTAL,
                WEBHOOK_RETRIED_TOTAL,
                WEBHOOK_DEAD_LETTERED_TOTAL,
            ] {
                zero(metrics::counter!(c, "endpoint" => name.clone()));
            }
        }
    }
    if what.cluster {
        metrics::gauge!(CLUSTER_RESTORED).set(0.0);
        metrics::gauge!(CLUSTER_RULES_PARTITIONS).set(0.0);
        for kind in crate::cluster::shared_log::Kind::ALL {
            zero(metrics::counter!(CLUSTER_SHARED_APPLIED_TOTAL, "kind" => kind.as_str()));
            zero(metrics::counter!(CLUSTER_SHARED_BAD_RECORDS_TOTAL, "kind" => kind.as_str()));
        }
        for reason in ABORT_REASONS {
            zero(metrics::counter!(CLUSTER_TRANSACTION_ABORTS_TOTAL, "reason" => *reason));
        }
        for c in [
            CLUSTER_RULES_FRAMES_TOTAL,
            CLUSTER_RULES_TRANSACTIONS_TOTAL,
            CLUSTER_RULES_RESTARTS_TOTAL,
            CLUSTER_RULES_INPUTS_TOTAL,
            CLUSTER_RULES_BAD_RECORDS_TOTAL,
        ] {
            zero(metrics::counter!(c));
        }
        if what.sinks.iter().any(|s| *s != "kafka") {
            metrics::gauge!(CLUSTER_RELAY_PENDING).set(0.0);
            for c in [
                CLUSTER_RELAY_EVENTS_TOTAL,
                CLUSTER_RELAY_RETRIES_TOTAL,
                CLUSTER_RELAY_BAD_RECORDS_TOTAL,
            ] {
                zero(metrics::counter!(c));
            }
        }
    }
    if what.tesla {
        zero(metrics::counter!(TESLA_CONFIGS_PUSHED_TOTAL));
        for state in crate::tesla::state::OnboardingState::ALL {
            zero(metrics::counter!(TESLA_STATE_CHANGES_TOTAL, "state" => state.as_str()));
        }
        for outcome in TOKEN_REFRESH_OUTCOMES {
            zero(metrics::counter!(TESLA_TOKEN_REFRESHES_TOTAL, "outcome" => *outcome));
        }
        for endpoint in crate::tesla::fleet_api::Endpoint::ALL {
            for outcome in TESLA_API_OUTCOMES {
                zero(
                    metrics::counter!(TESLA_API_REQUESTS_TOTAL, "endpoint" => endpoint.as_str(), "outcome" => *outcome),
                );
            }
        }
    }
    if what.proxy {
        for result in [
            "ok",
            "untrusted_proxy",
            "no_client_cert",
            "malformed_header",
            "expired",
            "untrusted_issuer",
        ] {
            zero(metrics::counter!(PROXY_CLIENT_CERTS_TOTAL, "result" => result));
        }
    }
}

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
                .set_buckets_for_metric(
                    Matcher::Full(CLUSTER_RULES_COMMIT_SECONDS.into()),
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
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => describe_counter!(f.name, f.help),
            Kind::Gauge => describe_gauge!(f.name, f.help),
            Kind::Histogram => describe_histogram!(f.name, metrics::Unit::Seconds, f.help),
        }
    }
    process_collector().describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// CPU, memory, open files and threads of this process (`process_*`), collected per scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Renders the current metrics in the Prometheus text format.
pub fn render() -> String {
    let handle = install();
    process_collector().collect();
    with_precise_cpu_seconds(handle.render())
}

/// `process_cpu_seconds_total` with its fraction: the `metrics` crate's counters are whole
/// numbers, so metrics-process renders whole seconds, which makes `rate()` over a few minutes
/// of a mostly idle process a staircase. The sample line is rewritten with the kernel's
/// value (clock-tick resolution); its HELP and TYPE (counter) stay.
fn with_precise_cpu_seconds(mut text: String) -> String {
    const SAMPLE: &str = "\nprocess_cpu_seconds_total ";
    let Some(seconds) = cpu_seconds() else {
        return text;
    };
    if let Some(start) = text.find(SAMPLE).map(|i| i + SAMPLE.len()) {
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        text.replace_range(start..end, &format!("{seconds:.2}"));
    }
    text
}

/// User and system CPU time of this process so far, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Serves `GET /metrics` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { render() }));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
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
    /// `fleetgate_sink_publish_seconds` of each sink in use, registered up front (a sink that
    /// is not configured has no series).
    sink_publish: Vec<(String, Histogram)>,
}

/// Topic label values (the fifth is every topic without a known schema).
pub const TOPIC_LABELS: [&str; 5] = ["V", "alerts", "errors", "connectivity", "other"];

impl FrameMetrics {
    /// Registers the handles (call after [`install`]); `sinks` are the sink names in use.
    pub fn new(sinks: &[&str]) -> Self {
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
            sink_publish: sinks
                .iter()
                .map(|s| {
                    let h = metrics::histogram!(SINK_PUBLISH_SECONDS, "sink" => s.to_string());
                    (s.to_string(), h)
                })
                .collect(),
        }
    }

    /// Records how long a sink's `publish` took (a registry lookup only for a sink not named
    /// at start).
    pub fn sink_published(&self, sink: &'static str, seconds: f64) {
        match self.sink_publish.iter().find(|(name, _)| name == sink) {
            Some((_, h)) => h.record(seconds),
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
