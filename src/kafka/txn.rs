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
/// restarted instance fences its previous life), idempotence, `acks=all`, and
/// `retry.backoff.ms` 20 unless the properties set it.
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
    // Right after a commit the broker is still writing the transaction's markers and answers
    // the next transaction's AddOffsetsToTxn with CONCURRENT_TRANSACTIONS; librdkafka retries
    // after `retry.backoff.ms`, 100 ms by default (Kafka's Java producer: 20 ms).
    if !properties.contains_key("retry.backoff.ms") {
        config.set("retry.backoff.ms", "20");
    }
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

/// Commits the producer's open transaction within `timeout`, after waiting for its records'
/// delivery.
///
/// rust-rdkafka's `commit_transaction` flushes first, and its flush serves the producer's
/// events in 100 ms polls that always run to their end: a transaction with records still
/// outstanding took 100 ms or more to commit whatever the broker did (the constant ~105 ms of
/// `fleetgate_cluster_rules_commit_seconds{step="commit"}`). Once nothing is outstanding its
/// flush returns at once and the commit is the `EndTxn` round trip alone.
///
/// The wait sleeps in 1 ms steps and serves reports without blocking: a timed
/// `BaseProducer::poll` busy-waits (see [`super::whole_ms`]), which made this wait a spin of a
/// whole core. Meant for producers with `delivery.report.only.error`, whose delivered records
/// leave the in-flight count without a report to serve.
pub fn commit<C: rdkafka::producer::ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    use rdkafka::producer::Producer;
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
        // a failed record's report, if any, is served here (it also fails the commit)
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.commit_transaction(deadline.saturating_duration_since(std::time::Instant::now()))
}
