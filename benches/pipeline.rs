//! One frame through `Pipeline::on_frame`, without a socket: verify, decode and transform a
//! `V` frame (location, speed, SoC), update the table, run the rules over 100,000 sites, hand
//! the record to a sink that drops it, decide the ack. Reports time per frame (criterion) and
//! heap allocations per frame (a counting allocator around mimalloc), the number the frame-path
//! goal "no per-frame allocation on the ok path" is measured by.
//! Run: `cargo bench --bench pipeline`; with `FLEETGATE_ALLOC_TRACE=1` it also prints the stack
//! of every allocation three frames make.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
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

/// mimalloc, counting every allocation.
struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Set while `FLEETGATE_ALLOC_TRACE` asks where a few frames allocate.
static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The stacks traced during the current frame.
static TRACES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    static IN_TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Prints the stack of an allocation made while tracing (not of the tracer's own).
fn trace_allocation(size: usize) {
    if !TRACING.load(Ordering::Relaxed) || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = trace
        .lines()
        .filter(|l| {
            !(l.contains(" alloc::") || l.contains(" core::") || l.contains(" std::"))
                && l.contains(": ")
        })
        .skip(1)
        .take(6)
        .collect();
    TRACES.lock().unwrap().push(format!(
        "allocation of {size} bytes:\n{}",
        frames.join("\n")
    ));
    IN_TRACE.with(|t| t.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        trace_allocation(layout.size());
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        trace_allocation(new_size);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Takes every record and event, stores nothing; counts the events.
struct Discard;
static EVENTS: AtomicU64 = AtomicU64::new(0);
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
        EVENTS.fetch_add(1, Ordering::Relaxed);
        ticket.complete(true);
        Ok(())
    }
    fn flush(&self, _: Duration) -> usize {
        0
    }
}

const VIN: &str = "5YJ3E1EA7KF000001";

/// 100,000 circle sites over a 1° × 1° area around the drive (dense, like the load bench).
fn sites() -> Vec<Site> {
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..100_000)
        .map(|i| Site {
            id: format!("site-{i}"),
            name: format!("Site {i}"),
            kind: "merchant".into(),
            tags: Default::default(),
            shape: Shape::Circle {
                lat: 30.0 + next(),
                lon: -98.0 + next(),
                radius_m: 250.0,
            },
        })
        .collect()
}

/// The `i`-th frame of a drive across the site area.
fn frame(i: u64) -> Vec<u8> {
    let datum = |field: Field, value: V| Datum {
        key: field as i32,
        value: Some(Value { value: Some(value) }),
    };
    let payload = Payload {
        data: vec![
            datum(
                Field::Location,
                V::LocationValue(LocationValue {
                    latitude: 30.2 + (i % 10_000) as f64 * 0.00005,
                    longitude: -97.8 + (i % 10_000) as f64 * 0.00005,
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

fn bench(c: &mut Criterion) {
    let records: BTreeMap<String, Vec<String>> =
        [("V".to_string(), vec!["drop".to_string()])].into();
    let available: Vec<Arc<dyn Sink>> = vec![Arc::new(Discard)];
    let sinks = SinkRouter::new(&records, &BTreeMap::new(), &available)
        .and_then(|r| r.with_event_sinks(&["drop".to_string()]))
        .unwrap();
    let pipeline = Pipeline {
        sinks,
        rate_limit: RateLimit {
            enabled: false,
            message_limit: 1_000_000,
            interval: Duration::from_secs(1),
        },
        inflight_slots: Arc::new(tokio::sync::Semaphore::new(1000)),
        metrics: Arc::new(FrameMetrics::new(&["drop"])),
        fleet: Some(Fleet::new(RulesConfig::default(), sites())),
        changes_only: None,
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = FrameState::new(&pipeline, tx);
    let source = Source {
        device_id: VIN,
        sender_id: "vehicle_device.5YJ3E1EA7KF000001",
        client_version: "2024.44",
    };
    // frames carry increasing times: a frame older than the state would skip the rules
    let warm_up: Vec<Vec<u8>> = (0..10_000).map(frame).collect();
    let counted: Vec<Vec<u8>> = (10_000..20_000).map(frame).collect();
    let mut next = 20_000u64;

    // allocations per frame, over one pass of the drive (after a warm-up pass), apart for the
    // frames that raised an event (an event and its CloudEvent are built on the heap) and
    // those that did not (the ok path the "no per-frame allocation" goal is about)
    let mut run = |frames: &[Vec<u8>]| {
        let (mut quiet, mut quiet_allocations, mut eventful_allocations) = (0u64, 0u64, 0u64);
        for bytes in frames {
            let (allocations, events) = (
                ALLOCATIONS.load(Ordering::Relaxed),
                EVENTS.load(Ordering::Relaxed),
            );
            let answer = pipeline.on_frame(
                &mut state,
                source,
                bytes,
                1_764_000_000_000,
                Instant::now(),
                Slot::First,
            );
            assert!(matches!(answer, Answer::Ack { .. }), "{answer:?}");
            let made = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
            if EVENTS.load(Ordering::Relaxed) == events {
                quiet += 1;
                quiet_allocations += made;
            } else {
                eventful_allocations += made;
            }
        }
        (quiet, quiet_allocations, eventful_allocations)
    };
    run(&warm_up);
    let events_before = EVENTS.load(Ordering::Relaxed);
    let (quiet, quiet_allocations, eventful_allocations) = run(&counted);
    let events = EVENTS.load(Ordering::Relaxed) - events_before;
    let eventful = counted.len() as u64 - quiet;
    let per = |n: u64, d: u64| n as f64 / d.max(1) as f64;
    println!(
        "pipeline: {:.2} heap allocations per V frame over {} frames (location, speed, SoC; 100,000 sites; a sink that drops): \
         {:.2} per frame that raised no event ({quiet} frames), {:.1} per event ({events} events in {eventful} frames)",
        per(quiet_allocations + eventful_allocations, counted.len() as u64),
        counted.len(),
        per(quiet_allocations, quiet),
        per(eventful_allocations, events),
    );
    if std::env::var_os("FLEETGATE_ALLOC_TRACE").is_some() {
        // where the allocations of five frames that raised no event come from
        let mut shown = 0;
        for i in 30_000.. {
            let bytes = frame(i);
            let events = EVENTS.load(Ordering::Relaxed);
            TRACING.store(true, Ordering::Relaxed);
            let _ = pipeline.on_frame(
                &mut state,
                source,
                &bytes,
                1_764_000_000_000,
                Instant::now(),
                Slot::First,
            );
            TRACING.store(false, Ordering::Relaxed);
            let traces = std::mem::take(&mut *TRACES.lock().unwrap());
            if EVENTS.load(Ordering::Relaxed) == events {
                eprintln!("== frame {i}: {} allocations", traces.len());
                for t in traces {
                    eprintln!("{t}");
                }
                shown += 1;
                if shown == 5 {
                    break;
                }
            }
        }
    }

    c.bench_function("pipeline/on_frame V, 100k sites", |b| {
        b.iter_batched(
            || {
                next += 1;
                frame(next)
            },
            |bytes| {
                let answer = pipeline.on_frame(
                    &mut state,
                    source,
                    &bytes,
                    1_764_000_000_000,
                    Instant::now(),
                    Slot::First,
                );
                matches!(answer, Answer::Ack { .. })
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
