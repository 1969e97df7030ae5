//! Where records go: the [`Sink`] interface, delivery tickets for reliable acks, and the
//! per-topic routing from the config's `records` map. Sinks only deliver: they know the event
//! model (`event`) and the wire (`wire`), never the rules, the table or the sockets.
//!
//! A sink gets a [`SinkRecord`] and a [`DeliveryTicket`]. It completes the ticket when the record
//! is safely stored (the logger at once, Kafka on its delivery report). A ticket dropped without
//! completing counts as a failed delivery, so a record can never be acked by accident.

pub mod kafka;
pub mod logger;
pub mod mqtt;
pub mod tls;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::event::Event;
use crate::wire::Topic;

/// What a sink needs of one record: frames and server-made records (connectivity) alike.
#[derive(Debug, Clone, Copy)]
pub struct SinkRecord<'a> {
    /// Topic of the record.
    pub topic: Topic,
    /// The vehicle (device id from its certificate).
    pub vin: &'a str,
    /// The frame's transaction id (empty for server-made records).
    pub txid: &'a [u8],
    /// Device type from the frame.
    pub device_type: &'a [u8],
    /// The vehicle's creation time (unix s).
    pub created_at: u32,
    /// Server receive time (ms since the epoch).
    pub received_at_ms: u64,
    /// The `Version` header of the vehicle's connection.
    pub device_client_version: &'a str,
    /// Transformed protobuf bytes.
    pub payload: &'a [u8],
    /// The same payload decoded, when the pipeline has it (a vehicle's frame forwarded whole;
    /// `None` for server-made records and filtered payloads): sinks that render the payload
    /// (the logger's JSON) read it instead of decoding `payload` again.
    pub decoded: Option<&'a crate::wire::payload::Decoded>,
}

/// A delivery outcome reported back to the connection that owns the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The connection-local sequence number of the frame.
    pub seq: u64,
    /// True when the sink stored the record.
    pub delivered: bool,
}

/// Channel on which a connection receives its completions.
pub type CompletionSender = mpsc::UnboundedSender<Completion>;

/// Proof of a pending delivery. Complete it exactly once; dropping it reports a failure.
/// A tracked ticket also holds a slot of the global in-flight budget, freed on completion.
#[derive(Debug)]
pub struct DeliveryTicket {
    tracked: Option<(CompletionSender, u64)>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl DeliveryTicket {
    /// A ticket nobody waits for (non-reliable topics).
    pub fn untracked() -> Self {
        Self {
            tracked: None,
            _slot: None,
        }
    }

    /// A ticket that reports to `tx` with `seq`, holding `slot` until it completes.
    pub fn tracked(tx: CompletionSender, seq: u64, slot: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            tracked: Some((tx, seq)),
            _slot: slot,
        }
    }

    /// True when someone waits for this ticket.
    pub fn is_tracked(&self) -> bool {
        self.tracked.is_some()
    }

    /// Reports the outcome.
    pub fn complete(mut self, delivered: bool) {
        self.send(delivered);
    }

    fn send(&mut self, delivered: bool) {
        self._slot = None;
        if let Some((tx, seq)) = self.tracked.take() {
            // The connection may be gone (vehicle disconnected): nothing left to ack then.
            let _ = tx.send(Completion { seq, delivered });
        }
    }
}

impl Drop for DeliveryTicket {
    fn drop(&mut self) {
        self.send(false);
    }
}

/// Readiness of a sink, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Able to deliver.
    Ready,
    /// Not able to deliver now; the reason says why.
    NotReady(String),
}

/// Why a sink refused a record at once (the record was not taken; nothing was stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The record could not be encoded for this sink.
    #[error("cannot encode the record: {0}")]
    Encode(String),
    /// The sink is full or refused it.
    #[error("{0}")]
    Rejected(String),
}

/// A destination for records.
pub trait Sink: Send + Sync {
    /// Config name (`logger`, `kafka`).
    fn name(&self) -> &'static str;
    /// Hands over one record without blocking for long. On `Ok` the sink completes `ticket`
    /// now or later; on `Err` nothing was taken and the ticket reports a failure.
    fn publish(&self, record: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError>;
    /// Hands over one event (CloudEvents JSON in `json`), keyed by its VIN. Same contract as
    /// [`Sink::publish`].
    fn publish_event(
        &self,
        event: &Event,
        json: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError>;
    /// Waits up to `timeout` for queued records to be delivered; returns how many are left.
    fn flush(&self, timeout: Duration) -> usize;
    /// Whether the sink can deliver now.
    fn readiness(&self) -> Readiness {
        Readiness::Ready
    }
}

/// How the publication of events made outside a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every event sink confirmed them.
    Confirmed,
    /// Some sink has not answered yet (it keeps trying).
    Pending,
    /// A sink refused one or reported a failure.
    Failed,
}

/// Sinks per topic, and which sink confirms reliable acks; the one fan-out of events to the
/// event sinks ([`SinkRouter::publish_events`], [`SinkRouter::publish_confirmed`]).
#[derive(Clone, Default)]
pub struct SinkRouter {
    /// By `Topic as usize` (looked up on every frame: an array, not a hash map).
    routes: [Vec<Arc<dyn Sink>>; 4],
    reliable: [Option<&'static str>; 4],
    events: Vec<Arc<dyn Sink>>,
    all: Vec<Arc<dyn Sink>>,
}

impl SinkRouter {
    /// Builds the routes from `records` (topic → sink names) with the available sinks.
    /// Topics without a known schema are skipped (their frames are acked, never dispatched).
    pub fn new(
        records: &std::collections::BTreeMap<String, Vec<String>>,
        reliable_ack_sources: &std::collections::BTreeMap<String, String>,
        available: &[Arc<dyn Sink>],
    ) -> Result<Self, String> {
        let mut router = SinkRouter {
            all: available.to_vec(),
            ..Default::default()
        };
        for (topic_name, names) in records {
            let Some(topic) = Topic::from_wire(topic_name.as_bytes()) else {
                continue;
            };
            let mut sinks = Vec::new();
            for name in names {
                let sink = available.iter().find(|s| s.name() == name).ok_or_else(|| {
                    format!("records.{topic_name}: sink `{name}` is not available")
                })?;
                if !sinks.iter().any(|s: &Arc<dyn Sink>| s.name() == name) {
                    sinks.push(sink.clone());
                }
            }
            router.routes[topic as usize] = sinks;
        }
        for (topic_name, name) in reliable_ack_sources {
            let Some(topic) = Topic::from_wire(topic_name.as_bytes()) else {
                continue;
            };
            let sink = router
                .sinks(topic)
                .iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    format!(
                        "reliable_ack_sources.{topic_name}: `{name}` is not a sink of that topic"
                    )
                })?;
            router.reliable[topic as usize] = Some(sink.name());
        }
        Ok(router)
    }

