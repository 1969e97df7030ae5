//! The partitioned placement of the rules (cluster mode), the Kafka Streams pattern on
//! librdkafka:
//!
//! - every input of a vehicle is a record keyed by its VIN: its frames in `{ns}_V`, its other
//!   inputs (manual arrivals, Smartcar states: [`super::inputs`]) in `{ns}_fleetgate_inputs`,
//!   which has as many partitions as `V` so that a VIN's records of both share a partition
//!   number;
//! - a consumer group `fleetgate-{namespace}-{cluster}-rules` over `V` gives each partition —
//!   so each vehicle's rules — one owner, moved by Kafka's cooperative protocol (a join or a
//!   restart moves only the partitions that change owner); the owner reads the same-numbered
//!   inputs partitions beside (a second consumer, assigned with them);
//! - the owner applies every input through the one runner ([`crate::rules::FleetData::run`]),
//!   and per transaction — sized by time (`commit_interval_ms`) and count — writes the events,
//!   the rule state of **every vehicle that changed** (the write cache,
//!   [`crate::runner::state::WriteCache`]), the tombstones of expired watches and the consumed
//!   offsets of both topics (`send_offsets_to_transaction` with the group's metadata, so a
//!   zombie owner is fenced): whatever a committed offset consumed is in the changelog, and a
//!   restore gives it back — a charge limit sent once, a position, a session, watch progress;
//! - on assignment a partition's state is restored from the changelog before any of its
//!   records is processed; on revocation it is forgotten (no transaction is ever open across a
//!   poll, so nothing is half-applied when partitions move);
//! - the clock (stale sessions, expired watches) ticks on the owner, inside the transactions;
//! - each input other than a frame leaves a receipt (what it did) in its vehicle's state, so
//!   the instance that took the request answers it from the committed changelog.
//!
//! Any Kafka failure tears the processor down and starts it again from the committed state
//! (new producer epoch, new group member, restore), which is simpler to reason about than
//! repairing a half-applied batch in memory.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;

use super::inputs::InputRecord;
use super::view::ClusterView;
use crate::event::Event;
use crate::kafka::cloudevents::{event_message, EventContentMode};
use crate::kafka::reader::topic_reader;
use crate::kafka::txn::{group_metadata, send_with_room};
use crate::kafka::{err, Error};
use crate::metrics as m;
use crate::rules::input::{Receipt, RuleInput, RECEIPTS_KEPT};
use crate::rules::{Fleet, RuleState};
use crate::runner::state::WriteCache;
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
    /// The other inputs (`{namespace}_fleetgate_inputs`).
    pub inputs_topic: String,
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
    /// How often owned vehicles get a clock tick.
    pub sweep_every: Duration,
    /// How long one transaction collects records (the latency / cost knob).
    pub commit_interval: Duration,
    /// Partitions of the `V` topic (set when the topics are checked).
    pub partitions: usize,
}

