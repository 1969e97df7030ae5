//! Cluster mode's shared admin state: sites, watches and VIN lists in three compacted Kafka
//! topics that every instance of the cluster reads from the beginning and applies.
//!
//! Records: key = the site id, the watch id, or `allow:VIN` / `block:VIN`; value = the site's
//! GeoJSON Feature, the watch spec (the admin API's JSON), or `{"list", "vin"}`; a delete is a
//! tombstone (no value), which compaction keeps until `delete.retention.ms`.
//!
//! Writes: one Kafka transaction per admin request (an import of many sites is all or
//! nothing), from this instance's transactional producer (`transactional.id` =
//! `fleetgate-{namespace}-{cluster}-{instance}-admin`, so a restarted instance fences its
//! older self).
//! Readers use `isolation.level=read_committed`, so an aborted write is never applied. The
//! writer answers after its own reader applied every record of the transaction
//! (read-your-writes); the other instances apply it as soon as their reader fetches it.
//!
//! Reads: one reader thread per topic (a plain consumer with manual assignment of every
//! partition from the beginning, no consumer group: every instance needs every record). At
//! start the server waits until each reader reached the end of its topic (restore).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::control::{Change, Live, VinList};
use crate::kafka::reader::{topic_reader, ReaderConsumer};
use crate::kafka::txn::transactional_config;
use crate::kafka::{err as kafka_err, Error as ClusterError};
use crate::metrics as m;
use crate::rules::geojson::{site_from_feature, site_to_feature};
use crate::rules::sites::Site;

/// The shared admin-state topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Sites.
    pub sites: String,
    /// Watches.
    pub watches: String,
    /// VIN lists.
    pub vins: String,
    /// Import marks of the config's own sites and watches.
    pub imports: String,
    /// Tesla onboarding's records.
    pub tesla: String,
}

impl Topics {
    /// The configured names, or `{namespace}_fleetgate_sites|watches|vins`.
    pub fn from_config(namespace: &str, c: &crate::cluster::config::ClusterTopicsConfig) -> Topics {
        let default =
            |kind: &str| crate::kafka::topic_name(namespace, &format!("fleetgate_{kind}"));
        Topics {
            sites: c.sites.clone().unwrap_or_else(|| default("sites")),
            watches: c.watches.clone().unwrap_or_else(|| default("watches")),
            vins: c.vins.clone().unwrap_or_else(|| default("vins")),
            imports: c.imports.clone().unwrap_or_else(|| default("imports")),
            tesla: c.tesla.clone().unwrap_or_else(|| default("tesla")),
        }
    }

    fn all(&self) -> [(Kind, &str); 5] {
        [
            (Kind::Sites, &self.sites),
            (Kind::Watches, &self.watches),
            (Kind::Vins, &self.vins),
            (Kind::Imports, &self.imports),
            (Kind::Tesla, &self.tesla),
        ]
    }
}

/// Which shared topic a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Sites.
    Sites,
    /// Watches.
    Watches,
    /// VIN lists.
    Vins,
    /// Import marks.
    Imports,
    /// Tesla onboarding's records.
    Tesla,
}

impl Kind {
    /// Every shared topic (metrics are registered at zero for each).
    pub const ALL: [Kind; 5] = [
        Kind::Sites,
        Kind::Watches,
        Kind::Vins,
        Kind::Imports,
        Kind::Tesla,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sites => "sites",
            Kind::Watches => "watches",
            Kind::Vins => "vins",
            Kind::Imports => "imports",
            Kind::Tesla => "tesla",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct VinRecord {
    list: VinList,
    vin: String,
}

/// A change as a record: topic kind, key, value (None = tombstone).
pub fn encode(change: &Change) -> (Kind, String, Option<Vec<u8>>) {
    fn json<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).unwrap_or_default()
    }
    match change {
        Change::PutSite(site) => (
            Kind::Sites,
            site.id.clone(),
            Some(json(&site_to_feature(site))),
        ),
        Change::DeleteSite(id) => (Kind::Sites, id.clone(), None),
        Change::PutWatch(spec) => (Kind::Watches, spec.watch_id.clone(), Some(json(spec))),
        Change::DeleteWatch(id) => (Kind::Watches, id.clone(), None),
        Change::PutVin(list, vin) => (
            Kind::Vins,
            vin_key(*list, vin),
            Some(json(&VinRecord {
                list: *list,
                vin: vin.clone(),
            })),
        ),
        Change::DeleteVin(list, vin) => (Kind::Vins, vin_key(*list, vin), None),
        Change::PutTesla(record) => (Kind::Tesla, record.key(), Some(json(record))),
        Change::DeleteTesla(key) => (Kind::Tesla, key.clone(), None),
        Change::Imported(mark) => (
            Kind::Imports,
            format!("{}/{}", mark.source, mark.item),
            Some(json(&serde_json::json!({"digest": mark.digest}))),
        ),
    }
}

