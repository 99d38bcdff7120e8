use super::*;
use crate::event::Event;
use crate::heap::Mode;
use profiler_common::EventKind;
use std::collections::BTreeMap;

const SEC: u64 = 1_000_000_000;

/// Names a stack by its first frame: `f<address>`.
struct ByAddress(usize);

impl Namer for ByAddress {
    fn name(&mut self, frames: &[u64]) -> SiteNames {
        self.0 += 1;
        let function = format!("f{:x}", frames[0]);
        SiteNames {
            function: function.as_str().into(),
            stack: vec![function, "main".to_string()].into(),
        }
    }
}

struct Harness {
    recorder: Recorder,
    model: LiveModel,
    namer: ByAddress,
    facts: SessionFacts,
}

impl Harness {
    fn new() -> Self {
        Self {
            recorder: Recorder::new(Mode::Run),
            model: LiveModel::new(0),
            namer: ByAddress(0),
            facts: SessionFacts::default(),
        }
    }

    fn event(&mut self, kind: EventKind, tid: u32, addr: u64, size: u64, ts_ns: u64, site: u64) {
        let event = Event {
            kind,
            tid,
            ts_ns,
            addr,
            size,
            old_addr: 0,
            aux: 0,
            flags: 0,
        };
        let stack = (site != 0).then(|| self.recorder.stacks.intern(&[site, 0x10], false));
        let effect = self.recorder.apply(&event, stack);
        self.model.observe(&effect);
    }

    fn malloc(&mut self, tid: u32, addr: u64, size: u64, ts_ns: u64, site: u64) {
        self.event(EventKind::Malloc, tid, addr, size, ts_ns, site);
    }

    fn free(&mut self, addr: u64, ts_ns: u64) {
        self.event(EventKind::Free, 1, addr, 0, ts_ns, 0);
    }

    fn snapshot(&mut self, now_ns: u64) -> Snapshot {
        self.model
            .snapshot(&self.recorder, &mut self.namer, now_ns, self.facts.clone())
    }
}

/// Site 0xa: 3 blocks of 100 live; 0xb: 1 block of 1000 live; 0xc: 10 allocations of 10,
/// all freed.
fn three_sites() -> Harness {
    let mut h = Harness::new();
    for i in 0..3 {
        h.malloc(1, 0x1000 + i * 0x100, 100, 1, 0xa);
    }
    h.malloc(2, 0x2000, 1000, 2, 0xb);
    for i in 0..10 {
        h.malloc(1, 0x3000 + i * 0x100, 10, 3, 0xc);
        h.free(0x3000 + i * 0x100, 4);
    }
    h
}

fn functions(rows: &[&SiteRow]) -> Vec<String> {
    rows.iter()
        .map(|row| row.names.function.to_string())
        .collect()
}

#[test]
fn sites_sort_by_each_key() {
    let mut h = three_sites();
    let snapshot = h.snapshot(SEC);
    assert_eq!(snapshot.live_bytes, 1300);
    assert_eq!(snapshot.live_blocks, 4);
    let sorted = |sort| functions(&site_rows(&snapshot.sites, sort, ""));
    assert_eq!(sorted(SiteSort::LiveBytes), ["fb", "fa", "fc"]);
    assert_eq!(sorted(SiteSort::LiveBlocks), ["fa", "fb", "fc"]);
    assert_eq!(sorted(SiteSort::Allocations), ["fc", "fa", "fb"]);
    assert_eq!(sorted(SiteSort::AllocatedBytes), ["fb", "fa", "fc"]);
    let a = site_rows(&snapshot.sites, SiteSort::LiveBytes, "fa")[0];
    assert_eq!(
        (
            a.live_bytes,
            a.live_blocks,
            a.allocations,
            a.allocated_bytes
        ),
        (300, 3, 3, 300)
    );
    assert_eq!(&*a.names.stack, ["fa", "main"]);
}

#[test]
fn sort_cycles_through_every_key() {
    let mut sort = SiteSort::default();
    let mut seen = vec![sort];
    for _ in 0..4 {
        sort = sort.next();
        seen.push(sort);
    }
    assert_eq!(sort.next(), SiteSort::LiveBytes);
    seen.dedup();
    assert_eq!(seen.len(), 5);
}

