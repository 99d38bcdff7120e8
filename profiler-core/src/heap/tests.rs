use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn malloc(addr: u64, size: u64, ts: u64) -> Event {
    Event::of(EventKind::Malloc)
        .addr(addr)
        .size(size)
        .at(ts)
        .tid(7)
}

fn free(addr: u64, ts: u64) -> Event {
    Event::of(EventKind::Free).addr(addr).at(ts).tid(7)
}

fn realloc(old: u64, addr: u64, size: u64, ts: u64) -> Event {
    Event::of(EventKind::Realloc)
        .addr(addr)
        .size(size)
        .old(old)
        .at(ts)
        .tid(7)
}

fn mmap(addr: u64, size: u64) -> Event {
    Event::of(EventKind::Mmap).addr(addr).size(size).tid(7)
}

fn munmap(addr: u64, size: u64) -> Event {
    Event::of(EventKind::Munmap).addr(addr).size(size).tid(7)
}

fn run(mode: Mode, events: &[Event]) -> HeapState {
    let mut heap = HeapState::new(mode);
    for (i, e) in events.iter().enumerate() {
        heap.apply(e, Some(StackId(i as u32)));
    }
    heap
}

fn regions(heap: &HeapState) -> Vec<(u64, u64)> {
    heap.regions().map(|(start, r)| (start, r.end)).collect()
}

#[test]
fn cxx_operators_allocate_and_free_like_malloc_and_free() {
    // A block from operator new may be released by free and the other way round (mimalloc's
    // operator delete is its free); each call counts under its own function.
    let heap = run(
        Mode::Run,
        &[
            Event::of(EventKind::OperatorNew)
                .addr(0x10)
                .size(16)
                .at(1)
                .tid(7),
            Event::of(EventKind::OperatorNew)
                .addr(0x40)
                .size(64)
                .aux(64)
                .at(2)
                .tid(7),
            malloc(0x80, 8, 3),
            Event::of(EventKind::OperatorDelete).addr(0x10).at(4).tid(7),
            Event::of(EventKind::OperatorDelete).addr(0x80).at(5).tid(7),
            free(0x40, 6),
        ],
    );
    let s = heap.stats();
    assert_eq!((s.allocations, s.frees, s.unknown_frees), (3, 3, 0));
    assert_eq!(s.bytes_allocated, 88);
    assert_eq!((s.live_blocks, s.live_bytes), (0, 0));
    let calls = |kind: EventKind| {
        let stats = s.by_function[kind as usize];
        (stats.calls, stats.bytes)
    };
    assert_eq!(calls(EventKind::OperatorNew), (2, 80));
    assert_eq!(calls(EventKind::OperatorDelete), (2, 24));
    assert_eq!(calls(EventKind::Free), (1, 64));
}

#[test]
fn malloc_free_counts_and_peak() {
    let heap = run(
        Mode::Run,
        &[
            malloc(0x10, 100, 1),
            Event::of(EventKind::Calloc)
                .addr(0x20)
                .size(50)
                .at(2)
                .tid(7),
            free(0x10, 3),
            malloc(0x30, 120, 4),
        ],
    );
    let s = heap.stats();
    assert_eq!(s.allocations, 3);
    assert_eq!(s.frees, 1);
    assert_eq!(s.bytes_allocated, 270);
    assert_eq!((s.live_blocks, s.live_bytes), (2, 170));
    assert_eq!(
        (s.peak_live_bytes, s.peak_live_blocks, s.peak_ts_ns),
        (170, 2, Some(4))
    );
    assert_eq!(
        s.by_function[EventKind::Malloc as usize],
        CallStats {
            calls: 2,
            bytes: 220
        }
    );
    assert_eq!(
        s.by_function[EventKind::Calloc as usize],
        CallStats {
            calls: 1,
            bytes: 50
        }
    );
    assert_eq!(
        s.by_function[EventKind::Free as usize],
        CallStats {
            calls: 1,
            bytes: 100
        }
    );
}

#[test]
fn peak_keeps_time_of_first_reach() {
    let heap = run(
        Mode::Run,
        &[malloc(0x10, 100, 1), free(0x10, 2), malloc(0x20, 100, 3)],
    );
    assert_eq!(heap.stats().peak_ts_ns, Some(1));
    assert_eq!(HeapState::new(Mode::Run).stats().peak_ts_ns, None);
}

#[test]
fn failed_allocation_counts_a_call_but_no_bytes() {
    let heap = run(Mode::Run, &[malloc(0, 1 << 40, 1)]);
    let s = heap.stats();
    assert_eq!(
        (s.allocations, s.failed_allocations, s.bytes_allocated),
        (1, 1, 0)
    );
    assert_eq!(
        s.by_function[EventKind::Malloc as usize],
        CallStats { calls: 1, bytes: 0 }
    );
    assert_eq!(s.live_blocks, 0);
}

