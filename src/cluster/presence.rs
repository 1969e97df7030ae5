//! Which instance holds which vehicle socket, for `/v1/connections` and a vehicle's
//! `connections` on any instance of the cluster.
//!
//! A compacted topic (`{ns}_fleetgate_presence`, one partition): each instance publishes, every
//! [`PUBLISH_EVERY`], the sockets opened since its last publication (key
//! `{instance}/{connection id}`, value the connection entry), a tombstone for each socket
//! closed since, and a heartbeat (key `{instance}`, value `{"at_ms"}`). Every instance reads
//! the topic into a view; an instance's sockets count only while its heartbeat is younger than
//! [`STALE_AFTER`], so a crashed instance's sockets drop out on their own. A restarted instance
//! tombstones the sockets its previous life left; a clean shutdown tombstones its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use crate::ingest::registry::{ConnectionEntry, Registry};
use crate::kafka::reader::topic_reader;
use crate::kafka::{err as kafka_err, Error as ClusterError};

/// How often an instance publishes its socket changes and heartbeat.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// An instance whose heartbeat is older than this holds no sockets.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Default)]
struct View {
    /// `{instance}/{connection id}` → the entry (with `instance` set).
    sockets: HashMap<String, ConnectionEntry>,
    /// Instance → its last heartbeat (ms).
    heartbeats: HashMap<String, i64>,
    /// The reader reached the end of the topic once.
    restored: bool,
}

/// The presence view and its reader and publisher threads.
pub struct Presence {
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Presence {
    /// Creates the topic if missing and starts reading and publishing.
    pub async fn start(
        properties: &serde_json::Map<String, Value>,
        group_id: &str,
        topic: &str,
        instance: &str,
        registry: Arc<Registry>,
        timeout: Duration,
    ) -> Result<Arc<Presence>, ClusterError> {
        crate::kafka::topics::ensure_compacted(properties, &[topic], timeout).await?;
        let reader = topic_reader(properties, group_id, topic, None, timeout)?;
        let mut config =
            crate::kafka::client_config(properties).map_err(|e| ClusterError::Kafka {
                what: "configuring the presence producer",
                error: e.to_string(),
            })?;
        config.remove("statistics.interval.ms");
        let producer: BaseProducer = config
            .create()
            .map_err(kafka_err("creating the presence producer"))?;
        let view = Arc::new(Mutex::new(View::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (view, stop) = (view.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("presence-read".into())
                    .spawn(move || read_loop(&reader, &view, &stop))
                    .map_err(|e| ClusterError::Kafka {
                        what: "starting the presence reader",
                        error: e.to_string(),
                    })?,
            );
        }
        {
            let (view, stop) = (view.clone(), stop.clone());
            let (topic, instance) = (topic.to_owned(), instance.to_owned());
            threads.push(
                std::thread::Builder::new()
                    .name("presence-publish".into())
                    .spawn(move || {
                        publish_loop(&producer, &topic, &instance, &registry, &view, &stop)
                    })
                    .map_err(|e| ClusterError::Kafka {
                        what: "starting the presence publisher",
                        error: e.to_string(),
                    })?,
            );
        }
        Ok(Arc::new(Presence {
            view,
            stop,
            threads: Mutex::new(threads),
        }))
    }

    /// The sockets of every live instance (optionally one VIN's), each naming its instance.
    pub fn connections(&self, vin: Option<&str>) -> Vec<ConnectionEntry> {
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let fresh_since = now_ms() - STALE_AFTER.as_millis() as i64;
        let mut out: Vec<ConnectionEntry> = view
            .sockets
            .values()
            .filter(|e| vin.is_none_or(|v| e.vin == v))
            .filter(|e| {
                e.instance
                    .as_ref()
                    .and_then(|i| view.heartbeats.get(i))
                    .is_some_and(|at| *at >= fresh_since)
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (&a.vin, a.since_ms, &a.connection_id).cmp(&(&b.vin, b.since_ms, &b.connection_id))
        });
        out
    }

    /// Stops both threads; the publisher tombstones this instance's sockets first.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = t.join();
        }
    }
}

fn read_loop(reader: &crate::kafka::reader::ReaderConsumer, view: &Mutex<View>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
                match (key.split_once('/'), msg.payload()) {
                    (Some(_), None) => {
                        v.sockets.remove(key);
                    }
                    (Some((instance, _)), Some(bytes)) => {
                        if let Ok(mut entry) = serde_json::from_slice::<ConnectionEntry>(bytes) {
                            entry.instance = Some(instance.to_owned());
                            v.sockets.insert(key.to_owned(), entry);
                        }
                    }
                    (None, None) => {
                        v.heartbeats.remove(key);
                        let prefix = format!("{key}/");
                        v.sockets.retain(|k, _| !k.starts_with(&prefix));
                    }
                    (None, Some(bytes)) => {
                        let at = serde_json::from_slice::<Value>(bytes)
                            .ok()
                            .and_then(|b| b["at_ms"].as_i64())
                            .unwrap_or(0);
                        v.heartbeats.insert(key.to_owned(), at);
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                view.lock().unwrap_or_else(|e| e.into_inner()).restored = true;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "presence reader: Kafka error (retrying)");
                std::thread::sleep(Duration::from_millis(200));
            }
            None => {}
        }
    }
}

fn publish_loop(
    producer: &BaseProducer,
    topic: &str,
    instance: &str,
    registry: &Registry,
    view: &Mutex<View>,
    stop: &AtomicBool,
) {
    let key = |id: &str| format!("{instance}/{id}");
    // what a previous life of this instance left: closed since, so tombstoned first
    let started = Instant::now();
    while !view.lock().unwrap_or_else(|e| e.into_inner()).restored {
        if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let prefix = format!("{instance}/");
    let mut published: BTreeSet<String> = view
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sockets
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    let send = |k: &str, value: Option<&[u8]>| {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(k);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Err((e, _)) = producer.send(record) {
            tracing::warn!(error = %e, "presence: a record could not be queued (retried at the next round)");
            return false;
        }
        true
    };
    let mut last = Instant::now() - PUBLISH_EVERY;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping || last.elapsed() >= PUBLISH_EVERY {
            last = Instant::now();
            let open: HashMap<String, ConnectionEntry> = if stopping {
                HashMap::new()
            } else {
                registry
                    .list()
                    .into_iter()
                    .map(|e| (key(&e.connection_id), e))
                    .collect()
            };
            for (k, entry) in &open {
                if !published.contains(k) {
                    let value = serde_json::to_vec(entry).unwrap_or_default();
                    if send(k, Some(&value)) {
                        published.insert(k.clone());
                    }
                }
            }
            let closed: Vec<String> = published
                .iter()
                .filter(|k| !open.contains_key(*k))
                .cloned()
                .collect();
            for k in closed {
                if send(&k, None) {
                    published.remove(&k);
                }
            }
            if stopping {
                send(instance, None);
                let _ = producer.flush(Duration::from_secs(5));
                return;
            }
            let beat = serde_json::json!({"at_ms": now_ms()}).to_string();
            send(instance, Some(beat.as_bytes()));
        }
        producer.poll(Duration::from_millis(100));
    }
}
