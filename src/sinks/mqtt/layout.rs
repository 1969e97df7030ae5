//! Where each record lands on an MQTT broker and what its messages say: the layout of Tesla's
//! MQTT dispatcher, so a consumer written for Tesla's server reads fleetgate unchanged.
//!
//! | record | topic | payload |
//! |---|---|---|
//! | `V` | `{base}/{VIN}/v/{Field}` (one message per datum) | `{"value": <value>}` |
//! | `alerts` | `{base}/{VIN}/alerts/{name}/current` (latest start per name) | `{"Name","StartedAt","EndedAt","Audiences"}` |
//! | `alerts` | `{base}/{VIN}/alerts/{name}/history` (every alert of the name) | `[ … ]` of the above |
//! | `errors` | `{base}/{VIN}/errors/{name}` | `{"Name","Body","Tags","CreatedAt"}` |
//! | `connectivity` | `{base}/{VIN}/connectivity` | `{"ConnectionId","Status","CreatedAt"}` |
//! | event | `{base}/{VIN}/events/{type}` (type without `fleetgate.`) | the CloudEvent, structured JSON |
//!
//! A datum's value is rendered as Tesla's "simple" transformer does: strings, numbers and
//! booleans as themselves, enums by name, a location as `{"latitude","longitude"}`, doors and
//! tires as objects of booleans, a time as `"HH:MM:SS"`, an invalid value as `"<invalid>"`.
//! Timestamps are RFC 3339 in UTC, whole seconds.
//!
//! Pure functions of the record; no I/O.

use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, ReflectMessage as _, Value as Reflected};
use serde_json::{json, Map, Value};

use crate::wire::proto::{descriptor_pool, vehicle_alerts, vehicle_connectivity, vehicle_error};
use crate::wire::Topic;

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The topic name.
    pub topic: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

/// Why a record has no messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the {topic} payload: {reason}")]
pub struct LayoutError {
    topic: &'static str,
    reason: String,
}

fn error(topic: Topic, reason: impl ToString) -> LayoutError {
    LayoutError {
        topic: topic.as_str(),
        reason: reason.to_string(),
    }
}

/// The messages of one record of `topic` (protobuf `payload`) from vehicle `vin`.
pub fn record_messages(
    base: &str,
    vin: &str,
    topic: Topic,
    payload: &[u8],
) -> Result<Vec<Message>, LayoutError> {
    let prefix = format!("{base}/{vin}");
    match topic {
        Topic::Vehicle => vehicle_messages(&prefix, vin, payload),
        Topic::Alerts => alert_messages(&prefix, payload),
        Topic::Errors => error_messages(&prefix, payload),
        Topic::Connectivity => connectivity_messages(&prefix, payload),
    }
}

/// The topic of an event of CloudEvents type `event_type` about `vin`.
pub fn event_topic(base: &str, vin: &str, event_type: &str) -> String {
    let short = event_type.strip_prefix("fleetgate.").unwrap_or(event_type);
    format!("{base}/{vin}/events/{short}")
}

fn message(topic: String, value: &Value) -> Message {
    Message {
        topic,
        payload: serde_json::to_vec(value).unwrap_or_default(),
    }
}

fn vehicle_messages(prefix: &str, vin: &str, payload: &[u8]) -> Result<Vec<Message>, LayoutError> {
    let desc = descriptor_pool()
        .get_message_by_name(Topic::Vehicle.message_name())
        .ok_or_else(|| error(Topic::Vehicle, "schema missing"))?;
    let decoded = DynamicMessage::decode(desc, payload).map_err(|e| error(Topic::Vehicle, e))?;
    let Some(Reflected::List(data)) = decoded.get_field_by_name("data").map(|v| v.into_owned())
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(data.len());
    for datum in &data {
        let Reflected::Message(datum) = datum else {
            continue;
        };
        let Some(name) = field_name(datum) else {
            continue;
        };
        let Some(Reflected::Message(value)) =
            datum.get_field_by_name("value").map(|v| v.into_owned())
        else {
            continue;
        };
        let Some(rendered) = simple_value(&value, vin) else {
            continue;
        };
        out.push(message(
            format!("{prefix}/v/{name}"),
            &json!({ "value": rendered }),
        ));
    }
    Ok(out)
}

