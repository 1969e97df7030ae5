//! The vehicle table: each VIN's latest typed state, updated from every decoded `V` frame.
//! Data only: the rules read and update it; it knows nothing of sites, watches or events.
//!
//! Sharded (dashmap); one connection per VIN, so writers rarely contend. Frames older than the
//! state never move it backwards. No guard is held across `.await` or while touching another
//! entry: callers get copies ([`VehicleState`] is small and `Clone`).

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::wire::proto::vehicle_data::{
    value::Value as V, DetailedChargeStateValue, Field, Payload,
};

/// Latest accepted time (9999-12-31T23:59:59Z, unix seconds).
const MAX_UNIX_S: i64 = 253_402_300_799;

/// A GPS fix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Position {
    /// Latitude (degrees).
    pub lat: f64,
    /// Longitude (degrees).
    pub lon: f64,
    /// When the vehicle took it (ms since the epoch; the frame's `created_at`).
    pub at_ms: i64,
}

/// Where a vehicle update came from; events it causes name it (`data.source`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A `V` frame of Tesla's Fleet Telemetry.
    #[default]
    FleetTelemetry,
    /// A Smartcar webhook.
    Smartcar,
    /// A person (the driver's "I'm here", `POST /v1/watches/{id}/arrive`).
    Manual,
}

impl Source {
    /// The name in events and watches.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::FleetTelemetry => "fleet_telemetry",
            Source::Smartcar => "smartcar",
            Source::Manual => "manual",
        }
    }
}

/// Detailed charge state, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChargeState {
    /// Starting or charging: a session is open.
    Charging,
    /// Charging finished (Complete).
    Complete,
    /// Any other state (Disconnected, Stopped, NoPower, Unknown).
    Idle,
}

