//! proto3 JSON (camelCase names, enum names, unknown enum numbers as numbers, unpopulated
//! scalars emitted) for `decode`, the logger sink and `transmit_decoded_records`.

use std::borrow::Cow;

use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::ser::{Error as _, Serialize, Serializer};

use super::frame::Record;
use super::proto::descriptor_pool;
use super::topic::Topic;

fn options() -> SerializeOptions {
    // Emit unpopulated scalars (like the reference's protojson EmitUnpopulated), keep 64-bit
    // integers as strings as proto3 JSON requires.
    SerializeOptions::new().skip_default_fields(false)
}

/// A payload rendered as proto3 JSON when serialized.
pub struct PayloadJson<'a> {
    /// The payload's topic (selects the message type).
    pub topic: Topic,
    /// Protobuf bytes of that message.
    pub bytes: &'a [u8],
}

impl Serialize for PayloadJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let desc = descriptor_pool()
            .get_message_by_name(self.topic.message_name())
            .ok_or_else(|| S::Error::custom("topic message missing from descriptor pool"))?;
        let message = DynamicMessage::decode(desc, self.bytes).map_err(S::Error::custom)?;
        message.serialize_with_options(serializer, &options())
    }
}

/// Renders protobuf bytes of `topic` as a JSON value.
pub fn payload_to_json(topic: Topic, bytes: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(PayloadJson { topic, bytes })
}

/// Renders protobuf bytes of `topic` as compact JSON bytes (`transmit_decoded_records`).
pub fn payload_to_json_bytes(topic: Topic, bytes: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&PayloadJson { topic, bytes })
}

/// One record as a JSON line: `{"topic","txid","vin","device_type","created_at","payload"}`.
#[derive(serde::Serialize)]
pub struct RecordLine<'a> {
    topic: &'static str,
    txid: Cow<'a, str>,
    vin: &'a str,
    device_type: Cow<'a, str>,
    created_at: u32,
    payload: PayloadJson<'a>,
}

impl<'a> RecordLine<'a> {
    /// The line for `record`.
    pub fn new(record: &'a Record<'a>) -> Self {
        Self {
            topic: record.topic.as_str(),
            txid: String::from_utf8_lossy(record.frame.txid),
            vin: record.vin,
            device_type: String::from_utf8_lossy(record.frame.device_type),
            created_at: record.frame.created_at,
            payload: PayloadJson {
                topic: record.topic,
                bytes: &record.payload,
            },
        }
    }
}
