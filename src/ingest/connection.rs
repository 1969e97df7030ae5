//! One vehicle connection after the websocket upgrade: read frames, hand each to the
//! [`Pipeline`], send the answer it decides (ack, error reply, or an ack once the delivery
//! reports arrive), ping quiet vehicles, and close on idle, shutdown or take-over. One task per
//! connection; nothing here blocks another vehicle. What a frame means is the pipeline's
//! business; this module owns the websocket, the timeouts and the pending acks.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::identity::Identity;
use super::stop::{StopReason, StopSignal};
use crate::metrics as m;
use crate::pipeline::{Answer, FrameState, Pipeline, Slot, Source};
use crate::sinks::Completion;
use crate::wire::EnvelopeWriter;

/// How many bytes of queued writes (acks) the websocket keeps before writing them to the
/// TLS stream unasked. The loop flushes once it has handled every readable message, so the
/// acks of one read leave as one TLS record in one write; this only bounds a long batch.
pub const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// The websocket settings of a vehicle connection: `read_buffer_bytes` per read (tungstenite
/// zero-fills that much before each read, so it is kept small), acks batched up to
/// [`WRITE_BATCH_BYTES`], messages and frames up to `max_message_bytes`.
pub fn websocket_config(read_buffer_bytes: usize, max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Settings shared by every connection.
#[derive(Clone)]
pub struct ConnectionSettings {
    /// The per-frame policy.
    pub pipeline: Pipeline,
    /// Close after this long without any message.
    pub idle_timeout: Duration,
    /// Ping a quiet vehicle this often.
    pub ping_interval: Duration,
    /// Give up on a vehicle that does not read its acks for this long.
    pub write_timeout: Duration,
    /// Frames awaiting a reliable ack before this connection stops reading (backpressure).
    pub max_pending_acks: usize,
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

impl ConnectionInfo {
    /// The vehicle as the pipeline sees each of its frames (borrowed).
    fn source(&self) -> Source<'_> {
        Source {
            device_id: &self.identity.device_id,
            sender_id: &self.identity.sender_id,
            client_version: &self.client_version,
        }
    }
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

impl From<StopReason> for CloseReason {
    fn from(reason: StopReason) -> CloseReason {
        match reason {
            StopReason::Shutdown => CloseReason::Shutdown,
            StopReason::Superseded => CloseReason::Superseded,
            StopReason::VinRefused => CloseReason::VinRefused,
        }
    }
}

/// What one turn of the socket found (see [`Conn::poll_socket`]).
enum SocketTurn {
    /// A websocket message arrived (or the stream ended / failed).
    Message(Option<Result<Message, WsError>>),
    /// The queued writes cannot all go out now: the vehicle is not reading (arm the write
    /// deadline).
    WriteBlocked,
    /// The queued writes went out after having been blocked (disarm the write deadline).
    WriteUnblocked,
    /// Writing failed.
    WriteFailed,
}

/// Per-connection state of the frame loop.
struct Conn<S> {
    ws: WebSocketStream<S>,
    info: Arc<ConnectionInfo>,
    settings: ConnectionSettings,
    writer: EnvelopeWriter,
    state: FrameState,
    pending: HashMap<u64, PendingAck>,
    stop: Arc<StopSignal>,
    /// Acks (or a ping) queued in the websocket's write buffer and not flushed yet.
    unflushed: bool,
    /// A flush found the vehicle not reading; the write deadline is armed.
    write_blocked: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Queues a message in the websocket's write buffer: it goes out with the next flush,
    /// which the loop does once no further message is readable — so the acks of the frames
    /// of one read leave as one TLS record in one write. Waits (bounded by the write
    /// timeout) only when the buffer is full because the vehicle does not read.
    async fn queue(&mut self, message: Message) -> Result<(), CloseReason> {
        // the common case, room in the buffer, without a future: a poll with a no-op waker
        // (what `now_or_never` does, without its layers)
        let ready = self
            .ws
            .poll_ready_unpin(&mut Context::from_waker(std::task::Waker::noop()));
        let result = match ready {
            Poll::Ready(Ok(())) => self.ws.start_send_unpin(message),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => {
                tokio::time::timeout(self.settings.write_timeout, self.ws.feed(message))
                    .await
                    .map_err(|_| CloseReason::WriteTimeout)?
            }
        };
        self.unflushed = true;
        result.map_err(|_| CloseReason::ProtocolError)
    }

    /// Writes out what is queued now (bounded by the write timeout).
    async fn flush(&mut self) -> Result<(), CloseReason> {
        if !self.unflushed {
            return Ok(());
        }
        match tokio::time::timeout(self.settings.write_timeout, self.ws.flush()).await {
            Ok(Ok(())) => {
                self.unflushed = false;
                // everything went out: a write deadline armed before is void (the loop
                // disarms it on its next turn)
                self.write_blocked = false;
                Ok(())
            }
            Ok(Err(_)) => Err(CloseReason::ProtocolError),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }

    /// One turn of the socket: the next message when one is readable; otherwise the queued
    /// writes are flushed and the task waits for the next read (both wakers registered).
    fn poll_socket(&mut self, cx: &mut Context<'_>, can_read: bool) -> Poll<SocketTurn> {
        if can_read {
            if let Poll::Ready(message) = self.ws.poll_next_unpin(cx) {
                return Poll::Ready(SocketTurn::Message(message));
            }
        }
        if self.unflushed {
            match self.ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    if self.write_blocked {
                        return Poll::Ready(SocketTurn::WriteUnblocked);
                    }
                    // the common case: written at once, and the read above is registered
                }
                Poll::Ready(Err(_)) => return Poll::Ready(SocketTurn::WriteFailed),
                Poll::Pending if !self.write_blocked => {
                    return Poll::Ready(SocketTurn::WriteBlocked)
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    async fn ack(
        &mut self,
        txid: &[u8],
        topic: &[u8],
        message_id: &[u8],
    ) -> Result<(), CloseReason> {
        let bytes = Bytes::copy_from_slice(self.writer.ack(txid, topic, message_id));
        self.settings.pipeline.metrics.acks.increment(1);
        self.queue(Message::Binary(bytes)).await
    }

    async fn error_reply(&mut self, txid: &[u8]) -> Result<(), CloseReason> {
        let bytes = Bytes::copy_from_slice(self.writer.error_reply(txid));
        self.settings.pipeline.metrics.error_replies.increment(1);
        self.queue(Message::Binary(bytes)).await
    }

    /// Handles one websocket message.
    async fn on_message(
        &mut self,
        message: Option<Result<Message, WsError>>,
    ) -> Result<(), CloseReason> {
        match message {
            Some(Ok(Message::Binary(data))) => self.on_frame(data).await,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Ok(Message::Text(_))) => Err(CloseReason::TextMessage),
            Some(Ok(Message::Close(_))) | None => Err(CloseReason::ClientClosed),
            Some(Err(WsError::Capacity(_))) => Err(CloseReason::MessageTooLarge),
            // the vehicle vanished without a close frame (network loss): not a violation
            Some(Err(
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                | WsError::Io(_)
                | WsError::ConnectionClosed,
            )) => Err(CloseReason::ClientClosed),
            Some(Err(_)) => Err(CloseReason::ProtocolError),
        }
    }

    /// Handles one binary websocket message: the pipeline decides, this sends.
    async fn on_frame(&mut self, message: Bytes) -> Result<(), CloseReason> {
        let received_at_ms = now_ms();
        // borrowed, not cloned: the fields of `self` used here are disjoint
        let source = self.info.source();
        let pipeline = &self.settings.pipeline;
        let mut answer = pipeline.on_frame(
            &mut self.state,
            source,
            &message,
            received_at_ms,
            Instant::now(),
            Slot::First,
        );
        if answer == Answer::NeedSlot {
            // Backpressure: without a free in-flight slot this vehicle is not read any further.
            // What is queued goes out first: those frames' acks must not wait on the slot.
            self.flush().await?;
            let slots = self.settings.pipeline.inflight_slots.clone();
            let permit = tokio::select! {
                permit = slots.acquire_owned() => permit.ok(),
                reason = self.stop.stopped() => return Err(reason.into()),
            };
            let source = self.info.source();
            answer = self.settings.pipeline.on_frame(
                &mut self.state,
                source,
                &message,
                received_at_ms,
                Instant::now(),
                Slot::Granted(permit),
            );
        }
        match answer {
            Answer::Ack {
                txid,
                topic,
                message_id,
            } => self.ack(txid, topic, message_id).await,
            Answer::ErrorReply { txid } => self.error_reply(txid).await,
            Answer::AckAfter {
                seq,
                deliveries,
                txid,
                topic,
                message_id,
            } => {
                self.pending.insert(
                    seq,
                    PendingAck {
                        txid: Bytes::copy_from_slice(txid),
                        topic: Bytes::copy_from_slice(topic),
                        message_id: Bytes::copy_from_slice(message_id),
                        remaining: deliveries,
                        failed: false,
                    },
                );
                self.settings
                    .pipeline
                    .metrics
                    .reliable_pending
                    .increment(1.0);
                Ok(())
            }
            Answer::Nothing | Answer::NeedSlot => Ok(()),
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
        self.settings
            .pipeline
            .metrics
            .reliable_pending
            .decrement(1.0);
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

/// Runs the frame loop until the vehicle leaves, fails, idles out, or `stop` is signalled
/// (shutdown, take-over, VIN refusal). On shutdown or take-over the loop stops reading, waits
/// (bounded by `drain`) for pending reliable acks, then closes the websocket (1001 going away
/// on shutdown).
///
/// One turn of the loop: a stop check (one atomic load), the socket (every readable message
/// handled and its answer queued, then one flush), the completions of reliable acks while
/// any are pending, and the ping interval (not re-armed per frame). The write deadline is a
/// timer armed only while the vehicle does not take our writes.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    ws: WebSocketStream<S>,
    info: Arc<ConnectionInfo>,
    settings: ConnectionSettings,
    stop: Arc<StopSignal>,
    drain: Duration,
) -> CloseReason {
    let (completions_tx, mut completions_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        ws,
        state: FrameState::new(&settings.pipeline, completions_tx),
        info,
        writer: EnvelopeWriter::new(),
        pending: HashMap::new(),
        settings,
        stop: stop.clone(),
        unflushed: false,
        write_blocked: false,
    };
    let mut last_rx = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(conn.settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let write_deadline = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(write_deadline);

    let reason = loop {
        let can_read = conn.pending.len() < conn.settings.max_pending_acks;
        let write_blocked = conn.write_blocked;
        let result = tokio::select! {
            biased;
            reason = stop.stopped() => break reason.into(),
            // completions only matter for pending reliable acks; not polled otherwise
            Some(c) = completions_rx.recv(), if !conn.pending.is_empty() => conn.on_completion(c).await,
            turn = poll_fn(|cx| conn.poll_socket(cx, can_read)) => match turn {
                SocketTurn::Message(message) => {
                    last_rx = tokio::time::Instant::now();
                    conn.on_message(message).await
                }
                SocketTurn::WriteBlocked => {
                    conn.write_blocked = true;
                    write_deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + conn.settings.write_timeout);
                    Ok(())
                }
                SocketTurn::WriteUnblocked => {
                    conn.write_blocked = false;
                    Ok(())
                }
                SocketTurn::WriteFailed => Err(CloseReason::ProtocolError),
            },
            _ = &mut write_deadline, if write_blocked => Err(CloseReason::WriteTimeout),
            _ = ping.tick() => {
                if last_rx.elapsed() >= conn.settings.idle_timeout {
                    Err(CloseReason::Idle)
                } else {
                    conn.queue(Message::Ping(Bytes::new())).await
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
        // the close frame goes out after whatever is queued (acks included)
        let close = conn.ws.close(Some(CloseFrame {
            code,
            reason: reason.label().into(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    }
    let left = conn.pending.len();
    if left > 0 {
        conn.settings
            .pipeline
            .metrics
            .reliable_pending
            .decrement(left as f64);
    }
    reason
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::pipeline::RateLimit;
    use crate::sinks::SinkRouter;

    fn settings(idle_s: u64) -> ConnectionSettings {
        let sinks = SinkRouter::new(&BTreeMap::new(), &BTreeMap::new(), &[]).unwrap();
        ConnectionSettings {
            pipeline: Pipeline {
                sinks,
                rate_limit: RateLimit {
                    enabled: false,
                    message_limit: 100,
                    interval: Duration::from_secs(60),
                },
                inflight_slots: Arc::new(tokio::sync::Semaphore::new(10)),
                metrics: Arc::new(crate::metrics::FrameMetrics::new(&[])),
                rules: None,
                changes_only: None,
            },
            idle_timeout: Duration::from_secs(idle_s),
            ping_interval: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_pending_acks: 8,
        }
    }

    fn info() -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            identity: Arc::new(Identity {
                device_id: "5YJ3E1EA7KF000001".into(),
                client_type: "vehicle_device",
                sender_id: "vehicle_device.5YJ3E1EA7KF000001".into(),
            }),
            connection_id: "c1".into(),
            client_txid: String::new(),
            client_version: String::new(),
            network_interface: String::new(),
        })
    }

    /// A websocket pair over an in-memory pipe: (server side, vehicle side).
    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (
            WebSocketStream::from_raw_socket(a, Role::Server, None).await,
            WebSocketStream::from_raw_socket(b, Role::Client, None).await,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_vehicle_is_closed_at_the_idle_timeout() {
        let (server, _vehicle) = pair().await;
        let started = tokio::time::Instant::now();
        // the vehicle never reads: it answers no ping, so nothing is received from it
        let reason = run(
            server,
            info(),
            settings(300),
            StopSignal::new(),
            Duration::ZERO,
        )
        .await;
        assert_eq!(reason, CloseReason::Idle);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(300) && waited <= Duration::from_secs(360),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_vehicle_answering_pings_stays_until_shutdown() {
        let (server, mut vehicle) = pair().await;
        // reading makes the vehicle side answer the server's pings (pongs count as traffic)
        tokio::spawn(async move { while vehicle.next().await.is_some() {} });
        let stop = StopSignal::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            shutdown.stop(StopReason::Shutdown);
        });
        let started = tokio::time::Instant::now();
        let reason = run(server, info(), settings(300), stop, Duration::ZERO).await;
        assert_eq!(
            reason,
            CloseReason::Shutdown,
            "alive for an hour with a 300 s idle limit"
        );
        assert!(started.elapsed() >= Duration::from_secs(3600));
    }
}
