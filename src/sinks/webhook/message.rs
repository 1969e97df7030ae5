//! One webhook message: the CloudEvent of an event or a record, laid out by the CloudEvents
//! HTTP binding (structured or binary), and its Standard Webhooks signature.
//!
//! Records become CloudEvents too: type `fleetgate.record.{topic}`, `data` the record's proto3
//! JSON, `id` derived from topic, VIN, transaction id and creation time (a resent frame has
//! the same id, so receivers dedupe on `webhook-id` alike for both).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::config::ContentMode;
use crate::event::{Event, DATA_CONTENT_TYPE, SOURCE, SPEC_VERSION, STRUCTURED_CONTENT_TYPE};
use crate::sinks::SinkRecord;

/// A message as the outbox keeps it: the body and the headers that go with it (content type
/// and, in binary mode, the `ce-*` attributes).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The receiver's name.
    pub endpoint: String,
    /// The vehicle (messages of one vehicle are delivered one at a time, in order).
    pub vin: String,
    /// The CloudEvent id, sent as `webhook-id`.
    pub id: String,
    /// The request body.
    pub body: Vec<u8>,
    /// `(name, value)` headers besides the signature.
    pub headers: Vec<(String, String)>,
}

/// The CloudEvent attributes of a message.
struct Attributes<'a> {
    id: &'a str,
    kind: &'a str,
    vin: &'a str,
    time: &'a str,
}

fn lay_out(endpoint: &str, mode: ContentMode, a: &Attributes<'_>, data: Value) -> Message {
    let (body, headers) = match mode {
        ContentMode::Structured => {
            let event = serde_json::json!({
                "specversion": SPEC_VERSION, "id": a.id, "source": SOURCE, "type": a.kind,
                "subject": a.vin, "time": a.time, "datacontenttype": DATA_CONTENT_TYPE,
                "data": data,
            });
            (
                serde_json::to_vec(&event).expect("JSON values serialize"),
                vec![(
                    "content-type".to_owned(),
                    STRUCTURED_CONTENT_TYPE.to_owned(),
                )],
            )
        }
        ContentMode::Binary => (
            serde_json::to_vec(&data).expect("JSON values serialize"),
            vec![
                ("content-type".to_owned(), DATA_CONTENT_TYPE.to_owned()),
                ("ce-specversion".to_owned(), SPEC_VERSION.to_owned()),
                ("ce-id".to_owned(), a.id.to_owned()),
                ("ce-source".to_owned(), SOURCE.to_owned()),
                ("ce-type".to_owned(), a.kind.to_owned()),
                ("ce-subject".to_owned(), a.vin.to_owned()),
                ("ce-time".to_owned(), a.time.to_owned()),
            ],
        ),
    };
    Message {
        endpoint: endpoint.to_owned(),
        vin: a.vin.to_owned(),
        id: a.id.to_owned(),
        body,
        headers,
    }
}

/// The message of `event` for an endpoint; `structured` is the event's CloudEvent JSON as the
/// router rendered it once for every sink (the structured body as it is).
pub fn event_message(
    endpoint: &str,
    mode: ContentMode,
    event: &Event,
    structured: &[u8],
) -> Message {
    if mode == ContentMode::Structured {
        return Message {
            endpoint: endpoint.to_owned(),
            vin: event.vin.clone(),
            id: event.id.clone(),
            body: structured.to_vec(),
            headers: vec![(
                "content-type".to_owned(),
                STRUCTURED_CONTENT_TYPE.to_owned(),
            )],
        };
    }
    let time = event.time_rfc3339();
    let a = Attributes {
        id: &event.id,
        kind: event.kind.as_str(),
        vin: &event.vin,
        time: &time,
    };
    lay_out(endpoint, mode, &a, Value::Object(event.data.clone()))
}

/// The CloudEvent type of records of a topic.
pub fn record_type(topic: crate::wire::Topic) -> String {
    format!("fleetgate.record.{}", topic.as_str())
}

/// The id of a record: the same for a resent frame.
pub fn record_id(record: &SinkRecord<'_>) -> String {
    let mut h = Sha256::new();
    h.update(record.topic.as_str().as_bytes());
    h.update([0]);
    h.update(record.vin.as_bytes());
    h.update([0]);
    h.update(record.txid);
    h.update([0]);
    h.update(record.created_at.to_be_bytes());
    if record.txid.is_empty() {
        // server-made records (connectivity) have no transaction id: their receive time
        // tells them apart
        h.update(record.received_at_ms.to_be_bytes());
    }
    let d = h.finalize();
    uuid::Builder::from_custom_bytes(d[..16].try_into().expect("16 bytes"))
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The messages of `record` for an endpoint (`data` = the record's proto3 JSON).
pub fn record_message(
    endpoint: &str,
    mode: ContentMode,
    record: &SinkRecord<'_>,
) -> Result<Message, String> {
    let data = crate::wire::json::payload_to_json(record.topic, record.payload).map_err(|e| {
        format!(
            "cannot render the {} record as JSON: {e}",
            record.topic.as_str()
        )
    })?;
    let time = time::OffsetDateTime::from_unix_timestamp(i64::from(record.created_at))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let id = record_id(record);
    let kind = record_type(record.topic);
    let a = Attributes {
        id: &id,
        kind: &kind,
        vin: record.vin,
        time: &time,
    };
    Ok(lay_out(endpoint, mode, &a, data))
}

/// The Standard Webhooks signature header value: `v1,` + base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` keyed with the decoded secret.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (its reference test vector).
    #[test]
    fn signature_matches_the_specs_example() {
        let key =
            super::super::config::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn binary_mode_puts_attributes_in_headers() {
        let e = Event::new(
            crate::event::EventType::ArrivalArrived,
            "VIN1",
            "w1",
            1_764_000_000_000,
            crate::event_data!("watch_id" => "w1"),
        );
        let json = serde_json::to_vec(&e.to_cloudevent()).unwrap();
        let m = event_message("orders", ContentMode::Binary, &e, &json);
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body["watch_id"], "w1");
        assert!(m
            .headers
            .contains(&("ce-type".into(), "fleetgate.arrival.arrived".into())));
        assert!(m.headers.contains(&("ce-id".into(), e.id.clone())));
        let s = event_message("orders", ContentMode::Structured, &e, &json);
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(body, e.to_cloudevent());
        assert_eq!(
            s.headers,
            [(
                "content-type".to_owned(),
                STRUCTURED_CONTENT_TYPE.to_owned()
            )]
        );
    }
}
