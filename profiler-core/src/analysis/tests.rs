//! Each analysis on a small fixed event sequence: key figures asserted here, and the whole
//! section byte-compared with a golden file under tests/golden/analyses/ (MEMPROF_BLESS=1
//! rewrites the files).

use super::allocator::Allocator;
use super::*;
use crate::event::Event;
use crate::heap::Mode;
use crate::recorder::Recorder;
use profiler_common::EventKind;
use std::path::PathBuf;

const MS: u64 = 1_000_000;
const MIB: u64 = 1 << 20;
/// Session start: times in the report are relative to it.
const START: u64 = 1_000 * MS;

struct Session {
    recorder: Recorder,
}

impl Session {
    fn new(mode: Mode) -> Self {
        Self {
            recorder: Recorder::new(mode),
        }
    }

    fn stack(&mut self, frame: u64) -> StackId {
        self.recorder.stacks.intern(&[frame, 0x40_1000], false)
    }

    fn event(&mut self, kind: EventKind, ts_ms: f64, addr: u64, size: u64, old_addr: u64) -> Event {
        Event {
            kind,
            tid: 7,
            ts_ns: START + (ts_ms * MS as f64).round() as u64,
            addr,
            size,
            old_addr,
            aux: 0,
            flags: 0,
        }
    }

    fn malloc(&mut self, ts_ms: f64, addr: u64, size: u64, stack: StackId) {
        let event = self.event(EventKind::Malloc, ts_ms, addr, size, 0);
        self.recorder.apply(&event, Some(stack));
    }

    fn realloc(&mut self, ts_ms: f64, old: u64, addr: u64, size: u64, stack: StackId) {
        let event = self.event(EventKind::Realloc, ts_ms, addr, size, old);
        self.recorder.apply(&event, Some(stack));
    }

    fn free(&mut self, ts_ms: f64, addr: u64) {
        let event = self.event(EventKind::Free, ts_ms, addr, 0, 0);
        self.recorder.apply(&event, None);
    }

    fn rss(&mut self, ts_ms: f64, bytes: u64) {
        let ts = START + (ts_ms * MS as f64).round() as u64;
        self.recorder.analyses.observe_rss(ts, bytes);
    }

    fn report(&self, allocator: Allocator, end_ms: u64, ops: Option<u64>) -> AnalysesReport {
        let input = AnalysisInput {
            heap: &self.recorder.heap,
            sites: &self.recorder.sites,
            start_ns: START,
            end_ns: START + end_ms * MS,
            allocator,
        };
        self.recorder.analyses.report(&input, ops)
    }
}

/// Compares `value`'s pretty JSON with tests/golden/analyses/NAME.json.
fn golden(name: &str, value: &impl Serialize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/analyses")
        .join(format!("{name}.json"));
    let mut actual = serde_json::to_string_pretty(value).expect("serializable");
    actual.push('\n');
    if std::env::var_os("MEMPROF_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with MEMPROF_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (MEMPROF_BLESS=1 rewrites it):\n{actual}",
        path.display()
    );
}

/// 10 x 1 MiB, all freed, then 3 x 1 MiB: the peak is 10 MiB in 10 blocks at 10 ms.
fn known_peak() -> Session {
    let mut s = Session::new(Mode::Run);
    let big = s.stack(0x40_1100);
    let small = s.stack(0x40_1200);
    s.rss(0.5, 4 * MIB);
    for i in 0..10u64 {
        s.malloc(1.0 + i as f64, 0x7f00_0000_0000 + i * 0x10_2000, MIB, big);
    }
    s.malloc(10.5, 0x5555_0000_1000, 100, small);
    s.rss(10.8, 15 * MIB);
    for i in 0..10u64 {
        s.free(20.0 + i as f64, 0x7f00_0000_0000 + i * 0x10_2000);
    }
    for i in 0..3u64 {
        s.malloc(40.0 + i as f64, 0x5555_0001_0000 + i * 0x10_0010, MIB, big);
    }
    s.rss(45.0, 8 * MIB);
    s
}

