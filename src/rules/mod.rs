//! The rule engine: on every `V` frame, update the vehicle's state and turn it into events —
//! site entered / exited (hysteresis + GPS-jitter guard), watches (approaching, arrived,
//! charge complete, expired) and charging sessions (started, stopped, stale).
//!
//! Pure and synchronous, never touching sinks, stores or sockets: [`FleetData::run`] is the one
//! door — a [`input::RuleInput`] for one VIN in, an [`input::Outcome`] (events, whether the
//! vehicle's rule state changed, a manual arrival's answer) out. Who calls it, and where, is
//! the placement's business (`runner` in this process, `cluster::rules` on the owner of the
//! VIN's partition). The vehicle's table guard is released before the watch map is touched
//! (never two shards at once).

pub mod arrival;
pub mod geojson;
pub mod index;
pub mod input;
pub mod sites;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventType};
use crate::event_data;
use crate::geometry::{haversine_m, M_PER_DEG};
use crate::state::{
    Applied, ChargeState, ChargingSession, QuietZone, VehicleState, VehicleTable, VehicleUpdate,
};
use crate::wire::proto::vehicle_data::Payload;
use arrival::{Watch, WatchSet};
use index::SiteRegistry;
use input::{ArrivalReply, Outcome, RuleInput};
use sites::Site;

/// `fleetgate.rules`: thresholds of the rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Radius of a site given as a point without `radius_m` (m).
    #[serde(default = "RulesConfig::default_radius")]
    pub default_radius_m: f64,
    /// A vehicle leaves a site only beyond radius + this margin (m).
    #[serde(default = "RulesConfig::default_exit_margin")]
    pub exit_margin_m: f64,
    /// A charging session matches the nearest `charger` site within this distance (m).
    #[serde(default = "RulesConfig::default_charger_match")]
    pub charger_match_m: f64,
    /// A session without frames for this long is closed with `reason: stale` (s).
    #[serde(default = "RulesConfig::default_stale")]
    pub charging_stale_s: u64,
    /// A fix implying more than this speed from the last one is held as jitter (km/h).
    #[serde(default = "RulesConfig::default_max_speed")]
    pub max_speed_kmh: f64,
    /// Default `notify_eta_minutes` of watches.
    #[serde(default = "RulesConfig::default_eta")]
    pub eta_notify_minutes: f64,
}

impl RulesConfig {
    fn default_radius() -> f64 {
        250.0
    }
    fn default_exit_margin() -> f64 {
        50.0
    }
    fn default_charger_match() -> f64 {
        500.0
    }
    fn default_stale() -> u64 {
        900
    }
    fn default_max_speed() -> f64 {
        300.0
    }
    fn default_eta() -> f64 {
        5.0
    }

    /// Problems with the values (key, problem).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let positive = [
            ("fleetgate.rules.default_radius_m", self.default_radius_m),
            ("fleetgate.rules.charger_match_m", self.charger_match_m),
            ("fleetgate.rules.max_speed_kmh", self.max_speed_kmh),
        ];
        for (key, v) in positive {
            if !v.is_finite() || v <= 0.0 {
                out.push((key, "must be a positive number".to_owned()));
            }
        }
        if !self.exit_margin_m.is_finite() || self.exit_margin_m < 0.0 {
            out.push(("fleetgate.rules.exit_margin_m", "must be >= 0".to_owned()));
        }
        if self.charging_stale_s == 0 {
            out.push((
                "fleetgate.rules.charging_stale_s",
                "must be at least 1".to_owned(),
            ));
        }
        if !self.eta_notify_minutes.is_finite() || self.eta_notify_minutes < 0.0 {
            out.push((
                "fleetgate.rules.eta_notify_minutes",
                "must be >= 0".to_owned(),
            ));
        }
        out
    }
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            default_radius_m: Self::default_radius(),
            exit_margin_m: Self::default_exit_margin(),
            charger_match_m: Self::default_charger_match(),
            charging_stale_s: Self::default_stale(),
            max_speed_kmh: Self::default_max_speed(),
            eta_notify_minutes: Self::default_eta(),
        }
    }
}

/// What the watch rules need of the vehicle, copied out of the table guard.
struct WatchView {
    at_ms: i64,
    inside: Vec<Arc<str>>,
    soc: Option<f64>,
    charge_limit_soc: Option<f64>,
    charge_state: Option<ChargeState>,
    destination: Option<(f64, f64)>,
    minutes_to_arrival: Option<f64>,
    miles_to_arrival: Option<f64>,
    /// The fix of this update and the one before it, when this update moved the vehicle.
    moved: Option<((f64, f64), (f64, f64))>,
    avg_speed_mps: Option<f64>,
    source: crate::state::Source,
}

