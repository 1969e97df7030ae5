//! Protobuf payloads per topic: decoding into the generated types, the reference server's
//! transforms, and re-encoding that keeps every byte the transforms did not touch.
//!
//! Re-encoding works by splicing, not by a full `encode`: the original payload is walked field by
//! field at the top level, untouched fields are copied byte for byte (so fields and oneof members
//! from newer firmware pass through even though this build does not know them), a rewritten
//! datum or alert is encoded in its place, and `vin` is set. One output buffer per frame.

use std::sync::LazyLock;

use bytes::{Buf, BufMut};
use prost::encoding::{decode_key, encode_key, encode_varint, skip_field, DecodeContext, WireType};
use prost::Message;
use regex::Regex;

use super::proto::{vehicle_alerts, vehicle_connectivity, vehicle_data, vehicle_error};
use super::topic::Topic;
use vehicle_data::value::Value as V;

/// Seconds at or above this in an alert timestamp were really milliseconds (Tesla's alert transform).
pub const ALERT_MILLIS_THRESHOLD_S: i64 = 315_576_000_000;

/// Field number of `vin` in all four payload messages.
const VIN_FIELD: u32 = 3;
/// Field number of the repeated `data` (V) / `alerts` (alerts) list.
const LIST_FIELD: u32 = 1;

/// A decoded, transformed payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// `V`: vehicle data.
    Vehicle(vehicle_data::Payload),
    /// `alerts`.
    Alerts(vehicle_alerts::VehicleAlerts),
    /// `errors`.
    Errors(vehicle_error::VehicleErrors),
    /// `connectivity` (made by the server, decoded for `decode` of captured records).
    Connectivity(vehicle_connectivity::VehicleConnectivity),
}

impl Decoded {
    /// The vehicle-data payload, when this is a `V` record.
    pub fn vehicle(&self) -> Option<&vehicle_data::Payload> {
        match self {
            Decoded::Vehicle(p) => Some(p),
            _ => None,
        }
    }
}

/// Heap memory a connection keeps from one frame to the next, so that decoding a `V` frame
/// reuses the previous frame's datum list, vin string and output buffer instead of allocating
/// them anew. Hand a record's parts back with [`DecodeBuffers::recycle`] when it is done with.
#[derive(Debug, Default)]
pub struct DecodeBuffers {
    vehicle: vehicle_data::Payload,
    bytes: Vec<u8>,
}

impl DecodeBuffers {
    /// Takes back a finished record's typed payload and bytes for the next frame.
    pub fn recycle(&mut self, decoded: Decoded, mut bytes: Vec<u8>) {
        if let Decoded::Vehicle(mut p) = decoded {
            p.clear();
            self.vehicle = p;
        }
        bytes.clear();
        self.bytes = bytes;
    }
}

/// Decodes `raw` as `topic`'s message, applies the transforms with `vin`, and returns the typed
/// value with the transformed protobuf bytes.
pub fn decode_and_transform(
    topic: Topic,
    raw: &[u8],
    vin: &str,
) -> Result<(Decoded, Vec<u8>), prost::DecodeError> {
    decode_and_transform_reusing(topic, raw, vin, &mut DecodeBuffers::default())
}

