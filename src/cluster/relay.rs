//! Cluster mode's one way out for events to the sinks other than Kafka (webhook, MQTT, the
//! logger): they read the committed events topic — the rules' transactions put every rule
//! event there, ingest instances their `vehicle.connected` / `disconnected` — through a
//! consumer group of their own (`fleetgate-{namespace}-{cluster}-relay`, so each event is
//! relayed by one instance), and the group's offsets are committed only up to the last event
//! every sink confirmed (the webhook outbox took it, the MQTT broker acked it). A crash, a
//! `kill -9` of an owner right after an arrival, a rebalance: the next member relays from the
//! committed offset — at least once, with the event's stable id (`webhook-id`, the
//! CloudEvents `id`) for receivers to dedupe. A sink that fails an event makes its partition
//! start again from that event after a pause, so order per vehicle holds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::kafka::cloudevents::event_from_record;
use crate::kafka::{err, Error};
use crate::metrics as m;
use crate::sinks::{Completion, DeliveryTicket, SinkRouter};

/// What the relay needs.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The `kafka` section (secrets filled in).
    pub properties: serde_json::Map<String, Value>,
    /// The relay's consumer group.
    pub group_id: String,
    /// This instance's id (client id).
    pub instance_id: String,
    /// The events topic.
    pub events_topic: String,
    /// `latest` or `earliest` for a new group.
    pub offset_reset: String,
    /// Group session timeout.
    pub session_timeout: Duration,
    /// Limit of one Kafka call.
    pub timeout: Duration,
}

/// Events handed to the sinks and not yet confirmed, at most (then the relay pauses).
const MAX_PENDING: usize = 10_000;
/// How long a partition waits before it is relayed again from a failed event.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The running relay: a thread.
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Relay {
    /// Starts relaying the committed events topic to `sinks`' event sinks.
    pub fn start(settings: RelaySettings, sinks: SinkRouter) -> Result<Arc<Relay>, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cluster-relay".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Err(e) = run(&settings, &sinks, &s) {
                        tracing::error!(error = %e, "event relay stopped; starting again from the committed offsets in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .map_err(|e| Error::Kafka {
                what: "starting the event relay",
                error: e.to_string(),
            })?;
        Ok(Arc::new(Relay {
            stop,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Stops after committing what the sinks confirmed.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// One event handed to the sinks: how many confirmations it still waits for.
struct Pending {
    offset: i64,
    waiting: usize,
    failed: bool,
}

/// One partition's events in flight, in offset order.
#[derive(Default)]
struct Lane {
    pending: VecDeque<Pending>,
    /// Bumped when the lane starts again (completions of older generations are ignored).
    generation: u64,
    /// After a failure: start again from this offset at this time.
    retry: Option<(i64, Instant)>,
    /// The next offset after the events every sink confirmed (contiguous).
    confirmed: i64,
    /// The offset committed last (the next to relay after a restart).
    committed: i64,
}

/// Commits, for the relay's group, a start offset (the end) of every events partition the group
/// has never read — at start-up, before this instance's rules produce anything — so no event
/// produced after the cluster's first start is missed by a relay that joins later, and a
/// relay added to a running cluster does not replay the events topic's history.
pub fn commit_start_offsets(settings: &RelaySettings) -> Result<(), Error> {
    let mut config = crate::kafka::connection_config(&settings.properties)?;
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config
        .create()
        .map_err(err("creating the relay's offset client"))?;
    let timeout = settings.timeout;
    let metadata = consumer
        .fetch_metadata(Some(&settings.events_topic), timeout)
        .map_err(err("reading the events topic's metadata"))?;
    let mut all = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
        for p in t.partitions() {
            all.add_partition(&settings.events_topic, p.id());
        }
    }
    if all.count() == 0 {
        return Err(Error::Topic {
            topic: settings.events_topic.clone(),
            problem: "has no partitions in the metadata".into(),
        });
    }
    let earliest = |_: &str| settings.offset_reset == "earliest";
    let (_, first) = crate::kafka::group::start_offsets(&consumer, &all, earliest, timeout)?;
    if first.count() > 0 {
        consumer
            .commit(&first, CommitMode::Sync)
            .map_err(err("committing the relay's start offsets"))?;
        tracing::info!(partitions = first.count(), reset = %settings.offset_reset, "event relay: start offsets committed for events partitions the relay had never read");
    }
    Ok(())
}

/// The group member's context: start offsets on assignment, lanes dropped on revocation.
struct RelayContext {
    settings: RelaySettings,
    lanes: Arc<Mutex<HashMap<i32, Lane>>>,
    failed: Mutex<Option<Error>>,
}

impl ClientContext for RelayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "event relay: Kafka client error");
    }
}

