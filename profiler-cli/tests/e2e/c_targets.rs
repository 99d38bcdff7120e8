//! `memprof run` on the C samples, in a frame-pointer and a no-frame-pointer build each.
//! The figures come from each sample's header comment, where they are derived and checked.
use crate::report::{
    Name, assert_chain, assert_function, assert_nothing_lost, assert_num, assert_section_total,
    assert_sites,
};
use crate::support::{
    Build, Capture, compile_c, memprof, on_both_paths, privileged, profile_on, run_to_end,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

// One test per build and capture path, so that a failure says which stack walk or which
// path broke.
on_both_paths!(
    check_leaks(Build::FramePointers),
    leaks_fp,
    leaks_fp_preload
);
on_both_paths!(
    check_leaks(Build::NoFramePointers),
    leaks_nofp,
    leaks_nofp_preload
);
on_both_paths!(
    check_threads(Build::FramePointers),
    threads_fp,
    threads_fp_preload
);
on_both_paths!(
    check_threads(Build::NoFramePointers),
    threads_nofp,
    threads_nofp_preload
);
on_both_paths!(check_ctor(Build::FramePointers), ctor_fp, ctor_fp_preload);
on_both_paths!(
    check_ctor(Build::NoFramePointers),
    ctor_nofp,
    ctor_nofp_preload
);
on_both_paths!(
    check_realloc_edge(Build::FramePointers),
    realloc_edge_fp,
    realloc_edge_fp_preload
);
on_both_paths!(
    check_realloc_edge(Build::NoFramePointers),
    realloc_edge_nofp,
    realloc_edge_nofp_preload
);
on_both_paths!(
    check_aligned(Build::FramePointers),
    aligned_fp,
    aligned_fp_preload
);
on_both_paths!(
    check_aligned(Build::NoFramePointers),
    aligned_nofp,
    aligned_nofp_preload
);
on_both_paths!(check_mmap(Build::FramePointers), mmap_fp, mmap_fp_preload);
on_both_paths!(
    check_mmap(Build::NoFramePointers),
    mmap_nofp,
    mmap_nofp_preload
);

fn check_leaks(test: &str, build: Build, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "leaks", build);
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_nothing_lost(&report);

    // 3 x 100 (leak_small) + 1000 x 64 (churn) + 1 x 4096 (d); 2 x calloc(10, 32).
    assert_function(&report, "malloc", 1004, 68396);
    assert_function(&report, "calloc", 2, 640);
    assert_function(&report, "realloc", 0, 0);
    assert_num(&report, "summary.allocations", 1006);
    assert_num(&report, "summary.bytes_allocated", 69036);
    // Only churn frees, and libc frees nothing of its own in this program.
    assert_num(&report, "summary.frees", 1000);
    assert_num(&report, "summary.unknown_frees", 0);
    assert_num(&report, "summary.double_frees", 0);
    assert_num(&report, "summary.failed_allocations", 0);
    assert_num(&report, "summary.live_blocks", 6);
    assert_num(&report, "summary.live_bytes", 5036);

    assert_sites(&report, "leaks", Name::Exact("leak_small"), 3, 300);
    assert_sites(&report, "leaks", Name::Exact("leak_calloc"), 2, 640);
    assert_sites(&report, "leaks", Name::Exact("d"), 1, 4096);
    assert_sites(&report, "leaks", Name::Exact("churn"), 0, 0);
    assert_section_total(&report, "leaks", 6, 5036);
    // The default DWARF unwinding sees the whole chain with or without frame pointers, up to
    // libc's entry code (which has none) and the program's root.
    assert_chain(
        &report,
        "leaks",
        &["d", "c", "b", "a", "main", "__libc_start_main", "_start"],
    );
    assert_num(&report, "lost.stack_errors", 0);
    assert_no_truncated_stack(&report, "leaks");
}

