use super::*;
use crate::event::Event;
use crate::maps::ProcessMaps;

const START: u64 = 10_000_000_000;

fn event(kind: EventKind, addr: u64, size: u64, old_addr: u64, ts_from_start_ms: u64) -> Event {
    Event {
        kind,
        tid: 99,
        ts_ns: START + ts_from_start_ms * 1_000_000,
        addr,
        size,
        old_addr,
        aux: 0,
        flags: 0,
    }
}

pub(crate) fn meta(mode: Mode) -> ReportMeta {
    ReportMeta {
        command: vec!["./leaky".into(), "--n".into(), "3".into()],
        executable: None,
        pid: 4321,
        mode,
        exit: Some(ExitStatus {
            code: Some(0),
            signal: None,
        }),
        start_ns: START,
        duration: Duration::from_millis(2500),
        probes: vec![ProbeInfo {
            function: "malloc".into(),
            module: "/usr/lib/libc.so.6".into(),
            offset: 0xa0b0,
            single_step: false,
            aliases: vec!["__libc_malloc".into()],
        }],
        lost: LostCounts::default(),
    }
}

/// Two leak sites (A: 2 blocks, 300 bytes; B: 1 block, 300 bytes, truncated stack), one freed
/// block, a block without a stack, a live mapping and a double free.
pub(crate) fn sample() -> (HeapState, StackTable) {
    let mut stacks = StackTable::new();
    let a = stacks.intern(&[0x1000, 0x2000], false);
    let b = stacks.intern(&[0x3000], true);
    let mut heap = HeapState::new(Mode::Run);
    let mut apply = |e: Event, stack| heap.apply(&e, stack);
    apply(event(EventKind::Malloc, 0x10, 100, 0, 100), Some(a));
    apply(event(EventKind::Calloc, 0x20, 200, 0, 300), Some(a));
    apply(event(EventKind::Malloc, 0x30, 300, 0, 200), Some(b));
    apply(event(EventKind::Malloc, 0x40, 7, 0, 400), None);
    apply(event(EventKind::Malloc, 0x50, 1000, 0, 500), Some(a));
    apply(event(EventKind::Free, 0x50, 0, 0, 600), None);
    apply(event(EventKind::Free, 0x50, 0, 0, 700), None);
    apply(event(EventKind::Mmap, 0x7000_0000, 5000, 0, 800), Some(b));
    (heap, stacks)
}

