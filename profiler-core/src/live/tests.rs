use super::*;
use crate::event::Event;
use crate::heap::Mode;
use profiler_common::EventKind;

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
}

impl Harness {
    fn new() -> Self {
        Self {
            recorder: Recorder::new(Mode::Run),
            model: LiveModel::new(0),
            namer: ByAddress(0),
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
        self.model.snapshot(
            &self.recorder,
            &mut self.namer,
            now_ns,
            SessionFacts::default(),
        )
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
    for _ in 0..3 {
        sort = sort.next();
        seen.push(sort);
    }
    assert_eq!(sort.next(), SiteSort::LiveBytes);
    seen.dedup();
    assert_eq!(seen.len(), 4);
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
fn growth_ranks_sites_by_rate() {
    let mut h = Harness::new();
    let mut addr = 0x10000;
    // 0xa grows by 100 B/s, 0xb by 1000 B/s, 0xc is flat, 0xd shrinks.
    h.malloc(1, 0x100, 50, 0, 0xc);
    h.malloc(1, 0x200, 5000, 0, 0xd);
    h.malloc(1, 0x300, 5000, 0, 0xd);
    h.snapshot(0);
    for second in 1..=4u64 {
        h.malloc(1, addr, 100, second * SEC, 0xa);
        h.malloc(1, addr + 0x1000, 1000, second * SEC, 0xb);
        addr += 0x2000;
        if second == 2 {
            h.free(0x200, second * SEC);
        }
        h.snapshot(second * SEC);
    }
    let snapshot = h.snapshot(4 * SEC);
    let growing: Vec<(String, f64)> = snapshot
        .growing
        .iter()
        .map(|row| (row.names.function.to_string(), row.bytes_per_sec))
        .collect();
    assert_eq!(
        growing,
        [("fb".to_string(), 1000.0), ("fa".to_string(), 100.0)]
    );
    assert_eq!(growth_rows(&snapshot.growing, "FA").len(), 1);
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
    let snapshot = h.snapshot(SEC);
    let threads: Vec<(u32, u64, u64, u64)> = snapshot
        .threads
        .iter()
        .map(|t| (t.tid, t.live_bytes, t.live_blocks, t.allocations))
        .collect();
    assert_eq!(threads, [(2, 1000, 1, 1), (1, 300, 3, 13)]);
    let sizes: Vec<(u64, u64, u64, u64, u64)> = snapshot
        .sizes
        .iter()
        .map(|s| (s.low, s.high, s.allocations, s.live_blocks, s.live_bytes))
        .collect();
    assert_eq!(
        sizes,
        [
            (9, 16, 10, 0, 0),
            (65, 128, 3, 3, 300),
            (513, 1024, 1, 1, 1000)
        ]
    );
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
    let recorded = recorded_snapshots(reader).expect("replay");
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