fn check_threads(test: &str, build: Build, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "threads", build);
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_nothing_lost(&report);

    // 4 threads x (499 churn + 1 leak) x 32 bytes.
    assert_function(&report, "malloc", 2000, 64000);
    // pthread_create: one DTV per thread (ld.so calls the malloc family's calloc), 272 bytes;
    // 288 under the preloaded library, whose thread-local state is one more TLS module.
    let dtv = match capture {
        Capture::Uprobes => 272,
        Capture::Preload => 288,
    };
    assert_function(&report, "calloc", 4, 4 * dtv);
    assert_num(&report, "summary.frees", 1996);
    // Thread exit frees each thread's tcache, which libc allocated without calling malloc:
    // the allocator's own frees, not unknown frees of the program. The probes see them (and
    // set them apart); the preloaded library does not see them at all, as glibc calls its
    // own free directly.
    assert_num(&report, "summary.unknown_frees", 0);
    let internal_frees = match capture {
        Capture::Uprobes => 4,
        Capture::Preload => 0,
    };
    assert_num(&report, "summary.allocator_internal_frees", internal_frees);
    // thread_leak takes the last cached chunk back, so glibc frees no freed pointer again.
    assert_num(&report, "summary.double_frees", 0);
    // 4 leaked blocks of 32 plus the 4 DTVs kept in glibc's stack cache.
    assert_num(&report, "summary.live_blocks", 8);
    assert_num(&report, "summary.live_bytes", 128 + 4 * dtv);

    assert_thread_leaks(&report);
    assert_sites(&report, "leaks", Name::Exact("thread_churn"), 0, 0);
    assert_section_total(&report, "leaks", 8, 128 + 4 * dtv);
}

/// threads.c's leaks: one block of 32 bytes from each of its 4 threads, each with its whole
/// stack, which ends in libc's thread start (unwound without frame pointers).
fn assert_thread_leaks(report: &Value) {
    assert_sites(report, "leaks", Name::Exact("thread_leak"), 4, 128);
    assert_chain(
        report,
        "leaks",
        &["thread_leak", "thread_main", "start_thread"],
    );
    assert_num(report, "lost.stack_errors", 0);
    assert_no_truncated_stack(report, "leaks");
}

/// A thread's stack copies stop just above its root frames once memprof has walked it to its
/// root (the probes' stack tops), not `--stack-bytes` deep into the thread's descriptor: the
/// same exact counts and stacks, a fraction of the bytes.
#[test]
fn thread_stack_copies_stop_above_their_root() {
    let Some(env) = privileged("thread_stack_copies_stop_above_their_root") else {
        return;
    };
    let target = compile_c(env.dir.path(), "threads", Build::NoFramePointers);
    let output = env.dir.path().join("out");
    let churn: u64 = 50_000;
    let finished = crate::support::memprof_run_with(
        Capture::Uprobes,
        &[("MEMPROF_TIMINGS", "1")],
        &output,
        &target,
        // Each thread pauses 500 ms after its first pair: memprof has walked it to its root
        // and told the probes its top by then, however slow the collector runs.
        &[&churn.to_string(), "500"],
    );
    assert!(finished.status.success(), "{}", finished.stderr);
    let report = finished.report(&output);
    assert_nothing_lost(&report);
    assert_function(&report, "malloc", 4 * (churn + 1), 4 * (churn + 1) * 32);
    assert_num(&report, "summary.frees", 4 * churn);
    assert_thread_leaks(&report);
    // A stack per malloc, and for libc's calloc and mmap calls.
    let (stacks, per_snapshot) = crate::support::unwinding_line(&finished.stderr);
    assert!(stacks > 4 * (churn + 1), "{}", finished.stderr);
    // thread_main's frames and libc's thread start take a few hundred bytes; a copy to
    // `--stack-bytes` or the end of the thread's mapping, 5-8 KiB. Only each thread's first
    // copy (before the pause) and libc's own calls are whole.
    assert!(per_snapshot < 2048.0, "{per_snapshot} bytes per snapshot");
}

fn check_ctor(test: &str, build: Build, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "ctor", build);
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_nothing_lost(&report);

    // 777 from the constructor (before main: only seen if probes are in before ld.so runs
    // constructors) + 555 from main.
    assert_function(&report, "malloc", 2, 1332);
    assert_num(&report, "summary.frees", 0);
    assert_num(&report, "summary.live_blocks", 2);
    assert_sites(&report, "leaks", Name::Exact("ctor_leak"), 1, 777);
    assert_sites(&report, "leaks", Name::Exact("main_leak"), 1, 555);
    assert_chain(&report, "leaks", &["main_leak", "main"]);
    assert_no_truncated_stack(&report, "leaks");
    assert_section_total(&report, "leaks", 2, 1332);
}

