//! The cluster-wide read view: every vehicle's latest state as the rule owners committed it to
//! the compacted state topic, kept by every instance so that `/v1/vehicles/{vin}` and `near`
//! answer for the whole cluster from any of them. Read-only for the rest of the server; a
//! reader thread applies the topic (committed records only) and nothing else writes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use crate::kafka::reader::topic_reader;
use crate::kafka::Error as ClusterError;
use crate::rules::RuleState;
use crate::state::VehicleTable;

/// The view and its reader thread.
pub struct ClusterView {
    /// Every vehicle of the cluster (state and rule bookkeeping).
    pub vehicles: Arc<VehicleTable>,
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
    ) -> Result<Arc<ClusterView>, ClusterError> {
        let consumer = topic_reader(properties, group_id, state_topic, None, timeout)?;
        let vehicles = Arc::new(VehicleTable::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (table, stopping, topic) = (vehicles.clone(), stop.clone(), state_topic.to_owned());
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
                                }
                                Some(bytes) => match serde_json::from_slice::<RuleState>(bytes) {
                                    Ok(record) => {
                                        let mut state = record.vehicle;
                                        state.tracking = record.tracking;
                                        table.put(vin, state);
                                    }
                                    Err(e) => {
                                        tracing::warn!(topic = %topic, vin, error = %e, "unreadable vehicle state record skipped")
                                    }
                                },
                            }
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
            .map_err(|e| ClusterError::Kafka {
                what: "starting the cluster view reader",
                error: e.to_string(),
            })?;
        Ok(Arc::new(ClusterView {
            vehicles,
            stop,
            reader: std::sync::Mutex::new(Some(reader)),
        }))
    }

    /// Stops the reader.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = r.join();
        }
    }
}
