//! The `kafka` sink on rdkafka (librdkafka): topic `{namespace}_{topic}`, key = VIN, value =
//! transformed protobuf (or proto3 JSON with `transmit_decoded_records`), the reference
//! server's seven headers. Delivery reports complete the records' tickets, which is what makes
//! reliable acks reliable. librdkafka's statistics feed the connected / queue gauges.
//!
//! Built with TLS (vendored OpenSSL), SASL PLAIN / SCRAM / OAUTHBEARER (OIDC through a static
//! libcurl) and every compression codec, so `security.protocol: SASL_SSL` reaches a managed
//! cluster. Events follow the CloudEvents Kafka protocol binding, structured or binary mode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Statistics};
use serde_json::Value;

use super::{DeliveryTicket, PublishError, Readiness, Sink, SinkRecord};
use crate::event::Event;
use crate::metrics as m;
use crate::wire::json::payload_to_json_bytes;
use crate::wire::Topic;

/// Producer settings fleetgate adds when the user's `kafka` object does not set them.
pub const SAFE_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // 1 ms, not librdkafka's 5: reliable acks wait for delivery (docs/benchmarks.md)
    ("linger.ms", "1"),
    ("compression.type", "lz4"),
    ("statistics.interval.ms", "1000"),
    ("queue.buffering.max.kbytes", "131072"),
];

/// librdkafka properties whose values are secrets: never logged, never shown in errors.
pub const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// Environment variable that supplies `sasl.password` (wins over the file and the config).
pub const SASL_PASSWORD_ENV: &str = "FLEETGATE_KAFKA_SASL_PASSWORD";

/// How events are laid out on Kafka (the CloudEvents Kafka protocol binding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventContentMode {
    /// The whole CloudEvent as the value, `content-type: application/cloudevents+json`.
    #[default]
    Structured,
    /// `data` as the value, every attribute as a `ce_` header, `content-type` = datacontenttype.
    Binary,
}

