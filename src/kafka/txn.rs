//! Transactional producers: their configuration (one `transactional.id` per cluster,
//! instance and role, so a restarted instance fences its previous life), the consumer group
//! metadata that fences zombie owners (KIP-447), and producing with backpressure.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord};
use serde_json::Value;

use super::{err, Error};

/// A transactional producer's configuration: the `kafka` properties, the transactional id
/// `fleetgate-{namespace}-{cluster}-{instance}-{role}` (one per instance and role, so a
/// restarted instance fences its previous life), idempotence and `acks=all`.
pub fn transactional_config(
    properties: &serde_json::Map<String, Value>,
    ids: (&str, &str, &str),
    role: &str,
) -> Result<rdkafka::ClientConfig, Error> {
    let (namespace, cluster, instance) = ids;
    let mut config = super::client_config(properties)?;
    config
        .set(
            "transactional.id",
            format!("fleetgate-{namespace}-{cluster}-{instance}-{role}"),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .remove("statistics.interval.ms");
    Ok(config)
}

/// The consumer group's metadata, for `send_offsets_to_transaction`.
pub fn group_metadata<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
) -> Result<rdkafka::consumer::ConsumerGroupMetadata, Error> {
    consumer.group_metadata().ok_or_else(|| Error::Kafka {
        what: "reading the group metadata",
        error: "not a group member".into(),
    })
}

/// Sends a record, waiting for queue room (polling delivery reports) while the producer is
/// full, up to `patience`.
pub fn send_with_room<C: rdkafka::producer::ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, str, [u8]>,
    patience: Duration,
) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        what: "room in the producer queue",
                        after: patience,
                    });
                }
                record = r;
                producer.poll(Duration::from_millis(20));
            }
            Err((e, _)) => return Err(err("producing a record")(e)),
        }
    }
}
