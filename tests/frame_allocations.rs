//! The frame-path goal "no per-frame allocation on the ok path", held as a test: a `V` frame
//! that raises no event goes through the whole pipeline (envelope, payload decode and
//! transform, table, geofence walk over dense sites, SoC rules, a sink, the ack decision)
//! without one heap allocation once the connection and the vehicle are warm.
//! `cargo bench --bench pipeline` reports the same count with timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use fleetgate::pipeline::{Answer, FrameState};
use fleetgate::tools::bench::drive::{self, dense_sites, Area, Discard};

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

/// 20,000 sites of 250 m over 0.3° × 0.3°; the drive below stays inside several grown boxes,
/// so every frame walks a deep part of the R-tree.
const AREA: Area = Area {
    lat: 30.1,
    lon: -97.9,
    span: 0.3,
};

#[test]
fn a_v_frame_that_raises_no_event_allocates_nothing() {
    let sink = Arc::new(Discard::default());
    let pipeline = drive::pipeline(dense_sites(20_000, AREA), sink.clone());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = FrameState::new(&pipeline, tx);
    let frames: Vec<Vec<u8>> = (0..8_000)
        .map(|i| drive::frame(i, (30.15, -97.85), 4_000))
        .collect();
    let (warm_up, counted) = frames.split_at(4_000);
    let mut run = |frames: &[Vec<u8>]| {
        let (mut quiet, mut eventful, mut quiet_allocations) = (0u32, 0u32, 0u64);
        for (i, bytes) in frames.iter().enumerate() {
            let (before, events) = (allocations(), sink.events());
            let answer = drive::apply(&pipeline, &mut state, bytes);
            let made = allocations() - before;
            assert!(
                matches!(answer, Answer::Ack { .. }),
                "frame {i}: {answer:?}"
            );
            if sink.events() == events {
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