/// Why the Kafka producer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka refused a property.
    #[error("kafka: librdkafka refused the configuration: {0} (check the `kafka` section's keys against librdkafka's CONFIGURATION.md)")]
    Config(#[from] KafkaError),
    /// A property value is not a string, number or boolean.
    #[error("kafka.{0}: value must be a string, number or boolean")]
    Value(String),
    /// The SASL password file could not be read.
    #[error("fleetgate.kafka.sasl_password_file: cannot read {path}: {detail}")]
    PasswordFile {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

/// What the delivery callback needs for one record (librdkafka's per-message opaque).
pub struct Delivery {
    ticket: DeliveryTicket,
    label: &'static str,
    started: Instant,
}

/// librdkafka callbacks: delivery reports, errors and statistics.
pub struct KafkaContext {
    connected: AtomicBool,
    seen_stats: AtomicBool,
    /// The last client error (authentication, TLS, transport), shown by the readiness check.
    last_error: Mutex<Option<String>>,
}

/// Bounded metric label of a client error.
fn client_error_reason(code: Option<RDKafkaErrorCode>) -> &'static str {
    match code {
        Some(RDKafkaErrorCode::Authentication)
        | Some(RDKafkaErrorCode::SaslAuthenticationFailed) => "authentication",
        Some(RDKafkaErrorCode::SSL) => "tls",
        Some(RDKafkaErrorCode::AllBrokersDown) => "all_brokers_down",
        Some(RDKafkaErrorCode::BrokerTransportFailure) => "transport",
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
        | Some(RDKafkaErrorCode::ClusterAuthorizationFailed) => "authorization",
        Some(RDKafkaErrorCode::Resolve) => "resolve",
        _ => "other",
    }
}

/// Every `reason` label of `fleetgate_kafka_client_errors_total`.
pub const CLIENT_ERROR_REASONS: &[&str] = &[
    "authentication",
    "tls",
    "all_brokers_down",
    "transport",
    "authorization",
    "resolve",
    "other",
];

impl ClientContext for KafkaContext {
    fn stats(&self, stats: Statistics) {
        // Brokers learned from metadata have a node id; bootstrap placeholders have -1.
        let up = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        let was = self.connected.swap(up, Ordering::Relaxed);
        if up {
            if let Ok(mut last) = self.last_error.lock() {
                *last = None;
            }
        }
        self.seen_stats.store(true, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("kafka: connected to the cluster");
            } else {
                tracing::warn!("kafka: no broker reachable; records queue in the producer and reliable acks wait");
            }
        }
        metrics::gauge!(m::KAFKA_CONNECTED).set(if up { 1.0 } else { 0.0 });
        metrics::gauge!(m::KAFKA_QUEUE_MESSAGES).set(stats.msg_cnt as f64);
        metrics::gauge!(m::KAFKA_QUEUE_BYTES).set(stats.msg_size as f64);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if matches!(code, Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.connected.store(false, Ordering::Relaxed);
            metrics::gauge!(m::KAFKA_CONNECTED).set(0.0);
        }
        let label = client_error_reason(code);
        metrics::counter!(m::KAFKA_CLIENT_ERRORS_TOTAL, "reason" => label).increment(1);
        // "all brokers down" follows the real cause; keep the cause for the readiness check
        if label != "all_brokers_down"
            || self.last_error.lock().map(|e| e.is_none()).unwrap_or(true)
        {
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(format!("{label}: {reason}"));
            }
        }
        let hint = match label {
            "authentication" => " (check sasl.mechanisms, sasl.username and the password)",
            "tls" => " (check ssl.ca.location: the broker's certificate must chain to it)",
            "authorization" => " (the ACLs do not allow this user to write the topic)",
            _ => "",
        };
        tracing::warn!(error = %error, reason, "kafka client error{hint}");
    }
}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Self::DeliveryOpaque) {
        let topic = delivery.label;
        match result {
            Ok(_) => {
                metrics::counter!(m::KAFKA_DELIVERED_TOTAL, "topic" => topic).increment(1);
                metrics::histogram!(m::KAFKA_DELIVERY_SECONDS)
                    .record(delivery.started.elapsed().as_secs_f64());
                delivery.ticket.complete(true);
            }
            Err((error, _)) => {
                metrics::counter!(m::KAFKA_DELIVERY_ERRORS_TOTAL, "topic" => topic).increment(1);
                tracing::warn!(error = %error, topic, "kafka delivery failed");
                delivery.ticket.complete(false);
            }
        }
    }
}

/// The Kafka sink.
pub struct KafkaSink {
    producer: ThreadedProducer<KafkaContext>,
    topic_names: [String; 4],
    events_topic: String,
    transmit_decoded_records: bool,
    event_mode: EventContentMode,
}

fn property_value(key: &str, value: &Value) -> Result<String, KafkaSetupError> {
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            (_, _, Some(f)) => f.to_string(),
            _ => return Err(KafkaSetupError::Value(key.to_owned())),
        },
        _ => return Err(KafkaSetupError::Value(key.to_owned())),
    })
}

/// The producer configuration: the user's properties unchanged, plus [`SAFE_DEFAULTS`] for
/// the keys they did not set.
pub fn client_config(
    properties: &serde_json::Map<String, Value>,
) -> Result<ClientConfig, KafkaSetupError> {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        config.set(key, property_value(key, value)?);
    }
    for (key, value) in SAFE_DEFAULTS {
        if !properties.contains_key(*key) {
            config.set(*key, *value);
        }
    }
    with_ca_probe(&mut config, properties);
    Ok(config)
}

/// Prefixes of the librdkafka properties that say how to reach and authenticate to the
/// cluster (not how to produce): what consumers and admin clients take from `kafka`.
const CONNECTION_PREFIXES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "security.protocol",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl",
    "client.id",
    "client.dns.lookup",
    "socket.",
    "broker.",
    "api.version",
    "reconnect.",
    "allow.auto.create.topics",
    "https.",
    "enable.sasl",
];

