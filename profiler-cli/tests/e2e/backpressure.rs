//! A ring far too small for the target's allocation rate: `memprof run` holds the allocating
//! threads until the collector catches up instead of dropping events, so every figure stays
//! exact. (Without the holds, churn under a 1 MiB ring lost 143,649 of 1.6 M events in 4 s.)
use crate::report::{Name, assert_function, assert_nothing_lost, assert_num, assert_sites};
use crate::support::{Build, compile_c, memprof, privileged, run_to_end};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `memprof run --ring-mib 1 -- TARGET ARGS`; requires success and returns the report.
fn profile_with_tiny_ring(dir: &Path, target: &Path, args: &[&str]) -> Value {
    let output = dir.join("out");
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--ring-mib", "1", "--output"])
        .arg(&output)
        .arg("--")
        .arg(target)
        .args(args);
    let finished = run_to_end(cmd);
    assert!(
        finished.status.success(),
        "memprof run failed: {}\nstderr:\n{}",
        finished.status,
        finished.stderr
    );
    finished.report(&output)
}

/// The report says the target was held, and that times include the pauses.
fn assert_held(report: &Value) {
    let warnings = report["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("threads were held"))),
        "no hold was reported: {warnings:?}"
    );
}

#[test]
fn a_full_ring_holds_the_thread_instead_of_losing_events() {
    let Some(env) = privileged("a_full_ring_holds_the_thread_instead_of_losing_events") else {
        return;
    };
    let target = compile_c(env.dir.path(), "churn", Build::FramePointers);
    let report = profile_with_tiny_ring(env.dir.path(), &target, &["200000"]);
    assert_nothing_lost(&report);
    assert_held(&report);
    // 200000 pairs over 8 sizes summing to 2024: 25000 rounds.
    assert_function(&report, "malloc", 200_000, 25_000 * 2024);
    assert_num(&report, "summary.frees", 200_000);
    assert_num(&report, "summary.live_blocks", 0);
    assert_num(&report, "summary.double_frees", 0);
    assert_num(&report, "summary.unknown_frees", 0);
    assert_eq!(report["target"]["exit"]["code"], 0);
}

#[test]
fn a_full_ring_holds_every_allocating_thread() {
    let Some(env) = privileged("a_full_ring_holds_every_allocating_thread") else {
        return;
    };
    let target = compile_c(env.dir.path(), "threads", Build::NoFramePointers);
    // threads.c with 50000 pairs per thread: malloc 4 x 50001 calls of 32 bytes, frees
    // 4 x 50000, the 4 DTVs pthread_create callocs, 8 blocks live at exit.
    let report = profile_with_tiny_ring(env.dir.path(), &target, &["50000"]);
    assert_nothing_lost(&report);
    assert_held(&report);
    assert_function(&report, "malloc", 200_004, 200_004 * 32);
    assert_function(&report, "calloc", 4, 1088);
    assert_num(&report, "summary.frees", 200_000);
    assert_num(&report, "summary.live_blocks", 8);
    assert_num(&report, "summary.double_frees", 0);
    assert_num(&report, "summary.unknown_frees", 0);
    assert_num(&report, "summary.allocator_internal_frees", 4);
    assert_sites(&report, "leaks", Name::Exact("thread_leak"), 4, 128);
}
