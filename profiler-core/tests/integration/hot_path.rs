//! The hot path (decode + unwind + intern + apply) must not allocate per event once its
//! stacks are interned. A counting global allocator proves it; counts are per thread because the test
//! harness runs other tests concurrently.

use profiler_common::{EventHeader, EventKind, FLAG_STACK_SNAPSHOT, StackSnapshot};
use profiler_core::event::{encode, encode_snapshot};
use profiler_core::heap::Mode;
use profiler_core::maps::ProcessMaps;
use profiler_core::recorder::Recorder;
use profiler_core::stacks::StackId;
use profiler_core::unwind::ModuleImage;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

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

/// A stack snapshot of this thread, as the DWARF-mode probe takes one: registers read in
/// `snapshot_here`, then the stack from sp to the end of its mapping (at most 16 KiB).
#[inline(never)]
fn snapshot_here(maps: &ProcessMaps) -> (StackSnapshot, Vec<u8>) {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers; touches no memory and not the stack.
    unsafe {
        std::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let len = (maps.find(sp).expect("sp is mapped").end - sp).min(16384);
    let mut stack = vec![0u8; len as usize];
    // SAFETY: [sp, sp + len) is inside this thread's mapped stack, above this frame's locals
    // that change from here on.
    unsafe { std::ptr::copy_nonoverlapping(sp as *const u8, stack.as_mut_ptr(), len as usize) };
    let snapshot = StackSnapshot {
        ip,
        sp,
        bp,
        stack_bytes: len as u32,
        flags: 0,
    };
    (snapshot, stack)
}

/// Every executable file mapping of this process, loaded into the recorder's unwinder.
fn load_own_modules(recorder: &mut Recorder, maps: &ProcessMaps) {
    for mapping in maps.iter().filter(|m| m.is_file() && m.perms.contains('x')) {
        let file = std::fs::File::open(&mapping.path).unwrap();
        let image = Arc::new(ModuleImage::read(file, mapping.path.display().to_string()).unwrap());
        let bias = image.bias(mapping.start, mapping.offset).unwrap();
        recorder
            .unwinder
            .modules
            .add(mapping.start..mapping.end, bias, &image);
    }
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

/// Userspace cost of DWARF mode per event: decode + unwind + intern + apply of a real
/// snapshot of this test's stack (rules cached after the first).
/// `cargo test --release -p profiler-core --test integration -- --ignored --nocapture`
#[test]
#[ignore = "throughput measurement, meaningful only in release builds"]
fn unwinding_ingest_throughput() {
    let maps = ProcessMaps::read_path(std::path::Path::new("/proc/self/maps")).unwrap();
    let (snapshot, stack) = snapshot_here(&maps);
    let header = EventHeader {
        kind: EventKind::Malloc as u32,
        addr: 0x5555_0000_0000,
        size: 24,
        flags: FLAG_STACK_SNAPSHOT,
        ..EventHeader::default()
    };
    let mut malloc = Vec::new();
    encode_snapshot(&header, &snapshot, &stack, &mut malloc);
    let free = record(EventKind::Free, 0x5555_0000_0000, 0, 0, &[]);
    let mut recorder = Recorder::new(Mode::Run);
    load_own_modules(&mut recorder, &maps);
    let rounds = 200_000;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        recorder.ingest(&malloc).unwrap();
        recorder.ingest(&free).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let frames = recorder.stacks.get(StackId(0)).len();
    println!(
        "{:.3} us per malloc (snapshot of {} bytes, {frames} frames) + free",
        secs / rounds as f64 * 1e6,
        stack.len()
    );
}