/// The datum's field name (`Soc`), or its number for a field this build does not know.
fn field_name(datum: &DynamicMessage) -> Option<String> {
    let key = datum.descriptor().get_field_by_name("key")?;
    let Reflected::EnumNumber(n) = datum.get_field(&key).into_owned() else {
        return None;
    };
    Some(match key.kind() {
        Kind::Enum(e) => e
            .get_value(n)
            .map(|v| v.name().to_owned())
            .unwrap_or_else(|| n.to_string()),
        _ => n.to_string(),
    })
}

/// The value set in a `Value` oneof, as Tesla's simple transformer renders it.
fn simple_value(value: &DynamicMessage, vin: &str) -> Option<Value> {
    let (field, set) = value.fields().next()?;
    if field.name() == "invalid" {
        return Some(Value::String("<invalid>".into()));
    }
    Some(match (field.kind(), set) {
        (Kind::Enum(e), Reflected::EnumNumber(n)) => Value::String(
            e.get_value(*n)
                .map(|v| v.name().to_owned())
                .unwrap_or_else(|| n.to_string()),
        ),
        (Kind::Message(m), Reflected::Message(inner)) => match m.name() {
            "LocationValue" => json!({
                "latitude": number(inner, "latitude"),
                "longitude": number(inner, "longitude"),
            }),
            "Time" => Value::String(format!(
                "{:02}:{:02}:{:02}",
                int(inner, "hour"),
                int(inner, "minute"),
                int(inner, "second")
            )),
            "TireLocation" => tires(inner, vin),
            _ => flags(inner),
        },
        (_, scalar) => scalar_json(scalar)?,
    })
}

