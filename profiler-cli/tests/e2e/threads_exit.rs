//! Threads that exit with freed chunks in their glibc tcache (samples/c/thread_exit.c): glibc
//! hands those chunks, and the tcache itself, back through `free` from its own code. They are
//! the allocator's frees, never double or unknown frees of the program; a real double free by
//! the program is still reported, with the stack that allocated the block and the function that
//! freed it again. Also checked on a replay of the recording (the classification is recorded
//! with the events).
use crate::report::{Name, assert_function, assert_nothing_lost, assert_num, assert_sites};
use crate::support::{
    Build, Capture, compile_c, marker_line, memprof, memprof_run_with, on_both_paths, privileged,
    profile_on, profile_output_on, run_to_end,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The allocator's own frees at thread exit: 4 threads x (20 cached chunks + the tcache), from
/// the sample's header comment. The probes see them and set them apart; the preloaded library
/// does not see them, as glibc calls its own free directly.
fn tcache_frees(capture: Capture) -> u64 {
    match capture {
        Capture::Uprobes => 4 * 21,
        Capture::Preload => 0,
    }
}

/// The 4 threads' DTVs: 272 bytes each, 288 under the preloaded library (whose thread-local
/// state is one more TLS module).
fn dtv_bytes(capture: Capture) -> u64 {
    match capture {
        Capture::Uprobes => 4 * 272,
        Capture::Preload => 4 * 288,
    }
}

/// What both variants share: the threads' blocks, the DTVs, the leak, no anomaly.
fn assert_thread_figures(report: &Value, capture: Capture, extra_mallocs: u64, extra_bytes: u64) {
    assert_nothing_lost(report);
    assert_function(report, "malloc", 81 + extra_mallocs, 5000 + extra_bytes);
    assert_function(report, "calloc", 4, dtv_bytes(capture));
    assert_num(report, "summary.frees", 80 + extra_mallocs);
    assert_num(report, "summary.unknown_frees", 0);
    assert_num(
        report,
        "summary.allocator_internal_frees",
        tcache_frees(capture),
    );
    // Nor do the analyses list the allocator's own frees as the program's odd frees.
    let odd = report["analyses"]["reallocs"]["odd_frees"]
        .as_array()
        .expect("analyses.reallocs.odd_frees");
    assert_eq!(
        odd.len() as u64,
        crate::report::num(report, "summary.double_frees"),
        "odd frees: {odd:?}"
    );
    assert_num(report, "summary.live_blocks", 5);
    assert_num(report, "summary.live_bytes", 200 + dtv_bytes(capture));
    assert_sites(report, "leaks", Name::Exact("main_leak"), 1, 200);
    assert_sites(report, "leaks", Name::Exact("thread_work"), 0, 0);
    // Every free event is one of the four kinds.
    assert_function(
        report,
        "free",
        80 + extra_mallocs
            + tcache_frees(capture)
            + crate::report::num(report, "summary.double_frees"),
        (4 * 5 * (16 + 32 + 64 + 128)) + extra_bytes,
    );
    // The threads' stacks stay in glibc's stack cache (mapped by pthread_create, tracked);
    // their arenas are mapped inside malloc (nested, unseen).
    assert_num(report, "summary.mmap.unknown_munmaps", 0);
}

fn replay(dir: &Path) -> Value {
    let output = dir.join("replayed");
    let mut cmd = Command::new(memprof());
    cmd.arg("report")
        .arg("--output")
        .arg(&output)
        .arg(dir.join("out").join("recording.mprof"));
    let finished = run_to_end(cmd);
    assert!(
        finished.status.success(),
        "memprof report failed: {}\n{}",
        finished.status,
        finished.stderr
    );
    finished.report(&output)
}

on_both_paths!(
    thread_exit_frees(),
    thread_exit_frees_are_the_allocators_not_double_frees,
    thread_exit_frees_preload
);

fn thread_exit_frees(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "thread_exit", Build::NoFramePointers);
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_thread_figures(&report, capture, 0, 0);
    assert_num(&report, "summary.double_frees", 0);
    assert_eq!(report["double_frees"].as_array().map(Vec::len), Some(0));

    let replayed = replay(env.dir.path());
    assert_eq!(replayed["summary"], report["summary"], "replay differs");
}

on_both_paths!(
    real_double_free(),
    a_real_double_free_beside_thread_exit_is_still_reported,
    a_real_double_free_beside_thread_exit_preload
);

