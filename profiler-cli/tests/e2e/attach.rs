//! `memprof attach` on samples/c/waiter.c, which allocates only when told to on stdin.
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::report::{
    Name, assert_function, assert_nothing_lost, assert_num, assert_section_total, assert_sites,
};
use crate::support::{
    Build, DEADLINE, KilledOnDrop, compile_c, line_channel, memprof, privileged, rest_of,
    wait_deadline, wait_for_line,
};

/// The waiter, started and past its "ready" line: it has allocated nothing yet.
pub(crate) struct Waiter {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
}

impl Waiter {
    pub(crate) fn start(dir: &std::path::Path, build: Build) -> Waiter {
        Self::start_under(dir, build, &[])
    }

    /// Starts the waiter through `wrapper` (a command that execs its arguments).
    fn start_under(dir: &std::path::Path, build: Build, wrapper: &[&str]) -> Waiter {
        Self::start_with(dir, build, |binary| match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        })
    }

    /// Starts the command `command` makes of the waiter's binary.
    fn start_with(
        dir: &std::path::Path,
        build: Build,
        command: impl FnOnce(&std::path::Path) -> Command,
    ) -> Waiter {
        let binary = compile_c(dir, "waiter", build);
        let mut child = command(&binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start waiter");
        let stdin = child.stdin.take();
        let stdout = line_channel(child.stdout.take().expect("piped stdout"));
        wait_for_line(&stdout, "ready", "waiter");
        Waiter {
            child,
            stdin,
            stdout,
        }
    }

    /// Tells the waiter to allocate, and waits until it has.
    pub(crate) fn allocate(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(b"go\n").expect("write to waiter");
        stdin.flush().expect("flush waiter stdin");
        wait_for_line(&self.stdout, "done", "waiter");
    }

    /// The waiter must have outlived the profiler, and exits 0 once its stdin closes.
    fn finish(mut self) {
        assert!(
            self.child.try_wait().expect("poll waiter").is_none(),
            "the waiter died while or after memprof was attached"
        );
        drop(self.stdin.take());
        let status = wait_deadline(&mut self.child, DEADLINE, "waiter after EOF");
        assert_eq!(status.code(), Some(0), "waiter exit status: {status}");
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Only on a failed test: do not leave the target behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `memprof attach PID --output OUT [EXTRA...]`, its stderr piped.
fn spawn_attach(pid: u32, output: &std::path::Path, extra: &[&str]) -> Child {
    spawn_attach_with(pid, output, extra, &[])
}

/// [`spawn_attach`] with memprof's environment variables `vars` set.
fn spawn_attach_with(
    pid: u32,
    output: &std::path::Path,
    extra: &[&str],
    vars: &[(&str, &str)],
) -> Child {
    Command::new(memprof())
        .arg("attach")
        .arg(pid.to_string())
        .arg("--output")
        .arg(output)
        .args(extra)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start memprof attach")
}

/// Starts `memprof attach PID --output OUT [EXTRA...]` and waits for its "attached" line.
fn attach(pid: u32, output: &std::path::Path, extra: &[&str]) -> (Child, Receiver<String>) {
    attach_with(pid, output, extra, &[])
}

/// [`attach`] with memprof's environment variables `vars` set.
fn attach_with(
    pid: u32,
    output: &std::path::Path,
    extra: &[&str],
    vars: &[(&str, &str)],
) -> (Child, Receiver<String>) {
    let mut child = spawn_attach_with(pid, output, extra, vars);
    let stderr = line_channel(child.stderr.take().expect("piped stderr"));
    wait_for_line(&stderr, "attached", "memprof attach");
    (child, stderr)
}

/// What the waiter does between "go" and "done", and nothing else.
pub(crate) fn assert_waiter_window(report: &Value) {
    assert_nothing_lost(report);
    assert_eq!(report["mode"], "attach");
    // 5 x 4096 (attach_leak) + 100 x 128 (attach_churn).
    assert_function(report, "malloc", 105, 5 * 4096 + 100 * 128);
    assert_num(report, "summary.frees", 100);
    // Nothing allocated before the attach is freed inside the window.
    assert_num(report, "summary.unknown_frees", 0);
    assert_num(report, "summary.live_blocks", 5);
    assert_sites(report, "leaks", Name::Exact("attach_leak"), 5, 20480);
    assert_sites(report, "leaks", Name::Exact("attach_churn"), 0, 0);
    assert_section_total(report, "leaks", 5, 20480);
}

fn attach_until_sigint(test: &str, build: Build) {
    let Some(env) = privileged(test) else { return };
    let mut waiter = Waiter::start(env.dir.path(), build);
    let output = env.dir.path().join("out");
    let (mut profiler, stderr) = attach(waiter.child.id(), &output, &[]);
    waiter.allocate();

    let pid = Pid::from_raw(i32::try_from(profiler.id()).expect("pid fits i32"));
    kill(pid, Signal::SIGINT).expect("SIGINT memprof");
    let status = wait_deadline(&mut profiler, DEADLINE, "memprof attach after SIGINT");
    assert!(
        status.success(),
        "memprof attach after SIGINT: {status}; stderr:\n{}",
        rest_of(&stderr)
    );

    let report = read_report(&output);
    assert_waiter_window(&report);
    waiter.finish();
}

#[test]
fn attach_sigint_fp() {
    attach_until_sigint("attach_sigint_fp", Build::FramePointers);
}

#[test]
fn attach_sigint_nofp() {
    attach_until_sigint("attach_sigint_nofp", Build::NoFramePointers);
}

#[test]
fn attach_duration_expires() {
    let Some(env) = privileged("attach_duration_expires") else {
        return;
    };
    let mut waiter = Waiter::start(env.dir.path(), Build::FramePointers);
    let output = env.dir.path().join("out");
    // Long enough for the waiter's few hundred calls after "attached", short for a test.
    let (mut profiler, stderr) = attach(waiter.child.id(), &output, &["--duration", "3"]);
    waiter.allocate();
    // It detaches on its own: no signal.
    let status = wait_deadline(
        &mut profiler,
        Duration::from_secs(60),
        "memprof attach --duration 3",
    );
    assert!(
        status.success(),
        "memprof attach --duration 3: {status}; stderr:\n{}",
        rest_of(&stderr)
    );

    let report = read_report(&output);
    assert_waiter_window(&report);
    waiter.finish();
}

/// The target exits inside the window: memprof ends with it and says so once, never that it
/// is still running.
#[test]
fn attach_until_the_target_exits() {
    let Some(env) = privileged("attach_until_the_target_exits") else {
        return;
    };
    let mut waiter = Waiter::start(env.dir.path(), Build::FramePointers);
    let pid = waiter.child.id();
    let output = env.dir.path().join("out");
    let (mut profiler, stderr) = attach(pid, &output, &[]);
    waiter.allocate();
    // EOF: the waiter exits 0 (it stays a zombie, unreaped, until the end of the test).
    drop(waiter.stdin.take());
    let status = wait_deadline(
        &mut profiler,
        DEADLINE,
        "memprof attach as its target exits",
    );
    let stderr = rest_of(&stderr);
    assert!(
        status.success(),
        "memprof attach: {status}; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.contains(&format!("memprof: process {pid} exited").as_str()),
        "{stderr}"
    );
    let ending = lines
        .iter()
        .find(|line| line.starts_with("target "))
        .unwrap_or_else(|| panic!("no target line in\n{stderr}"));
    assert!(
        ending.starts_with("target exited (exit status unknown), recorded "),
        "{stderr}"
    );
    assert!(!stderr.contains("still running"), "{stderr}");
    assert!(!stderr.contains("at detach"), "{stderr}");
    assert!(stderr.contains("\n  live at exit "), "{stderr}");
    assert!(
        stderr.contains("Leaks (allocated while attached, live at exit): "),
        "{stderr}"
    );
    let report = read_report(&output);
    assert_eq!(
        report["target"]["exit"],
        serde_json::json!({"code": null, "signal": null})
    );
    assert_waiter_window(&report);
    let exited = wait_deadline(&mut waiter.child, DEADLINE, "waiter after EOF");
    assert_eq!(exited.code(), Some(0));
}

/// A target started through a symlink, with another argv[0] and an empty argument: the report
/// keeps its command line as /proc/PID/cmdline has it and names the executable it runs.
#[test]
fn attach_names_the_command_line_and_the_real_executable() {
    let Some(env) = privileged("attach_names_the_command_line_and_the_real_executable") else {
        return;
    };
    let link = env.dir.path().join("link-to-waiter");
    let mut waiter = Waiter::start_with(env.dir.path(), Build::FramePointers, |binary| {
        std::os::unix::fs::symlink(binary, &link).unwrap();
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg("exec -a fakename \"$0\" '' last")
            .arg(&link);
        command
    });
    let pid = waiter.child.id();
    let binary = std::fs::canonicalize(&link).unwrap();
    let binary = binary.to_str().unwrap();
    let output = env.dir.path().join("out");
    let (mut profiler, stderr) = attach(pid, &output, &[]);
    waiter.allocate();
    let profiler_pid = Pid::from_raw(i32::try_from(profiler.id()).expect("pid fits i32"));
    kill(profiler_pid, Signal::SIGINT).expect("SIGINT memprof");
    let status = wait_deadline(&mut profiler, DEADLINE, "memprof attach after SIGINT");
    let stderr = rest_of(&stderr);
    assert!(
        status.success(),
        "memprof attach: {status}; stderr:\n{stderr}"
    );
    let report = read_report(&output);
    assert_eq!(
        report["target"]["command"],
        serde_json::json!(["fakename", "", "last"])
    );
    assert_eq!(report["target"]["executable"], binary);
    assert!(
        stderr.contains(&format!(
            "pid {pid}: fakename  last\nexecutable: {binary}\n"
        )),
        "{stderr}"
    );
    assert_waiter_window(&report);
    waiter.finish();
}

/// In its own mount namespace a target can put anything behind the paths its maps list: here
/// its libc path is a FIFO (reading it would hang memprof) and its executable's path another
/// program (probing it would count nothing). memprof must read and probe the files the process
/// really maps, and count its calls exactly.
#[test]
fn attach_reads_the_files_mapped_not_what_the_targets_namespace_shows() {
    let Some(env) = privileged("attach_reads_the_files_mapped") else {
        return;
    };
    let mut waiter = Waiter::start_under(
        env.dir.path(),
        Build::NoFramePointers,
        &["unshare", "--mount", "--propagation", "private", "--"],
    );
    let pid = waiter.child.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let libc = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .expect("the waiter maps libc")
        .to_owned();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let fifo = env.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
    let bind = |source: &std::path::Path, target: &std::path::Path| {
        let status = Command::new("nsenter")
            .args([
                "--target",
                &pid.to_string(),
                "--mount",
                "--",
                "mount",
                "--bind",
            ])
            .arg(source)
            .arg(target)
            .status()
            .expect("run nsenter");
        assert!(
            status.success(),
            "bind {source:?} over {target:?}: {status}"
        );
    };
    // The FIFO last: a program started in that namespace afterwards (mount) would hang on it.
    bind(std::path::Path::new("/usr/bin/true"), &exe);
    bind(&fifo, std::path::Path::new(&libc));

    let output = env.dir.path().join("out");
    let (mut profiler, stderr) = attach(pid, &output, &[]);
    waiter.allocate();
    let profiler_pid = Pid::from_raw(i32::try_from(profiler.id()).expect("pid fits i32"));
    kill(profiler_pid, Signal::SIGINT).expect("SIGINT memprof");
    let status = wait_deadline(&mut profiler, DEADLINE, "memprof attach after SIGINT");
    assert!(
        status.success(),
        "memprof attach: {status}; stderr:\n{}",
        rest_of(&stderr)
    );
    let report = read_report(&output);
    assert_waiter_window(&report);
    let malloc_probe = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|probe| probe["function"] == "malloc")
        .expect("a malloc probe");
    assert_eq!(malloc_probe["module"], libc.as_str());
    waiter.finish();
}

/// `memprof attach PID 2>&1 | head -1`: stderr's reader is gone once it has the "attached"
/// line. memprof's later lines are lost, not its session: it panicked on the "process exited"
/// line (exit 101) before writing the report.
#[test]
fn attach_whose_stderr_reader_is_gone_still_writes_its_report() {
    use std::io::{BufRead, BufReader};
    let Some(env) = privileged("attach_whose_stderr_reader_is_gone_still_writes_its_report") else {
        return;
    };
    let mut waiter = Waiter::start(env.dir.path(), Build::FramePointers);
    let output = env.dir.path().join("out");
    let mut profiler = spawn_attach(waiter.child.id(), &output, &[]);
    let mut stderr = BufReader::new(profiler.stderr.take().expect("piped stderr"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("read memprof's stderr");
    assert!(first.contains("attached"), "{first}");
    drop(stderr);
    waiter.allocate();
    drop(waiter.stdin.take());
    let status = wait_deadline(
        &mut profiler,
        DEADLINE,
        "memprof attach as its target exits",
    );
    assert!(status.success(), "memprof attach: {status}");
    assert_waiter_window(&read_report(&output));
}

fn read_report(output: &std::path::Path) -> Value {
    let path = output.join("report.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no {} after detach: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report.json is not JSON: {e}"))
}

/// An attach window opens and closes at one instant for every probe: a program that frees
/// each block right after allocating it shows at most the one block allocated before the
/// window and freed in it (an unknown free at its start) and the one allocated in it and freed
/// after (live at its end). Probes attached and detached one by one made thousands of unknown
/// frees at the end of a window, and dozens of false live blocks.
#[test]
fn an_attach_window_pairs_its_first_and_last_calls() {
    let Some(env) = privileged("an_attach_window_pairs_its_first_and_last_calls") else {
        return;
    };
    let target = compile_c(env.dir.path(), "churn", Build::FramePointers);
    let churn = KilledOnDrop(
        Command::new(&target)
            .arg("100000000000")
            .stdout(Stdio::null())
            .spawn()
            .expect("start churn"),
    );
    let output = env.dir.path().join("out");
    let finished = crate::support::run_to_end({
        let mut cmd = Command::new(memprof());
        cmd.arg("attach")
            .arg(churn.0.id().to_string())
            .args(["--duration", "1", "--output"])
            .arg(&output);
        cmd
    });
    drop(churn);
    assert!(finished.status.success(), "{finished:?}");
    let report = read_report(&output);
    assert_nothing_lost(&report);
    let allocations = crate::report::num(&report, "summary.allocations");
    let frees = crate::report::num(&report, "summary.frees");
    assert!(
        allocations > 10_000,
        "{allocations} allocations in a second"
    );
    assert!(
        crate::report::num(&report, "summary.unknown_frees") <= 1,
        "{}",
        report["summary"]
    );
    assert!(
        allocations - frees <= 1,
        "{allocations} allocations, {frees} frees"
    );
    assert_num(&report, "summary.double_frees", 0);
}

/// A target that writes events faster than memprof reads them (both on one CPU, memprof's
/// build unoptimised) keeps the ring from ever being empty: the window still ends on time and
/// SIGTERM is still heard. memprof once stayed in one drain, deaf to both, for good.
#[test]
fn a_window_ends_while_the_target_outruns_the_collector() {
    let Some(env) = privileged("a_window_ends_while_the_target_outruns_the_collector") else {
        return;
    };
    let target = compile_c(env.dir.path(), "churn", Build::FramePointers);
    let churn = KilledOnDrop(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(&target)
            .arg("100000000000")
            .stdout(Stdio::null())
            .spawn()
            .expect("start churn under taskset"),
    );
    let churn_pid = churn.0.id();
    // taskset execs churn: attach to churn, not to taskset before its exec.
    let exe = format!("/proc/{churn_pid}/exe");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_link(&exe).ok().as_deref() != Some(target.as_path()) {
        assert!(
            std::time::Instant::now() < deadline,
            "taskset did not exec churn"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = env.dir.path().join("out");
    let finished = crate::support::run_to_end({
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"])
            .arg(memprof())
            .arg("attach")
            .arg(churn_pid.to_string())
            .args(["--duration", "1", "--output"])
            .arg(&output);
        cmd
    });
    drop(churn);
    assert!(finished.status.success(), "{finished:?}");
    let report = read_report(&output);
    assert!(
        crate::report::num(&report, "summary.allocations") > 10_000,
        "{}",
        report["summary"]
    );
}

/// `attach --hold` of a program taking 5,000 signals a second (samples/c/signal_storm.c):
/// every signal stops its thread in memprof's tracer on the way, which must let it go at once.
/// The program does its 2,000 allocations (0.2 s of sleeps) well within a minute, and all of
/// them are seen; a tracer that noticed each stop only at its next 1 ms poll froze it to ~18
/// allocations a second (about two minutes for these).
#[test]
fn attach_hold_does_not_freeze_a_target_taking_many_signals() {
    let Some(env) = privileged("attach_hold_does_not_freeze_a_target_taking_many_signals") else {
        return;
    };
    let binary = compile_c(env.dir.path(), "signal_storm", Build::NoFramePointers);
    let mut target = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start signal_storm");
    let mut stdin = target.stdin.take().expect("piped stdin");
    let stdout = line_channel(target.stdout.take().expect("piped stdout"));
    wait_for_line(&stdout, "ready", "signal_storm");
    let output = env.dir.path().join("out");
    let (mut memprof, stderr) = attach(target.id(), &output, &["--hold"]);
    stdin.write_all(b"go\n").expect("write to signal_storm");
    let started = std::time::Instant::now();
    let done = stdout.recv_timeout(Duration::from_secs(60));
    let took = started.elapsed();
    kill(Pid::from_raw(memprof.id() as i32), Signal::SIGINT).expect("SIGINT memprof");
    let status = wait_deadline(&mut memprof, DEADLINE, "memprof attach --hold");
    let rest: Vec<String> = stderr.try_iter().collect();
    assert!(status.success(), "memprof: {status}\n{rest:#?}");
    assert_eq!(
        done.as_deref(),
        Ok("done"),
        "signal_storm did not finish its 2,000 allocations within {took:?}"
    );
    let report = read_report(&output);
    assert_nothing_lost(&report);
    assert_sites(&report, "leaks", Name::Exact("churn_once"), 0, 0);
    let allocations: u64 = crate::report::sites_with(&report, "sites", Name::Exact("churn_once"))
        .iter()
        .map(|site| site["allocations"].as_u64().unwrap())
        .sum();
    assert_eq!(allocations, 2000);
    drop(stdin);
    let status = wait_deadline(&mut target, DEADLINE, "signal_storm");
    assert!(status.success(), "signal_storm: {status}");
}

/// Plain `attach` drains at idle priority (the target comes first), `attach --hold`, whose
/// target waits for memprof, at normal priority: `MEMPROF_TIMINGS=1` says how many drains ran
/// idle. Either way the window is whole.
#[test]
fn an_attach_window_drains_at_idle_priority_unless_it_holds() {
    let Some(env) = privileged("an_attach_window_drains_at_idle_priority_unless_it_holds") else {
        return;
    };
    for extra in [&[][..], &["--hold"][..]] {
        let mut waiter = Waiter::start(env.dir.path(), Build::FramePointers);
        let output = env.dir.path().join(format!("out{}", extra.len()));
        let vars = [("MEMPROF_TIMINGS", "1")];
        let (mut profiler, stderr) = attach_with(waiter.child.id(), &output, extra, &vars);
        waiter.allocate();
        // A few drain ticks (10 ms apart) after the waiter's calls.
        std::thread::sleep(Duration::from_millis(200));
        let pid = Pid::from_raw(i32::try_from(profiler.id()).expect("pid fits i32"));
        kill(pid, Signal::SIGINT).expect("SIGINT memprof");
        let status = wait_deadline(&mut profiler, DEADLINE, "memprof attach after SIGINT");
        let printed = rest_of(&stderr);
        assert!(status.success(), "{status}; stderr:\n{printed}");
        assert_waiter_window(&read_report(&output));
        // "collector: I drains at idle priority, R raised starving, N at normal ...": a
        // drain raised on a busy machine went to idle priority too.
        let lowered = printed
            .lines()
            .find_map(|line| line.strip_prefix("collector: "))
            .map(|rest| {
                let numbers: Vec<u64> = rest
                    .split(' ')
                    .filter_map(|word| word.parse().ok())
                    .collect();
                numbers[0] + numbers[1]
            });
        match extra {
            [] => assert!(
                lowered.is_some_and(|drains| drains > 0),
                "plain attach drains at idle priority:\n{printed}"
            ),
            _ => assert_eq!(
                lowered, None,
                "--hold drains at normal priority:\n{printed}"
            ),
        }
        waiter.finish();
    }
}