#[test]
fn realloc_of_null_is_malloc() {
    let heap = run(Mode::Run, &[realloc(0, 0x10, 64, 1)]);
    let s = heap.stats();
    assert_eq!(
        (
            s.allocations,
            s.live_blocks,
            s.live_bytes,
            s.unknown_reallocs
        ),
        (1, 1, 64, 0)
    );
    let (_, block) = heap.blocks().next().unwrap();
    assert_eq!(block.kind, EventKind::Realloc);
}

#[test]
fn realloc_to_zero_frees_without_being_a_free_or_a_failure() {
    let heap = run(Mode::Run, &[malloc(0x10, 64, 1), realloc(0x10, 0, 0, 2)]);
    let s = heap.stats();
    assert_eq!((s.allocations, s.failed_allocations, s.frees), (2, 0, 0));
    assert_eq!((s.live_blocks, s.live_bytes), (0, 0));
    assert_eq!(s.by_function[EventKind::Free as usize].calls, 0);
}

#[test]
fn failed_realloc_keeps_old_block() {
    let heap = run(
        Mode::Run,
        &[malloc(0x10, 64, 1), realloc(0x10, 0, 1 << 40, 2)],
    );
    let s = heap.stats();
    assert_eq!((s.allocations, s.failed_allocations), (2, 1));
    assert_eq!(
        (s.live_blocks, s.live_bytes, s.bytes_allocated),
        (1, 64, 64)
    );
}

#[test]
fn realloc_moves_or_resizes_in_place() {
    let moved = run(
        Mode::Run,
        &[malloc(0x10, 64, 1), realloc(0x10, 0x20, 100, 2)],
    );
    let s = moved.stats();
    assert_eq!(
        (s.live_blocks, s.live_bytes, s.bytes_allocated),
        (1, 100, 164)
    );
    assert_eq!(moved.blocks().next().unwrap().0, 0x20);
    assert_eq!(s.overwritten_blocks, 0);

    let in_place = run(
        Mode::Run,
        &[malloc(0x10, 64, 1), realloc(0x10, 0x10, 32, 2)],
    );
    let s = in_place.stats();
    assert_eq!(
        (s.live_blocks, s.live_bytes, s.overwritten_blocks),
        (1, 32, 0)
    );
    assert_eq!(s.peak_live_bytes, 64);
    let (_, block) = in_place.blocks().next().unwrap();
    assert_eq!(
        (block.size, block.ts_ns, block.stack),
        (32, 2, Some(StackId(1)))
    );
}

#[test]
fn realloc_of_unknown_pointer_is_counted_and_tracks_the_result() {
    let heap = run(Mode::Attach, &[realloc(0x10, 0x20, 8, 1)]);
    let s = heap.stats();
    assert_eq!((s.unknown_reallocs, s.live_blocks, s.live_bytes), (1, 1, 8));
}

#[test]
fn double_free_in_run_mode_is_recorded_with_the_alloc_site() {
    let heap = run(
        Mode::Run,
        &[
            malloc(0x10, 24, 1),
            free(0x10, 2),
            // The second free's caller returns to 0x401234.
            Event::of(EventKind::Free)
                .addr(0x10)
                .aux(0x40_1234)
                .at(3)
                .tid(7),
        ],
    );
    let s = heap.stats();
    assert_eq!((s.frees, s.double_frees, s.unknown_frees), (1, 1, 0));
    assert_eq!(s.by_function[EventKind::Free as usize].calls, 2);
    assert_eq!(
        heap.double_frees(),
        [DoubleFree {
            addr: 0x10,
            size: 24,
            alloc_stack: Some(StackId(0)),
            ts_ns: 3,
            tid: 7,
            freed_from: 0x40_1234,
        }]
    );
}

#[test]
fn the_same_sequence_in_attach_mode_is_an_unknown_free() {
    let heap = run(
        Mode::Attach,
        &[malloc(0x10, 24, 1), free(0x10, 2), free(0x10, 3)],
    );
    let s = heap.stats();
    assert_eq!((s.frees, s.double_frees, s.unknown_frees), (1, 0, 1));
    assert!(heap.double_frees().is_empty());
    // Still remembered as freed, for the leak check: its memory is the allocator's.
    assert_eq!(heap.freed_blocks().collect::<Vec<_>>(), [(0x10, 24)]);
}

#[test]
fn a_freed_address_handed_out_again_is_live_not_freed() {
    for mode in [Mode::Run, Mode::Attach] {
        let heap = run(
            mode,
            &[malloc(0x10, 24, 1), free(0x10, 2), malloc(0x10, 8, 3)],
        );
        assert_eq!(heap.freed_blocks().count(), 0, "{mode:?}");
        assert!(heap.is_live(0x10), "{mode:?}");
    }
}

fn internal(mut event: Event) -> Event {
    event.flags |= FLAG_ALLOCATOR_INTERNAL;
    event
}

