//! A ring far too small for the target's allocation rate: `memprof run` holds the allocating
//! threads until the collector catches up instead of dropping events, so every figure stays
//! exact. (Without the holds, churn under a 1 MiB ring lost 143,649 of 1.6 M events in 4 s.)
use crate::report::{Name, assert_function, assert_nothing_lost, assert_num, assert_sites};
use crate::support::{
    Build, Capture, KilledOnDrop, compile_c, memprof, on_both_paths, privileged, run_to_end,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `memprof run --capture PATH --ring-mib 1 -- TARGET ARGS`; requires success and returns the
/// report. On the probe path the tracer holds a thread the probes signal; on the in-process
/// path the thread waits on the ring's futex: both are reported as held.
fn profile_with_tiny_ring(capture: Capture, dir: &Path, target: &Path, args: &[&str]) -> Value {
    let output = dir.join("out");
    let mut cmd = Command::new(memprof());
    cmd.args([
        "run",
        "--capture",
        capture.arg(),
        "--ring-mib",
        "1",
        "--output",
    ])
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

/// The report says the target was held (and, its figures being exact, warns of nothing).
fn assert_held(report: &Value) {
    let held = &report["target"]["held"];
    assert!(
        held["times"].as_u64().is_some_and(|n| n > 0) && held["secs"].as_f64().is_some(),
        "no hold was reported: {}",
        report["target"]
    );
    assert!(report["warnings"].is_null(), "{}", report["warnings"]);
}

on_both_paths!(
    full_ring_one_thread(),
    a_full_ring_holds_the_thread_instead_of_losing_events,
    a_full_ring_holds_the_thread_preload
);

/// One thread, and a new stack on every call (many_stacks.c: each block is allocated at the
/// bottom of its own 18-frame call chain), so that the collector, which unwinds and interns
/// each stack, falls behind on either path. (churn.c's one stack no longer did on the uprobes
/// path: its collector kept up with the traps.)
fn full_ring_one_thread(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "many_stacks", Build::FramePointers);
    let report = profile_with_tiny_ring(capture, env.dir.path(), &target, &["200000"]);
    assert_nothing_lost(&report);
    assert_held(&report);
    // many_stacks.c's expected figures for N = 200000: every block leaked.
    assert_function(&report, "malloc", 200_000, 7_200_000);
    assert_num(&report, "summary.frees", 0);
    assert_num(&report, "summary.live_blocks", 200_000);
    assert_num(&report, "summary.double_frees", 0);
    assert_num(&report, "summary.unknown_frees", 0);
    assert_eq!(report["target"]["exit"]["code"], 0);
}

on_both_paths!(
    full_ring_threads(),
    a_full_ring_holds_every_allocating_thread,
    a_full_ring_holds_every_allocating_thread_preload
);

fn full_ring_threads(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "threads", Build::NoFramePointers);
    // threads.c with 50000 pairs per thread: malloc 4 x 50001 calls of 32 bytes, frees
    // 4 x 50000, the 4 DTVs pthread_create callocs, 8 blocks live at exit. (The DTVs and the
    // allocator's own frees differ by path as in c_targets::check_threads.)
    let report = profile_with_tiny_ring(capture, env.dir.path(), &target, &["50000"]);
    assert_nothing_lost(&report);
    assert_held(&report);
    let (dtv, internal_frees) = match capture {
        Capture::Uprobes => (272, 4),
        Capture::Preload => (288, 0),
    };
    assert_function(&report, "malloc", 200_004, 200_004 * 32);
    assert_function(&report, "calloc", 4, 4 * dtv);
    assert_num(&report, "summary.frees", 200_000);
    assert_num(&report, "summary.live_blocks", 8);
    assert_num(&report, "summary.double_frees", 0);
    assert_num(&report, "summary.unknown_frees", 0);
    assert_num(&report, "summary.allocator_internal_frees", internal_frees);
    assert_sites(&report, "leaks", Name::Exact("thread_leak"), 4, 128);
}

/// Every thread of `pid`: (TracerPid, state letter) from /proc.
fn thread_states(pid: u32) -> Vec<(u32, char)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the target's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .map(|status| {
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_owned()
            };
            let tracer = field("TracerPid:").parse().expect("TracerPid");
            let state = field("State:").chars().next().expect("State");
            (tracer, state)
        })
        .collect()
}

