//! The CloudEvents Kafka protocol binding of fleetgate's events, both ways: an event as a
//! record (structured: the whole CloudEvent as the value; binary: `data` as the value and every
//! attribute as a `ce_` header), and a record back into an event (the cluster's relay to the
//! other event sinks reads the committed events topic). Shared by the Kafka sink and cluster
//! mode's rules.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde_json::{Map, Value};

use crate::event::{Event, EventType};

/// How events are laid out on Kafka (the CloudEvents Kafka protocol binding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventContentMode {
    /// The whole CloudEvent as the value, `content-type: application/cloudevents+json`.
    #[default]
    Structured,
    /// `data` as the value, every attribute as a `ce_` header, `content-type` = datacontenttype.
    Binary,
}

/// An event that could not be encoded as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode the event: {0}")]
pub struct EncodeError(pub String);

/// An event as a Kafka record (the CloudEvents Kafka binding): the value and the headers for
/// `mode`, keyed by the caller with the VIN. Shared by the sink and cluster mode's rules.
pub fn event_message<'a>(
    event: &Event,
    json: &'a [u8],
    mode: EventContentMode,
) -> Result<(std::borrow::Cow<'a, [u8]>, OwnedHeaders), EncodeError> {
    let vin = Header {
        key: "vin",
        value: Some(event.vin.as_str()),
    };
    match mode {
        EventContentMode::Structured => {
            // the whole event in the value; no ce_ headers (a partial set reads as binary)
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "content-type",
                    value: Some(crate::event::STRUCTURED_CONTENT_TYPE),
                })
                .insert(vin);
            Ok((std::borrow::Cow::Borrowed(json), headers))
        }
        EventContentMode::Binary => {
            let data = serde_json::to_vec(&event.data).map_err(|e| EncodeError(e.to_string()))?;
            let time = event.time_rfc3339();
            let mut headers = OwnedHeaders::new_with_capacity(8);
            for (key, value) in [
                ("ce_specversion", crate::event::SPEC_VERSION),
                ("ce_id", event.id.as_str()),
                ("ce_source", crate::event::SOURCE),
                ("ce_type", event.kind.as_str()),
                ("ce_subject", event.vin.as_str()),
                ("ce_time", time.as_str()),
                ("content-type", crate::event::DATA_CONTENT_TYPE),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            Ok((std::borrow::Cow::Owned(data), headers.insert(vin)))
        }
    }
}

/// Why a record of the events topic is not an event of fleetgate's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fleetgate CloudEvent: {0}")]
pub struct DecodeError(pub String);

/// Reads an event back from its record (either content mode): the CloudEvent JSON a sink
/// delivers and the event it describes.
pub fn event_from_record(
    headers: Option<&rdkafka::message::BorrowedHeaders>,
    value: &[u8],
) -> Result<(Event, Vec<u8>), DecodeError> {
    let header = |key: &str| {
        headers.and_then(|h| {
            h.iter()
                .find(|h| h.key == key)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        })
    };
    let bad = |what: &str| DecodeError(what.to_owned());
    let (id, kind, subject, time, data) = match header("ce_id") {
        // binary mode: attributes in headers, `data` in the value
        Some(id) => {
            let data: Map<String, Value> =
                serde_json::from_slice(value).map_err(|e| DecodeError(format!("data: {e}")))?;
            (
                id.to_owned(),
                header("ce_type")
                    .ok_or_else(|| bad("no ce_type header"))?
                    .to_owned(),
                header("ce_subject")
                    .ok_or_else(|| bad("no ce_subject header"))?
                    .to_owned(),
                header("ce_time")
                    .ok_or_else(|| bad("no ce_time header"))?
                    .to_owned(),
                data,
            )
        }
        None => {
            let mut ce: Map<String, Value> =
                serde_json::from_slice(value).map_err(|e| DecodeError(e.to_string()))?;
            let mut text = |key: &str| match ce.remove(key) {
                Some(Value::String(s)) => Ok(s),
                _ => Err(DecodeError(format!("no `{key}` string"))),
            };
            let (id, kind, subject, time) =
                (text("id")?, text("type")?, text("subject")?, text("time")?);
            let data = match ce.remove("data") {
                Some(Value::Object(d)) => d,
                _ => return Err(bad("no `data` object")),
            };
            (id, kind, subject, time, data)
        }
    };
    let kind = EventType::ALL
        .into_iter()
        .find(|t| t.as_str() == kind)
        .ok_or_else(|| DecodeError(format!("unknown type `{kind}`")))?;
    let time_ms =
        time::OffsetDateTime::parse(&time, &time::format_description::well_known::Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|e| DecodeError(format!("time `{time}`: {e}")))?;
    let event = Event {
        id,
        kind,
        vin: subject,
        time_ms,
        data,
    };
    let json =
        serde_json::to_vec(&event.to_cloudevent()).map_err(|e| DecodeError(e.to_string()))?;
    Ok((event, json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Message, OwnedMessage, Timestamp};

    fn round_trip(mode: EventContentMode) {
        let event = Event::new(
            EventType::ArrivalArrived,
            "5YJ3E1EA7KF000001",
            "order-1",
            1_764_000_120_000,
            crate::event_data!("watch_id" => "order-1", "site_id" => "cafe", "soc_at_arrival" => Some(49.0)),
        );
        let json = serde_json::to_vec(&event.to_cloudevent()).unwrap();
        let (value, headers) = event_message(&event, &json, mode).unwrap();
        let record = OwnedMessage::new(
            Some(value.to_vec()),
            Some(event.vin.clone().into_bytes()),
            "events".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        let borrowed = record.headers().map(|h| h.as_borrowed());
        let (back, back_json) = event_from_record(borrowed, record.payload().unwrap()).unwrap();
        assert_eq!(back, event, "{mode:?}");
        assert_eq!(back_json, json, "{mode:?}");
    }

    #[test]
    fn an_event_survives_its_record_in_both_content_modes() {
        round_trip(EventContentMode::Structured);
        round_trip(EventContentMode::Binary);
    }

    #[test]
    fn a_record_that_is_not_an_event_says_why() {
        assert!(event_from_record(None, b"{}").unwrap_err().0.contains("id"));
        let foreign = br#"{"id":"x","type":"com.example.other","subject":"V","time":"2025-01-01T00:00:00Z","data":{}}"#;
        assert!(event_from_record(None, foreign)
            .unwrap_err()
            .0
            .contains("unknown type"));
    }
}
