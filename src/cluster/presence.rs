//! Who is in the cluster and which instance holds which vehicle socket: `/v1/connections`
//! and a vehicle's `connections` on any instance, and the identity checks at start.
//!
//! A compacted topic (`{ns}_fleetgate_presence`, one partition): each instance publishes, every
//! [`PUBLISH_EVERY`], the sockets opened since its last publication (key
//! `{instance}/{connection id}`, value the connection entry), a tombstone for each socket
//! closed since, and a heartbeat (key `{instance}`, value [`Heartbeat`]: its cluster, this
//! life of the process, host and pid). Every instance reads the topic into a view; an
//! instance's sockets count only while its heartbeat is younger than [`STALE_AFTER`], so a
//! crashed instance's sockets drop out on their own. A restarted instance tombstones the
//! sockets its previous life left; a clean shutdown tombstones its own.
//!
//! Before an instance starts anything else, [`Presence::check_identity`] refuses two mistakes
//! that would otherwise fail quietly: a live instance already using this instance id (the
//! two would fence each other's transactions), and a live cluster of another name on the same
//! namespace (both would run the rules over the same `V` records and double every event).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ingest::registry::{ConnectionEntry, Registry};
use crate::kafka::reader::{topic_reader, ReaderConsumer};
use crate::kafka::{err, Error};

/// How often an instance publishes its socket changes and heartbeat.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// An instance whose heartbeat is older than this holds no sockets (and is not live).
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// An instance's heartbeat: when, and who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Wall-clock time of the beat (ms).
    pub at_ms: i64,
    /// `fleetgate.cluster.name` of the instance.
    #[serde(default)]
    pub cluster: String,
    /// A random id of this life of the process (a restart is a new life).
    #[serde(default)]
    pub life: String,
    /// Host name.
    #[serde(default)]
    pub host: String,
    /// Process id.
    #[serde(default)]
    pub pid: u32,
    /// When this life started (ms).
    #[serde(default)]
    pub started_at_ms: i64,
}

impl Heartbeat {
    fn describe(&self, instance: &str) -> String {
        let since = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(self.started_at_ms) * 1_000_000,
        )
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "?".into());
        format!(
            "instance `{instance}` of cluster `{}` (host {}, pid {}, up since {since}, last heartbeat {} ms ago)",
            self.cluster,
            if self.host.is_empty() { "?" } else { &self.host },
            self.pid,
            (now_ms() - self.at_ms).max(0)
        )
    }
}

#[derive(Default)]
struct View {
    /// `{instance}/{connection id}` → the entry (with `instance` set).
    sockets: HashMap<String, ConnectionEntry>,
    /// Instance → its last heartbeat.
    heartbeats: HashMap<String, Heartbeat>,
    /// The reader reached the end of the topic once.
    restored: bool,
}

/// The presence view and its reader and publisher threads.
pub struct Presence {
    view: Arc<Mutex<View>>,
    me: Heartbeat,
    instance: String,
    topic: String,
    /// Taken by [`Presence::publish`] (publishing starts only once the identity is checked).
    producer: Mutex<Option<BaseProducer>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This host's name.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fleetgate".to_owned())
}

/// The default instance id: unique per host and vehicle listener, stable across restarts —
/// `{host}-{port}` of the configured vehicle port (no two live processes of one host can
/// listen on it), or `{host}-pid{pid}` when the port is chosen at start (0).
pub fn default_instance_id(vehicle_port: u16) -> String {
    let host: String = host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if vehicle_port == 0 {
        format!("{host}-pid{}", std::process::id())
    } else {
        format!("{host}-{vehicle_port}")
    }
}

