//! A scripted drive for measuring the frame path without a socket (`benches/pipeline.rs`,
//! `tests/frame_allocations.rs`): dense circle sites over an area, the `V` frames of one
//! vehicle crossing it, a pipeline whose only sink keeps nothing and counts the events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::event::Event;
use crate::metrics::FrameMetrics;
use crate::pipeline::{Answer, FrameState, Pipeline, RateLimit, Slot, Source};
use crate::rules::sites::{Shape, Site};
use crate::rules::{Fleet, RulesConfig};
use crate::sinks::{DeliveryTicket, PublishError, Sink, SinkRecord, SinkRouter};
use crate::wire::proto::vehicle_data::{
    value::Value as V, Datum, Field, LocationValue, Payload, Value,
};
use crate::wire::{EnvelopeWriter, StreamView, Timestamp};

/// The driving vehicle.
pub const VIN: &str = "5YJ3E1EA7KF000001";

/// Its identity as the pipeline sees it (certificate CN and client version).
pub const SOURCE: Source<'static> = Source {
    device_id: VIN,
    sender_id: "vehicle_device.5YJ3E1EA7KF000001",
    client_version: "2024.44",
};

/// The area sites are spread over and the drive crosses: south-west corner and size (°).
#[derive(Debug, Clone, Copy)]
pub struct Area {
    /// Southern edge.
    pub lat: f64,
    /// Western edge.
    pub lon: f64,
    /// Height and width.
    pub span: f64,
}

/// `n` merchant circles of 250 m at pseudo-random places in `area` (the same every run).
pub fn dense_sites(n: usize, area: Area) -> Vec<Site> {
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| Site {
            id: format!("site-{i}"),
            name: format!("Site {i}"),
            kind: "merchant".into(),
            tags: Default::default(),
            shape: Shape::Circle {
                lat: area.lat + area.span * next(),
                lon: area.lon + area.span * next(),
                radius_m: 250.0,
            },
        })
        .collect()
}

/// The `i`-th frame of a diagonal drive from `start` (lat, lon), ~5.5 m north and east per
/// frame for `steps` frames, then again: location, speed and SoC, one second apart (a frame
/// older than the vehicle's state would skip the rules), with the vin the vehicle claims.
pub fn frame(i: u64, start: (f64, f64), steps: u64) -> Vec<u8> {
    let step = (i % steps) as f64 * 0.00005;
    frame_at(i, start.0 + step, start.1 + step)
}

/// The `i`-th frame of the vehicle, at (`lat`, `lon`): location, speed and SoC, one second
/// after frame `i - 1`.
pub fn frame_at(i: u64, lat: f64, lon: f64) -> Vec<u8> {
    v_frame(i, &payload_at(i, lat, lon))
}

/// The envelope of the vehicle's `i`-th `V` frame around `payload`: its txid, its creation
/// time (one second after frame `i - 1`), the vehicle's sender and device ids.
fn v_frame(i: u64, payload: &[u8]) -> Vec<u8> {
    EnvelopeWriter::new()
        .stream(
            format!("tx-{i}").as_bytes(),
            b"V",
            b"",
            &StreamView {
                created_at: 1_764_000_000 + i as u32,
                sender_id: SOURCE.sender_id.as_bytes(),
                payload,
                device_type: b"vehicle_device",
                device_id: VIN.as_bytes(),
                delivered_at_epoch_ms: 0,
            },
        )
        .to_vec()
}

/// One signal of a `V` payload.
fn datum(field: Field, value: V) -> Datum {
    Datum {
        key: field as i32,
        value: Some(Value { value: Some(value) }),
    }
}