fn check_realloc_edge(test: &str, build: Build, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "realloc_edge", build);
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_nothing_lost(&report);

    // Only the calls the program makes: glibc's nested malloc/free/realloc inside realloc and
    // reallocarray must not be counted again.
    assert_function(&report, "malloc", 3, 90);
    // 100 + 200 + 50 + 5000 + 32; realloc(p, 0) and the failed realloc add no bytes.
    assert_function(&report, "realloc", 7, 5382);
    // 200 + 400; the overflowing reallocarray adds nothing.
    assert_function(&report, "reallocarray", 3, 600);
    assert_num(&report, "summary.allocations", 13);
    assert_num(&report, "summary.failed_allocations", 2);
    assert_num(&report, "summary.bytes_allocated", 6072);
    // One free() call; realloc(p, 0) frees as a realloc call.
    assert_num(&report, "summary.frees", 1);
    assert_num(&report, "summary.unknown_frees", 0);
    assert_num(&report, "summary.unknown_reallocs", 0);
    assert_num(&report, "summary.double_frees", 0);
    assert_num(&report, "summary.live_blocks", 3);
    assert_num(&report, "summary.live_bytes", 496);

    // A failed (or overflowing) call leaves the old block live.
    assert_sites(&report, "leaks", Name::Exact("array_grow"), 1, 400);
    assert_sites(&report, "leaks", Name::Exact("failed_realloc"), 1, 64);
    assert_sites(&report, "leaks", Name::Exact("grow_leak"), 1, 32);
    assert_chain(&report, "leaks", &["grow_leak", "main"]);
    assert_sites(&report, "leaks", Name::Exact("realloc_cycle"), 0, 0);
    assert_sites(&report, "leaks", Name::Exact("realloc_then_free"), 0, 0);
    assert_section_total(&report, "leaks", 3, 496);
}

fn check_aligned(test: &str, build: Build, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "aligned", build);
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_nothing_lost(&report);

    assert_function(&report, "posix_memalign", 2, 300);
    // aligned_alloc and memalign share one address in glibc 2.36: count them together.
    let calls = ["aligned_alloc", "memalign"]
        .map(|f| crate::report::by_function(&report, f, "calls"))
        .iter()
        .sum::<u64>();
    let bytes = ["aligned_alloc", "memalign"]
        .map(|f| crate::report::by_function(&report, f, "bytes"))
        .iter()
        .sum::<u64>();
    assert_eq!(
        (calls, bytes),
        (4, 256 + 512 + 300 + 64),
        "aligned_alloc + memalign"
    );
    assert_function(&report, "valloc", 2, 6000);
    assert_function(&report, "pvalloc", 2, 12288);
    // Every alignment is above 16, so glibc never relays to malloc.
    assert_function(&report, "malloc", 0, 0);
    assert_num(&report, "summary.allocations", 10);
    assert_num(&report, "summary.bytes_allocated", 19720);
    assert_num(&report, "summary.frees", 5);
    assert_num(&report, "summary.unknown_frees", 0);
    assert_num(&report, "summary.live_blocks", 5);
    assert_num(&report, "summary.live_bytes", 9848);

    assert_sites(&report, "leaks", Name::Exact("leak_posix_memalign"), 1, 100);
    assert_sites(&report, "leaks", Name::Exact("leak_aligned_alloc"), 1, 256);
    assert_sites(&report, "leaks", Name::Exact("leak_memalign"), 1, 300);
    assert_sites(&report, "leaks", Name::Exact("leak_valloc"), 1, 1000);
    assert_sites(&report, "leaks", Name::Exact("leak_pvalloc"), 1, 8192);
    assert_sites(&report, "leaks", Name::Exact("aligned_freed"), 0, 0);
    assert_section_total(&report, "leaks", 5, 9848);
}

fn check_mmap(test: &str, build: Build, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "mmap", build);
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_nothing_lost(&report);

    // 4 + 8 + 2 + 3 pages mapped; c unmapped, 2 pages punched out of b, a grown to 16 pages.
    assert_num(&report, "summary.mmap.calls", 4);
    assert_num(&report, "summary.mmap.bytes", 69632);
    assert_num(&report, "summary.mmap.munmap_calls", 2);
    assert_num(&report, "summary.mmap.unknown_munmaps", 0);
    // a, the two halves of b, d.
    assert_num(&report, "summary.mmap.live_regions", 4);
    assert_num(&report, "summary.mmap.live_bytes", 65536 + 24576 + 12288);
    // The mremap raises the mapped total from 53248 to its maximum, 102400.
    assert_num(&report, "summary.mmap.peak_bytes", 102400);

    assert_sites(&report, "mappings", Name::Exact("grow_a"), 1, 65536);
    assert_sites(&report, "mappings", Name::Exact("map_b"), 2, 24576);
    assert_sites(&report, "mappings", Name::Exact("map_d"), 1, 12288);
    // mmap and mremap returns carry stacks too.
    assert_chain(&report, "mappings", &["map_d", "main"]);
    assert_chain(&report, "mappings", &["grow_a", "main"]);
    // a moved to grow_a's site; c is gone.
    assert_sites(&report, "mappings", Name::Exact("map_a"), 0, 0);
    assert_sites(&report, "mappings", Name::Exact("map_c"), 0, 0);
    assert_section_total(&report, "mappings", 4, 102400);

    // Mappings are not heap blocks.
    assert_num(&report, "summary.allocations", 0);
    assert_num(&report, "summary.live_blocks", 0);
    assert_section_total(&report, "leaks", 0, 0);
}

