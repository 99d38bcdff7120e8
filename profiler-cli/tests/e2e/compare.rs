//! `memprof compare`: the same deterministic target under every allocator must give the same,
//! exact figures, each run probed in the library that was preloaded; and a server driven by a
//! load command must report the same injected leaks under glibc and memprof's allocator.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{Build, compile_c, memprof, privileged, run_to_end};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The compare.json entry of `allocator`.
fn column<'a>(json: &'a Value, allocator: &str) -> &'a Value {
    json["allocators"]
        .as_array()
        .expect("allocators")
        .iter()
        .find(|c| c["allocator"] == allocator)
        .unwrap_or_else(|| panic!("no column for {allocator}: {json:#}"))
}

/// A binary built next to the memprof under test (same cargo target directory and profile).
fn sibling(name: &str, package: &str) -> PathBuf {
    let path = memprof().with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {package}` (same profile)",
        path.display()
    );
    path
}

#[test]
fn leaks_are_counted_exactly_under_every_allocator() {
    let Some(env) = privileged("leaks_are_counted_exactly_under_every_allocator") else {
        return;
    };
    let own = sibling("libmemprof_alloc.so", "memprof-alloc-preload");
    let target = compile_c(env.dir.path(), "leaks", Build::FramePointers);
    let output = env.dir.path().join("compare");
    let mut cmd = Command::new(memprof());
    cmd.args(["compare", "--output"])
        .arg(&output)
        .arg("--")
        .arg(&target);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{finished:?}");
    let json = read_json(&output.join("compare.json"));

    let lib = "/usr/lib/x86_64-linux-gnu";
    let expected_module = [
        ("glibc", "/lib/x86_64-linux-gnu/libc.so.6".to_owned()),
        ("jemalloc", format!("{lib}/libjemalloc.so.2")),
        ("mimalloc", format!("{lib}/libmimalloc.so.2")),
        ("tcmalloc", format!("{lib}/libtcmalloc_minimal.so.4")),
        ("memprof", own.canonicalize().unwrap().display().to_string()),
    ];
    for (allocator, module) in &expected_module {
        let c = column(&json, allocator);
        assert_eq!(c["ok"], true, "{allocator}: {c:#}");
        assert_eq!(c["exact"], true, "{allocator}: {c:#}");
        // The figures of c_targets::check_leaks: 1004 mallocs + 2 callocs, 6 blocks leaked.
        assert_eq!(c["allocations"], 1006, "{allocator}: {c:#}");
        assert_eq!(c["bytes_allocated"], 69036, "{allocator}: {c:#}");
        assert_eq!(c["leaks"]["blocks"], 6, "{allocator}: {c:#}");
        assert_eq!(c["leaks"]["bytes"], 5036, "{allocator}: {c:#}");
        assert_eq!(c["lost_events"], 0, "{allocator}: {c:#}");

        // Every allocation function was probed in the preloaded library.
        let report = read_json(&output.join(allocator).join("report.json"));
        for function in ["malloc", "free", "calloc", "realloc"] {
            let probe = report["probes"]
                .as_array()
                .expect("probes")
                .iter()
                .find(|p| p["function"] == function)
                .unwrap_or_else(|| panic!("{allocator}: no probe for {function}"));
            assert_eq!(
                probe["module"].as_str(),
                Some(module.as_str()),
                "{allocator}"
            );
        }
        assert!(
            report["target"]["peak_rss_bytes"].as_u64().unwrap_or(0) > 0,
            "{allocator}: no peak RSS in {:#}",
            report["target"]
        );
    }
    // Only jemalloc and tcmalloc bring in libstdc++, whose constructor allocates 72704 bytes:
    // counted apart, never in the workload's figures.
    assert_eq!(column(&json, "glibc")["startup"]["allocations"], 0);
    assert_eq!(column(&json, "jemalloc")["startup"]["bytes"], 72704);
    // The table names every allocator's serving module.
    for name in ["libc.so.6", "libjemalloc.so.2", "libtcmalloc_minimal.so.4"] {
        assert!(finished.stdout.contains(name), "{}", finished.stdout);
    }
    assert!(output.join("compare.svg").is_file());
}

#[test]
fn server_leaks_match_under_glibc_and_own_allocator() {
    let Some(env) = privileged("server_leaks_match_under_glibc_and_own_allocator") else {
        return;
    };
    sibling("libmemprof_alloc.so", "memprof-alloc-preload");
    let server = sibling("memprof-sample-server", "memprof-sample-server");
    let loadgen = sibling("memprof-loadgen", "memprof-loadgen");
    let output = env.dir.path().join("compare");
    let mut cmd = Command::new(memprof());
    cmd.args(["compare", "--allocator", "glibc,memprof", "--output"])
        .arg(&output)
        .arg("--load")
        .arg(format!(
            "{} --addr {{addr}} --seed 7 --requests 400 --shutdown",
            loadgen.display()
        ))
        .arg("--")
        .arg(&server)
        .args(["--listen", "127.0.0.1:0", "--leak-every", "5"]);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{finished:?}");
    let json = read_json(&output.join("compare.json"));

    // The server's own count of what --leak-every leaked, echoed from its stdout.
    let leaked: Vec<u64> = finished
        .stdout
        .lines()
        .filter_map(|line| line.split_once("] summary: "))
        .filter_map(|(_, stats)| {
            stats
                .split_whitespace()
                .find_map(|field| field.strip_prefix("leaked="))
                .map(|n| n.parse().unwrap())
        })
        .collect();
    assert_eq!(leaked.len(), 2, "{}", finished.stdout);
    assert_eq!(leaked[0], leaked[1]);
    assert!(leaked[0] > 0);

    for allocator in ["glibc", "memprof"] {
        let c = column(&json, allocator);
        assert_eq!(c["ok"], true, "{allocator}: {c:#}");
        assert_eq!(c["ops"], 400, "{allocator}: {c:#}");
        assert!(c["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{c:#}");
        let report = read_json(&output.join(allocator).join("report.json"));
        assert_eq!(report["target"]["exit"]["code"], 0, "{allocator}");
        let injected: u64 = report["leaks"]
            .as_array()
            .expect("leaks")
            .iter()
            .filter(|site| {
                site["stack"].as_array().unwrap().iter().any(|frame| {
                    frame["function"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("::leak_payload"))
                })
            })
            .map(|site| site["blocks"].as_u64().unwrap())
            .sum();
        assert_eq!(injected, leaked[0], "{allocator}: leak_payload blocks");
    }
}