/// Bounds of the straight-line ETA (cars without a navigation route): it is only estimated
/// while the car closes in on the site at a real driving speed, within this horizon.
const STRAIGHT_LINE_MIN_SPEED_MPS: f64 = 2.0;
const STRAIGHT_LINE_MAX_MINUTES: f64 = 60.0;
/// Fixes further apart than this do not update the average speed (a gap, not driving).
const SPEED_SAMPLE_MAX_S: f64 = 300.0;

/// The fleet: the vehicle table, sites, watches and thresholds, behind a cheap-to-clone
/// handle. Ingest, the admin API and the sweeper share one; the rule logic is its methods
/// (`apply`, `sweep`), reached through `Deref`.
#[derive(Clone)]
pub struct Fleet(Arc<FleetData>);

impl std::ops::Deref for Fleet {
    type Target = FleetData;
    fn deref(&self) -> &FleetData {
        &self.0
    }
}

impl Fleet {
    /// A fleet with `sites` and no watches or vehicles.
    pub fn new(config: RulesConfig, sites: Vec<Site>) -> Fleet {
        Fleet(Arc::new(FleetData::new(config, sites)))
    }
}

/// What a [`Fleet`] holds.
pub struct FleetData {
    /// Latest state per VIN.
    pub vehicles: VehicleTable,
    /// The site index.
    pub sites: SiteRegistry,
    /// Live watches.
    pub watches: WatchSet,
    /// Thresholds.
    pub config: RulesConfig,
    /// Whether the geofence skips checks inside a quiet zone (off only to test that skipping
    /// changes nothing).
    quiet_zones: bool,
}

impl FleetData {
    fn new(config: RulesConfig, sites: Vec<Site>) -> FleetData {
        FleetData {
            vehicles: VehicleTable::new(),
            sites: SiteRegistry::new(sites, config.exit_margin_m),
            watches: WatchSet::default(),
            config,
            quiet_zones: true,
        }
    }

    /// Applies one input of `vin`: the one way into the rules.
    pub fn run(&self, vin: &str, input: &RuleInput) -> Outcome {
        let mut out = Outcome::default();
        match input {
            RuleInput::Signals(update) => {
                out.changed = self.signals(vin, update, &mut out.events, &mut out.ended);
            }
            RuleInput::ManualArrival {
                watch_id,
                reason,
                at_ms,
            } => {
                let (reply, changed) =
                    self.arrive_manually(vin, watch_id, reason.as_deref(), *at_ms, &mut out.events);
                out.arrival = Some(reply);
                out.changed = changed;
            }
            RuleInput::Tick { now_ms } => {
                out.changed = self.tick(vin, *now_ms, &mut out.events, &mut out.ended)
            }
            RuleInput::Onboarding {
                state,
                previous_state,
                reason,
                seq,
                at_ms,
            } => {
                // no rule state: the event only, in the vehicle's order. Its id depends on
                // the change (VIN, number, state), not on when it was seen, so two instances
                // announcing the same change (a partition moving) give the same id.
                let mut data = serde_json::Map::new();
                data.insert("state".into(), state.as_str().into());
                data.insert(
                    "previous_state".into(),
                    previous_state
                        .clone()
                        .map_or(serde_json::Value::Null, Into::into),
                );
                data.insert(
                    "reason".into(),
                    reason.clone().map_or(serde_json::Value::Null, Into::into),
                );
                let mut event = Event::new(
                    EventType::VehicleOnboarding,
                    vin,
                    &format!("onboarding/{seq}/{state}"),
                    0,
                    data,
                );
                event.time_ms = *at_ms;
                out.events.push(event);
            }
        }
        out
    }

    /// Applies one decoded `V` payload of `vin` and returns the events it causes (a shortcut
    /// to [`FleetData::run`] for tests, benches and fuzzing).
    pub fn on_vehicle_data(
        &self,
        vin: &str,
        payload: &Payload,
        envelope_created_at_s: u32,
    ) -> Vec<Event> {
        let update = VehicleUpdate::from_payload(payload, envelope_created_at_s);
        self.apply(vin, &update)
    }

    /// The events of one update's signals (a shortcut to [`FleetData::run`] for tests and
    /// benches: the watches it ends are not reported).
    pub fn apply(&self, vin: &str, u: &VehicleUpdate) -> Vec<Event> {
        self.apply_signals(vin, u).events
    }

    /// [`FleetData::run`] for signals without copying them into a [`RuleInput`]: the frame
    /// path. Allocates nothing when no event fires and no watch ends.
    pub fn apply_signals(&self, vin: &str, u: &VehicleUpdate) -> Outcome {
        let mut out = Outcome::default();
        out.changed = self.signals(vin, u, &mut out.events, &mut out.ended);
        out
    }

