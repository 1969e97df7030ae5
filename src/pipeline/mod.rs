//! One frame, one straight path: a vehicle's websocket message in, sink tickets and events out,
//! and the answer the vehicle gets (ack now, ack after N deliveries, an error reply, nothing).
//! Connectivity records and vehicle-level events take the same path.
//!
//! Synchronous and socket-free: [`Pipeline::on_frame`] is a plain function of the frame, the
//! connection's [`FrameState`] and the clock, so it is unit tested without a socket and
//! benchmarked without a network. It owns the per-frame policy — the size and rate limits, the
//! sender check, topic routing, changes-only forwarding, the rules call, the ack policy of
//! `reliable_ack_sources` — and never awaits: when a reliable frame finds no in-flight slot it
//! answers [`Answer::NeedSlot`] before changing any state, and the connection calls again with
//! the slot once one is free (backpressure).
//!
//! Must not touch sockets, TLS or websocket framing (that is `ingest`), nor know how a sink
//! delivers (that is `sinks`).

pub mod changes;
pub mod rate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::event::{Event, EventType};

use crate::metrics::{self as m, FrameMetrics};
use crate::sinks::{Completion, DeliveryTicket, SinkRecord, SinkRouter};
use crate::wire::proto::vehicle_connectivity::{ConnectivityEvent, VehicleConnectivity};
use crate::wire::{read_envelope, read_frame, FrameError, Topic, MAX_FRAME_BYTES};
use rate::{LogEvery, TokenBucket};

/// The reference server's rate limit: `message_limit` frames per `interval`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Drop frames over the limit (otherwise only count them).
    pub enabled: bool,
    /// Frames allowed per interval.
    pub message_limit: u32,
    /// The interval.
    pub interval: Duration,
}

/// Changes-only forwarding of `V`: per-field minimum deltas (by field number) and the age (ms)
/// after which an unchanged value is forwarded again.
#[derive(Debug, Clone)]
pub struct ChangesOnly {
    /// Field number → minimum delta.
    pub min_delta: HashMap<i32, f64>,
    /// Forward again after this long (ms).
    pub max_age_ms: i64,
}

/// The per-frame policy, shared by every connection (cheap to clone).
#[derive(Clone)]
pub struct Pipeline {
    /// Where records and events go, and which topics are reliable.
    pub sinks: SinkRouter,
    /// Per-connection rate limit.
    pub rate_limit: RateLimit,
    /// Reliable records in flight across all connections (the bound on memory while Kafka is
    /// down).
    pub inflight_slots: Arc<Semaphore>,
    /// Per-frame metric handles.
    pub metrics: Arc<FrameMetrics>,
    /// The rules of this process (None: records only — cluster mode, where the owner of each
    /// vehicle's partition runs them from the `V` records).
    pub rules: Option<crate::runner::local::LocalRules>,
    /// Changes-only forwarding of `V` (None: off).
    pub changes_only: Option<Arc<ChangesOnly>>,
}

/// Who sent the frames of a connection, from its verified certificate and request headers.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The device id (the VIN for vehicles): every record is attributed to it.
    pub device_id: &'a str,
    /// `{client_type}.{device_id}`: what frames should claim as sender id.
    pub sender_id: &'a str,
    /// The `Version` header (Kafka header `device_client_version`).
    pub client_version: &'a str,
}

/// What the pipeline remembers per connection between frames.
pub struct FrameState {
    bucket: TokenBucket,
    changes: changes::ChangeFilter,
    /// Frames handled, for sampling the time histograms.
    frames_seen: u64,
    mismatch_logged: LogEvery,
    next_seq: u64,
    completions: mpsc::UnboundedSender<Completion>,
    /// The previous frame's decode memory, reused by the next.
    buffers: crate::wire::DecodeBuffers,
}

impl FrameState {
    /// A fresh state; delivery reports of reliable frames arrive on `completions`.
    pub fn new(pipeline: &Pipeline, completions: mpsc::UnboundedSender<Completion>) -> Self {
        Self {
            bucket: TokenBucket::full(f64::from(pipeline.rate_limit.message_limit), Instant::now()),
            changes: Default::default(),
            frames_seen: 0,
            mismatch_logged: LogEvery::new(Duration::from_secs(60)),
            next_seq: 0,
            completions,
            buffers: Default::default(),
        }
    }
}

