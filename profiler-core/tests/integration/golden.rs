//! Golden files: the four flame graphs of a small fixed report (tests/golden/report.json),
//! folded and SVG, compared byte for byte with tests/golden/*.folded and *.svg.
//! `MEMPROF_BLESS=1 cargo test -p profiler-core --test integration golden` rewrites them
//! (then look at the SVGs and the diff before committing).

use profiler_core::render::{FlameKind, write_flamegraph, write_folded};
use profiler_core::report::Report;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn fixture() -> Report {
    let path = golden_dir().join("report.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(name: &str, actual: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var_os("MEMPROF_BLESS").is_some_and(|v| v == "1") {
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

#[test]
fn flame_graphs_match_golden_files() {
    let report = fixture();
    for kind in FlameKind::ALL {
        let mut folded = Vec::new();
        write_folded(&report, kind, &mut folded).unwrap();
        check(&format!("{}.folded", kind.file_stem()), &folded);
        let mut svg = Vec::new();
        write_flamegraph(&report, kind, &mut svg).unwrap();
        check(&format!("{}.svg", kind.file_stem()), &svg);
    }
}

#[test]
fn folded_weights_are_exact() {
    let report = fixture();
    let lines = |kind| profiler_core::render::folded_lines_of(&report, kind);
    assert_eq!(
        lines(FlameKind::Leaks),
        [
            "[no stack] 28",
            "[truncated];main (leaky.c:40);libplugin.so+0x1234 1200",
            "main (leaky.c:40);make_list (leaky.c:12);push_node (list.h:7) 3072",
            "main (leaky.c:40);set_name (leaky.c:25);__strdup (strdup.c:42) 600",
        ]
    );
    // 70000 bytes allocated, 69200 by the listed sites: the rest had no stack.
    assert_eq!(
        lines(FlameKind::AllocBytes),
        [
            "[no stack] 800",
            "[truncated];main (leaky.c:40);libplugin.so+0x1234 4000",
            "main (leaky.c:40);make_list (leaky.c:12);push_node (list.h:7) 64000",
            "main (leaky.c:40);set_name (leaky.c:25);__strdup (strdup.c:42) 1200",
        ]
    );
    // 1009 successful allocations, 1008 from the sites.
    assert_eq!(lines(FlameKind::AllocCount)[0], "[no stack] 1");
    assert_eq!(
        lines(FlameKind::Peak),
        [
            "[no stack] 456",
            "[truncated];main (leaky.c:40);libplugin.so+0x1234 1200",
            "main (leaky.c:40);make_list (leaky.c:12);push_node (list.h:7) 6144",
            "main (leaky.c:40);set_name (leaky.c:25);__strdup (strdup.c:42) 1200",
        ]
    );
    assert_eq!(
        FlameKind::Leaks.title(&report),
        "memprof: leaked bytes of ./leaky --nodes 3 - 4.8 KiB in 9 blocks"
    );
    assert_eq!(
        FlameKind::Peak.title(&report),
        "memprof: live bytes at the peak of ./leaky --nodes 3 - 8.8 KiB in 12 blocks at 0.500 s"
    );
}