#[test]
fn timeline_finds_the_peak_and_what_was_live_then() {
    let s = known_peak();
    let report = s.report(Allocator::Glibc, 50, None);
    let peak = report.timeline.peak.as_ref().expect("a peak");
    assert_eq!(
        (peak.live_bytes, peak.live_blocks),
        (10 * MIB + 100, 11),
        "the peak is after the 100-byte block"
    );
    assert_eq!(peak.time_secs, 0.0105);
    assert_eq!(
        peak.sites,
        vec![
            SiteAtPeak {
                stack_id: 0,
                live_bytes: 10 * MIB,
                live_blocks: 10
            },
            SiteAtPeak {
                stack_id: 1,
                live_bytes: 100,
                live_blocks: 1
            }
        ]
    );
    let points = &report.timeline.points;
    assert_eq!(report.timeline.bucket_secs, 0.001);
    // From 0.5 ms (the first observation) to 45 ms: 45 buckets of 1 ms.
    assert_eq!(points.len(), 45);
    let last = points.last().unwrap();
    assert_eq!(
        (last.live_bytes, last.live_blocks, last.rss_bytes),
        (3 * MIB + 100, 4, Some(8 * MIB))
    );
    assert_eq!(points.iter().map(|p| p.allocations).sum::<u64>(), 14);
    assert_eq!(points.iter().map(|p| p.frees).sum::<u64>(), 10);
    golden("timeline", &report.timeline);
}

#[test]
fn timeline_coarsens_and_keeps_totals() {
    let mut s = Session::new(Mode::Run);
    let site = s.stack(0x40_1300);
    // 1000 allocations 1 ms apart: 1 s does not fit 128 buckets of 1 ms.
    for i in 0..1000u64 {
        s.malloc(i as f64, 0x1000 + i * 16, 16, site);
    }
    let report = s.report(Allocator::Unknown, 1000, None);
    let timeline = &report.timeline;
    assert_eq!(timeline.bucket_secs, 0.008, "1 ms doubled three times");
    assert_eq!(timeline.points.len(), 125);
    assert_eq!(
        timeline.points.iter().map(|p| p.allocations).sum::<u64>(),
        1000
    );
    assert!(timeline.points.len() <= timeline::TIMELINE_BUCKETS);
    assert_eq!(timeline.points.last().unwrap().live_bytes, 16_000);
}

#[test]
fn size_classes_follow_glibc_dynamic_threshold() {
    let s = known_peak();
    let report = s.report(Allocator::Glibc, 50, None);
    let sizes = &report.size_classes;
    assert_eq!(sizes.allocations, 14);
    // The first ten 1 MiB blocks are mmapped (usable 1052656), the last three come from the
    // heap once the threshold rose (usable 1048584); 100 bytes -> 104.
    let classes: Vec<(u64, u64)> = sizes.classes.iter().map(|c| (c.usable, c.count)).collect();
    assert_eq!(classes, vec![(104, 1), (1048584, 3), (1052656, 10)]);
    assert_eq!(sizes.usable_bytes, Some(104 + 3 * 1048584 + 10 * 1052656));
    // At the peak the ten were mmapped (threshold then: 128 KiB); at the end, the three live
    // 1 MiB blocks are in the heap.
    let at_peak = report.fragmentation.at_peak.as_ref().unwrap();
    assert_eq!((at_peak.mmapped_blocks, at_peak.ranges), (10, 1));
    assert_eq!(report.fragmentation.at_end.mmapped_blocks, 0);
    golden("size_classes_glibc", sizes);
}

#[test]
fn size_classes_of_every_allocator() {
    let mut s = Session::new(Mode::Run);
    let site = s.stack(0x40_1400);
    let mix = [
        (0, 1),
        (1, 2),
        (24, 3),
        (100, 4),
        (129, 5),
        (1000, 2),
        (5000, 1),
        (40000, 1),
    ];
    let mut addr = 0x1000;
    for (size, count) in mix {
        for _ in 0..count {
            s.malloc(1.0, addr, size, site);
            addr += 0x10000;
        }
    }
    let reports: BTreeMap<String, SizeClassesReport> = [
        Allocator::Glibc,
        Allocator::Jemalloc,
        Allocator::Mimalloc,
        Allocator::Tcmalloc,
        Allocator::Memprof,
        Allocator::Unknown,
    ]
    .into_iter()
    .map(|allocator| {
        let report = s.report(allocator, 2, None).size_classes;
        (format!("{allocator:?}"), report)
    })
    .collect();
    let memprof = &reports["Memprof"];
    // 16 + 2*16 + 3*32 + 4*112 + 5*160 + 2*1024 + 5120 + 40960
    assert_eq!(memprof.usable_bytes, Some(49520));
    assert_eq!(
        memprof.requested_bytes,
        2 + 72 + 400 + 645 + 2000 + 5000 + 40000
    );
    let unknown = &reports["Unknown"];
    assert_eq!((unknown.usable_bytes, unknown.classes.len()), (None, 0));
    assert_eq!(unknown.requested.iter().map(|b| b.count).sum::<u64>(), 19);
    golden("size_classes_all", &reports);
}

