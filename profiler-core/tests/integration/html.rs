//! The charts (timeline.svg, sizes.svg) byte-compared with tests/golden/charts/, and report.html
//! opened in a real headless browser (Debian's chromium, installed by `cargo xtask setup`).
//! `MEMPROF_BLESS=1 cargo test -p profiler-core --test integration html` rewrites the golden
//! files (look at them with `rsvg-convert -w 1200 FILE.svg -o FILE.png` before committing).
//!
//! The fixture is a fixed event sequence through the public recorder, report and analyses:
//! a steadily growing cache, short-lived request buffers, a realloc chain, a 1 MiB block
//! freed after the peak, a few odd-sized names, RSS samples and a free of an unknown pointer.

use profiler_common::EventKind;
use profiler_core::event::Event;
use profiler_core::heap::Mode;
use profiler_core::maps::ProcessMaps;
use profiler_core::recorder::Recorder;
use profiler_core::render::{write_html, write_sizes_svg, write_timeline_svg};
use profiler_core::report::{ExitStatus, LostCounts, ProbeInfo, Report, ReportMeta, StackFrame};
use profiler_core::session_end::{SessionView, build_report};
use profiler_core::symbolize::Symbolizer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MS: u64 = 1_000_000;
const START: u64 = 5_000 * MS;
const END_MS: u64 = 400;

/// The fixture's call sites: return address, function, file, line.
const FRAMES: [(u64, &str, &str, u32); 6] = [
    (0x40_1100, "cache_insert", "cache.c", 40),
    (0x40_1200, "parse_header", "parse.c", 12),
    (0x40_1300, "grow_buffer", "buf.c", 7),
    (0x40_1400, "load_config", "config.c", 88),
    (0x40_1500, "make_name", "names.c", 21),
    (0x40_1000, "main", "server.c", 130),
];

/// One step of the fixture, applied in time order as a session would see it.
enum Step {
    Event(EventKind, u64, u64, u64, Option<usize>),
    Rss(u64),
}

#[derive(Default)]
struct Script {
    steps: Vec<(u64, Step)>,
}

impl Script {
    fn at(ms: f64) -> u64 {
        START + (ms * MS as f64).round() as u64
    }

    fn malloc(&mut self, ms: f64, addr: u64, size: u64, site: usize) {
        let step = Step::Event(EventKind::Malloc, addr, size, 0, Some(site));
        self.steps.push((Self::at(ms), step));
    }

    fn realloc(&mut self, ms: f64, old: u64, addr: u64, size: u64, site: usize) {
        let step = Step::Event(EventKind::Realloc, addr, size, old, Some(site));
        self.steps.push((Self::at(ms), step));
    }

    fn free(&mut self, ms: f64, addr: u64) {
        let step = Step::Event(EventKind::Free, addr, 0, 0, None);
        self.steps.push((Self::at(ms), step));
    }

    fn rss(&mut self, ms: f64, bytes: u64) {
        self.steps.push((Self::at(ms), Step::Rss(bytes)));
    }

    fn run(mut self) -> Recorder {
        let mut recorder = Recorder::new(Mode::Run);
        self.steps.sort_by_key(|(ts, _)| *ts);
        for (ts_ns, step) in self.steps {
            match step {
                Step::Event(kind, addr, size, old_addr, site) => {
                    let stack = site.map(|site| {
                        let frames = [FRAMES[site].0, FRAMES[5].0];
                        recorder.stacks.intern(&frames, false)
                    });
                    let event = Event {
                        kind,
                        tid: 7,
                        ts_ns,
                        addr,
                        size,
                        old_addr,
                        aux: 0,
                        flags: 0,
                    };
                    recorder.apply(&event, stack);
                }
                Step::Rss(bytes) => recorder.analyses.observe_rss(ts_ns, bytes),
            }
        }
        recorder
    }
}

