use super::*;
use crate::heap::Mode;
use crate::report::*;

fn frame(
    function: Option<&str>,
    file: Option<(&str, u32)>,
    module: &str,
    address: u64,
) -> StackFrame {
    StackFrame {
        function: function.map(str::to_owned),
        module: module.to_owned(),
        address: format!("{address:#x}"),
        offset: address - 0x400000,
        file: file.map(|(name, _)| name.to_owned()),
        line: file.map(|(_, line)| line),
        inlined: false,
    }
}

fn site(blocks: u64, bytes: u64, stack: Vec<StackFrame>, truncated: bool) -> Site {
    Site {
        blocks,
        bytes,
        first_seen_secs: 0.25,
        last_seen_secs: 1.5,
        stack,
        truncated,
        reachability: None,
    }
}

fn report() -> Report {
    let main = frame(Some("main"), Some(("leaky.c", 40)), "leaky", 0x401200);
    let make_list = frame(Some("make_list"), Some(("leaky.c", 12)), "leaky", 0x401100);
    let helper = frame(Some("helper<[u8; 4]>"), None, "leaky", 0x401050);
    let unknown = frame(None, None, "[unknown]", 0x7fff0000);
    Report {
        memprof_version: "0.1.0".into(),
        mode: Mode::Run,
        target: Target {
            command: vec!["./leaky".into(), "3".into()],
            executable: None,
            pid: 777,
            exit: Some(ExitStatus {
                code: Some(0),
                signal: None,
            }),
            duration_secs: 2.0,
            peak_rss_bytes: None,
            held: None,
            capture: None,
        },
        probes: vec![],
        summary: Summary {
            allocations: 1_234_567,
            failed_allocations: 2,
            frees: 1_234_000,
            bytes_allocated: 3 << 20,
            live_blocks: 567,
            live_bytes: 1536,
            peak_live_bytes: 1 << 20,
            peak_live_blocks: 1000,
            peak_time_secs: Some(0.75),
            lost_events: 3,
            unknown_frees: 3,
            double_frees: 0,
            allocator_internal_frees: 0,
            unknown_reallocs: 0,
            overwritten_blocks: 0,
            released_by_exec: None,
            inherited_at_fork: None,
            by_function: KindMap(vec![(
                "malloc".into(),
                CallCount {
                    calls: 1_234_567,
                    bytes: 3 << 20,
                },
            )]),
            mmap: MmapSummary {
                calls: 0,
                failed_calls: 0,
                bytes: 0,
                allocator_internal_mmaps: 0,
                munmap_calls: 0,
                unknown_munmaps: 0,
                allocator_internal_munmaps: 0,
                live_regions: 0,
                live_bytes: 0,
                peak_bytes: 0,
            },
            leak_check: None,
        },
        lost: Lost {
            total: 3,
            by_kind: KindMap(vec![("free".into(), 3)]),
            stack_errors: 0,
            inflight_full: 0,
            uncertain: vec!["3 lost free events: live_bytes may be overstated".into()],
        },
        leaks: vec![
            site(500, 1000, vec![make_list.clone(), main.clone()], false),
            site(60, 500, vec![helper, make_list, main.clone()], true),
            site(6, 30, vec![unknown, main], false),
            site(1, 6, vec![], false),
        ],
        unlisted_leaks: None,
        mappings: vec![],
        unlisted_mappings: None,
        double_frees: vec![],
        sites: vec![],
        unlisted_sites: None,
        modules: vec![],
        analyses: None,
        warnings: Vec::new(),
        processes: Vec::new(),
        flame_stacks: None,
    }
}