    /// Applies signals; returns false when the update was older than the state (nothing
    /// changed). The vehicle is marked dirty for the rule state store otherwise.
    fn signals(
        &self,
        vin: &str,
        u: &VehicleUpdate,
        events: &mut Vec<Event>,
        ended: &mut Vec<String>,
    ) -> bool {
        let index = self.sites.load();
        let has_watches = self
            .watches
            .with_vin(vin, |w| !w.is_empty())
            .unwrap_or(false);
        let mut applied = false;
        let view = self.vehicles.with(vin, |state| {
            if state.apply(u) == Applied::Stale {
                return None;
            }
            applied = true;
            state.dirty.0 = true;
            let mut moved = None;
            if let Some((lat, lon)) = u.location {
                if self.accept_fix(state, lat, lon, u.at_ms) {
                    if let Some(prev) = state.position {
                        track_speed(&mut state.tracking, &prev, lat, lon, u.at_ms);
                        moved = Some(((lat, lon), (prev.lat, prev.lon)));
                    }
                    state.set_position(lat, lon, u.at_ms);
                    self.geofence(vin, state, &index, lat, lon, u.at_ms, events);
                }
            }
            self.charging(vin, state, &index, u, events);
            has_watches.then(|| WatchView {
                at_ms: u.at_ms,
                inside: state
                    .tracking
                    .inside
                    .iter()
                    .map(|(id, _)| id.clone())
                    .collect(),
                soc: state.soc,
                charge_limit_soc: state.charge_limit_soc,
                charge_state: state.charge_state,
                destination: state.destination,
                minutes_to_arrival: u.minutes_to_arrival,
                miles_to_arrival: state.miles_to_arrival,
                moved,
                avg_speed_mps: state.tracking.avg_speed_mps,
                source: u.source,
            })
        });
        if let Some(view) = view {
            self.watch_rules(vin, &view, &index, events, ended);
        }
        applied
    }

    /// Jitter guard: true when the fix is plausible. An implausible jump is held; the next fix
    /// near it confirms it (a vehicle really can be moved: ferry, tow truck).
    fn accept_fix(&self, state: &mut VehicleState, lat: f64, lon: f64, at_ms: i64) -> bool {
        let max_mps = self.config.max_speed_kmh / 3.6;
        let plausible_from = |p: &crate::state::Position| {
            let d = haversine_m(p.lat, p.lon, lat, lon);
            let dt = (at_ms - p.at_ms).max(0) as f64 / 1000.0;
            // 100 m of slack covers GPS noise between fixes taken at (almost) the same time
            d <= 100.0 + max_mps * dt
        };
        let Some(last) = state.position else {
            return true;
        };
        if plausible_from(&last) {
            state.tracking.held_fix = None;
            return true;
        }
        if let Some(held) = state.tracking.held_fix {
            if plausible_from(&held) {
                state.tracking.held_fix = None;
                return true;
            }
        }
        state.tracking.held_fix = Some(crate::state::Position { lat, lon, at_ms });
        false
    }

