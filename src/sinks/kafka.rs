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

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Statistics};
use serde_json::Value;

use super::{DeliveryTicket, PublishError, Readiness, Sink, SinkRecord};
use crate::event::Event;
use crate::kafka::cloudevents::{event_message, EventContentMode};
use crate::kafka::{client_config, topic_name, SetupError};
use crate::metrics as m;
use crate::wire::json::payload_to_json_bytes;
use crate::wire::Topic;

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

impl KafkaSink {
    /// Creates the producer (does not wait for the cluster: records queue until it answers).
    pub fn new(
        properties: &serde_json::Map<String, Value>,
        namespace: &str,
        events_topic: &str,
        transmit_decoded_records: bool,
        event_mode: EventContentMode,
    ) -> Result<KafkaSink, SetupError> {
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
        let (value, headers) = event_message(event, json, self.event_mode)
            .map_err(|e| PublishError::Encode(e.to_string()))?;
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