/// A cache that grows by 256 bytes every 10 ms, next to a site that allocates and frees.
fn growing_cache(mode: Mode) -> Session {
    let mut s = Session::new(mode);
    let cache = s.stack(0x40_1500);
    let churn = s.stack(0x40_1600);
    for i in 0..50u64 {
        let t = 10.0 * i as f64;
        s.malloc(t, 0x10_0000 + i * 0x1000, 256, cache);
        s.malloc(t + 1.0, 0x20_0000, 4096, churn);
        s.free(t + 2.0, 0x20_0000);
    }
    s
}

#[test]
fn growth_ranks_the_steadily_growing_site() {
    let s = growing_cache(Mode::Attach);
    let report = s.report(Allocator::Glibc, 500, None);
    let growing = &report.leaks.growing;
    assert_eq!(growing.len(), 1, "only the cache grows: {growing:?}");
    let cache = &growing[0];
    assert_eq!(
        (cache.stack_id, cache.live_blocks, cache.live_bytes),
        (0, 50, 12800)
    );
    assert_eq!(cache.monotonicity, 1.0);
    // 256 bytes per 10 ms = 25600 B/s; the staircase fits its line almost exactly.
    assert!(
        (cache.slope_bytes_per_sec - 25600.0).abs() < 256.0,
        "{cache:?}"
    );
    assert!(cache.r2 > 0.99, "{cache:?}");
    assert_eq!(report.leaks.oldest[0].size, 256);
    assert_eq!(report.leaks.oldest[0].age_secs, 0.5);
    assert_eq!(
        report.leaks.live_at_end,
        LiveAtEnd {
            blocks: 50,
            bytes: 12800,
            sites: 1
        }
    );
    golden("leaks", &report.leaks);
}

#[test]
fn lifetimes_flag_short_lived_sites() {
    let mut s = Session::new(Mode::Run);
    let pool = s.stack(0x40_1700);
    let slow = s.stack(0x40_1800);
    for i in 0..150u64 {
        let t = i as f64 * 0.01;
        s.malloc(t, 0x9000, if i % 3 == 0 { 64 } else { 32 }, pool);
        s.free(t + 0.0005, 0x9000); // 500 ns later
    }
    for i in 0..120u64 {
        let t = 10.0 + i as f64 * 3.0;
        s.malloc(t, 0xa000, 48, slow);
        s.free(t + 2.0, 0xa000); // 2 ms later
    }
    let report = s.report(Allocator::Glibc, 400, None);
    let lifetimes = &report.lifetimes;
    assert_eq!(lifetimes.pool_candidates.len(), 1);
    let candidate = &lifetimes.pool_candidates[0];
    assert_eq!(
        (candidate.stack_id, candidate.freed, candidate.short_lived),
        (0, 150, 150)
    );
    assert_eq!(
        candidate.sizes,
        vec![
            SizeCount {
                size: 64,
                count: 50
            },
            SizeCount {
                size: 32,
                count: 100
            }
        ]
    );
    // 500 ns is in [256, 511]; 2 ms in [2^20, 2^21 - 1].
    assert_eq!(
        lifetimes.histogram,
        vec![
            LifetimeBucket {
                min_ns: 256,
                max_ns: Some(511),
                count: 150
            },
            LifetimeBucket {
                min_ns: 1 << 20,
                max_ns: Some((1 << 21) - 1),
                count: 120
            }
        ]
    );
    golden("lifetimes", lifetimes);
}