#[test]
fn allocator_frees_of_freed_or_unknown_pointers_are_counted_apart() {
    // glibc's thread exit: the tcache's chunks (freed by the program) and the tcache itself
    // (never returned by malloc) go through free again, from libc's code.
    for mode in [Mode::Run, Mode::Attach] {
        let heap = run(
            mode,
            &[
                malloc(0x10, 24, 1),
                free(0x10, 2),
                internal(free(0x10, 3)),
                internal(free(0x900, 4)),
            ],
        );
        let s = heap.stats();
        assert_eq!(
            (
                s.frees,
                s.double_frees,
                s.unknown_frees,
                s.allocator_internal_frees
            ),
            (1, 0, 0, 2),
            "{mode:?}"
        );
        assert!(heap.double_frees().is_empty());
        assert_eq!(s.by_function[EventKind::Free as usize].calls, 3);
    }
}

#[test]
fn an_allocator_free_of_a_live_block_is_an_ordinary_free() {
    // libc freeing what the program's calls into libc allocated (fclose's buffer).
    let heap = run(Mode::Run, &[malloc(0x10, 24, 1), internal(free(0x10, 2))]);
    let s = heap.stats();
    assert_eq!(
        (s.frees, s.allocator_internal_frees, s.live_blocks),
        (1, 0, 0)
    );
}

#[test]
fn a_program_double_free_after_allocator_frees_is_still_reported() {
    let heap = run(
        Mode::Run,
        &[
            malloc(0x10, 24, 1),
            free(0x10, 2),
            internal(free(0x10, 3)),
            free(0x10, 4),
        ],
    );
    let s = heap.stats();
    assert_eq!((s.double_frees, s.allocator_internal_frees), (1, 1));
    assert_eq!(heap.double_frees()[0].alloc_stack, Some(StackId(0)));
    assert_eq!(heap.double_frees()[0].ts_ns, 4);
}

#[test]
fn allocator_mmaps_are_not_regions_and_its_untracked_munmaps_not_unknown() {
    let heap = run(
        Mode::Run,
        &[
            // A thread's arena, mapped inside free, then trimmed and unmapped by libc.
            internal(mmap(0x4000_0000, 64 << 20)),
            internal(munmap(0x4000_0000, 4096)),
            // A thread stack: mapped and unmapped by libc, tracked like any region.
            mmap(0x10_0000, 4 * 4096),
            internal(munmap(0x10_0000, 4 * 4096)),
            // The program unmapping what nobody saw mapped.
            munmap(0x90_0000, 4096),
        ],
    );
    let m = heap.stats().mmap;
    assert_eq!(
        (
            m.calls,
            m.allocator_internal_mmaps,
            m.bytes,
            m.live_regions,
            m.live_bytes
        ),
        (2, 1, 4 * 4096, 0, 0)
    );
    assert_eq!(
        (
            m.munmap_calls,
            m.unknown_munmaps,
            m.allocator_internal_munmaps
        ),
        (3, 1, 1)
    );
    assert_eq!(m.peak_bytes, 4 * 4096);
}

#[test]
fn reuse_of_an_address_ends_its_freed_state() {
    let heap = run(
        Mode::Run,
        &[
            malloc(0x10, 8, 1),
            free(0x10, 2),
            malloc(0x10, 8, 3),
            free(0x10, 4),
            free(0x20, 5),
        ],
    );
    let s = heap.stats();
    assert_eq!((s.frees, s.double_frees, s.unknown_frees), (2, 0, 1));
}

#[test]
fn free_after_realloc_moved_the_block_is_a_double_free() {
    let heap = run(
        Mode::Run,
        &[
            malloc(0x10, 8, 1),
            realloc(0x10, 0x20, 16, 2),
            free(0x10, 3),
        ],
    );
    assert_eq!(heap.stats().double_frees, 1);
    assert_eq!(heap.double_frees()[0].size, 8);
}

#[test]
fn allocation_over_a_live_block_replaces_it() {
    let heap = run(Mode::Run, &[malloc(0x10, 8, 1), malloc(0x10, 40, 2)]);
    let s = heap.stats();
    assert_eq!(
        (s.overwritten_blocks, s.live_blocks, s.live_bytes),
        (1, 1, 40)
    );
    assert_eq!(s.bytes_allocated, 48);
}

#[test]
fn double_free_records_are_capped_but_counted() {
    let mut events = vec![malloc(0x10, 8, 0), free(0x10, 0)];
    events.extend((0..MAX_DOUBLE_FREE_RECORDS + 5).map(|_| free(0x10, 1)));
    let heap = run(Mode::Run, &events);
    assert_eq!(
        heap.stats().double_frees,
        MAX_DOUBLE_FREE_RECORDS as u64 + 5
    );
    assert_eq!(heap.double_frees().len(), MAX_DOUBLE_FREE_RECORDS);
}

#[test]
fn mmap_failures_and_page_rounding() {
    let heap = run(
        Mode::Run,
        &[mmap(MAP_FAILED, 4096), mmap(0, 4096), mmap(0x10_0000, 5000)],
    );
    let m = heap.stats().mmap;
    assert_eq!((m.calls, m.failed_calls, m.bytes), (3, 2, 8192));
    assert_eq!(
        (m.live_regions, m.live_bytes, m.peak_bytes),
        (1, 8192, 8192)
    );
    assert_eq!(regions(&heap), [(0x10_0000, 0x10_2000)]);
    // Regions are not heap blocks.
    assert_eq!((heap.stats().live_blocks, heap.stats().live_bytes), (0, 0));
}

