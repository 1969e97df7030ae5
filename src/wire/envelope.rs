//! The flatbuffers envelope every websocket message is wrapped in: reading (verified, never
//! out of bounds) and writing (acks, error replies, and the frames our own clients send).
//!
//! Layout (Tesla's `Envelope` schema): root table `Envelope` {0 txid: [ubyte], 1 topic: [ubyte], 2 message_type:
//! ubyte union tag (4 Stream, 5 StreamAck), 3 message: union offset, 4 message_id: [ubyte]};
//! `Stream` {0 created_at: uint32, 1 sender_id, 2 payload, 3 device_type, 4 device_id: [ubyte],
//! 5 delivered_at_epoch_ms: uint64}.
//!
//! Every buffer goes through the `flatbuffers` verifier before a field is read; the accessors
//! below are what `flatc` would generate for that schema, and are only reached through
//! [`read_envelope`], which verifies first. This module owns no policy: what to answer for
//! which frame is decided in `wire::frame` and `ingest`.
#![allow(unsafe_code)]

use flatbuffers::{
    FlatBufferBuilder, Follow, ForwardsUOffset, InvalidFlatbuffer, Table, VOffsetT, Vector,
    Verifiable, Verifier, VerifierOptions, WIPOffset,
};

/// Union tag of a `Stream` message (telemetry records, and the server's error reply).
pub const MESSAGE_TYPE_STREAM: u8 = 4;
/// Union tag of a `StreamAck` message (the server's acknowledgement).
pub const MESSAGE_TYPE_STREAM_ACK: u8 = 5;
/// The payload of the error reply, as the reference server sends it.
pub const ERROR_REPLY_TEXT: &[u8] = b"incorrect message format";

// vtable offsets: 4 + 2 * slot
const ENV_TXID: VOffsetT = 4;
const ENV_TOPIC: VOffsetT = 6;
const ENV_MESSAGE_TYPE: VOffsetT = 8;
const ENV_MESSAGE: VOffsetT = 10;
const ENV_MESSAGE_ID: VOffsetT = 12;

const STREAM_CREATED_AT: VOffsetT = 4;
const STREAM_SENDER_ID: VOffsetT = 6;
const STREAM_PAYLOAD: VOffsetT = 8;
const STREAM_DEVICE_TYPE: VOffsetT = 10;
const STREAM_DEVICE_ID: VOffsetT = 12;
const STREAM_DELIVERED_AT: VOffsetT = 14;

type Bytes<'a> = ForwardsUOffset<Vector<'a, u8>>;

/// Verified view of the root `Envelope` table.
#[derive(Clone, Copy)]
struct EnvelopeTable<'a> {
    tab: Table<'a>,
}

impl<'a> Follow<'a> for EnvelopeTable<'a> {
    type Inner = EnvelopeTable<'a>;
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        // SAFETY: forwarded contract of `Follow`: `loc` was verified to be a table in `buf`.
        Self {
            tab: unsafe { Table::new(buf, loc) },
        }
    }
}

impl Verifiable for EnvelopeTable<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<Bytes>("txid", ENV_TXID, false)?
            .visit_field::<Bytes>("topic", ENV_TOPIC, false)?
            .visit_union::<u8, _>(
                "message_type",
                ENV_MESSAGE_TYPE,
                "message",
                ENV_MESSAGE,
                false,
                |tag, v, pos| match tag {
                    MESSAGE_TYPE_STREAM => {
                        v.verify_union_variant::<ForwardsUOffset<StreamTable>>("Stream", pos)
                    }
                    // Other members are never read; an ack's message is an empty vector.
                    _ => Ok(()),
                },
            )?
            .visit_field::<Bytes>("message_id", ENV_MESSAGE_ID, false)?
            .finish();
        Ok(())
    }
}

impl<'a> EnvelopeTable<'a> {
    fn bytes(&self, slot: VOffsetT) -> &'a [u8] {
        // SAFETY: the table and this field were checked by `EnvelopeTable::run_verifier`.
        unsafe { self.tab.get::<Bytes<'a>>(slot, None) }
            .map(|v| v.bytes())
            .unwrap_or_default()
    }

