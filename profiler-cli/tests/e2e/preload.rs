//! What only the in-process path (`memprof run --capture preload`) has to get right, each on
//! both paths where both apply: processes the target starts (a forked child's calls are not
//! the target's, which keeps its own report when the child is followed: process_tree.rs; an
//! exec'd image still is the target), allocations in a signal handler, every allocator
//! preloaded after the capture library, and the refusal of a static program.
use std::path::PathBuf;
use std::process::Command;

use crate::report::{
    Name, assert_chain, assert_function, assert_nothing_lost, assert_num, assert_section_total,
    assert_sites,
};
use crate::support::{
    Build, Capture, compile_c, compile_noalloc, memprof, on_both_paths, privileged, profile_on,
    run_to_end,
};

on_both_paths!(
    forked_child(),
    a_forked_child_is_not_the_target,
    a_forked_child_is_not_the_target_preload
);

fn forked_child(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "processes", Build::NoFramePointers);
    let report = profile_on(capture, env.dir.path(), &target, &["fork"]);
    assert_nothing_lost(&report);
    // The child's 5 x 1000 are not the parent's.
    assert_function(&report, "malloc", 3, 300);
    assert_num(&report, "summary.frees", 0);
    assert_sites(&report, "leaks", Name::Exact("parent_leak"), 3, 300);
    assert_sites(&report, "leaks", Name::Exact("child_work"), 0, 0);
    assert_section_total(&report, "leaks", 3, 300);
    assert_chain(&report, "leaks", &["parent_leak", "main"]);
}

on_both_paths!(
    exec_image(),
    an_exec_of_the_target_is_followed,
    an_exec_of_the_target_is_followed_preload
);

fn exec_image(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "processes", Build::NoFramePointers);
    let report = profile_on(capture, env.dir.path(), &target, &["exec"]);
    assert_nothing_lost(&report);
    // The session's own report is the image after the exec: 7 x 50.
    assert_function(&report, "malloc", 7, 350);
    assert_sites(&report, "leaks", Name::Exact("after_exec"), 7, 350);
    assert_chain(&report, "leaks", &["after_exec", "main"]);
    assert_section_total(&report, "leaks", 7, 350);
    assert_num(&report, "summary.frees", 0);
    // The image before it has its own report: 2 x 64, released by the exec, neither freed
    // nor leaked.
    let before = &report["processes"][0];
    assert_eq!(before["image"], 1, "{:#}", report["processes"]);
    assert_eq!(before["end"], "exec");
    let out = env.dir.path().join("out");
    let dir = out.join(before["output"].as_str().unwrap());
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_function(&first, "malloc", 2, 128);
    assert_sites(&first, "leaks", Name::Exact("before_exec"), 0, 0);
    assert_eq!(
        first["summary"]["released_by_exec"],
        serde_json::json!({"blocks": 2, "bytes": 128})
    );
    // Its recording holds the releases: a replay ends the old heap the same way.
    let mut cmd = Command::new(memprof());
    cmd.args(["report", "--format", "json", "--output"])
        .arg(env.dir.path().join("replayed"))
        .arg(dir.join("recording.mprof"));
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{finished:?}");
    let replayed = finished.report(&env.dir.path().join("replayed"));
    assert_eq!(replayed["summary"], first["summary"]);
    assert_eq!(replayed["leaks"], first["leaks"]);

    // `--no-follow`: the launched process alone, one heap across its exec.
    let alone = env.dir.path().join("alone");
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--no-follow", "--capture", capture.arg(), "--output"])
        .arg(&alone)
        .arg("--")
        .arg(&target)
        .arg("exec");
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{finished:?}");
    let report = finished.report(&alone);
    assert_function(&report, "malloc", 9, 478);
    assert_sites(&report, "leaks", Name::Exact("before_exec"), 0, 0);
    assert_sites(&report, "leaks", Name::Exact("after_exec"), 7, 350);
    assert_eq!(
        report["summary"]["released_by_exec"],
        serde_json::json!({"blocks": 2, "bytes": 128})
    );
}

on_both_paths!(
    signal_handler(),
    a_signal_handler_allocates,
    a_signal_handler_allocates_preload
);

fn signal_handler(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "processes", Build::NoFramePointers);
    let report = profile_on(capture, env.dir.path(), &target, &["signal"]);
    assert_nothing_lost(&report);
    assert_function(&report, "malloc", 12, 8160);
    assert_num(&report, "summary.frees", 10);
    assert_sites(&report, "leaks", Name::Exact("handler_leak"), 2, 8000);
    assert_section_total(&report, "leaks", 2, 8000);
    // Through the signal frame: the handler, then the code it interrupted.
    assert_chain(&report, "leaks", &["handler_leak", "on_usr1"]);
}

/// Each allocator, preloaded after the capture library (what the library forwards to), and
/// whether it brings libstdc++ into the program (Debian's jemalloc and tcmalloc link it).
pub fn allocators() -> Vec<(&'static str, PathBuf, bool)> {
    let lib = "/usr/lib/x86_64-linux-gnu";
    let own =
        std::path::Path::new(env!("CARGO_BIN_EXE_memprof")).with_file_name("libmemprof_alloc.so");
    vec![
        ("jemalloc", format!("{lib}/libjemalloc.so.2").into(), true),
        ("mimalloc", format!("{lib}/libmimalloc.so.2").into(), false),
        (
            "tcmalloc",
            format!("{lib}/libtcmalloc_minimal.so.4").into(),
            true,
        ),
        ("memprof", own, false),
    ]
}