/// The first `n` frames of a vehicle of the load scenarios (`fleetgate bench scenario steady`)
/// in their area ([`super::scenario::AREA`]), from its middle: 1 Hz, 30–60 km/h, turning a
/// little every second, with the signals the load client sends (location, speed, heading,
/// SoC, odometer). Deterministic: the same frames every run.
pub fn steady_drive(n: u64) -> Vec<Vec<u8>> {
    let (south, west, north, east) = super::scenario::AREA;
    let (mut lat, mut lon) = ((south + north) / 2.0, (west + east) / 2.0);
    let mut heading: f64 = 45.0;
    (0..n)
        .map(|i| {
            let turn = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as f64 - 31.5; // ±31.5°
            heading = (heading + turn / 4.0).rem_euclid(360.0);
            let speed_kmh = 45.0 + turn / 2.0;
            let meters = speed_kmh / 3.6;
            lat += meters * heading.to_radians().cos() / 111_320.0;
            lon += meters * heading.to_radians().sin() / (111_320.0 * lat.to_radians().cos());
            let payload = Payload {
                data: vec![
                    datum(
                        Field::Location,
                        V::LocationValue(LocationValue {
                            latitude: lat,
                            longitude: lon,
                        }),
                    ),
                    datum(
                        Field::VehicleSpeed,
                        V::DoubleValue((speed_kmh * 0.621_371 * 10.0).round() / 10.0),
                    ),
                    datum(Field::GpsHeading, V::DoubleValue(heading.round())),
                    datum(Field::Soc, V::DoubleValue(80.0 - i as f64 * 0.01)),
                    datum(Field::Odometer, V::DoubleValue(12_000.0 + i as f64 * 0.01)),
                ],
                created_at: Some(Timestamp {
                    seconds: 1_764_000_000 + i as i64,
                    nanos: 0,
                }),
                vin: VIN.into(),
                is_resend: false,
            }
            .encode_to_vec();
            v_frame(i, &payload)
        })
        .collect()
}

/// The protobuf `Payload` of [`frame_at`] (a `V` record's value in Kafka, as cluster mode's
/// rules read it).
pub fn payload_at(i: u64, lat: f64, lon: f64) -> Vec<u8> {
    Payload {
        data: vec![
            datum(
                Field::Location,
                V::LocationValue(LocationValue {
                    latitude: lat,
                    longitude: lon,
                }),
            ),
            datum(Field::VehicleSpeed, V::DoubleValue(40.0)),
            datum(Field::Soc, V::DoubleValue(60.0 + (i % 30) as f64)),
        ],
        created_at: Some(Timestamp {
            seconds: 1_764_000_000 + i as i64,
            nanos: 0,
        }),
        vin: VIN.into(),
        is_resend: false,
    }
    .encode_to_vec()
}

/// Takes every record and event and keeps none; counts the events.
#[derive(Default)]
pub struct Discard {
    events: AtomicU64,
}

impl Discard {
    /// Events taken so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

impl Sink for Discard {
    fn name(&self) -> &'static str {
        "drop"
    }
    fn publish(&self, _: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError> {
        ticket.complete(true);
        Ok(())
    }
    fn publish_event(
        &self,
        _: &Event,
        _: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        self.events.fetch_add(1, Ordering::Relaxed);
        ticket.complete(true);
        Ok(())
    }
    fn flush(&self, _: Duration) -> usize {
        0
    }
}

/// A pipeline with the rules over `sites`, `V` records and events to `sink`, no reliable
/// acks, no rate limit.
pub fn pipeline(sites: Vec<Site>, sink: Arc<Discard>) -> Pipeline {
    pipeline_with(sites, sink)
}

/// [`pipeline`] with any sink (the instruction gate's `pipeline-steady` renders the logger's
/// lines, as the load bench's `serve` does).
pub fn pipeline_with(sites: Vec<Site>, sink: Arc<dyn Sink>) -> Pipeline {
    let name = sink.name().to_string();
    let metrics = Arc::new(FrameMetrics::new(&[name.as_str()]));
    let records: BTreeMap<String, Vec<String>> = [("V".to_string(), vec![name.clone()])].into();
    let available: Vec<Arc<dyn Sink>> = vec![sink];
    let sinks = SinkRouter::new(&records, &BTreeMap::new(), &available)
        .and_then(|r| r.with_event_sinks(&[name]))
        .expect("a router over the bench's sink");
    let rules = crate::runner::local::LocalRules::start(
        Fleet::new(RulesConfig::default(), sites),
        sinks.clone(),
        None,
    )
    .expect("rules in memory start");
    Pipeline {
        sinks,
        rate_limit: RateLimit {
            enabled: false,
            message_limit: u32::MAX,
            interval: Duration::from_secs(1),
        },
        inflight_slots: Arc::new(tokio::sync::Semaphore::new(1000)),
        metrics,
        rules: Some(rules),
        changes_only: None,
    }
}

/// One frame of the drive through `pipeline`, received now from [`SOURCE`].
pub fn apply<'m>(pipeline: &Pipeline, state: &mut FrameState, bytes: &'m [u8]) -> Answer<'m> {
    pipeline.on_frame(
        state,
        SOURCE,
        bytes,
        1_764_000_000_000,
        std::time::Instant::now(),
        Slot::First,
    )
}