/// Whether this call may take an in-flight slot itself or brings one.
pub enum Slot {
    /// The first call for a frame: take a free slot if one is needed, else answer
    /// [`Answer::NeedSlot`].
    First,
    /// The repeat call after [`Answer::NeedSlot`], with the slot the connection waited for
    /// (the rate limit and the counters of the first call are not charged again).
    Granted(Option<OwnedSemaphorePermit>),
}

/// What the vehicle is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// Ack now.
    Ack {
        /// Echoed txid.
        txid: &'a [u8],
        /// Echoed topic.
        topic: &'a [u8],
        /// Echoed message id.
        message_id: &'a [u8],
    },
    /// Ack once `deliveries` delivery reports for `seq` arrived, all of them successful.
    AckAfter {
        /// The frame's sequence number (the completions carry it).
        seq: u64,
        /// Delivery reports to wait for (the record and the events it caused).
        deliveries: u32,
        /// Echoed txid.
        txid: &'a [u8],
        /// Echoed topic.
        topic: &'a [u8],
        /// Echoed message id.
        message_id: &'a [u8],
    },
    /// `incorrect message format` with this txid.
    ErrorReply {
        /// Echoed txid (empty when the envelope could not be read).
        txid: &'a [u8],
    },
    /// No answer: dropped by the enabled rate limit, unreadable, or refused by a sink (the
    /// vehicle resends).
    Nothing,
    /// A reliable frame and no in-flight slot free: call again with [`Slot::Granted`].
    NeedSlot,
}

/// One frame in this many per connection is timed for the decode / sink / rules histograms
/// (clock reads and histogram pushes are a visible share of a frame's cost).
const TIMING_SAMPLE: u64 = 8;