/// The blocks (and bytes) an allocator makes with its own `operator new` as it starts, live to
/// the end: tcmalloc's constructor (TCMallocGuard, MallocExtension::Register: 16 and 8
/// bytes). The library's operators record them, as the probes do.
pub fn start_up_news(allocator: &str) -> (u64, u64) {
    if allocator == "tcmalloc" {
        (2, 24)
    } else {
        (0, 0)
    }
}

/// libstdc++'s emergency exception-handling pool: one malloc at its start-up (gcc 12).
pub const LIBSTDCXX_POOL_BYTES: u64 = 72704;

#[test]
fn every_allocator_serves_the_preloaded_capture_with_exact_figures() {
    let Some(env) = privileged("every_allocator_serves_the_preloaded_capture") else {
        return;
    };
    let target = compile_c(env.dir.path(), "leaks", Build::NoFramePointers);
    for (name, library, brings_libstdcxx) in allocators() {
        assert!(
            library.is_file(),
            "{name}: {} is missing",
            library.display()
        );
        let output = env.dir.path().join(name);
        let mut cmd = Command::new(memprof());
        cmd.args(["run", "--capture", "preload", "--output"])
            .arg(&output)
            .arg("--env")
            .arg(format!("LD_PRELOAD={}", library.display()))
            .arg("--")
            .arg(&target);
        let finished = run_to_end(cmd);
        assert!(finished.status.success(), "{name}: {finished:?}");
        let report = finished.report(&output);
        assert_eq!(report["target"]["capture"]["path"], "preload", "{name}");
        assert_nothing_lost(&report);
        // The figures of c_targets::check_leaks, under every allocator; libstdc++, when the
        // allocator brings it, allocates its pool once (a real call of the process, which
        // the probes count too).
        let (pool_calls, pool_bytes) = if brings_libstdcxx {
            (1, LIBSTDCXX_POOL_BYTES)
        } else {
            (0, 0)
        };
        assert_function(&report, "malloc", 1004 + pool_calls, 68396 + pool_bytes);
        assert_function(&report, "calloc", 2, 640);
        assert_num(&report, "summary.frees", 1000);
        assert_num(&report, "summary.unknown_frees", 0);
        let (start_news, start_bytes) = start_up_news(name);
        if start_news > 0 {
            assert_function(&report, "operator new", start_news, start_bytes);
        }
        assert_num(&report, "summary.live_blocks", 6 + pool_calls + start_news);
        assert_sites(&report, "leaks", Name::Exact("leak_small"), 3, 300);
        assert_sites(&report, "leaks", Name::Exact("d"), 1, 4096);
        assert_chain(&report, "leaks", &["d", "c", "b", "a", "main"]);
    }
}

#[test]
fn a_static_program_cannot_take_the_preloaded_capture() {
    let Some(env) = privileged("a_static_program_cannot_take_the_preloaded_capture") else {
        return;
    };
    let target = compile_noalloc(env.dir.path());
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--capture", "preload", "--output"])
        .arg(env.dir.path().join("out"))
        .arg("--")
        .arg(&target);
    let finished = run_to_end(cmd);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert_eq!(
        finished.stderr,
        format!(
            "memprof: error: --capture preload: {} is statically linked, so no library can be \
             preloaded into it; use --capture uprobes\n",
            target.display()
        )
    );
}

/// A library unloaded with dlclose before the end (samples/c/dlclose.c): the in-process
/// capture holds dlclose until memprof has read every call made so far, so the library's
/// frames are unwound and symbolized through its mapping.
#[test]
fn frames_of_a_library_unloaded_before_the_end_are_symbolized() {
    let Some(env) = privileged("frames_of_a_library_unloaded_before_the_end_are_symbolized") else {
        return;
    };
    frames_of_an_unloaded_library(&env, Capture::Preload);
}

/// The same on the probes' path: a probe on dlclose holds the thread (as backpressure does)
/// until the collector has read its calls.
#[test]
fn frames_of_a_library_unloaded_before_the_end_are_symbolized_uprobes() {
    let Some(env) =
        privileged("frames_of_a_library_unloaded_before_the_end_are_symbolized_uprobes")
    else {
        return;
    };
    frames_of_an_unloaded_library(&env, Capture::Uprobes);
}

fn frames_of_an_unloaded_library(env: &crate::support::Privileged, capture: Capture) {
    // libstackdemo.so, built beside stacks.c's binary.
    let stacks = crate::support::compile_stacks(env.dir.path(), Build::NoFramePointers);
    let dir = stacks.parent().unwrap();
    let source = crate::support::samples_dir().join("c/dlclose.c");
    let target = dir.join("dlclose");
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fno-builtin", "-fomit-frame-pointer", "-o"])
        .arg(&target)
        .arg(&source)
        .args(["-ldl", "-Wl,-rpath,$ORIGIN"])
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc {}", source.display());
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_nothing_lost(&report);
    assert_sites(
        &report,
        "leaks",
        Name::Exact("stackdemo_make_buffer"),
        1,
        100,
    );
    assert_chain(&report, "leaks", &["stackdemo_make_buffer", "main"]);
}
