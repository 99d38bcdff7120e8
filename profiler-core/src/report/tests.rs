use super::*;
use crate::event::Event;
use crate::maps::ProcessMaps;

const START: u64 = 10_000_000_000;

/// `ms` milliseconds after the session's start.
fn ms(ms: u64) -> u64 {
    START + ms * 1_000_000
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
    apply(
        Event::of(EventKind::Malloc)
            .addr(0x10)
            .size(100)
            .at(ms(100))
            .tid(99),
        Some(a),
    );
    apply(
        Event::of(EventKind::Calloc)
            .addr(0x20)
            .size(200)
            .at(ms(300))
            .tid(99),
        Some(a),
    );
    apply(
        Event::of(EventKind::Malloc)
            .addr(0x30)
            .size(300)
            .at(ms(200))
            .tid(99),
        Some(b),
    );
    apply(
        Event::of(EventKind::Malloc)
            .addr(0x40)
            .size(7)
            .at(ms(400))
            .tid(99),
        None,
    );
    apply(
        Event::of(EventKind::Malloc)
            .addr(0x50)
            .size(1000)
            .at(ms(500))
            .tid(99),
        Some(a),
    );
    apply(
        Event::of(EventKind::Free).addr(0x50).at(ms(600)).tid(99),
        None,
    );
    apply(
        Event::of(EventKind::Free).addr(0x50).at(ms(700)).tid(99),
        None,
    );
    apply(
        Event::of(EventKind::Mmap)
            .addr(0x7000_0000)
            .size(5000)
            .at(ms(800))
            .tid(99),
        Some(b),
    );
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
    heap.apply(
        &Event::of(EventKind::Malloc)
            .addr(0x10)
            .size(8)
            .at(ms(1))
            .tid(99),
        Some(late),
    );
    heap.apply(
        &Event::of(EventKind::Malloc)
            .addr(0x20)
            .size(8)
            .at(ms(2))
            .tid(99),
        Some(early),
    );
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
        (
            Event::of(EventKind::Malloc)
                .addr(0x10)
                .size(100)
                .at(ms(100))
                .tid(99),
            Some(a),
        ),
        (
            Event::of(EventKind::Calloc)
                .addr(0x20)
                .size(200)
                .at(ms(300))
                .tid(99),
            Some(a),
        ),
        (
            Event::of(EventKind::Malloc)
                .addr(0x30)
                .size(300)
                .at(ms(200))
                .tid(99),
            Some(b),
        ),
        (
            Event::of(EventKind::Malloc)
                .addr(0x40)
                .size(7)
                .at(ms(400))
                .tid(99),
            None,
        ),
        (
            Event::of(EventKind::Malloc)
                .addr(0x50)
                .size(1000)
                .at(ms(500))
                .tid(99),
            Some(a),
        ),
        (
            Event::of(EventKind::Free).addr(0x50).at(ms(600)).tid(99),
            None,
        ),
        (
            Event::of(EventKind::Free).addr(0x50).at(ms(700)).tid(99),
            None,
        ),
        (
            Event::of(EventKind::Mmap)
                .addr(0x7000_0000)
                .size(5000)
                .at(ms(800))
                .tid(99),
            Some(b),
        ),
    ] {
        let effect = replay.apply(&e, stack);
        sites.observe(&e, stack, &effect);
    }
    assert_eq!(replay.stats(), heap.stats());
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report_with_sites(
        &heap,
        &stacks,
        &sites,
        None,
        &mut symbolizer,
        &meta(Mode::Run),
    );
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

/// `count` distinct stacks `[0x1000 + 0x10 * i, 0x40_0000]`, each leaking one block of
/// `size(i)` bytes (allocated at i ms), with their site statistics; stack i is
/// `StackId(i)`. Block i is at 0x10_0000 + 0x100 * i.
fn many_sites(count: u64, size: impl Fn(u64) -> u64) -> (HeapState, StackTable, SiteStats) {
    let mut stacks = StackTable::new();
    let mut heap = HeapState::new(Mode::Run);
    let mut sites = SiteStats::new();
    for i in 0..count {
        let id = stacks.intern(&[0x1000 + 0x10 * i, 0x40_0000], false);
        assert_eq!(id, StackId(i as u32));
        let e = Event::of(EventKind::Malloc)
            .addr(0x10_0000 + 0x100 * i)
            .size(size(i))
            .at(ms(i))
            .tid(99);
        let effect = heap.apply(&e, Some(id));
        sites.observe(&e, Some(id), &effect);
    }
    (heap, stacks, sites)
}

