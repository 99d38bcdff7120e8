//! Exit statuses, a program memprof was not written for, and every way to start it wrongly.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::report::num;
use crate::support::{
    Build, DEADLINE, Finished, compile_c, compile_noalloc, line_channel, memprof, memprof_run,
    privileged, run_to_end, wait_deadline, wait_for_line,
};

#[test]
fn exit_status_is_the_targets() {
    let Some(env) = privileged("exit_status_is_the_targets") else {
        return;
    };
    let target = compile_c(env.dir.path(), "exit_status", Build::FramePointers);
    let output = env.dir.path().join("out");
    let finished = memprof_run(&output, &target, &["3"]);
    assert_eq!(
        finished.status.code(),
        Some(3),
        "memprof must exit with its target's status; stderr:\n{}",
        finished.stderr
    );
    // The report is still written, and records the exit.
    let report = finished.report(&output);
    assert_eq!(
        report["target"]["exit"]["code"], 3,
        "target: {}",
        report["target"]
    );
    // The command as given, and the file it ran.
    assert_eq!(
        report["target"]["command"],
        serde_json::json!([target.to_str().unwrap(), "3"])
    );
    assert_eq!(
        report["target"]["executable"],
        std::fs::canonicalize(&target).unwrap().to_str().unwrap()
    );
}

#[test]
fn third_party_python() {
    let Some(env) = privileged("third_party_python") else {
        return;
    };
    // The distribution's interpreter, not a shim script in front of it.
    let python = Path::new("/usr/bin/python3");
    assert!(python.exists(), "this test needs /usr/bin/python3");
    let output = env.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    cmd.arg("run")
        .arg("--output")
        .arg(&output)
        .arg("--")
        .arg(python)
        .args(["-c", "print(sum(range(10)))"]);
    let finished = run_to_end(cmd);
    assert!(
        finished.status.success(),
        "memprof run python3: {}\nstderr:\n{}",
        finished.status,
        finished.stderr
    );
    // The target's output passes through untouched: the profiler writes to stderr and files.
    assert_eq!(finished.stdout, "45\n");
    let report = finished.report(&output);
    let allocations = num(&report, "summary.allocations");
    // CPython allocates thousands of blocks just to start.
    assert!(
        allocations > 1000,
        "python3 made only {allocations} allocations"
    );
    // Only frees of blocks seen allocated are counted as frees.
    let frees = num(&report, "summary.frees");
    let unknown = num(&report, "summary.unknown_frees");
    assert!(
        frees <= allocations + unknown,
        "frees {frees} > allocations {allocations} + unknown frees {unknown}"
    );
    assert!(
        frees <= allocations,
        "frees {frees} > allocations {allocations}"
    );
}

/// A refusal: non-zero status, one line on stderr that contains every NEEDLES entry (any one
/// of the alternatives separated by '|', case-insensitive), and no panic.
fn assert_refused(finished: &Finished, what: &str, needles: &[&str]) {
    assert!(
        !finished.status.success(),
        "{what}: memprof succeeded; stderr:\n{}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("panicked"),
        "{what}: memprof panicked:\n{}",
        finished.stderr
    );
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr, got:\n{}",
        finished.stderr
    );
    let line = lines[0].to_lowercase();
    for needle in needles {
        assert!(
            needle
                .split('|')
                .any(|alt| line.contains(&alt.to_lowercase())),
            "{what}: the error line does not mention {needle:?}: {}",
            lines[0]
        );
    }
}

fn memprof_attach(pid: &str, output: &Path) -> Finished {
    let mut cmd = Command::new(memprof());
    cmd.args(["attach", pid, "--output"]).arg(output);
    run_to_end(cmd)
}

#[test]
fn attach_to_missing_pid() {
    let Some(env) = privileged("attach_to_missing_pid") else {
        return;
    };
    // pid_max can exceed 999999 (4194304 with systemd), so make sure the pid is free.
    assert!(
        !Path::new("/proc/999999").exists(),
        "pid 999999 exists here; the test needs it free"
    );
    let finished = memprof_attach("999999", &env.dir.path().join("out"));
    assert_refused(&finished, "attach 999999", &["999999"]);
}

