//! Smartcar webhooks as a source of vehicle state: the signature check, the VERIFY challenge,
//! and `VEHICLE_STATE` signals read into the same [`VehicleUpdate`] a Tesla frame gives, so the
//! same rules (sites, watches, charging) run on them and their events say `source: smartcar`.
//!
//! Facts of Smartcar's scheme: every delivery carries `SC-Signature`, the hex HMAC-SHA256 of the
//! raw body keyed with the application management token; a `VERIFY` delivery asks for
//! `{"challenge": hex(HMAC-SHA256(token, challenge))}`. Signals used: `location-preciselocation`
//! (`latitude`, `longitude`), `tractionbattery-stateofcharge` (`percentage`, or `value` with a
//! unit; 0-1 fractions are read as such), `charge-detailedchargingstatus` (`value`: an open
//! string — `CHARGING`, `FULLY_CHARGED`, `NOT_CHARGING`, …; the only one that says a charge
//! is complete, so it wins over `charge-ischarging` in the same delivery),
//! `charge-ischarging` (`value`: bool) and `charge-chargingstate`/`charge-state` (`value` or
//! `state`). Other signals are ignored. The vehicle is `data.vehicle.id` (v3) or the
//! top-level `vehicleId` (v4), mapped to a VIN by the config, else `data.vehicle.vin`.

pub mod http;

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::state::{ChargeState, Source, VehicleUpdate};

/// `fleetgate.sources.smartcar`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmartcarConfig {
    /// The application management token (signs deliveries). `FLEETGATE_SMARTCAR_MANAGEMENT_TOKEN`
    /// wins over it, and over `management_token_file`.
    #[serde(default)]
    pub management_token: Option<String>,
    /// A file holding the token (a mounted secret; a trailing newline is dropped).
    #[serde(default)]
    pub management_token_file: Option<String>,
    /// Smartcar vehicle id → VIN. A delivery for an id not listed uses the VIN in the payload
    /// when Smartcar sends one, else it is refused (422).
    #[serde(default)]
    pub vehicles: BTreeMap<String, String>,
}

/// The token environment variable.
pub const TOKEN_ENV: &str = "FLEETGATE_SMARTCAR_MANAGEMENT_TOKEN";

impl SmartcarConfig {
    /// The token from the environment, the file or the config, in that order.
    pub fn token(&self, base: &std::path::Path) -> Result<String, String> {
        if let Ok(t) = std::env::var(TOKEN_ENV) {
            if !t.is_empty() {
                return Ok(t);
            }
        }
        if let Some(file) = &self.management_token_file {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "fleetgate.sources.smartcar.management_token_file: cannot read {}: {e}",
                    path.display()
                )
            })?;
            let t = text.trim_end_matches(['\n', '\r']).to_owned();
            if !t.is_empty() {
                return Ok(t);
            }
        }
        match &self.management_token {
            Some(t) if !t.is_empty() => Ok(t.clone()),
            _ => Err(format!(
                "fleetgate.sources.smartcar: no management token: set management_token, management_token_file or {TOKEN_ENV}"
            )),
        }
    }
}

impl SmartcarConfig {
    /// Problems (key, problem) and warnings of this section; with `check_files` false the
    /// token file is not read (a config rendered for another machine).
    pub fn problems(
        &self,
        base: &std::path::Path,
        check_files: bool,
    ) -> (Vec<(String, String)>, Vec<String>) {
        let mut issues = Vec::new();
        let mut warnings = Vec::new();
        if check_files {
            if let Err(e) = self.token(base) {
                issues.push(("fleetgate.sources.smartcar.management_token".to_owned(), e));
            }
        } else if self.management_token.is_none() && self.management_token_file.is_none() {
            warnings.push(format!("fleetgate.sources.smartcar: no management token in the config; {TOKEN_ENV} must be set where it runs"));
        }
        for (id, vin) in &self.vehicles {
            if vin.trim().is_empty() || vin.len() > 64 {
                issues.push((
                    format!("fleetgate.sources.smartcar.vehicles.{id}"),
                    "must be a VIN (1 to 64 characters)".to_owned(),
                ));
            }
        }
        (issues, warnings)
    }
}

