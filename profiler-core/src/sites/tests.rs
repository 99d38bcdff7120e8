use super::*;
use crate::heap::{HeapState, Mode};
use profiler_common::EventKind;
use proptest::prelude::*;
use std::collections::BTreeMap;

const SLOTS: u64 = 8;
const STACKS: u32 = 4;

fn slot_addr(slot: u64) -> u64 {
    if slot == 0 { 0 } else { 0x1000 + slot * 16 }
}

/// Applies events to a heap and the site stats, as `Recorder::apply` does.
struct Harness {
    heap: HeapState,
    sites: SiteStats,
}

impl Harness {
    fn new() -> Self {
        Self {
            heap: HeapState::new(Mode::Run),
            sites: SiteStats::new(),
        }
    }

    fn apply(&mut self, event: &Event, stack: Option<StackId>) {
        let effect = self.heap.apply(event, stack);
        self.sites.observe(event, stack, &effect);
    }
}

#[test]
fn counts_allocations_live_blocks_and_the_peak_snapshot() {
    let mut h = Harness::new();
    let (a, b) = (Some(StackId(0)), Some(StackId(2)));
    h.apply(&Event::of(EventKind::Malloc).addr(0x10).size(100).at(5), a);
    h.apply(&Event::of(EventKind::Malloc).addr(0x20).size(50).at(6), b);
    h.apply(&Event::of(EventKind::Malloc).addr(0x30).size(30).at(7), a); // peak: a 130 in 2, b 50 in 1
    h.apply(&Event::of(EventKind::Free).addr(0x10).at(8), None);
    h.apply(&Event::of(EventKind::Malloc).addr(0x40).at(9), b); // zero-byte block, still a block
    h.apply(&Event::of(EventKind::Malloc).size(70).at(10), b); // failed: not an allocation
    h.apply(
        &Event::of(EventKind::Realloc)
            .addr(0x50)
            .size(60)
            .old(0x20)
            .at(11),
        a,
    ); // b's block moves to a

    assert_eq!(
        h.sites.get(StackId(0)),
        SiteCounts {
            allocations: 3,
            allocated_bytes: 190,
            live_blocks: 2,
            live_bytes: 90,
            peak_live_blocks: 2,
            peak_live_bytes: 130,
            first_ts_ns: 5,
            last_ts_ns: 11,
        }
    );
    assert_eq!(
        h.sites.get(StackId(2)),
        SiteCounts {
            allocations: 2,
            allocated_bytes: 50,
            live_blocks: 1,
            live_bytes: 0,
            peak_live_blocks: 1,
            peak_live_bytes: 50,
            first_ts_ns: 6,
            last_ts_ns: 9,
        }
    );
    assert_eq!(h.sites.get(StackId(1)), SiteCounts::default());
    assert_eq!(h.sites.get(StackId(99)), SiteCounts::default());
    let ids: Vec<StackId> = h.sites.iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![StackId(0), StackId(2)]);
}

#[test]
fn a_later_peak_replaces_the_snapshot_of_sites_that_did_not_change() {
    let mut h = Harness::new();
    let (a, b) = (Some(StackId(0)), Some(StackId(1)));
    h.apply(&Event::of(EventKind::Malloc).addr(0x10).size(100).at(1), a); // peak 100: a 100
    h.apply(&Event::of(EventKind::Free).addr(0x10).at(2), None);
    h.apply(&Event::of(EventKind::Malloc).addr(0x20).size(40).at(3), b);
    h.apply(&Event::of(EventKind::Malloc).addr(0x30).size(70).at(4), b); // peak 110: a 0, b 110
    assert_eq!(h.sites.get(StackId(0)).peak_live_bytes, 0);
    assert_eq!(h.sites.get(StackId(1)).peak_live_bytes, 110);
    h.apply(&Event::of(EventKind::Free).addr(0x20).at(5), None); // below the peak: no change
    assert_eq!(h.sites.get(StackId(1)).peak_live_bytes, 110);
    assert_eq!(h.sites.get(StackId(1)).peak_live_blocks, 2);
}