fn render_text(report: &Report, top: usize) -> String {
    let mut out = Vec::new();
    write_text(report, &mut out, top).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn text_names_the_executable_under_the_command_line() {
    let mut report = report();
    report.target.executable = Some("/opt/leaky/bin/leaky".into());
    let text = render_text(&report, 2);
    assert!(
        text.starts_with(
            "memprof 0.1.0 (run) pid 777: ./leaky 3\nexecutable: /opt/leaky/bin/leaky\ntarget "
        ),
        "{text}"
    );
    // Unknown (an older recording): no line.
    assert!(!render_text(&self::report(), 2).contains("executable"));
}

/// A recording is untrusted: names that carry terminal controls are printed without them.
#[test]
fn text_prints_no_control_character_a_recording_carried() {
    let mut report = report();
    report.target.command = vec!["./leaky\x1b]0;owned\x07".into()];
    report.leaks[0].stack[0].function = Some("make_list\x1b[2J\u{9b}31m".into());
    let text = render_text(&report, 2);
    assert!(text.contains("./leaky?]0;owned?"), "{text}");
    assert!(text.contains("make_list?[2J?31m"), "{text}");
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    );
}

#[test]
fn text_says_how_an_attached_target_ended_and_only_that() {
    let mut report = report();
    report.mode = Mode::Attach;
    // It exited inside the window; memprof, not its parent, cannot tell how.
    report.target.exit = Some(ExitStatus {
        code: None,
        signal: None,
    });
    let text = render_text(&report, 2);
    for expected in [
        "target exited (exit status unknown), recorded 2.000 s",
        "  live at exit       1.5 KiB",
        "Leaks (allocated while attached, live at exit): 1.5 KiB",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("still running"), "{text}");
    assert!(!text.contains("detach"), "{text}");
    // Detached from a live process: nothing else.
    report.target.exit = None;
    let text = render_text(&report, 2);
    for expected in [
        "target still running, recorded 2.000 s",
        "  live at detach     1.5 KiB",
        "Leaks (allocated while attached, live at detach): 1.5 KiB",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("exited"), "{text}");
}

#[test]
fn text_has_numbers_lost_block_and_top_sites() {
    let text = render_text(&report(), 2);
    for expected in [
        "memprof 0.1.0 (run) pid 777: ./leaky 3",
        "target exited with code 0, recorded 2.000 s",
        "!!! LOST EVENTS: 3 events never reached memprof",
        "  ring buffer full: free 3",
        "  - 3 lost free events: live_bytes may be overstated",
        "  allocations        1,234,567 (2 failed)",
        "  frees              1,234,000",
        "  bytes allocated    3.0 MiB (3,145,728 bytes)",
        "  live at exit       1.5 KiB (1,536 bytes) in 567 blocks",
        "  peak live          1.0 MiB (1,048,576 bytes) in 1,000 blocks at 0.750 s",
        "  malloc               1,234,567 calls  3.0 MiB (3,145,728 bytes)",
        "Leaks (live at exit): 1.5 KiB (1,536 bytes) in 567 blocks from 4 sites",
        "  #1 1000 B in 500 blocks, allocated 0.250..1.500 s\n      make_list (leaky.c:12) in leaky\n      main (leaky.c:40) in leaky\n",
        "  #2 500 B in 60 blocks, allocated 0.250..1.500 s (stack truncated)\n      helper<[u8; 4]> in leaky\n",
        "  ... 2 more sites",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("#3"), "top 2 only:\n{text}");
    assert!(
        !text.contains("mmap:"),
        "no mmap activity, no mmap section:\n{text}"
    );
}

#[test]
fn text_without_losses_has_no_lost_block() {
    let mut report = report();
    report.lost = Lost {
        total: 0,
        by_kind: KindMap::default(),
        stack_errors: 0,
        inflight_full: 0,
        uncertain: vec![],
    };
    let text = render_text(&report, 10);
    assert!(!text.contains("LOST"), "{text}");
    assert!(text.contains("  #4 6 B in 1 blocks"), "{text}");
    assert!(text.contains("      0x7fff0000\n"), "{text}");
    assert!(text.contains("      [no stack]\n"), "{text}");
}