fn vin_key(list: VinList, vin: &str) -> String {
    format!("{}:{vin}", list.as_str())
}

/// A record back into a change; the error says what is wrong with it.
pub fn decode(
    kind: Kind,
    key: &[u8],
    value: Option<&[u8]>,
    default_radius_m: f64,
) -> Result<Change, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
    if key.is_empty() {
        return Err("empty key".into());
    }
    let value = match value {
        None => {
            return Ok(match kind {
                Kind::Sites => Change::DeleteSite(key.to_owned()),
                Kind::Watches => Change::DeleteWatch(key.to_owned()),
                Kind::Vins => {
                    let (list, vin) = key
                        .split_once(':')
                        .and_then(|(l, v)| Some((VinList::parse(l)?, v)))
                        .ok_or_else(|| format!("key `{key}` is not allow:VIN or block:VIN"))?;
                    Change::DeleteVin(list, vin.to_owned())
                }
                Kind::Imports => return Err("an import mark is never deleted".into()),
                Kind::Tesla if crate::tesla::state::is_key(key) => {
                    Change::DeleteTesla(key.to_owned())
                }
                Kind::Tesla => return Err(format!("key `{key}` is not a Tesla record's key")),
            })
        }
        Some(v) => v,
    };
    match kind {
        Kind::Sites => {
            let feature: geojson::Feature =
                serde_json::from_slice(value).map_err(|e| format!("not a GeoJSON Feature: {e}"))?;
            let site: Site =
                site_from_feature(&feature, default_radius_m).map_err(|e| e.to_string())?;
            if site.id != key {
                return Err(format!(
                    "key `{key}` differs from the site id `{}`",
                    site.id
                ));
            }
            Ok(Change::PutSite(site))
        }
        Kind::Watches => {
            let spec: crate::rules::arrival::WatchSpec =
                serde_json::from_slice(value).map_err(|e| format!("not a watch: {e}"))?;
            if spec.watch_id != key {
                return Err(format!(
                    "key `{key}` differs from the watch id `{}`",
                    spec.watch_id
                ));
            }
            Ok(Change::PutWatch(spec))
        }
        Kind::Vins => {
            let r: VinRecord =
                serde_json::from_slice(value).map_err(|e| format!("not a VIN record: {e}"))?;
            if vin_key(r.list, &r.vin) != key {
                return Err(format!("key `{key}` differs from the record"));
            }
            Ok(Change::PutVin(r.list, r.vin))
        }
        Kind::Tesla => {
            let record: crate::tesla::state::TeslaRecord = serde_json::from_slice(value)
                .map_err(|e| format!("not a Tesla onboarding record: {e}"))?;
            if record.key() != key {
                return Err(format!(
                    "key `{key}` differs from the record's `{}`",
                    record.key()
                ));
            }
            Ok(Change::PutTesla(record))
        }
        Kind::Imports => {
            let (source, item) = key
                .split_once('/')
                .ok_or_else(|| format!("key `{key}` is not SOURCE/ITEM"))?;
            let digest = serde_json::from_slice::<Value>(value)
                .ok()
                .and_then(|v| v["digest"].as_str().map(str::to_owned))
                .ok_or_else(|| "not an import mark {\"digest\"}".to_owned())?;
            Ok(Change::Imported(crate::control::ImportMark {
                source: source.to_owned(),
                item: item.to_owned(),
                digest,
            }))
        }
    }
}

/// How far this instance has applied each partition, and what VIN changes closed.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// (topic, partition) → the next offset to apply.
    next: HashMap<(String, i32), i64>,
    /// Topics whose reader reached the end once (restore done when all three did).
    restored: Vec<String>,
    /// The connections closed by recent VIN records, by (topic, partition, offset).
    vin_closed: VecDeque<((String, i32, i64), usize)>,
}

impl Progress {
    fn applied(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.next
            .get(&(topic.to_owned(), partition))
            .is_some_and(|&n| n > offset)
    }
}