    #[allow(clippy::too_many_arguments)]
    fn geofence(
        &self,
        vin: &str,
        state: &mut VehicleState,
        index: &index::SiteIndex,
        lat: f64,
        lon: f64,
        at_ms: i64,
        events: &mut Vec<Event>,
    ) {
        let margin = self.config.exit_margin_m;
        // exits: only beyond radius + margin (hysteresis); a deleted site is dropped quietly
        let tracking = &mut state.tracking;
        let cache = &mut tracking.inside_slots;
        let current =
            cache.generation == index.generation() && cache.slots.len() == tracking.inside.len();
        if !current {
            cache.slots.clear();
            cache.slots.resize(tracking.inside.len(), u32::MAX);
        }
        cache.generation = index.generation();
        // Inside the last check's quiet zone nothing can enter or leave: the check would find
        // nothing (see `quiet_zone_radius`), so it is not made.
        let quiet_cap = index.quiet_zones().filter(|_| self.quiet_zones);
        if let (true, Some(_), Some(zone)) = (current, quiet_cap, cache.quiet) {
            // |Δlat| + |Δlon| in degrees of M_PER_DEG (≥ the haversine's metres per degree)
            // bounds the great-circle distance from above: a path along a meridian and a
            // parallel is at least as long. Ten instructions instead of a haversine.
            let moved_at_most_m = ((zone.lat - lat).abs() + (zone.lon - lon).abs()) * M_PER_DEG;
            if moved_at_most_m < zone.radius_m {
                return;
            }
        }
        cache.quiet = None;
        // the nearest possible change, from the distances the check computes anyway
        let mut nearest_change_m = f64::INFINITY;
        let slots = &mut cache.slots;
        let mut i = 0;
        while i < tracking.inside.len() {
            let found = if current {
                Some(slots[i])
            } else {
                index
                    .locate(&tracking.inside[i].0, slots[i])
                    .map(|(slot, _)| slot)
            };
            // the distance from the compact footprints: the site itself is not read
            let distance =
                found.and_then(|slot| Some((slot, index.edge_distance_m(slot, lat, lon)?)));
            match distance {
                None => {
                    tracking.inside.swap_remove(i);
                    slots.swap_remove(i);
                }
                Some((slot, d)) if d > margin => {
                    let entered = tracking.inside[i].1;
                    tracking.inside.swap_remove(i);
                    slots.swap_remove(i);
                    // the site is read only now, for its event (a slot with a distance has one)
                    if let Some(site) = index.at(slot) {
                        events.push(Event::new(
                            EventType::SiteExited,
                            vin,
                            &site.id,
                            at_ms,
                            event_data!("site_id" => site.id.as_str(), "site_name" => site.name.as_str(), "site_kind" => site.kind.as_str(),
                                "lat" => lat, "lon" => lon, "dwell_s" => (at_ms - entered) / 1000),
                        ));
                    }
                }
                Some((slot, d)) => {
                    // an exit needs the distance to grow past the margin
                    nearest_change_m = nearest_change_m.min(margin - d);
                    slots[i] = slot;
                    i += 1;
                }
            }
        }
        // entries: inside the radius / polygon (the slots of the sites inside are current now)
        let soc = state.soc;
        index.candidates(lat, lon, |slot| {
            if slots.contains(&slot) {
                return;
            }
            let Some(d) = index.edge_distance_m(slot, lat, lon) else {
                return;
            };
            if d > 0.0 {
                // an entry needs the distance to fall to 0
                nearest_change_m = nearest_change_m.min(d);
            } else {
                let Some(site) = index.at(slot) else {
                    return;
                };
                tracking.inside.push((Arc::from(site.id.as_str()), at_ms));
                slots.push(slot);
                events.push(Event::new(
                    EventType::SiteEntered,
                    vin,
                    &site.id,
                    at_ms,
                    event_data!("site_id" => site.id.as_str(), "site_name" => site.name.as_str(), "site_kind" => site.kind.as_str(),
                        "lat" => lat, "lon" => lon, "soc" => soc),
                ));
            }
        });
        if let Some(cap) = quiet_cap {
            cache.quiet = quiet_zone_radius(nearest_change_m, cap).map(|radius_m| QuietZone {
                lat,
                lon,
                radius_m,
            });
        }
    }

    fn charging(
        &self,
        vin: &str,
        state: &mut VehicleState,
        index: &index::SiteIndex,
        u: &VehicleUpdate,
        events: &mut Vec<Event>,
    ) {
        let Some(cs) = u.charge_state else { return };
        match (cs, state.tracking.session.is_some()) {
            (ChargeState::Charging, false) => {
                let charger = state.position.and_then(|p| {
                    index.nearest_of_kind(p.lat, p.lon, "charger", self.config.charger_match_m)
                });
                let site_id = charger.as_ref().map(|(s, _)| s.id.clone());
                events.push(Event::new(
                    EventType::ChargingStarted,
                    vin,
                    site_id.as_deref().unwrap_or(""),
                    u.at_ms,
                    event_data!("site_id" => site_id.clone(), "charger_distance_m" => charger.as_ref().map(|(_, d)| crate::event::round(*d)),
                        "soc" => state.soc, "dc_energy_in_kwh" => state.dc_energy_in, "ac_energy_in_kwh" => state.ac_energy_in),
                ));
                state.tracking.session = Some(ChargingSession {
                    started_ms: u.at_ms,
                    start_soc: state.soc,
                    dc_start: state.dc_energy_in,
                    ac_start: state.ac_energy_in,
                    site_id,
                });
            }
            (ChargeState::Complete, true) => {
                self.stop_session(vin, state, u.at_ms, "complete", events)
            }
            (ChargeState::Idle, true) => self.stop_session(vin, state, u.at_ms, "stopped", events),
            _ => {}
        }
    }

    fn stop_session(
        &self,
        vin: &str,
        state: &mut VehicleState,
        at_ms: i64,
        reason: &str,
        events: &mut Vec<Event>,
    ) {
        let Some(s) = state.tracking.session.take() else {
            return;
        };
        let gained = |now: Option<f64>, start: Option<f64>| match (now, start) {
            (Some(n), Some(s)) => Some((n - s).max(0.0)),
            _ => None,
        };
        let energy = match (
            gained(state.dc_energy_in, s.dc_start),
            gained(state.ac_energy_in, s.ac_start),
        ) {
            (Some(dc), Some(ac)) => Some(dc.max(ac)),
            (dc, ac) => dc.or(ac),
        };
        events.push(Event::new(
            EventType::ChargingStopped,
            vin,
            s.site_id.as_deref().unwrap_or(""),
            at_ms,
            event_data!("site_id" => s.site_id.clone(), "reason" => reason, "energy_added_kwh" => energy.map(crate::event::round),
                "duration_s" => (at_ms - s.started_ms) / 1000, "soc" => state.soc,
                "soc_gained" => gained(state.soc, s.start_soc).map(crate::event::round)),
        ));
    }

