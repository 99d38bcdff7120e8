//! The whole engine on synthetic records whose stacks point into this test binary: ring
//! bytes -> Recorder -> report (symbolized through /proc/self/maps) -> files.

use profiler_common::{EventHeader, EventKind, FLAG_STACK_MISSING};
use profiler_core::event::encode;
use profiler_core::heap::Mode;
use profiler_core::maps::ProcessMaps;
use profiler_core::output::{OutputDir, write_outputs};
use profiler_core::recorder::Recorder;
use profiler_core::render::write_text;
use profiler_core::report::{ExitStatus, LostCounts, ReportMeta, build_report};
use profiler_core::symbolize::Symbolizer;
use std::time::Duration;

#[inline(never)]
fn pipeline_leaky_caller() -> u64 {
    std::hint::black_box(1)
}

#[inline(never)]
fn pipeline_outer_caller() -> u64 {
    std::hint::black_box(2)
}

fn record(
    kind: EventKind,
    ts_ns: u64,
    addr: u64,
    size: u64,
    frames: &[u64],
    flags: u32,
) -> Vec<u8> {
    let header = EventHeader {
        kind: kind as u32,
        tid: 5,
        ts_ns,
        addr,
        size,
        old_addr: 0,
        aux: 0,
        stack_depth: frames.len() as u32,
        flags,
    };
    let mut bytes = Vec::new();
    encode(&header, frames, &mut bytes);
    bytes
}

#[test]
fn records_to_report_files() {
    // +1: these stand in for return addresses, which the symbolizer looks up minus one.
    let leaky = pipeline_leaky_caller as fn() -> u64 as usize as u64 + 1;
    let outer = pipeline_outer_caller as fn() -> u64 as usize as u64 + 1;
    let start = 1_000_000_000;
    let mut recorder = Recorder::new(Mode::Run);
    for record in [
        record(
            EventKind::Malloc,
            start + 100_000_000,
            0x1000,
            4096,
            &[leaky, outer],
            0,
        ),
        record(
            EventKind::Malloc,
            start + 200_000_000,
            0x3000,
            4096,
            &[leaky, outer],
            0,
        ),
        record(
            EventKind::Malloc,
            start + 300_000_000,
            0x5000,
            10,
            &[outer],
            0,
        ),
        record(EventKind::Free, start + 400_000_000, 0x5000, 0, &[], 0),
        record(
            EventKind::Malloc,
            start + 500_000_000,
            0x6000,
            3,
            &[leaky],
            FLAG_STACK_MISSING,
        ),
    ] {
        recorder.ingest(&record).unwrap();
    }
    let meta = ReportMeta {
        command: vec!["./leaky".into()],
        executable: None,
        pid: std::process::id(),
        mode: Mode::Run,
        exit: Some(ExitStatus {
            code: Some(0),
            signal: None,
        }),
        start_ns: start,
        duration: Duration::from_secs(1),
        probes: vec![],
        lost: LostCounts::default(),
    };
    let mut symbolizer = Symbolizer::new(&ProcessMaps::read(std::process::id()).unwrap());
    let report = build_report(&recorder.heap, &recorder.stacks, &mut symbolizer, &meta);

    assert_eq!(report.summary.live_bytes, 8195);
    assert_eq!(report.leaks.len(), 2);
    let top = &report.leaks[0];
    assert_eq!((top.blocks, top.bytes), (2, 8192));
    let names: Vec<String> = top
        .stack
        .iter()
        .map(|f| f.function.clone().unwrap())
        .collect();
    assert!(
        names[0].ends_with("pipeline::pipeline_leaky_caller"),
        "{names:?}"
    );
    assert!(
        names[1].ends_with("pipeline::pipeline_outer_caller"),
        "{names:?}"
    );
    // The stack-missing event was applied without a stack.
    assert_eq!((report.leaks[1].bytes, report.leaks[1].stack.len()), (3, 0));

    let mut text = Vec::new();
    write_text(&report, &mut text, 5).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("8.0 KiB (8,192 bytes) in 2 blocks"), "{text}");
    assert!(
        text.contains("pipeline_leaky_caller (") && text.contains("pipeline.rs:"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let files = write_outputs(&OutputDir::open(dir.path()).unwrap(), &report).unwrap();
    let folded = std::fs::read_to_string(&files.folded).unwrap();
    let lines: Vec<&str> = folded.lines().collect();
    assert_eq!(lines.len(), 2, "{folded}");
    assert_eq!(lines[0], "[no stack] 3");
    assert!(
        lines[1].contains("pipeline_outer_caller (pipeline.rs:"),
        "{folded}"
    );
    assert!(
        lines[1].contains("pipeline_leaky_caller (pipeline.rs:"),
        "{folded}"
    );
    assert!(lines[1].ends_with(") 8192"), "{folded}");
    let svg = std::fs::read_to_string(&files.flamegraph).unwrap();
    assert!(svg.contains("memprof: leaked bytes of ./leaky - 8.0 KiB in 3 blocks"));
}

/// The in-process capture sends a stack's frames once, with a number, and the number after:
/// every record gets the same stack, interned once.
#[test]
fn numbered_stacks_resolve_to_the_stack_they_were_defined_as() {
    use profiler_common::FLAG_STACK_NUMBERED;
    let numbered_as = |kind: EventKind, addr: u64, body: &[u64], depth: u32| {
        let header = EventHeader {
            kind: kind as u32,
            tid: 5,
            ts_ns: 1_000,
            addr,
            size: 16,
            old_addr: 0,
            aux: 0,
            stack_depth: depth,
            flags: FLAG_STACK_NUMBERED,
        };
        let mut bytes = Vec::new();
        encode(&header, body, &mut bytes);
        bytes
    };
    let numbered =
        |addr: u64, body: &[u64], depth: u32| numbered_as(EventKind::Malloc, addr, body, depth);
    let mut recorder = Recorder::new(Mode::Run);
    let defined = recorder
        .ingest(&numbered(0x1000, &[0, 0x40_1000, 0x40_2000], 2))
        .unwrap();
    let again = recorder.ingest(&numbered(0x2000, &[0], 0)).unwrap();
    let unknown = recorder.ingest(&numbered(0x3000, &[1], 0)).unwrap();
    assert!(defined.new_stack && !again.new_stack);
    assert_eq!(again.stack, defined.stack);
    assert_eq!(
        recorder.stacks.get(again.stack.unwrap()),
        [0x40_1000, 0x40_2000]
    );
    assert_eq!(
        again.event.flags, 0,
        "the transport flag is not part of the event"
    );
    assert_eq!(unknown.stack, None, "number 1 was never defined");
    assert_eq!(recorder.stacks.len(), 1);
    assert_eq!(recorder.heap.stats().allocations, 3);

    // A definition counts even on a record that takes no stack: the numbers after it stay
    // in step.
    let free = recorder
        .ingest(&numbered_as(EventKind::Free, 0x1000, &[1, 0x40_3000], 1))
        .unwrap();
    assert_eq!(free.stack, None);
    let later = recorder.ingest(&numbered(0x4000, &[1], 0)).unwrap();
    assert_eq!(recorder.stacks.get(later.stack.unwrap()), [0x40_3000]);
}