fn scalar_json(value: &Reflected) -> Option<Value> {
    Some(match value {
        Reflected::String(s) => Value::String(s.clone()),
        Reflected::Bool(b) => Value::Bool(*b),
        Reflected::I32(i) => Value::from(*i),
        Reflected::I64(i) => Value::from(*i),
        Reflected::U32(i) => Value::from(*i),
        Reflected::U64(i) => Value::from(*i),
        // shortest f32 text, as Go's encoding/json writes a float32
        Reflected::F32(f) => f
            .to_string()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Reflected::F64(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        _ => return None,
    })
}

fn number(m: &DynamicMessage, name: &str) -> Value {
    m.get_field_by_name(name)
        .and_then(|v| scalar_json(&v))
        .unwrap_or(Value::Null)
}

fn int(m: &DynamicMessage, name: &str) -> i64 {
    m.get_field_by_name(name)
        .and_then(|v| v.as_i32())
        .map(i64::from)
        .unwrap_or(0)
}

fn flag(m: &DynamicMessage, name: &str) -> bool {
    m.get_field_by_name(name)
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Every field of a message of booleans (doors), by its schema name in PascalCase.
fn flags(m: &DynamicMessage) -> Value {
    let mut out = Map::new();
    for field in m.descriptor().fields() {
        let value = m.get_field(&field);
        let rendered = scalar_json(&value).unwrap_or(Value::Null);
        out.insert(pascal_case(field.name()), rendered);
    }
    Value::Object(out)
}

/// Tire flags; a Semi (`T` as the VIN's fourth character) names its axles.
fn tires(m: &DynamicMessage, vin: &str) -> Value {
    let names: &[(&str, &str)] = if vin.as_bytes().get(3) == Some(&b'T') {
        &[
            ("FrontLeft", "front_left"),
            ("FrontRight", "front_right"),
            ("SemiMiddleAxleLeft", "rear_left"),
            ("SemiMiddleAxleRight", "rear_right"),
            ("SemiMiddleAxleLeft2", "semi_middle_axle_left_2"),
            ("SemiMiddleAxleRight2", "semi_middle_axle_right_2"),
            ("SemiRearAxleLeft", "semi_rear_axle_left"),
            ("SemiRearAxleRight", "semi_rear_axle_right"),
            ("SemiRearAxleLeft2", "semi_rear_axle_left_2"),
            ("SemiRearAxleRight2", "semi_rear_axle_right_2"),
        ]
    } else {
        &[
            ("FrontLeft", "front_left"),
            ("FrontRight", "front_right"),
            ("RearLeft", "rear_left"),
            ("RearRight", "rear_right"),
        ]
    };
    Value::Object(
        names
            .iter()
            .map(|(shown, field)| ((*shown).to_owned(), Value::Bool(flag(m, field))))
            .collect(),
    )
}

fn pascal_case(name: &str) -> String {
    name.split('_')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// RFC 3339, UTC, whole seconds (`2024-05-01T12:00:00Z`).
fn rfc3339(ts: &crate::wire::timestamp::Timestamp) -> Value {
    time::OffsetDateTime::from_unix_timestamp(ts.seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map(Value::String)
        .unwrap_or(Value::Null)
}

fn alert_json(alert: &vehicle_alerts::VehicleAlert) -> Value {
    let mut out = Map::new();
    out.insert("Name".into(), Value::String(alert.name.clone()));
    if let Some(t) = &alert.started_at {
        out.insert("StartedAt".into(), rfc3339(t));
    }
    if let Some(t) = &alert.ended_at {
        out.insert("EndedAt".into(), rfc3339(t));
    }
    let audiences = alert
        .audiences
        .iter()
        .map(|a| {
            Value::String(
                vehicle_alerts::Audience::try_from(*a)
                    .map(|a| a.as_str_name().to_owned())
                    .unwrap_or_else(|_| a.to_string()),
            )
        })
        .collect();
    out.insert("Audiences".into(), Value::Array(audiences));
    Value::Object(out)
}

fn alert_messages(prefix: &str, payload: &[u8]) -> Result<Vec<Message>, LayoutError> {
    let alerts =
        vehicle_alerts::VehicleAlerts::decode(payload).map_err(|e| error(Topic::Alerts, e))?;
    // names in first-seen order; per name the latest start (alerts without a start are never
    // current) and the whole history
    let mut names: Vec<&str> = Vec::new();
    for alert in &alerts.alerts {
        if !names.contains(&alert.name.as_str()) {
            names.push(&alert.name);
        }
    }
    let mut out = Vec::with_capacity(names.len() * 2);
    for name in names {
        let of_name = || alerts.alerts.iter().filter(move |a| a.name == name);
        let current = of_name().filter(|a| a.started_at.is_some()).fold(
            None::<&vehicle_alerts::VehicleAlert>,
            |best, a| match best {
                Some(b) if !later(a.started_at.as_ref(), b.started_at.as_ref()) => Some(b),
                _ => Some(a),
            },
        );
        if let Some(current) = current {
            out.push(message(
                format!("{prefix}/alerts/{name}/current"),
                &alert_json(current),
            ));
        }
        let history: Vec<Value> = of_name().map(alert_json).collect();
        out.push(message(
            format!("{prefix}/alerts/{name}/history"),
            &Value::Array(history),
        ));
    }
    Ok(out)
}

fn later(
    a: Option<&crate::wire::timestamp::Timestamp>,
    b: Option<&crate::wire::timestamp::Timestamp>,
) -> bool {
    let key = |t: Option<&crate::wire::timestamp::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    key(a) > key(b)
}

fn error_messages(prefix: &str, payload: &[u8]) -> Result<Vec<Message>, LayoutError> {
    let errors =
        vehicle_error::VehicleErrors::decode(payload).map_err(|e| error(Topic::Errors, e))?;
    Ok(errors
        .errors
        .iter()
        .map(|e| {
            let mut out = Map::new();
            out.insert("Name".into(), Value::String(e.name.clone()));
            out.insert("Body".into(), Value::String(e.body.clone()));
            out.insert(
                "Tags".into(),
                Value::Object(
                    e.tags
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
            );
            if let Some(t) = &e.created_at {
                out.insert("CreatedAt".into(), rfc3339(t));
            }
            message(format!("{prefix}/errors/{}", e.name), &Value::Object(out))
        })
        .collect())
}

fn connectivity_messages(prefix: &str, payload: &[u8]) -> Result<Vec<Message>, LayoutError> {
    let c = vehicle_connectivity::VehicleConnectivity::decode(payload)
        .map_err(|e| error(Topic::Connectivity, e))?;
    let status = vehicle_connectivity::ConnectivityEvent::try_from(c.status)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| c.status.to_string());
    let mut out = Map::new();
    out.insert(
        "ConnectionId".into(),
        Value::String(c.connection_id.clone()),
    );
    out.insert("Status".into(), Value::String(status));
    if let Some(t) = &c.created_at {
        out.insert("CreatedAt".into(), rfc3339(t));
    }
    Ok(vec![message(
        format!("{prefix}/connectivity"),
        &Value::Object(out),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::vehicle_data::{self, value};

    fn datum(key: vehicle_data::Field, v: value::Value) -> vehicle_data::Datum {
        vehicle_data::Datum {
            key: key as i32,
            value: Some(vehicle_data::Value { value: Some(v) }),
        }
    }

    fn by_topic(messages: &[Message]) -> std::collections::BTreeMap<String, Value> {
        messages
            .iter()
            .map(|m| {
                (
                    m.topic.clone(),
                    serde_json::from_slice(&m.payload).expect("JSON payload"),
                )
            })
            .collect()
    }

    #[test]
    fn each_datum_is_one_message_under_its_field_name() {
        let payload = vehicle_data::Payload {
            data: vec![
                datum(vehicle_data::Field::Soc, value::Value::DoubleValue(71.5)),
                datum(
                    vehicle_data::Field::VehicleSpeed,
                    value::Value::FloatValue(12.3),
                ),
                datum(
                    vehicle_data::Field::Odometer,
                    value::Value::StringValue("100.5".into()),
                ),
                datum(
                    vehicle_data::Field::Location,
                    value::Value::LocationValue(vehicle_data::LocationValue {
                        latitude: 30.25,
                        longitude: -97.75,
                    }),
                ),
                datum(
                    vehicle_data::Field::Gear,
                    value::Value::ShiftStateValue(vehicle_data::ShiftState::D as i32),
                ),
                datum(
                    vehicle_data::Field::BatteryLevel,
                    value::Value::Invalid(true),
                ),
                datum(
                    vehicle_data::Field::DoorState,
                    value::Value::DoorValue(vehicle_data::Doors {
                        driver_front: true,
                        ..Default::default()
                    }),
                ),
                datum(
                    vehicle_data::Field::ScheduledChargingStartTime,
                    value::Value::TimeValue(vehicle_data::Time {
                        hour: 7,
                        minute: 5,
                        second: 0,
                    }),
                ),
            ],
            created_at: None,
            vin: "5YJ3E1EA7KF000001".into(),
            is_resend: false,
        };
        let messages = record_messages(
            "tele",
            "5YJ3E1EA7KF000001",
            Topic::Vehicle,
            &payload.encode_to_vec(),
        )
        .unwrap();
        let got = by_topic(&messages);
        let p = "tele/5YJ3E1EA7KF000001/v";
        assert_eq!(got[&format!("{p}/Soc")], json!({"value": 71.5}));
        assert_eq!(got[&format!("{p}/VehicleSpeed")], json!({"value": 12.3}));
        assert_eq!(got[&format!("{p}/Odometer")], json!({"value": "100.5"}));
        assert_eq!(
            got[&format!("{p}/Location")],
            json!({"value": {"latitude": 30.25, "longitude": -97.75}})
        );
        assert_eq!(got[&format!("{p}/Gear")], json!({"value": "ShiftStateD"}));
        assert_eq!(
            got[&format!("{p}/BatteryLevel")],
            json!({"value": "<invalid>"})
        );
        assert_eq!(
            got[&format!("{p}/DoorState")]["value"]["DriverFront"],
            json!(true)
        );
        assert_eq!(
            got[&format!("{p}/ScheduledChargingStartTime")],
            json!({"value": "07:05:00"})
        );
        assert_eq!(messages.len(), 8);
        // a float32 is written as its shortest text, as Go writes it (not 12.300000190734863)
        assert!(String::from_utf8_lossy(
            &messages
                .iter()
                .find(|m| m.topic.ends_with("/VehicleSpeed"))
                .unwrap()
                .payload
        )
        .contains("12.3}"));
    }

    #[test]
    fn alerts_give_the_latest_current_state_and_the_history_per_name() {
        let ts = |s| {
            Some(crate::wire::timestamp::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        let alerts = vehicle_alerts::VehicleAlerts {
            alerts: vec![
                vehicle_alerts::VehicleAlert {
                    name: "BMS_w001".into(),
                    audiences: vec![vehicle_alerts::Audience::Customer as i32],
                    started_at: ts(1_700_000_000),
                    ended_at: ts(1_700_000_060),
                },
                vehicle_alerts::VehicleAlert {
                    name: "BMS_w001".into(),
                    audiences: vec![],
                    started_at: ts(1_700_000_100),
                    ended_at: None,
                },
            ],
            created_at: None,
            vin: "V1".into(),
        };
        let got =
            by_topic(&record_messages("t", "V1", Topic::Alerts, &alerts.encode_to_vec()).unwrap());
        assert_eq!(
            got["t/V1/alerts/BMS_w001/current"],
            json!({"Name": "BMS_w001", "StartedAt": "2023-11-14T22:15:00Z", "Audiences": []})
        );
        assert_eq!(
            got["t/V1/alerts/BMS_w001/history"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            got["t/V1/alerts/BMS_w001/history"][0]["Audiences"],
            json!(["Customer"])
        );
    }

    #[test]
    fn connectivity_and_errors_have_their_own_topics() {
        let c = vehicle_connectivity::VehicleConnectivity {
            vin: "V1".into(),
            connection_id: "c-1".into(),
            status: vehicle_connectivity::ConnectivityEvent::Connected as i32,
            created_at: Some(crate::wire::timestamp::Timestamp {
                seconds: 0,
                nanos: 5,
            }),
            network_interface: String::new(),
        };
        let got =
            by_topic(&record_messages("t", "V1", Topic::Connectivity, &c.encode_to_vec()).unwrap());
        assert_eq!(
            got["t/V1/connectivity"],
            json!({"ConnectionId": "c-1", "Status": "CONNECTED", "CreatedAt": "1970-01-01T00:00:00Z"})
        );
        let e = vehicle_error::VehicleErrors {
            errors: vec![vehicle_error::VehicleError {
                created_at: None,
                name: "decode".into(),
                tags: [("k".to_owned(), "v".to_owned())].into(),
                body: "b".into(),
            }],
            created_at: None,
            vin: "V1".into(),
        };
        let got = by_topic(&record_messages("t", "V1", Topic::Errors, &e.encode_to_vec()).unwrap());
        assert_eq!(
            got["t/V1/errors/decode"],
            json!({"Name": "decode", "Body": "b", "Tags": {"k": "v"}})
        );
    }

    #[test]
    fn a_payload_that_is_not_protobuf_is_an_error_not_a_panic() {
        let e = record_messages("t", "V1", Topic::Vehicle, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(e.to_string().contains("V payload"), "{e}");
    }

    #[test]
    fn events_go_under_the_vehicle_by_short_type() {
        assert_eq!(
            event_topic("t", "V1", "fleetgate.arrival.arrived"),
            "t/V1/events/arrival.arrived"
        );
    }
}
