//! proto3 JSON (camelCase names, enum names, unknown enum numbers as numbers, unpopulated
//! scalars emitted) for `decode`, the logger sink and `transmit_decoded_records`.

use std::borrow::Cow;

use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::ser::{Error as _, Serialize, Serializer};

use super::frame::Record;
use super::payload::Decoded;
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

/// The fast path: typed prost decode and the pbjson-generated serde impls (no reflection),
/// appended to `out`. False (with `out` unchanged) when it cannot render the payload exactly as
/// the reflective path would (see [`typed_message_into`]).
fn typed_into(topic: Topic, bytes: &[u8], out: &mut Vec<u8>) -> bool {
    fn render<M: prost::Message + Default + Serialize>(bytes: &[u8], out: &mut Vec<u8>) -> bool {
        match M::decode(bytes) {
            Ok(message) => typed_message_into(&message, out),
            Err(_) => false,
        }
    }
    match topic {
        Topic::Vehicle => render::<super::proto::vehicle_data::Payload>(bytes, out),
        Topic::Alerts => render::<super::proto::vehicle_alerts::VehicleAlerts>(bytes, out),
        Topic::Errors => render::<super::proto::vehicle_error::VehicleErrors>(bytes, out),
        Topic::Connectivity => {
            render::<super::proto::vehicle_connectivity::VehicleConnectivity>(bytes, out)
        }
    }
}

/// A decoded message through its pbjson-generated serde impl, appended to `out`. False (with
/// `out` unchanged) when that cannot be exactly what the reflective path writes: an enum number
/// this build does not know (pbjson refuses those), or a non-finite float (proto3 JSON writes
/// `"NaN"`, serde_json would write `null`).
fn typed_message_into<M: Serialize>(message: &M, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let rendered = serde_json::to_writer(&mut *out, message).is_ok();
    // `null` never appears in proto3 JSON of these schemas except for a non-finite float (a
    // string containing "null" only costs the slow path)
    if !rendered || memchr::memmem::find(&out[start..], b"null").is_some() {
        out.truncate(start);
        return false;
    }
    true
}

/// Appends the proto3 JSON of a payload the pipeline has already decoded (and transformed)
/// to `out`: the logger's line without decoding the payload a second time. `bytes` are the
/// same payload encoded; the reflective path reads them when the typed one cannot render it
/// exactly.
pub fn write_decoded_json(
    decoded: &Decoded,
    bytes: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let (topic, rendered) = match decoded {
        Decoded::Vehicle(p) => (Topic::Vehicle, typed_message_into(p, out)),
        Decoded::Alerts(p) => (Topic::Alerts, typed_message_into(p, out)),
        Decoded::Errors(p) => (Topic::Errors, typed_message_into(p, out)),
        Decoded::Connectivity(p) => (Topic::Connectivity, typed_message_into(p, out)),
    };
    if rendered {
        return Ok(());
    }
    write_reflective(topic, bytes, out)
}

/// Appends the proto3 JSON of a `topic` payload to `out`.
pub fn write_payload_json(
    topic: Topic,
    bytes: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    if typed_into(topic, bytes, out) {
        return Ok(());
    }
    write_reflective(topic, bytes, out)
}

/// The reflective path into `out` (unchanged on error).
fn write_reflective(
    topic: Topic,
    bytes: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let start = out.len();
    let result = reflective(topic, bytes, &mut serde_json::Serializer::new(&mut *out));
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// The payload as raw JSON through the fast path, when it applies.
fn typed_json(topic: Topic, bytes: &[u8]) -> Option<Box<serde_json::value::RawValue>> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    if !typed_into(topic, bytes, &mut out) {
        return None;
    }
    serde_json::value::RawValue::from_string(String::from_utf8(out).ok()?).ok()
}

impl Serialize for PayloadJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(raw) = typed_json(self.topic, self.bytes) {
            return raw.serialize(serializer);
        }
        reflective(self.topic, self.bytes, serializer)
    }
}