#[test]
fn attach_to_kernel_thread() {
    let Some(env) = privileged("attach_to_kernel_thread") else {
        return;
    };
    // pid 2 is kthreadd: no user memory, no libc.
    let finished = memprof_attach("2", &env.dir.path().join("out"));
    assert_refused(&finished, "attach 2", &["kernel"]);
    assert_eq!(
        finished.stderr,
        "memprof: error: process 2 is a kernel thread: there is no user-space program to profile\n"
    );
}

#[test]
fn attach_with_zero_duration_is_refused() {
    let Some(env) = privileged("attach_with_zero_duration_is_refused") else {
        return;
    };
    // A live target: a zero window must be refused, not recorded.
    let mut target = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    let output = env.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    cmd.args([
        "attach",
        &target.id().to_string(),
        "--duration",
        "0",
        "--output",
    ])
    .arg(&output);
    let finished = run_to_end(cmd);
    let _ = target.kill();
    let _ = target.wait();
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert_eq!(
        finished.stderr,
        "memprof: error: --duration must be a positive number of seconds, not 0\n"
    );
    assert!(!output.exists(), "nothing may be written");
}

/// Waits until the thread group leader PID is a zombie (state Z).
fn wait_for_zombie_leader(pid: u32) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit_once(") ").unwrap().1.chars().next().unwrap();
        if state == 'Z' {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} never became a zombie: {stat}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn attach_to_zombie() {
    let Some(env) = privileged("attach_to_zombie") else {
        return;
    };
    // Exited, not yet reaped: a zombie until the wait below.
    let mut child = Command::new("true").spawn().expect("start true");
    let pid = child.id();
    wait_for_zombie_leader(pid);
    let finished = memprof_attach(&pid.to_string(), &env.dir.path().join("out"));
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert_eq!(
        finished.stderr,
        format!("memprof: error: process {pid} has exited (zombie)\n")
    );
}

#[test]
fn attach_to_process_whose_main_thread_exited() {
    let Some(env) = privileged("attach_to_process_whose_main_thread_exited") else {
        return;
    };
    let target = compile_c(env.dir.path(), "main_exit", Build::FramePointers);
    let mut child = Command::new(&target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start main_exit");
    let stdout = line_channel(child.stdout.take().unwrap());
    wait_for_line(&stdout, "ready", "main_exit");
    let pid = child.id();
    wait_for_zombie_leader(pid);
    let finished = memprof_attach(&pid.to_string(), &env.dir.path().join("out"));
    // Still running in its other thread; EOF ends it.
    assert!(child.try_wait().unwrap().is_none(), "main_exit ended early");
    drop(child.stdin.take());
    let status = wait_deadline(&mut child, DEADLINE, "main_exit after EOF");
    assert_eq!(status.code(), Some(0));
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert_eq!(
        finished.stderr,
        format!(
            "memprof: error: the main thread of process {pid} has exited (its other threads \
             still run): memprof can only attach to a process whose main thread is alive\n"
        )
    );
}

#[test]
fn run_missing_program() {
    let Some(env) = privileged("run_missing_program") else {
        return;
    };
    let finished = memprof_run(&env.dir.path().join("out"), Path::new("/nonexistent"), &[]);
    assert_refused(&finished, "run /nonexistent", &["/nonexistent"]);
}

#[test]
fn run_program_without_allocator() {
    let Some(env) = privileged("run_program_without_allocator") else {
        return;
    };
    let target = compile_noalloc(env.dir.path());
    let finished = memprof_run(&env.dir.path().join("out"), &target, &[]);
    assert_refused(
        &finished,
        "run noalloc",
        &["noalloc", "malloc|allocator|allocation"],
    );
}

#[test]
fn unprivileged_user_is_refused() {
    let Some(env) = privileged("unprivileged_user_is_refused") else {
        return;
    };
    // nobody must be able to reach and execute the copy, and to write the output directory,
    // so that missing privileges are the only problem.
    let dir = env.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let copy = dir.join("memprof");
    std::fs::copy(memprof(), &copy).expect("copy memprof");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod copy");
    let output = dir.join("out");
    std::fs::create_dir(&output).expect("create output dir");
    std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o777))
        .expect("chmod output");

    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .arg("run")
        .arg("--output")
        .arg(&output)
        .args(["--", "/bin/true"]);
    let finished = run_to_end(cmd);
    assert_refused(
        &finished,
        "run as nobody",
        &["root|privilege|permission|cap_"],
    );
}
