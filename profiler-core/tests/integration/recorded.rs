//! Golden tests from real recordings: each tests/data/*.mprof (made with `memprof run` or
//! `attach` on samples/c, see tests/data/README.md) is replayed through the code
//! `memprof report` runs (`offline::load`, then `session_end::write_all`), and every file it
//! writes, plus the text summary, is compared byte for byte with
//! tests/golden/recorded/NAME/. `MEMPROF_BLESS=1 cargo test -p profiler-core --test
//! integration recorded` rewrites them; the key figures below are asserted apart, so a
//! re-bless cannot silently accept a wrong result.
//!
//! The replay uses no file of this machine (`ModuleFiles::Absent`): the recorded binaries
//! are not here, or not the same, on another machine, and this machine's libc may have the
//! recorded build-id, which would symbolize some frames here and not elsewhere. Every frame
//! is therefore `module+0xoffset`, exactly what `memprof report` shows for missing files.

use flate2::read::GzDecoder;
use profiler_core::offline::{self, ModuleFiles, Replayed};
use profiler_core::output::OutputDir;
use profiler_core::recording::Reader;
use profiler_core::render::write_text;
use profiler_core::session_end::{PPROF_FILE, write_all};
use profiler_core::symbolize::Symbolizer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// The recorded binaries' build-ids (from their recorded maps) and, from `nm -S` of those
/// binaries (tests/data/README.md), the functions the key figures are about: (file offset,
/// size). Their code is loaded at its file offset, so a frame's `offset` falls in them.
const ANALYSES_BUILD_ID: &str = "360b53a71682a7a6681c932355b579b57f9b7a6f";
const SHORT_LIVED: (u64, u64) = (0x1470, 0x34);
/// analyses' main; size_mix (0x14b0, 5 bytes) is `jmp malloc`, a tail call: no frame.
const ANALYSES_MAIN: (u64, u64) = (0x10c0, 0x231);
const PEAK_BIG: (u64, u64) = (0x13f0, 0x31);
const PEAK_AFTER: (u64, u64) = (0x1430, 0x31);
const CACHE_PUT: (u64, u64) = (0x14c0, 0x1f);
const LEAKS_BUILD_ID: &str = "45f3b54fd681b7dacaf4f7dfceaeec46c13d604f";
const LEAK_SMALL: (u64, u64) = (0x1180, 0x2a);
const LEAK_CALLOC: (u64, u64) = (0x11b0, 0x32);
const D: (u64, u64) = (0x1230, 0x17);
const C: (u64, u64) = (0x1250, 0x1d);
const B: (u64, u64) = (0x1270, 0x1d);
const A: (u64, u64) = (0x1290, 0x1d);
const MAIN: (u64, u64) = (0x1070, 0x1c);

/// Whether `frame` (a return address) is a call made from `function` of module `module`.
fn called_from(frame: &Value, module: &str, (start, size): (u64, u64)) -> bool {
    let offset = u(&frame["offset"]);
    frame["module"] == module && offset > start && offset - 1 < start + size
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn golden_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/recorded")
        .join(name)
}

fn load(name: &str) -> Replayed {
    let path = data_dir().join(format!("{name}.mprof"));
    let open = || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Reader::new(std::io::BufReader::new(file))
    };
    let replayed = offline::load(open().unwrap(), open, ModuleFiles::Absent).unwrap();
    assert!(replayed.early_end.is_none(), "{name}: recording is cut");
    replayed
}

