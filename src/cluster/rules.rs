//! The rules of cluster mode, partitioned by VIN (the Kafka Streams pattern on librdkafka):
//!
//! - a consumer group `fleetgate-{namespace}-{cluster}-rules` over the `V` records (key = VIN),
//!   so each vehicle's rules have exactly one owner at a time, moved by Kafka's group protocol;
//! - each owner keeps its vehicles' rule state in the fleet's table and writes it to the
//!   compacted state topic (same partition number as the `V` record, so a partition's state
//!   is one changelog partition); on assignment the partition's state is restored from there
//!   before any of its records is processed, on revocation it is forgotten;
//! - per batch of records, one Kafka transaction holds the events, the changed rule states,
//!   the tombstones of expired watches and the consumed offsets (`send_offsets_to_transaction`
//!   with the group's metadata, so a zombie owner is fenced): a crash or a rebalance replays
//!   the uncommitted records on the next owner, whose events carry the same deterministic ids,
//!   and the aborted ones are never seen by `read_committed` consumers — exactly once;
//! - the periodic sweep (stale charging sessions, expired watches) runs on the owner only,
//!   in a transaction of its own.
//!
//! Any Kafka failure tears the processor down and starts it again from the committed state
//! (new producer epoch, new group member, restore), which is simpler to reason about than
//! repairing a half-applied batch in memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;

use crate::event::Event;
use crate::kafka::cloudevents::EventContentMode;
use crate::kafka::reader::topic_reader;
use crate::kafka::txn::group_metadata;
use crate::kafka::{err as kafka_err, Error as ClusterError};
use crate::metrics as m;
use crate::rules::{expired_watch_ids, Fleet, RuleState};
use crate::sinks::{DeliveryTicket, Sink};
use crate::state::VehicleUpdate;
use crate::wire::proto::vehicle_data::Payload;

/// What the rules processor needs.
#[derive(Debug, Clone)]
pub struct RulesSettings {
    /// The `kafka` section (secrets filled in).
    pub properties: serde_json::Map<String, Value>,
    /// The config's namespace.
    pub namespace: String,
    /// `fleetgate.cluster.name`.
    pub cluster: String,
    /// This instance's id.
    pub instance_id: String,
    /// The `V` records (`{namespace}_V`).
    pub frames_topic: String,
    /// The rule-state changelog (compacted).
    pub state_topic: String,
    /// Where events go.
    pub events_topic: String,
    /// The shared watches topic (expired watches are deleted there).
    pub watches_topic: String,
    /// CloudEvents Kafka binding of events.
    pub event_mode: EventContentMode,
    /// Group session timeout.
    pub session_timeout: Duration,
    /// Transaction timeout.
    pub transaction_timeout: Duration,
    /// Limit of one Kafka call.
    pub timeout: Duration,
    /// `latest` or `earliest` for a new group.
    pub offset_reset: String,
    /// How often owned vehicles are swept.
    pub sweep_every: Duration,
    /// Partitions of the `V` topic (set when the topics are checked).
    pub partitions: usize,
}

impl RulesSettings {
    fn group_id(&self) -> String {
        format!("fleetgate-{}-{}-rules", self.namespace, self.cluster)
    }
}

/// What the rest of the server reads of the processor (metrics, readiness, admin).
#[derive(Debug, Default)]
pub struct RulesStatus {
    /// The `V` partitions this instance owns now.
    pub partitions: Mutex<BTreeSet<i32>>,
    /// A partition's state is being restored.
    pub restoring: AtomicBool,
    /// The processor joined the group and received its first assignment.
    pub joined: AtomicBool,
}