/// What the shared log needs to start.
#[derive(Debug, Clone)]
pub struct SharedLogSettings {
    /// The `kafka` section (secrets filled in).
    pub properties: serde_json::Map<String, Value>,
    /// The config's `namespace` (part of the Kafka ids: clusters of two namespaces never
    /// fence each other).
    pub namespace: String,
    /// `fleetgate.cluster.name`.
    pub cluster: String,
    /// This instance's id.
    pub instance_id: String,
    /// Topic names.
    pub topics: Topics,
    /// Limit of one admin write (commit + read-back) and of each start-up step.
    pub write_timeout: Duration,
    /// Radius of point sites without `radius_m`.
    pub default_radius_m: f64,
}

/// The shared admin state of a cluster: a transactional writer and the readers.
pub struct SharedLog {
    settings: SharedLogSettings,
    producer: tokio::sync::Mutex<Option<FutureProducer>>,
    progress: watch::Receiver<Progress>,
    stop: Arc<AtomicBool>,
    readers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    started: Instant,
}

impl SharedLog {
    /// Creates the topics if missing (compacted), the transactional producer and the readers,
    /// which start applying to `live` at once. Await [`SharedLog::restored`] before serving.
    pub async fn start(
        settings: SharedLogSettings,
        live: Live,
    ) -> Result<Arc<SharedLog>, ClusterError> {
        ensure_topics(&settings).await?;
        let producer = new_producer(&settings).await?;
        let (tx, rx) = watch::channel(Progress::default());
        let tx = Arc::new(tx);
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for (kind, topic) in settings.topics.all() {
            let consumer = new_reader(&settings, topic)?;
            let reader = Reader {
                kind,
                topic: topic.to_owned(),
                consumer,
                live: live.clone(),
                progress: tx.clone(),
                stop: stop.clone(),
                default_radius_m: settings.default_radius_m,
            };
            let handle = std::thread::Builder::new()
                .name(format!("shared-{}", kind.as_str()))
                .spawn(move || reader.run())
                .map_err(|e| ClusterError::Kafka {
                    what: "starting a reader thread",
                    error: e.to_string(),
                })?;
            readers.push(handle);
        }
        metrics::gauge!(m::CLUSTER_RESTORED).set(0.0);
        Ok(Arc::new(SharedLog {
            settings,
            producer: tokio::sync::Mutex::new(Some(producer)),
            progress: rx,
            stop,
            readers: Mutex::new(readers),
            started: Instant::now(),
        }))
    }

    /// True once every reader reached the end of its topic once.
    pub fn is_restored(&self) -> bool {
        self.progress.borrow().restored.len() == self.settings.topics.all().len()
    }

    /// Waits until the shared state is restored, logging progress every 5 s.
    pub async fn restored(&self) {
        let mut rx = self.progress.clone();
        let topics = self.settings.topics.all().len();
        loop {
            let wait = rx.wait_for(|p| p.restored.len() == topics);
            match tokio::time::timeout(Duration::from_secs(5), wait).await {
                Ok(_) => break,
                Err(_) => {
                    let done = self.progress.borrow().restored.clone();
                    tracing::info!(done = ?done, elapsed_s = self.started.elapsed().as_secs(), "still restoring the cluster's shared state from Kafka");
                }
            }
        }
        let took = self.started.elapsed();
        metrics::gauge!(m::CLUSTER_RESTORE_SECONDS).set(took.as_secs_f64());
        metrics::gauge!(m::CLUSTER_RESTORED).set(1.0);
        tracing::info!(
            took_ms = took.as_millis() as u64,
            "cluster shared state restored (sites, watches, VIN lists)"
        );
    }

