//! The Tesla wire: flatbuffers envelopes around protobuf payloads.
//!
//! Owns every byte layout (envelope, payload schemas, JSON rendering) and the reference
//! server's transforms. Knows nothing of sockets, sinks or policy; the rest of the crate sees
//! [`Frame`], [`Record`] and [`FrameError`].

pub mod envelope;
pub mod frame;
pub mod json;
pub mod payload;
pub mod proto;
pub mod timestamp;
pub mod topic;

pub use envelope::{read_envelope, EnvelopeView, EnvelopeWriter, StreamView};
pub use frame::{decode_standalone, read_frame, Frame, FrameError, Record, MAX_FRAME_BYTES};
pub use payload::{DecodeBuffers, Decoded};
pub use timestamp::Timestamp;
pub use topic::Topic;