#[test]
fn filter_matches_function_names_case_insensitively() {
    let mut h = three_sites();
    let snapshot = h.snapshot(SEC);
    assert_eq!(
        functions(&site_rows(&snapshot.sites, SiteSort::LiveBytes, "FC")),
        ["fc"]
    );
    assert!(site_rows(&snapshot.sites, SiteSort::LiveBytes, "nothing").is_empty());
}

#[test]
fn each_stack_is_named_once() {
    let mut h = three_sites();
    h.snapshot(SEC);
    h.snapshot(2 * SEC);
    h.malloc(1, 0x9000, 5, 3 * SEC, 0xd);
    h.snapshot(3 * SEC);
    assert_eq!(h.namer.0, 4);
    // New maps: every stack is named again, once.
    h.model.forget_names();
    assert_eq!(h.model.named(), 0);
    h.snapshot(4 * SEC);
    h.snapshot(5 * SEC);
    assert_eq!(h.namer.0, 8);
}

#[test]
fn growing_lists_the_steady_sites_of_the_growth_analysis_by_slope() {
    let mut h = Harness::new();
    let mut addr = 0x10000;
    // 0xa grows by 100 B/s, 0xb by 1000 B/s, 0xc is flat, 0xd shrinks, 0xe saws up and down
    // (it ends higher but half its changes are falls: not steady).
    h.malloc(1, 0x100, 50, 0, 0xc);
    h.malloc(1, 0x200, 5000, 0, 0xd);
    h.malloc(1, 0x300, 5000, 0, 0xd);
    h.snapshot(0);
    for second in 1..=4u64 {
        h.malloc(1, addr, 100, second * SEC, 0xa);
        h.malloc(1, addr + 0x1000, 1000, second * SEC, 0xb);
        h.malloc(1, addr + 0x1800, 3000, second * SEC, 0xe);
        if second < 4 {
            h.free(addr + 0x1800, second * SEC + SEC / 2);
        }
        addr += 0x2000;
        if second == 2 {
            h.free(0x200, second * SEC);
        }
        h.snapshot(second * SEC);
    }
    let snapshot = h.snapshot(4 * SEC);
    let growing: Vec<(String, f64, f64)> = snapshot
        .growing
        .iter()
        .map(|row| {
            let name = row.names.function.to_string();
            (name, row.bytes_per_sec, row.monotonicity)
        })
        .collect();
    // The least-squares slope of the step function 0, 1000 (1 s), 2000 (2 s), 3000 (3 s) over
    // [0, 4 s] (the step at 4 s adds nothing to the integrals): 937.5 B/s, as the report's
    // growth analysis computes it.
    assert_eq!(
        growing,
        [
            ("fb".to_string(), 937.5, 1.0),
            ("fa".to_string(), 93.75, 1.0)
        ]
    );
    assert!(snapshot.growing.iter().all(|row| row.r2 >= 0.8));
    assert_eq!(snapshot.growing[0].window_secs, 4.0);
    assert_eq!(growth_rows(&snapshot.growing, "FA").len(), 1);
    // Sites has every site's rate over the last 10 s, falls included: 0xe rose 3000 B in
    // 4 s, though it is not steady.
    let rates: BTreeMap<String, Option<f64>> = snapshot
        .sites
        .iter()
        .map(|row| (row.names.function.to_string(), row.growth_bytes_per_sec))
        .collect();
    let expected = [
        ("fa", 100.0),
        ("fb", 1000.0),
        ("fc", 0.0),
        ("fd", -1250.0),
        ("fe", 750.0),
    ];
    let expected: BTreeMap<String, Option<f64>> = expected
        .iter()
        .map(|(name, rate)| (name.to_string(), Some(*rate)))
        .collect();
    assert_eq!(rates, expected);
    let by_growth = functions(&site_rows(&snapshot.sites, SiteSort::Growth, ""));
    assert_eq!(by_growth, ["fb", "fe", "fa", "fc", "fd"]);
}

#[test]
fn a_sites_rate_is_unknown_until_a_sample_is_older_than_now() {
    let mut h = three_sites();
    let first = h.snapshot(SEC);
    assert!(first.sites.iter().all(|s| s.growth_bytes_per_sec.is_none()));
    let second = h.snapshot(SEC + SEC / 2);
    assert!(
        second
            .sites
            .iter()
            .all(|s| s.growth_bytes_per_sec == Some(0.0))
    );
}