on_both_paths!(check_churn_pairs(), churn_pairs, churn_pairs_preload);

fn check_churn_pairs(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "churn", Build::FramePointers);
    let report = profile_on(capture, env.dir.path(), &target, &["10000"]);
    assert_nothing_lost(&report);
    // 10000 pairs over 8 sizes summing to 2024: 1250 rounds.
    assert_function(&report, "malloc", 10000, 1250 * 2024);
    assert_num(&report, "summary.frees", 10000);
    assert_num(&report, "summary.live_blocks", 0);
    assert_section_total(&report, "leaks", 0, 0);
}

/// No site of `section` is marked truncated.
fn assert_no_truncated_stack(report: &Value, section: &str) {
    let sites = report[section].as_array().expect("sites");
    for site in sites {
        assert_eq!(
            site["truncated"], false,
            "truncated stack in {section}: {site}"
        );
    }
}

/// `memprof run` with capture flags; requires success and returns the report.
fn profile_with(dir: &Path, flags: &[&str], target: &Path) -> Value {
    let output = dir.join("out");
    let mut cmd = Command::new(memprof());
    cmd.arg("run")
        .arg("--output")
        .arg(&output)
        .args(flags)
        .arg("--")
        .arg(target);
    let finished = run_to_end(cmd);
    assert!(
        finished.status.success(),
        "memprof run {flags:?} failed: {}\nstderr:\n{}",
        finished.status,
        finished.stderr
    );
    finished.report(&output)
}

/// The stack (function names, innermost first) and truncation of the one leak site whose
/// first frame is `function`.
fn leak_stack(report: &Value, function: &str) -> (Vec<String>, bool) {
    let sites: Vec<&Value> = report["leaks"]
        .as_array()
        .expect("leaks")
        .iter()
        .filter(|site| site["stack"][0]["function"] == function)
        .collect();
    assert_eq!(sites.len(), 1, "one {function} site in {}", report["leaks"]);
    let names = sites[0]["stack"]
        .as_array()
        .expect("stack")
        .iter()
        .map(|frame| frame["function"].as_str().unwrap_or("?").to_owned())
        .collect();
    (names, sites[0]["truncated"].as_bool().expect("truncated"))
}

#[test]
fn frame_pointer_walk_on_request() {
    let Some(env) = privileged("frame_pointer_walk_on_request") else {
        return;
    };
    let target = compile_c(env.dir.path(), "leaks", Build::FramePointers);
    // In the kernel for the probes, in the target on the in-process path.
    for capture in ["uprobes", "preload"] {
        let flags = ["--capture", capture, "--unwind", "fp"];
        let report = profile_with(env.dir.path(), &flags, &target);
        assert_nothing_lost(&report);
        assert_sites(&report, "leaks", Name::Exact("d"), 1, 4096);
        assert_chain(&report, "leaks", &["d", "c", "b", "a", "main"]);
    }
}

#[test]
fn frame_pointer_walk_keeps_the_immediate_caller_without_frame_pointers() {
    let Some(env) = privileged("frame_pointer_walk_keeps_the_immediate_caller") else {
        return;
    };
    let target = compile_c(env.dir.path(), "leaks", Build::NoFramePointers);
    for capture in ["uprobes", "preload"] {
        let flags = ["--capture", capture, "--unwind", "fp"];
        let report = profile_with(env.dir.path(), &flags, &target);
        assert_nothing_lost(&report);
        // Frame 0 is the return address the probe sees, whatever the walk finds above it.
        assert_sites(&report, "leaks", Name::Exact("d"), 1, 4096);
        assert_sites(&report, "leaks", Name::Exact("leak_small"), 3, 300);
    }
}