fn session() -> Recorder {
    let mut s = Script::default();
    let heap = 0x5555_5555_a000u64;
    for step in 0..400u64 {
        let ms = step as f64;
        // Request buffers: 100 bytes, freed 0.2 ms later.
        s.malloc(ms + 0.1, heap, 100, 1);
        s.free(ms + 0.3, heap);
        // The cache keeps a 4 KiB entry every 2 ms.
        if step % 2 == 0 {
            s.malloc(ms + 0.5, heap + 0x1000 + step * 0x810, 4096, 0);
        }
        if step % 100 == 50 {
            s.rss(ms, (3 << 20) + step * 4096);
        }
    }
    // A buffer reallocated to twice its size five times.
    let buffer = 0x5555_5560_0000u64;
    s.malloc(10.0, buffer, 64, 2);
    for k in 1..=5u64 {
        let (old, new) = (buffer + (k - 1) * 0x1000, buffer + k * 0x1000);
        s.realloc(10.0 + 20.0 * k as f64, old, new, 64 << k, 2);
    }
    // 1 MiB of configuration, freed at 250 ms: the peak is just before.
    s.malloc(50.0, 0x7f00_0000_0010, 1 << 20, 3);
    s.free(250.0, 0x7f00_0000_0010);
    for (index, size) in [24u64, 40, 200, 1000, 24, 40].into_iter().enumerate() {
        s.malloc(
            60.0 + index as f64,
            heap + 0x10_0000 + index as u64 * 0x400,
            size,
            4,
        );
    }
    s.free(300.0, 0xdead_0000);
    s.rss(399.0, 4 << 20);
    s.run()
}

/// The fixture report; `probes` decides the allocator the analyses model (glibc or unknown).
fn fixture(probes: Vec<ProbeInfo>) -> Report {
    let recorder = session();
    let meta = ReportMeta {
        command: vec!["./server".into(), "--port".into(), "8080".into()],
        executable: None,
        pid: 4242,
        mode: Mode::Run,
        exit: Some(ExitStatus {
            code: Some(0),
            signal: None,
        }),
        start_ns: START,
        duration: Duration::from_millis(END_MS),
        probes,
        lost: LostCounts::default(),
    };
    let maps = ProcessMaps::default();
    let mut symbolizer = Symbolizer::new(&maps);
    let session = SessionView {
        recorder: &recorder,
        maps: &maps,
        started_unix_ns: 0,
        peak_rss_bytes: None,
        held: None,
        warnings: &[],
        capture: None,
        leak_check: None,
        processes: &[],
        ops: None,
    };
    let mut report = build_report(&session, &mut symbolizer, &meta);
    name_frames(&mut report);
    report
}

fn glibc() -> Vec<ProbeInfo> {
    vec![ProbeInfo {
        function: "malloc".into(),
        module: "/lib/x86_64-linux-gnu/libc.so.6".into(),
        offset: 0x9a0e0,
        single_step: false,
        aliases: vec![],
    }]
}

/// No binary to symbolize against: the fixture's frames get their names from [`FRAMES`].
fn name_frames(report: &mut Report) {
    let name = |frame: &mut StackFrame| {
        let address = u64::from_str_radix(frame.address.trim_start_matches("0x"), 16).unwrap();
        let &(_, function, file, line) = FRAMES
            .iter()
            .find(|(at, ..)| *at == address)
            .unwrap_or_else(|| panic!("no name for {}", frame.address));
        frame.function = Some(function.into());
        frame.module = "server".into();
        frame.file = Some(format!("src/{file}"));
        frame.line = Some(line);
    };
    let analyses = report.analyses.as_mut().unwrap();
    let stacks = report
        .leaks
        .iter_mut()
        .map(|site| &mut site.stack)
        .chain(report.sites.iter_mut().map(|site| &mut site.stack))
        .chain(analyses.stacks.values_mut());
    for stack in stacks {
        stack.iter_mut().for_each(name);
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/charts")
}

fn check(name: &str, actual: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var_os("MEMPROF_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MEMPROF_BLESS=1 creates it)", path.display()));
    assert!(
        expected == actual,
        "{name} differs from {}; MEMPROF_BLESS=1 rewrites it. Got:\n{}",
        path.display(),
        String::from_utf8_lossy(actual)
    );
}

fn render(write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out).unwrap();
    out
}

#[test]
fn the_fixture_has_what_the_charts_show() {
    let report = fixture(glibc());
    let analyses = report.analyses.as_ref().unwrap();
    let peak = analyses.timeline.peak.as_ref().unwrap();
    // The last request buffer before the 1 MiB block is freed at 250 ms: 125 cache entries,
    // the 1 MiB, 6 names, the 2 KiB buffer and that request's 100 bytes.
    assert_eq!(peak.live_bytes, (1 << 20) + 125 * 4096 + 1328 + 2048 + 100);
    assert_eq!(peak.live_blocks, 125 + 1 + 6 + 1 + 1);
    assert_eq!(peak.time_secs, 0.2491);
    assert_eq!(report.summary.live_bytes, 200 * 4096 + 1328 + 2048);
    assert_eq!(analyses.leaks.growing.len(), 1);
    assert_eq!(analyses.lifetimes.pool_candidates.len(), 1);
    assert_eq!(analyses.reallocs.longest_chains[0].reallocs, 5);
    assert_eq!(analyses.reallocs.unknown_frees, 1);
    let rss: Vec<u64> = analyses
        .timeline
        .points
        .iter()
        .filter_map(|p| p.rss_bytes)
        .collect();
    assert_eq!(rss.last(), Some(&(4 << 20)));
    // glibc's usable sizes: (n + 8) rounded up to 16, minus 8, at least 24 (64 -> 72, the
    // realloc chain's 128..2048 -> 136..2056); 1 MiB is mmapped: n + 8 rounded up to a
    // page, minus 16.
    let classes: Vec<u64> = analyses
        .size_classes
        .classes
        .iter()
        .map(|c| c.usable)
        .collect();
    assert_eq!(
        classes,
        [
            24, 40, 72, 104, 136, 200, 264, 520, 1000, 1032, 2056, 4104, 1052656
        ]
    );
}