/// [`decode_and_transform`] into the memory `buffers` keep from earlier frames.
pub fn decode_and_transform_reusing(
    topic: Topic,
    raw: &[u8],
    vin: &str,
    buffers: &mut DecodeBuffers,
) -> Result<(Decoded, Vec<u8>), prost::DecodeError> {
    let mut rewritten = Vec::new();
    let had_vin;
    let decoded = match topic {
        Topic::Vehicle => {
            let mut p = std::mem::take(&mut buffers.vehicle);
            if let Err(e) = p.merge(raw) {
                p.clear();
                buffers.vehicle = p;
                return Err(e);
            }
            transform_location(&mut p, &mut rewritten);
            transform_scientific_notation(&mut p, &mut rewritten);
            had_vin = set_vin(&mut p.vin, vin);
            Decoded::Vehicle(p)
        }
        Topic::Alerts => {
            let mut p = vehicle_alerts::VehicleAlerts::decode(raw)?;
            transform_alert_timestamps(&mut p, &mut rewritten);
            had_vin = set_vin(&mut p.vin, vin);
            Decoded::Alerts(p)
        }
        Topic::Errors => {
            let mut p = vehicle_error::VehicleErrors::decode(raw)?;
            had_vin = set_vin(&mut p.vin, vin);
            Decoded::Errors(p)
        }
        Topic::Connectivity => {
            let mut p = vehicle_connectivity::VehicleConnectivity::decode(raw)?;
            p.vin = vin.to_owned();
            // vin is field 1 here, not 3: re-encode the whole (small, server-made) message.
            return Ok((Decoded::Connectivity(p.clone()), p.encode_to_vec()));
        }
    };
    if rewritten.is_empty() && !had_vin {
        // Common case: nothing to replace and no vin to drop (proto3 encoders never write an
        // empty string), so the output is the input plus the vin field.
        let mut out = std::mem::take(&mut buffers.bytes);
        out.reserve(raw.len() + vin.len() + 4);
        out.extend_from_slice(raw);
        append_vin(&mut out, vin);
        return Ok((decoded, out));
    }
    rewritten.sort_unstable();
    rewritten.dedup();
    let mut out = std::mem::take(&mut buffers.bytes);
    match splice(raw, &decoded, &rewritten, vin, &mut out) {
        Ok(()) => Ok((decoded, out)),
        Err(e) => {
            buffers.recycle(decoded, out);
            Err(e)
        }
    }
}

/// Sets the payload's vin; true when the vehicle had sent a non-empty one.
fn set_vin(field: &mut String, vin: &str) -> bool {
    let had = !field.is_empty();
    field.clear();
    field.push_str(vin);
    had
}

fn append_vin(out: &mut Vec<u8>, vin: &str) {
    if !vin.is_empty() {
        encode_key(VIN_FIELD, WireType::LengthDelimited, out);
        encode_varint(vin.len() as u64, out);
        out.put_slice(vin.as_bytes());
    }
}

/// First `Location` datum holding a parsable `"(lat N, lon W)"` string becomes a location value.
/// Like the reference server, only the first `Location` datum is looked at.
fn transform_location(p: &mut vehicle_data::Payload, rewritten: &mut Vec<usize>) {
    let Some((i, datum)) = p
        .data
        .iter_mut()
        .enumerate()
        .find(|(_, d)| d.key == vehicle_data::Field::Location as i32)
    else {
        return;
    };
    if let Some(vehicle_data::Value {
        value: Some(V::StringValue(s)),
    }) = &datum.value
    {
        if let Some(loc) = parse_location(s) {
            datum.value = Some(vehicle_data::Value {
                value: Some(V::LocationValue(loc)),
            });
            rewritten.push(i);
        }
    }
}

/// Parses `"(37.412374 N, 122.145867 W)"`; S and W are negative.
pub fn parse_location(s: &str) -> Option<vehicle_data::LocationValue> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (lat_part, lon_part) = inner.split_once(',')?;
    let parse = |part: &str, positive: &str, negative: &str| -> Option<f64> {
        let mut it = part.split_whitespace();
        let number: f64 = it.next()?.parse().ok()?;
        let hemisphere = it.next()?;
        if it.next().is_some() || !number.is_finite() {
            return None;
        }
        match hemisphere {
            h if h == positive => Some(number),
            h if h == negative => Some(-number),
            _ => None,
        }
    };
    Some(vehicle_data::LocationValue {
        latitude: parse(lat_part, "N", "S")?,
        longitude: parse(lon_part, "E", "W")?,
    })
}

static SCIENTIFIC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[+-]?(\d*\.\d+|\d+\.\d*)([eE][+-]?\d+)$").expect("valid regex"));

/// Rewrites a scientific-notation string (`1.2e-3`) the way the reference server does: parsed
/// as a 32-bit float and printed with `%.5f` (`0.00120`). Out-of-range values stay as they are.
pub fn rewrite_scientific(s: &str) -> Option<String> {
    // Cheap pre-check keeps the regex off the common path (plain numbers, words).
    if !s.bytes().any(|b| b == b'e' || b == b'E') || !SCIENTIFIC.is_match(s) {
        return None;
    }
    let value: f32 = s.parse().ok()?;
    value
        .is_finite()
        .then(|| format!("{:.5}", f64::from(value)))
}