/// Hex HMAC-SHA256 of `message` keyed with `token`.
pub fn sign(token: &str, message: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// True when `signature` (hex, any case) is the body's signature; compared in constant time.
pub fn verify(token: &str, body: &[u8], signature: &str) -> bool {
    let Ok(given) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// What a delivery asks of fleetgate.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Answer `{"challenge": …}` with this value.
    Verify(String),
    /// Apply this update to vehicle `vin`.
    State {
        /// The vehicle.
        vin: String,
        /// Its signals.
        update: Box<VehicleUpdate>,
    },
    /// Nothing to do (an error report, an unknown event type); acknowledged.
    Ignored(String),
}

/// Why a delivery cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Not the JSON Smartcar sends.
    #[error("{0}")]
    Malformed(String),
    /// The vehicle id is not mapped to a VIN and the payload has none.
    #[error("smartcar vehicle `{0}` has no VIN: add it to fleetgate.sources.smartcar.vehicles")]
    UnknownVehicle(String),
}

/// Reads a (signature-checked) delivery. `now_ms` is the fallback time of its signals.
pub fn read_delivery(
    body: &Value,
    vehicles: &BTreeMap<String, String>,
    now_ms: i64,
) -> Result<Delivery, DeliveryError> {
    let kind = body
        .get("eventType")
        .or_else(|| body.get("eventName"))
        .and_then(Value::as_str)
        .ok_or_else(|| DeliveryError::Malformed("no eventType".into()))?;
    if kind.eq_ignore_ascii_case("verify") {
        let challenge = body
            .pointer("/data/challenge")
            .or_else(|| body.pointer("/payload/challenge"))
            .and_then(Value::as_str)
            .ok_or_else(|| DeliveryError::Malformed("VERIFY without data.challenge".into()))?;
        return Ok(Delivery::Verify(challenge.to_owned()));
    }
    if kind != "VEHICLE_STATE" {
        return Ok(Delivery::Ignored(kind.to_owned()));
    }
    let vehicle = body.pointer("/data/vehicle");
    let id = vehicle
        .and_then(|v| v.get("id"))
        .or_else(|| body.get("vehicleId"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            DeliveryError::Malformed(
                "VEHICLE_STATE without a vehicle id (vehicleId or data.vehicle.id)".into(),
            )
        })?;
    let vin = vehicles
        .get(id)
        .cloned()
        .or_else(|| {
            vehicle
                .and_then(|v| v.get("vin"))
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        })
        .ok_or_else(|| DeliveryError::UnknownVehicle(id.to_owned()))?;
    let signals = body
        .pointer("/data/signals")
        .and_then(Value::as_array)
        .ok_or_else(|| DeliveryError::Malformed("VEHICLE_STATE without data.signals".into()))?;
    let mut update = VehicleUpdate {
        source: Source::Smartcar,
        ..Default::default()
    };
    let mut at_ms: Option<i64> = None;
    // the detailed status, when the delivery has it, decides the charge state
    let mut detailed: Option<ChargeState> = None;
    for signal in signals {
        let code = signal.get("code").and_then(Value::as_str).unwrap_or("");
        let Some(b) = signal.get("body") else {
            continue; // an error status instead of data
        };
        let used = match code {
            "location-preciselocation" => {
                let lat = b.get("latitude").and_then(Value::as_f64);
                let lon = b.get("longitude").and_then(Value::as_f64);
                match (lat, lon) {
                    (Some(lat), Some(lon))
                        if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
                    {
                        update.location = Some((lat, lon));
                        true
                    }
                    _ => false,
                }
            }
            "tractionbattery-stateofcharge" => {
                let raw = b
                    .get("percentage")
                    .or_else(|| b.get("value"))
                    .and_then(Value::as_f64);
                // a fraction (0.75) when the unit says so or the value cannot be a percentage
                let fraction = b.get("unit").and_then(Value::as_str) == Some("fraction");
                update.soc = raw
                    .map(|v| if fraction { v * 100.0 } else { v })
                    .filter(|v| v.is_finite() && (0.0..=100.0).contains(v));
                update.soc.is_some()
            }
            "charge-ischarging" => {
                update.charge_state = b.get("value").and_then(Value::as_bool).map(|c| {
                    if c {
                        ChargeState::Charging
                    } else {
                        ChargeState::Idle
                    }
                });
                update.charge_state.is_some()
            }
            "charge-detailedchargingstatus" => {
                detailed = b
                    .get("value")
                    .or_else(|| b.get("detailedChargingStatus"))
                    .and_then(Value::as_str)
                    .and_then(detailed_charge_state);
                detailed.is_some()
            }
            "charge-chargingstate" | "charge-state" => {
                let state = b
                    .get("value")
                    .or_else(|| b.get("state"))
                    .and_then(Value::as_str);
                update.charge_state = state.map(|s| match s {
                    "CHARGING" => ChargeState::Charging,
                    "FULLY_CHARGED" => ChargeState::Complete,
                    _ => ChargeState::Idle,
                });
                update.charge_state.is_some()
            }
            _ => false,
        };
        if used {
            let t = signal
                .pointer("/meta/oemUpdatedAt")
                .or_else(|| signal.pointer("/meta/retrievedAt"))
                .and_then(Value::as_i64);
            if let Some(t) = t {
                at_ms = Some(at_ms.map_or(t, |a| a.max(t)));
            }
        }
    }
    if detailed.is_some() {
        update.charge_state = detailed;
    }
    update.at_ms = at_ms
        .or_else(|| body.pointer("/meta/deliveredAt").and_then(Value::as_i64))
        .filter(|t| *t > 0)
        .unwrap_or(now_ms);
    Ok(Delivery::State {
        vin,
        update: Box::new(update),
    })
}