impl Presence {
    /// Creates the topic if missing and starts reading it; [`Presence::publish`] starts
    /// publishing this instance once [`Presence::check_identity`] passed.
    pub async fn start(
        properties: &serde_json::Map<String, Value>,
        group_id: &str,
        topic: &str,
        instance: &str,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Arc<Presence>, Error> {
        crate::kafka::topics::ensure_compacted(properties, &[topic], timeout).await?;
        let reader = topic_reader(properties, group_id, topic, None, timeout)?;
        let mut config = crate::kafka::client_config(properties)?;
        config.remove("statistics.interval.ms");
        let producer: BaseProducer = config
            .create()
            .map_err(err("creating the presence producer"))?;
        let me = Heartbeat {
            at_ms: 0,
            cluster: cluster.to_owned(),
            life: uuid::Uuid::new_v4().to_string(),
            host: host_name(),
            pid: std::process::id(),
            started_at_ms: now_ms(),
        };
        let view = Arc::new(Mutex::new(View::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (view, stop) = (view.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("presence-read".into())
                    .spawn(move || read_loop(&reader, &view, &stop))
                    .map_err(|e| Error::Kafka {
                        what: "starting the presence reader",
                        error: e.to_string(),
                    })?,
            );
        }
        Ok(Arc::new(Presence {
            view,
            me,
            instance: instance.to_owned(),
            topic: topic.to_owned(),
            producer: Mutex::new(Some(producer)),
            stop,
            threads: Mutex::new(threads),
        }))
    }

    /// Starts publishing this instance's heartbeat and `registry`'s sockets.
    pub fn publish(&self, registry: Arc<Registry>) -> Result<(), Error> {
        let Some(producer) = self
            .producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(());
        };
        let (view, stop, me) = (self.view.clone(), self.stop.clone(), self.me.clone());
        let (topic, instance) = (self.topic.clone(), self.instance.clone());
        let publisher = std::thread::Builder::new()
            .name("presence-publish".into())
            .spawn(move || publish_loop(&producer, &topic, &instance, &me, &registry, &view, &stop))
            .map_err(|e| Error::Kafka {
                what: "starting the presence publisher",
                error: e.to_string(),
            })?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(publisher);
        Ok(())
    }

    /// Refuses to go on when a live instance of this cluster uses this instance id, or a live
    /// cluster of another name uses this namespace's topics. Waits for the topic to be read
    /// first; a heartbeat of this id from another life that is not yet stale is watched for up
    /// to two publication rounds: it is the previous life of this instance (crashed) unless it
    /// beats again.
    pub async fn check_identity(&self, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        while !self.restored() {
            if started.elapsed() > timeout {
                return Err(format!(
                    "the cluster's presence topic could not be read within {timeout:?}: check that Kafka is reachable"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let fresh_since = || now_ms() - STALE_AFTER.as_millis() as i64;
        let foreign: Vec<(String, Heartbeat)> = {
            let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            view.heartbeats
                .iter()
                .filter(|(_, h)| {
                    h.at_ms >= fresh_since()
                        && !h.cluster.is_empty()
                        && h.cluster != self.me.cluster
                })
                .map(|(i, h)| (i.clone(), h.clone()))
                .collect()
        };
        if let Some((instance, beat)) = foreign.first() {
            return Err(format!(
                "cluster `{}` would share its topics with live cluster `{}` ({}): both would run the rules over the same V records and emit every event twice; give this cluster its own `namespace`, or stop cluster `{}` first",
                self.me.cluster,
                beat.cluster,
                beat.describe(instance),
                beat.cluster
            ));
        }
        let mine = |view: &View| {
            view.heartbeats
                .get(&self.instance)
                .filter(|h| h.life != self.me.life && h.at_ms >= fresh_since())
                .cloned()
        };
        let Some(seen) = mine(&self.view.lock().unwrap_or_else(|e| e.into_inner())) else {
            return Ok(());
        };
        tracing::info!(instance = %self.instance, "a recent heartbeat of this instance id exists; waiting to see whether it is a previous life or a live duplicate");
        let deadline = Instant::now() + PUBLISH_EVERY * 2 + Duration::from_secs(1);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let again = mine(&self.view.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(beat) = again.filter(|h| h.at_ms > seen.at_ms) {
                return Err(format!(
                    "instance id `{}` is in use by a live {}: two instances with one id fence each other's Kafka transactions; give each its own fleetgate.cluster.instance_id (or leave it out: the default, host and vehicle port, is unique per host)",
                    self.instance,
                    beat.describe(&self.instance)
                ));
            }
        }
        Ok(())
    }

    fn restored(&self) -> bool {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).restored
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
                    .is_some_and(|h| h.at_ms >= fresh_since)
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

fn read_loop(reader: &ReaderConsumer, view: &Mutex<View>, stop: &AtomicBool) {
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
                        let beat = serde_json::from_slice::<Heartbeat>(bytes).unwrap_or_default();
                        v.heartbeats.insert(key.to_owned(), beat);
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
    me: &Heartbeat,
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
            let beat = Heartbeat {
                at_ms: now_ms(),
                ..me.clone()
            };
            let value = serde_json::to_vec(&beat).unwrap_or_default();
            send(instance, Some(&value));
        }
        producer.poll(Duration::from_millis(100));
    }
}