impl RulesSettings {
    /// The rules' consumer group.
    pub fn group_id(&self) -> String {
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
    /// Partitions whose state this instance restored since it started (a cooperative
    /// rebalance restores only the partitions that moved here).
    pub restored_partitions: AtomicU64,
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
    /// Starts the processor thread (after [`ensure_topics`]).
    pub fn start(
        settings: RulesSettings,
        fleet: Fleet,
        view: Arc<ClusterView>,
    ) -> Result<Arc<RulesProcessor>, Error> {
        let status = Arc::new(RulesStatus::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (status.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("cluster-rules".into())
            .spawn(move || supervise(&settings, &fleet, &view, &st, &sp))
            .map_err(|e| Error::Kafka {
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

    /// A handle on [`RulesProcessor::status`] that outlives a borrow.
    pub fn status_handle(&self) -> Arc<RulesStatus> {
        self.status.clone()
    }

    /// Stops the thread after its current transaction (committed or aborted), leaving the
    /// group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The `V` partition of a VIN under librdkafka's default partitioner (`consistent_random`:
/// CRC-32 of the key modulo the partition count), for vehicles whose state no instance has
/// written yet (a watch of a vehicle that never sent a frame still expires on one owner).
pub fn default_partition(vin: &str, partitions: usize) -> i32 {
    (crc32fast::hash(vin.as_bytes()) as usize % partitions.max(1)) as i32
}

/// Makes sure the rules' topics exist — `V` and the events topic; the state changelog
/// (compacted) and the inputs topic, both with the `V` topic's partition count — and sets
/// `settings.partitions`.
pub async fn ensure_topics(settings: &mut RulesSettings) -> Result<(), Error> {
    use crate::kafka::topics::{
        admin_client, create_if_missing, ensure_copartitioned, partition_count,
    };
    let admin = admin_client(&settings.properties)?;
    // the V topic: the broker's default partition count when fleetgate creates it
    create_if_missing(&admin, &settings.frames_topic, -1, &[], settings.timeout).await?;
    let n = partition_count(&admin, &settings.frames_topic, settings.timeout)
        .await?
        .ok_or_else(|| Error::Topic {
            topic: settings.frames_topic.clone(),
            problem: "has no partitions in the metadata".into(),
        })?;
    ensure_copartitioned(
        &admin,
        &settings.state_topic,
        n,
        true,
        &settings.frames_topic,
        settings.timeout,
    )
    .await?;
    // the events topic: relays subscribe to it before the first event exists
    create_if_missing(&admin, &settings.events_topic, -1, &[], settings.timeout).await?;
    ensure_copartitioned(
        &admin,
        &settings.inputs_topic,
        n,
        false,
        &settings.frames_topic,
        settings.timeout,
    )
    .await?;
    settings.partitions = n;
    Ok(())
}

/// Runs the processor until stopped, starting it again after any failure.
fn supervise(
    settings: &RulesSettings,
    fleet: &Fleet,
    view: &Arc<ClusterView>,
    status: &Arc<RulesStatus>,
    stop: &Arc<AtomicBool>,
) {
    let owned: Arc<Owned> = Arc::default();
    while !stop.load(Ordering::Relaxed) {
        let result = run(settings, fleet, view, status, stop, &owned);
        // whatever the outcome, this member's state is gone with it
        owned.forget(fleet, status, None);
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

/// The vehicles this instance owns: VIN → partition, and their recent receipts.
#[derive(Default)]
struct Owned {
    vins: Mutex<HashMap<String, i32>>,
    receipts: Mutex<HashMap<String, VecDeque<Receipt>>>,
}

impl Owned {
    fn vins(&self) -> std::sync::MutexGuard<'_, HashMap<String, i32>> {
        self.vins.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn receipts(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Receipt>>> {
        self.receipts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the vehicles of `parts` (all partitions when None).
    fn forget(&self, fleet: &Fleet, status: &RulesStatus, parts: Option<&[i32]>) {
        let mut gone = Vec::new();
        self.vins().retain(|vin, p| {
            let drop = parts.is_none_or(|ps| ps.contains(p));
            if drop {
                fleet.forget(vin);
                gone.push(vin.clone());
            }
            !drop
        });
        {
            let mut receipts = self.receipts();
            for vin in gone {
                receipts.remove(&vin);
            }
        }
        let mut mine = status.partitions.lock().unwrap_or_else(|e| e.into_inner());
        match parts {
            Some(ps) => mine.retain(|p| !ps.contains(p)),
            None => mine.clear(),
        }
        metrics::gauge!(m::CLUSTER_RULES_PARTITIONS).set(mine.len() as f64);
    }
}

/// The reader of the inputs topic: assigned the partitions of `V` this member owns.
type InputsConsumer = BaseConsumer<crate::kafka::reader::ReaderContext>;

/// The group member's context: restores on assignment, forgets on revocation, and keeps the
/// inputs reader's assignment equal to the owned `V` partitions.
struct RulesContext {
    settings: RulesSettings,
    /// The transactional producer (also commits the start offsets of new partitions).
    producer: Arc<BaseProducer>,
    inputs: Arc<InputsConsumer>,
    fleet: Fleet,
    owned: Arc<Owned>,
    status: Arc<RulesStatus>,
    /// Partitions revoked since the loop last looked: records of them collected for the
    /// open batch are dropped (their next owner starts at the committed offset).
    revoked: Mutex<Vec<i32>>,
    /// A restore or an assignment failed: the processor must start again.
    failed: Mutex<Option<Error>>,
}

impl ClientContext for RulesContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "cluster rules: Kafka client error");
    }
}

impl ConsumerContext for RulesContext {
    /// Incremental (cooperative) rebalancing: on assignment, each new partition starts at its
    /// committed offset — or, the first time the group sees it, at a start offset resolved
    /// (`rules_offset_reset`; the inputs at their beginning) and committed at once, so a member
    /// that dies before its first commit cannot make the next one skip records — after its
    /// state is restored; on revocation only the revoked partitions are forgotten.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr;
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut inputs = TopicPartitionList::new();
                let outcome = self
                    .start_offsets(consumer, tpl, &mut inputs)
                    .and_then(|()| match parts.is_empty() {
                        true => Ok(()),
                        false => self.restore(&parts),
                    });
                if let Err(e) = outcome {
                    self.fail(e);
                }
                if let Err(e) = crate::kafka::group::assign(consumer, tpl) {
                    self.fail(err_of("assigning the rules partitions", e));
                }
                if let Err(e) = self.inputs.incremental_assign(&inputs) {
                    self.fail(err_of("assigning the inputs partitions", e));
                }
                if parts.is_empty() && !self.status.joined.load(Ordering::Relaxed) {
                    tracing::info!("cluster rules: no partition assigned to this instance");
                }
                self.status.joined.store(true, Ordering::Relaxed);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?parts, lost, "cluster rules: partitions revoked; their vehicles' state is forgotten here");
                self.let_go(&parts);
                let _ = crate::kafka::group::unassign(consumer, tpl);
            }
            other => {
                tracing::warn!(error = ?other, "cluster rules: rebalance error; letting every partition go");
                let all = self.status.owned();
                self.let_go(&all);
                let _ = consumer.unassign();
            }
        }
    }
}

fn err_of(what: &'static str, e: KafkaError) -> Error {
    err(what)(e)
}

impl RulesContext {
    fn fail(&self, e: Error) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    /// Forgets `parts` here and stops reading their inputs.
    fn let_go(&self, parts: &[i32]) {
        self.owned.forget(&self.fleet, &self.status, Some(parts));
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(parts);
        let mut inputs = TopicPartitionList::new();
        let assigned = self.inputs.assignment().unwrap_or_default();
        for p in parts {
            if assigned
                .find_partition(&self.settings.inputs_topic, *p)
                .is_some()
            {
                inputs.add_partition(&self.settings.inputs_topic, *p);
            }
        }
        if inputs.count() > 0 {
            if let Err(e) = self.inputs.incremental_unassign(&inputs) {
                tracing::warn!(error = %e, "cluster rules: unassigning inputs partitions failed");
            }
        }
    }

    /// Sets each assigned `V` partition's start offset in `tpl` and fills `inputs` with the
    /// same-numbered inputs partitions at theirs: the committed ones, else the resolved reset
    /// offsets (the inputs from their beginning), committed now in a transaction of their own.
    fn start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        inputs: &mut TopicPartitionList,
    ) -> Result<(), Error> {
        let mut wanted = tpl.clone();
        for e in tpl.elements() {
            wanted.add_partition(&self.settings.inputs_topic, e.partition());
        }
        let frames = self.settings.frames_topic.as_str();
        let earliest = |topic: &str| topic != frames || self.settings.offset_reset == "earliest";
        let timeout = self.settings.timeout;
        let (starts, first) =
            crate::kafka::group::start_offsets(consumer, &wanted, earliest, timeout)?;
        for e in starts.elements() {
            if e.topic() == frames {
                tpl.set_partition_offset(e.topic(), e.partition(), e.offset())
            } else {
                inputs.add_partition_offset(e.topic(), e.partition(), e.offset())
            }
            .map_err(err("setting a start offset"))?;
        }
        if first.count() > 0 {
            let cgm = group_metadata(consumer)?;
            self.producer
                .begin_transaction()
                .map_err(err("beginning the start-offset transaction"))?;
            self.producer
                .send_offsets_to_transaction(&first, &cgm, timeout)
                .map_err(err("committing the start offsets"))?;
            self.producer
                .commit_transaction(timeout)
                .map_err(err("committing the start offsets"))?;
            tracing::info!(partitions = first.count(), reset = %self.settings.offset_reset, "cluster rules: first start offsets committed for partitions the group had never read");
        }
        Ok(())
    }

    /// Reads the state of `parts` from the changelog (committed records, to the end) into the
    /// fleet, before any of their records is processed.
    fn restore(&self, parts: &[i32]) -> Result<(), Error> {
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
                            self.owned.vins().remove(vin);
                            self.owned.receipts().remove(vin);
                        }
                        Some(Ok(mut record)) => {
                            let receipts = std::mem::take(&mut record.receipts);
                            self.fleet.restore(vin, record);
                            self.owned.vins().insert(vin.to_owned(), msg.partition());
                            self.owned
                                .receipts()
                                .insert(vin.to_owned(), receipts.into_iter().collect());
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
                return Err(Error::Timeout {
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
        self.status
            .restored_partitions
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        metrics::counter!(m::CLUSTER_RULES_PARTITIONS_RESTORED_TOTAL).increment(parts.len() as u64);
        self.status.restoring.store(false, Ordering::Relaxed);
        let took = started.elapsed();
        metrics::gauge!(m::CLUSTER_RULES_RESTORE_SECONDS).set(took.as_secs_f64());
        tracing::info!(partitions = ?parts, vehicles, took_ms = took.as_millis() as u64, "cluster rules: partitions assigned and their state restored");
        Ok(())
    }
}

type RulesConsumer = BaseConsumer<RulesContext>;

/// Records per transaction at most.
const BATCH: usize = 5000;

fn new_producer(settings: &RulesSettings) -> Result<BaseProducer, Error> {
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
        .set("linger.ms", "1")
        // nothing reads the reports of delivered records (a failed one fails the commit), and
        // without them a delivered record leaves the in-flight count at once, which is what
        // `kafka::txn::commit` waits for
        .set("delivery.report.only.error", "true");
    let producer: BaseProducer = config
        .create()
        .map_err(err("creating the rules producer"))?;
    // fences this instance's previous life and aborts its open transaction, if any
    producer
        .init_transactions(settings.timeout.max(Duration::from_secs(30)))
        .map_err(err("initialising the rules transactions"))?;
    Ok(producer)
}

fn inputs_reader(settings: &RulesSettings) -> Result<InputsConsumer, Error> {
    let mut config = crate::kafka::connection_config(&settings.properties)?;
    config
        .set("group.id", format!("{}-inputs", settings.group_id()))
        .set(
            "client.id",
            format!("fleetgate-{}-rules-inputs", settings.instance_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10");
    config
        .create_with_context(crate::kafka::reader::ReaderContext)
        .map_err(err("creating the inputs reader"))
}

/// One life of the processor: producer, group member, the loop.
fn run(
    settings: &RulesSettings,
    fleet: &Fleet,
    view: &Arc<ClusterView>,
    status: &Arc<RulesStatus>,
    stop: &Arc<AtomicBool>,
    owned: &Arc<Owned>,
) -> Result<(), Error> {
    let producer = Arc::new(new_producer(settings)?);
    let inputs = Arc::new(inputs_reader(settings)?);
    let mut config = crate::kafka::connection_config(&settings.properties)?;
    let session_ms = settings.session_timeout.as_millis().to_string();
    let heartbeat_ms = crate::kafka::group::heartbeat_interval(settings.session_timeout)
        .as_millis()
        .to_string();
    config
        .set("group.id", settings.group_id())
        .set(
            "client.id",
            format!("fleetgate-{}-rules", settings.instance_id),
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", &settings.offset_reset)
        .set("session.timeout.ms", &session_ms)
        .set("heartbeat.interval.ms", &heartbeat_ms)
        .set("fetch.wait.max.ms", "10");
    let context = RulesContext {
        settings: settings.clone(),
        producer: producer.clone(),
        inputs: inputs.clone(),
        fleet: fleet.clone(),
        owned: owned.clone(),
        status: status.clone(),
        revoked: Mutex::new(Vec::new()),
        failed: Mutex::new(None),
    };
    let consumer: RulesConsumer = config
        .create_with_context(context)
        .map_err(err("creating the rules consumer"))?;
    consumer
        .subscribe(&[settings.frames_topic.as_str()])
        .map_err(err("subscribing to the V topic"))?;
    tracing::info!(group = %settings.group_id(), topic = %settings.frames_topic, inputs = %settings.inputs_topic, "cluster rules: joining the group");
    let cache = WriteCache::new();
    let mut last_tick = Instant::now();
    // borrowed: the records stay in librdkafka's buffers, no copy per record
    let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(BATCH);
    // A window closes one interval after the previous one closed, not one interval after the
    // previous transaction committed: when applying and committing take longer than the
    // interval, what arrived meanwhile is taken at once instead of waiting another interval.
    let mut window_closed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        let deadline = window_closed + settings.commit_interval;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // wait for the first record up to the deadline (a moment at least); then take what
            // comes until it passes, and once it has, what is already queued
            let wait = crate::kafka::whole_ms(if batch.is_empty() {
                left.max(Duration::from_millis(1))
            } else {
                left
            });
            let got = match consumer.poll(wait) {
                Some(Ok(msg)) => {
                    batch.push(msg);
                    true
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "cluster rules: poll error");
                    false
                }
                None => false,
            };
            while batch.len() < BATCH {
                match inputs.poll(Duration::ZERO) {
                    Some(Ok(msg)) => batch.push(msg),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "cluster rules: inputs poll error");
                        break;
                    }
                    None => break,
                }
            }
            if batch.len() >= BATCH || (!got && Instant::now() >= deadline) {
                break;
            }
        }
        window_closed = Instant::now();
        if let Some(e) = consumer
            .context()
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        let revoked = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !revoked.is_empty() {
            // collected before their partition moved: the next owner reads them from the
            // committed offset
            batch.retain(|m| !revoked.contains(&m.partition()));
        }
        let tick = last_tick.elapsed() >= settings.sweep_every;
        if tick {
            last_tick = Instant::now();
        }
        if batch.is_empty() && !tick {
            continue;
        }
        let mut txn = Transaction {
            settings,
            producer: &producer,
            fleet,
            view,
            owned,
            status,
            cache: &cache,
            offsets: HashMap::new(),
            frames: 0,
            inputs: 0,
            events: 0,
        };
        txn.run(&batch, tick, &consumer)?;
    }
    consumer.unsubscribe();
    Ok(())
}

/// One transaction: the records of a window (and the clock, when due), applied in order; the
/// events, the changed vehicles' state and the offsets, committed together.
struct Transaction<'a> {
    settings: &'a RulesSettings,
    producer: &'a BaseProducer,
    fleet: &'a Fleet,
    view: &'a ClusterView,
    owned: &'a Owned,
    status: &'a RulesStatus,
    cache: &'a WriteCache,
    /// (topic is frames, partition) → next offset.
    offsets: HashMap<(bool, i32), i64>,
    frames: u64,
    inputs: u64,
    events: u64,
}

/// How long a full producer queue may hold up a transaction.
const PRODUCE_PATIENCE: Duration = Duration::from_secs(5);

impl Transaction<'_> {
    fn run(
        &mut self,
        batch: &[BorrowedMessage<'_>],
        tick: bool,
        consumer: &RulesConsumer,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut begun = false;
        for msg in batch {
            if !begun {
                self.producer
                    .begin_transaction()
                    .map_err(err("beginning a rules transaction"))?;
                begun = true;
            }
            self.record(msg)?;
        }
        if tick {
            let now_ms = crate::runner::now_ms();
            let mine = self.status.owned();
            for vin in self.fleet.due(now_ms) {
                if !mine.contains(&self.partition_of(&vin)) {
                    continue;
                }
                let outcome = self.fleet.run(&vin, &RuleInput::Tick { now_ms });
                if !outcome.changed && outcome.events.is_empty() && outcome.ended.is_empty() {
                    continue;
                }
                if !begun {
                    self.producer
                        .begin_transaction()
                        .map_err(err("beginning a rules transaction"))?;
                    begun = true;
                }
                self.cache.mark(&vin);
                self.emit(&outcome.events, &outcome.ended)?;
            }
        }
        if !begun {
            return Ok(());
        }
        let states = self.write_states()?;
        let timeout = self.settings.timeout;
        let applied = Instant::now();
        if !self.offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((frames, p), offset) in &self.offsets {
                let topic = if *frames {
                    &self.settings.frames_topic
                } else {
                    &self.settings.inputs_topic
                };
                tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))
                    .map_err(err("building the offsets"))?;
            }
            let cgm = group_metadata(consumer)?;
            self.producer
                .send_offsets_to_transaction(&tpl, &cgm, timeout)
                .map_err(err("adding the consumed offsets to the transaction"))?;
        }
        let offsets_added = Instant::now();
        crate::kafka::txn::commit(self.producer, timeout)
            .map_err(err("committing the rules transaction"))?;
        let committed = Instant::now();
        for (step, seconds) in [
            ("apply", applied - started),
            ("offsets", offsets_added - applied),
            ("commit", committed - offsets_added),
        ] {
            metrics::histogram!(m::CLUSTER_RULES_COMMIT_SECONDS, "step" => step)
                .record(seconds.as_secs_f64());
        }
        metrics::counter!(m::CLUSTER_RULES_TRANSACTIONS_TOTAL).increment(1);
        metrics::counter!(m::CLUSTER_RULES_FRAMES_TOTAL).increment(self.frames);
        metrics::counter!(m::CLUSTER_RULES_INPUTS_TOTAL).increment(self.inputs);
        metrics::counter!(m::RULE_STATE_WRITES_TOTAL).increment(states as u64);
        tracing::debug!(
            frames = self.frames,
            inputs = self.inputs,
            events = self.events,
            states,
            apply_ms = (applied - started).as_millis() as u64,
            offsets_ms = (offsets_added - applied).as_millis() as u64,
            commit_ms = (committed - offsets_added).as_millis() as u64,
            "cluster rules: transaction committed"
        );
        Ok(())
    }

    /// Applies one record (a `V` frame or another input) of an owned partition.
    fn record(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), Error> {
        let frames = msg.topic() == self.settings.frames_topic;
        let slot = self.offsets.entry((frames, msg.partition())).or_insert(0);
        *slot = (*slot).max(msg.offset() + 1);
        let Some(vin) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            metrics::counter!(m::CLUSTER_RULES_BAD_RECORDS_TOTAL).increment(1);
            return Ok(());
        };
        {
            let mut owned = self.owned.vins();
            if !owned.contains_key(vin) {
                owned.insert(vin.to_owned(), msg.partition());
            }
        }
        if frames {
            let payload = match Payload::decode(msg.payload().unwrap_or_default()) {
                Ok(p) => p,
                Err(e) => {
                    metrics::counter!(m::CLUSTER_RULES_BAD_RECORDS_TOTAL).increment(1);
                    tracing::warn!(vin, offset = msg.offset(), error = %e, "V record is not a vehicle_data Payload; skipped");
                    return Ok(());
                }
            };
            self.frames += 1;
            let outcome = apply_frame(self.fleet, vin, &payload, envelope_created_at_s(msg));
            return self.emit(&outcome.events, &outcome.ended);
        }
        let record: InputRecord = match serde_json::from_slice(msg.payload().unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(m::CLUSTER_RULES_BAD_RECORDS_TOTAL).increment(1);
                tracing::warn!(vin, offset = msg.offset(), error = %e, "inputs record is not a rules input; skipped");
                return Ok(());
            }
        };
        self.inputs += 1;
        let outcome = self.fleet.run(vin, &record.input);
        // the receipt is written with the vehicle's state, whatever the input changed
        let receipt = Receipt::of(&record.id, crate::runner::now_ms(), &outcome);
        {
            let mut receipts = self.owned.receipts();
            let list = receipts.entry(vin.to_owned()).or_default();
            list.push_back(receipt);
            while list.len() > RECEIPTS_KEPT {
                list.pop_front();
            }
        }
        self.cache.mark(vin);
        self.emit(&outcome.events, &outcome.ended)
    }

    /// The partition a vehicle's records and state live in.
    fn partition_of(&self, vin: &str) -> i32 {
        if let Some(p) = self.owned.vins().get(vin) {
            return *p;
        }
        self.view
            .partition_of(vin)
            .unwrap_or_else(|| default_partition(vin, self.settings.partitions))
    }

    /// Produces events, and the tombstones of the watches that `ended`, into the transaction.
    fn emit(&mut self, events: &[Event], ended: &[String]) -> Result<(), Error> {
        for event in events {
            crate::metrics::count_event(event.kind.as_str());
            let json = serde_json::to_vec(&event.to_cloudevent()).unwrap_or_default();
            let (value, headers) =
                event_message(event, &json, self.settings.event_mode).map_err(|e| {
                    Error::Kafka {
                        what: "encoding an event",
                        error: e.to_string(),
                    }
                })?;
            send_with_room(
                self.producer,
                BaseRecord::to(&self.settings.events_topic)
                    .key(event.vin.as_str())
                    .payload(value.as_ref())
                    .headers(headers),
                PRODUCE_PATIENCE,
            )?;
            self.events += 1;
        }
        // an ended watch is gone for every instance
        for id in ended {
            send_with_room(
                self.producer,
                BaseRecord::to(&self.settings.watches_topic).key(id),
                PRODUCE_PATIENCE,
            )?;
        }
        Ok(())
    }

    /// Writes the state of every vehicle that changed in this transaction (with its
    /// receipts) to the changelog; returns how many.
    fn write_states(&mut self) -> Result<usize, Error> {
        let states = self.cache.take(self.fleet);
        for (vin, state) in &states {
            let mut state = state.clone().unwrap_or_else(|| RuleState {
                vehicle: Default::default(),
                tracking: Default::default(),
                watches: Default::default(),
                receipts: Vec::new(),
            });
            if let Some(r) = self.owned.receipts().get(vin) {
                state.receipts = r.iter().cloned().collect();
            }
            let value = serde_json::to_vec(&state).unwrap_or_default();
            let partition = self.partition_of(vin);
            send_with_room(
                self.producer,
                BaseRecord::to(&self.settings.state_topic)
                    .key(vin.as_str())
                    .payload(value.as_slice())
                    .partition(partition),
                PRODUCE_PATIENCE,
            )?;
        }
        Ok(states.len())
    }
}

/// One `V` record's signals run through the rules of its vehicle: what the rules of cluster
/// mode do per frame between reading the record and producing its events (the
/// instruction-count gate, `benches/instructions.rs`, measures it with the decode).
pub fn apply_frame(
    fleet: &Fleet,
    vin: &str,
    payload: &Payload,
    created_at_s: u32,
) -> crate::rules::input::Outcome {
    let update = VehicleUpdate::from_payload(payload, created_at_s);
    fleet.apply_signals(vin, &update)
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
