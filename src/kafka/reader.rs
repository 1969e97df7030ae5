//! Plain readers of whole topics (or some partitions): manual assignment from the beginning,
//! no group membership, committed records only, and end-of-partition events, which is how a
//! restore knows it has read everything. Compacted state topics are read this way.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use super::{err, Error};

/// The readers' client context: end-of-partition is how restore is detected, not an error.
pub struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(error = %error, reason, "topic reader: Kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// A plain reader's consumer.
pub type ReaderConsumer = BaseConsumer<ReaderContext>;

/// A consumer of `topic` from the beginning — every partition, or only `partitions` — with
/// manual assignment (no group membership; `group_id` only names it), committed records only,
/// and end-of-partition events (how restore knows it is done).
pub fn topic_reader(
    properties: &serde_json::Map<String, Value>,
    group_id: &str,
    topic: &str,
    partitions: Option<&[i32]>,
    timeout: Duration,
) -> Result<ReaderConsumer, Error> {
    let mut config = super::connection_config(properties)?;
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10");
    let consumer: ReaderConsumer = config
        .create_with_context(ReaderContext)
        .map_err(err("creating a reader"))?;
    let mut assignment = TopicPartitionList::new();
    match partitions {
        Some(list) => {
            for p in list {
                assignment
                    .add_partition_offset(topic, *p, Offset::Beginning)
                    .map_err(err("assigning a partition"))?;
            }
        }
        None => {
            // a topic created a moment ago may not be in the metadata yet: ask again until it is
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let metadata = consumer
                    .fetch_metadata(Some(topic), timeout)
                    .map_err(err("reading a topic's metadata"))?;
                for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
                    for p in t.partitions() {
                        assignment
                            .add_partition_offset(topic, p.id(), Offset::Beginning)
                            .map_err(err("assigning a partition"))?;
                    }
                }
                if assignment.count() > 0 {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Topic {
                        topic: topic.to_owned(),
                        problem: format!("has no partitions in the metadata after {timeout:?}"),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    consumer
        .assign(&assignment)
        .map_err(err("assigning partitions"))?;
    Ok(consumer)
}