/// Two threads of allocbench replacing blocks without pause, for far longer than a test, once
/// both have started; and its pid.
fn busy_target(dir: &Path) -> (KilledOnDrop, u32) {
    let target = compile_c(dir, "allocbench", Build::FramePointers);
    let busy = KilledOnDrop(
        Command::new(&target)
            .args(["mt", "100000000000"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = busy.id();
    while thread_states(pid).len() < 3 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (busy, pid)
}

/// `memprof attach PID --hold ARGS --output OUTPUT`.
fn attach_hold(pid: u32, output: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(memprof());
    cmd.arg("attach")
        .arg(pid.to_string())
        .arg("--hold")
        .args(args)
        .arg("--output")
        .arg(output);
    cmd
}

#[test]
fn attach_hold_loses_nothing_and_detaches_cleanly() {
    let Some(env) = privileged("attach_hold_loses_nothing_and_detaches_cleanly") else {
        return;
    };
    let (mut busy, pid) = busy_target(env.dir.path());
    let output = env.dir.path().join("out");
    let cmd = attach_hold(pid, &output, &["--ring-mib", "1", "--duration", "2"]);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    let report = finished.report(&output);
    assert_nothing_lost(&report);
    assert_held(&report);
    assert!(
        report["summary"]["allocations"].as_u64().unwrap() > 10_000,
        "{}",
        report["summary"]
    );
    // Detached: no thread traced or stopped, and the target still at work.
    let states = thread_states(pid);
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(
        states
            .iter()
            .all(|&(tracer, state)| tracer == 0 && state != 't' && state != 'T'),
        "{states:?}"
    );
    assert!(busy.try_wait().unwrap().is_none(), "the target died");
    busy.kill().unwrap();
    busy.wait().unwrap();
}

/// Waits up to 5 s for every thread of `pid` to be in a state `wanted` accepts.
fn wait_for_states(pid: u32, wanted: impl Fn(char) -> bool, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let states = thread_states(pid);
        if states.iter().all(|&(_, state)| wanted(state)) {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{what}: {states:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A job-control stop while memprof holds the threads stays a stop, and SIGCONT ends it.
#[test]
fn attach_hold_keeps_job_control_stops() {
    let Some(env) = privileged("attach_hold_keeps_job_control_stops") else {
        return;
    };
    let (mut busy, pid) = busy_target(env.dir.path());
    let output = env.dir.path().join("out");
    let cmd = attach_hold(pid, &output, &["--duration", "3"]);
    let profiler = std::thread::spawn(move || run_to_end(cmd));
    // Traced once memprof says so (TracerPid set on every thread).
    let start = std::time::Instant::now();
    while !thread_states(pid).iter().all(|&(tracer, _)| tracer != 0) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "never traced"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let target_pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(target_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Stopped: `t` (a traced thread in its group stop) or `T`.
    wait_for_states(pid, |state| state == 't' || state == 'T', "not stopped");
    std::thread::sleep(std::time::Duration::from_millis(300));
    wait_for_states(
        pid,
        |state| state == 't' || state == 'T',
        "did not stay stopped",
    );
    nix::sys::signal::kill(target_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_for_states(pid, |state| state != 't' && state != 'T', "not resumed");
    let finished = profiler.join().unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_nothing_lost(&finished.report(&output));
    let states = thread_states(pid);
    assert!(
        states
            .iter()
            .all(|&(tracer, state)| tracer == 0 && state != 't' && state != 'T'),
        "{states:?}"
    );
    busy.kill().unwrap();
    busy.wait().unwrap();
}

#[test]
fn attach_hold_refuses_a_process_another_tracer_holds() {
    let Some(env) = privileged("attach_hold_refuses_a_process_another_tracer_holds") else {
        return;
    };
    let target = compile_c(env.dir.path(), "churn", Build::FramePointers);
    // This test traces it, as a debugger would: the target stops at its exec.
    let mut traced = Command::new(&target);
    // SAFETY: ptrace(PTRACE_TRACEME) is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut traced, || {
            nix::sys::ptrace::traceme().map_err(std::io::Error::from)
        });
    }
    let mut traced = traced.arg("1000").spawn().unwrap();
    let pid = traced.id();
    let cmd = attach_hold(pid, &env.dir.path().join("out"), &["--duration", "1"]);
    let finished = run_to_end(cmd);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains(&format!("--hold: cannot trace process {pid}")),
        "{}",
        finished.stderr
    );
    // Still traced by this thread: memprof left the other tracer alone.
    let me = nix::unistd::gettid().as_raw() as u32;
    let states = thread_states(pid);
    assert!(states.iter().all(|&(tracer, _)| tracer == me), "{states:?}");
    traced.kill().unwrap();
    traced.wait().unwrap();
}

on_both_paths!(
    check_blocked_signals(),
    a_thread_blocking_every_signal_is_held_all_the_same,
    a_thread_blocking_every_signal_is_held_all_the_same_preload
);

/// A program that blocks every signal and reads SIGCHLD through a signalfd
/// (samples/c/blocked_signals.c), with a 1 MiB ring it fills many times over: nothing is lost,
/// and the program never reads a signal memprof sent.
fn check_blocked_signals(test: &str, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_c(p.dir.path(), "blocked_signals", Build::NoFramePointers);
    let output = p.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    cmd.args([
        "run",
        "--ring-mib",
        "1",
        "--capture",
        capture.arg(),
        "--output",
    ])
    .arg(&output)
    .arg("--")
    .arg(&target);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished.stdout.contains("signals read: 0"),
        "the program read a signal: {}",
        finished.stdout
    );
    let report = finished.report(&output);
    assert_nothing_lost(&report);
    assert_function(&report, "malloc", 1_000_000, 64_000_000);
    assert_num(&report, "summary.frees", 1_000_000);
    assert_num(&report, "summary.double_frees", 0);
    assert_num(&report, "summary.overwritten_blocks", 0);
    assert_sites(&report, "leaks", Name::Exact("churn"), 0, 0);
    // The ring did fill: the thread was held, not the events dropped.
    assert!(
        report["target"]["held"]["times"].as_u64().unwrap_or(0) > 0,
        "{}",
        report["target"]
    );
}