fn transform_scientific_notation(p: &mut vehicle_data::Payload, rewritten: &mut Vec<usize>) {
    for (i, datum) in p.data.iter_mut().enumerate() {
        if let Some(vehicle_data::Value {
            value: Some(V::StringValue(s)),
        }) = &mut datum.value
        {
            if let Some(fixed) = rewrite_scientific(s) {
                *s = fixed;
                rewritten.push(i);
            }
        }
    }
}

fn millis_to_timestamp(ts: &mut Option<crate::wire::Timestamp>) -> bool {
    match ts {
        Some(t) if t.seconds >= ALERT_MILLIS_THRESHOLD_S => {
            let ms = t.seconds;
            t.seconds = ms.div_euclid(1000);
            t.nanos = (ms.rem_euclid(1000) * 1_000_000) as i32;
            true
        }
        _ => false,
    }
}

fn transform_alert_timestamps(p: &mut vehicle_alerts::VehicleAlerts, rewritten: &mut Vec<usize>) {
    for (i, alert) in p.alerts.iter_mut().enumerate() {
        let started = millis_to_timestamp(&mut alert.started_at);
        let ended = millis_to_timestamp(&mut alert.ended_at);
        if started || ended {
            rewritten.push(i);
        }
    }
}

/// Copies `bytes` without the list entries (`data` datums / `alerts`) at the sorted indexes in
/// `drop`; every other field is kept byte for byte.
pub fn drop_list_entries(bytes: &[u8], drop: &[usize]) -> Result<Vec<u8>, prost::DecodeError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut buf = bytes;
    let mut index = 0usize;
    while buf.has_remaining() {
        let start = bytes.len() - buf.remaining();
        let (tag, wire_type) = decode_key(&mut buf)?;
        skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
        let field = &bytes[start..bytes.len() - buf.remaining()];
        if tag == LIST_FIELD && wire_type == WireType::LengthDelimited {
            let i = index;
            index += 1;
            if drop.binary_search(&i).is_ok() {
                continue;
            }
        }
        out.put_slice(field);
    }
    Ok(out)
}

