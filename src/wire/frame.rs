//! From one websocket message to a checked [`Record`]: size limit, envelope, topic, payload
//! decode and transforms. Pure functions over bytes, no I/O, so they are easy to test and bench.

use bytes::Bytes;

use super::envelope::{read_envelope, EnvelopeError, MESSAGE_TYPE_STREAM};
use super::payload::{decode_and_transform_reusing, DecodeBuffers, Decoded};
use super::topic::Topic;

/// Largest websocket message accepted as a frame (Tesla's limit).
pub const MAX_FRAME_BYTES: usize = 1_000_000;

/// A verified envelope carrying a `Stream`, before its payload is decoded. Borrows the
/// websocket message: no copy, no reference counting on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Transaction id to echo in the ack.
    pub txid: &'a [u8],
    /// Topic as sent.
    pub topic_name: &'a [u8],
    /// The topic, when its schema is known.
    pub topic: Option<Topic>,
    /// Message id to echo in the ack.
    pub message_id: &'a [u8],
    /// Vehicle's creation time (unix seconds).
    pub created_at: u32,
    /// Sender id as claimed by the frame.
    pub sender_id: &'a [u8],
    /// Device type as sent.
    pub device_type: &'a [u8],
    /// Device id as sent.
    pub device_id: &'a [u8],
    /// The protobuf payload, untouched.
    pub payload: &'a [u8],
}

/// Why a websocket message is not a usable frame. Each kind maps to one answer on the wire.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// Larger than [`MAX_FRAME_BYTES`]: error reply.
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooBig {
        /// Size of the message.
        len: usize,
    },
    /// The envelope can't be verified: no txid can be trusted, nothing to answer.
    #[error("{0}")]
    Malformed(#[from] EnvelopeError),
    /// A valid envelope whose union is not a Stream: acked so the sender stops resending.
    #[error("message type {message_type} is not a Stream")]
    UnknownMessageType {
        /// Echoed in the ack.
        txid: Bytes,
        /// Echoed in the ack.
        topic: Bytes,
        /// Echoed in the ack.
        message_id: Bytes,
        /// The union tag found.
        message_type: u8,
    },
    /// A Stream on a topic without a known schema.
    #[error("topic {:?} has no known schema", String::from_utf8_lossy(topic))]
    UnknownTopic {
        /// Echoed in the answer.
        txid: Bytes,
        /// The topic as sent.
        topic: Bytes,
        /// Echoed in the answer.
        message_id: Bytes,
    },
    /// The payload is not the topic's protobuf message: error reply.
    #[error("payload is not a valid {topic} message: {error}")]
    BadPayload {
        /// Echoed in the error reply.
        txid: Bytes,
        /// The topic whose schema did not match.
        topic: Topic,
        /// What prost reported.
        error: prost::DecodeError,
    },
}

impl FrameError {
    /// Stable short name, used in `decode` output, metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::TooBig { .. } => "too_big",
            FrameError::Malformed(_) => "malformed",
            FrameError::UnknownMessageType { .. } => "unknown_message_type",
            FrameError::UnknownTopic { .. } => "unknown_topic",
            FrameError::BadPayload { .. } => "bad_payload",
        }
    }
}

/// Reads the envelope of one websocket message.
pub fn read_frame(message: &[u8]) -> Result<Frame<'_>, FrameError> {
    if message.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooBig { len: message.len() });
    }
    let env = read_envelope(message)?;
    let Some(stream) = env
        .stream
        .filter(|_| env.message_type == MESSAGE_TYPE_STREAM)
    else {
        return Err(FrameError::UnknownMessageType {
            txid: Bytes::copy_from_slice(env.txid),
            topic: Bytes::copy_from_slice(env.topic),
            message_id: Bytes::copy_from_slice(env.message_id),
            message_type: env.message_type,
        });
    };
    Ok(Frame {
        txid: env.txid,
        topic_name: env.topic,
        topic: Topic::from_wire(env.topic),
        message_id: env.message_id,
        created_at: stream.created_at,
        sender_id: stream.sender_id,
        device_type: stream.device_type,
        device_id: stream.device_id,
        payload: stream.payload,
    })
}

/// A frame whose payload decoded as its topic's message, after the transforms.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    /// The envelope fields.
    pub frame: Frame<'a>,
    /// The topic (always known here).
    pub topic: Topic,
    /// The vehicle's id from its certificate (or the frame's device id where there is none).
    pub vin: &'a str,
    /// Transformed protobuf bytes: what the Kafka sink sends.
    pub payload: Vec<u8>,
    /// The typed, transformed payload: what the vehicle table and rules read.
    pub decoded: Decoded,
    /// When the server received the frame (ms since the epoch).
    pub received_at_ms: u64,
}

impl<'a> Frame<'a> {
    /// Decodes the payload and applies the transforms with `vin`.
    pub fn into_record(self, vin: &'a str, received_at_ms: u64) -> Result<Record<'a>, FrameError> {
        self.into_record_reusing(vin, received_at_ms, &mut DecodeBuffers::default())
    }

    /// [`Frame::into_record`] into the memory `buffers` keep from earlier frames (hand the
    /// record back with [`DecodeBuffers::recycle`]).
    pub fn into_record_reusing(
        self,
        vin: &'a str,
        received_at_ms: u64,
        buffers: &mut DecodeBuffers,
    ) -> Result<Record<'a>, FrameError> {
        let Some(topic) = self.topic else {
            return Err(FrameError::UnknownTopic {
                txid: Bytes::copy_from_slice(self.txid),
                topic: Bytes::copy_from_slice(self.topic_name),
                message_id: Bytes::copy_from_slice(self.message_id),
            });
        };
        match decode_and_transform_reusing(topic, self.payload, vin, buffers) {
            Ok((decoded, payload)) => Ok(Record {
                frame: self,
                topic,
                vin,
                payload,
                decoded,
                received_at_ms,
            }),
            Err(error) => Err(FrameError::BadPayload {
                txid: Bytes::copy_from_slice(self.txid),
                topic,
                error,
            }),
        }
    }
}

/// `decode` without a certificate: vin = the frame's device id (must be UTF-8).
pub fn decode_standalone(message: &[u8], received_at_ms: u64) -> Result<Record<'_>, FrameError> {
    let frame = read_frame(message)?;
    let vin = std::str::from_utf8(frame.device_id)
        .map_err(|_| FrameError::Malformed(EnvelopeError("device_id is not UTF-8".into())))?;
    frame.into_record(vin, received_at_ms)
}