#[test]
fn partial_munmap_splits_a_region() {
    let heap = run(
        Mode::Run,
        &[mmap(0x10_0000, 4 * 4096), munmap(0x10_1000, 4096)],
    );
    assert_eq!(
        regions(&heap),
        [(0x10_0000, 0x10_1000), (0x10_2000, 0x10_4000)]
    );
    let m = heap.stats().mmap;
    assert_eq!(
        (m.live_regions, m.live_bytes, m.peak_bytes),
        (2, 3 * 4096, 4 * 4096)
    );
    assert_eq!((m.munmap_calls, m.unknown_munmaps), (1, 0));
    assert_eq!(
        heap.stats().by_function[EventKind::Munmap as usize].bytes,
        4096
    );
}

#[test]
fn munmap_spanning_several_regions_and_untracked_munmap() {
    let heap = run(
        Mode::Run,
        &[
            mmap(0x10_0000, 2 * 4096),
            mmap(0x10_3000, 2 * 4096),
            munmap(0x10_1000, 3 * 4096),
            munmap(0x90_0000, 4096),
        ],
    );
    assert_eq!(
        regions(&heap),
        [(0x10_0000, 0x10_1000), (0x10_4000, 0x10_5000)]
    );
    let m = heap.stats().mmap;
    assert_eq!(
        (m.munmap_calls, m.unknown_munmaps, m.live_bytes),
        (2, 1, 2 * 4096)
    );
}

#[test]
fn fixed_mmap_replaces_the_pages_it_covers() {
    let heap = run(
        Mode::Run,
        &[mmap(0x10_0000, 4 * 4096), mmap(0x10_1000, 4096)],
    );
    assert_eq!(
        regions(&heap),
        [
            (0x10_0000, 0x10_1000),
            (0x10_1000, 0x10_2000),
            (0x10_2000, 0x10_4000)
        ]
    );
    assert_eq!(heap.stats().mmap.live_bytes, 4 * 4096);
}

#[test]
fn mremap_moves_a_region_and_ignores_failures() {
    let heap = run(
        Mode::Run,
        &[
            mmap(0x10_0000, 4096),
            Event::of(EventKind::Mremap)
                .addr(MAP_FAILED)
                .size(8192)
                .old(0x10_0000)
                .aux(4096)
                .tid(7),
            Event::of(EventKind::Mremap)
                .addr(0x20_0000)
                .size(3 * 4096)
                .old(0x10_0000)
                .aux(4096)
                .tid(7),
        ],
    );
    assert_eq!(regions(&heap), [(0x20_0000, 0x20_3000)]);
    let s = heap.stats();
    assert_eq!(
        s.by_function[EventKind::Mremap as usize],
        CallStats {
            calls: 2,
            bytes: 3 * 4096
        }
    );
    assert_eq!(
        (s.mmap.live_bytes, s.mmap.peak_bytes, s.mmap.calls),
        (3 * 4096, 3 * 4096, 1)
    );
}

// ---- property test against a naive model ----

const SLOTS: u64 = 12;
const PAGES: u64 = 40;
const HEAP_BASE: u64 = 0x5555_0000;
const MAP_BASE: u64 = 0x7f00_0000_0000;

fn slot_addr(slot: u64) -> u64 {
    if slot == 0 { 0 } else { HEAP_BASE + slot * 16 }
}

fn page_addr(page: u64) -> u64 {
    MAP_BASE + page * PAGE_SIZE
}

const ALLOCATORS: [EventKind; 7] = [
    EventKind::Malloc,
    EventKind::Calloc,
    EventKind::PosixMemalign,
    EventKind::AlignedAlloc,
    EventKind::Memalign,
    EventKind::Valloc,
    EventKind::Pvalloc,
];

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        kind: usize,
        slot: u64,
        size: u64,
    },
    Realloc {
        array: bool,
        old: u64,
        new: u64,
        size: u64,
    },
    Free {
        slot: u64,
    },
    Mmap {
        page: u64,
        size: u64,
        failed: bool,
    },
    Munmap {
        page: u64,
        size: u64,
    },
    Mremap {
        old: u64,
        old_size: u64,
        new: u64,
        size: u64,
        failed: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..=SLOTS;
    let page = 0..PAGES;
    let map_len = 0..=6 * PAGE_SIZE;
    prop_oneof![
        4 => (0..ALLOCATORS.len(), slot.clone(), 0..200u64)
            .prop_map(|(kind, slot, size)| Op::Alloc { kind, slot, size }),
        3 => (any::<bool>(), slot.clone(), slot.clone(), prop_oneof![Just(0u64), 0..200u64])
            .prop_map(|(array, old, new, size)| Op::Realloc { array, old, new, size }),
        4 => (1..=SLOTS).prop_map(|slot| Op::Free { slot }),
        2 => (page.clone(), map_len.clone(), proptest::bool::weighted(0.1))
            .prop_map(|(page, size, failed)| Op::Mmap { page, size, failed }),
        2 => (page.clone(), map_len.clone()).prop_map(|(page, size)| Op::Munmap { page, size }),
        1 => (page.clone(), map_len.clone(), page, map_len, proptest::bool::weighted(0.1))
            .prop_map(|(old, old_size, new, size, failed)| Op::Mremap { old, old_size, new, size, failed }),
    ]
}