/// A client configuration with only the connection and security properties of `kafka`
/// (for consumers and admin clients, which refuse or warn about producer properties).
pub fn connection_config(
    properties: &serde_json::Map<String, Value>,
) -> Result<ClientConfig, KafkaSetupError> {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        if CONNECTION_PREFIXES.iter().any(|p| key.starts_with(p)) {
            config.set(key, property_value(key, value)?);
        }
    }
    with_ca_probe(&mut config, properties);
    Ok(config)
}

/// OpenSSL is built in, so its compiled-in CA path is not the system's: find the system
/// bundle unless the user names one.
fn with_ca_probe(config: &mut ClientConfig, properties: &serde_json::Map<String, Value>) {
    let tls = properties
        .get("security.protocol")
        .and_then(Value::as_str)
        .is_some_and(|p| p.eq_ignore_ascii_case("ssl") || p.eq_ignore_ascii_case("sasl_ssl"));
    if tls && !properties.contains_key("ssl.ca.location") && !properties.contains_key("ssl.ca.pem")
    {
        config.set("ssl.ca.location", "probe");
    }
}

/// The user's properties with the SASL password filled in from the environment
/// ([`SASL_PASSWORD_ENV`]) or `fleetgate.kafka.sasl_password_file`, in that order.
pub fn with_secrets(
    properties: &serde_json::Map<String, Value>,
    extras: &crate::config::KafkaExtrasConfig,
    base: &std::path::Path,
) -> Result<serde_json::Map<String, Value>, KafkaSetupError> {
    let mut properties = properties.clone();
    if let Some(password) = std::env::var(SASL_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty())
    {
        properties.insert("sasl.password".into(), password.into());
    } else if let Some(file) = &extras.sasl_password_file {
        let path = crate::config::Config::resolve(base, file);
        let text = std::fs::read_to_string(&path).map_err(|e| KafkaSetupError::PasswordFile {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(KafkaSetupError::PasswordFile {
                path: path.display().to_string(),
                detail: "the file is empty".into(),
            });
        }
        properties.insert("sasl.password".into(), password.into());
    }
    Ok(properties)
}

/// Checks the `kafka` section as librdkafka would, without connecting: every property is set on
/// a native configuration (unknown keys, values this build does not support, such as a
/// compression codec), and a SASL mechanism that needs a password has one. Returns
/// `(key, problem)` pairs; secrets are never part of a message.
pub fn check_properties(
    properties: &serde_json::Map<String, Value>,
    extras: &crate::config::KafkaExtrasConfig,
    base: &std::path::Path,
    check_files: bool,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let properties = if !check_files && extras.sasl_password_file.is_some() {
        // the file is read on the machine the config is for
        let mut p = properties.clone();
        p.insert(
            "sasl.password".into(),
            "(from fleetgate.kafka.sasl_password_file)".into(),
        );
        p
    } else {
        match with_secrets(properties, extras, base) {
            Ok(p) => p,
            Err(e) => {
                problems.push(("fleetgate.kafka.sasl_password_file".into(), e.to_string()));
                return problems;
            }
        }
    };
    for (key, value) in &properties {
        let value = match property_value(key, value) {
            Ok(v) => v,
            Err(e) => {
                problems.push((format!("kafka.{key}"), e.to_string()));
                continue;
            }
        };
        let mut one = ClientConfig::new();
        one.set(key, &value);
        if let Err(e) = one.create_native_config() {
            let shown = if SECRET_PROPERTIES.contains(&key.as_str()) {
                "(secret)".to_owned()
            } else {
                format!("`{value}`")
            };
            let detail = e.to_string().replace(&value, "…");
            problems.push((
                format!("kafka.{key}"),
                format!("librdkafka refuses {shown}: {detail}"),
            ));
        }
    }
    let mechanism = properties
        .get("sasl.mechanisms")
        .or_else(|| properties.get("sasl.mechanism"))
        .and_then(Value::as_str)
        .unwrap_or("GSSAPI")
        .to_ascii_uppercase();
    let sasl = properties
        .get("security.protocol")
        .and_then(Value::as_str)
        .is_some_and(|p| p.to_ascii_uppercase().starts_with("SASL"));
    if sasl && (mechanism == "PLAIN" || mechanism.starts_with("SCRAM")) {
        if !properties.contains_key("sasl.username") {
            problems.push((
                "kafka.sasl.username".into(),
                format!("missing: SASL {mechanism} needs a user name"),
            ));
        }
        if !properties.contains_key("sasl.password") {
            problems.push((
                "kafka.sasl.password".into(),
                format!("missing: SASL {mechanism} needs a password: set {SASL_PASSWORD_ENV}, fleetgate.kafka.sasl_password_file, or kafka.sasl.password"),
            ));
        }
    }
    problems
}

impl KafkaSink {
    /// Creates the producer (does not wait for the cluster: records queue until it answers).
    pub fn new(
        properties: &serde_json::Map<String, Value>,
        namespace: &str,
        events_topic: &str,
        transmit_decoded_records: bool,
        event_mode: EventContentMode,
    ) -> Result<KafkaSink, KafkaSetupError> {
        let config = client_config(properties)?;
        let producer = config.create_with_context(KafkaContext {
            connected: AtomicBool::new(false),
            seen_stats: AtomicBool::new(false),
            last_error: Mutex::new(None),
        })?;
        metrics::gauge!(m::KAFKA_CONNECTED).set(0.0);
        Ok(KafkaSink {
            producer,
            topic_names: Topic::ALL.map(|t| topic_name(namespace, t.as_str())),
            events_topic: events_topic.to_owned(),
            transmit_decoded_records,
            event_mode,
        })
    }

    fn topic_index(topic: Topic) -> usize {
        Topic::ALL.iter().position(|t| *t == topic).unwrap_or(0)
    }

    /// Records queued in librdkafka, not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// `{namespace}_{topic}`, or the bare topic when there is no namespace.
pub fn topic_name(namespace: &str, topic: &str) -> String {
    if namespace.is_empty() {
        topic.to_owned()
    } else {
        format!("{namespace}_{topic}")
    }
}

impl KafkaSink {
    fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
        &self,
        message: BaseRecord<'_, K, P, Box<Delivery>>,
    ) -> Result<(), PublishError> {
        match self.producer.send(message) {
            Ok(()) => Ok(()),
            Err((error, message)) => {
                // The ticket inside is dropped here: a failed delivery, never an ack.
                drop(message);
                let reason = match error.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::QueueFull) => "queue_full",
                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => "too_large",
                    _ => "other",
                };
                metrics::counter!(m::KAFKA_PRODUCE_ERRORS_TOTAL, "reason" => reason).increment(1);
                Err(PublishError::Rejected(format!(
                    "kafka producer refused the record: {error}"
                )))
            }
        }
    }
}

