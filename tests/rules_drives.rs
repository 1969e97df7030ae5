//! Scripted drives through the real decode path and the rule engine: each frame is built as a
//! vehicle sends it (envelope + protobuf), decoded, transformed and applied; the tests assert
//! the exact event sequence and ids.

use fleetgate::event::{event_id, Event, EventType};
use fleetgate::rules::arrival::WatchSpec;
use fleetgate::rules::geojson::sites_from_geojson;
use fleetgate::rules::sites::{Shape, Site};
use fleetgate::rules::{Fleet, RulesConfig};
use fleetgate::wire::proto::vehicle_data::{
    value::Value as V, Datum, DetailedChargeStateValue as Dcs, Field, LocationValue, Payload, Value,
};
use fleetgate::wire::{decode_standalone, EnvelopeWriter, StreamView};
use prost::Message;

const VIN: &str = "5YJ3E1EA7KF000001";
const T0: i64 = 1_764_000_000; // seconds

fn circle(id: &str, kind: &str, lat: f64, lon: f64, r: f64) -> Site {
    Site {
        id: id.into(),
        name: id.into(),
        kind: kind.into(),
        tags: Default::default(),
        shape: Shape::Circle {
            lat,
            lon,
            radius_m: r,
        },
    }
}

/// Latitude offset for `m` meters north.
fn north(m: f64) -> f64 {
    m / 111_195.0
}

enum D {
    Loc(f64, f64),
    LocString(&'static str),
    Soc(f64),
    Limit(i32),
    Charge(Dcs),
    Dc(f64),
    Dest(f64, f64),
    Minutes(f64),
}

struct Drive {
    engine: Fleet,
    vin: &'static str,
}

impl Drive {
    fn new(sites: Vec<Site>) -> Drive {
        Drive {
            engine: Fleet::new(RulesConfig::default(), sites),
            vin: VIN,
        }
    }

    fn watch(&self, id: &str, site: &str, target: Option<f64>, expires: &str) {
        let spec = WatchSpec {
            watch_id: id.into(),
            vin: self.vin.into(),
            site_id: site.into(),
            target_soc: target,
            notify_eta_minutes: None,
            expires_at: expires.into(),
        };
        self.engine.add_watch(spec.into_watch().unwrap());
    }

    /// Sends a frame created `at` seconds after T0 (resend flag optional) through decode + rules.
    fn frame(&self, at: i64, data: &[D]) -> Vec<Event> {
        self.frame_ex(at, data, false)
    }