fn to_event(op: &Op, ts: u64) -> Event {
    match *op {
        Op::Alloc { kind, slot, size } => Event::of(ALLOCATORS[kind])
            .addr(slot_addr(slot))
            .size(size)
            .at(ts)
            .tid(7),
        Op::Realloc {
            array,
            old,
            new,
            size,
        } => {
            let kind = if array {
                EventKind::Reallocarray
            } else {
                EventKind::Realloc
            };
            Event::of(kind)
                .addr(slot_addr(new))
                .size(size)
                .old(slot_addr(old))
                .at(ts)
                .tid(7)
        }
        Op::Free { slot } => Event::of(EventKind::Free)
            .addr(slot_addr(slot))
            .at(ts)
            .tid(7),
        Op::Mmap { page, size, failed } => {
            let addr = if failed { MAP_FAILED } else { page_addr(page) };
            Event::of(EventKind::Mmap)
                .addr(addr)
                .size(size)
                .at(ts)
                .tid(7)
        }
        Op::Munmap { page, size } => Event::of(EventKind::Munmap)
            .addr(page_addr(page))
            .size(size)
            .at(ts)
            .tid(7),
        Op::Mremap {
            old,
            old_size,
            new,
            size,
            failed,
        } => {
            let addr = if failed { MAP_FAILED } else { page_addr(new) };
            Event::of(EventKind::Mremap)
                .addr(addr)
                .size(size)
                .old(page_addr(old))
                .aux(old_size)
                .at(ts)
                .tid(7)
        }
    }
}

/// The semantics restated as plainly as possible: blocks in a BTreeMap, mapped memory as a
/// set of pages each labelled with the call that mapped it.
struct Model {
    mode: Mode,
    live: BTreeMap<u64, u64>,
    freed: BTreeSet<u64>,
    pages: BTreeMap<u64, u64>,
    next_region: u64,
    stats: HeapStats,
}