impl RulesStatus {
    /// The owned partitions.
    pub fn owned(&self) -> Vec<i32> {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// The running processor: a thread that consumes, applies and commits.
pub struct RulesProcessor {
    status: Arc<RulesStatus>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl RulesProcessor {
    /// Makes sure the `V` and state topics exist (the state topic compacted, with the `V`
    /// topic's partition count), then starts the processor thread. `local_sinks` get every
    /// committed event too (non-Kafka event sinks; at least once).
    pub async fn start(
        settings: RulesSettings,
        fleet: Fleet,
        local_sinks: Vec<Arc<dyn Sink>>,
    ) -> Result<Arc<RulesProcessor>, ClusterError> {
        let mut settings = settings;
        ensure_topics(&mut settings).await?;
        let status = Arc::new(RulesStatus::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (status.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("cluster-rules".into())
            .spawn(move || supervise(&settings, &fleet, &local_sinks, &st, &sp))
            .map_err(|e| ClusterError::Kafka {
                what: "starting the rules thread",
                error: e.to_string(),
            })?;
        Ok(Arc::new(RulesProcessor {
            status,
            stop,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Ownership and restore state.
    pub fn status(&self) -> &RulesStatus {
        &self.status
    }

    /// Stops the thread after its current batch (committed or aborted), leaving the group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The `V` partition of a VIN under librdkafka's default partitioner (`consistent_random`:
/// CRC-32 of the key modulo the partition count), for vehicles whose records this instance
/// has not seen yet (a watch of a vehicle that never sent a frame still expires on its owner).
pub fn default_partition(vin: &str, partitions: usize) -> i32 {
    (crc32fast::hash(vin.as_bytes()) as usize % partitions.max(1)) as i32
}

async fn ensure_topics(settings: &mut RulesSettings) -> Result<(), ClusterError> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::connection_config(&settings.properties)
            .map_err(|e| ClusterError::Kafka {
                what: "configuring the admin client",
                error: e.to_string(),
            })?
            .create()
            .map_err(kafka_err("creating the admin client"))?;
    let opts = AdminOptions::new().operation_timeout(Some(settings.timeout));
    // the V topic: the broker's default partition count when fleetgate creates it
    let frames = NewTopic::new(&settings.frames_topic, -1, TopicReplication::Fixed(-1));
    match admin.create_topics([&frames], &opts).await {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(t) => tracing::info!(topic = t, "created the V topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, code)) => {
                        return Err(ClusterError::Topic {
                            topic: t,
                            problem: format!("could not be created ({code}): create it, or grant this principal CREATE on it"),
                        })
                    }
                }
            }
        }
        Err(e) => return Err(kafka_err("creating the V topic")(e)),
    }
    // a topic created a moment ago may not be in the metadata yet: ask again until it is
    let partitions = |topic: &str| {
        let admin = &admin;
        let topic = topic.to_owned();
        let timeout = settings.timeout;
        async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let metadata = admin
                    .inner()
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(kafka_err("reading topic metadata"))?;
                let n = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len())
                    .filter(|n| *n > 0);
                if n.is_some() || tokio::time::Instant::now() >= deadline {
                    return Ok::<_, ClusterError>(n);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let n = partitions(&settings.frames_topic)
        .await?
        .ok_or_else(|| ClusterError::Topic {
            topic: settings.frames_topic.clone(),
            problem: "has no partitions in the metadata".into(),
        })?;
    let state = NewTopic::new(&settings.state_topic, n as i32, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let results = admin
        .create_topics([&state], &opts)
        .await
        .map_err(kafka_err("creating the state topic"))?;
    let mut state_existed = false;
    for r in results {
        match r {
            Ok(t) => tracing::info!(
                topic = t,
                partitions = n,
                "created the compacted rule-state topic"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => state_existed = true,
            Err((t, code)) => {
                return Err(ClusterError::Topic {
                    topic: t,
                    problem: format!(
                        "could not be created ({code}): create it compacted with {n} partitions"
                    ),
                })
            }
        }
    }
    if state_existed {
        crate::kafka::topics::require_compacted(&admin, &[&settings.state_topic], settings.timeout)
            .await?;
    }
    let state_n = partitions(&settings.state_topic).await?.unwrap_or(0);
    if state_n != n {
        return Err(ClusterError::Topic {
            topic: settings.state_topic.clone(),
            problem: format!("has {state_n} partitions but {} has {n}: a vehicle's state must live in the partition of its V records; recreate it with {n} partitions (or add partitions to match)", settings.frames_topic),
        });
    }
    settings.partitions = n;
    Ok(())
}

/// Runs the processor until stopped, starting it again after any failure.
fn supervise(
    settings: &RulesSettings,
    fleet: &Fleet,
    sinks: &[Arc<dyn Sink>],
    status: &Arc<RulesStatus>,
    stop: &Arc<AtomicBool>,
) {
    let owned: Arc<Mutex<HashMap<String, i32>>> = Arc::default();
    while !stop.load(Ordering::Relaxed) {
        let result = run(settings, fleet, sinks, status, stop, &owned);
        // whatever the outcome, this member's state is gone with it
        forget_partitions(fleet, &owned, status, None);
        match result {
            Ok(()) => break,
            Err(e) => {
                metrics::counter!(m::CLUSTER_RULES_RESTARTS_TOTAL).increment(1);
                tracing::error!(error = %e, "cluster rules stopped; starting again from the committed state in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// The group member's context: restores on assignment, forgets on revocation.
struct RulesContext {
    settings: RulesSettings,
    /// The transactional producer (also commits the start offsets of new partitions).
    producer: Arc<BaseProducer>,
    fleet: Fleet,
    owned: Arc<Mutex<HashMap<String, i32>>>,
    status: Arc<RulesStatus>,
    /// Set by every rebalance: a batch collected across one is dropped (the assignment
    /// restarts each partition at its committed offset).
    rebalanced: AtomicBool,
    /// A restore failed: the processor must start again.
    failed: Mutex<Option<ClusterError>>,
}

impl ClientContext for RulesContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "cluster rules: Kafka client error");
    }
}

impl ConsumerContext for RulesContext {
    /// Eager rebalancing done by hand: on assignment, each partition starts at its committed
    /// offset — or, the first time the group sees it, at a start offset fleetgate resolves
    /// (`rules_offset_reset`) and commits at once, so a member that dies before its first
    /// commit cannot make the next one skip records — after its state is restored.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr;
        self.rebalanced.store(true, Ordering::Relaxed);
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let outcome =
                    self.start_offsets(consumer, tpl)
                        .and_then(|()| match parts.is_empty() {
                            true => Ok(()),
                            false => self.restore(&parts),
                        });
                if let Err(e) = outcome {
                    *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
                if let Err(e) = consumer.assign(tpl) {
                    *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(kafka_err("assigning the rules partitions")(e));
                }
                if parts.is_empty() {
                    tracing::info!("cluster rules: no partition assigned to this instance");
                }
                self.status.joined.store(true, Ordering::Relaxed);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = ?parts, "cluster rules: partitions revoked; their vehicles' state is forgotten here");
                forget_partitions(&self.fleet, &self.owned, &self.status, Some(&parts));
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "cluster rules: rebalance error");
                forget_partitions(&self.fleet, &self.owned, &self.status, None);
                let _ = consumer.unassign();
            }
        }
    }
}

impl RulesContext {
    /// Sets each assigned partition's start offset in `tpl`: the committed one, else the
    /// resolved reset offset, which is committed now in a transaction of its own.
    fn start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), ClusterError> {
        if tpl.count() == 0 {
            return Ok(());
        }
        let timeout = self.settings.timeout;
        let committed = consumer
            .committed_offsets(tpl.clone(), timeout)
            .map_err(kafka_err("reading the committed offsets"))?;
        let mut first = TopicPartitionList::new();
        for e in committed.elements() {
            let start = match e.offset() {
                Offset::Offset(o) => o,
                _ => {
                    let (low, high) = consumer
                        .fetch_watermarks(e.topic(), e.partition(), timeout)
                        .map_err(kafka_err("reading the V watermarks"))?;
                    let start = if self.settings.offset_reset == "earliest" {
                        low
                    } else {
                        high
                    };
                    first
                        .add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))
                        .map_err(kafka_err("building the start offsets"))?;
                    start
                }
            };
            tpl.set_partition_offset(e.topic(), e.partition(), Offset::Offset(start))
                .map_err(kafka_err("setting a start offset"))?;
        }
        if first.count() > 0 {
            let cgm = group_metadata(consumer)?;
            self.producer
                .begin_transaction()
                .map_err(kafka_err("beginning the start-offset transaction"))?;
            self.producer
                .send_offsets_to_transaction(&first, &cgm, timeout)
                .map_err(kafka_err("committing the start offsets"))?;
            self.producer
                .commit_transaction(timeout)
                .map_err(kafka_err("committing the start offsets"))?;
            tracing::info!(partitions = first.count(), reset = %self.settings.offset_reset, "cluster rules: first start offsets committed for partitions the group had never read");
        }
        Ok(())
    }

    /// Reads the state of `parts` from the changelog (committed records, to the end) into the
    /// fleet, before any of their `V` records is processed.
    fn restore(&self, parts: &[i32]) -> Result<(), ClusterError> {
        let started = Instant::now();
        self.status.restoring.store(true, Ordering::Relaxed);
        let group = format!("{}-restore", self.settings.group_id());
        let reader = topic_reader(
            &self.settings.properties,
            &group,
            &self.settings.state_topic,
            Some(parts),
            self.settings.timeout,
        )?;
        let mut at_end = BTreeSet::new();
        let mut vehicles = 0usize;
        let mut last_log = Instant::now();
        while at_end.len() < parts.len() {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => {
                    let Some(vin) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    match msg.payload().map(serde_json::from_slice::<RuleState>) {
                        None => {
                            self.fleet.forget(vin);
                            self.owned_map().remove(vin);
                        }
                        Some(Ok(record)) => {
                            self.fleet.restore(vin, record);
                            self.owned_map().insert(vin.to_owned(), msg.partition());
                            vehicles += 1;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(vin, error = %e, "unreadable rule state skipped (the vehicle's rules start over)")
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "restoring rule state: Kafka error (retrying)");
                }
                None => {}
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(partitions = ?parts, done = at_end.len(), records = vehicles, "still restoring rule state");
                last_log = Instant::now();
            }
            if started.elapsed() > self.settings.timeout * 30 {
                self.status.restoring.store(false, Ordering::Relaxed);
                return Err(ClusterError::Timeout {
                    what: "restoring rule state",
                    after: self.settings.timeout * 30,
                });
            }
        }
        {
            let mut owned = self
                .status
                .partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            owned.extend(parts.iter().copied());
            metrics::gauge!(m::CLUSTER_RULES_PARTITIONS).set(owned.len() as f64);
        }
        self.status.restoring.store(false, Ordering::Relaxed);
        let took = started.elapsed();
        metrics::gauge!(m::CLUSTER_RULES_RESTORE_SECONDS).set(took.as_secs_f64());
        tracing::info!(partitions = ?parts, vehicles, took_ms = took.as_millis() as u64, "cluster rules: partitions assigned and their state restored");
        Ok(())
    }

    fn owned_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, i32>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forgets the vehicles of `parts` (all partitions when None).
fn forget_partitions(
    fleet: &Fleet,
    owned: &Mutex<HashMap<String, i32>>,
    status: &RulesStatus,
    parts: Option<&[i32]>,
) {
    let mut owned = owned.lock().unwrap_or_else(|e| e.into_inner());
    owned.retain(|vin, p| {
        let drop = parts.is_none_or(|ps| ps.contains(p));
        if drop {
            fleet.forget(vin);
        }
        !drop
    });
    let mut mine = status.partitions.lock().unwrap_or_else(|e| e.into_inner());
    match parts {
        Some(ps) => mine.retain(|p| !ps.contains(p)),
        None => mine.clear(),
    }
    metrics::gauge!(m::CLUSTER_RULES_PARTITIONS).set(mine.len() as f64);
}

type RulesConsumer = BaseConsumer<RulesContext>;

/// One life of the processor: producer, group member, the loop.
fn run(
    settings: &RulesSettings,
    fleet: &Fleet,
    sinks: &[Arc<dyn Sink>],
    status: &Arc<RulesStatus>,
    stop: &Arc<AtomicBool>,
    owned: &Arc<Mutex<HashMap<String, i32>>>,
) -> Result<(), ClusterError> {
    let producer = Arc::new(new_producer(settings)?);
    let mut config =
        crate::kafka::connection_config(&settings.properties).map_err(|e| ClusterError::Kafka {
            what: "configuring the rules consumer",
            error: e.to_string(),
        })?;
    let session_ms = settings.session_timeout.as_millis().to_string();
    let heartbeat_ms = (settings.session_timeout.as_millis() / 3)
        .max(500)
        .to_string();
    config
        .set("group.id", settings.group_id())
        .set(
            "client.id",
            format!("fleetgate-{}-rules", settings.instance_id),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", &settings.offset_reset)
        .set("session.timeout.ms", &session_ms)
        .set("heartbeat.interval.ms", &heartbeat_ms)
        .set("fetch.wait.max.ms", "10");
    let context = RulesContext {
        settings: settings.clone(),
        producer: producer.clone(),
        fleet: fleet.clone(),
        owned: owned.clone(),
        status: status.clone(),
        rebalanced: AtomicBool::new(false),
        failed: Mutex::new(None),
    };
    let consumer: RulesConsumer = config
        .create_with_context(context)
        .map_err(kafka_err("creating the rules consumer"))?;
    consumer
        .subscribe(&[settings.frames_topic.as_str()])
        .map_err(kafka_err("subscribing to the V topic"))?;
    tracing::info!(group = %settings.group_id(), topic = %settings.frames_topic, "cluster rules: joining the group");
    let mut last_sweep = Instant::now();
    // borrowed: the records stay in librdkafka's buffers, no copy per record
    let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(BATCH);
    let mut written: HashMap<String, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        consumer
            .context()
            .rebalanced
            .store(false, Ordering::Relaxed);
        batch.clear();
        let mut wait = Duration::from_millis(100);
        while batch.len() < BATCH {
            match consumer.poll(wait) {
                Some(Ok(msg)) => batch.push(msg),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "cluster rules: poll error");
                    break;
                }
                None => break,
            }
            wait = Duration::ZERO;
        }
        if let Some(e) = consumer
            .context()
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        if consumer.context().rebalanced.load(Ordering::Relaxed) {
            // collected across a rebalance: each assigned partition restarts at its committed
            // offset, so these records come again to their owner
            continue;
        }
        if !batch.is_empty() {
            process(
                settings,
                fleet,
                sinks,
                &producer,
                &consumer,
                owned,
                &batch,
                &mut written,
            )?;
        }
        if last_sweep.elapsed() >= settings.sweep_every {
            last_sweep = Instant::now();
            sweep(settings, fleet, sinks, &producer, owned, status)?;
        }
    }
    consumer.unsubscribe();
    Ok(())
}

/// Records per transaction at most.
const BATCH: usize = 2000;

/// A vehicle whose frames change no rule bookkeeping (no event) has its state written to the
/// changelog at most this often: every event writes it at once, so what decides events —
/// sites inside, the charging session, watch progress — is always exact in the changelog;
/// the latest signals and last fix a new owner restores are at most this old.
const STATE_REFRESH: Duration = Duration::from_secs(5);

fn new_producer(settings: &RulesSettings) -> Result<BaseProducer, ClusterError> {
    let ids = (
        settings.namespace.as_str(),
        settings.cluster.as_str(),
        settings.instance_id.as_str(),
    );
    let mut config = crate::kafka::txn::transactional_config(&settings.properties, ids, "rules")?;
    config
        .set(
            "transaction.timeout.ms",
            settings.transaction_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "1");
    let producer: BaseProducer = config
        .create()
        .map_err(kafka_err("creating the rules producer"))?;
    // fences this instance's previous life and aborts its open transaction, if any
    producer
        .init_transactions(settings.timeout.max(Duration::from_secs(30)))
        .map_err(kafka_err("initialising the rules transactions"))?;
    Ok(producer)
}

/// What one transaction writes besides the offsets.
struct Outbox<'a> {
    settings: &'a RulesSettings,
    producer: &'a BaseProducer,
    events: Vec<Event>,
    /// VIN → partition of the vehicles whose state changed.
    dirty: HashMap<String, i32>,
}

impl<'a> Outbox<'a> {
    fn new(settings: &'a RulesSettings, producer: &'a BaseProducer) -> Self {
        Outbox {
            settings,
            producer,
            events: Vec::new(),
            dirty: HashMap::new(),
        }
    }

    /// Sends a record, waiting for queue room when the producer is full.
    fn send(&self, mut record: BaseRecord<'_, str, [u8]>) -> Result<(), ClusterError> {
        for _ in 0..100 {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(kafka_err("producing in the rules transaction")(e)),
            }
        }
        Err(ClusterError::Timeout {
            what: "room in the producer queue",
            after: Duration::from_secs(5),
        })
    }

    fn add_events(&mut self, events: Vec<Event>) -> Result<(), ClusterError> {
        for event in &events {
            let json = serde_json::to_vec(&event.to_cloudevent()).unwrap_or_default();
            let (value, headers) =
                crate::kafka::cloudevents::event_message(event, &json, self.settings.event_mode)
                    .map_err(|e| ClusterError::Kafka {
                        what: "encoding an event",
                        error: e.to_string(),
                    })?;
            self.send(
                BaseRecord::to(&self.settings.events_topic)
                    .key(event.vin.as_str())
                    .payload(value.as_ref())
                    .headers(headers),
            )?;
        }
        // an expired watch is gone for every instance
        for id in expired_watch_ids(&events) {
            self.send(BaseRecord::to(&self.settings.watches_topic).key(id))?;
        }
        self.events.extend(events);
        Ok(())
    }

    /// Writes the changed states and commits; returns the events for the local sinks.
    fn commit(
        self,
        fleet: &Fleet,
        offsets: Option<(&TopicPartitionList, &RulesConsumer)>,
    ) -> Result<Vec<Event>, ClusterError> {
        for (vin, partition) in &self.dirty {
            if let Some(state) = fleet.rule_state(vin) {
                let value = serde_json::to_vec(&state).unwrap_or_default();
                self.send(
                    BaseRecord::to(&self.settings.state_topic)
                        .key(vin.as_str())
                        .payload(value.as_slice())
                        .partition(*partition),
                )?;
            }
        }
        let timeout = self.settings.timeout;
        if let Some((tpl, consumer)) = offsets {
            let cgm = group_metadata(consumer)?;
            self.producer
                .send_offsets_to_transaction(tpl, &cgm, timeout)
                .map_err(kafka_err("adding the consumed offsets to the transaction"))?;
        }
        self.producer
            .commit_transaction(timeout)
            .map_err(kafka_err("committing the rules transaction"))?;
        metrics::counter!(m::CLUSTER_RULES_TRANSACTIONS_TOTAL).increment(1);
        Ok(self.events)
    }
}

/// Hands committed events to the non-Kafka event sinks (logger, demo tap).
fn publish_local(sinks: &[Arc<dyn Sink>], events: &[Event]) {
    for event in events {
        crate::metrics::count_event(event.kind.as_str());
        if sinks.is_empty() {
            continue;
        }
        let json = serde_json::to_vec(&event.to_cloudevent()).unwrap_or_default();
        for sink in sinks {
            let _ = sink.publish_event(event, &json, DeliveryTicket::untracked());
        }
    }
}

/// One batch of `V` records in one transaction.
#[allow(clippy::too_many_arguments)]
fn process(
    settings: &RulesSettings,
    fleet: &Fleet,
    sinks: &[Arc<dyn Sink>],
    producer: &BaseProducer,
    consumer: &RulesConsumer,
    owned: &Mutex<HashMap<String, i32>>,
    batch: &[BorrowedMessage<'_>],
    written: &mut HashMap<String, Instant>,
) -> Result<(), ClusterError> {
    let now = Instant::now();
    producer
        .begin_transaction()
        .map_err(kafka_err("beginning a rules transaction"))?;
    let mut outbox = Outbox::new(settings, producer);
    let mut next: HashMap<i32, i64> = HashMap::new();
    for msg in batch {
        let slot = next.entry(msg.partition()).or_insert(0);
        *slot = (*slot).max(msg.offset() + 1);
        let Some(vin) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            metrics::counter!(m::CLUSTER_RULES_BAD_RECORDS_TOTAL).increment(1);
            continue;
        };
        let payload = match Payload::decode(msg.payload().unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(m::CLUSTER_RULES_BAD_RECORDS_TOTAL).increment(1);
                tracing::warn!(vin, offset = msg.offset(), error = %e, "V record is not a vehicle_data Payload; skipped");
                continue;
            }
        };
        let update = VehicleUpdate::from_payload(&payload, envelope_created_at_s(msg));
        let events = fleet.apply(vin, &update);
        {
            let mut owned = owned.lock().unwrap_or_else(|e| e.into_inner());
            if !owned.contains_key(vin) {
                owned.insert(vin.to_owned(), msg.partition());
            }
        }
        let due = written
            .get(vin)
            .is_none_or(|at| now.duration_since(*at) >= STATE_REFRESH);
        if due || !events.is_empty() {
            outbox.dirty.insert(vin.to_owned(), msg.partition());
        }
        if !events.is_empty() {
            outbox.add_events(events)?;
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in next {
        tpl.add_partition_offset(&settings.frames_topic, p, Offset::Offset(offset))
            .map_err(kafka_err("building the offsets"))?;
    }
    let dirty: Vec<String> = outbox.dirty.keys().cloned().collect();
    let events = outbox.commit(fleet, Some((&tpl, consumer)))?;
    for vin in dirty {
        written.insert(vin, now);
    }
    tracing::debug!(
        records = batch.len(),
        events = events.len(),
        "cluster rules: batch committed"
    );
    metrics::counter!(m::CLUSTER_RULES_FRAMES_TOTAL).increment(batch.len() as u64);
    publish_local(sinks, &events);
    Ok(())
}

/// The vehicle's creation time of a `V` record: its `timestamp` header (ms), else the
/// record's timestamp.
fn envelope_created_at_s(msg: &impl Message) -> u32 {
    let from_header = msg.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == "timestamp")
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
    });
    let ms = from_header
        .or_else(|| msg.timestamp().to_millis().map(|t| t.max(0) as u64))
        .unwrap_or(0);
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// The periodic sweep of the owned vehicles, in a transaction of its own.
fn sweep(
    settings: &RulesSettings,
    fleet: &Fleet,
    sinks: &[Arc<dyn Sink>],
    producer: &BaseProducer,
    owned: &Mutex<HashMap<String, i32>>,
    status: &RulesStatus,
) -> Result<(), ClusterError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let snapshot = owned.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mine = status.owned();
    let partition_of = |vin: &str| {
        snapshot
            .get(vin)
            .copied()
            .unwrap_or_else(|| default_partition(vin, settings.partitions))
    };
    let events = fleet.sweep_where(now_ms, |vin| mine.contains(&partition_of(vin)));
    if events.is_empty() {
        return Ok(());
    }
    producer
        .begin_transaction()
        .map_err(kafka_err("beginning a sweep transaction"))?;
    let mut outbox = Outbox::new(settings, producer);
    for e in &events {
        if fleet.vehicles.get(&e.vin).is_some() {
            outbox.dirty.insert(e.vin.clone(), partition_of(&e.vin));
        }
    }
    outbox.add_events(events)?;
    let events = outbox.commit(fleet, None)?;
    publish_local(sinks, &events);
    Ok(())
}