impl ConsumerContext for RelayContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = self.start_offsets(consumer, tpl) {
                    *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
                let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
                for e in tpl.elements() {
                    let committed = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    };
                    lanes.insert(
                        e.partition(),
                        Lane {
                            confirmed: committed,
                            committed,
                            ..Default::default()
                        },
                    );
                }
                drop(lanes);
                let _ = crate::kafka::group::assign(consumer, tpl);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // what was not confirmed is relayed again by the next owner
                let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
                for e in tpl.elements() {
                    lanes.remove(&e.partition());
                }
                drop(lanes);
                let _ = crate::kafka::group::unassign(consumer, tpl);
            }
            other => {
                tracing::warn!(error = ?other, "event relay: rebalance error");
                self.lanes.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let _ = consumer.unassign();
            }
        }
    }
}

impl RelayContext {
    /// Each assigned partition starts at its committed offset, or — the first time the group
    /// sees it — at the resolved reset offset, committed at once.
    fn start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), Error> {
        let earliest = |_: &str| self.settings.offset_reset == "earliest";
        let (starts, first) =
            crate::kafka::group::start_offsets(consumer, tpl, earliest, self.settings.timeout)?;
        // set in place: the list belongs to librdkafka's callback
        for e in starts.elements() {
            tpl.set_partition_offset(e.topic(), e.partition(), e.offset())
                .map_err(err("setting a start offset"))?;
        }
        if first.count() > 0 {
            consumer
                .commit(&first, CommitMode::Sync)
                .map_err(err("committing the relay's start offsets"))?;
        }
        Ok(())
    }
}

type RelayConsumer = BaseConsumer<RelayContext>;

/// One life of the relay.
fn run(settings: &RelaySettings, sinks: &SinkRouter, stop: &AtomicBool) -> Result<(), Error> {
    let mut config = crate::kafka::connection_config(&settings.properties)?;
    let session_ms = settings.session_timeout.as_millis().to_string();
    config
        .set("group.id", &settings.group_id)
        .set(
            "client.id",
            format!("fleetgate-{}-relay", settings.instance_id),
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", &settings.offset_reset)
        .set("session.timeout.ms", &session_ms)
        .set(
            "heartbeat.interval.ms",
            crate::kafka::group::heartbeat_interval(settings.session_timeout)
                .as_millis()
                .to_string(),
        )
        .set("fetch.wait.max.ms", "50");
    let lanes: Arc<Mutex<HashMap<i32, Lane>>> = Arc::default();
    let consumer: RelayConsumer = config
        .create_with_context(RelayContext {
            settings: settings.clone(),
            lanes: lanes.clone(),
            failed: Mutex::new(None),
        })
        .map_err(err("creating the event relay consumer"))?;
    consumer
        .subscribe(&[settings.events_topic.as_str()])
        .map_err(err("subscribing to the events topic"))?;
    tracing::info!(group = %settings.group_id, topic = %settings.events_topic, sinks = ?sinks.event_sinks().iter().map(|s| s.name()).collect::<Vec<_>>(), "event relay: joining the group");
    let (tx, mut rx) = mpsc::unbounded_channel::<Completion>();
    // ticket sequence number → (partition, generation, offset)
    let mut tickets: HashMap<u64, (i32, u64, i64)> = HashMap::new();
    let mut seq = 0u64;
    let mut paused = false;
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(e) = consumer
            .context()
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        // confirmations
        while let Ok(c) = rx.try_recv() {
            let Some((partition, generation, offset)) = tickets.remove(&c.seq) else {
                continue;
            };
            let mut all = lanes.lock().unwrap_or_else(|e| e.into_inner());
            let Some(lane) = all
                .get_mut(&partition)
                .filter(|l| l.generation == generation)
            else {
                continue;
            };
            if let Some(p) = lane.pending.iter_mut().find(|p| p.offset == offset) {
                if c.delivered {
                    p.waiting = p.waiting.saturating_sub(1);
                } else {
                    p.failed = true;
                }
            }
        }
        let restart = settle(&lanes, &consumer, settings, &mut last_commit)?;
        for (partition, offset) in restart {
            if let Err(e) = consumer.seek(
                &settings.events_topic,
                partition,
                Offset::Offset(offset),
                settings.timeout,
            ) {
                tracing::warn!(partition, offset, error = %e, "event relay: seeking back to a failed event failed; starting again");
                return Err(err("seeking back to a failed event")(e));
            }
        }
        let in_flight: usize = lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| l.pending.len())
            .sum();
        metrics::gauge!(m::CLUSTER_RELAY_PENDING).set(in_flight as f64);
        let want_pause = in_flight >= MAX_PENDING;
        if want_pause != paused {
            let assigned = consumer.assignment().unwrap_or_default();
            let _ = if want_pause {
                consumer.pause(&assigned)
            } else {
                consumer.resume(&assigned)
            };
            paused = want_pause;
        }
        let Some(polled) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let msg = match polled {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "event relay: poll error");
                continue;
            }
        };
        let partition = msg.partition();
        let mut all = lanes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lane) = all.get_mut(&partition) else {
            continue;
        };
        if lane.retry.is_some() {
            // waiting to start again from a failed event: this one comes again after it
            continue;
        }
        let (event, json) = match event_from_record(
            msg.headers(),
            msg.payload().unwrap_or_default(),
        ) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!(m::CLUSTER_RELAY_BAD_RECORDS_TOTAL).increment(1);
                tracing::warn!(partition, offset = msg.offset(), error = %e, "event relay: a record of the events topic is not an event; skipped");
                lane.pending.push_back(Pending {
                    offset: msg.offset(),
                    waiting: 0,
                    failed: false,
                });
                continue;
            }
        };
        let mut entry = Pending {
            offset: msg.offset(),
            waiting: 0,
            failed: false,
        };
        crate::metrics::count_event(event.kind.as_str());
        for sink in sinks.event_sinks() {
            seq += 1;
            tickets.insert(seq, (partition, lane.generation, msg.offset()));
            let ticket = DeliveryTicket::tracked(tx.clone(), seq, None);
            match sink.publish_event(&event, &json, ticket) {
                Ok(()) => entry.waiting += 1,
                Err(e) => {
                    metrics::counter!(m::SINK_REFUSED_TOTAL, "sink" => sink.name()).increment(1);
                    tracing::warn!(vin = %event.vin, sink = sink.name(), error = %e, "event relay: a sink refused an event; relayed again after a pause");
                    entry.failed = true;
                }
            }
        }
        lane.pending.push_back(entry);
    }
    // what the sinks confirmed by now is committed; the rest is relayed again
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        while let Ok(c) = rx.try_recv() {
            if let Some((partition, generation, offset)) = tickets.remove(&c.seq) {
                let mut all = lanes.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = all
                    .get_mut(&partition)
                    .filter(|l| l.generation == generation)
                    .and_then(|l| l.pending.iter_mut().find(|p| p.offset == offset))
                {
                    if c.delivered {
                        p.waiting = p.waiting.saturating_sub(1);
                    } else {
                        p.failed = true;
                    }
                }
            }
        }
        let busy = lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|l| l.pending.iter().any(|p| p.waiting > 0 && !p.failed));
        if !busy {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut last = Instant::now() - Duration::from_secs(10);
    let _ = settle(&lanes, &consumer, settings, &mut last);
    consumer.unsubscribe();
    Ok(())
}