#[test]
fn held_threads_are_stated_under_the_header_and_only_then() {
    let mut report = report();
    assert!(!render_text(&report, 10).contains("held"));
    report.target.held = Some(crate::report::Held {
        times: 1234,
        secs: 0.5,
    });
    let text = render_text(&report, 10);
    assert!(
        text.contains(
            "recorded 2.000 s\nits threads were held 1,234 times (0.500 s in all) while memprof \
             caught up: no event was lost, but times and rates include those pauses\n"
        ),
        "{text}"
    );
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["target"]["held"],
        serde_json::json!({"times": 1234, "secs": 0.5})
    );
}

#[test]
fn json_parses_back_with_documented_keys() {
    let report = report();
    let mut out = Vec::new();
    write_json(&report, &mut out).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let mut top = keys(&value);
    top.sort();
    assert_eq!(
        top,
        [
            "double_frees",
            "leaks",
            "lost",
            "mappings",
            "memprof_version",
            "mode",
            "modules",
            "probes",
            "sites",
            "summary",
            "target"
        ]
    );
    assert_eq!(value["mode"], "run");
    assert_eq!(value["target"]["exit"]["code"], 0);
    assert!(value["target"]["exit"]["signal"].is_null());
    for key in [
        "allocations",
        "failed_allocations",
        "frees",
        "bytes_allocated",
        "live_blocks",
        "live_bytes",
        "peak_live_bytes",
        "peak_live_blocks",
        "peak_time_secs",
        "lost_events",
        "unknown_frees",
        "double_frees",
        "unknown_reallocs",
        "overwritten_blocks",
        "by_function",
        "mmap",
    ] {
        assert!(value["summary"].get(key).is_some(), "summary.{key}");
    }
    assert_eq!(
        value["summary"]["by_function"]["malloc"]["calls"],
        1_234_567
    );
    assert_eq!(value["lost"]["by_kind"]["free"], 3);
    let leak = &value["leaks"][0];
    assert_eq!(leak["stack"][0]["address"], "0x401100");
    assert_eq!(leak["stack"][0]["offset"], 0x1100);
    assert_eq!(leak["stack"][0]["line"], 12);
    let mut frame_keys = keys(&leak["stack"][0]);
    frame_keys.sort();
    assert_eq!(
        frame_keys,
        [
            "address", "file", "function", "inlined", "line", "module", "offset"
        ]
    );
    let back: Report = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, report);
}

#[test]
fn folded_lines_are_root_first_sorted_and_exact() {
    let mut out = Vec::new();
    write_folded(&report(), FlameKind::Leaks, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[no stack] 6\n\
         [truncated];main (leaky.c:40);make_list (leaky.c:12);helper<[u8, 4]> 500\n\
         main (leaky.c:40);0x7fff0000 30\n\
         main (leaky.c:40);make_list (leaky.c:12) 1000\n"
    );
}

#[test]
fn folded_lines_merge_identical_names() {
    let mut report = report();
    let twin = report.leaks[0].clone();
    report.leaks.push(twin);
    assert!(
        folded_lines(&report).contains(&"main (leaky.c:40);make_list (leaky.c:12) 2000".to_owned())
    );
}

#[test]
fn flamegraph_is_deterministic_svg_with_title() {
    let render = || {
        let mut out = Vec::new();
        write_flamegraph(&report(), FlameKind::Leaks, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let svg = render();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..100]);
    assert!(
        svg.contains("memprof: leaked bytes of ./leaky 3 - 1.5 KiB in 567 blocks"),
        "{svg}"
    );
    assert!(svg.contains("make_list"));
    assert!(svg.contains("bytes"));
    assert_eq!(svg, render());
}

#[test]
fn flamegraph_without_leaks_is_still_an_svg() {
    let mut report = report();
    report.leaks.clear();
    report.target.command = vec!["a".into(), "&".into(), "b".into()];
    let mut out = Vec::new();
    write_flamegraph(&report, FlameKind::Leaks, &mut out).unwrap();
    let svg = String::from_utf8(out).unwrap();
    assert!(svg.starts_with("<?xml"));
    assert!(
        svg.contains(">memprof: leaked bytes of a &amp; b - "),
        "{svg}"
    );
    assert!(svg.contains("No leaked bytes."));
}