#[test]
fn lifetimes_list_short_lived_sites_first() {
    let mut h = Harness::new();
    // 0xa: 150 blocks freed after 100 ns (a pool candidate); 0xb: 3 freed after 500 ns and
    // 3 after 2 s; 0xc: freed after 2 s only (not short-lived).
    for i in 0..150 {
        h.malloc(1, 0x1000, 16, i * 1000, 0xa);
        h.free(0x1000, i * 1000 + 100);
    }
    for i in 0..3 {
        h.malloc(1, 0x2000 + i * 0x100, 32, SEC, 0xb);
        h.free(0x2000 + i * 0x100, SEC + 500);
        h.malloc(1, 0x3000 + i * 0x100, 32, SEC, 0xb);
        h.free(0x3000 + i * 0x100, 3 * SEC);
    }
    h.malloc(1, 0x4000, 8, SEC, 0xc);
    h.free(0x4000, 3 * SEC);
    let snapshot = h.snapshot(4 * SEC);
    let rows: Vec<(String, u64, u64, u64, bool)> = snapshot
        .lifetimes
        .iter()
        .map(|r| {
            let name = r.names.function.to_string();
            (name, r.freed, r.short_lived, r.median_ns, r.pool_candidate)
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("fa".to_string(), 150, 150, 64, true),
            ("fb".to_string(), 6, 3, 256, false),
        ]
    );
}

#[test]
fn threads_and_sizes() {
    let mut h = three_sites();
    h.facts.allocator = Some(Allocator::Glibc);
    let snapshot = h.snapshot(SEC);
    let threads: Vec<(u32, u64, u64, u64)> = snapshot
        .threads
        .iter()
        .map(|t| (t.tid, t.live_bytes, t.live_blocks, t.allocations))
        .collect();
    assert_eq!(threads, [(2, 1000, 1, 1), (1, 300, 3, 13)]);
    /// (low, high, allocations, requested, usable, live blocks, live bytes)
    type Row = (u64, u64, u64, u64, Option<u64>, u64, u64);
    let sizes: Vec<Row> = snapshot
        .sizes
        .iter()
        .map(|s| {
            let requested = s.requested_bytes;
            let (low, high, allocs) = (s.low, s.high, s.allocations);
            (
                low,
                high,
                allocs,
                requested,
                s.usable_bytes,
                s.live_blocks,
                s.live_bytes,
            )
        })
        .collect();
    // glibc's usable sizes: 10 -> 24, 100 -> 104, 1000 -> 1000 (chunk 1008 less its size
    // field).
    assert_eq!(
        sizes,
        [
            (9, 16, 10, 100, Some(240), 0, 0),
            (65, 128, 3, 300, Some(312), 3, 300),
            (513, 1024, 1, 1000, Some(1000), 1, 1000)
        ]
    );
    h.facts.allocator = None;
    let unknown = h.snapshot(2 * SEC);
    assert!(unknown.sizes.iter().all(|s| s.usable_bytes.is_none()));
}