fn real_double_free(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "thread_exit", Build::NoFramePointers);
    let report = profile_on(capture, env.dir.path(), &target, &["double"]);
    // double_free: 7 fillers + p + q, all 48 bytes, each freed once; p once more.
    assert_thread_figures(&report, capture, 9, 9 * 48);
    assert_num(&report, "summary.double_frees", 1);
    let doubles = report["double_frees"].as_array().expect("double_frees");
    assert_eq!(doubles.len(), 1, "{doubles:?}");
    assert_eq!(doubles[0]["size"], 48);
    let stack: Vec<&str> = doubles[0]["alloc_stack"]
        .as_array()
        .expect("alloc_stack")
        .iter()
        .map(|frame| frame["function"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        stack.get(..3),
        Some(&["double_victim", "double_free", "main"][..]),
        "{stack:?}"
    );
    // Frees carry no stack, but the second free's caller is named, to the line.
    let caller = &doubles[0]["freed_from"][0];
    assert_eq!(caller["function"], "double_free", "{:#}", doubles[0]);
    assert!(
        caller["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("thread_exit.c")),
        "{caller}"
    );
    assert_eq!(
        caller["line"],
        marker_line("c/thread_exit.c", "second-free"),
        "{caller}"
    );

    let replayed = replay(env.dir.path());
    assert_eq!(replayed["summary"], report["summary"], "replay differs");
    assert_eq!(replayed["double_frees"], report["double_frees"]);
}

on_both_paths!(check_realloc_race(), realloc_race, realloc_race_preload);

/// 64 threads allocating, reallocating and freeing at once (samples/c/realloc_race.c): a
/// block a realloc releases inside the call, handed to another thread before the realloc's
/// record is written, is neither an overwritten block nor, later, a double free.
fn check_realloc_race(test: &str, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_c(p.dir.path(), "realloc_race", Build::NoFramePointers);
    let output = p.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    cmd.args([
        "run",
        "--no-leak-check",
        "--capture",
        capture.arg(),
        "--output",
    ])
    .arg(&output)
    .arg("--")
    .arg(&target);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    let report = finished.report(&output);
    assert_nothing_lost(&report);
    for anomaly in [
        "double_frees",
        "overwritten_blocks",
        "unknown_frees",
        "unknown_reallocs",
    ] {
        assert_num(&report, &format!("summary.{anomaly}"), 0);
    }
    let printed: u64 = finished.printed("calls: ").parse().expect("a call count");
    let at_work = |section: &str, field: &str| -> u64 {
        crate::report::sites_with(&report, section, Name::Exact("work"))
            .iter()
            .map(|site| site[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(at_work("sites", "allocations"), printed);
    assert_eq!(
        at_work("leaks", "blocks"),
        0,
        "everything `work` allocated is freed"
    );
}

on_both_paths!(
    thread_churn(),
    threads_coming_and_going,
    threads_coming_and_going_preload
);

/// 300 threads one after another, each leaking one block 20 calls deep
/// (samples/c/thread_churn.c): every leak is counted, with its stack, and on the preload path
/// the library's own memory stays the size of a few stack walkers, since each exiting thread
/// hands its walker on (444 KiB here; 24 MiB with the walkers kept by the threads that exit).
fn thread_churn(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "thread_churn", Build::NoFramePointers);
    let (report, finished) = profile_output_on(capture, env.dir.path(), &target, &["300"]);
    assert_nothing_lost(&report);
    assert_sites(&report, "leaks", Name::Exact("churn_leak"), 300, 300 * 32);
    crate::report::assert_chain(&report, "leaks", &["churn_leak", "descend", "descend"]);
    let arena_kib: u64 = finished.printed("arena_rss_kib: ").parse().expect("KiB");
    match capture {
        Capture::Uprobes => assert_eq!(arena_kib, 0, "no library, no arena"),
        Capture::Preload => assert!(
            (1..4096).contains(&arena_kib),
            "the library's arena holds {arena_kib} KiB after 300 threads"
        ),
    }
}

/// The probes keep each thread's call in flight in a slot by thread id, and in a hash map when
/// the id is past the slots (pid_max above 2^17): with one slot, every thread of thread_churn
/// goes the hash map's way, and every leak is still counted with its stack.
#[test]
fn threads_past_the_probes_slots_are_counted_alike() {
    let Some(env) = privileged("threads_past_the_probes_slots_are_counted_alike") else {
        return;
    };
    let target = compile_c(env.dir.path(), "thread_churn", Build::NoFramePointers);
    let output = env.dir.path().join("out");
    let finished = memprof_run_with(
        Capture::Uprobes,
        &[("MEMPROF_TID_SLOTS", "1")],
        &output,
        &target,
        &["300"],
    );
    assert!(finished.status.success(), "{}", finished.stderr);
    let report = finished.report(&output);
    assert_nothing_lost(&report);
    assert_sites(&report, "leaks", Name::Exact("churn_leak"), 300, 300 * 32);
    crate::report::assert_chain(&report, "leaks", &["churn_leak", "descend", "descend"]);
}