/// An event as a Kafka record (the CloudEvents Kafka binding): the value and the headers for
/// `mode`, keyed by the caller with the VIN. Shared by the sink and cluster mode's rules.
pub fn event_message<'a>(
    event: &Event,
    json: &'a [u8],
    mode: EventContentMode,
) -> Result<(std::borrow::Cow<'a, [u8]>, OwnedHeaders), PublishError> {
    let vin = Header {
        key: "vin",
        value: Some(event.vin.as_str()),
    };
    match mode {
        EventContentMode::Structured => {
            // the whole event in the value; no ce_ headers (a partial set reads as binary)
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "content-type",
                    value: Some(crate::event::STRUCTURED_CONTENT_TYPE),
                })
                .insert(vin);
            Ok((std::borrow::Cow::Borrowed(json), headers))
        }
        EventContentMode::Binary => {
            let data =
                serde_json::to_vec(&event.data).map_err(|e| PublishError::Encode(e.to_string()))?;
            let time = event.time_rfc3339();
            let mut headers = OwnedHeaders::new_with_capacity(8);
            for (key, value) in [
                ("ce_specversion", crate::event::SPEC_VERSION),
                ("ce_id", event.id.as_str()),
                ("ce_source", crate::event::SOURCE),
                ("ce_type", event.kind.as_str()),
                ("ce_subject", event.vin.as_str()),
                ("ce_time", time.as_str()),
                ("content-type", crate::event::DATA_CONTENT_TYPE),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            Ok((std::borrow::Cow::Owned(data), headers.insert(vin)))
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn publish(&self, record: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError> {
        let json;
        let value: &[u8] = if self.transmit_decoded_records {
            json = payload_to_json_bytes(record.topic, record.payload)
                .map_err(|e| PublishError::Encode(e.to_string()))?;
            &json
        } else {
            record.payload
        };
        let received = record.received_at_ms.to_string();
        let timestamp = (u64::from(record.created_at) * 1000).to_string();
        let headers = OwnedHeaders::new_with_capacity(7)
            .insert(Header {
                key: "vin",
                value: Some(record.vin),
            })
            .insert(Header {
                key: "receivedat",
                value: Some(&received),
            })
            .insert(Header {
                key: "timestamp",
                value: Some(&timestamp),
            })
            .insert(Header {
                key: "txid",
                value: Some(record.txid),
            })
            .insert(Header {
                key: "txtype",
                value: Some(record.topic.as_str()),
            })
            .insert(Header {
                key: "version",
                value: Some("0"),
            })
            .insert(Header {
                key: "device_client_version",
                value: Some(record.device_client_version),
            });
        let delivery = Box::new(Delivery {
            ticket,
            label: record.topic.as_str(),
            started: Instant::now(),
        });
        let message = BaseRecord::with_opaque_to(
            &self.topic_names[Self::topic_index(record.topic)],
            delivery,
        )
        .key(record.vin)
        .payload(value)
        .headers(headers);
        self.send(message)
    }

    fn publish_event(
        &self,
        event: &Event,
        json: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        let delivery = Box::new(Delivery {
            ticket,
            label: "events",
            started: Instant::now(),
        });
        let (value, headers) = event_message(event, json, self.event_mode)?;
        let message = BaseRecord::with_opaque_to(&self.events_topic, delivery)
            .key(event.vin.as_str())
            .payload(value.as_ref())
            .headers(headers);
        self.send(message)
    }

    fn flush(&self, timeout: Duration) -> usize {
        let _ = self.producer.flush(timeout);
        self.producer.in_flight_count().max(0) as usize
    }

    fn readiness(&self) -> Readiness {
        let ctx = self.producer.context();
        if ctx.connected.load(Ordering::Relaxed) {
            return Readiness::Ready;
        }
        let last = ctx
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        if !ctx.seen_stats.load(Ordering::Relaxed) {
            Readiness::NotReady(format!(
                "kafka: waiting for the first contact with the cluster{last}"
            ))
        } else {
            Readiness::NotReady(format!("kafka: no broker reachable{last}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_win_and_safe_defaults_fill_the_rest() {
        let props: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"bootstrap.servers": "k:9092", "acks": "1", "queue.buffering.max.messages": 1000000, "enable.ssl.certificate.verification": false}"#,
        )
        .unwrap();
        let c = client_config(&props).unwrap();
        assert_eq!(c.get("acks"), Some("1"));
        assert_eq!(c.get("queue.buffering.max.messages"), Some("1000000"));
        assert_eq!(c.get("enable.ssl.certificate.verification"), Some("false"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("bootstrap.servers"), Some("k:9092"));
    }

    #[test]
    fn topic_names_follow_the_namespace() {
        assert_eq!(topic_name("tesla_telemetry", "V"), "tesla_telemetry_V");
        assert_eq!(topic_name("", "alerts"), "alerts");
    }
}