    fn message_type(&self) -> u8 {
        // SAFETY: verified scalar field.
        unsafe { self.tab.get::<u8>(ENV_MESSAGE_TYPE, Some(0)) }.unwrap_or(0)
    }

    fn stream(&self) -> Option<StreamTable<'a>> {
        if self.message_type() != MESSAGE_TYPE_STREAM {
            return None;
        }
        // SAFETY: for tag 4 the verifier checked that `message` points to a valid Stream table.
        unsafe {
            self.tab
                .get::<ForwardsUOffset<StreamTable<'a>>>(ENV_MESSAGE, None)
        }
    }
}

/// Verified view of a `Stream` table.
#[derive(Clone, Copy)]
struct StreamTable<'a> {
    tab: Table<'a>,
}

impl<'a> Follow<'a> for StreamTable<'a> {
    type Inner = StreamTable<'a>;
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        // SAFETY: forwarded contract of `Follow`.
        Self {
            tab: unsafe { Table::new(buf, loc) },
        }
    }
}

impl Verifiable for StreamTable<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<u32>("created_at", STREAM_CREATED_AT, false)?
            .visit_field::<Bytes>("sender_id", STREAM_SENDER_ID, false)?
            .visit_field::<Bytes>("payload", STREAM_PAYLOAD, false)?
            .visit_field::<Bytes>("device_type", STREAM_DEVICE_TYPE, false)?
            .visit_field::<Bytes>("device_id", STREAM_DEVICE_ID, false)?
            .visit_field::<u64>("delivered_at_epoch_ms", STREAM_DELIVERED_AT, false)?
            .finish();
        Ok(())
    }
}

impl<'a> StreamTable<'a> {
    fn bytes(&self, slot: VOffsetT) -> &'a [u8] {
        // SAFETY: verified by `StreamTable::run_verifier`.
        unsafe { self.tab.get::<Bytes<'a>>(slot, None) }
            .map(|v| v.bytes())
            .unwrap_or_default()
    }

    fn view(&self) -> StreamView<'a> {
        StreamView {
            // SAFETY: verified scalar fields.
            created_at: unsafe { self.tab.get::<u32>(STREAM_CREATED_AT, Some(0)) }.unwrap_or(0),
            delivered_at_epoch_ms: unsafe { self.tab.get::<u64>(STREAM_DELIVERED_AT, Some(0)) }
                .unwrap_or(0),
            sender_id: self.bytes(STREAM_SENDER_ID),
            payload: self.bytes(STREAM_PAYLOAD),
            device_type: self.bytes(STREAM_DEVICE_TYPE),
            device_id: self.bytes(STREAM_DEVICE_ID),
        }
    }
}

/// The fields of a verified envelope, borrowed from the frame buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeView<'a> {
    /// Transaction id chosen by the sender; echoed in the ack.
    pub txid: &'a [u8],
    /// Topic name (`V`, `alerts`, `errors`, …).
    pub topic: &'a [u8],
    /// Union tag: 4 Stream, 5 StreamAck, anything else is unknown.
    pub message_type: u8,
    /// Optional message id; echoed in the ack.
    pub message_id: &'a [u8],
    /// The Stream member, present when `message_type` is 4.
    pub stream: Option<StreamView<'a>>,
}

/// The fields of a verified `Stream` table, borrowed from the frame buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamView<'a> {
    /// When the vehicle created the record (unix seconds).
    pub created_at: u32,
    /// `{client_type}.{device_id}` as the sender claims it.
    pub sender_id: &'a [u8],
    /// The protobuf payload of the topic.
    pub payload: &'a [u8],
    /// Device type as sent (e.g. `vehicle_device`).
    pub device_type: &'a [u8],
    /// Device id as sent (the VIN for vehicles).
    pub device_id: &'a [u8],
    /// Receive time stamped by a server (ms since the epoch), 0 when unset.
    pub delivered_at_epoch_ms: u64,
}

/// Why a buffer is not a readable envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid flatbuffers envelope: {0}")]
pub struct EnvelopeError(pub String);

fn verifier_options() -> VerifierOptions {
    VerifierOptions {
        // A frame is at most 1,000,000 bytes; these bounds only stop pathological nesting.
        max_depth: 8,
        max_tables: 64,
        max_apparent_size: 2 * 1024 * 1024,
        ..VerifierOptions::default()
    }
}

