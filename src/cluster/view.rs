//! The cluster-wide read view: every vehicle's rule state as the rule owners committed it to
//! the compacted state topic, kept by every instance so that reads answer the same on all of
//! them — `/v1/vehicles/{vin}` and `near`, the progress of `/v1/watches`, and the receipts of
//! inputs submitted through this instance (a manual arrival is answered from the committed
//! state of the owner that applied it). Read-only for the rest of the server; a reader thread
//! applies the topic (committed records only) and nothing else writes it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::watch;

use crate::kafka::reader::topic_reader;
use crate::kafka::Error;
use crate::rules::arrival::WatchProgress;
use crate::rules::input::Receipt;
use crate::rules::{record_seen, RuleState};
use crate::state::VehicleTable;

/// The view and its reader thread.
pub struct ClusterView {
    /// Every vehicle of the cluster that sent signals (state and rule bookkeeping).
    pub vehicles: Arc<VehicleTable>,
    /// VIN → its watches' progress.
    progress: Arc<DashMap<String, BTreeMap<String, WatchProgress>>>,
    /// VIN → what its latest submitted inputs did.
    receipts: Arc<DashMap<String, Vec<Receipt>>>,
    /// VIN → the partition its state lives in (= its `V` partition).
    partitions: Arc<DashMap<String, i32>>,
    /// Bumped after every record applied (waiters for a receipt look again).
    applied: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    reader: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ClusterView {
    /// Starts reading `state_topic` from the beginning into the view.
    pub fn start(
        properties: &serde_json::Map<String, serde_json::Value>,
        group_id: &str,
        state_topic: &str,
        timeout: Duration,
    ) -> Result<Arc<ClusterView>, Error> {
        let consumer = topic_reader(properties, group_id, state_topic, None, timeout)?;
        let (tx, applied) = watch::channel(0u64);
        let view = ClusterView {
            vehicles: Arc::new(VehicleTable::new()),
            progress: Arc::default(),
            receipts: Arc::default(),
            partitions: Arc::default(),
            applied,
            stop: Arc::new(AtomicBool::new(false)),
            reader: std::sync::Mutex::new(None),
        };
        let (table, progress, receipts, partitions) = (
            view.vehicles.clone(),
            view.progress.clone(),
            view.receipts.clone(),
            view.partitions.clone(),
        );
        let (stopping, topic) = (view.stop.clone(), state_topic.to_owned());
        let reader = std::thread::Builder::new()
            .name("cluster-view".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(msg)) => {
                            let Some(vin) = msg.key().and_then(|k| std::str::from_utf8(k).ok())
                            else {
                                continue;
                            };
                            match msg.payload() {
                                None => {
                                    table.remove(vin);
                                    progress.remove(vin);
                                    receipts.remove(vin);
                                    partitions.remove(vin);
                                }
                                Some(bytes) => match serde_json::from_slice::<RuleState>(bytes) {
                                    Ok(record) => {
                                        let mut state = record.vehicle;
                                        state.tracking = record.tracking;
                                        if record_seen(&state) {
                                            table.put(vin, state);
                                        }
                                        progress.insert(vin.to_owned(), record.watches);
                                        if !record.receipts.is_empty() {
                                            receipts.insert(vin.to_owned(), record.receipts);
                                        }
                                        partitions.insert(vin.to_owned(), msg.partition());
                                    }
                                    Err(e) => {
                                        tracing::warn!(topic = %topic, vin, error = %e, "unreadable vehicle state record skipped")
                                    }
                                },
                            }
                            tx.send_modify(|n| *n += 1);
                        }
                        Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                        Some(Err(e)) => {
                            tracing::debug!(topic = %topic, error = %e, "cluster view reader: Kafka error (retrying)");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
                let _ = consumer.unassign();
            })
            .map_err(|e| Error::Kafka {
                what: "starting the cluster view reader",
                error: e.to_string(),
            })?;
        *view.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
        Ok(Arc::new(view))
    }

    /// A watch's progress as the owner of its vehicle last committed it (None: never
    /// committed, e.g. a watch created a moment ago).
    pub fn watch_progress(&self, vin: &str, watch_id: &str) -> Option<WatchProgress> {
        self.progress.get(vin)?.get(watch_id).cloned()
    }

    /// The partition a vehicle's state lives in, once the view has seen its state.
    pub fn partition_of(&self, vin: &str) -> Option<i32> {
        self.partitions.get(vin).map(|p| *p)
    }

    /// Waits up to `timeout` until the committed state of `vin` carries the receipt of
    /// `input_id` (the owner applied it and its transaction committed).
    pub async fn receipt(&self, vin: &str, input_id: &str, timeout: Duration) -> Option<Receipt> {
        let mut applied = self.applied.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self
                .receipts
                .get(vin)
                .and_then(|rs| rs.iter().find(|r| r.input_id == input_id).cloned());
            if found.is_some() {
                return found;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Stops the reader.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = r.join();
        }
    }
}
