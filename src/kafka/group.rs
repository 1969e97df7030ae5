//! Consumer groups as fleetgate runs them (the rules and the relay): where a partition starts
//! the first time the group sees it, the heartbeat, and assignments that follow the group's
//! rebalance protocol (incremental when cooperative).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::{err, Error};

/// The group heartbeat for a session timeout: a third of it (Kafka's rule), at most 1 s — a
/// cooperative rebalance takes two rounds, and the second starts at a member's next
/// heartbeat, so the heartbeat bounds how long a moving partition waits between them.
pub fn heartbeat_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 3).clamp(Duration::from_millis(300), Duration::from_secs(1))
}

/// Where each partition of `wanted` starts for the consumer's group: its committed offset,
/// else the topic's low watermark when `earliest(topic)`, its high one otherwise. Returns
/// `wanted` with every offset set, and the partitions the group had never committed with the
/// offsets resolved for them — to be committed at once, so that a member dying before its
/// first commit cannot make the next one skip records.
pub fn start_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    wanted: &TopicPartitionList,
    earliest: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Result<(TopicPartitionList, TopicPartitionList), Error> {
    let mut starts = TopicPartitionList::new();
    let mut first = TopicPartitionList::new();
    if wanted.count() == 0 {
        return Ok((starts, first));
    }
    let committed = consumer
        .committed_offsets(wanted.clone(), timeout)
        .map_err(err("reading the committed offsets"))?;
    for e in committed.elements() {
        let start = match e.offset() {
            Offset::Offset(o) => o,
            _ => {
                let (low, high) = consumer
                    .fetch_watermarks(e.topic(), e.partition(), timeout)
                    .map_err(err("reading the watermarks"))?;
                let start = if earliest(e.topic()) { low } else { high };
                first
                    .add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))
                    .map_err(err("building the start offsets"))?;
                start
            }
        };
        starts
            .add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))
            .map_err(err("building the start offsets"))?;
    }
    Ok((starts, first))
}

/// Adds `tpl` to the assignment (incrementally under the cooperative protocol).
pub fn assign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
        _ => consumer.assign(tpl),
    }
}

/// Removes `tpl` from the assignment (all of it under the eager protocol).
pub fn unassign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
        _ => consumer.unassign(),
    }
}
