//! Events as CloudEvents 1.0 structured JSON with deterministic ids: the same triggering frame
//! yields the same id, across resends and restarts, so consumers can dedupe. The model the
//! rules produce and the sinks deliver; depends on neither.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The event types fleetgate emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventType {
    /// A vehicle entered a site.
    SiteEntered,
    /// A vehicle left a site (past the exit margin).
    SiteExited,
    /// A watched vehicle navigates to the site and is at most `notify_eta_minutes` out.
    ArrivalApproaching,
    /// A watched vehicle arrived at the site.
    ArrivalArrived,
    /// A watched vehicle reached its target SoC (or charge limit, or Complete) after arriving.
    ArrivalChargeComplete,
    /// A watch passed its `expires_at`.
    ArrivalExpired,
    /// A charging session started.
    ChargingStarted,
    /// A charging session ended (or went stale).
    ChargingStopped,
    /// The vehicle's first socket opened.
    VehicleConnected,
    /// The vehicle's last socket closed (after the grace period).
    VehicleDisconnected,
    /// The vehicle's Tesla onboarding state changed (pending_key, configuring, synced,
    /// streaming, error, removing).
    VehicleOnboarding,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 11] = [
        EventType::SiteEntered,
        EventType::SiteExited,
        EventType::ArrivalApproaching,
        EventType::ArrivalArrived,
        EventType::ArrivalChargeComplete,
        EventType::ArrivalExpired,
        EventType::ChargingStarted,
        EventType::ChargingStopped,
        EventType::VehicleConnected,
        EventType::VehicleDisconnected,
        EventType::VehicleOnboarding,
    ];

    /// The CloudEvents `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SiteEntered => "fleetgate.site.entered",
            EventType::SiteExited => "fleetgate.site.exited",
            EventType::ArrivalApproaching => "fleetgate.arrival.approaching",
            EventType::ArrivalArrived => "fleetgate.arrival.arrived",
            EventType::ArrivalChargeComplete => "fleetgate.arrival.charge_complete",
            EventType::ArrivalExpired => "fleetgate.arrival.expired",
            EventType::ChargingStarted => "fleetgate.charging.started",
            EventType::ChargingStopped => "fleetgate.charging.stopped",
            EventType::VehicleConnected => "fleetgate.vehicle.connected",
            EventType::VehicleDisconnected => "fleetgate.vehicle.disconnected",
            EventType::VehicleOnboarding => "fleetgate.vehicle.onboarding",
        }
    }
}

/// CloudEvents `specversion` of every event.
pub const SPEC_VERSION: &str = "1.0";
/// CloudEvents `source` of every event.
pub const SOURCE: &str = "fleetgate";
/// `datacontenttype` of every event's `data`.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// Content type of a structured-mode CloudEvent.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Deterministic id.
    pub id: String,
    /// Type.
    pub kind: EventType,
    /// The vehicle.
    pub vin: String,
    /// The triggering frame's time (ms since the epoch).
    pub time_ms: i64,
    /// `data`: always `vin`, plus `site_id` / `watch_id` where they apply and the type's fields.
    pub data: Map<String, Value>,
}

/// The deterministic id: SHA-256 of type, VIN, watch / site id and the triggering time, shown
/// as a UUID-formatted string (128 bits).
pub fn event_id(kind: EventType, vin: &str, scope: &str, time_ms: i64) -> String {
    let mut h = Sha256::new();
    for part in [kind.as_str(), vin, scope, &time_ms.to_string()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let b = uuid::Builder::from_custom_bytes(d[..16].try_into().expect("16 bytes"));
    b.into_uuid().hyphenated().to_string()
}

impl Event {
    /// Builds an event; `scope` is the watch id or site id that makes the meaning unique.
    pub fn new(
        kind: EventType,
        vin: &str,
        scope: &str,
        time_ms: i64,
        mut data: Map<String, Value>,
    ) -> Event {
        data.insert("vin".into(), vin.into());
        Event {
            id: event_id(kind, vin, scope, time_ms),
            kind,
            vin: vin.to_owned(),
            time_ms,
            data,
        }
    }

    /// RFC 3339 time with milliseconds.
    pub fn time_rfc3339(&self) -> String {
        let t =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.time_ms) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }

    /// The CloudEvents 1.0 structured JSON.
    pub fn to_cloudevent(&self) -> Value {
        serde_json::json!({
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": SOURCE,
            "type": self.kind.as_str(),
            "subject": self.vin,
            "time": self.time_rfc3339(),
            "datacontenttype": DATA_CONTENT_TYPE,
            "data": self.data,
        })
    }
}

/// Builds a `data` map from pairs, skipping `None`s.
#[macro_export]
macro_rules! event_data {
    ($($k:literal => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( if let Some(v) = $crate::event::IntoOptValue::into_opt_value($v) { m.insert($k.into(), v); } )*
        m
    }};
}

/// Values for [`event_data!`]: options are skipped when `None`.
pub trait IntoOptValue {
    /// The JSON value, if any.
    fn into_opt_value(self) -> Option<Value>;
}
impl<T: Into<Value>> IntoOptValue for Option<T> {
    fn into_opt_value(self) -> Option<Value> {
        self.map(Into::into)
    }
}
impl IntoOptValue for &str {
    fn into_opt_value(self) -> Option<Value> {
        Some(self.into())
    }
}
impl IntoOptValue for String {
    fn into_opt_value(self) -> Option<Value> {
        Some(self.into())
    }
}
impl IntoOptValue for f64 {
    fn into_opt_value(self) -> Option<Value> {
        Some(round(self).into())
    }
}
impl IntoOptValue for i64 {
    fn into_opt_value(self) -> Option<Value> {
        Some(self.into())
    }
}

/// Rounds to 4 decimals for readable event fields.
pub fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = event_id(EventType::ArrivalArrived, "VIN", "w1", 1000);
        assert_eq!(a, event_id(EventType::ArrivalArrived, "VIN", "w1", 1000));
        assert_ne!(a, event_id(EventType::ArrivalArrived, "VIN", "w1", 1001));
        assert_ne!(a, event_id(EventType::SiteEntered, "VIN", "w1", 1000));
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn cloudevent_shape() {
        let e = Event::new(
            EventType::SiteEntered,
            "VIN",
            "s1",
            1_764_000_000_250,
            crate::event_data!("site_id" => "s1", "soc" => Some(61.5)),
        );
        let v = e.to_cloudevent();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "fleetgate.site.entered");
        assert_eq!(v["subject"], "VIN");
        assert_eq!(v["time"], "2025-11-24T16:00:00.25Z");
        assert_eq!(v["data"]["vin"], "VIN");
        assert_eq!(v["data"]["soc"], 61.5);
    }
}
