//! The frame-path goal "no per-frame allocation on the ok path", held as a test: a `V` frame
//! that raises no event goes through the whole pipeline (envelope, payload decode and
//! transform, table, geofence walk over dense sites, SoC rules, a sink, the ack decision)
//! without one heap allocation once the connection and the vehicle are warm.
//! `cargo bench --bench pipeline` reports the same count with timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate::event::Event;
use fleetgate::metrics::FrameMetrics;
use fleetgate::pipeline::{Answer, FrameState, Pipeline, RateLimit, Slot, Source};
use fleetgate::rules::sites::{Shape, Site};
use fleetgate::rules::{Fleet, RulesConfig};
use fleetgate::sinks::{DeliveryTicket, PublishError, Sink, SinkRecord, SinkRouter};
use fleetgate::wire::proto::vehicle_data::{
    value::Value as V, Datum, Field, LocationValue, Payload, Value,
};
use fleetgate::wire::{EnvelopeWriter, StreamView, Timestamp};
use prost::Message;

/// The system allocator, counting the allocations of the calling thread (tests run in
/// parallel threads; only this test's own count matters).
struct PerThreadCount;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for PerThreadCount {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PerThreadCount = PerThreadCount;

fn allocations() -> u64 {
    ALLOCATIONS.with(|n| n.get())
}

static EVENTS: AtomicU64 = AtomicU64::new(0);

/// Takes every record and event and keeps none (a sink's own storage is not the frame path).
struct Discard;
impl Sink for Discard {
    fn name(&self) -> &'static str {
        "discard"
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
        EVENTS.fetch_add(1, Ordering::Relaxed);
        ticket.complete(true);
        Ok(())
    }
    fn flush(&self, _: Duration) -> usize {
        0
    }
}

const VIN: &str = "5YJ3E1EA7KF000001";

/// 20,000 sites of 250 m over 0.3° × 0.3°: the drive below is always inside several grown
/// boxes, so every frame walks a deep part of the R-tree.
fn dense_sites() -> Vec<Site> {
    let mut x = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..20_000)
        .map(|i| Site {
            id: format!("site-{i}"),
            name: format!("Site {i}"),
            kind: "merchant".into(),
            tags: Default::default(),
            shape: Shape::Circle {
                lat: 30.1 + 0.3 * next(),
                lon: -97.9 + 0.3 * next(),
                radius_m: 250.0,
            },
        })
        .collect()
}

/// The `i`-th frame of a drive across the site area: location, speed, SoC, and the vin the
/// vehicle claims (replaced by the certificate's, which takes the splice path).
fn frame(i: u64) -> Vec<u8> {
    let datum = |field: Field, value: V| Datum {
        key: field as i32,
        value: Some(Value { value: Some(value) }),
    };
    let step = (i % 4_000) as f64 * 0.00005;
    let payload = Payload {
        data: vec![
            datum(
                Field::Location,
                V::LocationValue(LocationValue {
                    latitude: 30.15 + step,
                    longitude: -97.85 + step,
                }),
            ),
            datum(Field::VehicleSpeed, V::DoubleValue(40.0)),
            datum(Field::Soc, V::DoubleValue(50.0 + (i % 20) as f64)),
        ],
        created_at: Some(Timestamp {
            seconds: 1_764_000_000 + i as i64,
            nanos: 0,
        }),
        vin: VIN.into(),
        is_resend: false,
    }
    .encode_to_vec();
    EnvelopeWriter::new()
        .stream(
            format!("tx-{i}").as_bytes(),
            b"V",
            b"",
            &StreamView {
                created_at: 1_764_000_000 + i as u32,
                sender_id: b"vehicle_device.5YJ3E1EA7KF000001",
                payload: &payload,
                device_type: b"vehicle_device",
                device_id: VIN.as_bytes(),
                delivered_at_epoch_ms: 0,
            },
        )
        .to_vec()
}

#[test]
fn a_v_frame_that_raises_no_event_allocates_nothing() {
    let records: BTreeMap<String, Vec<String>> =
        [("V".to_string(), vec!["discard".to_string()])].into();
    let available: Vec<Arc<dyn Sink>> = vec![Arc::new(Discard)];
    let sinks = SinkRouter::new(&records, &BTreeMap::new(), &available)
        .and_then(|r| r.with_event_sinks(&["discard".to_string()]))
        .unwrap();
    let pipeline = Pipeline {
        sinks,
        rate_limit: RateLimit {
            enabled: true,
            message_limit: 1_000_000,
            interval: Duration::from_secs(1),
        },
        inflight_slots: Arc::new(tokio::sync::Semaphore::new(1000)),
        metrics: Arc::new(FrameMetrics::new(&["discard"])),
        fleet: Some(Fleet::new(RulesConfig::default(), dense_sites())),
        changes_only: None,
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = FrameState::new(&pipeline, tx);
    let source = Source {
        device_id: VIN,
        sender_id: "vehicle_device.5YJ3E1EA7KF000001",
        client_version: "2024.44",
    };
    let frames: Vec<Vec<u8>> = (0..8_000).map(frame).collect();
    let (warm_up, counted) = frames.split_at(4_000);
    let mut run = |frames: &[Vec<u8>]| {
        let (mut quiet, mut eventful, mut quiet_allocations) = (0u32, 0u32, 0u64);
        for (i, bytes) in frames.iter().enumerate() {
            let (before, events) = (allocations(), EVENTS.load(Ordering::Relaxed));
            let answer = pipeline.on_frame(
                &mut state,
                source,
                bytes,
                1_764_000_000_000,
                Instant::now(),
                Slot::First,
            );
            let made = allocations() - before;
            assert!(
                matches!(answer, Answer::Ack { .. }),
                "frame {i}: {answer:?}"
            );
            if EVENTS.load(Ordering::Relaxed) == events {
                quiet += 1;
                quiet_allocations += made;
            } else {
                eventful += 1;
            }
        }
        (quiet, eventful, quiet_allocations)
    };
    run(warm_up);
    let (quiet, eventful, quiet_allocations) = run(counted);
    // the drive must really cross sites (events) and mostly not (the ok path measured)
    assert!(
        eventful > 10 && quiet > 3_000,
        "{quiet} quiet, {eventful} eventful"
    );
    assert_eq!(
        quiet_allocations, 0,
        "heap allocations over {quiet} V frames that raised no event"
    );
}