#[test]
fn depth_limit_cuts_and_marks_stacks_in_both_modes() {
    let Some(env) = privileged("depth_limit_cuts_and_marks_stacks_in_both_modes") else {
        return;
    };
    let target = compile_c(env.dir.path(), "leaks", Build::FramePointers);
    let abc = vec!["d".to_owned(), "c".to_owned(), "b".to_owned()];
    for capture in ["uprobes", "preload"] {
        for mode in ["fp", "dwarf"] {
            let report = profile_with(
                env.dir.path(),
                &["--capture", capture, "--unwind", mode, "--max-depth", "3"],
                &target,
            );
            assert_eq!(
                leak_stack(&report, "d"),
                (abc.clone(), true),
                "--capture {capture} --unwind {mode}"
            );
        }
    }
    // A stack exactly as deep as the limit is whole, one frame less is cut.
    let (whole, truncated) = leak_stack(&profile_with(env.dir.path(), &[], &target), "d");
    assert!(!truncated && whole.len() > 5, "{whole:?}");
    let depth = whole.len().to_string();
    let report = profile_with(env.dir.path(), &["--max-depth", &depth], &target);
    assert_eq!(leak_stack(&report, "d"), (whole.clone(), false));
    let depth = (whole.len() - 1).to_string();
    let report = profile_with(env.dir.path(), &["--max-depth", &depth], &target);
    assert_eq!(
        leak_stack(&report, "d"),
        (whole[..whole.len() - 1].to_vec(), true)
    );
}

#[test]
fn stack_byte_limit_cuts_and_marks_stacks() {
    let Some(env) = privileged("stack_byte_limit_cuts_and_marks_stacks") else {
        return;
    };
    let target = compile_c(env.dir.path(), "leaks", Build::NoFramePointers);
    // 8 bytes hold no return address: only frame 0 (the probe's ip) is known. Only the
    // probes copy the stack: the in-process path walks it where it is.
    let report = profile_with(
        env.dir.path(),
        &["--capture", "uprobes", "--stack-bytes", "8"],
        &target,
    );
    assert_nothing_lost(&report);
    let (stack, truncated) = leak_stack(&report, "d");
    assert_eq!((stack, truncated), (vec!["d".to_owned()], true));
    assert_num(&report, "lost.stack_errors", 0);
}

#[test]
fn bad_stack_bytes_is_one_line_error() {
    let out = Command::new(memprof())
        .args(["run", "--stack-bytes", "12", "--", "/bin/true"])
        .output()
        .expect("run memprof");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "memprof: error: --stack-bytes must be a multiple of 8 between 8 and 16384, not 12"
    );
}

/// leaks.c linked statically against musl (musl-gcc): a static program takes the probes, and
/// musl's start code has no unwind information, so every stack stops there. The figures are
/// leaks.c's, each stack has its frames up to main, and the note says what happened: not
/// "without a stack" (which it once said while the stacks were shown).
#[test]
fn a_static_musl_program() {
    let Some(p) = privileged("a_static_musl_program") else {
        return;
    };
    let source = crate::support::samples_dir().join("c/leaks.c");
    let target = p.dir.path().join("leaks-musl");
    let status = Command::new("musl-gcc")
        .args(["-static", "-O2", "-g", "-fno-builtin", "-o"])
        .arg(&target)
        .arg(&source)
        .status()
        .expect("musl-gcc (cargo xtask setup installs musl-tools)");
    assert!(status.success(), "musl-gcc {}", source.display());
    let output = p.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--output"])
        .arg(&output)
        .arg("--")
        .arg(&target);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    let report = finished.report(&output);
    assert_eq!(report["target"]["capture"]["path"], "uprobes");
    assert_nothing_lost(&report);
    assert_function(&report, "malloc", 1004, 68396);
    assert_function(&report, "calloc", 2, 640);
    assert_section_total(&report, "leaks", 6, 5036);
    assert_sites(&report, "leaks", Name::Exact("leak_small"), 3, 300);
    assert_chain(&report, "leaks", &["d", "c", "b", "a", "main"]);
    assert!(
        !finished.stderr.contains("without a stack"),
        "{}",
        finished.stderr
    );
    // Every stack of the 1,006 calls ends in musl's start code.
    assert_num(&report, "lost.stack_errors", 1006);
    assert!(
        finished
            .stderr
            .contains("note: 1,006 stacks could not be followed to their root"),
        "{}",
        finished.stderr
    );
}
