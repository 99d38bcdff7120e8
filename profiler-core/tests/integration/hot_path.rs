//! The hot path (decode + intern + apply) must not allocate per event once its stacks are
//! interned. A counting global allocator proves it; counts are per thread because the test
//! harness runs other tests concurrently.

use profiler_common::{EventHeader, EventKind};
use profiler_core::event::encode;
use profiler_core::heap::Mode;
use profiler_core::recorder::Recorder;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator; only counts on the side.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn record(kind: EventKind, addr: u64, size: u64, old_addr: u64, frames: &[u64]) -> Vec<u8> {
    let header = EventHeader {
        kind: kind as u32,
        tid: 1,
        ts_ns: 1,
        addr,
        size,
        old_addr,
        aux: 0,
        stack_depth: frames.len() as u32,
        flags: 0,
    };
    let mut bytes = Vec::new();
    encode(&header, frames, &mut bytes);
    bytes
}

/// A workload cycling through 64 addresses and 8 stacks: malloc, realloc in place, free.
fn workload() -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for i in 0..64u64 {
        let addr = 0x5555_0000_0000 + i * 32;
        let stack: Vec<u64> = (0..20)
            .map(|depth| 0x40_0000 + (i % 8) * 0x100 + depth)
            .collect();
        records.push(record(EventKind::Malloc, addr, 24, 0, &stack));
        records.push(record(EventKind::Realloc, addr, 32, addr, &stack));
        records.push(record(EventKind::Free, addr, 0, 0, &[]));
    }
    records
}

fn hot_path_allocates_nothing_once_warm(mode: Mode) {
    let records = workload();
    let mut recorder = Recorder::new(mode);
    let before = allocations();
    for record in &records {
        recorder.ingest(record).unwrap(); // warm-up: stacks interned, maps sized
    }
    assert!(
        allocations() > before,
        "the counter sees the warm-up's allocations"
    );
    let before = allocations();
    for _ in 0..100 {
        for record in &records {
            recorder.ingest(record).unwrap();
        }
    }
    assert_eq!(allocations() - before, 0, "hot path allocated");
    assert_eq!(recorder.events(), 101 * records.len() as u64);
    assert_eq!(recorder.stacks.len(), 8);
    let stats = recorder.heap.stats();
    assert_eq!(
        (stats.allocations, stats.frees, stats.live_blocks),
        (101 * 128, 101 * 64, 0)
    );
}

#[test]
fn run_mode_hot_path_allocates_nothing_once_warm() {
    hot_path_allocates_nothing_once_warm(Mode::Run);
}

#[test]
fn attach_mode_hot_path_allocates_nothing_once_warm() {
    hot_path_allocates_nothing_once_warm(Mode::Attach);
}

/// `cargo test --release -p profiler-core --test integration -- --ignored --nocapture`
#[test]
#[ignore = "throughput measurement, meaningful only in release builds"]
fn ingest_throughput() {
    let records = workload();
    let mut recorder = Recorder::new(Mode::Run);
    let rounds = 20_000;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for record in &records {
            recorder.ingest(record).unwrap();
        }
    }
    let events = (rounds * records.len()) as f64;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:.1} M events/s ({events} events in {secs:.3} s)",
        events / secs / 1e6
    );
}