    fn watch_rules(
        &self,
        vin: &str,
        v: &WatchView,
        index: &index::SiteIndex,
        events: &mut Vec<Event>,
        ended: &mut Vec<String>,
    ) {
        let default_eta = self.config.eta_notify_minutes;
        self.watches.with_vin(vin, |watches| {
            watches.retain_mut(|w| {
                if v.at_ms >= w.expires_at_ms {
                    if !w.progress.charge_complete {
                        events.push(expired_event(vin, w));
                    }
                    ended.push(w.spec.watch_id.clone());
                    return false;
                }
                let Some(site) = index.get(&w.spec.site_id) else { return true };
                let scope = w.spec.watch_id.as_str();
                let p = &mut w.progress;
                if !p.approached && p.arrived_at_ms.is_none() {
                    let eta = w.spec.notify_eta_minutes.unwrap_or(default_eta);
                    let heading_there = v.destination.is_some_and(|(la, lo)| site.edge_distance_m(la, lo) <= 0.0);
                    let estimate = if heading_there && v.minutes_to_arrival.is_some() {
                        v.minutes_to_arrival.map(|m| (m, "navigation"))
                    } else {
                        straight_line_minutes(site, v).map(|m| (m, "straight_line"))
                    };
                    if let Some((minutes, method)) = estimate.filter(|(m, _)| *m <= eta) {
                        p.approached = true;
                        let miles = if method == "navigation" { v.miles_to_arrival } else { None };
                        events.push(Event::new(EventType::ArrivalApproaching, vin, scope, v.at_ms,
                            event_data!("watch_id" => scope, "site_id" => site.id.as_str(), "minutes_to_arrival" => Some(crate::event::round(minutes)),
                                "miles_to_arrival" => miles, "soc" => v.soc, "eta_method" => method, "source" => v.source.as_str())));
                    }
                }
                let inside = v.inside.iter().any(|id| **id == *site.id);
                if p.arrived_at_ms.is_none() && inside {
                    p.arrived_at_ms = Some(v.at_ms);
                    p.arrival_source = Some(v.source.as_str().to_owned());
                    p.soc_at_arrival = v.soc;
                    events.push(Event::new(EventType::ArrivalArrived, vin, scope, v.at_ms,
                        event_data!("watch_id" => scope, "site_id" => site.id.as_str(), "soc_at_arrival" => v.soc, "source" => v.source.as_str())));
                } else if inside {
                    p.saw_arrival(v.source.as_str());
                }
                if p.arrived_at_ms.is_some() && !p.charge_complete {
                    let target = w.spec.target_soc.or(v.charge_limit_soc);
                    let trigger = if target.is_some_and(|t| v.soc.is_some_and(|s| s >= t)) {
                        Some(if w.spec.target_soc.is_some() { "target_soc" } else { "charge_limit" })
                    } else if v.charge_state == Some(ChargeState::Complete) {
                        Some("charge_state_complete")
                    } else {
                        None
                    };
                    if let Some(trigger) = trigger {
                        p.charge_complete = true;
                        events.push(Event::new(EventType::ArrivalChargeComplete, vin, scope, v.at_ms,
                            event_data!("watch_id" => scope, "site_id" => site.id.as_str(), "soc" => v.soc, "target_soc" => target, "trigger" => trigger)));
                    }
                }
                true
            });
        });
    }

    /// Runs the clock over every vehicle that needs it now (see [`FleetData::due`]) and returns
    /// the events (a shortcut to [`FleetData::run`] with [`RuleInput::Tick`]).
    pub fn sweep(&self, now_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        for vin in self.due(now_ms) {
            events.extend(self.run(&vin, &RuleInput::Tick { now_ms }).events);
        }
        events
    }

    /// The VINs a [`RuleInput::Tick`] at `now_ms` would change: an open charging session
    /// without frames for `charging_stale_s`, or a watch whose time passed.
    pub fn due(&self, now_ms: i64) -> Vec<String> {
        let stale_ms = (self.config.charging_stale_s * 1000) as i64;
        let mut out = self
            .vehicles
            .vins_where(|s| s.tracking.session.is_some() && now_ms - s.last_seen_ms >= stale_ms);
        for vin in self.watches.vins() {
            let expired = self
                .watches
                .with_vin(&vin, |ws| ws.iter().any(|w| now_ms >= w.expires_at_ms))
                .unwrap_or(false);
            if expired && !out.contains(&vin) {
                out.push(vin);
            }
        }
        // the same order in every process (events keep order per vehicle either way)
        out.sort_unstable();
        out
    }