#[test]
fn each_threads_share_of_each_site_and_its_allocation_rate() {
    let mut h = three_sites();
    let first = h.snapshot(SEC);
    assert!(first.threads.iter().all(|t| t.allocations_per_sec == 0.0));
    // Thread 2 allocates 4 more at 0xa in the next 2 s, and frees one.
    for i in 0..4 {
        h.malloc(2, 0x5000 + i * 0x100, 50, SEC + i, 0xa);
    }
    h.free(0x5000, SEC + 10);
    let snapshot = h.snapshot(3 * SEC);
    let rates: Vec<(u32, f64)> = snapshot
        .threads
        .iter()
        .map(|t| (t.tid, t.allocations_per_sec))
        .collect();
    assert_eq!(rates, [(2, 2.0), (1, 0.0)]);
    let of = |tid| {
        let mut rows: Vec<(String, u64, u64, u64, u64)> = thread_site_rows(&snapshot, tid)
            .into_iter()
            .map(|r| {
                let name = r.names.function.to_string();
                (
                    name,
                    r.live_bytes,
                    r.live_blocks,
                    r.allocations,
                    r.allocated_bytes,
                )
            })
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(
        of(1),
        [
            ("fa".to_string(), 300, 3, 3, 300),
            ("fc".to_string(), 0, 0, 10, 100)
        ]
    );
    assert_eq!(
        of(2),
        [
            ("fa".to_string(), 150, 3, 4, 200),
            ("fb".to_string(), 1000, 1, 1, 1000)
        ]
    );
    assert!(of(99).is_empty());
    assert!(
        thread_site_rows(&snapshot, 2)
            .iter()
            .all(|r| r.growth_bytes_per_sec.is_none())
    );
}

#[test]
fn one_threads_sites_are_all_the_sites() {
    let mut h = Harness::new();
    h.malloc(7, 0x100, 10, 1, 0xa);
    h.malloc(7, 0x200, 20, 2, 0xb);
    let snapshot = h.snapshot(SEC);
    assert!(snapshot.thread_sites.is_empty());
    assert_eq!(thread_site_rows(&snapshot, 7), snapshot.sites);
    assert!(thread_site_rows(&snapshot, 8).is_empty());
}

#[test]
fn header_figures_and_history() {
    let mut h = three_sites();
    h.snapshot(SEC);
    h.malloc(1, 0x8000, 700, SEC + 1, 0xa);
    h.free(0x8000, SEC + 2);
    let snapshot = h.snapshot(3 * SEC);
    assert_eq!(snapshot.events, 26);
    // 2 events in the 2 s since the last snapshot.
    assert_eq!(snapshot.events_per_sec, 1.0);
    assert_eq!(snapshot.peak_bytes, 2000);
    assert_eq!(snapshot.peak_secs, Some((SEC + 1) as f64 / 1e9));
    assert_eq!(snapshot.elapsed_secs, 3.0);
    let live: Vec<u64> = snapshot.history.iter().map(|p| p.live_bytes).collect();
    assert_eq!(live, [1300, 1300]);
}

#[test]
fn long_history_is_halved_keeping_maxima() {
    let mut model = LiveModel::new(0);
    for i in 0..HISTORY_POINTS as u64 + 1 {
        model.push_history(HistoryPoint {
            secs: i as f64,
            live_bytes: if i == 7 { 1_000_000 } else { i },
            rss_bytes: None,
        });
    }
    assert_eq!(model.history.len(), HISTORY_POINTS / 2 + 1);
    assert!(model.history.iter().any(|p| p.live_bytes == 1_000_000));
}

#[test]
fn size_classes_cover_their_bounds() {
    for size in [0u64, 1, 2, 3, 4, 5, 16, 17, 4096, 4097, u64::MAX] {
        let (low, high) = class_bounds(size_class(size));
        assert!(low <= size && size <= high, "{size} in {low}..={high}");
    }
}

#[test]
fn a_recording_replays_into_snapshots_ending_at_its_final_state() {
    let (bytes, live) =
        crate::recording::write_synthetic_churn(Vec::new(), 1_000_000).expect("write");
    let reader = crate::recording::Reader::new(&bytes[..]).expect("header");
    let recorded = recorded_snapshots(reader, None).expect("replay");
    assert!(recorded.early_end.is_none());
    let snapshots = &recorded.snapshots;
    assert!(snapshots.len() > 2, "{} snapshots", snapshots.len());
    assert!(snapshots.len() <= MAX_RECORDED_SNAPSHOTS + 1);
    assert!(
        snapshots
            .windows(2)
            .all(|pair| pair[0].elapsed_secs < pair[1].elapsed_secs
                && pair[0].events <= pair[1].events),
        "snapshots out of order"
    );
    let last = snapshots.last().unwrap();
    let stats = live.heap.stats();
    assert_eq!(last.events, live.events());
    assert_eq!(
        (last.live_bytes, last.live_blocks, last.peak_bytes),
        (stats.live_bytes, stats.live_blocks, stats.peak_live_bytes)
    );
    assert_eq!(last.sites.len(), live.sites.iter().count());
    assert!(last.facts.ended);
}

/// A call of the property test below: malloc or realloc (of the block at `old`, when live)
/// into slot `slot` by `tid` at `site`, or a free of the block in slot `slot`. Few slots, so
/// that addresses are handed out again, freed twice and overwritten.
#[derive(Clone, Debug)]
enum Call {
    Malloc {
        slot: u64,
        size: u64,
        tid: u32,
        site: u64,
    },
    Realloc {
        old: u64,
        slot: u64,
        size: u64,
        tid: u32,
        site: u64,
    },
    Free {
        slot: u64,
    },
}

fn call() -> impl proptest::strategy::Strategy<Value = Call> {
    use proptest::prelude::*;
    let size = prop_oneof![1u64..64, 64u64..5000, Just(0u64)];
    prop_oneof![
        (0u64..24, size.clone(), 1u32..4, 1u64..5).prop_map(|(slot, size, tid, site)| {
            Call::Malloc {
                slot,
                size,
                tid,
                site,
            }
        }),
        (0u64..24, 0u64..24, size, 1u32..4, 1u64..5).prop_map(|(old, slot, size, tid, site)| {
            Call::Realloc {
                old,
                slot,
                size,
                tid,
                site,
            }
        }),
        (0u64..24).prop_map(|slot| Call::Free { slot }),
    ]
}

proptest::proptest! {
    /// A snapshot reads the live blocks per size class and per (thread, site) from counts
    /// kept as records arrive: they must be what grouping the heap's blocks gives.
    #[test]
    fn counted_live_blocks_are_the_heaps(calls in proptest::collection::vec(call(), 1..300)) {
        let mut h = Harness::new();
        let addr = |slot: u64| 0x10_0000 + slot * 0x1000;
        for (i, call) in calls.iter().enumerate() {
            let ts = i as u64 * 1000;
            match *call {
                Call::Malloc { slot, size, tid, site } => h.malloc(tid, addr(slot), size, ts, site),
                Call::Realloc { old, slot, size, tid, site } => {
                    let event = Event {
                        kind: EventKind::Realloc,
                        tid,
                        ts_ns: ts,
                        addr: addr(slot),
                        size,
                        old_addr: addr(old),
                        aux: 0,
                        flags: 0,
                    };
                    let stack = Some(h.recorder.stacks.intern(&[site, 0x10], false));
                    let effect = h.recorder.apply(&event, stack);
                    h.model.observe(&effect);
                }
                Call::Free { slot } => h.free(addr(slot), ts),
            }
        }
        let snapshot = h.snapshot(SEC);
        let mut by_class: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        let mut by_thread_site: BTreeMap<(u32, u32), (u64, u64)> = BTreeMap::new();
        for (_, block) in h.recorder.heap.blocks() {
            let class = by_class.entry(size_class(block.size)).or_default();
            class.0 += 1;
            class.1 += block.size;
            let stack = block.stack.map_or(u32::MAX, |id| id.0);
            let share = by_thread_site.entry((block.tid, stack)).or_default();
            share.0 += 1;
            share.1 += block.size;
        }
        let counted: BTreeMap<usize, (u64, u64)> = snapshot
            .sizes
            .iter()
            .filter(|row| row.live_blocks > 0)
            .map(|row| (size_class(row.high), (row.live_blocks, row.live_bytes)))
            .collect();
        proptest::prop_assert_eq!(counted, by_class);
        let threads: BTreeMap<u32, (u64, u64)> = snapshot
            .threads
            .iter()
            .filter(|row| row.live_blocks > 0)
            .map(|row| (row.tid, (row.live_blocks, row.live_bytes)))
            .collect();
        let mut expected_threads: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for (&(tid, _), &(blocks, bytes)) in &by_thread_site {
            let row = expected_threads.entry(tid).or_default();
            row.0 += blocks;
            row.1 += bytes;
        }
        proptest::prop_assert_eq!(threads, expected_threads);
        if snapshot.threads.len() > 1 {
            let shares: BTreeMap<(u32, u32), (u64, u64)> = snapshot
                .thread_sites
                .iter()
                .filter(|share| share.live_blocks > 0)
                .map(|share| ((share.tid, share.stack.0), (share.live_blocks, share.live_bytes)))
                .collect();
            proptest::prop_assert_eq!(shares, by_thread_site);
        }
    }
}