/// Every file `memprof report NAME.mprof` writes, by name, with `profile.pb.gz` decompressed
/// (`profile.pb`: the gzip layer is flate2's business) and the text summary as `summary.txt`.
fn outputs(name: &str) -> BTreeMap<String, Vec<u8>> {
    let replayed = load(name);
    let dir = tempfile::tempdir().unwrap();
    let mut symbolizer = Symbolizer::new(&replayed.maps);
    let written = write_all(
        &OutputDir::open(dir.path()).unwrap(),
        &replayed.view(),
        &mut symbolizer,
        &replayed.meta,
        |path| replayed.build_id(path),
    )
    .unwrap();
    assert!(
        symbolizer.modules().is_empty(),
        "{name}: a file of this machine was opened"
    );
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        if name == PPROF_FILE {
            let mut profile = Vec::new();
            GzDecoder::new(&bytes[..])
                .read_to_end(&mut profile)
                .unwrap();
            files.insert("profile.pb".to_owned(), profile);
        } else {
            files.insert(name, bytes);
        }
    }
    assert_eq!(written.pprof, dir.path().join(PPROF_FILE));
    let mut summary = Vec::new();
    write_text(&written.report, &mut summary, 10).unwrap();
    files.insert("summary.txt".to_owned(), summary);
    // Nothing written may depend on where it was written.
    let temp = dir.path().to_string_lossy().into_owned();
    for (file, bytes) in &files {
        assert!(
            !String::from_utf8_lossy(bytes).contains(&temp),
            "{name}/{file} holds the output directory's path"
        );
    }
    files
}

/// Compares `files` with tests/golden/recorded/NAME/ (same names, same bytes), or rewrites
/// that directory under MEMPROF_BLESS=1.
fn check_golden(name: &str, files: &BTreeMap<String, Vec<u8>>) {
    let dir = golden_dir(name);
    if std::env::var_os("MEMPROF_BLESS").is_some_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(&dir); // stale files go; it may not exist yet
        std::fs::create_dir_all(&dir).unwrap();
        for (file, bytes) in files {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
        return;
    }
    let mut expected: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (MEMPROF_BLESS=1 creates it)", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    expected.sort();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        expected.iter().collect::<Vec<_>>(),
        "{name}: the files written differ from {}",
        dir.display()
    );
    for (file, actual) in files {
        let path = dir.join(file);
        let golden = std::fs::read(&path).unwrap();
        assert!(
            &golden == actual,
            "{name}/{file} differs from {}; MEMPROF_BLESS=1 rewrites it. Got:\n{}",
            path.display(),
            String::from_utf8_lossy(&actual[..actual.len().min(4000)])
        );
    }
}

/// The golden comparison of recording `name`, and its report.json for the key figures.
fn golden_report(name: &str) -> Value {
    let files = outputs(name);
    let expected_files = [
        "alloc-bytes.folded",
        "alloc-bytes.svg",
        "alloc-count.folded",
        "alloc-count.svg",
        "leaks.folded",
        "leaks.svg",
        "peak.folded",
        "peak.svg",
        "profile.pb",
        "report.html",
        "report.json",
        "sizes.svg",
        "summary.txt",
        "timeline.svg",
    ];
    assert_eq!(files.keys().collect::<Vec<_>>(), expected_files);
    check_golden(name, &files);
    serde_json::from_slice(&files["report.json"]).unwrap()
}

