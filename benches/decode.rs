//! Envelope + payload decode + transforms of a typical `V` frame (15 datums).
//! Goal: >= 1,000,000 frames/s per core. Run: `cargo bench --bench decode`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetgate::wire::proto::vehicle_data::{
    value::Value as V, Datum, Field, LocationValue, Payload, ShiftState, Value,
};
use fleetgate::wire::{read_frame, EnvelopeWriter, StreamView};
use prost::Message;

// Same allocator as the shipped binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A frame like a driving vehicle sends: position, speed, SoC, energy, route, a legacy string.
pub fn typical_v_frame() -> Vec<u8> {
    v_frame(false)
}

/// The same frame as older firmware sends it: numbers as strings, one in scientific notation,
/// and the location as a string.
pub fn legacy_v_frame() -> Vec<u8> {
    v_frame(true)
}

fn v_frame(legacy: bool) -> Vec<u8> {
    let d = |key: Field, value: V| Datum {
        key: key as i32,
        value: Some(Value { value: Some(value) }),
    };
    let mut payload = Payload {
        data: vec![
            d(
                Field::Location,
                V::LocationValue(LocationValue {
                    latitude: 30.2672,
                    longitude: -97.7431,
                }),
            ),
            d(Field::VehicleSpeed, V::DoubleValue(41.5)),
            d(Field::Gear, V::ShiftStateValue(ShiftState::D as i32)),
            d(Field::Soc, V::DoubleValue(64.52)),
            d(Field::GpsHeading, V::DoubleValue(181.0)),
            d(Field::Odometer, V::DoubleValue(12034.7)),
            d(Field::BatteryLevel, V::DoubleValue(64.1)),
            d(Field::ChargeLimitSoc, V::IntValue(80)),
            d(Field::MinutesToArrival, V::DoubleValue(4.5)),
            d(Field::MilesToArrival, V::DoubleValue(2.8)),
            d(
                Field::DestinationLocation,
                V::LocationValue(LocationValue {
                    latitude: 30.25,
                    longitude: -97.75,
                }),
            ),
            d(Field::DcChargingEnergyIn, V::DoubleValue(12.25)),
            d(Field::AcChargingEnergyIn, V::DoubleValue(3.5)),
            d(Field::EstBatteryRange, V::DoubleValue(150.2)),
            d(
                Field::DestinationName,
                V::StringValue("Supercharger Austin, TX".into()),
            ),
        ],
        created_at: Some(fleetgate::wire::Timestamp {
            seconds: 1_764_000_000,
            nanos: 0,
        }),
        vin: String::new(),
        is_resend: false,
    };
    if legacy {
        for datum in &mut payload.data {
            let text = match &datum.value.as_ref().unwrap().value {
                Some(V::DoubleValue(v)) => format!("{v}"),
                Some(V::IntValue(v)) => format!("{v}"),
                Some(V::LocationValue(l)) => format!("({} N, {} W)", l.latitude, -l.longitude),
                _ => continue,
            };
            datum.value = Some(Value {
                value: Some(V::StringValue(text)),
            });
        }
        payload.data[13].value = Some(Value {
            value: Some(V::StringValue("1.502e2".into())),
        });
    }
    let mut w = EnvelopeWriter::new();
    w.stream(
        b"4f1c2a90-0001",
        b"V",
        b"",
        &StreamView {
            created_at: 1_764_000_000,
            sender_id: b"vehicle_device.5YJ3E1EA7KF000001",
            payload: &payload.encode_to_vec(),
            device_type: b"vehicle_device",
            device_id: b"5YJ3E1EA7KF000001",
            delivered_at_epoch_ms: 0,
        },
    )
    .to_vec()
}

fn bench(c: &mut Criterion) {
    let frame = typical_v_frame();
    let vin = "5YJ3E1EA7KF000001";
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("envelope_only", |b| b.iter(|| read_frame(&frame).unwrap()));
    group.bench_function("v_frame_15_datums_full", |b| {
        b.iter(|| read_frame(&frame).unwrap().into_record(vin, 0).unwrap())
    });
    let legacy = legacy_v_frame();
    group.bench_function("v_frame_15_legacy_strings_full", |b| {
        b.iter(|| read_frame(&legacy).unwrap().into_record(vin, 0).unwrap())
    });
    let mut w = EnvelopeWriter::new();
    group.bench_function("ack", |b| {
        b.iter(|| w.ack(b"4f1c2a90-0001", b"V", b"").len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
