//! The hot path (decode + unwind + intern + apply) must not allocate per event once its
//! stacks are interned. A counting global allocator proves it; counts are per thread because the test
//! harness runs other tests concurrently.

use crate::workloads::{load_own_modules, record, snapshot_here, workload};
use profiler_common::{EventHeader, EventKind, FLAG_STACK_SNAPSHOT};
use profiler_core::event::encode_snapshot;
use profiler_core::heap::Mode;
use profiler_core::maps::ProcessMaps;
use profiler_core::recorder::Recorder;
use profiler_core::stacks::StackId;
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

#[test]
fn unwinding_hot_path_allocates_nothing_once_warm() {
    let maps = ProcessMaps::read_path(std::path::Path::new("/proc/self/maps")).unwrap();
    let (snapshot, stack) = snapshot_here(&maps);
    let mut records = Vec::new();
    for i in 0..64u64 {
        let addr = 0x5555_0000_0000 + i * 32;
        let header = EventHeader {
            kind: EventKind::Malloc as u32,
            tid: 1,
            ts_ns: 1,
            addr,
            size: 24,
            flags: FLAG_STACK_SNAPSHOT,
            ..EventHeader::default()
        };
        let mut bytes = Vec::new();
        encode_snapshot(&header, &snapshot, &stack, &mut bytes);
        records.push(bytes);
        records.push(record(EventKind::Free, addr, 0, 0, &[]));
    }
    let mut recorder = Recorder::new(Mode::Run);
    load_own_modules(&mut recorder, &maps);
    for record in &records {
        recorder.ingest(record).unwrap(); // warm-up: the stack interned, unwind rules cached
    }
    let before = allocations();
    for _ in 0..100 {
        for record in &records {
            recorder.ingest(record).unwrap();
        }
    }
    assert_eq!(allocations() - before, 0, "unwinding hot path allocated");
    assert_eq!(recorder.stacks.len(), 1, "one stack, interned once");
    let frames = recorder.stacks.get(StackId(0));
    assert_eq!(frames[0], snapshot.ip);
    assert!(frames.len() > 3, "unwound past this function: {frames:x?}");
    assert!(!recorder.stacks.is_truncated(StackId(0)));
    let stats = recorder.unwinder.stats;
    assert_eq!(
        (stats.stacks, stats.complete, stats.errors),
        (101 * 64, 101 * 64, 0)
    );
}