fn first_addresses(stacks: &[StackFrame]) -> &str {
    stacks[0].address.as_str()
}

#[test]
fn lists_the_first_sites_and_sums_up_the_others() {
    // Sizes 8..=64 by i % 8: the 64-byte sites come first, and there are more than
    // LISTED_SITES of them only from 8 * LISTED_SITES sites on.
    let count = LISTED_SITES as u64 + 700;
    let size = |i: u64| 8 + 8 * (i % 8);
    let (heap, stacks, sites) = many_sites(count, size);
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report_with_sites(
        &heap,
        &stacks,
        &sites,
        None,
        &mut symbolizer,
        &meta(Mode::Run),
    );

    // What a full sort in report order gives: bytes desc, then the name (here the first
    // frame's address in hex, compared as text), then the addresses.
    let mut expected: Vec<u64> = (0..count).collect();
    let name = |i: &u64| format!("{:#x}", 0x1000 + 0x10 * i);
    expected.sort_by(|a, b| size(*b).cmp(&size(*a)).then(name(a).cmp(&name(b))));
    let listed: Vec<String> = report
        .leaks
        .iter()
        .map(|site| first_addresses(&site.stack).to_owned())
        .collect();
    let want: Vec<String> = expected[..LISTED_SITES].iter().map(name).collect();
    assert_eq!(listed, want);
    let listed_sites: Vec<String> = report
        .sites
        .iter()
        .map(|site| first_addresses(&site.stack).to_owned())
        .collect();
    assert_eq!(listed_sites, want);

    let total: u64 = (0..count).map(size).sum();
    let listed_bytes: u64 = report.leaks.iter().map(|site| site.bytes).sum();
    let rest: Vec<u64> = expected[LISTED_SITES..].to_vec();
    let rest_bytes: u64 = rest.iter().map(|&i| size(i)).sum();
    assert_eq!(listed_bytes + rest_bytes, total);
    assert_eq!(
        report.unlisted_leaks,
        Some(UnlistedSites {
            sites: 700,
            blocks: 700,
            bytes: rest_bytes,
        })
    );
    assert_eq!(
        report.unlisted_sites,
        Some(UnlistedAllocationSites {
            sites: 700,
            allocations: 700,
            allocated_bytes: rest_bytes,
            live_blocks: 700,
            live_bytes: rest_bytes,
            peak_live_blocks: 700,
            peak_live_bytes: rest_bytes,
        })
    );
    assert_eq!(report.unlisted_mappings, None);
    // report.json says so, under the documented keys.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["unlisted_leaks"]["sites"], 700);
    assert_eq!(json["unlisted_leaks"]["bytes"], rest_bytes);
    assert_eq!(json["unlisted_sites"]["allocated_bytes"], rest_bytes);
    assert!(json.get("unlisted_mappings").is_none());
    assert!(json.get("flame_stacks").is_none());
}

#[test]
fn equal_sites_beyond_the_list_are_cut_in_report_order() {
    // Every site weighs the same: the cut falls inside one run of ties, which the name and
    // then the addresses decide, as they do for a full sort.
    let count = LISTED_SITES as u64 * 2 + 1;
    let (heap, stacks, sites) = many_sites(count, |_| 16);
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report_with_sites(
        &heap,
        &stacks,
        &sites,
        None,
        &mut symbolizer,
        &meta(Mode::Run),
    );
    let mut names: Vec<String> = (0..count)
        .map(|i| format!("{:#x}", 0x1000 + 0x10 * i))
        .collect();
    names.sort();
    let listed: Vec<&str> = report
        .leaks
        .iter()
        .map(|site| first_addresses(&site.stack))
        .collect();
    assert_eq!(listed, names[..LISTED_SITES]);
    let rest = report.unlisted_leaks.unwrap();
    assert_eq!(
        (rest.sites, rest.blocks, rest.bytes),
        (1001, 1001, 16 * 1001)
    );
}

