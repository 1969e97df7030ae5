//! One vehicle connection after the websocket upgrade: read frames, decode, dispatch to sinks,
//! answer each frame as Tesla's server does, and send acks of reliable topics when their
//! delivery reports arrive. One task per connection; nothing here blocks another vehicle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::identity::Identity;
use super::rate::{LogEvery, TokenBucket};
use crate::metrics::{self as m, FrameMetrics};
use crate::sinks::{Completion, DeliveryTicket, SinkRecord, SinkRouter};
use crate::wire::{read_envelope, read_frame, EnvelopeWriter, FrameError, Topic, MAX_FRAME_BYTES};

/// Settings shared by every connection.
#[derive(Clone)]
pub struct ConnectionSettings {
    /// Where records go.
    pub sinks: SinkRouter,
    /// Per-connection rate limit: frames per interval.
    pub rate_limit: RateLimit,
    /// Close after this long without any message.
    pub idle_timeout: Duration,
    /// Ping a quiet vehicle this often.
    pub ping_interval: Duration,
    /// Give up on a vehicle that does not read its acks for this long.
    pub write_timeout: Duration,
    /// Frames awaiting a reliable ack before this connection stops reading (backpressure).
    pub max_pending_acks: usize,
    /// Reliable records in flight across all connections; a connection waits for a slot
    /// before publishing (and so stops reading) when none is free.
    pub inflight_slots: Arc<tokio::sync::Semaphore>,
    /// Per-frame metric handles.
    pub metrics: std::sync::Arc<FrameMetrics>,
    /// Vehicle table and rules (None: records only, no events).
    pub engine: Option<Arc<crate::rules::Engine>>,
    /// Changes-only forwarding of `V`: per-field minimum deltas and the max age (ms).
    pub changes_only: Option<Arc<(HashMap<i32, f64>, i64)>>,
}

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

/// Everything known about the connection when it starts.
pub struct ConnectionInfo {
    /// The vehicle's identity.
    pub identity: Arc<Identity>,
    /// Connection id: a fresh UUID v4 per socket, made by the server (never taken from the
    /// client, so two sockets can never share one).
    pub connection_id: String,
    /// The client's `X-TXID` header as sent (empty when absent); kept for correlation only.
    pub client_txid: String,
    /// `Version` header.
    pub client_version: String,
    /// `X-Network-Interface` header.
    pub network_interface: String,
}

/// An ack waiting for a delivery report.
struct PendingAck {
    txid: Bytes,
    topic: Bytes,
    message_id: Bytes,
    /// Deliveries still to report (the record and the events it caused).
    remaining: u32,
    /// A delivery failed: the frame will not be acked.
    failed: bool,
}

/// Why a connection ended (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The vehicle closed it.
    ClientClosed,
    /// Read error or protocol violation.
    ProtocolError,
    /// A text message (only binary frames are telemetry).
    TextMessage,
    /// Nothing received for the idle timeout.
    Idle,
    /// The vehicle did not read our acks in time.
    WriteTimeout,
    /// Server shutdown.
    Shutdown,
    /// A newer connection of the same vehicle took over (after the hand-over grace).
    Superseded,
    /// The VIN lists no longer allow this vehicle.
    VinRefused,
    /// A message larger than the buffering limit.
    MessageTooLarge,
}

impl CloseReason {
    /// Every reason (metric series registered at zero).
    pub const ALL: [CloseReason; 9] = [
        CloseReason::ClientClosed,
        CloseReason::ProtocolError,
        CloseReason::TextMessage,
        CloseReason::Idle,
        CloseReason::WriteTimeout,
        CloseReason::Shutdown,
        CloseReason::Superseded,
        CloseReason::VinRefused,
        CloseReason::MessageTooLarge,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TextMessage => "text_message",
            CloseReason::Idle => "idle",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Superseded => "superseded",
            CloseReason::VinRefused => "vin_refused",
            CloseReason::MessageTooLarge => "message_too_large",
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Per-connection state of the frame loop.
struct Conn<S> {
    ws: WebSocketStream<S>,
    info: ConnectionInfo,
    settings: ConnectionSettings,
    writer: EnvelopeWriter,
    bucket: TokenBucket,
    pending: HashMap<u64, PendingAck>,
    next_seq: u64,
    completions_tx: mpsc::UnboundedSender<Completion>,
    shutdown: CancellationToken,
    changes: super::changes::ChangeFilter,
    /// Frames handled, for sampling the time histograms.
    frames_seen: u64,
    /// Rate limit of the sender-mismatch debug line.
    sender_mismatch_logged: LogEvery,
}

/// One frame in this many per connection is timed for the decode / sink / rules histograms
/// (clock reads and histogram pushes are a visible share of a frame's cost).
const TIMING_SAMPLE: u64 = 8;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), CloseReason> {
        match tokio::time::timeout(
            self.settings.write_timeout,
            self.ws.send(Message::Binary(Bytes::from(bytes))),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseReason::ProtocolError),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }

