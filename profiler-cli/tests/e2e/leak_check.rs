//! The leak check (memcheck's four classes) at exit in `run` and at the end of an `attach
//! --leak-check` window, on samples/c/leak_classes.c, held to valgrind's figures for the same
//! binary.
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{
    Build, Capture, DEADLINE, KilledOnDrop, compile_c, compile_cpp, compile_rust_bin, line_channel,
    memprof, on_both_paths, privileged, profile_on, run_to_end, wait_deadline, wait_for_line,
};

/// The classes in report order, as (blocks, bytes), for leak_classes.c (see its header).
const EXPECTED: [(&str, u64, u64); 4] = [
    ("definitely_lost", 6, 460),
    ("indirectly_lost", 3, 136),
    ("possibly_lost", 1, 256),
    ("still_reachable", 3, 224),
];

/// memprof's `summary.leak_check` classes as (name, blocks, bytes).
fn classes(report: &Value) -> Vec<(String, u64, u64)> {
    let check = &report["summary"]["leak_check"];
    EXPECTED
        .iter()
        .map(|(name, _, _)| {
            let class = &check[*name];
            (
                name.to_string(),
                class["blocks"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{check:#}")),
                class["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn expected() -> Vec<(String, u64, u64)> {
    EXPECTED
        .iter()
        .map(|&(name, blocks, bytes)| (name.to_string(), blocks, bytes))
        .collect()
}

/// valgrind's LEAK SUMMARY of `binary` (run with `options` too) as (name, blocks, bytes), in
/// memprof's order.
fn valgrind_classes(binary: &Path, options: &[&str]) -> Vec<(String, u64, u64)> {
    let mut cmd = Command::new("valgrind");
    cmd.args(["--leak-check=full", "--show-leak-kinds=all"])
        .args(options)
        .arg(binary);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "valgrind: {}", finished.stderr);
    let figure = |label: &str| {
        let line = finished
            .stderr
            .lines()
            .find(|line| line.contains(&format!("{label}:")))
            .unwrap_or_else(|| panic!("no {label:?} in valgrind's output:\n{}", finished.stderr));
        // "==N==    definitely lost: 388 bytes in 5 blocks"
        let numbers: Vec<u64> = line
            .split_once(&format!("{label}:"))
            .unwrap()
            .1
            .split_whitespace()
            .filter_map(|word| word.replace(',', "").parse().ok())
            .collect();
        assert_eq!(numbers.len(), 2, "{line}");
        (numbers[1], numbers[0])
    };
    [
        "definitely lost",
        "indirectly lost",
        "possibly lost",
        "still reachable",
    ]
    .iter()
    .zip(EXPECTED)
    .map(|(label, (name, _, _))| {
        let (blocks, bytes) = figure(label);
        (name.to_string(), blocks, bytes)
    })
    .collect()
}

/// The leak sites whose stack has a frame named `function`: (class, blocks, bytes), in
/// report order.
fn sites_of(report: &Value, function: &str) -> Vec<(String, u64, u64)> {
    report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|site| {
            site["stack"].as_array().unwrap().iter().any(|frame| {
                frame["function"].as_str().is_some_and(|name| {
                    name == function || name.starts_with(&format!("{function}::{{"))
                })
            })
        })
        .map(|site| {
            (
                site["reachability"].as_str().unwrap().to_string(),
                site["blocks"].as_u64().unwrap(),
                site["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn owned(sites: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
    sites
        .iter()
        .map(|&(class, blocks, bytes)| (class.to_string(), blocks, bytes))
        .collect()
}

/// Each leak site's (function, class, blocks, bytes), in report order.
fn sites(report: &Value) -> Vec<(String, String, u64, u64)> {
    report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|site| {
            (
                site["stack"][0]["function"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
                site["reachability"].as_str().unwrap().to_string(),
                site["blocks"].as_u64().unwrap(),
                site["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn expected_sites() -> Vec<(String, String, u64, u64)> {
    [
        ("lose_blocks", "definitely_lost", 3, 300),
        ("lose_behind_free", "definitely_lost", 1, 72),
        ("lose_list", "definitely_lost", 1, 48),
        ("lose_cycle", "definitely_lost", 1, 40),
        ("lose_list", "indirectly_lost", 2, 96),
        ("lose_cycle", "indirectly_lost", 1, 40),
        ("hold_interior", "possibly_lost", 1, 256),
        ("keep_blocks", "still_reachable", 1, 128),
        ("keep_blocks", "still_reachable", 1, 64),
        ("keep_blocks", "still_reachable", 1, 32),
    ]
    .iter()
    .map(|&(f, c, blocks, bytes)| (f.to_string(), c.to_string(), blocks, bytes))
    .collect()
}

on_both_paths!(
    check_at_exit(Build::FramePointers),
    classes_at_exit_fp,
    classes_at_exit_fp_preload
);
on_both_paths!(
    check_at_exit(Build::NoFramePointers),
    classes_at_exit_nofp,
    classes_at_exit_nofp_preload
);

fn check_at_exit(test: &str, build: Build, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_c(p.dir.path(), "leak_classes", build);
    let report = profile_on(capture, p.dir.path(), &target, &[]);
    assert_eq!(classes(&report), expected());
    assert_eq!(classes(&report), valgrind_classes(&target, &[]));
    assert_eq!(sites(&report), expected_sites());
    let scan = &report["summary"]["leak_check"]["scan"];
    assert!(scan["bytes_scanned"].as_u64().unwrap() > 0, "{scan}");
    assert_eq!(scan["bytes_unreadable"], 0, "{scan}");
    // At exit nothing is left to pause: the program had ended.
    assert_eq!(scan["paused_secs"], 0.0, "{scan}");
    assert_html_and_flame(&p.dir.path().join("out"));

    // The replay shows what the live session found (the target's memory is gone by then).
    let output = p.dir.path().join("out");
    let offline = p.dir.path().join("offline");
    let mut cmd = Command::new(memprof());
    cmd.arg("report")
        .arg(output.join("recording.mprof"))
        .arg("--output")
        .arg(&offline);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    let replayed = finished.report(&offline);
    assert_eq!(
        replayed["summary"]["leak_check"],
        report["summary"]["leak_check"]
    );
    assert_eq!(sites(&replayed), expected_sites());
    // The terminal summary puts the lost classes first.
    assert!(
        finished
            .stderr
            .contains("Leak check: 6 blocks (460 B) definitely lost"),
        "{}",
        finished.stderr
    );
}

/// report.html and leaks.svg of leak_classes.c: the four classes in the summary, the lost
/// sites first in the leak table with their class, the lost bytes drawn and the reachable ones
/// counted but not drawn.
fn assert_html_and_flame(output: &Path) {
    let html = std::fs::read_to_string(output.join("report.html")).expect("report.html");
    assert!(
        html.contains(
            "definitely lost 460 B in 6 blocks; indirectly lost 136 B in 3 blocks; \
             possibly lost 256 B in 1 blocks; still reachable 224 B in 3 blocks"
        ),
        "no leak check row in report.html"
    );
    assert!(
        html.contains(
            "the program can no longer reach 852 B of them (definitely, indirectly or \
             possibly lost, listed first), 224 B is still reachable"
        ),
        "no leak paragraph in report.html"
    );
    // Each leak row: bytes, blocks, then the class (the first plain <td>).
    let rows: Vec<(String, String)> = html
        .split("<tr class=\"leak\">")
        .skip(1)
        .map(|row| {
            let bytes = row
                .split("<td class=\"n\">")
                .nth(1)
                .and_then(|cell| cell.split("</td>").next())
                .unwrap()
                .to_string();
            let class = row
                .split("<td>")
                .nth(1)
                .and_then(|cell| cell.split("</td>").next())
                .unwrap()
                .to_string();
            (class, bytes)
        })
        .collect();
    let expected: Vec<(String, String)> = expected_sites()
        .into_iter()
        .map(|(_, class, _, bytes)| (class.replace('_', " "), bytes.to_string()))
        .collect();
    assert_eq!(rows, expected);
    let svg = std::fs::read_to_string(output.join("leaks.svg")).expect("leaks.svg");
    let title = svg
        .split("lost bytes of ")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("no lost-bytes title in leaks.svg");
    assert!(
        title.ends_with(
            "leak_classes.fp - 852 B in 10 blocks (definitely 460 B, indirectly 136 B, \
             possibly 256 B); 224 B still reachable, not shown"
        ) || title.ends_with(
            "leak_classes.nofp - 852 B in 10 blocks (definitely 460 B, indirectly 136 B, \
             possibly 256 B); 224 B still reachable, not shown"
        ),
        "{title}"
    );
    assert!(svg.contains("lose_blocks"), "lose_blocks not drawn");
    assert!(!svg.contains("keep_blocks"), "a still reachable site drawn");
}

on_both_paths!(
    check_after_main(),
    the_check_waits_for_the_last_thread,
    the_check_waits_for_the_last_thread_preload
);

/// samples/c/leak_after_main.c: main ends with pthread_exit and its worker leaks afterwards.
/// The process ends with the worker, and so does the check: checked at the main thread's exit,
/// it saw none of these blocks.
fn check_after_main(test: &str, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_c(p.dir.path(), "leak_after_main", Build::FramePointers);
    let report = profile_on(capture, p.dir.path(), &target, &[]);
    let valgrind = valgrind_classes(&target, &[]);
    let ours = classes(&report);
    // Definitely and indirectly lost: exactly valgrind's.
    assert_eq!(
        ours[..2],
        valgrind[..2],
        "{ours:?} against valgrind's {valgrind:?}"
    );
    assert_eq!(ours[0], ("definitely_lost".to_string(), 2, 300));
    assert_eq!(
        sites_of(&report, "lose_after_main"),
        owned(&[("definitely_lost", 1, 200), ("definitely_lost", 1, 100)])
    );
    assert_eq!(
        sites_of(&report, "keep_after_main"),
        owned(&[("still_reachable", 1, 64)])
    );
    // The worker's DTV, as valgrind has it: possibly lost (its pointer is inside the thread
    // descriptor). With the preload path it has one slot (16 bytes) more: the capture
    // library has thread-local storage of its own.
    let dtv_bytes = match capture {
        Capture::Uprobes => valgrind[2].2,
        Capture::Preload => valgrind[2].2 + 16,
    };
    assert_eq!(valgrind[2].1, 1, "{valgrind:?}");
    assert_eq!(
        sites_of(&report, "allocate_dtv"),
        owned(&[("possibly_lost", 1, dtv_bytes)])
    );
    assert_eq!(ours[2], ("possibly_lost".to_string(), 1, dtv_bytes));
    // Read through the worker: the main thread's memory is gone by then.
    let scan = &report["summary"]["leak_check"]["scan"];
    assert_eq!(scan["bytes_unreadable"], 0, "{scan}");
    assert_eq!(
        report["target"]["exit"]["code"], 0,
        "{:#}",
        report["target"]
    );
}

on_both_paths!(check_cpp(), cpp_containers, cpp_containers_preload);

/// C++ containers and strings (samples/cpp/leak_classes.cpp). valgrind runs with
/// --run-cxx-freeres=no: by default it frees libstdc++'s emergency exception pool at exit,
/// which the program itself never frees (memprof reports the program as it is).
fn check_cpp(test: &str, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_cpp(p.dir.path(), "leak_classes", Build::NoFramePointers);
    let report = profile_on(capture, p.dir.path(), &target, &[]);
    assert_eq!(
        classes(&report),
        valgrind_classes(&target, &["--run-cxx-freeres=no"])
    );
    assert_eq!(
        sites_of(&report, "lose_vector()"),
        owned(&[("definitely_lost", 1, 24), ("indirectly_lost", 1, 400)])
    );
    assert_eq!(
        sites_of(&report, "lose_string()"),
        owned(&[("definitely_lost", 1, 32), ("indirectly_lost", 1, 65)])
    );
    // new Widget[4] is held 8 bytes in: memcheck's newarray heuristic.
    assert_eq!(
        sites_of(&report, "keep_array()"),
        owned(&[("still_reachable", 1, 40)])
    );
    let kept = sites_of(&report, "keep_containers()");
    assert!(
        kept.iter().all(|(class, _, _)| class == "still_reachable"),
        "{kept:?}"
    );
    assert_eq!(
        kept.iter().map(|(_, _, bytes)| bytes).sum::<u64>(),
        48 + 2 * 72 + 41 + 51 + 24 + 32 + 61
    );
}

on_both_paths!(
    check_rust(),
    rust_box_leak_and_statics,
    rust_box_leak_and_statics_preload
);

/// `Box::leak`, `mem::forget` and a `static` (samples/src/bin/rust_leak_classes.rs).
fn check_rust(test: &str, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_rust_bin(p.dir.path(), "rust_leak_classes", Build::NoFramePointers);
    let report = profile_on(capture, p.dir.path(), &target, &[]);
    assert_eq!(classes(&report), valgrind_classes(&target, &[]));
    assert_eq!(
        sites_of(&report, "rust_leak_classes::leak_box"),
        owned(&[("definitely_lost", 1, 200)])
    );
    assert_eq!(
        sites_of(&report, "rust_leak_classes::forget_list"),
        owned(&[
            ("definitely_lost", 1, 24),
            ("indirectly_lost", 1, 64),
            ("indirectly_lost", 1, 64),
            ("indirectly_lost", 1, 64),
        ])
    );
    assert_eq!(
        sites_of(&report, "rust_leak_classes::keep"),
        owned(&[("still_reachable", 1, 300), ("still_reachable", 1, 96)])
    );
}

#[test]
fn no_leak_check_leaves_blocks_unclassified() {
    let Some(p) = privileged("no_leak_check_leaves_blocks_unclassified") else {
        return;
    };
    let target = compile_c(p.dir.path(), "leak_classes", Build::FramePointers);
    let output = p.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--no-leak-check", "--output"])
        .arg(&output)
        .arg("--")
        .arg(&target);
    let report = run_to_end(cmd).report(&output);
    assert!(report["summary"].get("leak_check").is_none());
    assert_eq!(report["summary"]["live_blocks"], 13);
    assert!(
        report["leaks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|site| site.get("reachability").is_none())
    );
}

#[test]
fn attach_classifies_the_windows_blocks_and_lets_the_process_go() {
    let Some(p) = privileged("attach_classifies_the_windows_blocks_and_lets_the_process_go") else {
        return;
    };
    let binary = compile_c(p.dir.path(), "leak_classes", Build::NoFramePointers);
    let mut target = Command::new(&binary)
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start leak_classes");
    let mut stdin = target.stdin.take().expect("piped stdin");
    let stdout = line_channel(target.stdout.take().expect("piped stdout"));
    wait_for_line(&stdout, "ready", "leak_classes");

    let output = p.dir.path().join("out");
    let mut memprof = Command::new(memprof())
        .arg("attach")
        .arg(target.id().to_string())
        .arg("--leak-check")
        .arg("--output")
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start memprof attach");
    let stderr = line_channel(memprof.stderr.take().expect("piped stderr"));
    wait_for_line(&stderr, "attached", "memprof attach");
    stdin.write_all(b"go\n").expect("write to leak_classes");
    wait_for_line(&stdout, "done", "leak_classes");
    kill(Pid::from_raw(memprof.id() as i32), Signal::SIGINT).expect("SIGINT memprof");
    let status = wait_deadline(&mut memprof, DEADLINE, "memprof attach");
    let rest: Vec<String> = stderr.try_iter().collect();
    assert!(status.success(), "memprof attach: {status}\n{rest:#?}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(output.join("report.json")).expect("report.json"),
    )
    .expect("JSON");
    assert_eq!(classes(&report), expected());
    assert_eq!(classes(&report), valgrind_classes(&binary, &[]));
    assert_eq!(sites(&report), expected_sites());
    let paused = report["summary"]["leak_check"]["scan"]["paused_secs"]
        .as_f64()
        .unwrap();
    assert!(paused > 0.0, "the pause is reported");

    // The process was let go untraced and goes on to its normal end.
    let status = std::fs::read_to_string(format!("/proc/{}/status", target.id())).unwrap();
    assert!(status.contains("TracerPid:\t0\n"), "{status}");
    drop(stdin);
    let status = wait_deadline(&mut target, DEADLINE, "leak_classes");
    assert!(status.success(), "leak_classes after the window: {status}");
}

/// leak_classes.c under every allocator (preloaded; the capture library forwards to it): the
/// allocator's own memory and state never make a block look reachable, and what is lost is
/// what glibc's run finds. jemalloc and memprof's allocator give the same split as glibc.
/// mimalloc and tcmalloc leave their free-list link in the first word of a block they hand
/// out, which the program never overwrites here: memcheck skips such never-written words,
/// memprof cannot tell them from the program's pointers, so one of lose_blocks' blocks then
/// seems to lead to the next (indirectly lost, not definitely): the lost total is the same.
#[test]
fn every_allocator_gives_the_same_lost_blocks() {
    let Some(p) = privileged("every_allocator_gives_the_same_lost_blocks") else {
        return;
    };
    let target = compile_c(p.dir.path(), "leak_classes", Build::NoFramePointers);
    for (name, library, brings_libstdcxx) in crate::preload::allocators() {
        let output = p.dir.path().join(name);
        let mut cmd = Command::new(memprof());
        cmd.args(["run", "--capture", "preload", "--output"])
            .arg(&output)
            .arg("--env")
            .arg(format!("LD_PRELOAD={}", library.display()))
            .arg("--")
            .arg(&target);
        let report = run_to_end(cmd).report(&output);
        let found = classes(&report);
        let lost: (u64, u64) = (found[0].1 + found[1].1, found[0].2 + found[1].2);
        let glibc = expected();
        // tcmalloc's start-up `new`s (preload::start_up_news): the 16-byte TCMallocGuard block
        // is still reachable, the 8-byte MallocExtension one is reported lost, as it is under
        // the probes.
        let (start_lost, start_reachable) = if name == "tcmalloc" {
            ((1, 8), (1, 16))
        } else {
            ((0, 0), (0, 0))
        };
        assert_eq!(
            crate::preload::start_up_news(name),
            (
                start_lost.0 + start_reachable.0,
                start_lost.1 + start_reachable.1
            )
        );
        let expected_lost = (
            glibc[0].1 + glibc[1].1 + start_lost.0,
            glibc[0].2 + glibc[1].2 + start_lost.1,
        );
        assert_eq!(lost, expected_lost, "{name}: {found:?}");
        assert_eq!(found[2], expected()[2], "{name}");
        let pool = if brings_libstdcxx {
            (1, crate::preload::LIBSTDCXX_POOL_BYTES)
        } else {
            (0, 0)
        };
        assert_eq!(
            (found[3].1, found[3].2),
            (
                3 + pool.0 + start_reachable.0,
                224 + pool.1 + start_reachable.1
            ),
            "{name}: {found:?}"
        );
        if matches!(name, "jemalloc" | "memprof") {
            assert_eq!(found[..2], expected()[..2], "{name}");
        }
    }
}

/// Another tracer holds the process (here a python3 that seized it with ptrace, as strace or
/// gdb would): the window's report is written without a leak check, says why, and the
/// process is left as it was, traced by the other tracer.
#[test]
fn attach_leak_check_of_a_process_another_tracer_holds_says_why() {
    let Some(p) = privileged("attach_leak_check_of_a_process_another_tracer_holds_says_why") else {
        return;
    };
    let binary = compile_c(p.dir.path(), "leak_classes", Build::NoFramePointers);
    // Killed when the test ends, the tracer first (dropped in reverse order).
    let mut target = KilledOnDrop(
        Command::new(&binary)
            .arg("wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start leak_classes"),
    );
    let stdout = line_channel(target.stdout.take().expect("piped stdout"));
    wait_for_line(&stdout, "ready", "leak_classes");
    let seize = format!(
        "import ctypes, sys, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         ok = libc.ptrace(0x4206, {}, None, None) == 0\n\
         print('seized' if ok else 'failed', flush=True)\n\
         time.sleep(600)\n",
        target.id()
    );
    let mut tracer = KilledOnDrop(
        Command::new("python3")
            .args(["-c", &seize])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3"),
    );
    let tracer_out = line_channel(tracer.stdout.take().expect("piped stdout"));
    wait_for_line(&tracer_out, "seized", "python3 tracer");

    let output = p.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    cmd.args([
        "attach",
        &target.id().to_string(),
        "--leak-check",
        "--duration",
        "1",
    ])
    .arg("--output")
    .arg(&output);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    let why = format!(
        "leak check not done: cannot stop process {} (is a debugger or strace attached?)",
        target.id()
    );
    assert!(finished.stderr.contains(&why), "{}", finished.stderr);
    let report = finished.report(&output);
    assert!(report["summary"].get("leak_check").is_none());
    assert_eq!(report["warnings"], serde_json::json!([why]));
    let status = std::fs::read_to_string(format!("/proc/{}/status", target.id())).unwrap();
    assert!(
        status.contains(&format!("TracerPid:\t{}\n", tracer.id())),
        "{status}"
    );
    let _ = tracer.kill();
    let _ = tracer.wait();
    let _ = target.kill();
    let _ = target.wait();
}