impl Model {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            live: BTreeMap::new(),
            freed: BTreeSet::new(),
            pages: BTreeMap::new(),
            next_region: 0,
            stats: HeapStats::default(),
        }
    }

    fn insert(&mut self, kind: EventKind, addr: u64, size: u64) {
        self.stats.bytes_allocated += size;
        self.stats.by_function[kind as usize].bytes += size;
        if self.live.insert(addr, size).is_some() {
            self.stats.overwritten_blocks += 1;
        }
        self.freed.remove(&addr);
    }

    fn release(&mut self, addr: u64) -> bool {
        match self.live.remove(&addr) {
            Some(_) => {
                if self.mode == Mode::Run {
                    self.freed.insert(addr);
                }
                true
            }
            None => false,
        }
    }

    fn pages_of(start: u64, len: u64) -> std::ops::Range<u64> {
        let first = start / PAGE_SIZE;
        first..first + len.div_ceil(PAGE_SIZE)
    }

    fn unmap(&mut self, start: u64, len: u64) -> u64 {
        let removed = Self::pages_of(start, len)
            .filter(|p| self.pages.remove(p).is_some())
            .count() as u64;
        removed * PAGE_SIZE
    }

    fn map(&mut self, start: u64, len: u64) -> u64 {
        self.next_region += 1;
        let pages = Self::pages_of(start, len);
        let count = pages.end - pages.start;
        for p in pages {
            self.pages.insert(p, self.next_region);
        }
        count * PAGE_SIZE
    }

    fn apply(&mut self, e: &Event) {
        let s = &mut self.stats;
        s.by_function[e.kind as usize].calls += 1;
        match e.kind {
            EventKind::Free => {
                if let Some(&size) = self.live.get(&e.addr) {
                    self.stats.frees += 1;
                    self.stats.by_function[EventKind::Free as usize].bytes += size;
                    self.release(e.addr);
                } else if self.freed.contains(&e.addr) {
                    self.stats.double_frees += 1;
                } else {
                    self.stats.unknown_frees += 1;
                }
            }
            EventKind::Realloc | EventKind::Reallocarray => {
                s.allocations += 1;
                if e.old_addr == 0 {
                    if e.addr == 0 {
                        s.failed_allocations += 1;
                    } else {
                        self.insert(e.kind, e.addr, e.size);
                    }
                } else if e.addr == 0 && e.size == 0 {
                    if !self.release(e.old_addr) {
                        self.stats.unknown_reallocs += 1;
                    }
                } else if e.addr == 0 {
                    s.failed_allocations += 1;
                } else {
                    if !self.release(e.old_addr) {
                        self.stats.unknown_reallocs += 1;
                    }
                    self.insert(e.kind, e.addr, e.size);
                }
            }
            EventKind::Mmap => {
                s.mmap.calls += 1;
                if e.addr == MAP_FAILED {
                    s.mmap.failed_calls += 1;
                } else {
                    let len = self.map(e.addr, e.size);
                    self.stats.mmap.bytes += len;
                    self.stats.by_function[EventKind::Mmap as usize].bytes += len;
                }
            }
            EventKind::Munmap => {
                s.mmap.munmap_calls += 1;
                let removed = self.unmap(e.addr, e.size);
                if removed == 0 {
                    self.stats.mmap.unknown_munmaps += 1;
                }
                self.stats.by_function[EventKind::Munmap as usize].bytes += removed;
            }
            EventKind::Mremap => {
                if e.addr != MAP_FAILED {
                    self.unmap(e.old_addr, e.aux);
                    let len = self.map(e.addr, e.size);
                    self.stats.by_function[EventKind::Mremap as usize].bytes += len;
                }
            }
            _ => {
                s.allocations += 1;
                if e.addr == 0 {
                    s.failed_allocations += 1;
                } else {
                    self.insert(e.kind, e.addr, e.size);
                }
            }
        }
        let s = &mut self.stats;
        s.live_blocks = self.live.len() as u64;
        s.live_bytes = self.live.values().sum();
        if s.live_bytes > s.peak_live_bytes {
            s.peak_live_bytes = s.live_bytes;
            s.peak_live_blocks = s.live_blocks;
            s.peak_ts_ns = Some(e.ts_ns);
        }
        s.mmap.live_bytes = self.pages.len() as u64 * PAGE_SIZE;
        s.mmap.peak_bytes = s.mmap.peak_bytes.max(s.mmap.live_bytes);
        let live_regions = self.regions().len() as u64;
        self.stats.mmap.live_regions = live_regions;
    }

    /// Maximal runs of consecutive pages mapped by the same call.
    fn regions(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        for (&page, &id) in &self.pages {
            match runs.last_mut() {
                Some((_, end, run_id)) if *end == page && *run_id == id => *end += 1,
                _ => runs.push((page, page + 1, id)),
            }
        }
        runs.into_iter()
            .map(|(start, end, _)| (start * PAGE_SIZE, end * PAGE_SIZE))
            .collect()
    }
}

fn check_against_model(mode: Mode, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut heap = HeapState::new(mode);
    let mut model = Model::new(mode);
    for (i, op) in ops.iter().enumerate() {
        let e = to_event(op, i as u64 + 1);
        heap.apply(&e, None);
        model.apply(&e);
        prop_assert_eq!(heap.stats(), &model.stats, "after op {} {:?}", i, op);
    }
    let blocks: BTreeMap<u64, u64> = heap.blocks().map(|(a, b)| (a, b.size)).collect();
    prop_assert_eq!(&blocks, &model.live);
    prop_assert_eq!(regions(&heap), model.regions());
    let records = model.stats.double_frees.min(MAX_DOUBLE_FREE_RECORDS as u64);
    prop_assert_eq!(heap.double_frees().len() as u64, records);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_naive_model_in_run_mode(ops in proptest::collection::vec(op(), 0..120)) {
        check_against_model(Mode::Run, &ops)?;
    }

    #[test]
    fn matches_naive_model_in_attach_mode(ops in proptest::collection::vec(op(), 0..120)) {
        check_against_model(Mode::Attach, &ops)?;
    }
}

#[test]
fn effects_name_the_blocks_each_event_touched() {
    let mut heap = HeapState::new(Mode::Run);
    let stack = Some(StackId(3));
    let born = heap.apply(&malloc(0x10, 100, 1), stack);
    let block = Block {
        size: 100,
        kind: EventKind::Malloc,
        tid: 7,
        ts_ns: 1,
        stack,
    };
    assert_eq!(born.created, Some((0x10, block)));
    assert_eq!(
        (born.released, born.overwritten, born.new_peak),
        (None, None, true)
    );

    let moved = heap.apply(&realloc(0x10, 0x40, 300, 2), Some(StackId(4)));
    assert_eq!(moved.released, Some((0x10, block)));
    assert_eq!(
        moved.created.map(|(addr, b)| (addr, b.size)),
        Some((0x40, 300))
    );
    assert!(moved.new_peak);

    let replaced = heap.apply(&malloc(0x40, 8, 3), None);
    assert_eq!(
        replaced.overwritten.map(|(addr, b)| (addr, b.size)),
        Some((0x40, 300))
    );
    assert!(!replaced.new_peak);

    let gone = heap.apply(&free(0x40, 4), None);
    assert_eq!(
        gone.released.map(|(addr, b)| (addr, b.size)),
        Some((0x40, 8))
    );
    assert_eq!(
        heap.apply(&free(0x40, 5), None),
        Effect::default(),
        "double free changes nothing"
    );
}