#[test]
fn nothing_is_summed_up_when_every_site_is_listed() {
    let (heap, stacks, sites) = many_sites(LISTED_SITES as u64, |i| 1 + i);
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report_with_sites(
        &heap,
        &stacks,
        &sites,
        None,
        &mut symbolizer,
        &meta(Mode::Run),
    );
    assert_eq!(report.leaks.len(), LISTED_SITES);
    assert_eq!(report.sites.len(), LISTED_SITES);
    assert_eq!(report.unlisted_leaks, None);
    assert_eq!(report.unlisted_sites, None);
    let json = serde_json::to_value(&report).unwrap();
    for key in ["unlisted_leaks", "unlisted_mappings", "unlisted_sites"] {
        assert!(json.get(key).is_none(), "{key}");
    }
}

#[test]
fn flame_stacks_hold_every_site_listed_or_not() {
    let count = LISTED_SITES as u64 + 300;
    let size = |i: u64| 1 + i % 5;
    let (heap, stacks, sites) = many_sites(count, size);
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report_with_sites(
        &heap,
        &stacks,
        &sites,
        None,
        &mut symbolizer,
        &meta(Mode::Run),
    );
    let flames = report.flame_stacks.as_deref().unwrap();
    assert_eq!(flames.stacks().len(), count as usize);
    let mut sum = StackWeights::default();
    for (path, weights) in flames.stacks() {
        // Root first: the outer frame, then the allocating one.
        assert_eq!(flames.name(path[0]), "0x400000");
        assert_eq!(path.len(), 2);
        sum.add(weights);
    }
    let total: u64 = (0..count).map(size).sum();
    assert_eq!(
        sum,
        StackWeights {
            leaked_bytes: total,
            lost_bytes: 0,
            allocated_bytes: total,
            allocations: count,
            peak_bytes: total,
        }
    );
    // Nothing unattributed: no `[no stack]` stack.
    assert!(
        flames
            .stacks()
            .all(|(path, _)| flames.name(path[0]) != NO_STACK)
    );
}

#[test]
fn flame_stacks_of_a_read_back_report_put_unlisted_sites_apart() {
    let count = LISTED_SITES as u64 + 10;
    let (heap, stacks, sites) = many_sites(count, |i| 10 + i);
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report_with_sites(
        &heap,
        &stacks,
        &sites,
        None,
        &mut symbolizer,
        &meta(Mode::Run),
    );
    let json = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert!(back.flame_stacks.is_none());
    let flames = FlameStacks::from_listed_sites(&back);
    let unlisted: Vec<&StackWeights> = flames
        .stacks()
        .filter(|(path, _)| flames.name(path[0]) == UNLISTED)
        .map(|(_, weights)| weights)
        .collect();
    // The 10 smallest: 10..20 bytes.
    let rest: u64 = (10..20).sum();
    assert_eq!(
        unlisted,
        [&StackWeights {
            leaked_bytes: rest,
            lost_bytes: 0,
            allocated_bytes: rest,
            allocations: 10,
            peak_bytes: rest,
        }]
    );
    assert_eq!(flames.stacks().len(), LISTED_SITES + 1);
}