    /// Routes events to the named sinks.
    pub fn with_event_sinks(mut self, names: &[String]) -> Result<Self, String> {
        for name in names {
            let sink =
                self.all.iter().find(|s| s.name() == name).ok_or_else(|| {
                    format!("fleetgate.events.sinks: sink `{name}` is not available")
                })?;
            if !self.events.iter().any(|s| s.name() == name) {
                self.events.push(sink.clone());
            }
        }
        Ok(self)
    }

    /// Adds a sink that receives every event (not a config sink; never tracked).
    pub fn with_event_tap(mut self, tap: Arc<dyn Sink>) -> Self {
        self.events.push(tap.clone());
        self.all.push(tap);
        self
    }

    /// The same routes with `name` as the only event sink (cluster mode's ingest: its events
    /// go to Kafka, from where the relay hands them to the others).
    pub fn only_event_sink(&self, name: &str) -> Self {
        let mut router = self.clone();
        router.events.retain(|s| s.name() == name);
        router
    }

    /// The same routes without `name` among the event sinks (cluster mode's relay).
    pub fn without_event_sink(&self, name: &str) -> Self {
        let mut router = self.clone();
        router.events.retain(|s| s.name() != name);
        router
    }

    /// The sinks events go to.
    pub fn event_sinks(&self) -> &[Arc<dyn Sink>] {
        &self.events
    }

    /// Publishes events to the event sinks; tickets are tracked (with `track`) for the sink
    /// named `reliable`. Returns how many tracked tickets were handed out, and whether any sink
    /// refused an event.
    pub fn publish_events(
        &self,
        events: &[Event],
        reliable: Option<&'static str>,
        mut track: impl FnMut() -> DeliveryTicket,
    ) -> (u32, bool) {
        let mut tracked = 0;
        let mut refused = false;
        for event in events {
            let json = match serde_json::to_vec(&event.to_cloudevent()) {
                Ok(j) => j,
                Err(_) => continue,
            };
            crate::metrics::count_event(event.kind.as_str());
            for sink in &self.events {
                let ticket = if reliable == Some(sink.name()) {
                    tracked += 1;
                    track()
                } else {
                    DeliveryTicket::untracked()
                };
                if let Err(e) = sink.publish_event(event, &json, ticket) {
                    refused = true;
                    metrics::counter!(crate::metrics::SINK_REFUSED_TOTAL, "sink" => sink.name())
                        .increment(1);
                    tracing::warn!(vin = %event.vin, sink = sink.name(), error = %e, "sink refused an event");
                }
            }
        }
        (tracked, refused)
    }

    /// Publishes `events` (in order) to every event sink and waits up to `wait` for each
    /// one's confirmation: how events made outside a frame (the admin API, a webhook source)
    /// learn whether they are safe.
    pub async fn publish_confirmed(&self, events: &[Event], wait: Duration) -> Delivery {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut waiting = 0usize;
        for event in events {
            let Ok(json) = serde_json::to_vec(&event.to_cloudevent()) else {
                return Delivery::Failed;
            };
            crate::metrics::count_event(event.kind.as_str());
            for sink in &self.events {
                let ticket = DeliveryTicket::tracked(tx.clone(), waiting as u64, None);
                if let Err(e) = sink.publish_event(event, &json, ticket) {
                    metrics::counter!(crate::metrics::SINK_REFUSED_TOTAL, "sink" => sink.name())
                        .increment(1);
                    tracing::warn!(vin = %event.vin, sink = sink.name(), error = %e, "sink refused an event");
                    return Delivery::Failed;
                }
                waiting += 1;
            }
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + wait;
        while waiting > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) if c.delivered => waiting -= 1,
                Ok(Some(_)) | Ok(None) => return Delivery::Failed,
                Err(_) => return Delivery::Pending,
            }
        }
        Delivery::Confirmed
    }

    /// The sinks of a topic.
    pub fn sinks(&self, topic: Topic) -> &[Arc<dyn Sink>] {
        &self.routes[topic as usize]
    }

    /// The sink whose delivery a topic's ack waits for, if the topic is reliable.
    pub fn reliable_sink(&self, topic: Topic) -> Option<&'static str> {
        self.reliable[topic as usize]
    }

    /// Every sink in use.
    pub fn all(&self) -> &[Arc<dyn Sink>] {
        &self.all
    }

    /// Flushes every sink within `timeout` in total; returns records left undelivered.
    pub fn flush_all(&self, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        self.all
            .iter()
            .map(|s| s.flush(deadline.saturating_duration_since(std::time::Instant::now())))
            .sum()
    }
}