fn u(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// (usable, count) of every size class.
fn classes(report: &Value) -> Vec<(u64, u64)> {
    report["analyses"]["size_classes"]["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|class| (u(&class["usable"]), u(&class["count"])))
        .collect()
}

/// `module+0xoffset` frames only: nothing was symbolized from this machine's files.
fn assert_unsymbolized(report: &Value) {
    for site in report["sites"].as_array().expect("sites") {
        for frame in site["stack"].as_array().expect("stack") {
            assert!(frame["function"].is_null(), "{frame}");
            assert!(frame["file"].is_null(), "{frame}");
        }
    }
    assert_eq!(report["modules"], serde_json::json!([]));
}

/// The recording's files are all reported as missing, each once, and its executable is the
/// one whose functions are listed above.
fn assert_all_replaced(name: &str, exe: &str, exe_build_id: &str) {
    let replayed = load(name);
    assert!(
        replayed
            .replaced
            .iter()
            .any(|m| m.path.ends_with(exe) && m.recorded == exe_build_id),
        "{name}: {exe} is not build-id {exe_build_id}: update the offsets above"
    );
    let replaced: Vec<String> = replayed
        .replaced
        .iter()
        .map(|m| {
            assert_eq!(m.found, None, "{m}");
            m.path.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    for module in [exe, "libc.so.6", "ld-linux-x86-64.so.2"] {
        assert_eq!(
            replaced.iter().filter(|m| *m == module).count(),
            1,
            "{name}: {replaced:?}"
        );
    }
}

#[test]
fn analyses_mix_recording() {
    let report = golden_report("analyses-mix");
    assert_unsymbolized(&report);
    assert_all_replaced("analyses-mix", "analyses-fp", ANALYSES_BUILD_ID);
    let summary = &report["summary"];
    assert_eq!(
        (u(&summary["allocations"]), u(&summary["frees"])),
        (360, 360)
    );
    assert_eq!(u(&summary["bytes_allocated"]), 30200);
    let analyses = &report["analyses"];
    // short_lived's 200 x malloc(64), each freed at once: the one pool candidate.
    let candidates = analyses["lifetimes"]["pool_candidates"]
        .as_array()
        .expect("pool candidates");
    assert_eq!(candidates.len(), 1, "{candidates:?}");
    let pool = &candidates[0];
    assert_eq!((u(&pool["freed"]), u(&pool["short_lived"])), (200, 200));
    assert_eq!(
        pool["sizes"],
        serde_json::json!([{"size": 64, "count": 200}])
    );
    let stack = &analyses["stacks"][u(&pool["stack_id"]).to_string()];
    assert!(
        called_from(&stack[0], "analyses-fp", SHORT_LIVED),
        "{stack}"
    );
    // size_mix's 160 blocks (called from main) lived 5 ms: lifetime sites, none short-lived.
    let size_mix = analyses["lifetimes"]["sites"]
        .as_array()
        .expect("lifetime sites")
        .iter()
        .filter(|site| {
            let stack = &analyses["stacks"][u(&site["stack_id"]).to_string()];
            called_from(&stack[0], "analyses-fp", ANALYSES_MAIN)
        })
        .fold((0, 0), |(freed, short), site| {
            (freed + u(&site["freed"]), short + u(&site["short_lived"]))
        });
    assert_eq!(size_mix, (160, 0));
    // glibc classes: 24 -> 24 (100), 64 -> 72 (200), 100 -> 104 (50), 1000 -> 1000 (10).
    assert_eq!(analyses["size_classes"]["allocator"], "glibc");
    assert_eq!(
        classes(&report),
        vec![(24, 100), (72, 200), (104, 50), (1000, 10)]
    );
    let sizes = &analyses["size_classes"];
    assert_eq!(
        (u(&sizes["requested_bytes"]), u(&sizes["usable_bytes"])),
        (30200, 2400 + 14400 + 5200 + 10000)
    );
    // Recorded with --ops 20.
    let per_op = &analyses["per_operation"];
    assert_eq!(per_op["allocations_per_op"].as_f64(), Some(18.0));
    assert_eq!(per_op["bytes_per_op"].as_f64(), Some(1510.0));
    assert_eq!(report["leaks"], serde_json::json!([]));
}

#[test]
fn analyses_peak_recording() {
    let report = golden_report("analyses-peak");
    assert_unsymbolized(&report);
    assert_all_replaced("analyses-peak", "analyses-fp", ANALYSES_BUILD_ID);
    let analyses = &report["analyses"];
    let peak = &analyses["timeline"]["peak"];
    assert_eq!(
        (u(&peak["live_bytes"]), u(&peak["live_blocks"])),
        (10 * MIB, 10),
        "{peak}"
    );
    let sites = peak["sites"].as_array().expect("sites at the peak");
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(
        (u(&sites[0]["live_bytes"]), u(&sites[0]["live_blocks"])),
        (10 * MIB, 10)
    );
    let summary = &report["summary"];
    assert_eq!((u(&summary["allocations"]), u(&summary["frees"])), (13, 10));
    assert_eq!(
        (
            u(&summary["peak_live_bytes"]),
            u(&summary["peak_live_blocks"])
        ),
        (10 * MIB, 10)
    );
    let peak_site = &analyses["stacks"][u(&sites[0]["stack_id"]).to_string()];
    assert!(
        called_from(&peak_site[0], "analyses-fp", PEAK_BIG),
        "{peak_site}"
    );
    // peak_after's three blocks (gcc unrolls main's loop: three call sites).
    let leaks = report["leaks"].as_array().expect("leaks");
    assert_eq!(leaks.len(), 3, "{leaks:?}");
    for leak in leaks {
        assert_eq!((u(&leak["blocks"]), u(&leak["bytes"])), (1, MIB));
        assert!(
            called_from(&leak["stack"][0], "analyses-fp", PEAK_AFTER),
            "{leak}"
        );
    }
    // glibc mmaps the first ten; free() raises its threshold, so the last three are in the heap.
    assert_eq!(classes(&report), vec![(1048584, 3), (1052656, 10)]);
    assert_eq!(
        u(&analyses["fragmentation"]["at_peak"]["mmapped_blocks"]),
        10
    );
}

#[test]
fn leaks_recording() {
    let report = golden_report("leaks");
    assert_unsymbolized(&report);
    assert_all_replaced("leaks", "leaks-fp", LEAKS_BUILD_ID);
    let summary = &report["summary"];
    assert_eq!(
        (
            u(&summary["allocations"]),
            u(&summary["frees"]),
            u(&summary["bytes_allocated"])
        ),
        (1006, 1000, 69036)
    );
    assert_eq!(
        (u(&summary["live_blocks"]), u(&summary["live_bytes"])),
        (6, 5036)
    );
    assert_eq!(u(&summary["by_function"]["calloc"]["bytes"]), 640);
    // d (4096, called as main -> a -> b -> c -> d), then leak_calloc's two calls (gcc unrolls
    // its loop: two return addresses), then leak_small's three 100-byte blocks.
    let sites: Vec<(u64, u64)> = report["leaks"]
        .as_array()
        .expect("leaks")
        .iter()
        .map(|site| (u(&site["blocks"]), u(&site["bytes"])))
        .collect();
    assert_eq!(sites, [(1, 4096), (1, 320), (1, 320), (3, 300)]);
    let leaks = &report["leaks"];
    let d = &leaks[0]["stack"];
    for (depth, function) in [D, C, B, A, MAIN].into_iter().enumerate() {
        assert!(called_from(&d[depth], "leaks-fp", function), "{depth}: {d}");
    }
    assert_eq!(d[5]["module"], "libc.so.6", "{d}");
    for site in 1..=2 {
        let stack = &leaks[site]["stack"];
        assert!(called_from(&stack[0], "leaks-fp", LEAK_CALLOC), "{stack}");
    }
    let stack = &leaks[3]["stack"];
    assert!(called_from(&stack[0], "leaks-fp", LEAK_SMALL), "{stack}");
    let folded = String::from_utf8(outputs("leaks")["leaks.folded"].clone()).unwrap();
    assert_eq!(folded.lines().count(), 4, "{folded}");
    assert!(folded.contains("leaks-fp+0x"), "{folded}");
}

#[test]
fn analyses_cache_attach_recording() {
    let report = golden_report("analyses-cache-attach");
    assert_unsymbolized(&report);
    assert_all_replaced("analyses-cache-attach", "analyses-fp", ANALYSES_BUILD_ID);
    assert_eq!(report["mode"], "attach");
    // One cache_put(malloc(4096)) per 20 ms over the one-second window: 50 in this recording.
    let summary = &report["summary"];
    assert_eq!((u(&summary["allocations"]), u(&summary["frees"])), (50, 0));
    let growing = report["analyses"]["leaks"]["growing"]
        .as_array()
        .expect("growing sites");
    assert_eq!(growing.len(), 1, "{growing:?}");
    let site = &growing[0];
    assert_eq!(
        (u(&site["live_blocks"]), u(&site["live_bytes"])),
        (50, 50 * 4096)
    );
    assert_eq!(site["monotonicity"].as_f64(), Some(1.0));
    let stack = &report["analyses"]["stacks"][u(&site["stack_id"]).to_string()];
    assert!(called_from(&stack[0], "analyses-fp", CACHE_PUT), "{stack}");
    assert_eq!(classes(&report), vec![(4104, 50)]);
}