/// Verifies `buf` as an `Envelope` and returns its fields. Never panics, never reads out of
/// bounds: any inconsistency is an [`EnvelopeError`].
pub fn read_envelope(buf: &[u8]) -> Result<EnvelopeView<'_>, EnvelopeError> {
    if buf.len() < 8 {
        return Err(EnvelopeError(format!(
            "{} bytes is shorter than any envelope",
            buf.len()
        )));
    }
    let table =
        flatbuffers::root_with_opts::<EnvelopeTable>(&verifier_options(), buf).map_err(|e| {
            // The verifier's trace spans lines; keep log and JSON output on one line.
            let text = e.to_string();
            EnvelopeError(text.split_whitespace().collect::<Vec<_>>().join(" "))
        })?;
    Ok(EnvelopeView {
        txid: table.bytes(ENV_TXID),
        topic: table.bytes(ENV_TOPIC),
        message_type: table.message_type(),
        message_id: table.bytes(ENV_MESSAGE_ID),
        stream: table.stream().map(|s| s.view()),
    })
}

/// Writes envelopes with the same builder sequence as the reference server, so the bytes of
/// acks and error replies are identical to what vehicles get from it. Reuse one writer per
/// connection: the builder's buffer is kept between frames.
pub struct EnvelopeWriter {
    builder: FlatBufferBuilder<'static>,
}

impl Default for EnvelopeWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvelopeWriter {
    /// A writer with a buffer sized for acks.
    pub fn new() -> Self {
        Self {
            builder: FlatBufferBuilder::with_capacity(256),
        }
    }

    fn finish_envelope(
        &mut self,
        message: WIPOffset<flatbuffers::UnionWIPOffset>,
        message_type: u8,
        txid: &[u8],
        topic: &[u8],
        message_id: &[u8],
    ) -> &[u8] {
        let b = &mut self.builder;
        let txid = b.create_byte_string(txid);
        let topic = b.create_byte_string(topic);
        let message_id = b.create_byte_string(message_id);
        let start = b.start_table();
        b.push_slot_always(ENV_TXID, txid);
        b.push_slot_always(ENV_TOPIC, topic);
        b.push_slot::<u8>(ENV_MESSAGE_TYPE, message_type, 0);
        b.push_slot_always(ENV_MESSAGE, message);
        b.push_slot_always(ENV_MESSAGE_ID, message_id);
        let root = b.end_table(start);
        b.finish_minimal(root);
        b.finished_data()
    }

    /// The ack for a frame: Envelope{txid, topic, StreamAck (an empty vector), message_id}.
    pub fn ack(&mut self, txid: &[u8], topic: &[u8], message_id: &[u8]) -> &[u8] {
        self.builder.reset();
        let message = self.builder.create_byte_string(&[]).as_union_value();
        self.finish_envelope(message, MESSAGE_TYPE_STREAM_ACK, txid, topic, message_id)
    }

    /// The error reply for a frame that can't be processed: Envelope{txid, Stream{payload =
    /// `incorrect message format`}} with every other field empty.
    pub fn error_reply(&mut self, txid: &[u8]) -> &[u8] {
        self.builder.reset();
        let stream = write_stream(
            &mut self.builder,
            &StreamView {
                payload: ERROR_REPLY_TEXT,
                ..StreamView::default()
            },
        );
        self.finish_envelope(stream, MESSAGE_TYPE_STREAM, txid, b"", b"")
    }

    /// A telemetry frame as a vehicle sends it (used by `sim`, `bench` and tests).
    pub fn stream(
        &mut self,
        txid: &[u8],
        topic: &[u8],
        message_id: &[u8],
        stream: &StreamView<'_>,
    ) -> &[u8] {
        self.builder.reset();
        let message = write_stream(&mut self.builder, stream);
        self.finish_envelope(message, MESSAGE_TYPE_STREAM, txid, topic, message_id)
    }

    /// An envelope with an arbitrary union tag and no message (tests of unknown types).
    pub fn raw_envelope(&mut self, txid: &[u8], topic: &[u8], message_type: u8) -> &[u8] {
        self.builder.reset();
        let message = self.builder.create_byte_string(&[]).as_union_value();
        self.finish_envelope(message, message_type, txid, topic, b"")
    }
}