#[test]
fn a_leak_check_splits_sites_by_class_lists_lost_first_and_weighs_the_leak_graph() {
    use crate::leak_check::{LeakCheck, LiveBlock, Reachability::*, ScanStats};
    use crate::render::{FlameKind, folded_lines_of, write_text};
    let (heap, stacks) = sample();
    // Site A's two blocks fall in two classes; B's block is reachable; the stackless one lost.
    let blocks = [
        LiveBlock {
            addr: 0x10,
            size: 100,
        },
        LiveBlock {
            addr: 0x20,
            size: 200,
        },
        LiveBlock {
            addr: 0x30,
            size: 300,
        },
        LiveBlock {
            addr: 0x40,
            size: 7,
        },
    ];
    let check = LeakCheck::new(
        &blocks,
        &[
            DefinitelyLost,
            StillReachable,
            StillReachable,
            IndirectlyLost,
        ],
        ScanStats::default(),
    );
    let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
    let report = build_report_with_sites(
        &heap,
        &stacks,
        &SiteStats::default(),
        Some(&check),
        &mut symbolizer,
        &meta(Mode::Run),
    );
    let listed: Vec<(Option<Reachability>, u64, u64, usize)> = report
        .leaks
        .iter()
        .map(|site| (site.reachability, site.blocks, site.bytes, site.stack.len()))
        .collect();
    assert_eq!(
        listed,
        [
            (Some(DefinitelyLost), 1, 100, 2),
            (Some(IndirectlyLost), 1, 7, 0),
            (Some(StillReachable), 1, 300, 1),
            (Some(StillReachable), 1, 200, 2),
        ]
    );
    let summary = report.summary.leak_check.as_ref().expect("a leak check");
    assert_eq!(
        (
            summary.definitely_lost.blocks,
            summary.definitely_lost.bytes
        ),
        (1, 100)
    );
    assert_eq!(summary.still_reachable.bytes, 500);
    assert_eq!(summary.lost_bytes(), 107);
    // leaks.svg weighs what is lost; diff's live-at-end every live byte.
    let weight = |kind| -> u64 {
        folded_lines_of(&report, kind)
            .iter()
            .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(weight(FlameKind::Leaks), 107);
    assert_eq!(weight(FlameKind::Lost), 107);
    assert_eq!(weight(FlameKind::LiveAtEnd), 607);
    assert!(
        FlameKind::Leaks
            .title(&report)
            .contains("500 B still reachable")
    );
    // The terminal summary: the classes, then only lost sites in the top list.
    let mut text = Vec::new();
    write_text(&report, &mut text, 10).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(
            "Leak check: 1 block (100 B) definitely lost, 1 block (7 B) indirectly lost, \
             0 blocks (0 B) possibly lost; 2 blocks (500 B) still reachable"
        ),
        "{text}"
    );
    assert!(
        text.contains("#2 7 B in 1 blocks, indirectly lost"),
        "{text}"
    );
    assert!(!text.contains("#3"), "{text}");
    assert!(text.contains("... 2 more sites"), "{text}");
    // Read back from report.json, the same graph.
    let json = serde_json::to_string(&report).unwrap();
    let mut read_back: Report = serde_json::from_str(&json).unwrap();
    read_back.flame_stacks = None;
    assert_eq!(
        folded_lines_of(&read_back, FlameKind::Leaks),
        folded_lines_of(&report, FlameKind::Leaks)
    );
}

#[test]
fn diff_compares_lost_bytes_per_site() {
    use crate::diff::DiffReport;
    use crate::leak_check::{LeakCheck, LiveBlock, Reachability::*, ScanStats};
    let (heap, stacks) = sample();
    let blocks = [
        LiveBlock {
            addr: 0x10,
            size: 100,
        },
        LiveBlock {
            addr: 0x20,
            size: 200,
        },
        LiveBlock {
            addr: 0x30,
            size: 300,
        },
        LiveBlock {
            addr: 0x40,
            size: 7,
        },
    ];
    let check = LeakCheck::new(
        &blocks,
        &[
            DefinitelyLost,
            DefinitelyLost,
            StillReachable,
            StillReachable,
        ],
        ScanStats::default(),
    );
    let report = |check: Option<&LeakCheck>| {
        let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
        let stats = SiteStats::default();
        build_report_with_sites(
            &heap,
            &stacks,
            &stats,
            check,
            &mut symbolizer,
            &meta(Mode::Run),
        )
    };
    let (unchecked, checked) = (report(None), report(Some(&check)));
    let diff = DiffReport::new(("a".into(), &unchecked), ("b".into(), &checked));
    assert_eq!(diff.totals.lost_bytes_at_end.b, 300);
    assert_eq!(diff.totals.live_bytes_at_end.delta, 0);
    let site_a = diff
        .sites
        .iter()
        .find(|site| site.stack.last().is_some_and(|frame| frame == "0x1000"))
        .expect("site A");
    assert_eq!(
        (site_a.lost_bytes_at_end.a, site_a.lost_bytes_at_end.b),
        (0, 300)
    );
    assert_eq!(site_a.live_bytes_at_end.delta, 0);
}