#[test]
fn charts_match_golden_files() {
    let report = fixture(glibc());
    check(
        "timeline.svg",
        &render(|out| write_timeline_svg(&report, out)),
    );
    check("sizes.svg", &render(|out| write_sizes_svg(&report, out)));
    let unknown = fixture(vec![]);
    check(
        "sizes-unknown.svg",
        &render(|out| write_sizes_svg(&unknown, out)),
    );
}

#[test]
fn charts_label_the_peak_and_the_axes() {
    let report = fixture(glibc());
    let timeline = String::from_utf8(render(|out| write_timeline_svg(&report, out))).unwrap();
    assert!(
        timeline.contains(">peak 1.5 MiB in 134 blocks at 249.1 ms</text>"),
        "{timeline}"
    );
    for label in [">0<", ">5 MiB<", ">400 ms<", ">resident set size (RSS)<"] {
        assert!(timeline.contains(label), "{label} in {timeline}");
    }
    let sizes = String::from_utf8(render(|out| write_sizes_svg(&report, out))).unwrap();
    assert!(
        sizes.contains("<title>104 B: 400 requests, 39.1 KiB requested, 1.6 KiB wasted</title>"),
        "{sizes}"
    );
}

/// Opens report.html in headless chromium (one browser start) and checks the DOM it built and
/// that nothing was fetched.
#[test]
fn report_html_opens_offline_in_a_browser() {
    let report = fixture(glibc());
    let html = String::from_utf8(render(|out| write_html(&report, out))).unwrap();
    // Self-contained: the only URLs are the SVG namespace and data: URLs.
    let urls: Vec<&str> = html
        .match_indices("http")
        .map(|(at, _)| &html[at..(at + 40).min(html.len())])
        .filter(|url| !url.starts_with("http://www.w3.org/2000/svg"))
        .collect();
    assert!(urls.is_empty(), "external URLs: {urls:?}");
    assert_eq!(html.matches("data:image/svg+xml;base64,").count(), 4);

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let chromium = "chromium";
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=2000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot start {chromium} ({e}); `cargo xtask setup` installs it")
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed: {stderr}");
    let dom = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "<tr data-figure=\"allocations\"><th>allocations</th><td>613</td></tr>",
        "<tr data-figure=\"live_at_end\"><th>live at the end</th><td>803.3 KiB (822,576 bytes) in 207 blocks</td></tr>",
        "<tr data-figure=\"exit\"><th>exit</th><td>exit code 0</td></tr>",
        "<summary>cache_insert (cache.c:40)</summary>",
        "<li title=\"server 0x401000\">main (server.c:130)</li>",
        "peak 1.5 MiB in 134 blocks at 249.1 ms",
        "Requests and internal fragmentation by size class",
        "<tr class=\"pool\"><td class=\"n\">400</td><td class=\"n\">400</td><td>400 x 100 B</td>",
        "<tr class=\"chain\"><td class=\"n\">5</td><td>64 B → 2.0 KiB</td><td>yes</td>",
        "data-flame=\"leaks\"",
        "data-flame=\"peak\"",
    ] {
        assert!(dom.contains(needle), "{needle:?} not in the DOM:\n{dom}");
    }
    for section in [
        "summary",
        "leaks",
        "flamegraphs",
        "timeline",
        "sizes",
        "lifetimes",
        "fragmentation",
        "reallocs",
        "per-operation",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"{section}\">")),
            "{section}"
        );
    }
    // Nothing failed to load and no script (inferno's, in the embedded flame graphs) failed.
    for bad in ["ERR_", "Failed to load", "Uncaught", "net::"] {
        assert!(
            !stderr.contains(bad),
            "{bad} in chromium's stderr:\n{stderr}"
        );
    }
}