#[test]
fn overwritten_blocks_leave_their_site() {
    let mut h = Harness::new();
    h.apply(
        &Event::of(EventKind::Malloc).addr(0x10).size(10).at(1),
        Some(StackId(0)),
    );
    h.apply(
        &Event::of(EventKind::Malloc).addr(0x10).size(20).at(2),
        Some(StackId(1)),
    );
    assert_eq!(h.sites.get(StackId(0)).live_bytes, 0);
    assert_eq!(h.sites.get(StackId(0)).peak_live_bytes, 0);
    assert_eq!(h.sites.get(StackId(1)).live_bytes, 20);
}

#[derive(Clone, Debug)]
enum Op {
    Malloc {
        slot: u64,
        size: u64,
        stack: Option<u32>,
    },
    Realloc {
        old: u64,
        new: u64,
        size: u64,
        stack: Option<u32>,
    },
    Free {
        slot: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let stack = proptest::option::weighted(0.9, 0..STACKS);
    prop_oneof![
        4 => (0..=SLOTS, 0..100u64, stack.clone())
            .prop_map(|(slot, size, stack)| Op::Malloc { slot, size, stack }),
        2 => (0..=SLOTS, 0..=SLOTS, prop_oneof![Just(0u64), 0..100u64], stack)
            .prop_map(|(old, new, size, stack)| Op::Realloc { old, new, size, stack }),
        4 => (1..=SLOTS).prop_map(|slot| Op::Free { slot }),
    ]
}

fn to_event(op: &Op, ts: u64) -> (Event, Option<StackId>) {
    match *op {
        Op::Malloc { slot, size, stack } => (
            Event::of(EventKind::Malloc)
                .addr(slot_addr(slot))
                .size(size)
                .at(ts),
            stack.map(StackId),
        ),
        Op::Realloc {
            old,
            new,
            size,
            stack,
        } => (
            Event::of(EventKind::Realloc)
                .addr(slot_addr(new))
                .size(size)
                .old(slot_addr(old))
                .at(ts),
            stack.map(StackId),
        ),
        Op::Free { slot } => (
            Event::of(EventKind::Free).addr(slot_addr(slot)).at(ts),
            None,
        ),
    }
}

/// The naive model: recomputes every site from the heap's live blocks after each event, and
/// snapshots every site whenever the heap's peak rises.
#[derive(Default)]
struct Model {
    counts: BTreeMap<u32, SiteCounts>,
    peak_bytes: u64,
}

impl Model {
    fn after(&mut self, event: &Event, stack: Option<StackId>, heap: &HeapState) {
        if event.kind.is_malloc_family()
            && event.addr != 0
            && let Some(id) = stack
        {
            let counts = self.counts.entry(id.0).or_default();
            if counts.allocations == 0 {
                counts.first_ts_ns = event.ts_ns;
            }
            counts.allocations += 1;
            counts.allocated_bytes += event.size;
            counts.last_ts_ns = event.ts_ns;
        }
        for counts in self.counts.values_mut() {
            counts.live_blocks = 0;
            counts.live_bytes = 0;
        }
        for (_, block) in heap.blocks() {
            if let Some(id) = block.stack {
                let counts = self
                    .counts
                    .get_mut(&id.0)
                    .expect("live block of a known site");
                counts.live_blocks += 1;
                counts.live_bytes += block.size;
            }
        }
        if heap.stats().peak_live_bytes > self.peak_bytes {
            self.peak_bytes = heap.stats().peak_live_bytes;
            for counts in self.counts.values_mut() {
                counts.peak_live_blocks = counts.live_blocks;
                counts.peak_live_bytes = counts.live_bytes;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_a_model_that_snapshots_every_site_at_each_peak(
        ops in proptest::collection::vec(op(), 0..150)
    ) {
        let mut h = Harness::new();
        let mut model = Model::default();
        for (i, op) in ops.iter().enumerate() {
            let (event, stack) = to_event(op, i as u64 + 1);
            h.apply(&event, stack);
            model.after(&event, stack, &h.heap);
            for id in 0..STACKS {
                let expected = model.counts.get(&id).copied().unwrap_or_default();
                prop_assert_eq!(h.sites.get(StackId(id)), expected, "site {} after op {}", id, i);
            }
            let listed: Vec<u32> = h.sites.iter().map(|(id, _)| id.0).collect();
            let expected: Vec<u32> = model.counts.keys().copied().collect();
            prop_assert_eq!(listed, expected);
        }
    }
}