/// Copies `raw` field by field, replacing the `rewritten` entries of the list field with their
/// new encoding, dropping any `vin`, and appending the connection's `vin`.
fn splice(
    raw: &[u8],
    decoded: &Decoded,
    rewritten: &[usize],
    vin: &str,
    out: &mut Vec<u8>,
) -> Result<(), prost::DecodeError> {
    out.reserve(raw.len() + vin.len() + 16);
    let mut buf = raw;
    let mut list_index = 0usize;
    while buf.has_remaining() {
        let field_start = raw.len() - buf.remaining();
        let (tag, wire_type) = decode_key(&mut buf)?;
        skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
        let field = &raw[field_start..raw.len() - buf.remaining()];
        if tag == VIN_FIELD {
            continue;
        }
        if tag == LIST_FIELD && wire_type == WireType::LengthDelimited {
            let index = list_index;
            list_index += 1;
            if rewritten.binary_search(&index).is_ok() {
                match decoded {
                    Decoded::Vehicle(p) => {
                        prost::encoding::message::encode(LIST_FIELD, &p.data[index], out)
                    }
                    Decoded::Alerts(p) => {
                        prost::encoding::message::encode(LIST_FIELD, &p.alerts[index], out)
                    }
                    _ => out.put_slice(field),
                }
                continue;
            }
        }
        out.put_slice(field);
    }
    append_vin(out, vin);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_strings() {
        let loc = parse_location("(37.412374 N, 122.145867 W)").unwrap();
        assert_eq!((loc.latitude, loc.longitude), (37.412374, -122.145867));
        let loc = parse_location("(33.9 S, 151.2 E)").unwrap();
        assert_eq!((loc.latitude, loc.longitude), (-33.9, 151.2));
        for bad in [
            "",
            "(1 N)",
            "(1 X, 2 W)",
            "1 N, 2 W",
            "(a N, 2 W)",
            "(1 N, 2 W) x",
        ] {
            assert!(parse_location(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn scientific_notation_as_f32_with_five_decimals() {
        assert_eq!(rewrite_scientific("1.2e-3").as_deref(), Some("0.00120"));
        assert_eq!(rewrite_scientific("-2.5E2").as_deref(), Some("-250.00000"));
        assert_eq!(rewrite_scientific(".5e1").as_deref(), Some("5.00000"));
        // f32 precision, as the reference parses with bitSize 32
        assert_eq!(
            rewrite_scientific("1.23456789e2").as_deref(),
            Some("123.45679")
        );
        for untouched in ["1e5", "12.5", "abc", "1.0e99", "e.5"] {
            assert_eq!(rewrite_scientific(untouched), None, "{untouched}");
        }
    }

    #[test]
    fn unknown_fields_survive_the_splice() {
        // Payload{data: [Datum{key: Soc, value: {double 1.0}}], unknown field 99 = varint 7}
        let mut p = vehicle_data::Payload::default();
        p.data.push(vehicle_data::Datum {
            key: vehicle_data::Field::Soc as i32,
            value: Some(vehicle_data::Value {
                value: Some(V::DoubleValue(1.0)),
            }),
        });
        let mut raw = p.encode_to_vec();
        encode_key(99, WireType::Varint, &mut raw);
        encode_varint(7, &mut raw);
        let (_, out) = decode_and_transform(Topic::Vehicle, &raw, "VIN9").unwrap();
        assert!(out.windows(2).any(|w| w == [0x98, 0x06]), "field 99 kept");
        let back = vehicle_data::Payload::decode(out.as_slice()).unwrap();
        assert_eq!(back.vin, "VIN9");
        assert_eq!(back.data, p.data);
    }

    #[test]
    fn a_vin_sent_by_the_vehicle_is_replaced_not_duplicated() {
        let p = vehicle_data::Payload {
            vin: "SPOOFED".into(),
            is_resend: true,
            ..Default::default()
        };
        let raw = p.encode_to_vec();
        let (decoded, out) = decode_and_transform(Topic::Vehicle, &raw, "REAL").unwrap();
        assert_eq!(decoded.vehicle().unwrap().vin, "REAL");
        assert!(!out.windows(7).any(|w| w == b"SPOOFED"));
        let back = vehicle_data::Payload::decode(out.as_slice()).unwrap();
        assert_eq!((back.vin.as_str(), back.is_resend), ("REAL", true));
    }

    #[test]
    fn reused_buffers_decode_each_frame_as_a_fresh_decode_does() {
        let datum = |key: vehicle_data::Field, value: V| vehicle_data::Datum {
            key: key as i32,
            value: Some(vehicle_data::Value { value: Some(value) }),
        };
        let big = vehicle_data::Payload {
            data: vec![
                datum(vehicle_data::Field::Soc, V::DoubleValue(61.0)),
                datum(
                    vehicle_data::Field::VehicleSpeed,
                    V::StringValue("1e2".into()),
                ),
                datum(vehicle_data::Field::Gear, V::StringValue("D".into())),
            ],
            vin: "SENT".into(),
            is_resend: true,
            ..Default::default()
        };
        let small = vehicle_data::Payload {
            data: vec![datum(vehicle_data::Field::Soc, V::DoubleValue(62.0))],
            ..Default::default()
        };
        let frames = [
            big.encode_to_vec(),
            small.encode_to_vec(),
            vec![0x0a, 0xff], // truncated: refused, and leaves nothing behind
            small.encode_to_vec(),
            big.encode_to_vec(),
        ];
        let mut buffers = DecodeBuffers::default();
        for raw in &frames {
            let fresh = decode_and_transform(Topic::Vehicle, raw, "VIN9");
            let reused = decode_and_transform_reusing(Topic::Vehicle, raw, "VIN9", &mut buffers);
            assert_eq!(reused.is_ok(), fresh.is_ok());
            if let (Ok(fresh), Ok((decoded, bytes))) = (fresh, reused) {
                assert_eq!((&decoded, &bytes), (&fresh.0, &fresh.1));
                buffers.recycle(decoded, bytes);
            }
        }
    }

    #[test]
    fn alert_millis_become_seconds() {
        let mut ts = Some(crate::wire::Timestamp {
            seconds: 1_764_000_000_123,
            nanos: 0,
        });
        assert!(millis_to_timestamp(&mut ts));
        assert_eq!(
            ts,
            Some(crate::wire::Timestamp {
                seconds: 1_764_000_000,
                nanos: 123_000_000
            })
        );
    }
}