    async fn ack(
        &mut self,
        txid: &[u8],
        topic: &[u8],
        message_id: &[u8],
    ) -> Result<(), CloseReason> {
        let bytes = self.writer.ack(txid, topic, message_id).to_vec();
        self.settings.metrics.acks.increment(1);
        self.send(bytes).await
    }

    async fn error_reply(&mut self, txid: &[u8]) -> Result<(), CloseReason> {
        let bytes = self.writer.error_reply(txid).to_vec();
        self.settings.metrics.error_replies.increment(1);
        self.send(bytes).await
    }

    /// Handles one binary websocket message.
    async fn on_frame(&mut self, message: Bytes) -> Result<(), CloseReason> {
        let received_at_ms = now_ms();
        let len = message.len();
        let metrics = self.settings.metrics.clone();

        if len > MAX_FRAME_BYTES {
            // Answer with the txid when the envelope is readable, as a vehicle can then match it.
            let txid = read_envelope(&message)
                .map(|e| e.txid.to_vec())
                .unwrap_or_default();
            metrics.frame_refused(None, "too_big", len);
            tracing::warn!(vin = %self.info.identity.device_id, bytes = len, "frame exceeds the size limit");
            return self.error_reply(&txid).await;
        }

        let limit = self.settings.rate_limit;
        let capacity = f64::from(limit.message_limit);
        if !self.bucket.take(capacity, limit.interval, Instant::now()) {
            let topic = read_envelope(&message)
                .ok()
                .and_then(|e| Topic::from_wire(e.topic));
            metrics::counter!(m::RATE_LIMITED_TOTAL, "topic" => m::TOPIC_LABELS[FrameMetrics::topic_index(topic)]).increment(1);
            if limit.enabled {
                metrics.frame_refused(topic, "rate_limited", len);
                return Ok(());
            }
        }

        // the time histograms sample one frame in TIMING_SAMPLE per connection
        self.frames_seen = self.frames_seen.wrapping_add(1);
        let timed = self.frames_seen % TIMING_SAMPLE == 1;
        let started = timed.then(Instant::now);
        let frame = match read_frame(&message) {
            Ok(frame) => frame,
            Err(FrameError::UnknownMessageType {
                txid,
                topic,
                message_id,
                message_type,
            }) => {
                metrics.frame_refused(Topic::from_wire(&topic), "unknown_message_type", len);
                tracing::debug!(vin = %self.info.identity.device_id, message_type, "unknown message type, acked");
                return self.ack(&txid, &topic, &message_id).await;
            }
            Err(e) => {
                metrics.frame_refused(None, e.kind(), len);
                tracing::debug!(vin = %self.info.identity.device_id, error = %e, "unreadable frame, no answer possible");
                return Ok(());
            }
        };

        let identity = self.info.identity.clone();
        if frame.sender_id != identity.sender_id.as_bytes()
            && frame.sender_id != identity.device_id.as_bytes()
        {
            // Spoofing protection as the reference server does it: the frame is attributed to
            // the certificate's identity (below, `into_record` takes the VIN from it), never
            // to the claimed sender, and dispatched, so the vehicle's data is not lost.
            metrics.sender_mismatch.increment(1);
            if self.sender_mismatch_logged.allow(Instant::now()) {
                tracing::debug!(
                    vin = %identity.device_id,
                    sender_id = %String::from_utf8_lossy(frame.sender_id),
                    expected = %identity.sender_id,
                    "frame sender id does not match the certificate; dispatched under the certificate's identity"
                );
            }
        }

        let (txid, topic_name, message_id) = (frame.txid, frame.topic_name, frame.message_id);
        if frame.topic.is_none() || frame.topic == Some(Topic::Connectivity) {
            // No schema, or a server-owned topic a vehicle must not write: ack so it stops resending.
            metrics.frame_refused(None, "unknown_topic", len);
            tracing::debug!(vin = %identity.device_id, topic = %String::from_utf8_lossy(topic_name), "frame on a topic fleetgate does not route; acked");
            return self.ack(txid, topic_name, message_id).await;
        }

        let record = match frame.into_record(&identity.device_id, received_at_ms) {
            Ok(record) => record,
            Err(e) => {
                metrics.frame_refused(frame.topic, e.kind(), len);
                tracing::info!(vin = %identity.device_id, error = %e, "payload rejected, error reply sent");
                return self.error_reply(txid).await;
            }
        };
        if let Some(started) = started {
            metrics
                .decode_seconds
                .record(started.elapsed().as_secs_f64());
        }

        let topic = record.topic;
        let sinks = self.settings.sinks.sinks(topic);
        if sinks.is_empty() {
            metrics.frame_refused(Some(topic), "not_routed", len);
            return self.ack(txid, topic_name, message_id).await;
        }
        metrics.frame_ok(Some(topic), len);

        // Changes-only: drop datums whose value did not change; skip the record when none did.
        // The rules below still see the whole frame.
        let mut forward_record = true;
        let filtered;
        let mut out_payload: &[u8] = &record.payload;
        if let (Some(co), Some(p)) = (self.settings.changes_only.clone(), record.decoded.vehicle())
        {
            let at_ms = crate::state::VehicleUpdate::from_payload(p, record.frame.created_at).at_ms;
            let drop = self.changes.suppressed(p, at_ms, &co.0, co.1);
            if !drop.is_empty() {
                metrics::counter!(m::CHANGES_SUPPRESSED_DATUMS_TOTAL).increment(drop.len() as u64);
                if drop.len() == p.data.len() {
                    forward_record = false;
                    metrics::counter!(m::CHANGES_SUPPRESSED_RECORDS_TOTAL).increment(1);
                } else if let Ok(bytes) =
                    crate::wire::payload::drop_list_entries(&record.payload, &drop)
                {
                    filtered = bytes;
                    out_payload = &filtered;
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
            device_client_version: &self.info.client_version,
            payload: out_payload,
        };
        let sinks = if forward_record { sinks } else { &[] };
        let reliable = self.settings.sinks.reliable_sink(topic);
        let seq = self.next_seq;
        let mut slot = None;
        if reliable.is_some() {
            // Backpressure: without a free in-flight slot this vehicle is not read any further.
            let slots = self.settings.inflight_slots.clone();
            tokio::select! {
                permit = slots.acquire_owned() => slot = permit.ok(),
                _ = self.shutdown.cancelled() => return Err(CloseReason::Shutdown),
            }
        }
        let mut refused = false;
        let mut tracked_record = 0u32;
        for sink in sinks {
            let ticket = if reliable == Some(sink.name()) {
                tracked_record = 1;
                DeliveryTicket::tracked(self.completions_tx.clone(), seq, slot.take())
            } else {
                DeliveryTicket::untracked()
            };
            let t = timed.then(Instant::now);
            if let Err(e) = sink.publish(&sink_record, ticket) {
                refused = true;
                metrics::counter!(m::SINK_REFUSED_TOTAL, "sink" => sink.name()).increment(1);
                tracing::warn!(vin = %identity.device_id, sink = sink.name(), error = %e, "sink refused a record; frame not acked (the vehicle resends)");
            }
            if let Some(t) = t {
                metrics.sink_published(sink.name(), t.elapsed().as_secs_f64());
            }
        }
        // The rules see every V frame; the events follow the record to the event sinks.
        let mut tracked_events = 0;
        if let (Some(engine), Some(payload)) = (&self.settings.engine, record.decoded.vehicle()) {
            let t = timed.then(Instant::now);
            let events = engine.on_vehicle_data(record.vin, payload, record.frame.created_at);
            if let Some(t) = t {
                metrics.rules_seconds.record(t.elapsed().as_secs_f64());
            }
            if !events.is_empty() {
                let tx = self.completions_tx.clone();
                let (tracked, events_refused) =
                    self.settings.sinks.publish_events(&events, reliable, || {
                        DeliveryTicket::tracked(tx.clone(), seq, None)
                    });
                tracked_events = tracked;
                refused |= events_refused;
            }
        }
        if refused && reliable.is_none() {
            return Ok(());
        }
        if reliable.is_some() && tracked_record + tracked_events > 0 {
            self.next_seq += 1;
            self.pending.insert(
                seq,
                PendingAck {
                    txid: Bytes::copy_from_slice(txid),
                    topic: Bytes::copy_from_slice(topic_name),
                    message_id: Bytes::copy_from_slice(message_id),
                    remaining: tracked_record + tracked_events,
                    failed: false,
                },
            );
            metrics.reliable_pending.increment(1.0);
            Ok(())
        } else {
            self.ack(txid, topic_name, message_id).await
        }
    }

    async fn on_completion(&mut self, c: Completion) -> Result<(), CloseReason> {
        let Some(entry) = self.pending.get_mut(&c.seq) else {
            return Ok(());
        };
        entry.remaining = entry.remaining.saturating_sub(1);
        entry.failed |= !c.delivered;
        if entry.remaining > 0 {
            return Ok(());
        }
        let Some(p) = self.pending.remove(&c.seq) else {
            return Ok(());
        };
        self.settings.metrics.reliable_pending.decrement(1.0);
        if !p.failed {
            self.ack(&p.txid, &p.topic, &p.message_id).await
        } else {
            // Never ack what was not stored: the vehicle resends after its own timeout.
            metrics::counter!(m::RELIABLE_ACK_FAILED_TOTAL).increment(1);
            tracing::warn!(vin = %self.info.identity.device_id, txid = %String::from_utf8_lossy(&p.txid), "delivery failed; frame not acked");
            Ok(())
        }
    }
}

/// Runs the frame loop until the vehicle leaves, fails, idles out, or `shutdown` fires.
/// On shutdown the loop stops reading, waits (bounded by `drain`) for pending reliable acks,
/// then closes the websocket with 1001 (going away).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    ws: WebSocketStream<S>,
    info: ConnectionInfo,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
    superseded: CancellationToken,
    refused: CancellationToken,
    drain: Duration,
) -> CloseReason {
    let (completions_tx, mut completions_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        ws,
        bucket: TokenBucket::full(f64::from(settings.rate_limit.message_limit), Instant::now()),
        info,
        writer: EnvelopeWriter::new(),
        pending: HashMap::new(),
        next_seq: 0,
        completions_tx,
        settings,
        shutdown: shutdown.clone(),
        changes: Default::default(),
        frames_seen: 0,
        sender_mismatch_logged: LogEvery::new(Duration::from_secs(60)),
    };
    let mut last_rx = Instant::now();
    let mut ping = tokio::time::interval(conn.settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // Registered once, not per frame: a fresh `cancelled()` future each loop costs a lock on
    // the token's waiter list to register and another to deregister.
    let shutdown_signal = shutdown.cancelled();
    let superseded_signal = superseded.cancelled();
    let refused_signal = refused.cancelled();
    tokio::pin!(shutdown_signal, superseded_signal, refused_signal);

    let reason = loop {
        let can_read = conn.pending.len() < conn.settings.max_pending_acks;
        let result = tokio::select! {
            biased;
            // completions only matter for pending reliable acks; not polled otherwise
            Some(c) = completions_rx.recv(), if !conn.pending.is_empty() => conn.on_completion(c).await,
            _ = &mut shutdown_signal => break CloseReason::Shutdown,
            _ = &mut superseded_signal => break CloseReason::Superseded,
            _ = &mut refused_signal => break CloseReason::VinRefused,
            msg = conn.ws.next(), if can_read => {
                last_rx = Instant::now();
                match msg {
                    Some(Ok(Message::Binary(data))) => conn.on_frame(data).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                    Some(Ok(Message::Text(_))) => Err(CloseReason::TextMessage),
                    Some(Ok(Message::Close(_))) | None => Err(CloseReason::ClientClosed),
                    Some(Err(WsError::Capacity(_))) => Err(CloseReason::MessageTooLarge),
                    // the vehicle vanished without a close frame (network loss): not a violation
                    Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) | WsError::Io(_) | WsError::ConnectionClosed)) => {
                        Err(CloseReason::ClientClosed)
                    }
                    Some(Err(_)) => Err(CloseReason::ProtocolError),
                }
            }
            _ = ping.tick() => {
                if last_rx.elapsed() >= conn.settings.idle_timeout {
                    Err(CloseReason::Idle)
                } else {
                    tokio::time::timeout(conn.settings.write_timeout, conn.ws.send(Message::Ping(Bytes::new())))
                        .await
                        .map_err(|_| CloseReason::WriteTimeout)
                        .and_then(|r| r.map_err(|_| CloseReason::ProtocolError))
                }
            }
        };
        if let Err(reason) = result {
            break reason;
        }
    };

    if matches!(reason, CloseReason::Shutdown | CloseReason::Superseded) {
        // Let in-flight reliable acks arrive, within the drain budget.
        let deadline = tokio::time::Instant::now() + drain;
        while !conn.pending.is_empty() {
            match tokio::time::timeout_at(deadline, completions_rx.recv()).await {
                Ok(Some(c)) => {
                    if conn.on_completion(c).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
    let code = match reason {
        CloseReason::Shutdown => CloseCode::Away,
        CloseReason::TextMessage => CloseCode::Unsupported,
        CloseReason::VinRefused => CloseCode::Policy,
        CloseReason::MessageTooLarge => CloseCode::Size,
        CloseReason::Idle | CloseReason::ClientClosed | CloseReason::Superseded => {
            CloseCode::Normal
        }
        _ => CloseCode::Protocol,
    };
    if !matches!(reason, CloseReason::WriteTimeout) {
        let close = conn.ws.close(Some(CloseFrame {
            code,
            reason: reason.label().into(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    }
    let left = conn.pending.len();
    if left > 0 {
        conn.settings
            .metrics
            .reliable_pending
            .decrement(left as f64);
    }
    reason
}