/// Drops the confirmed head of each lane and commits past it (at most every 100 ms); a lane
/// whose head failed is emptied and scheduled to start again from it. Returns the partitions
/// to seek back now (their pause is over).
fn settle(
    lanes: &Mutex<HashMap<i32, Lane>>,
    consumer: &RelayConsumer,
    settings: &RelaySettings,
    last_commit: &mut Instant,
) -> Result<Vec<(i32, i64)>, Error> {
    let mut commit: BTreeMap<i32, i64> = BTreeMap::new();
    let mut restart = Vec::new();
    {
        let mut all = lanes.lock().unwrap_or_else(|e| e.into_inner());
        for (partition, lane) in all.iter_mut() {
            if let Some((offset, at)) = lane.retry {
                if Instant::now() >= at {
                    lane.retry = None;
                    restart.push((*partition, offset));
                }
                continue;
            }
            while let Some(head) = lane.pending.front() {
                if head.failed {
                    let from = head.offset;
                    metrics::counter!(m::CLUSTER_RELAY_RETRIES_TOTAL).increment(1);
                    lane.pending.clear();
                    lane.generation += 1;
                    lane.retry = Some((from, Instant::now() + RETRY_AFTER));
                    break;
                }
                if head.waiting > 0 {
                    break;
                }
                lane.confirmed = lane.confirmed.max(head.offset + 1);
                lane.pending.pop_front();
                metrics::counter!(m::CLUSTER_RELAY_EVENTS_TOTAL).increment(1);
            }
            if lane.confirmed > lane.committed {
                commit.insert(*partition, lane.confirmed);
            }
        }
    }
    if commit.is_empty() || last_commit.elapsed() < Duration::from_millis(100) {
        return Ok(restart);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &commit {
        tpl.add_partition_offset(&settings.events_topic, *p, Offset::Offset(*o))
            .map_err(err("building the relay offsets"))?;
    }
    match consumer.commit(&tpl, CommitMode::Async) {
        Ok(()) => {
            *last_commit = Instant::now();
            let mut all = lanes.lock().unwrap_or_else(|e| e.into_inner());
            for (p, o) in commit {
                if let Some(lane) = all.get_mut(&p) {
                    lane.committed = lane.committed.max(o);
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "event relay: offset commit failed (retried)"),
    }
    Ok(restart)
}