#[test]
fn fragmentation_measures_gaps_at_the_peak_and_at_the_end() {
    let mut s = Session::new(Mode::Run);
    let site = s.stack(0x40_1900);
    // Five 64-byte blocks (jemalloc class 64) back to back from 0x10000 (the peak: no gap),
    // then free the 2nd and 4th: two gaps of 64 -> fragmentation 1 - 64/128 = 0.5.
    for i in 0..5u64 {
        s.malloc(1.0 + i as f64, 0x1_0000 + i * 64, 64, site);
    }
    s.free(10.0, 0x1_0040);
    s.free(11.0, 0x1_00c0);
    // A block in another 64 MiB window.
    s.malloc(12.0, 0x1000_0000, 100, site);
    s.free(13.0, 0x1000_0000);
    let report = s.report(Allocator::Jemalloc, 20, None);
    let fragmentation = &report.fragmentation;
    let at_peak = fragmentation.at_peak.as_ref().unwrap();
    assert_eq!((at_peak.ranges, at_peak.free_bytes), (1, 0));
    let at_end = &fragmentation.at_end;
    assert_eq!(
        (at_end.ranges, at_end.used_bytes, at_end.free_bytes),
        (1, 192, 128)
    );
    assert_eq!(at_end.largest_ranges[0].largest_free_bytes, 64);
    assert_eq!(at_end.largest_ranges[0].fragmentation, 0.5);
    golden("fragmentation", fragmentation);
}

/// Times are whole clock ticks: blocks created after the peak in the peak's own tick have the
/// peak's time, and are still not part of the heap at the peak.
#[test]
fn the_heap_at_the_peak_leaves_out_blocks_created_after_it_in_its_tick() {
    let mut s = Session::new(Mode::Run);
    let site = s.stack(0x40_1900);
    // All in one tick: five 64-byte blocks (the 5th sets the peak), two of them freed, then
    // two new ones right after the 5th (no new peak), one of which is freed again.
    for i in 0..5u64 {
        s.malloc(1.0, 0x1_0000 + i * 64, 64, site);
    }
    s.free(1.0, 0x1_0040);
    s.free(1.0, 0x1_00c0);
    s.malloc(1.0, 0x1_0140, 64, site);
    s.malloc(1.0, 0x1_0180, 64, site);
    s.free(1.0, 0x1_0180);
    let report = s.report(Allocator::Jemalloc, 20, None);
    let at_peak = report.fragmentation.at_peak.as_ref().unwrap();
    assert_eq!(
        (at_peak.ranges, at_peak.used_bytes, at_peak.free_bytes),
        (1, 5 * 64, 0),
        "the five blocks of the peak, back to back"
    );
    assert_eq!(at_peak.largest_ranges[0].blocks, 5);
}

#[test]
fn realloc_chains_and_odd_frees() {
    let mut s = Session::new(Mode::Run);
    let origin = s.stack(0x40_1a00);
    let grow = s.stack(0x40_1b00);
    s.malloc(1.0, 0x1000, 16, origin);
    let mut addr = 0x1000;
    for i in 1..=5u64 {
        let new = 0x1000 + i * 0x1000;
        s.realloc(1.0 + i as f64, addr, new, 16 << i, grow);
        addr = new;
    }
    s.free(10.0, addr);
    s.free(11.0, addr); // double free
    s.free(12.0, 0xdead0); // never allocated
    // A live chain of two.
    s.malloc(13.0, 0x2_0000, 8, origin);
    s.realloc(14.0, 0x2_0000, 0x2_0000, 24, grow);
    s.realloc(15.0, 0x2_0000, 0x3_0000, 40, grow);
    let report = s.report(Allocator::Glibc, 20, Some(4));
    let reallocs = &report.reallocs;
    assert_eq!(reallocs.reallocs, 7);
    let chains: Vec<(u32, u64, u64, bool)> = reallocs
        .longest_chains
        .iter()
        .map(|c| (c.reallocs, c.first_size, c.final_size, c.live))
        .collect();
    assert_eq!(chains, vec![(5, 16, 512, false), (2, 8, 40, true)]);
    assert_eq!((reallocs.double_frees, reallocs.unknown_frees), (1, 1));
    assert_eq!(reallocs.odd_frees.len(), 2);
    assert!(reallocs.odd_frees[0].double_free);
    assert_eq!(reallocs.odd_frees[0].alloc_stack_id, Some(grow.0));
    assert!(!reallocs.odd_frees[1].double_free);
    let per_op = report.per_operation.as_ref().unwrap();
    // 2 mallocs + 7 reallocs over 4 operations.
    assert_eq!((per_op.ops, per_op.allocations_per_op), (4, 2.25));
    golden("reallocs", &(reallocs, per_op));
}

#[test]
fn stack_ids_cover_every_reference() {
    let s = known_peak();
    let report = s.report(Allocator::Glibc, 50, None);
    assert_eq!(
        report.stack_ids().into_iter().collect::<Vec<_>>(),
        vec![0, 1]
    );
}