    fn frame_ex(&self, at: i64, data: &[D], is_resend: bool) -> Vec<Event> {
        let datum = |key: Field, v: V| Datum {
            key: key as i32,
            value: Some(Value { value: Some(v) }),
        };
        let data = data
            .iter()
            .map(|d| match d {
                D::Loc(lat, lon) => datum(
                    Field::Location,
                    V::LocationValue(LocationValue {
                        latitude: *lat,
                        longitude: *lon,
                    }),
                ),
                D::LocString(s) => datum(Field::Location, V::StringValue((*s).into())),
                D::Soc(s) => datum(Field::Soc, V::DoubleValue(*s)),
                D::Limit(l) => datum(Field::ChargeLimitSoc, V::IntValue(*l)),
                D::Charge(c) => datum(
                    Field::DetailedChargeState,
                    V::DetailedChargeStateValue(*c as i32),
                ),
                D::Dc(e) => datum(Field::DcChargingEnergyIn, V::DoubleValue(*e)),
                D::Dest(lat, lon) => datum(
                    Field::DestinationLocation,
                    V::LocationValue(LocationValue {
                        latitude: *lat,
                        longitude: *lon,
                    }),
                ),
                D::Minutes(m) => datum(Field::MinutesToArrival, V::DoubleValue(*m)),
            })
            .collect();
        let created = T0 + at;
        let payload = Payload {
            data,
            created_at: Some(fleetgate::wire::Timestamp {
                seconds: created,
                nanos: 0,
            }),
            vin: String::new(),
            is_resend,
        };
        let frame = EnvelopeWriter::new()
            .stream(
                format!("tx-{at}").as_bytes(),
                b"V",
                b"",
                &StreamView {
                    created_at: created as u32,
                    sender_id: format!("vehicle_device.{}", self.vin).as_bytes(),
                    payload: &payload.encode_to_vec(),
                    device_type: b"vehicle_device",
                    device_id: self.vin.as_bytes(),
                    delivered_at_epoch_ms: 0,
                },
            )
            .to_vec();
        let record = decode_standalone(&frame, 0).unwrap();
        self.engine.on_vehicle_data(
            record.vin,
            record.decoded.vehicle().unwrap(),
            record.frame.created_at,
        )
    }
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

const CAFE: (f64, f64) = (30.2672, -97.7431);

/// Approach, ETA notice, jitter, enter, dwell at the boundary, charge to target, exit, re-enter,
/// and a resent old frame. Returns every event in order.
fn arrival_drive() -> Vec<Event> {
    let d = Drive::new(vec![circle("cafe", "merchant", CAFE.0, CAFE.1, 250.0)]);
    d.watch("w1", "cafe", Some(80.0), "2030-01-01T00:00:00Z");
    let (lat, lon) = CAFE;
    let mut all = Vec::new();
    let mut step = |events: Vec<Event>, expect: &[&str], what: &str| {
        assert_eq!(kinds(&events), expect, "{what}");
        all.extend(events);
    };
    step(
        d.frame(0, &[D::Loc(lat + north(2000.0), lon), D::Soc(61.0)]),
        &[],
        "2 km out",
    );
    step(
        d.frame(
            60,
            &[
                D::Loc(lat + north(1500.0), lon),
                D::Dest(lat, lon),
                D::Minutes(4.5),
            ],
        ),
        &["fleetgate.arrival.approaching"],
        "ETA 4.5 min",
    );
    step(
        d.frame(90, &[D::Dest(lat, lon), D::Minutes(3.0)]),
        &[],
        "approaching only once",
    );
    step(
        d.frame(120, &[D::Loc(lat + north(300.0), lon)]),
        &[],
        "300 m: outside",
    );
    step(
        d.frame(130, &[D::Loc(lat + 0.45, lon)]),
        &[],
        "50 km jump in 10 s: jitter, held",
    );
    step(
        d.frame(140, &[D::Loc(lat + north(240.0), lon), D::Soc(60.5)]),
        &["fleetgate.site.entered", "fleetgate.arrival.arrived"],
        "240 m: inside",
    );
    step(
        d.frame(200, &[D::Loc(lat + north(290.0), lon)]),
        &[],
        "290 m: within the exit margin",
    );
    step(
        d.frame(
            260,
            &[
                D::Loc(lat + north(120.0), lon),
                D::Charge(Dcs::DetailedChargeStateCharging),
                D::Dc(10.0),
            ],
        ),
        &["fleetgate.charging.started"],
        "plugged in",
    );
    step(d.frame(600, &[D::Soc(79.0), D::Dc(22.0)]), &[], "charging");
    step(
        d.frame(900, &[D::Soc(80.0), D::Dc(23.5)]),
        &["fleetgate.arrival.charge_complete"],
        "target SoC",
    );
    step(
        d.frame(960, &[D::Charge(Dcs::DetailedChargeStateStopped)]),
        &["fleetgate.charging.stopped"],
        "unplugged",
    );
    step(
        d.frame(1000, &[D::Loc(lat + north(400.0), lon)]),
        &["fleetgate.site.exited"],
        "left",
    );
    step(
        d.frame(1100, &[D::Loc(lat + north(100.0), lon)]),
        &["fleetgate.site.entered"],
        "back again",
    );
    step(
        d.frame_ex(140, &[D::Loc(lat + north(240.0), lon)], true),
        &[],
        "old frame resent",
    );
    step(
        d.frame(1100, &[D::Loc(lat + north(100.0), lon)]),
        &[],
        "same frame again",
    );
    all
}

#[test]
fn arrival_drive_emits_the_exact_sequence() {
    let events = arrival_drive();
    let t = |s: i64| (T0 + s) * 1000;
    let expected = [
        (EventType::ArrivalApproaching, "w1", t(60)),
        (EventType::SiteEntered, "cafe", t(140)),
        (EventType::ArrivalArrived, "w1", t(140)),
        (EventType::ChargingStarted, "", t(260)),
        (EventType::ArrivalChargeComplete, "w1", t(900)),
        (EventType::ChargingStopped, "", t(960)),
        (EventType::SiteExited, "cafe", t(1000)),
        (EventType::SiteEntered, "cafe", t(1100)),
    ];
    assert_eq!(events.len(), expected.len());
    for (e, (kind, scope, time)) in events.iter().zip(expected) {
        assert_eq!(e.kind, kind);
        assert_eq!(e.time_ms, time);
        assert_eq!(e.id, event_id(kind, VIN, scope, time), "{kind:?}");
        assert_eq!(e.data["vin"], VIN);
    }
    assert_eq!(events[2].data["soc_at_arrival"], 60.5);
    assert_eq!(events[2].data["source"], "fleet_telemetry");
    assert_eq!(events[4].data["trigger"], "target_soc");
    assert_eq!(events[5].data["energy_added_kwh"], 13.5);
    assert_eq!(events[5].data["duration_s"], 700);
    assert_eq!(events[5].data["soc_gained"], 19.5);
    assert_eq!(events[5].data["reason"], "stopped");
    assert_eq!(events[6].data["dwell_s"], 860);
    // a restart (fresh engine) replaying the same frames yields the same ids
    let again: Vec<String> = arrival_drive().into_iter().map(|e| e.id).collect();
    assert_eq!(
        again,
        events.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
}

#[test]
fn charging_at_a_charger_then_a_stale_session() {
    let charger = (30.25, -97.75);
    let d = Drive::new(vec![
        circle("sc1", "charger", charger.0, charger.1, 60.0),
        circle("far", "charger", 30.30, -97.75, 60.0),
    ]);
    let near = (charger.0 + north(300.0), charger.1);
    d.frame(0, &[D::Loc(near.0, near.1), D::Soc(40.0), D::Dc(100.0)]);
    let started = d.frame(10, &[D::Charge(Dcs::DetailedChargeStateStarting)]);
    assert_eq!(kinds(&started), ["fleetgate.charging.started"]);
    assert_eq!(
        started[0].data["site_id"], "sc1",
        "nearest charger within 500 m"
    );
    assert!(
        d.frame(
            20,
            &[D::Charge(Dcs::DetailedChargeStateCharging), D::Soc(41.0)]
        )
        .is_empty(),
        "Starting → Charging is one session"
    );
    let stopped = d.frame(
        1210,
        &[
            D::Charge(Dcs::DetailedChargeStateComplete),
            D::Soc(70.0),
            D::Dc(130.25),
        ],
    );
    assert_eq!(kinds(&stopped), ["fleetgate.charging.stopped"]);
    assert_eq!(stopped[0].data["reason"], "complete");
    assert_eq!(stopped[0].data["energy_added_kwh"], 30.25);
    assert_eq!(stopped[0].data["duration_s"], 1200);
    assert_eq!(stopped[0].data["soc_gained"], 30.0);

    // a new session, then silence: the sweep closes it 15 min after the last frame
    assert_eq!(
        kinds(&d.frame(2000, &[D::Charge(Dcs::DetailedChargeStateCharging)])),
        ["fleetgate.charging.started"]
    );
    d.frame(2100, &[D::Soc(72.0)]);
    assert!(
        d.engine.sweep((T0 + 2100 + 899) * 1000).is_empty(),
        "not stale yet"
    );
    let stale = d.engine.sweep((T0 + 2100 + 900) * 1000);
    assert_eq!(kinds(&stale), ["fleetgate.charging.stopped"]);
    assert_eq!(stale[0].data["reason"], "stale");
    assert_eq!(
        stale[0].time_ms,
        (T0 + 2100 + 900) * 1000,
        "deterministic time: last frame + stale period"
    );
    assert!(d.engine.sweep((T0 + 5000) * 1000).is_empty(), "closed once");
}

#[test]
fn sites_at_the_antimeridian_near_a_pole_and_a_polygon_with_a_hole() {
    let text = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","id":"fiji","properties":{"radius_m":400},"geometry":{"type":"Point","coordinates":[179.9990,-16.5]}},
      {"type":"Feature","id":"alert","properties":{"radius_m":3000},"geometry":{"type":"Point","coordinates":[-62.35,89.99]}},
      {"type":"Feature","id":"mall","properties":{"kind":"merchant"},"geometry":{"type":"Polygon","coordinates":[
        [[-97.75,30.26],[-97.74,30.26],[-97.74,30.27],[-97.75,30.27],[-97.75,30.26]],
        [[-97.746,30.264],[-97.744,30.264],[-97.744,30.266],[-97.746,30.266],[-97.746,30.264]]]}}]}"#;
    let d = Drive::new(sites_from_geojson(text, 250.0).unwrap());
    // antimeridian: the fix is across the line from the center
    assert_eq!(
        kinds(&d.frame(0, &[D::Loc(-16.5, -179.9995)])),
        ["fleetgate.site.entered"]
    );
    let d = Drive::new(sites_from_geojson(text, 250.0).unwrap());
    assert_eq!(
        kinds(&d.frame(0, &[D::Loc(89.995, 117.0)])),
        ["fleetgate.site.entered"],
        "near the pole, other longitude"
    );
    let d = Drive::new(sites_from_geojson(text, 250.0).unwrap());
    assert!(
        d.frame(0, &[D::Loc(30.265, -97.745)]).is_empty(),
        "inside the hole"
    );
    let entered = d.frame(30, &[D::LocString("(30.262000 N, 97.748000 W)")]);
    assert_eq!(
        kinds(&entered),
        ["fleetgate.site.entered"],
        "legacy location string"
    );
    assert_eq!(entered[0].data["site_id"], "mall");
}

#[test]
fn a_watch_expires_once_and_a_watch_on_a_parked_vehicle_arrives() {
    let d = Drive::new(vec![circle("cafe", "merchant", CAFE.0, CAFE.1, 250.0)]);
    d.frame(0, &[D::Loc(CAFE.0, CAFE.1), D::Soc(50.0), D::Limit(90)]);
    // registered while the vehicle is already parked there: arrives on the next frame
    d.watch("w-late", "cafe", None, "2030-01-01T00:00:00Z");
    assert_eq!(
        kinds(&d.frame(10, &[D::Soc(51.0)])),
        ["fleetgate.arrival.arrived"]
    );
    // no target: the car's charge limit counts
    assert_eq!(
        kinds(&d.frame(20, &[D::Soc(90.0)])),
        ["fleetgate.arrival.charge_complete"]
    );

    d.watch("w-exp", "cafe", None, "2025-11-24T16:10:00Z");
    let exp_ms = 1_764_000_600_000;
    assert!(d.engine.sweep(exp_ms - 1).is_empty());
    let expired = d.engine.sweep(exp_ms);
    assert_eq!(kinds(&expired), ["fleetgate.arrival.expired"]);
    assert_eq!(
        expired[0].id,
        event_id(EventType::ArrivalExpired, VIN, "w-exp", exp_ms)
    );
    assert!(
        d.engine.sweep(exp_ms + 60_000).is_empty(),
        "expired once, watch removed"
    );
    assert!(d.engine.watches.get("w-exp").is_none());
}

#[test]
fn charge_state_complete_triggers_charge_complete_without_a_target() {
    let d = Drive::new(vec![circle("cafe", "merchant", CAFE.0, CAFE.1, 250.0)]);
    d.watch("w", "cafe", None, "2030-01-01T00:00:00Z");
    d.frame(0, &[D::Loc(CAFE.0, CAFE.1), D::Soc(50.0)]);
    let e = d.frame(60, &[D::Charge(Dcs::DetailedChargeStateComplete)]);
    assert_eq!(kinds(&e), ["fleetgate.arrival.charge_complete"]);
    assert_eq!(e[0].data["trigger"], "charge_state_complete");
}

/// The sites a vehicle is inside are found again by id when the site set changes under it
/// (each frame first tries where they sat in the index before): new sites shifting every
/// position re-fire nothing, a deleted site is dropped without an exit, the others still exit.
#[test]
fn a_changed_site_set_under_a_parked_vehicle_refires_nothing() {
    let (lat, lon) = (30.2672, -97.7431);
    let a = circle("a", "merchant", lat, lon, 250.0);
    let b = circle("b", "merchant", lat + north(50.0), lon, 250.0);
    let d = Drive::new(vec![a.clone(), b.clone()]);
    let entered = d.frame(0, &[D::Loc(lat, lon)]);
    assert_eq!(
        kinds(&entered),
        ["fleetgate.site.entered", "fleetgate.site.entered"]
    );
    // new sites first: a and b sit at other positions, one of them where the other was
    let far = |id: &str| circle(id, "merchant", lat + 1.0, lon, 100.0);
    d.engine
        .sites
        .replace(vec![far("x"), far("y"), b.clone(), far("z"), a.clone()]);
    assert!(
        d.frame(30, &[D::Loc(lat, lon)]).is_empty(),
        "still inside a and b"
    );
    d.engine.sites.replace(vec![b.clone(), a.clone()]);
    assert!(d.frame(60, &[D::Loc(lat, lon)]).is_empty(), "swapped back");
    // a is deleted: dropped quietly, b stays
    assert!(d.engine.sites.remove("a"));
    assert!(d.frame(90, &[D::Loc(lat, lon)]).is_empty());
    // leaving: only b exits
    let left = d.frame(120, &[D::Loc(lat - north(2_000.0), lon)]);
    assert_eq!(kinds(&left), ["fleetgate.site.exited"]);
    assert_eq!(left[0].data["site_id"], "b");
    // a is back: entering fires for it again (it was left while deleted)
    d.engine.sites.upsert(a.clone());
    let back = d.frame(150, &[D::Loc(lat, lon)]);
    assert_eq!(
        kinds(&back),
        ["fleetgate.site.entered", "fleetgate.site.entered"]
    );
}

/// A car without a navigation route still gets `arrival.approaching`: straight-line distance
/// to the site's edge ÷ its recent average speed, once that is within the watch's ETA.
#[test]
fn approaching_without_a_route_uses_straight_line_eta() {
    let d = Drive::new(vec![circle("cafe", "merchant", CAFE.0, CAFE.1, 250.0)]);
    d.watch("w1", "cafe", None, "2030-01-01T00:00:00Z");
    let (lat, lon) = CAFE;
    // 10 m/s straight towards the cafe: 5.25 km from the edge = 8.75 min, then 7.9, 7.1, 6.25
    for (i, km) in [5.5, 5.0, 4.5, 4.0].iter().enumerate() {
        let events = d.frame(i as i64 * 50, &[D::Loc(lat + north(km * 1000.0), lon)]);
        assert!(
            events.is_empty(),
            "{km} km out at 10 m/s is over 5 min away"
        );
    }
    let events = d.frame(200, &[D::Loc(lat + north(3500.0), lon)]);
    assert!(events.is_empty(), "3.5 km: 5.4 min");
    // 3.0 km out (2.75 km from the edge) at 10 m/s → 4.6 min ≤ 5
    let events = d.frame(250, &[D::Loc(lat + north(3000.0), lon)]);
    assert_eq!(kinds(&events), ["fleetgate.arrival.approaching"]);
    let data = &events[0].data;
    assert_eq!(data["eta_method"], "straight_line");
    assert_eq!(data["source"], "fleet_telemetry");
    let minutes = data["minutes_to_arrival"].as_f64().unwrap();
    assert!((4.3..=4.9).contains(&minutes), "{minutes} min");
    assert!(data.get("miles_to_arrival").is_none(), "no route, no miles");
    // once per watch
    let events = d.frame(300, &[D::Loc(lat + north(2500.0), lon)]);
    assert!(events.is_empty());
}

/// Driving away, standing still near the site, or crawling below walking pace never estimates
/// an arrival.
#[test]
fn straight_line_eta_needs_closing_in_at_driving_speed() {
    let d = Drive::new(vec![circle("cafe", "merchant", CAFE.0, CAFE.1, 250.0)]);
    d.watch("w1", "cafe", None, "2030-01-01T00:00:00Z");
    let (lat, lon) = CAFE;
    // away from the cafe at 10 m/s, starting 600 m out
    for (i, m) in [600.0, 1100.0, 1600.0, 2100.0].iter().enumerate() {
        let events = d.frame(i as i64 * 50, &[D::Loc(lat + north(*m), lon)]);
        assert!(events.is_empty(), "driving away at {m} m");
    }
    // parked 2.1 km out, a fix every minute
    for i in 0..5 {
        assert!(d
            .frame(200 + i * 60, &[D::Loc(lat + north(2100.0), lon)])
            .is_empty());
    }
    // 1 m/s towards it (walking): below the driving-speed floor, whatever the distance
    for i in 1..6 {
        let events = d.frame(
            500 + i * 60,
            &[D::Loc(lat + north(2100.0 - i as f64 * 60.0), lon)],
        );
        assert!(events.is_empty(), "crawling");
    }
}