/// `main` leaks 100,000 bytes through make_list, 20 through `medium`, and 1 byte from each of
/// 2,000 other functions; `other_root`, a stack of its own, leaks 5 bytes. inferno draws
/// frames of at least 0.01% of the 102,025 bytes: 10.2 bytes.
fn report_with_tiny_stacks() -> Report {
    let main = frame(Some("main"), Some(("leaky.c", 40)), "leaky", 0x401200);
    let make_list = frame(Some("make_list"), Some(("leaky.c", 12)), "leaky", 0x401100);
    let medium = frame(Some("medium"), None, "leaky", 0x401300);
    let other_root = frame(Some("other_root"), None, "leaky", 0x401400);
    let mut report = report();
    report.leaks = vec![
        site(1, 100_000, vec![make_list, main.clone()], false),
        site(1, 20, vec![medium, main.clone()], false),
        site(1, 5, vec![other_root], false),
    ];
    for i in 0..2000 {
        let name = format!("tiny_{i}");
        let tiny = frame(Some(&name), None, "leaky", 0x402000 + i);
        report
            .leaks
            .push(site(1, 1, vec![tiny, main.clone()], false));
    }
    report.summary.live_bytes = 102_025;
    report.summary.live_blocks = 2003;
    report
}

#[test]
fn flame_lines_merge_frames_too_narrow_to_draw_into_their_parent() {
    let report = report_with_tiny_stacks();
    assert_eq!(
        flame_lines(&report, FlameKind::Leaks),
        [
            "[small stacks] 5",
            "main (leaky.c:40) 2000",
            "main (leaky.c:40);make_list (leaky.c:12) 100000",
            "main (leaky.c:40);medium 20",
        ]
    );
    // Every stack is still in the unpruned lines, and the total is the same.
    let all = folded_lines_of(&report, FlameKind::Leaks);
    assert_eq!(all.len(), 2003);
    let total = |lines: &[String]| -> u64 {
        lines
            .iter()
            .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(total(&all), 102_025);
    assert_eq!(total(&flame_lines(&report, FlameKind::Leaks)), 102_025);
    // The folded file is the pruned one.
    let mut folded = Vec::new();
    write_folded(&report, FlameKind::Leaks, &mut folded).unwrap();
    assert_eq!(String::from_utf8(folded).unwrap().lines().count(), 4);
}

#[test]
fn pruned_lines_draw_the_frames_inferno_draws_from_all_lines() {
    let report = report_with_tiny_stacks();
    // Each drawn frame has a <title> with its name, weight and share: the same set from the
    // pruned lines as from every line.
    let titles = |lines: &[String]| -> Vec<String> {
        let mut options = inferno::flamegraph::Options::default();
        options.deterministic = true;
        let mut svg = Vec::new();
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
            .unwrap();
        let svg = String::from_utf8(svg).unwrap();
        let mut titles: Vec<String> = svg
            .split("<title>")
            .skip(1)
            .map(|rest| rest.split("</title>").next().unwrap().to_owned())
            .collect();
        titles.sort();
        titles
    };
    let pruned = flame_lines(&report, FlameKind::Leaks);
    let all = folded_lines_of(&report, FlameKind::Leaks);
    let from_all = titles(&all);
    assert_eq!(
        from_all,
        [
            "all (102,025 samples, 100%)",
            "main (leaky.c:40) (102,020 samples, 100.00%)",
            "make_list (leaky.c:12) (100,000 samples, 98.02%)",
            "medium (20 samples, 0.02%)",
        ]
    );
    // The root's narrow stacks are one frame, drawn only when it is wide enough: here not.
    assert_eq!(titles(&pruned), from_all);
}

#[test]
fn flame_lines_are_the_folded_lines_when_every_frame_is_drawn() {
    let report = report();
    for kind in FlameKind::ALL {
        assert_eq!(
            flame_lines(&report, kind),
            folded_lines_of(&report, kind),
            "{kind:?}"
        );
    }
}

#[test]
fn text_lists_each_process_image_and_the_leak_sites_across_them() {
    let image = |pid: u32, output: &str, leaked: u64, frame: &str| crate::report::ProcessImage {
        pid,
        parent_pid: (pid != 10).then_some(10),
        image: 1,
        command: vec!["./tree".into(), "tree".into()],
        executable: None,
        start_secs: 0.0,
        end_secs: Some(1.0),
        end: crate::report::ProcessEnd::Exit,
        exit: Some(crate::report::ExitStatus {
            code: Some(3),
            signal: None,
        }),
        capture: "preload".into(),
        output: output.into(),
        allocations: 4,
        frees: 0,
        peak_live_bytes: leaked,
        leaked_blocks: 2,
        leaked_bytes: leaked,
        inherited_blocks: 0,
        inherited_bytes: 0,
        top_leaks: vec![crate::report::ProcessLeak {
            frame: frame.into(),
            blocks: 2,
            bytes: leaked,
        }],
    };
    let mut report = report();
    assert!(!render_text(&report, 10).contains("Processes:"));
    report.processes = vec![
        image(10, ".", 100, "parent_leak"),
        image(11, "processes/11-1", 5000, "child_leak"),
        image(12, "processes/12-1", 3000, "child_leak"),
    ];
    let text = render_text(&report, 10);
    assert!(text.contains("Processes: 3 images"), "{text}");
    assert!(
        text.contains("     11   1          4    4.9 KiB    4.9 KiB       2  exit 3        processes/11-1       ./tree tree"),
        "{text}"
    );
    // Across the processes, merged by function, the largest first.
    let across: Vec<&str> = text
        .split("Top leak sites across the processes (merged by function):\n")
        .nth(1)
        .unwrap()
        .lines()
        .collect();
    assert_eq!(
        across,
        [
            "     7.8 KiB in      4 blocks  child_leak  2 images: pid 11 #1, pid 12 #1",
            "       100 B in      2 blocks  parent_leak  pid 10 #1",
        ],
        "{text}"
    );
}

#[test]
fn the_leak_check_line_says_what_could_not_be_read_and_how_long_the_process_paused() {
    use crate::leak_check::{ClassTotal, LeakCheckSummary, ScanStats};
    let mut report = report();
    let mut check = LeakCheckSummary {
        definitely_lost: ClassTotal {
            blocks: 5,
            bytes: 388,
        },
        indirectly_lost: ClassTotal {
            blocks: 0,
            bytes: 0,
        },
        possibly_lost: ClassTotal {
            blocks: 1,
            bytes: 256,
        },
        still_reachable: ClassTotal {
            blocks: 2000,
            bytes: 3 << 20,
        },
        scan: ScanStats {
            bytes_scanned: 2 << 20,
            bytes_unreadable: 0,
            secs: 0.25,
            paused_secs: 0.0,
        },
    };
    report.summary.leak_check = Some(check.clone());
    let text = render_text(&report, 2);
    assert!(
        text.contains(
            "Leak check: 5 blocks (388 B) definitely lost, 0 blocks (0 B) indirectly lost, \
             1 block (256 B) possibly lost; 2,000 blocks (3.0 MiB (3,145,728 bytes)) still \
             reachable\n  (2.0 MiB (2,097,152 bytes) of memory scanned in 0.250 s)\n"
        ),
        "{text}"
    );
    check.scan.bytes_unreadable = 8192;
    check.scan.paused_secs = 0.5;
    report.summary.leak_check = Some(check);
    let text = render_text(&report, 2);
    assert!(
        text.contains(
            "  (2.0 MiB (2,097,152 bytes) of memory scanned in 0.250 s, 8.0 KiB (8,192 bytes) \
             unreadable, taken as zeros, the process paused 0.500 s)\n"
        ),
        "{text}"
    );
}
