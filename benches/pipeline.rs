//! One frame through `Pipeline::on_frame`, without a socket: verify, decode and transform a
//! `V` frame (location, speed, SoC), update the table, run the rules over 100,000 sites, hand
//! the record to a sink that drops it, decide the ack. Reports time per frame (criterion) and
//! heap allocations per frame (a counting allocator around mimalloc), the number the frame-path
//! goal "no per-frame allocation on the ok path" is measured by.
//! Run: `cargo bench --bench pipeline`; with `FLEETGATE_ALLOC_TRACE=1` it also prints the stack
//! of every allocation three frames make.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use fleetgate::pipeline::{Answer, FrameState};
use fleetgate::tools::bench::drive::{self, dense_sites, Area, Discard};

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

/// 100,000 circle sites over a 1° × 1° area around the drive (dense, like the load bench).
const AREA: Area = Area {
    lat: 30.0,
    lon: -98.0,
    span: 1.0,
};

/// The `i`-th frame of the drive across the site area.
fn frame(i: u64) -> Vec<u8> {
    drive::frame(i, (30.2, -97.8), 10_000)
}

fn bench(c: &mut Criterion) {
    let sink = Arc::new(Discard::default());
    let pipeline = drive::pipeline(dense_sites(100_000, AREA), sink.clone());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = FrameState::new(&pipeline, tx);
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
            let (allocations, events) = (ALLOCATIONS.load(Ordering::Relaxed), sink.events());
            let answer = drive::apply(&pipeline, &mut state, bytes);
            assert!(matches!(answer, Answer::Ack { .. }), "{answer:?}");
            let made = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
            if sink.events() == events {
                quiet += 1;
                quiet_allocations += made;
            } else {
                eventful_allocations += made;
            }
        }
        (quiet, quiet_allocations, eventful_allocations)
    };
    run(&warm_up);
    let events_before = sink.events();
    let (quiet, quiet_allocations, eventful_allocations) = run(&counted);
    let events = sink.events() - events_before;
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
            let events = sink.events();
            TRACING.store(true, Ordering::Relaxed);
            let _ = drive::apply(&pipeline, &mut state, &bytes);
            TRACING.store(false, Ordering::Relaxed);
            let traces = std::mem::take(&mut *TRACES.lock().unwrap());
            if sink.events() == events {
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
                let answer = drive::apply(&pipeline, &mut state, &bytes);
                matches!(answer, Answer::Ack { .. })
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