/// The reflective path (prost-reflect): exact for anything the descriptors describe.
fn reflective<S: Serializer>(topic: Topic, bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    {
        let desc = descriptor_pool()
            .get_message_by_name(topic.message_name())
            .ok_or_else(|| S::Error::custom("topic message missing from descriptor pool"))?;
        let message = DynamicMessage::decode(desc, bytes).map_err(S::Error::custom)?;
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

#[cfg(test)]
mod tests {
    use prost_reflect::{DynamicMessage, Kind, Value};

    use super::*;

    fn both(topic: Topic, bytes: &[u8]) -> (Option<serde_json::Value>, serde_json::Value) {
        let fast = typed_json(topic, bytes).map(|raw| serde_json::from_str(raw.get()).unwrap());
        let slow = reflective(topic, bytes, serde_json::value::Serializer).unwrap();
        (fast, slow)
    }

    #[test]
    fn the_typed_path_renders_every_captured_frame_like_the_reflective_path() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/frames");
        let mut compared = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "bin") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let Ok(frame) = crate::wire::read_frame(&bytes) else {
                continue;
            };
            let Ok(record) = frame.into_record("5YJ3E1EA7KF000001", 0) else {
                continue;
            };
            let (fast, slow) = both(record.topic, &record.payload);
            if let Some(fast) = fast {
                assert_eq!(fast, slow, "{}", path.display());
                compared += 1;
            }
        }
        assert!(compared >= 5, "only {compared} frames compared");
    }

    fn sample(kind: &Kind) -> Value {
        match kind {
            Kind::Double => Value::F64(12.5),
            Kind::Float => Value::F32(2.25),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(-7),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(-9_000_000_000),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(7),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(9_000_000_000),
            Kind::Bool => Value::Bool(true),
            Kind::String => Value::String("x \"y\"".into()),
            Kind::Bytes => Value::Bytes(bytes::Bytes::from_static(b"\x01\x02")),
            Kind::Enum(e) => Value::EnumNumber(e.values().last().map(|v| v.number()).unwrap_or(0)),
            Kind::Message(m) => {
                let mut msg = DynamicMessage::new(m.clone());
                for f in m.fields() {
                    if !f.is_list() && !f.is_map() && !matches!(f.kind(), Kind::Message(_)) {
                        msg.set_field(&f, sample(&f.kind()));
                    }
                }
                Value::Message(msg)
            }
        }
    }

    #[test]
    fn the_typed_path_renders_every_value_kind_like_the_reflective_path() {
        let pool = descriptor_pool();
        let payload = pool
            .get_message_by_name("telemetry.vehicle_data.Payload")
            .unwrap();
        let datum = pool
            .get_message_by_name("telemetry.vehicle_data.Datum")
            .unwrap();
        let value = pool
            .get_message_by_name("telemetry.vehicle_data.Value")
            .unwrap();
        let mut compared = 0;
        for field in value.fields() {
            let mut v = DynamicMessage::new(value.clone());
            v.set_field(&field, sample(&field.kind()));
            let mut d = DynamicMessage::new(datum.clone());
            d.set_field_by_name("key", Value::EnumNumber(1));
            d.set_field_by_name("value", Value::Message(v));
            let mut p = DynamicMessage::new(payload.clone());
            p.set_field_by_name("data", Value::List(vec![Value::Message(d)]));
            p.set_field_by_name("vin", Value::String("5YJ3E1EA7KF000001".into()));
            let bytes = prost::Message::encode_to_vec(&p);
            let (fast, slow) = both(Topic::Vehicle, &bytes);
            let fast = fast.unwrap_or_else(|| panic!("{} took the slow path", field.name()));
            assert_eq!(fast, slow, "{}", field.name());
            compared += 1;
        }
        assert!(compared > 50, "{compared}");
        // an enum number this build does not know: the reflective path renders it
        let mut d = DynamicMessage::new(datum.clone());
        d.set_field_by_name("key", Value::EnumNumber(99_999));
        let mut p = DynamicMessage::new(payload.clone());
        p.set_field_by_name("data", Value::List(vec![Value::Message(d)]));
        let bytes = prost::Message::encode_to_vec(&p);
        assert!(typed_json(Topic::Vehicle, &bytes).is_none());
        let line = serde_json::to_value(PayloadJson {
            topic: Topic::Vehicle,
            bytes: &bytes,
        })
        .unwrap();
        assert_eq!(line["data"][0]["key"], 99_999, "{line}");
    }
}