impl Pipeline {
    /// Handles one binary websocket message received at `received_at_ms` (wall clock) / `now`.
    pub fn on_frame<'a>(
        &self,
        state: &mut FrameState,
        source: Source<'_>,
        message: &'a [u8],
        received_at_ms: u64,
        now: Instant,
        slot: Slot,
    ) -> Answer<'a> {
        let len = message.len();
        let metrics = &*self.metrics;
        let (first_pass, mut permit) = match slot {
            Slot::First => (true, None),
            Slot::Granted(p) => (false, p),
        };

        if len > MAX_FRAME_BYTES {
            // answer with the txid when the envelope is readable: the vehicle can match it
            let txid = read_envelope(message).map(|e| e.txid).unwrap_or_default();
            metrics.frame_refused(None, "too_big", len);
            tracing::warn!(vin = %source.device_id, bytes = len, "frame exceeds the size limit");
            return Answer::ErrorReply { txid };
        }

        let mut timed = false;
        if first_pass {
            let limit = self.rate_limit;
            let capacity = f64::from(limit.message_limit);
            if !state.bucket.take(capacity, limit.interval, now) {
                let topic = read_envelope(message)
                    .ok()
                    .and_then(|e| Topic::from_wire(e.topic));
                metrics::counter!(m::RATE_LIMITED_TOTAL, "topic" => m::TOPIC_LABELS[FrameMetrics::topic_index(topic)]).increment(1);
                if limit.enabled {
                    metrics.frame_refused(topic, "rate_limited", len);
                    return Answer::Nothing;
                }
            }
            // the time histograms sample one frame in TIMING_SAMPLE per connection
            state.frames_seen = state.frames_seen.wrapping_add(1);
            timed = state.frames_seen % TIMING_SAMPLE == 1;
        }
        let started = timed.then(Instant::now);

        let frame = match read_frame(message) {
            Ok(frame) => frame,
            Err(FrameError::UnknownMessageType { message_type, .. }) => {
                // acked so the sender stops resending; the fields are re-read borrowed
                let env = read_envelope(message).ok();
                let (txid, topic, message_id) = env
                    .map(|e| (e.txid, e.topic, e.message_id))
                    .unwrap_or_default();
                metrics.frame_refused(Topic::from_wire(topic), "unknown_message_type", len);
                tracing::debug!(vin = %source.device_id, message_type, "unknown message type, acked");
                return Answer::Ack {
                    txid,
                    topic,
                    message_id,
                };
            }
            Err(e) => {
                metrics.frame_refused(None, e.kind(), len);
                tracing::debug!(vin = %source.device_id, error = %e, "unreadable frame, no answer possible");
                return Answer::Nothing;
            }
        };

        if first_pass
            && frame.sender_id != source.sender_id.as_bytes()
            && frame.sender_id != source.device_id.as_bytes()
        {
            // Spoofing protection as the reference server does it: the frame is attributed to
            // the certificate's identity (`into_record` takes the VIN from it), never to the
            // claimed sender, and dispatched, so the vehicle's data is not lost.
            metrics.sender_mismatch.increment(1);
            if state.mismatch_logged.allow(now) {
                tracing::debug!(
                    vin = %source.device_id,
                    sender_id = %String::from_utf8_lossy(frame.sender_id),
                    expected = %source.sender_id,
                    "frame sender id does not match the certificate; dispatched under the certificate's identity"
                );
            }
        }

        let (txid, topic_name, message_id) = (frame.txid, frame.topic_name, frame.message_id);
        if frame.topic.is_none() || frame.topic == Some(Topic::Connectivity) {
            // no schema, or a server-owned topic a vehicle must not write: ack so it stops
            metrics.frame_refused(None, "unknown_topic", len);
            tracing::debug!(vin = %source.device_id, topic = %String::from_utf8_lossy(topic_name), "frame on a topic fleetgate does not route; acked");
            return Answer::Ack {
                txid,
                topic: topic_name,
                message_id,
            };
        }

        let record = match frame.into_record_reusing(
            source.device_id,
            received_at_ms,
            &mut state.buffers,
        ) {
            Ok(record) => record,
            Err(e) => {
                metrics.frame_refused(frame.topic, e.kind(), len);
                tracing::info!(vin = %source.device_id, error = %e, "payload rejected, error reply sent");
                return Answer::ErrorReply { txid };
            }
        };

        // Everything below reads the record; its heap memory then goes back to the
        // connection's buffers for the next frame (no per-frame allocation on the ok path).
        let answer = 'dispatch: {
            let topic = record.topic;
            let sinks = self.sinks.sinks(topic);
            if sinks.is_empty() {
                metrics.frame_refused(Some(topic), "not_routed", len);
                break 'dispatch Answer::Ack {
                    txid,
                    topic: topic_name,
                    message_id,
                };
            }
            let reliable = self.sinks.reliable_sink(topic);
            if reliable.is_some() && first_pass {
                // Backpressure: without a free in-flight slot this vehicle is not read further.
                // Nothing below has run yet, so the repeat call starts from the same state.
                match self.inflight_slots.clone().try_acquire_owned() {
                    Ok(p) => permit = Some(p),
                    Err(_) => break 'dispatch Answer::NeedSlot,
                }
            }
            if let Some(started) = started {
                metrics
                    .decode_seconds
                    .record(started.elapsed().as_secs_f64());
            }
            metrics.frame_ok(Some(topic), len);

            // The typed signals of a V frame, read once for changes-only and the rules.
            let vehicle = record.decoded.vehicle().map(|p| {
                (
                    p,
                    crate::state::VehicleUpdate::from_payload(p, record.frame.created_at),
                )
            });

            // Changes-only: drop datums whose value did not change; skip the record when none did.
            // The rules below still see the whole frame.
            let mut forward_record = true;
            let filtered;
            let mut out_payload: &[u8] = &record.payload;
            let mut out_decoded = Some(&record.decoded);
            if let (Some(co), Some((p, update))) = (&self.changes_only, &vehicle) {
                let drop = state
                    .changes
                    .suppressed(p, update.at_ms, &co.min_delta, co.max_age_ms);
                if !drop.is_empty() {
                    metrics::counter!(m::CHANGES_SUPPRESSED_DATUMS_TOTAL)
                        .increment(drop.len() as u64);
                    if drop.len() == p.data.len() {
                        forward_record = false;
                        metrics::counter!(m::CHANGES_SUPPRESSED_RECORDS_TOTAL).increment(1);
                    } else if let Ok(bytes) =
                        crate::wire::payload::drop_list_entries(&record.payload, &drop)
                    {
                        filtered = bytes;
                        out_payload = &filtered;
                        out_decoded = None;
                    }
                }
            }

            let sink_record = SinkRecord {
                topic,
                vin: record.vin,
                txid: record.frame.txid,
                device_type: record.frame.device_type,
                created_at: record.frame.created_at,
                received_at_ms,
                device_client_version: source.client_version,
                payload: out_payload,
                decoded: out_decoded,
            };
            let sinks = if forward_record { sinks } else { &[] };
            let seq = state.next_seq;
            let mut refused = false;
            let mut tracked_record = 0u32;
            for sink in sinks {
                let ticket = if reliable == Some(sink.name()) {
                    tracked_record = 1;
                    DeliveryTicket::tracked(state.completions.clone(), seq, permit.take())
                } else {
                    DeliveryTicket::untracked()
                };
                let t = timed.then(Instant::now);
                if let Err(e) = sink.publish(&sink_record, ticket) {
                    refused = true;
                    metrics::counter!(m::SINK_REFUSED_TOTAL, "sink" => sink.name()).increment(1);
                    tracing::warn!(vin = %source.device_id, sink = sink.name(), error = %e, "sink refused a record; frame not acked (the vehicle resends)");
                }
                if let Some(t) = t {
                    metrics.sink_published(sink.name(), t.elapsed().as_secs_f64());
                }
            }

            // The rules see every V frame; the events follow the record to the event sinks.
            let mut tracked_events = 0;
            let mut tracked_state = 0;
            if let (Some(rules), Some((_, update))) = (&self.rules, &vehicle) {
                let t = timed.then(Instant::now);
                let events = rules.on_signals(record.vin, update);
                if let Some(t) = t {
                    metrics.rules_seconds.record(t.elapsed().as_secs_f64());
                }
                if !events.is_empty() {
                    let completions = &state.completions;
                    let (tracked, events_refused) =
                        self.sinks.publish_events(&events, reliable, || {
                            DeliveryTicket::tracked(completions.clone(), seq, None)
                        });
                    tracked_events = tracked;
                    refused |= events_refused;
                }
                // a reliable frame is acked once the rule state it changed is journaled too
                if reliable.is_some() && rules.durable() {
                    tracked_state = 1;
                    rules.after_commit(DeliveryTicket::tracked(
                        state.completions.clone(),
                        seq,
                        permit.take(),
                    ));
                }
            }
            if refused && reliable.is_none() {
                break 'dispatch Answer::Nothing;
            }
            let deliveries = tracked_record + tracked_events + tracked_state;
            if reliable.is_some() && deliveries > 0 {
                state.next_seq += 1;
                Answer::AckAfter {
                    seq,
                    deliveries,
                    txid,
                    topic: topic_name,
                    message_id,
                }
            } else {
                Answer::Ack {
                    txid,
                    topic: topic_name,
                    message_id,
                }
            }
        };
        state.buffers.recycle(record.decoded, record.payload);
        answer
    }

    /// Produces a connectivity record (CONNECTED / DISCONNECTED) of one socket to the
    /// `connectivity` sinks (untracked: nothing waits for it).
    pub fn connectivity(&self, socket: &SocketInfo<'_>, status: ConnectivityEvent) {
        let targets = self.sinks.sinks(Topic::Connectivity);
        if targets.is_empty() {
            return;
        }
        let (seconds, nanos) = unix_now();
        let record = VehicleConnectivity {
            vin: socket.vin.to_owned(),
            connection_id: socket.connection_id.to_owned(),
            status: status as i32,
            created_at: Some(crate::wire::Timestamp { seconds, nanos }),
            network_interface: socket.network_interface.to_owned(),
        };
        let payload = record.encode_to_vec();
        let sink_record = SinkRecord {
            topic: Topic::Connectivity,
            vin: socket.vin,
            txid: socket.connection_id.as_bytes(),
            device_type: socket.client_type.as_bytes(),
            created_at: seconds as u32,
            received_at_ms: (seconds as u64) * 1000 + (nanos as u64) / 1_000_000,
            device_client_version: socket.client_version,
            payload: &payload,
            decoded: None,
        };
        for sink in targets {
            if let Err(e) = sink.publish(&sink_record, DeliveryTicket::untracked()) {
                metrics::counter!(m::SINK_REFUSED_TOTAL, "sink" => sink.name()).increment(1);
                tracing::warn!(vin = %socket.vin, sink = sink.name(), error = %e, "connectivity record refused");
            }
        }
    }

    /// A vehicle's first socket opened: it is connected in the table, and `vehicle.connected`
    /// is published.
    pub fn vehicle_connected(&self, socket: &SocketInfo<'_>) {
        if let Some(rules) = &self.rules {
            rules.fleet().vehicles.set_connected(socket.vin, true);
        }
        self.vehicle_event(
            EventType::VehicleConnected,
            socket.vin,
            socket.connection_id,
            crate::event_data!("connection_id" => socket.connection_id, "network_interface" => socket.network_interface),
        );
    }

    /// A vehicle's last socket closed and none reopened within the grace: it is disconnected
    /// in the table, and `vehicle.disconnected` is published.
    pub fn vehicle_disconnected(&self, vin: &str, connection_id: &str, connected_ms: i64) {
        if let Some(rules) = &self.rules {
            rules.fleet().vehicles.set_connected(vin, false);
        }
        self.vehicle_event(
            EventType::VehicleDisconnected,
            vin,
            connection_id,
            crate::event_data!("connected_s" => connected_ms / 1000),
        );
    }

    fn vehicle_event(
        &self,
        kind: EventType,
        vin: &str,
        scope: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) {
        let event = Event::new(kind, vin, scope, unix_now_ms(), data);
        self.sinks.publish_events(
            std::slice::from_ref(&event),
            None,
            DeliveryTicket::untracked,
        );
    }
}