#[test]
fn summary_copies_heap_figures_and_times() {
    let (heap, stacks) = sample();
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report(&heap, &stacks, &mut symbolizer, &meta(Mode::Run));
    let s = &report.summary;
    assert_eq!((s.allocations, s.frees, s.bytes_allocated), (5, 1, 1607));
    assert_eq!((s.live_blocks, s.live_bytes), (4, 607));
    assert_eq!((s.peak_live_bytes, s.peak_live_blocks), (1607, 5));
    assert_eq!(s.peak_time_secs, Some(0.5));
    assert_eq!(s.double_frees, 1);
    let names: Vec<&str> = s.by_function.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["malloc", "calloc", "free", "mmap"]);
    assert_eq!(
        s.by_function.get("malloc"),
        Some(&CallCount {
            calls: 4,
            bytes: 1407
        })
    );
    assert_eq!(
        s.by_function.get("free"),
        Some(&CallCount {
            calls: 2,
            bytes: 1000
        })
    );
    assert_eq!(
        (s.mmap.calls, s.mmap.bytes, s.mmap.live_regions),
        (1, 8192, 1)
    );
    assert_eq!(report.target.duration_secs, 2.5);
    assert_eq!(report.memprof_version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn leaks_grouped_by_stack_and_sorted() {
    let (heap, stacks) = sample();
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report(&heap, &stacks, &mut symbolizer, &meta(Mode::Run));
    let leaks = &report.leaks;
    assert_eq!(leaks.len(), 3);
    // A and B both hold 300 bytes: A has more blocks.
    assert_eq!((leaks[0].blocks, leaks[0].bytes), (2, 300));
    assert_eq!(
        (leaks[0].first_seen_secs, leaks[0].last_seen_secs),
        (0.1, 0.3)
    );
    let addresses: Vec<&str> = leaks[0].stack.iter().map(|f| f.address.as_str()).collect();
    assert_eq!(addresses, ["0x1000", "0x2000"]);
    assert!(!leaks[0].truncated);
    assert_eq!(
        (leaks[1].blocks, leaks[1].bytes, leaks[1].truncated),
        (1, 300, true)
    );
    assert_eq!((leaks[2].bytes, leaks[2].stack.len()), (7, 0));
    let frame = &leaks[0].stack[0];
    assert_eq!(frame.module, "[unknown]");
    assert_eq!(frame.function, None);
    assert_eq!(frame.display_name(), "0x1000");
}

#[test]
fn sites_with_equal_size_and_count_sort_by_first_frame_name() {
    let mut stacks = StackTable::new();
    let late = stacks.intern(&[0x9000], false);
    let early = stacks.intern(&[0x100], false);
    let mut heap = HeapState::new(Mode::Attach);
    heap.apply(&event(EventKind::Malloc, 0x10, 8, 0, 1), Some(late));
    heap.apply(&event(EventKind::Malloc, 0x20, 8, 0, 2), Some(early));
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report(&heap, &stacks, &mut symbolizer, &meta(Mode::Attach));
    let first: Vec<String> = report
        .leaks
        .iter()
        .map(|s| s.stack[0].display_name())
        .collect();
    assert_eq!(first, ["0x100", "0x9000"]);
    assert_eq!(report.mode, Mode::Attach);
}

#[test]
fn mappings_and_double_frees_are_reported() {
    let (heap, stacks) = sample();
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report(&heap, &stacks, &mut symbolizer, &meta(Mode::Run));
    assert_eq!(report.mappings.len(), 1);
    let mapping = &report.mappings[0];
    assert_eq!(
        (mapping.blocks, mapping.bytes, mapping.truncated),
        (1, 8192, true)
    );
    assert_eq!(mapping.first_seen_secs, 0.8);
    assert_eq!(report.double_frees.len(), 1);
    let double = &report.double_frees[0];
    assert_eq!(
        (double.address.as_str(), double.size, double.tid),
        ("0x50", 1000, 99)
    );
    assert_eq!(double.time_secs, 0.7);
    assert_eq!(double.alloc_stack.len(), 2);
}

#[test]
fn lost_events_feed_summary_and_lost_section() {
    let (heap, stacks) = sample();
    let mut meta = meta(Mode::Run);
    meta.lost.by_kind[EventKind::Free as usize] = 4;
    meta.lost.inflight_full = 1;
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report(&heap, &stacks, &mut symbolizer, &meta);
    assert_eq!(report.summary.lost_events, 5);
    assert_eq!(report.lost.total, 5);
    assert_eq!(report.lost.by_kind.get("free"), Some(&4));
    assert_eq!(report.lost.uncertain.len(), 2);
}

#[test]
fn frame_display_names() {
    let frame = |function: Option<&str>, module: &str| StackFrame {
        function: function.map(str::to_owned),
        module: module.to_owned(),
        address: "0x7f00".into(),
        offset: 0x1234,
        file: None,
        line: None,
        inlined: false,
    };
    assert_eq!(frame(Some("main"), "app").display_name(), "main");
    assert_eq!(frame(None, "libfoo.so").display_name(), "libfoo.so+0x1234");
    assert_eq!(frame(None, "[unknown]").display_name(), "0x7f00");
    let located = StackFrame {
        file: Some("/src/app/main.c".into()),
        line: Some(12),
        ..frame(Some("main"), "app")
    };
    assert_eq!(located.located_name(), "main (main.c:12)");
    let no_function = StackFrame {
        file: Some("/src/app/main.c".into()),
        line: Some(12),
        ..frame(None, "app")
    };
    assert_eq!(no_function.located_name(), "app+0x1234");
}

#[test]
fn sites_list_every_allocating_stack_with_live_and_peak_figures() {
    let (heap, stacks) = sample();
    // The same events as `sample`, followed by the site statistics.
    let mut sites = SiteStats::new();
    let mut replay = HeapState::new(Mode::Run);
    let a = StackId(0);
    let b = StackId(1);
    for (e, stack) in [
        (event(EventKind::Malloc, 0x10, 100, 0, 100), Some(a)),
        (event(EventKind::Calloc, 0x20, 200, 0, 300), Some(a)),
        (event(EventKind::Malloc, 0x30, 300, 0, 200), Some(b)),
        (event(EventKind::Malloc, 0x40, 7, 0, 400), None),
        (event(EventKind::Malloc, 0x50, 1000, 0, 500), Some(a)),
        (event(EventKind::Free, 0x50, 0, 0, 600), None),
        (event(EventKind::Free, 0x50, 0, 0, 700), None),
        (event(EventKind::Mmap, 0x7000_0000, 5000, 0, 800), Some(b)),
    ] {
        let effect = replay.apply(&e, stack);
        sites.observe(&e, stack, &effect);
    }
    assert_eq!(replay.stats(), heap.stats());
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report_with_sites(&heap, &stacks, &sites, &mut symbolizer, &meta(Mode::Run));
    type Figures = (u64, u64, u64, u64, u64, u64, f64, f64, usize, bool);
    let figures: Vec<Figures> = report
        .sites
        .iter()
        .map(|s| {
            (
                s.allocations,
                s.allocated_bytes,
                s.live_blocks,
                s.live_bytes,
                s.peak_live_blocks,
                s.peak_live_bytes,
                s.first_alloc_secs,
                s.last_alloc_secs,
                s.stack.len(),
                s.truncated,
            )
        })
        .collect();
    assert_eq!(
        figures,
        [
            (3, 1300, 2, 300, 3, 1300, 0.1, 0.5, 2, false),
            (1, 300, 1, 300, 1, 300, 0.2, 0.2, 1, true),
        ]
    );
    // No module could be opened (the maps are empty).
    assert!(report.modules.is_empty());
    // Without site statistics the list is empty.
    let plain = build_report(&heap, &stacks, &mut symbolizer, &meta(Mode::Run));
    assert!(plain.sites.is_empty());
}

#[test]
fn sites_are_named_after_the_first_frame_outside_the_allocator() {
    let frame = |function: &str| StackFrame {
        function: Some(function.to_owned()),
        module: "app".into(),
        address: "0x1".into(),
        offset: 1,
        file: None,
        line: None,
        inlined: false,
    };
    let rust = [
        frame("alloc::alloc::alloc"),
        frame("alloc::raw_vec::RawVecInner<A>::try_allocate_in"),
        frame("<alloc::vec::Vec<T,A> as core::clone::Clone>::clone"),
        frame("<[u8] as alloc::borrow::ToOwned>::to_owned"),
        frame("server::leak_payload"),
        frame("server::handle"),
    ];
    assert_eq!(
        crate::report::site_frame(&rust).and_then(|f| f.function.as_deref()),
        Some("server::leak_payload")
    );
    let cpp = [frame("operator new(unsigned long)"), frame("shapes::make")];
    assert_eq!(
        crate::report::site_frame(&cpp).and_then(|f| f.function.as_deref()),
        Some("shapes::make")
    );
    let only_plumbing = [frame("alloc::alloc::alloc")];
    assert_eq!(
        crate::report::site_frame(&only_plumbing).and_then(|f| f.function.as_deref()),
        Some("alloc::alloc::alloc")
    );
    assert!(crate::report::site_frame(&[]).is_none());
    assert!(!frame("allocate_buffer").is_allocation_plumbing());
}