    /// Commits `changes` in one transaction and waits until this instance applied them.
    /// Returns the connections this instance closed because of VIN-list changes.
    pub async fn write(&self, changes: Vec<Change>) -> Result<usize, ClusterError> {
        let started = Instant::now();
        let limit = self.settings.write_timeout;
        let delivered = {
            // one transaction at a time per producer
            let mut slot = self.producer.lock().await;
            if slot.is_none() {
                *slot = Some(new_producer(&self.settings).await?);
            }
            let producer = slot.as_ref().expect("set above").clone();
            match tokio::time::timeout(limit, self.commit(&producer, &changes)).await {
                Ok(Ok(delivered)) => delivered,
                Ok(Err((e, fatal))) => {
                    if fatal {
                        // a fenced or broken producer is replaced on the next write
                        *slot = None;
                    }
                    return Err(e);
                }
                Err(_) => {
                    metrics::counter!(m::CLUSTER_TRANSACTION_ABORTS_TOTAL, "reason" => "commit")
                        .increment(1);
                    // the transaction may still be open: a fresh producer fences it
                    *slot = None;
                    return Err(ClusterError::Timeout {
                        what: "the transaction",
                        after: limit,
                    });
                }
            }
        };
        let left = limit.saturating_sub(started.elapsed());
        let mut rx = self.progress.clone();
        let wait = rx.wait_for(|p| {
            delivered
                .iter()
                .all(|(topic, partition, offset)| p.applied(topic, *partition, *offset))
        });
        let closed = match tokio::time::timeout(left, wait).await {
            Ok(Ok(p)) => p
                .vin_closed
                .iter()
                .filter(|(at, _)| delivered.contains(at))
                .map(|(_, n)| n)
                .sum(),
            _ => {
                metrics::counter!(m::CLUSTER_TRANSACTION_ABORTS_TOTAL, "reason" => "read_back_timeout").increment(1);
                return Err(ClusterError::Timeout {
                    what: "reading the committed write back",
                    after: limit,
                });
            }
        };
        metrics::histogram!(m::CLUSTER_WRITE_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(closed)
    }

    /// Begin, produce, commit; on failure abort. The error says whether the producer is
    /// unusable (fatal) and must be replaced.
    async fn commit(
        &self,
        producer: &FutureProducer,
        changes: &[Change],
    ) -> Result<Vec<(String, i32, i64)>, (ClusterError, bool)> {
        let fatal_of = |e: &KafkaError| matches!(e, KafkaError::Transaction(t) if t.is_fatal());
        let timeout = self.settings.write_timeout;

        let p = producer.clone();
        let begun = tokio::task::spawn_blocking(move || p.begin_transaction())
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        if let Err(e) = begun {
            // a producer that cannot begin a transaction is replaced on the next write
            return Err((kafka_err("beginning a transaction")(e), true));
        }

        let mut pending = Vec::with_capacity(changes.len());
        let mut failure = None;
        for change in changes {
            let (kind, key, value) = encode(change);
            let topic = self.topic_of(kind);
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(&key);
            if let Some(v) = value.as_deref() {
                record = record.payload(v);
            }
            match producer.send_result(record) {
                Ok(delivery) => pending.push((topic.to_owned(), delivery)),
                Err((e, _)) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut delivered = Vec::with_capacity(pending.len());
        if failure.is_none() {
            for (topic, delivery) in pending {
                match delivery.await {
                    Ok(Ok(d)) => delivered.push((topic, d.partition, d.offset)),
                    Ok(Err((e, _))) => {
                        failure = Some(e);
                        break;
                    }
                    Err(_) => {
                        failure = Some(KafkaError::Canceled);
                        break;
                    }
                }
            }
        }
        let p = producer.clone();
        let outcome = match failure {
            None => tokio::task::spawn_blocking(move || p.commit_transaction(timeout))
                .await
                .unwrap_or(Err(KafkaError::Canceled))
                .map_err(|e| ("committing the transaction", e)),
            Some(e) => Err(("producing the records", e)),
        };
        match outcome {
            Ok(()) => Ok(delivered),
            Err((what, e)) => {
                let reason = if what == "producing the records" {
                    "produce"
                } else {
                    "commit"
                };
                metrics::counter!(m::CLUSTER_TRANSACTION_ABORTS_TOTAL, "reason" => reason)
                    .increment(1);
                // a fatal producer error (fencing above all) explains a purged record better
                if let Some((code, text)) = producer.client().fatal_error() {
                    let error = if code == RDKafkaErrorCode::Fenced {
                        format!("another process uses this instance's transactional id (two instances with the same fleetgate.cluster.instance_id?); this instance's next write takes it back: {text}")
                    } else {
                        format!("{code}: {text}")
                    };
                    return Err((ClusterError::Kafka { what, error }, true));
                }
                let fatal = fatal_of(&e);
                if !fatal {
                    let p = producer.clone();
                    let aborted = tokio::task::spawn_blocking(move || p.abort_transaction(timeout))
                        .await
                        .unwrap_or(Err(KafkaError::Canceled));
                    if let Err(abort) = aborted {
                        tracing::warn!(error = %abort, "aborting the admin transaction failed; the producer is replaced");
                        return Err((kafka_err(what)(e), true));
                    }
                }
                Err((kafka_err(what)(e), fatal))
            }
        }
    }

    fn topic_of(&self, kind: Kind) -> &str {
        match kind {
            Kind::Sites => &self.settings.topics.sites,
            Kind::Watches => &self.settings.topics.watches,
            Kind::Vins => &self.settings.topics.vins,
            Kind::Imports => &self.settings.topics.imports,
            Kind::Tesla => &self.settings.topics.tesla,
        }
    }

    /// Stops the readers (the producer is dropped with the log).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        for r in readers {
            let _ = r.join();
        }
    }

    /// The topic names.
    pub fn topics(&self) -> &Topics {
        &self.settings.topics
    }
}

impl crate::control::AdminLog for SharedLog {
    fn write(
        &self,
        changes: Vec<Change>,
    ) -> crate::runner::BoxFuture<'_, Result<usize, crate::control::WriteError>> {
        Box::pin(async move {
            SharedLog::write(self, changes).await.map_err(|e| {
                tracing::error!(error = %e, "admin write to the cluster's shared state failed");
                crate::control::WriteError::Unavailable {
                    backend: "cluster",
                    detail: e.to_string(),
                }
            })
        })
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn ensure_topics(settings: &SharedLogSettings) -> Result<(), ClusterError> {
    let names = settings.topics.all().map(|(_, t)| t);
    crate::kafka::topics::ensure_compacted(&settings.properties, &names, settings.write_timeout)
        .await
}

async fn new_producer(settings: &SharedLogSettings) -> Result<FutureProducer, ClusterError> {
    let ids = (
        settings.namespace.as_str(),
        settings.cluster.as_str(),
        settings.instance_id.as_str(),
    );
    let mut config = transactional_config(&settings.properties, ids, "admin")?;
    config.set("linger.ms", "0");
    let producer: FutureProducer = config
        .create()
        .map_err(kafka_err("creating the admin-state producer"))?;
    let p = producer.clone();
    let timeout = settings.write_timeout.max(Duration::from_secs(30));
    tokio::task::spawn_blocking(move || p.init_transactions(timeout))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
        .map_err(kafka_err(
            "initialising transactions (is the transaction coordinator up?)",
        ))?;
    Ok(producer)
}

fn new_reader(settings: &SharedLogSettings, topic: &str) -> Result<ReaderConsumer, ClusterError> {
    let group = format!(
        "fleetgate-{}-{}-{}-shared",
        settings.namespace, settings.cluster, settings.instance_id
    );
    topic_reader(
        &settings.properties,
        &group,
        topic,
        None,
        settings.write_timeout,
    )
}

/// One topic's reader: polls, decodes, applies in batches, publishes its progress.
struct Reader {
    kind: Kind,
    topic: String,
    consumer: ReaderConsumer,
    live: Live,
    progress: Arc<watch::Sender<Progress>>,
    stop: Arc<AtomicBool>,
    default_radius_m: f64,
}

/// Records applied as one batch at most (sites are re-indexed once per batch).
const BATCH: usize = 5000;

impl Reader {
    fn run(self) {
        let partitions = self.consumer.assignment().map(|a| a.count()).unwrap_or(1);
        let mut at_end = std::collections::HashSet::new();
        let mut last_error = None::<Instant>;
        while !self.stop.load(Ordering::Relaxed) {
            let mut batch: Vec<(i32, i64, Option<Change>)> = Vec::new();
            let mut newest_ms = None;
            let mut wait = Duration::from_millis(100);
            while batch.len() < BATCH {
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Ok(msg)) => {
                        let change = decode(
                            self.kind,
                            msg.key().unwrap_or_default(),
                            msg.payload(),
                            self.default_radius_m,
                        );
                        let change = match change {
                            Ok(c) => Some(c),
                            Err(problem) => {
                                metrics::counter!(m::CLUSTER_SHARED_BAD_RECORDS_TOTAL, "kind" => self.kind.as_str()).increment(1);
                                tracing::warn!(topic = %self.topic, partition = msg.partition(), offset = msg.offset(), problem, "unreadable shared-state record skipped");
                                None
                            }
                        };
                        newest_ms = msg.timestamp().to_millis().or(newest_ms);
                        batch.push((msg.partition(), msg.offset(), change));
                        wait = Duration::ZERO;
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        at_end.insert(p);
                        if at_end.len() >= partitions {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                            tracing::warn!(topic = %self.topic, error = %e, "shared-state reader: Kafka error (retrying)");
                            last_error = Some(Instant::now());
                        }
                        break;
                    }
                }
            }
            self.apply(&batch, at_end.len() >= partitions, newest_ms);
        }
    }