#[test]
fn an_exec_releases_what_was_live_without_counting_frees_or_calls() {
    let released = |mut event: Event| {
        event.flags |= FLAG_RELEASED_BY_EXEC;
        event
    };
    let heap = run(
        Mode::Run,
        &[
            malloc(0x1000, 64, 1),
            malloc(0x2000, 100, 2),
            free(0x2000, 3),
            mmap(0x10_0000, 8192),
            released(free(0x1000, 4)),
            released(munmap(0x10_0000, 8192)),
        ],
    );
    let stats = heap.stats();
    assert_eq!((stats.live_blocks, stats.live_bytes), (0, 0));
    assert_eq!(stats.frees, 1, "only the program's own free");
    assert_eq!(stats.by_function[EventKind::Free as usize].calls, 1);
    assert_eq!(stats.by_function[EventKind::Free as usize].bytes, 100);
    assert_eq!(
        (stats.released_by_exec_blocks, stats.released_by_exec_bytes),
        (1, 64)
    );
    assert_eq!(stats.mmap.munmap_calls, 0);
    assert_eq!(stats.by_function[EventKind::Munmap as usize].calls, 0);
    assert_eq!(heap.regions().count(), 0);
    assert_eq!((stats.unknown_frees, stats.double_frees), (0, 0));
}

/// Thread 7 reallocs A; inside the call A is released and thread 8 is handed A, whose
/// allocation is recorded before 7's realloc returns. With the realloc's entry record, the
/// collector knows A was released by that realloc: no overwritten block, and 8's later free
/// of A is an ordinary free, not a double one.
#[test]
fn a_block_released_inside_a_realloc_and_handed_to_another_thread_is_no_anomaly() {
    const A: u64 = 0x1000;
    const B: u64 = 0x2000;
    let on = |tid: u32, mut event: Event| {
        event.tid = tid;
        event
    };
    let mut entry = realloc(A, 0, 0, 15);
    entry.flags = FLAG_REALLOC_ENTRY;
    let racing = |with_entry: bool| {
        let mut events = vec![malloc(A, 10, 10)];
        if with_entry {
            events.push(on(7, entry));
        }
        events.extend([
            on(8, malloc(A, 30, 20)),
            on(7, realloc(A, B, 50, 30)),
            on(8, free(A, 40)),
        ]);
        run(Mode::Run, &events)
    };
    let heap = racing(true);
    let stats = heap.stats();
    assert_eq!(
        (
            stats.overwritten_blocks,
            stats.double_frees,
            stats.unknown_reallocs
        ),
        (0, 0, 0)
    );
    assert_eq!((stats.live_blocks, stats.live_bytes), (1, 50));
    assert_eq!((stats.allocations, stats.frees), (3, 1));
    // The marker is no call.
    assert_eq!(stats.by_function[EventKind::Realloc as usize].calls, 1);
    // Without it (a recording from before the marker): the old repair and its false double free.
    let stats = *racing(false).stats();
    assert_eq!((stats.overwritten_blocks, stats.double_frees), (1, 1));
}

#[test]
fn a_forked_child_starts_with_its_parents_blocks_without_calls() {
    let inherited = |mut event: Event| {
        event.flags |= FLAG_INHERITED_AT_FORK;
        event
    };
    let heap = run(
        Mode::Run,
        &[
            inherited(malloc(0x1000, 64, 1)),
            inherited(malloc(0x2000, 100, 1)),
            inherited(mmap(0x10_0000, 8192)),
            malloc(0x3000, 10, 2),
            free(0x1000, 3),
            munmap(0x10_0000, 8192),
        ],
    );
    let stats = heap.stats();
    assert_eq!(stats.allocations, 1, "only the child's own call");
    assert_eq!(stats.bytes_allocated, 10);
    assert_eq!(stats.by_function[EventKind::Malloc as usize].calls, 1);
    assert_eq!(stats.by_function[EventKind::Mmap as usize].calls, 0);
    assert_eq!((stats.inherited_blocks, stats.inherited_bytes), (2, 164));
    // Freeing an inherited block is a free, not an unknown one.
    assert_eq!((stats.frees, stats.unknown_frees), (1, 0));
    assert_eq!((stats.live_blocks, stats.live_bytes), (2, 110));
    assert_eq!((stats.mmap.calls, stats.mmap.unknown_munmaps), (0, 0));
    assert_eq!(heap.regions().count(), 0);
    assert_eq!(stats.peak_live_bytes, 174);
}