/// One socket, for its connectivity record and vehicle events.
#[derive(Debug, Clone, Copy)]
pub struct SocketInfo<'a> {
    /// The vehicle.
    pub vin: &'a str,
    /// The server's id of the socket.
    pub connection_id: &'a str,
    /// Client type from the certificate.
    pub client_type: &'a str,
    /// `Version` header.
    pub client_version: &'a str,
    /// `X-Network-Interface` header.
    pub network_interface: &'a str,
}

fn unix_now() -> (i64, i32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

fn unix_now_ms() -> i64 {
    let (s, n) = unix_now();
    s * 1000 + i64::from(n) / 1_000_000
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::sinks::{PublishError, Sink};
    use crate::wire::proto::vehicle_data::{value::Value as V, Datum, Field, Payload, Value};
    use crate::wire::{EnvelopeWriter, StreamView};

    const VIN: &str = "5YJ3E1EA7KF000001";

    /// A sink that keeps what it is given; its tickets wait until the test completes them.
    #[derive(Default)]
    struct Memory {
        records: Mutex<Vec<(Topic, String, Vec<u8>)>>,
        events: Mutex<Vec<String>>,
        tickets: Mutex<Vec<DeliveryTicket>>,
    }

    impl Sink for Memory {
        fn name(&self) -> &'static str {
            "memory"
        }
        fn publish(&self, r: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError> {
            let mut records = self.records.lock().unwrap();
            records.push((r.topic, r.vin.to_owned(), r.payload.to_vec()));
            self.tickets.lock().unwrap().push(ticket);
            Ok(())
        }
        fn publish_event(
            &self,
            event: &Event,
            _json: &[u8],
            ticket: DeliveryTicket,
        ) -> Result<(), PublishError> {
            self.events
                .lock()
                .unwrap()
                .push(event.kind.as_str().to_owned());
            self.tickets.lock().unwrap().push(ticket);
            Ok(())
        }
        fn flush(&self, _: Duration) -> usize {
            0
        }
    }

    struct Setup {
        pipeline: Pipeline,
        sink: Arc<Memory>,
        state: FrameState,
        completions: mpsc::UnboundedReceiver<Completion>,
    }

    fn setup(reliable: bool, slots: usize, rate: Option<u32>) -> Setup {
        let sink = Arc::new(Memory::default());
        let records: BTreeMap<String, Vec<String>> = ["V", "alerts", "connectivity"]
            .iter()
            .map(|t| (t.to_string(), vec!["memory".to_string()]))
            .collect();
        let mut reliable_sources = BTreeMap::new();
        if reliable {
            reliable_sources.insert("V".to_string(), "memory".to_string());
        }
        let available: Vec<Arc<dyn Sink>> = vec![sink.clone()];
        let sinks = SinkRouter::new(&records, &reliable_sources, &available)
            .and_then(|r| r.with_event_sinks(&["memory".to_string()]))
            .unwrap();
        let pipeline = Pipeline {
            sinks,
            rate_limit: RateLimit {
                enabled: rate.is_some(),
                message_limit: rate.unwrap_or(100),
                interval: Duration::from_secs(60),
            },
            inflight_slots: Arc::new(Semaphore::new(slots)),
            metrics: Arc::new(FrameMetrics::new(&["memory"])),
            rules: Some(
                crate::runner::local::LocalRules::start(
                    crate::rules::Fleet::new(Default::default(), Vec::new()),
                    SinkRouter::default(),
                    None,
                )
                .unwrap(),
            ),
            changes_only: None,
        };
        let (tx, completions) = mpsc::unbounded_channel();
        let state = FrameState::new(&pipeline, tx);
        Setup {
            pipeline,
            sink,
            state,
            completions,
        }
    }

    const SOURCE: Source<'static> = Source {
        device_id: VIN,
        sender_id: "vehicle_device.5YJ3E1EA7KF000001",
        client_version: "2024.44",
    };

    fn soc_payload(soc: f64) -> Vec<u8> {
        Payload {
            data: vec![Datum {
                key: Field::Soc as i32,
                value: Some(Value {
                    value: Some(V::DoubleValue(soc)),
                }),
            }],
            created_at: Some(crate::wire::Timestamp {
                seconds: 1_764_000_000,
                nanos: 0,
            }),
            vin: "claimed".into(),
            is_resend: false,
        }
        .encode_to_vec()
    }

    fn frame(txid: &str, topic: &str, sender: &str, payload: &[u8]) -> Vec<u8> {
        EnvelopeWriter::new()
            .stream(
                txid.as_bytes(),
                topic.as_bytes(),
                b"m1",
                &StreamView {
                    created_at: 1_764_000_000,
                    sender_id: sender.as_bytes(),
                    payload,
                    device_type: b"vehicle_device",
                    device_id: VIN.as_bytes(),
                    delivered_at_epoch_ms: 0,
                },
            )
            .to_vec()
    }

    fn run<'a>(s: &mut Setup, bytes: &'a [u8], slot: Slot) -> Answer<'a> {
        s.pipeline.on_frame(
            &mut s.state,
            SOURCE,
            bytes,
            1_764_000_000_500,
            Instant::now(),
            slot,
        )
    }

    #[test]
    fn a_frame_is_dispatched_under_the_certificates_vin_and_acked() {
        let mut s = setup(false, 10, None);
        let payload = soc_payload(55.0);
        for sender in [SOURCE.sender_id, VIN, "vehicle_device.SOMEONE-ELSE"] {
            let bytes = frame("t1", "V", sender, &payload);
            assert_eq!(
                run(&mut s, &bytes, Slot::First),
                Answer::Ack {
                    txid: b"t1",
                    topic: b"V",
                    message_id: b"m1"
                }
            );
        }
        let records = s.sink.records.lock().unwrap();
        assert_eq!(records.len(), 3);
        assert!(records
            .iter()
            .all(|(t, vin, _)| *t == Topic::Vehicle && vin == VIN));
        // the payload's own vin is rewritten to the certificate's
        let p = Payload::decode(records[2].2.as_slice()).unwrap();
        assert_eq!(p.vin, VIN);
        // the table saw the frames
        let state = s
            .pipeline
            .rules
            .as_ref()
            .unwrap()
            .fleet()
            .vehicles
            .get(VIN)
            .unwrap();
        assert_eq!(state.soc, Some(55.0));
    }

    #[test]
    fn a_reliable_frame_is_acked_after_its_delivery_report() {
        let mut s = setup(true, 10, None);
        let bytes = frame("r1", "V", VIN, &soc_payload(50.0));
        let answer = run(&mut s, &bytes, Slot::First);
        assert_eq!(
            answer,
            Answer::AckAfter {
                seq: 0,
                deliveries: 1,
                txid: b"r1",
                topic: b"V",
                message_id: b"m1"
            }
        );
        assert_eq!(
            s.pipeline.inflight_slots.available_permits(),
            9,
            "the ticket holds a slot"
        );
        assert!(s.completions.try_recv().is_err(), "nothing delivered yet");
        let ticket = s.sink.tickets.lock().unwrap().pop().unwrap();
        ticket.complete(true);
        let c = s.completions.try_recv().unwrap();
        assert_eq!((c.seq, c.delivered), (0, true));
        assert_eq!(
            s.pipeline.inflight_slots.available_permits(),
            10,
            "the slot is free again"
        );
        // the next reliable frame gets the next sequence number
        let bytes = frame("r2", "V", VIN, &soc_payload(51.0));
        assert!(matches!(
            run(&mut s, &bytes, Slot::First),
            Answer::AckAfter { seq: 1, .. }
        ));
    }

    #[test]
    fn without_an_in_flight_slot_nothing_happens_until_one_is_granted() {
        let mut s = setup(true, 0, None);
        let bytes = frame("b1", "V", VIN, &soc_payload(60.0));
        assert_eq!(run(&mut s, &bytes, Slot::First), Answer::NeedSlot);
        assert!(s.sink.records.lock().unwrap().is_empty(), "not published");
        assert!(
            s.pipeline
                .rules
                .as_ref()
                .unwrap()
                .fleet()
                .vehicles
                .get(VIN)
                .is_none(),
            "rules not run"
        );
        // the connection waited and brings a slot
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let answer = run(&mut s, &bytes, Slot::Granted(Some(permit)));
        assert!(
            matches!(
                answer,
                Answer::AckAfter {
                    seq: 0,
                    deliveries: 1,
                    ..
                }
            ),
            "{answer:?}"
        );
        assert_eq!(s.sink.records.lock().unwrap().len(), 1, "published once");
        assert_eq!(
            slots.available_permits(),
            0,
            "the ticket holds the granted slot"
        );
    }

    #[test]
    fn bad_frames_get_the_reference_answers() {
        let mut s = setup(false, 10, None);
        // not an envelope: nothing to ack with
        assert_eq!(run(&mut s, b"garbage", Slot::First), Answer::Nothing);
        // a topic without a schema: acked so the vehicle stops resending
        let bytes = frame("u1", "nope", VIN, b"");
        assert!(matches!(
            run(&mut s, &bytes, Slot::First),
            Answer::Ack { txid: b"u1", .. }
        ));
        // a vehicle must not write the server-owned connectivity topic
        let bytes = frame("c1", "connectivity", VIN, b"");
        assert!(matches!(
            run(&mut s, &bytes, Slot::First),
            Answer::Ack { txid: b"c1", .. }
        ));
        // a payload that is not the topic's protobuf: error reply
        let bytes = frame("p1", "V", VIN, &[0xff, 0xff, 0xff]);
        assert_eq!(
            run(&mut s, &bytes, Slot::First),
            Answer::ErrorReply { txid: b"p1" }
        );
        // too big: error reply with the txid when readable
        let huge = frame("big", "V", VIN, &vec![0u8; MAX_FRAME_BYTES + 1]);
        assert_eq!(
            run(&mut s, &huge, Slot::First),
            Answer::ErrorReply { txid: b"big" }
        );
        assert!(s.sink.records.lock().unwrap().is_empty());
    }

    #[test]
    fn the_enabled_rate_limit_drops_frames_unanswered() {
        let mut s = setup(false, 10, Some(2));
        let payload = soc_payload(40.0);
        let answers: Vec<bool> = (0..4)
            .map(|i| {
                let bytes = frame(&format!("l{i}"), "V", VIN, &payload);
                matches!(run(&mut s, &bytes, Slot::First), Answer::Ack { .. })
            })
            .collect();
        assert_eq!(answers, [true, true, false, false]);
        assert_eq!(s.sink.records.lock().unwrap().len(), 2);
    }

    #[test]
    fn connectivity_records_and_vehicle_events_take_the_same_sinks() {
        let s = setup(false, 10, None);
        let socket = SocketInfo {
            vin: VIN,
            connection_id: "6d1f0a4e-3c1b-4a8e-9f00-0123456789ab",
            client_type: "vehicle_device",
            client_version: "2024.44",
            network_interface: "wifi",
        };
        s.pipeline
            .connectivity(&socket, ConnectivityEvent::Connected);
        s.pipeline.vehicle_connected(&socket);
        let records = s.sink.records.lock().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, Topic::Connectivity);
        let c = VehicleConnectivity::decode(records[0].2.as_slice()).unwrap();
        assert_eq!(c.connection_id, socket.connection_id);
        assert_eq!(c.status, ConnectivityEvent::Connected as i32);
        assert_eq!(
            *s.sink.events.lock().unwrap(),
            ["fleetgate.vehicle.connected"]
        );
        let table = &s.pipeline.rules.as_ref().unwrap().fleet().vehicles;
        assert!(table.get(VIN).unwrap().connected);
    }
}