/// Every signal the table keeps, declared once: the field of [`VehicleUpdate`] and
/// [`VehicleState`], the telemetry `Field` it is read from, how its value is read, and its doc.
/// (`Location` is not here: it becomes `VehicleState::position` only through the rules' jitter
/// guard. `BatteryLevel` stands in for a missing `Soc`.) Adding a signal is one line.
macro_rules! signals {
    ($( $name:ident : $ty:ty = $field:ident via $read:ident, $doc:literal $(, schema($($schema:tt)*))? ;)*) => {
        /// What one `V` frame says, in typed form (only the signals fleetgate uses). Also the
        /// form other sources (Smartcar) take on their way into the rules, and part of the
        /// rules' input records in cluster mode (hence serde).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
        pub struct VehicleUpdate {
            /// The frame's creation time (ms since the epoch).
            pub at_ms: i64,
            /// Location.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub location: Option<(f64, f64)>,
            $( #[doc = $doc] #[serde(default, skip_serializing_if = "Option::is_none")] pub $name: Option<$ty>, )*
            /// The vehicle says this frame is a resend.
            #[serde(default)]
            pub is_resend: bool,
            /// Where the update came from.
            #[serde(default)]
            pub source: Source,
        }

        /// The latest known state of one vehicle.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
        pub struct VehicleState {
            /// Last accepted GPS fix.
            pub position: Option<Position>,
            $( #[doc = $doc] $(#[schema($($schema)*)])? pub $name: Option<$ty>, )*
            /// Time of the newest frame applied (ms since the epoch).
            pub last_seen_ms: i64,
            /// A socket of this vehicle is open.
            #[serde(default)]
            pub connected: bool,
            /// Rule bookkeeping: sites inside, a held GPS jump, the open charging session.
            #[serde(skip)]
            pub tracking: Tracking,
            /// Changed since the rule state store last wrote it (not state: never stored).
            #[serde(skip)]
            #[schema(ignore)]
            pub dirty: DirtyMark,
        }

        impl VehicleUpdate {
            /// Reads `v` into the signal of `field`; false when the field is not a signal.
            fn read_signal(&mut self, field: Field, v: &V) -> bool {
                match field {
                    $( Field::$field => { self.$name = $read(v); true } )*
                    _ => false,
                }
            }
        }

        impl VehicleState {
            /// Keeps every signal the update carries.
            fn keep_signals(&mut self, u: &VehicleUpdate) {
                $( if u.$name.is_some() { self.$name = u.$name; } )*
            }
        }
    };
}

signals! {
    heading: f64 = GpsHeading via number, "Last heading (degrees).";
    speed: f64 = VehicleSpeed via number, "Last speed.";
    soc: f64 = Soc via number, "State of charge (%).";
    charge_limit_soc: f64 = ChargeLimitSoc via number, "Charge limit (%).";
    charge_state: ChargeState = DetailedChargeState via charge_state, "Detailed charge state.";
    dc_energy_in: f64 = DcChargingEnergyIn via number, "DC energy counter (kWh).";
    ac_energy_in: f64 = AcChargingEnergyIn via number, "AC energy counter (kWh).";
    destination: (f64, f64) = DestinationLocation via location, "Navigation destination `[lat, lon]`.", schema(value_type = Option<Vec<f64>>);
    minutes_to_arrival: f64 = MinutesToArrival via number, "Minutes to the destination.";
    miles_to_arrival: f64 = MilesToArrival via number, "Miles to the destination.";
    odometer: f64 = Odometer via number, "Odometer.";
}

fn number(v: &V) -> Option<f64> {
    let n = match v {
        V::DoubleValue(d) => *d,
        V::FloatValue(f) => f64::from(*f),
        V::IntValue(i) => f64::from(*i),
        V::LongValue(l) => *l as f64,
        V::StringValue(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

fn location(v: &V) -> Option<(f64, f64)> {
    match v {
        V::LocationValue(l) if l.latitude.is_finite() && l.longitude.is_finite() => {
            Some((l.latitude, l.longitude))
        }
        V::StringValue(s) => {
            crate::wire::payload::parse_location(s).map(|l| (l.latitude, l.longitude))
        }
        _ => None,
    }
    .filter(|(lat, lon)| (-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon))
}

fn charge_state(v: &V) -> Option<ChargeState> {
    let raw = match v {
        V::DetailedChargeStateValue(n) => DetailedChargeStateValue::try_from(*n).ok()?,
        V::StringValue(s) => DetailedChargeStateValue::from_str_name(s).or_else(|| {
            DetailedChargeStateValue::from_str_name(&format!("DetailedChargeState{s}"))
        })?,
        _ => return None,
    };
    Some(match raw {
        DetailedChargeStateValue::DetailedChargeStateCharging
        | DetailedChargeStateValue::DetailedChargeStateStarting => ChargeState::Charging,
        DetailedChargeStateValue::DetailedChargeStateComplete => ChargeState::Complete,
        _ => ChargeState::Idle,
    })
}

impl VehicleUpdate {
    /// Reads the signals of a decoded `V` payload; `envelope_created_at_s` is the fallback time.
    pub fn from_payload(p: &Payload, envelope_created_at_s: u32) -> VehicleUpdate {
        // Only plausible times (1970..9999) are used; anything else falls back to the
        // envelope's time, so no later arithmetic on times can overflow.
        let at_ms = p
            .created_at
            .filter(|t| {
                (1..=MAX_UNIX_S).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos)
            })
            .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
            .unwrap_or(i64::from(envelope_created_at_s) * 1000);
        let mut u = VehicleUpdate {
            at_ms,
            is_resend: p.is_resend,
            ..Default::default()
        };
        for datum in &p.data {
            let Some(v) = datum.value.as_ref().and_then(|v| v.value.as_ref()) else {
                continue;
            };
            if matches!(v, V::Invalid(true)) {
                continue;
            }
            let Ok(field) = Field::try_from(datum.key) else {
                continue;
            };
            match field {
                Field::Location => u.location = location(v).or(u.location),
                Field::BatteryLevel => {
                    if u.soc.is_none() {
                        u.soc = number(v);
                    }
                }
                _ => {
                    u.read_signal(field, v);
                }
            }
        }
        u
    }
}

/// What the rules remember per vehicle between frames.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracking {
    /// Sites the vehicle is inside, with the time it entered (ms).
    pub inside: Vec<(std::sync::Arc<str>, i64)>,
    /// A fix that jumped implausibly far; accepted when the next fix confirms it.
    pub held_fix: Option<Position>,
    /// The open charging session.
    pub session: Option<ChargingSession>,
    /// Recent ground speed from consecutive accepted fixes (m/s, smoothed): the straight-line
    /// ETA of watches for cars without a navigation route.
    #[serde(default)]
    pub avg_speed_mps: Option<f64>,
    /// Where each of `inside` sat in the site index the last frame looked (a cache).
    #[serde(skip)]
    pub inside_slots: SiteSlots,
}

/// Positions of a vehicle's `inside` sites in the site index of `generation`, so that a frame
/// finds them by position instead of hashing and comparing ids. A cache, not state: not stored,
/// equal to any other, and used only while that index is current.
#[derive(Debug, Clone, Default)]
pub struct SiteSlots {
    /// The generation of the rules' site index the positions belong to (0: none).
    pub generation: u64,
    /// One position per `inside` entry.
    pub slots: Vec<u32>,
    /// Where the geofence last looked, and how far from there no entry or exit is possible.
    pub quiet: Option<QuietZone>,
}

/// A disc around the position of the geofence's last full check inside which the vehicle's
/// site memberships cannot change: while a fix stays in it, the check would find nothing.
#[derive(Debug, Clone, Copy)]
pub struct QuietZone {
    /// Latitude of the check.
    pub lat: f64,
    /// Longitude of the check.
    pub lon: f64,
    /// Radius (m).
    pub radius_m: f64,
}

impl PartialEq for SiteSlots {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Whether a vehicle's state changed since the rule state store last wrote it. Set by the
/// rules under the entry's lock (free on the frame path), taken by the store's flush. A mark,
/// not state: equal to any other, never serialised.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirtyMark(pub bool);

impl PartialEq for DirtyMark {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// An open charging session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChargingSession {
    /// When it started (ms).
    pub started_ms: i64,
    /// SoC at the start.
    pub start_soc: Option<f64>,
    /// DC energy counter at the start (kWh).
    pub dc_start: Option<f64>,
    /// AC energy counter at the start (kWh).
    pub ac_start: Option<f64>,
    /// The matched charger site.
    pub site_id: Option<String>,
}

/// What applying an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The frame is older than the state: nothing changed, rules must not run on it.
    Stale,
    /// The state moved to this frame.
    Applied,
}

impl VehicleState {
    /// Applies `u` unless it is older than the state. Position is not touched here: the rule
    /// engine accepts or rejects fixes (jitter guard) and calls [`VehicleState::set_position`].
    pub fn apply(&mut self, u: &VehicleUpdate) -> Applied {
        if u.at_ms < self.last_seen_ms {
            return Applied::Stale;
        }
        self.last_seen_ms = u.at_ms;
        self.keep_signals(u);
        Applied::Applied
    }

    /// Records an accepted GPS fix.
    pub fn set_position(&mut self, lat: f64, lon: f64, at_ms: i64) {
        self.position = Some(Position { lat, lon, at_ms });
    }
}

/// The sharded table of every vehicle seen.
#[derive(Default)]
pub struct VehicleTable {
    map: DashMap<String, VehicleState>,
}

impl VehicleTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the VIN's state (created on first sight) under that shard's lock only.
    /// `f` must not touch the table again.
    pub fn with<R>(&self, vin: &str, f: impl FnOnce(&mut VehicleState) -> R) -> R {
        if let Some(mut entry) = self.map.get_mut(vin) {
            return f(&mut entry);
        }
        let mut entry = self.map.entry(vin.to_owned()).or_default();
        f(&mut entry)
    }

    /// Runs `f` on the VIN's state if the vehicle is known (never creates it).
    pub fn update<R>(&self, vin: &str, f: impl FnOnce(&mut VehicleState) -> R) -> Option<R> {
        self.map.get_mut(vin).map(|mut e| f(&mut e))
    }

    /// A copy of the VIN's state.
    pub fn get(&self, vin: &str) -> Option<VehicleState> {
        self.map.get(vin).map(|e| e.clone())
    }

    /// Marks a vehicle connected or not.
    pub fn set_connected(&self, vin: &str, connected: bool) {
        self.with(vin, |s| s.connected = connected);
    }

    /// Number of vehicles known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no vehicle is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Vehicles within `radius_m` of a point, nearest first (a scan: fine for admin queries).
    pub fn near(
        &self,
        lat: f64,
        lon: f64,
        radius_m: f64,
        limit: usize,
    ) -> Vec<(String, f64, VehicleState)> {
        let mut out: Vec<(String, f64, VehicleState)> = self
            .map
            .iter()
            .filter_map(|e| {
                let p = e.value().position?;
                let d = crate::geometry::haversine_m(lat, lon, p.lat, p.lon);
                (d <= radius_m).then(|| (e.key().clone(), d, e.value().clone()))
            })
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1));
        out.truncate(limit);
        out
    }

    /// Replaces (or adds) a vehicle's whole state (restored from a durable record).
    pub fn put(&self, vin: &str, state: VehicleState) {
        self.map.insert(vin.to_owned(), state);
    }

    /// Forgets a vehicle (its rules moved to another instance).
    pub fn remove(&self, vin: &str) -> Option<VehicleState> {
        self.map.remove(vin).map(|(_, s)| s)
    }

    /// Takes the dirty mark of every vehicle that has one: their VINs, appended to `out`
    /// (the rule state store's flush). Locks one shard at a time, briefly.
    pub fn take_dirty(&self, out: &mut Vec<String>) {
        for mut entry in self.map.iter_mut() {
            if entry.dirty.0 {
                entry.dirty.0 = false;
                out.push(entry.key().clone());
            }
        }
    }

    /// Marks every vehicle dirty (a full write of the rule state store).
    pub fn mark_all_dirty(&self) {
        for mut entry in self.map.iter_mut() {
            entry.dirty.0 = true;
        }
    }

    /// The VINs whose state `pred` accepts (locks one shard at a time; copies only the VINs).
    pub fn vins_where(&self, pred: impl Fn(&VehicleState) -> bool) -> Vec<String> {
        self.map
            .iter()
            .filter(|e| pred(e.value()))
            .map(|e| e.key().clone())
            .collect()
    }

    /// VINs and states of every vehicle (copies; for sweeps and admin listings).
    pub fn snapshot(&self) -> Vec<(String, VehicleState)> {
        self.map
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::vehicle_data::{Datum, LocationValue, Value};

    fn datum(key: Field, v: V) -> Datum {
        Datum {
            key: key as i32,
            value: Some(Value { value: Some(v) }),
        }
    }

    #[test]
    fn typed_and_legacy_string_values_are_read() {
        let p = Payload {
            data: vec![
                datum(Field::Soc, V::StringValue("71.25".into())),
                datum(Field::ChargeLimitSoc, V::IntValue(80)),
                datum(
                    Field::Location,
                    V::StringValue("(30.2672 N, 97.7431 W)".into()),
                ),
                datum(
                    Field::DetailedChargeState,
                    V::StringValue("Charging".into()),
                ),
                datum(
                    Field::DestinationLocation,
                    V::LocationValue(LocationValue {
                        latitude: 1.0,
                        longitude: 2.0,
                    }),
                ),
                datum(Field::Odometer, V::Invalid(true)),
            ],
            ..Default::default()
        };
        let u = VehicleUpdate::from_payload(&p, 1_764_000_000);
        assert_eq!(u.at_ms, 1_764_000_000_000);
        assert_eq!(u.soc, Some(71.25));
        assert_eq!(u.charge_limit_soc, Some(80.0));
        assert_eq!(u.location, Some((30.2672, -97.7431)));
        assert_eq!(u.charge_state, Some(ChargeState::Charging));
        assert_eq!(u.destination, Some((1.0, 2.0)));
        assert_eq!(u.odometer, None);
    }

    #[test]
    fn fuzz_regression_an_absurd_created_at_falls_back_to_the_envelope_time() {
        // found by the `payload` fuzz target: created_at.seconds near i64::MAX overflowed `* 1000`
        let input = include_bytes!("../../testdata/fuzz-regression-payload-huge-created-at.bin");
        let p = <Payload as prost::Message>::decode(&input[1..]).unwrap();
        assert!(p.created_at.unwrap().seconds > MAX_UNIX_S);
        let u = VehicleUpdate::from_payload(&p, 1_764_000_000);
        assert_eq!(u.at_ms, 1_764_000_000_000);
        let engine = crate::rules::Fleet::new(Default::default(), Vec::new());
        let _ = engine.on_vehicle_data("VIN", &p, 1_764_000_000);
    }

    #[test]
    fn older_frames_never_move_the_state_back() {
        let mut s = VehicleState::default();
        let new = VehicleUpdate {
            at_ms: 2000,
            soc: Some(60.0),
            ..Default::default()
        };
        let old = VehicleUpdate {
            at_ms: 1000,
            soc: Some(50.0),
            ..Default::default()
        };
        assert_eq!(s.apply(&new), Applied::Applied);
        assert_eq!(s.apply(&old), Applied::Stale);
        assert_eq!(s.soc, Some(60.0));
        // missing signals keep their last value
        s.apply(&VehicleUpdate {
            at_ms: 3000,
            ..Default::default()
        });
        assert_eq!(s.soc, Some(60.0));
    }
}