    /// The clock for one vehicle: closes its stale session, expires its watches. True when
    /// anything changed.
    fn tick(
        &self,
        vin: &str,
        now_ms: i64,
        events: &mut Vec<Event>,
        ended: &mut Vec<String>,
    ) -> bool {
        let stale_ms = (self.config.charging_stale_s * 1000) as i64;
        let before = events.len();
        let mut changed = self
            .vehicles
            .update(vin, |s| {
                if s.tracking.session.is_some() && now_ms - s.last_seen_ms >= stale_ms {
                    let at = s.last_seen_ms + stale_ms;
                    self.stop_session(vin, s, at, "stale", events);
                    s.dirty.0 = true;
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        self.watches.with_vin(vin, |watches| {
            watches.retain(|w| {
                if now_ms >= w.expires_at_ms {
                    if !w.progress.charge_complete {
                        events.push(expired_event(vin, w));
                    }
                    ended.push(w.spec.watch_id.clone());
                    changed = true;
                    false
                } else {
                    true
                }
            })
        });
        changed || events.len() > before
    }

    /// A person says the vehicle of `watch_id` arrived at `at_ms`: it arrives now unless
    /// another source saw the arrival first, which is then only noted on the watch. Returns
    /// the answer and whether the watch's progress changed.
    fn arrive_manually(
        &self,
        vin: &str,
        watch_id: &str,
        reason: Option<&str>,
        at_ms: i64,
        events: &mut Vec<Event>,
    ) -> (ArrivalReply, bool) {
        let soc = self.vehicles.get(vin).and_then(|v| v.soc);
        let manual = crate::state::Source::Manual.as_str();
        let reply = self.watches.with_vin(vin, |watches| {
            let w = watches.iter_mut().find(|w| w.spec.watch_id == watch_id)?;
            let p = &mut w.progress;
            if p.arrived_at_ms.is_some() {
                let before = p.later_sources.len();
                p.saw_arrival(manual);
                let source = p
                    .arrival_source
                    .clone()
                    .unwrap_or_else(|| crate::state::Source::FleetTelemetry.as_str().into());
                return Some((
                    ArrivalReply::AlreadyArrived { source },
                    p.later_sources.len() != before,
                ));
            }
            p.arrived_at_ms = Some(at_ms);
            p.arrival_source = Some(manual.to_owned());
            p.soc_at_arrival = soc;
            let event = Event::new(
                EventType::ArrivalArrived,
                vin,
                watch_id,
                at_ms,
                event_data!("watch_id" => watch_id, "site_id" => w.spec.site_id.as_str(), "soc_at_arrival" => soc,
                    "source" => manual, "reason" => reason),
            );
            let event_id = event.id.clone();
            events.push(event);
            Some((ArrivalReply::Arrived { event_id }, true))
        });
        reply
            .flatten()
            .unwrap_or((ArrivalReply::UnknownWatch, false))
    }

    /// Takes back a manual arrival whose event could not be delivered, so that the driver's
    /// retry emits it (nothing else moved the watch since: the arrival must still be manual).
    /// True when it was taken back.
    pub fn undo_manual_arrival(&self, vin: &str, watch_id: &str, at_ms: i64) -> bool {
        self.watches
            .with_vin(vin, |watches| {
                let Some(w) = watches.iter_mut().find(|w| w.spec.watch_id == watch_id) else {
                    return false;
                };
                let p = &mut w.progress;
                if p.arrived_at_ms == Some(at_ms)
                    && p.arrival_source.as_deref() == Some(crate::state::Source::Manual.as_str())
                {
                    p.arrived_at_ms = None;
                    p.arrival_source = None;
                    p.soc_at_arrival = None;
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false)
    }

    /// Adds a watch; if the vehicle is already inside the site, it arrives on its next frame.
    pub fn add_watch(&self, watch: Watch) {
        self.watches.upsert(watch);
    }

    /// The vehicle's rule state in durable form: its table entry (default for a vehicle
    /// never seen) and its watches' progress. None when there is neither.
    pub fn rule_state(&self, vin: &str) -> Option<RuleState> {
        let vehicle = self.vehicles.get(vin);
        let watches = self.watches.progress_of(vin);
        if vehicle.is_none() && watches.is_empty() {
            return None;
        }
        let vehicle = vehicle.unwrap_or_default();
        Some(RuleState {
            tracking: vehicle.tracking.clone(),
            vehicle,
            watches,
            receipts: Vec::new(),
        })
    }

    /// Puts a vehicle's rule state back (after a restart, or when its rules move here). A
    /// vehicle never seen (only watch progress) gets no table entry.
    pub fn restore(&self, vin: &str, record: RuleState) {
        let mut vehicle = record.vehicle;
        vehicle.tracking = record.tracking;
        // sockets are this process's: none is open for a restored vehicle yet
        vehicle.connected = false;
        vehicle.dirty.0 = false;
        if record_seen(&vehicle) {
            self.vehicles.put(vin, vehicle);
        }
        self.watches.set_progress_of(vin, &record.watches);
    }

    /// Forgets a vehicle's rule state (its rules moved to another instance).
    pub fn forget(&self, vin: &str) {
        self.vehicles.remove(vin);
        self.watches.set_progress_of(vin, &Default::default());
    }
}

/// A vehicle's rule state in durable form: its table entry with the rules' bookkeeping
/// (sites inside with entry times, a held GPS jump, the open charging session) and the
/// progress of its watches. Written after the events it explains (embedded: the local store;
/// cluster: the compacted state topic, in the same transaction as the events), read back on
/// restart or when the vehicle's rules move to another instance, so no event fires twice
/// and none is skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Latest signals, position, last frame time.
    pub vehicle: VehicleState,
    /// The rules' bookkeeping.
    pub tracking: crate::state::Tracking,
    /// Progress of the vehicle's watches, by watch id.
    #[serde(default)]
    pub watches: std::collections::BTreeMap<String, arrival::WatchProgress>,
    /// What the latest submitted inputs did (cluster mode: how the instance that took a
    /// request learns its answer from the changelog). The newest [`input::RECEIPTS_KEPT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<input::Receipt>,
}

/// True when a stored vehicle state comes from real signals (not the default of a vehicle
/// known only by its watches).
pub fn record_seen(vehicle: &VehicleState) -> bool {
    vehicle.last_seen_ms != 0 || vehicle.position.is_some()
}

/// The quiet zone a full geofence check leaves: no membership can change before the vehicle
/// has moved `nearest_change_m` (the triangle inequality on each distance the check computed:
/// a site it is outside nears by at most the distance moved, one it is inside recedes by at
/// most that) nor `cap` (sites whose boxes it is outside are more than the margin away, see
/// [`index::SiteIndex::quiet_zones`]). Half a metre is kept back for the distances' rounding.
/// `None` when the zone would be too small to save a check.
fn quiet_zone_radius(nearest_change_m: f64, cap: f64) -> Option<f64> {
    let radius = nearest_change_m.min(cap) - 0.5;
    (radius >= 1.0).then_some(radius)
}

/// Smooths the ground speed between the last accepted fix and this one into
/// `tracking.avg_speed_mps` (fixes minutes apart are a gap, not a speed).
fn track_speed(
    tracking: &mut crate::state::Tracking,
    prev: &crate::state::Position,
    lat: f64,
    lon: f64,
    at_ms: i64,
) {
    let dt = (at_ms - prev.at_ms) as f64 / 1000.0;
    if !(0.5..=SPEED_SAMPLE_MAX_S).contains(&dt) {
        if dt > SPEED_SAMPLE_MAX_S {
            tracking.avg_speed_mps = None;
        }
        return;
    }
    let speed = haversine_m(prev.lat, prev.lon, lat, lon) / dt;
    tracking.avg_speed_mps = Some(match tracking.avg_speed_mps {
        Some(avg) => 0.7 * avg + 0.3 * speed,
        None => speed,
    });
}

/// Minutes to the site's edge at the recent average speed, for a car without a route to it:
/// only while this update brought it closer at a driving speed, and within the horizon.
fn straight_line_minutes(site: &Site, v: &WatchView) -> Option<f64> {
    let ((lat, lon), (plat, plon)) = v.moved?;
    let speed = v
        .avg_speed_mps
        .filter(|s| *s >= STRAIGHT_LINE_MIN_SPEED_MPS)?;
    let now = site.edge_distance_m(lat, lon);
    let before = site.edge_distance_m(plat, plon);
    if now <= 0.0 || now >= before {
        return None;
    }
    let minutes = now / speed / 60.0;
    (minutes <= STRAIGHT_LINE_MAX_MINUTES).then_some(minutes)
}

fn expired_event(vin: &str, w: &Watch) -> Event {
    Event::new(
        EventType::ArrivalExpired,
        vin,
        &w.spec.watch_id,
        w.expires_at_ms,
        event_data!("watch_id" => w.spec.watch_id.as_str(), "site_id" => w.spec.site_id.as_str(), "expires_at" => w.spec.expires_at.as_str(),
            "arrived" => Some(w.progress.arrived_at_ms.is_some())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::sites::Shape;

    /// xorshift: the same tracks every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Dense circles and small polygons (squares with a hole-free outline) over a 4 × 4 km area.
    fn dense_sites(rng: &mut Rng) -> Vec<Site> {
        let mut sites = Vec::new();
        for i in 0..400 {
            let lat = 48.0 + rng.next() * 0.036;
            let lon = 11.0 + rng.next() * 0.054;
            let shape = if i % 4 == 0 {
                let d = 0.0005 + rng.next() * 0.002;
                let ring = vec![
                    (lon, lat),
                    (lon + d, lat),
                    (lon + d, lat + d),
                    (lon, lat + d),
                    (lon, lat),
                ];
                Shape::Polygons(geo::MultiPolygon(vec![geo::Polygon::new(
                    geo::LineString::from(ring),
                    vec![],
                )]))
            } else {
                Shape::Circle {
                    lat,
                    lon,
                    radius_m: 20.0 + rng.next() * 300.0,
                }
            };
            sites.push(Site {
                id: format!("s{i}"),
                name: format!("site {i}"),
                kind: "merchant".into(),
                tags: Default::default(),
                shape,
            });
        }
        sites
    }

    /// Every vehicle drives the same random track through both fleets (steps of 0–60 m, some
    /// back and forth across an edge, some standing still); the events must be identical.
    fn drive(with_zones: &FleetData, without: &FleetData, seed: u64) -> (usize, usize) {
        let mut rng = Rng(seed);
        let (mut events, mut skipped) = (0, 0);
        for v in 0..40 {
            let vin = format!("5YJ3E1EA7KF{v:06}");
            let (mut lat, mut lon) = (48.0 + rng.next() * 0.036, 11.0 + rng.next() * 0.054);
            let mut heading: f64 = rng.next() * std::f64::consts::TAU;
            for t in 0..600i64 {
                let step = match rng.next() {
                    x if x < 0.1 => 0.0,
                    x if x < 0.3 => rng.next() * 3.0,
                    _ => rng.next() * 60.0,
                };
                if rng.next() < 0.1 {
                    heading += std::f64::consts::PI; // back across what it just crossed
                } else {
                    heading += (rng.next() - 0.5) * 0.6;
                }
                lat += step * heading.cos() / 111_195.0;
                lon += step * heading.sin() / (111_195.0 * lat.to_radians().cos());
                let u = VehicleUpdate {
                    at_ms: 1_764_000_000_000 + t * 1000,
                    location: Some((lat, lon)),
                    ..Default::default()
                };
                let a = with_zones.apply(&vin, &u);
                let b = without.apply(&vin, &u);
                let key = |e: &Event| (e.id.clone(), e.time_ms, format!("{:?}", e.data));
                assert_eq!(
                    a.iter().map(key).collect::<Vec<_>>(),
                    b.iter().map(key).collect::<Vec<_>>(),
                    "{vin} at step {t}: the quiet zone changed the events"
                );
                events += a.len();
                // a zone centred on an earlier fix: this one's check was skipped
                let skip = with_zones.vehicles.with(&vin, |s| {
                    s.tracking
                        .inside_slots
                        .quiet
                        .is_some_and(|z| z.lat != lat || z.lon != lon)
                });
                skipped += usize::from(skip);
            }
        }
        (events, skipped)
    }

    #[test]
    fn quiet_zones_change_no_event() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let sites = dense_sites(&mut rng);
        let with_zones = FleetData::new(RulesConfig::default(), sites.clone());
        let mut without = FleetData::new(RulesConfig::default(), sites);
        without.quiet_zones = false;
        assert!(with_zones.sites.load().quiet_zones().is_some());
        let (events, skipped) = drive(&with_zones, &without, 99);
        assert!(events > 500, "the tracks cross many edges: {events} events");
        assert!(skipped > 1000, "checks were skipped: {skipped} of 24,000");
        eprintln!("{events} events, {skipped} of 24,000 checks skipped");
    }

    #[test]
    fn no_quiet_zones_where_boxes_are_loose() {
        let big = Site {
            id: "big".into(),
            name: "big".into(),
            kind: "merchant".into(),
            tags: Default::default(),
            shape: Shape::Circle {
                lat: 70.0,
                lon: 20.0,
                radius_m: 50_000.0,
            },
        };
        let fleet = FleetData::new(RulesConfig::default(), vec![big]);
        assert_eq!(fleet.sites.load().quiet_zones(), None);
        let small = FleetData::new(RulesConfig::default(), vec![]);
        assert_eq!(small.sites.load().quiet_zones(), Some(39.0));
    }
}
