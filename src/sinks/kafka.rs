//! The `kafka` sink on rdkafka (librdkafka): topic `{namespace}_{topic}`, key = VIN, value =
//! transformed protobuf (or proto3 JSON with `transmit_decoded_records`), the reference
//! server's seven headers. Delivery reports complete the records' tickets, which is what makes
//! reliable acks reliable. librdkafka's statistics feed the connected / queue gauges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Statistics};
use serde_json::Value;

use super::{DeliveryTicket, PublishError, Readiness, Sink, SinkRecord};
use crate::metrics as m;
use crate::rules::event::Event;
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

/// Why the Kafka producer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka refused a property.
    #[error("kafka: librdkafka refused the configuration: {0} (check the `kafka` section's keys against librdkafka's CONFIGURATION.md)")]
    Config(#[from] KafkaError),
    /// A property value is not a string, number or boolean.
    #[error("kafka.{0}: value must be a string, number or boolean")]
    Value(String),
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
}

impl ClientContext for KafkaContext {
    fn stats(&self, stats: Statistics) {
        // Brokers learned from metadata have a node id; bootstrap placeholders have -1.
        let up = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        let was = self.connected.swap(up, Ordering::Relaxed);
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
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.connected.store(false, Ordering::Relaxed);
            metrics::gauge!(m::KAFKA_CONNECTED).set(0.0);
        }
        metrics::counter!(m::KAFKA_CLIENT_ERRORS_TOTAL).increment(1);
        tracing::warn!(error = %error, reason, "kafka client error");
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
    Ok(config)
}

impl KafkaSink {
    /// Creates the producer (does not wait for the cluster: records queue until it answers).
    pub fn new(
        properties: &serde_json::Map<String, Value>,
        namespace: &str,
        events_topic: &str,
        transmit_decoded_records: bool,
    ) -> Result<KafkaSink, KafkaSetupError> {
        let config = client_config(properties)?;
        let producer = config.create_with_context(KafkaContext {
            connected: AtomicBool::new(false),
            seen_stats: AtomicBool::new(false),
        })?;
        metrics::gauge!(m::KAFKA_CONNECTED).set(0.0);
        Ok(KafkaSink {
            producer,
            topic_names: Topic::ALL.map(|t| topic_name(namespace, t.as_str())),
            events_topic: events_topic.to_owned(),
            transmit_decoded_records,
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
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "vin",
                value: Some(event.vin.as_str()),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(event.id.as_str()),
            })
            .insert(Header {
                key: "ce_type",
                value: Some(event.kind.as_str()),
            });
        let delivery = Box::new(Delivery {
            ticket,
            label: "events",
            started: Instant::now(),
        });
        let message = BaseRecord::with_opaque_to(&self.events_topic, delivery)
            .key(event.vin.as_str())
            .payload(json)
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
            Readiness::Ready
        } else if !ctx.seen_stats.load(Ordering::Relaxed) {
            Readiness::NotReady("kafka: waiting for the first contact with the cluster".into())
        } else {
            Readiness::NotReady("kafka: no broker reachable".into())
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