    /// Applies a batch (VIN changes one by one, so their closed connections are attributed),
    /// then publishes the new positions.
    fn apply(&self, batch: &[(i32, i64, Option<Change>)], at_end: bool, newest_ms: Option<i64>) {
        let mut vin_closed = Vec::new();
        if self.kind == Kind::Vins {
            for (partition, offset, change) in batch {
                if let Some(change) = change {
                    let closed = self.live.apply(std::slice::from_ref(change));
                    vin_closed.push(((self.topic.clone(), *partition, *offset), closed));
                }
            }
        } else {
            let changes: Vec<Change> = batch.iter().filter_map(|(_, _, c)| c.clone()).collect();
            if !changes.is_empty() {
                self.live.apply(&changes);
            }
        }
        if !batch.is_empty() {
            metrics::counter!(m::CLUSTER_SHARED_APPLIED_TOTAL, "kind" => self.kind.as_str())
                .increment(batch.len() as u64);
            if let Some(ms) = newest_ms {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let lag = (now_ms - ms).max(0) as f64 / 1000.0;
                metrics::histogram!(m::CLUSTER_REPLICATION_LAG_SECONDS).record(lag);
            }
        }
        let restored_now = at_end;
        if batch.is_empty() && !restored_now {
            return;
        }
        self.progress.send_modify(|p| {
            for (partition, offset, _) in batch {
                let next = p.next.entry((self.topic.clone(), *partition)).or_insert(0);
                *next = (*next).max(offset + 1);
            }
            p.vin_closed.extend(vin_closed);
            while p.vin_closed.len() > 1024 {
                p.vin_closed.pop_front();
            }
            if restored_now && !p.restored.contains(&self.topic) {
                p.restored.push(self.topic.clone());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::arrival::WatchSpec;
    use crate::rules::sites::Shape;

    #[test]
    fn every_change_survives_its_record_form() {
        let site = Site {
            id: "s1".into(),
            name: "Store".into(),
            kind: "charger".into(),
            tags: [("zone".to_owned(), "north".to_owned())].into(),
            shape: Shape::Circle {
                lat: 30.2,
                lon: -97.7,
                radius_m: 120.0,
            },
        };
        let watch = WatchSpec {
            watch_id: "w1".into(),
            vin: "VIN1".into(),
            site_id: "s1".into(),
            target_soc: Some(80.0),
            notify_eta_minutes: None,
            expires_at: "2099-01-01T00:00:00Z".into(),
        };
        for change in [
            Change::PutSite(site),
            Change::DeleteSite("s1".into()),
            Change::PutWatch(watch),
            Change::DeleteWatch("w1".into()),
            Change::PutVin(VinList::Block, "VIN1".into()),
            Change::DeleteVin(VinList::Allow, "VIN:2".into()),
            Change::Imported(crate::control::ImportMark {
                source: "sites_file".into(),
                item: "s/1".into(),
                digest: "ab12".into(),
            }),
        ] {
            let (kind, key, value) = encode(&change);
            let back = decode(kind, key.as_bytes(), value.as_deref(), 250.0).unwrap();
            assert_eq!(back, change);
        }
    }

    #[test]
    fn records_that_do_not_fit_are_refused_with_the_reason() {
        let bad = |kind, key: &str, value: Option<&str>| {
            decode(kind, key.as_bytes(), value.map(str::as_bytes), 250.0).unwrap_err()
        };
        assert!(bad(Kind::Sites, "s1", Some("{")).contains("GeoJSON"));
        assert!(bad(Kind::Vins, "maybe:VIN", None).contains("allow:VIN"));
        let watch =
            r#"{"watch_id":"other","vin":"V","site_id":"s","expires_at":"2099-01-01T00:00:00Z"}"#;
        assert!(bad(Kind::Watches, "w1", Some(watch)).contains("differs"));
        assert!(bad(Kind::Watches, "", None).contains("empty key"));
    }

    #[test]
    fn topic_names_follow_the_namespace_unless_set() {
        let mut c = crate::cluster::config::ClusterTopicsConfig::default();
        let t = Topics::from_config("tesla", &c);
        assert_eq!(
            (t.sites.as_str(), t.watches.as_str(), t.vins.as_str()),
            (
                "tesla_fleetgate_sites",
                "tesla_fleetgate_watches",
                "tesla_fleetgate_vins"
            )
        );
        assert_eq!(t.imports, "tesla_fleetgate_imports");
        c.sites = Some("shared_sites".into());
        assert_eq!(Topics::from_config("tesla", &c).sites, "shared_sites");
    }
}