/// The charge state of a `charge-detailedchargingstatus` value (an open string): complete
/// when it says fully charged or complete, charging when it says charging, idle when it
/// says not charging, disconnected, stopped or idle; None for what it does not know.
fn detailed_charge_state(value: &str) -> Option<ChargeState> {
    let v = value.trim().to_ascii_uppercase().replace([' ', '-'], "_");
    if v.contains("FULLY_CHARGED") || v.contains("COMPLETE") {
        Some(ChargeState::Complete)
    } else if v.starts_with("NOT_")
        || v.contains("DISCONNECTED")
        || v.contains("STOPPED")
        || v == "IDLE"
        || v == "NO_POWER"
    {
        Some(ChargeState::Idle)
    } else if v.contains("CHARGING") {
        Some(ChargeState::Charging)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_signature_is_the_hmac_of_the_body_keyed_with_the_token() {
        let body = br#"{"eventType":"VEHICLE_STATE"}"#;
        let sig = sign("amt-123", body);
        assert_eq!(sig.len(), 64);
        assert!(verify("amt-123", body, &sig));
        assert!(verify("amt-123", body, &sig.to_uppercase()));
        assert!(!verify("other", body, &sig));
        assert!(!verify("amt-123", b"{}", &sig));
        assert!(!verify("amt-123", body, "not hex"));
    }

    #[test]
    fn verify_deliveries_of_both_versions_ask_for_the_challenge() {
        let v4 = json!({"eventId": "e", "eventType": "VERIFY", "data": {"challenge": "c-1"}});
        let v2 = json!({"version": "2.0", "eventName": "verify", "payload": {"challenge": "c-2"}});
        let none = BTreeMap::new();
        assert_eq!(
            read_delivery(&v4, &none, 0).unwrap(),
            Delivery::Verify("c-1".into())
        );
        assert_eq!(
            read_delivery(&v2, &none, 0).unwrap(),
            Delivery::Verify("c-2".into())
        );
    }

    #[test]
    fn the_detailed_charging_status_decides_and_the_v4_vehicle_id_is_read() {
        let delivery = |signals: Value| {
            json!({"eventId": "e", "eventType": "VEHICLE_STATE", "vehicleId": "sc-9",
                   "data": {"signals": signals}})
        };
        let map = BTreeMap::from([("sc-9".to_owned(), "VIN9".to_owned())]);
        let state = |signals: Value| match read_delivery(&delivery(signals), &map, 1).unwrap() {
            Delivery::State { vin, update } => {
                assert_eq!(vin, "VIN9");
                update.charge_state
            }
            other => panic!("{other:?}"),
        };
        // complete only comes from the detailed status, whatever order the signals are in
        for signals in [
            json!([{"code": "charge-detailedchargingstatus", "body": {"value": "FULLY_CHARGED"}},
                   {"code": "charge-ischarging", "body": {"value": false}}]),
            json!([{"code": "charge-ischarging", "body": {"value": false}},
                   {"code": "charge-detailedchargingstatus", "body": {"value": "FULLY_CHARGED"}}]),
        ] {
            assert_eq!(state(signals), Some(ChargeState::Complete));
        }
        for (value, expected) in [
            ("CHARGING", Some(ChargeState::Charging)),
            ("NOT_CHARGING", Some(ChargeState::Idle)),
            ("CHARGING_COMPLETE", Some(ChargeState::Complete)),
            ("something new", None),
        ] {
            let got =
                state(json!([{"code": "charge-detailedchargingstatus", "body": {"value": value}}]));
            assert_eq!(got, expected, "{value}");
        }
        // an unknown detailed value leaves what charge-ischarging says
        assert_eq!(
            state(
                json!([{"code": "charge-ischarging", "body": {"value": true}},
                         {"code": "charge-detailedchargingstatus", "body": {"value": "WAITING"}}])
            ),
            Some(ChargeState::Charging)
        );
        // no id anywhere
        let none = json!({"eventType": "VEHICLE_STATE", "data": {"signals": []}});
        assert!(matches!(
            read_delivery(&none, &map, 1),
            Err(DeliveryError::Malformed(_))
        ));
    }

    #[test]
    fn vehicle_state_signals_become_an_update_of_the_mapped_vin() {
        let body = json!({
            "eventId": "e", "eventType": "VEHICLE_STATE",
            "data": {
                "vehicle": {"id": "sc-1", "make": "Test"},
                "signals": [
                    {"code": "location-preciselocation", "body": {"latitude": 37.77, "longitude": -122.41},
                     "meta": {"retrievedAt": 1_700_000_001_000i64, "oemUpdatedAt": 1_700_000_000_000i64}},
                    {"code": "tractionbattery-stateofcharge", "body": {"unit": "percent", "value": 75}},
                    {"code": "charge-ischarging", "body": {"value": true}},
                    {"code": "location-isathome", "status": {"value": "ERROR"}},
                ],
            },
            "meta": {"deliveredAt": 1_700_000_005_000i64},
        });
        let map = BTreeMap::from([("sc-1".to_owned(), "VIN1".to_owned())]);
        let Delivery::State { vin, update } = read_delivery(&body, &map, 9).unwrap() else {
            panic!("not a state delivery");
        };
        assert_eq!(vin, "VIN1");
        assert_eq!(update.location, Some((37.77, -122.41)));
        assert_eq!(update.soc, Some(75.0));
        assert_eq!(update.charge_state, Some(ChargeState::Charging));
        assert_eq!(update.source, Source::Smartcar);
        assert_eq!(update.at_ms, 1_700_000_000_000, "the vehicle's own time");
    }

    #[test]
    fn an_unmapped_vehicle_without_a_vin_is_refused_and_errors_are_ignored() {
        let body =
            json!({"eventType": "VEHICLE_STATE", "data": {"vehicle": {"id": "x"}, "signals": []}});
        assert_eq!(
            read_delivery(&body, &BTreeMap::new(), 0),
            Err(DeliveryError::UnknownVehicle("x".into()))
        );
        let err = json!({"eventType": "VEHICLE_ERROR", "data": {}});
        assert!(matches!(
            read_delivery(&err, &BTreeMap::new(), 0),
            Ok(Delivery::Ignored(_))
        ));
        assert!(read_delivery(&json!({"x": 1}), &BTreeMap::new(), 0).is_err());
    }
}