fn write_stream(
    b: &mut FlatBufferBuilder<'static>,
    s: &StreamView<'_>,
) -> WIPOffset<flatbuffers::UnionWIPOffset> {
    let sender_id = b.create_byte_string(s.sender_id);
    let payload = b.create_byte_string(s.payload);
    let device_type = b.create_byte_string(s.device_type);
    let device_id = b.create_byte_string(s.device_id);
    let start = b.start_table();
    b.push_slot_always(STREAM_SENDER_ID, sender_id);
    b.push_slot::<u32>(STREAM_CREATED_AT, s.created_at, 0);
    b.push_slot_always(STREAM_PAYLOAD, payload);
    b.push_slot_always(STREAM_DEVICE_TYPE, device_type);
    b.push_slot_always(STREAM_DEVICE_ID, device_id);
    b.push_slot::<u64>(STREAM_DELIVERED_AT, s.delivered_at_epoch_ms, 0);
    b.end_table(start).as_union_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_round_trips() {
        let mut w = EnvelopeWriter::new();
        let ack = w.ack(b"tx-1", b"V", b"m-9").to_vec();
        let env = read_envelope(&ack).unwrap();
        assert_eq!(env.txid, b"tx-1");
        assert_eq!(env.topic, b"V");
        assert_eq!(env.message_id, b"m-9");
        assert_eq!(env.message_type, MESSAGE_TYPE_STREAM_ACK);
        assert!(env.stream.is_none());
    }

    #[test]
    fn error_reply_round_trips() {
        let mut w = EnvelopeWriter::new();
        let reply = w.error_reply(b"tx-2").to_vec();
        let env = read_envelope(&reply).unwrap();
        assert_eq!(env.txid, b"tx-2");
        assert_eq!(env.topic, b"");
        assert_eq!(env.message_type, MESSAGE_TYPE_STREAM);
        let s = env.stream.unwrap();
        assert_eq!(s.payload, ERROR_REPLY_TEXT);
        assert_eq!(s.created_at, 0);
        assert_eq!(s.sender_id, b"");
    }

    #[test]
    fn stream_round_trips_every_field() {
        let mut w = EnvelopeWriter::new();
        let view = StreamView {
            created_at: 1_764_000_000,
            sender_id: b"vehicle_device.VIN1",
            payload: &[8, 1, 2, 3],
            device_type: b"vehicle_device",
            device_id: b"VIN1",
            delivered_at_epoch_ms: 1_764_000_000_123,
        };
        let frame = w.stream(b"t", b"alerts", b"id", &view).to_vec();
        let env = read_envelope(&frame).unwrap();
        assert_eq!(env.stream.unwrap(), view);
        assert_eq!(env.topic, b"alerts");
    }

    /// Bytes produced by the Go flatbuffers builder (v25.2.10) driven in the reference server's
    /// order, for the same inputs: vehicles get byte-identical answers from fleetgate.
    const GO_ACK: &str = "1400000000000e001800140010000f00080004000e0000001400000034000000000000051000000014000000030000006d2d310001000000560000000d00000034663163326139302d303030310000000000000000000000";
    const GO_ERROR_REPLY: &str = "1400000000000e001800140010000f00080004000e0000001400000040000000000000041000000014000000000000000000000000000000000000000d00000034663163326139302d30303031000e001400000010000c00080004000e000000100000001400000018000000340000000000000000000000000000000000000018000000696e636f7272656374206d65737361676520666f726d6174000000000000000000000000";

    #[test]
    fn ack_and_error_reply_bytes_equal_the_reference_builder() {
        let mut w = EnvelopeWriter::new();
        assert_eq!(hex::encode(w.ack(b"4f1c2a90-0001", b"V", b"m-1")), GO_ACK);
        assert_eq!(hex::encode(w.error_reply(b"4f1c2a90-0001")), GO_ERROR_REPLY);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for buf in [
            &b""[..],
            b"short",
            b"hello, this is not a frame at all.....",
        ] {
            assert!(read_envelope(buf).is_err());
        }
    }
}
