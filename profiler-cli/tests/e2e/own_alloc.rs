//! memprof on a program running under the project's own allocator (samples/alloc-preload),
//! preloaded with `memprof run --env LD_PRELOAD=...`: the probes must land in
//! libmemprof_alloc.so, and the leak figures must be those of the glibc run (c_targets.rs).
use std::path::PathBuf;
use std::process::Command;

use crate::report::{Name, assert_function, assert_nothing_lost, assert_num, assert_sites};
use crate::support::{Build, compile_c, memprof, privileged, run_to_end};

/// libmemprof_alloc.so from the same target directory as the memprof under test.
fn library() -> PathBuf {
    let so =
        std::path::Path::new(env!("CARGO_BIN_EXE_memprof")).with_file_name("libmemprof_alloc.so");
    assert!(
        so.is_file(),
        "{} is missing: build it with `cargo build -p memprof-alloc-preload` (same profile)",
        so.display()
    );
    so
}

#[test]
fn leaks_under_own_allocator() {
    let Some(env) = privileged("leaks_under_own_allocator") else {
        return;
    };
    let so = library();
    let target = compile_c(env.dir.path(), "leaks", Build::FramePointers);
    let output = env.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    // Where the probes land is what this test checks: the probe path, explicitly.
    cmd.args(["run", "--capture", "uprobes"])
        .arg("--output")
        .arg(&output)
        .arg("--env")
        .arg(format!("LD_PRELOAD={}", so.display()))
        .arg("--")
        .arg(&target);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{finished:?}");
    let report = finished.report(&output);
    assert_nothing_lost(&report);

    let probes = report["probes"].as_array().expect("probes");
    for function in ["malloc", "free", "calloc", "realloc", "posix_memalign"] {
        let probe = probes
            .iter()
            .find(|p| p["function"] == function)
            .unwrap_or_else(|| panic!("no probe for {function}: {probes:#?}"));
        assert_eq!(
            probe["module"].as_str(),
            Some(so.to_str().unwrap()),
            "{function} probed elsewhere"
        );
    }

    // The same figures as under glibc (c_targets::check_leaks).
    assert_function(&report, "malloc", 1004, 68396);
    assert_function(&report, "calloc", 2, 640);
    assert_function(&report, "realloc", 0, 0);
    assert_num(&report, "summary.allocations", 1006);
    assert_num(&report, "summary.bytes_allocated", 69036);
    assert_num(&report, "summary.frees", 1000);
    assert_num(&report, "summary.unknown_frees", 0);
    assert_num(&report, "summary.double_frees", 0);
    assert_num(&report, "summary.live_blocks", 6);
    assert_num(&report, "summary.live_bytes", 5036);
    assert_sites(&report, "leaks", Name::Exact("leak_small"), 3, 300);
    assert_sites(&report, "leaks", Name::Exact("leak_calloc"), 2, 640);
    assert_sites(&report, "leaks", Name::Exact("d"), 1, 4096);
}

#[test]
fn env_option_rejects_malformed_pairs() {
    let finished = run_to_end({
        let mut cmd = Command::new(memprof());
        cmd.args(["run", "--env", "NOEQUALS", "--", "true"]);
        cmd
    });
    assert_eq!(finished.status.code(), Some(2), "{finished:?}");
    assert!(
        finished.stderr.contains("expected KEY=VALUE"),
        "{}",
        finished.stderr
    );
}