/// Events for the answered heap: few addresses (double frees, overwrites, reallocs in place)
/// among many (blocks that leave the ring), three threads, realloc entries, the allocator's
/// own frees, a fork's inherited blocks and an exec's releases.
fn answered_event() -> impl Strategy<Value = Event> {
    let addr = prop_oneof![3 => 1..8u64, 1 => 8..160u64].prop_map(|slot| 0x1000 + slot * 0x40);
    let kind = prop_oneof![
        4 => Just(EventKind::Malloc),
        1 => Just(EventKind::Calloc),
        2 => Just(EventKind::Realloc),
        4 => Just(EventKind::Free),
    ];
    let flags = prop_oneof![
        12 => Just(0),
        2 => Just(FLAG_REALLOC_ENTRY),
        1 => Just(FLAG_ALLOCATOR_INTERNAL),
        1 => Just(FLAG_INHERITED_AT_FORK),
        1 => Just(FLAG_RELEASED_BY_EXEC),
    ];
    (kind, addr.clone(), addr, 0..100u64, 1..4u32, flags).prop_map(
        |(kind, addr, old, size, tid, flags)| {
            let mut event = Event::of(kind).addr(addr).size(size).tid(tid);
            event.flags = flags;
            match kind {
                EventKind::Free => event.size(0),
                EventKind::Realloc => event.old(if size % 7 == 0 { 0 } else { old }),
                _ if flags == FLAG_REALLOC_ENTRY => event.old(old),
                _ => event,
            }
        },
    )
}

/// Applies `events` to a heap with a table, and to an answered heap with the answers its
/// writer's ring could not infer; both must see the same effects, totals and live blocks.
/// Returns how many answers were recorded.
fn answered_heap_sees_what_the_table_saw(
    mode: Mode,
    events: &[Event],
) -> Result<usize, TestCaseError> {
    let mut table = HeapState::new(mode);
    let mut answered = HeapState::answered(mode);
    let mut ring = block_ring::BlockRing::default();
    let mut recorded = 0;
    for (i, event) in events.iter().enumerate() {
        let event = event.at(i as u64 * 1000);
        let stack = Some(StackId(i as u32 % 5));
        let effect = table.apply(&event, stack);
        let answers =
            block_store::recorded_answers(&mut ring, table.tape().expect("a table's tape"));
        recorded += answers.iter().flatten().count();
        prop_assert_eq!(
            answered.apply_recorded(&event, stack, &answers),
            effect,
            "event {}",
            i
        );
    }
    prop_assert_eq!(answered.stats(), table.stats());
    prop_assert_eq!(answered.double_frees(), table.double_frees());
    let sorted = |heap: &HeapState| {
        let mut blocks: Vec<_> = heap.blocks().collect();
        blocks.sort_by_key(|(addr, _)| *addr);
        blocks
    };
    let live = sorted(&table);
    prop_assert_eq!(answered.blocks().count(), 0, "no table before the end");
    answered.end_recorded(&live).map_err(TestCaseError::fail)?;
    prop_assert_eq!(sorted(&answered), live);
    Ok(recorded)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_answered_heap_matches_the_table_in_run_mode(
        events in proptest::collection::vec(answered_event(), 0..300)
    ) {
        answered_heap_sees_what_the_table_saw(Mode::Run, &events)?;
    }

    #[test]
    fn an_answered_heap_matches_the_table_in_attach_mode(
        events in proptest::collection::vec(answered_event(), 0..300)
    ) {
        answered_heap_sees_what_the_table_saw(Mode::Attach, &events)?;
    }
}

#[test]
fn recent_blocks_need_no_answers_and_old_or_odd_ones_do() {
    let mut events = Vec::new();
    // A malloc and its free, a realloc of a recent block, in place and moved.
    events.extend([malloc(0x10, 8, 0), free(0x10, 0), malloc(0x20, 8, 0)]);
    events.extend([realloc(0x20, 0x20, 16, 0), realloc(0x20, 0x30, 32, 0)]);
    let recorded = answered_heap_sees_what_the_table_saw(Mode::Run, &events).unwrap();
    assert_eq!(recorded, 0, "the ring infers every lookup of recent blocks");
    // A block 100 allocations old and a double free of it are answered; a free of a block
    // never seen is what the ring infers (nothing there).
    let mut events: Vec<Event> = (0..100).map(|i| malloc(0x1000 + i * 16, 8, 0)).collect();
    events.extend([free(0x1000, 0), free(0x1000, 0), free(0x9999_0000, 0)]);
    let recorded = answered_heap_sees_what_the_table_saw(Mode::Run, &events).unwrap();
    assert_eq!(recorded, 2);
}

#[test]
fn live_blocks_at_the_end_must_be_those_the_events_left() {
    let mut heap = HeapState::answered(Mode::Run);
    heap.apply(&malloc(0x10, 8, 0), None);
    heap.apply(&malloc(0x20, 8, 0), None);
    let block = Block {
        size: 8,
        kind: EventKind::Malloc,
        tid: 7,
        ts_ns: 0,
        stack: None,
    };
    let error = heap.end_recorded(&[]).unwrap_err();
    assert!(
        error.contains("0 live blocks of 0 bytes, its events leave 2 of 16"),
        "{error}"
    );
    let error = heap
        .end_recorded(&[(0x10, block), (0x10, block)])
        .unwrap_err();
    assert!(error.contains("name 0x10 twice"), "{error}");
}
