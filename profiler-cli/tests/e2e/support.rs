//! Building targets, running memprof with a deadline, and the root check.
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Longest a single memprof invocation may take before the test fails (and kills it).
pub const DEADLINE: Duration = Duration::from_secs(120);

/// One profiled run at a time: concurrent runs compete for 2 CPUs and for the ring, and a lost
/// event would make the exact figures wrong for a reason unrelated to the test.
static SERIAL: Mutex<()> = Mutex::new(());

/// What a privileged test holds while it runs; `None` means "skip, as asked".
pub struct Privileged {
    _serial: MutexGuard<'static, ()>,
    pub dir: TempDir,
}

/// Checks for root and serialises the test. Panics without root unless
/// MEMPROF_SKIP_PRIVILEGED=1, so that a CI misconfiguration can never pass silently.
pub fn privileged(test: &str) -> Option<Privileged> {
    // The owner of /proc/self is this process's effective uid.
    let euid = std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid();
    if euid != 0 {
        if std::env::var_os("MEMPROF_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
            eprintln!(
                "{test}: skipped: needs root for eBPF and uprobes (euid {euid}) and \
                 MEMPROF_SKIP_PRIVILEGED=1 is set"
            );
            return None;
        }
        panic!(
            "{test}: the end-to-end tests need root (eBPF programs and uprobes); running as \
             euid {euid}. Run them as root, or set MEMPROF_SKIP_PRIVILEGED=1 to skip them."
        );
    }
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::Builder::new()
        .prefix("memprof-e2e-")
        .tempdir()
        .expect("create temp dir");
    Some(Privileged {
        _serial: serial,
        dir,
    })
}

pub fn memprof() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_memprof"))
}

pub fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

/// How a target is compiled: where the stack walk gets its frames from matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    FramePointers,
    NoFramePointers,
}

impl Build {
    fn suffix(self) -> &'static str {
        match self {
            Build::FramePointers => "fp",
            Build::NoFramePointers => "nofp",
        }
    }
}

/// Compiles samples/c/NAME.c into DIR as the samples' headers say (-fno-builtin keeps every
/// call the source makes).
pub fn compile_c(dir: &Path, name: &str, build: Build) -> PathBuf {
    let source = samples_dir().join("c").join(format!("{name}.c"));
    let output = dir.join(format!("{name}.{}", build.suffix()));
    let frame_flag = match build {
        Build::FramePointers => "-fno-omit-frame-pointer",
        Build::NoFramePointers => "-fomit-frame-pointer",
    };
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-g", "-fno-builtin", "-pthread", frame_flag, "-o"])
        .arg(&output)
        .arg(&source);
    run_compiler(gcc, &source);
    output
}

/// samples/c/NAME.c linked statically (its allocator inside the program).
pub fn compile_c_static(dir: &Path, name: &str) -> PathBuf {
    let source = samples_dir().join("c").join(format!("{name}.c"));
    let output = dir.join(format!("{name}.static"));
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-g", "-fno-builtin", "-static", "-o"])
        .arg(&output)
        .arg(&source);
    run_compiler(gcc, &source);
    output
}

/// The static, libc-free noalloc target.
pub fn compile_noalloc(dir: &Path) -> PathBuf {
    let source = samples_dir().join("c/noalloc.c");
    let output = dir.join("noalloc");
    let mut gcc = Command::new("gcc");
    gcc.args(["-static", "-nostdlib", "-nostartfiles", "-O2", "-o"])
        .arg(&output)
        .arg(&source);
    run_compiler(gcc, &source);
    output
}

/// samples/src/bin/rust_leaks.rs, compiled directly with rustc so that the test controls
/// frame pointers and does not need a second cargo build.
pub fn compile_rust(dir: &Path, build: Build) -> PathBuf {
    let source = samples_dir().join("src/bin/rust_leaks.rs");
    let output = dir.join(format!("rust_leaks.{}", build.suffix()));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition", "2024", "-C", "opt-level=2", "-g"]);
    if build == Build::FramePointers {
        cmd.args(["-C", "force-frame-pointers=yes"]);
    }
    cmd.arg("-o").arg(&output).arg(&source);
    run_compiler(cmd, &source);
    output
}

fn run_compiler(mut cmd: Command, source: &Path) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start compiler {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "compiling {} failed ({}):\n{}",
        source.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A finished memprof invocation.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The rest of the first line of standard output that starts with `label` (what the
    /// target printed, passed through memprof); panics with the output when there is none.
    pub fn printed(&self, label: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line in the output:\n{}", self.stdout))
    }

    /// The report memprof wrote; panics with memprof's stderr when there is none.
    pub fn report(&self, output: &Path) -> Value {
        let path = output.join("report.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "no {} ({e}); memprof exited {} with stderr:\n{}",
                path.display(),
                self.status,
                self.stderr
            )
        });
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", path.display()))
    }
}

/// Runs a command to completion with piped output, killing it after DEADLINE.
pub fn run_to_end(mut cmd: Command) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let Some(status) = wait_until(&mut child, DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{cmd:?} did not finish within {DEADLINE:?}; killed it. stderr:\n{}",
            stderr.join().expect("stderr reader")
        );
    };
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// How `memprof run` captures calls (`--capture`): the tests of a deterministic target run
/// on both paths and hold them to the same figures, except where a test says why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// eBPF uprobes on the allocator (the default).
    Uprobes,
    /// The in-process library preloaded into the target.
    Preload,
}

impl Capture {
    pub fn arg(self) -> &'static str {
        match self {
            Capture::Uprobes => "uprobes",
            Capture::Preload => "preload",
        }
    }
}

/// One test per capture path: `$check(test name, args..., path)`, named `$uprobes` and
/// `$preload`.
macro_rules! on_both_paths {
    ($check:ident($($arg:expr),*), $uprobes:ident, $preload:ident) => {
        #[test]
        fn $uprobes() {
            $check(stringify!($uprobes), $($arg,)* crate::support::Capture::Uprobes);
        }

        #[test]
        fn $preload() {
            $check(stringify!($preload), $($arg,)* crate::support::Capture::Preload);
        }
    };
}
pub(crate) use on_both_paths;

/// `memprof run --output OUT -- TARGET ARGS...`
pub fn memprof_run(output: &Path, target: &Path, args: &[&str]) -> Finished {
    memprof_run_on(Capture::Uprobes, output, target, args)
}

/// `memprof run --capture PATH --output OUT -- TARGET ARGS...`
pub fn memprof_run_on(capture: Capture, output: &Path, target: &Path, args: &[&str]) -> Finished {
    memprof_run_with(capture, &[], output, target, args)
}

/// [`memprof_run_on`] with memprof's environment variables `env` set.
pub fn memprof_run_with(
    capture: Capture,
    env: &[(&str, &str)],
    output: &Path,
    target: &Path,
    args: &[&str],
) -> Finished {
    let mut cmd = Command::new(memprof());
    cmd.envs(env.iter().copied())
        .arg("run")
        .arg("--capture")
        .arg(capture.arg())
        .arg("--output")
        .arg(output)
        .arg("--")
        .arg(target)
        .args(args);
    run_to_end(cmd)
}

/// Runs TARGET under memprof on the given capture path, requires success, and returns the
/// report (which must say it ran there).
pub fn profile_on(capture: Capture, dir: &Path, target: &Path, args: &[&str]) -> Value {
    profile_output_on(capture, dir, target, args).0
}

/// [`profile_on`], and the run itself (for what the target printed).
pub fn profile_output_on(
    capture: Capture,
    dir: &Path,
    target: &Path,
    args: &[&str],
) -> (Value, Finished) {
    let output = dir.join("out");
    let finished = memprof_run_on(capture, &output, target, args);
    assert!(
        finished.status.success(),
        "memprof run {} failed: {}\nstderr:\n{}",
        target.display(),
        finished.status,
        finished.stderr
    );
    let report = finished.report(&output);
    assert_eq!(
        report["target"]["capture"]["path"],
        capture.arg(),
        "target.capture: {}",
        report["target"]
    );
    (report, finished)
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only truncates what the assertion messages show.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for CHILD for at most LIMIT; `None` when it is still running.
fn wait_until(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for CHILD, killing it and failing the test after LIMIT.
pub fn wait_deadline(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    wait_until(child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {limit:?}; killed it");
    })
}

/// Lines of a pipe, delivered through a channel so that a test can wait with a timeout.
pub fn line_channel(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing NEEDLE; returns every line seen so far (for messages).
pub fn wait_for_line(lines: &Receiver<String>, needle: &str, what: &str) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(e) => panic!("{what}: no line containing {needle:?} ({e:?}); saw {seen:#?}"),
        }
    }
}

/// Everything still to come from a line channel once its process has exited, for messages.
pub fn rest_of(lines: &Receiver<String>) -> String {
    let mut text = String::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// samples/c/stacks.c linked against samples/c/libstackdemo.c (built as libstackdemo.so in
/// the same directory, found through an $ORIGIN rpath), both with BUILD's frame pointers.
pub fn compile_stacks(dir: &Path, build: Build) -> PathBuf {
    let out = dir.join(format!("stacks-{}", build.suffix()));
    std::fs::create_dir_all(&out).expect("create the stacks build dir");
    let frame_flag = match build {
        Build::FramePointers => "-fno-omit-frame-pointer",
        Build::NoFramePointers => "-fomit-frame-pointer",
    };
    let library = samples_dir().join("c/libstackdemo.c");
    let mut gcc = Command::new("gcc");
    gcc.args([
        "-O2",
        "-g",
        "-fno-builtin",
        "-shared",
        "-fPIC",
        frame_flag,
        "-o",
    ])
    .arg(out.join("libstackdemo.so"))
    .arg(&library);
    run_compiler(gcc, &library);
    let source = samples_dir().join("c/stacks.c");
    let binary = out.join("stacks");
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-g", "-fno-builtin", frame_flag, "-o"])
        .arg(&binary)
        .arg(&source)
        .arg("-L")
        .arg(&out)
        .args(["-lstackdemo", "-Wl,-rpath,$ORIGIN"]);
    run_compiler(gcc, &source);
    binary
}

/// samples/cpp/NAME.cpp with g++.
pub fn compile_cpp(dir: &Path, name: &str, build: Build) -> PathBuf {
    let source = samples_dir().join("cpp").join(format!("{name}.cpp"));
    let output = dir.join(format!("{name}.{}", build.suffix()));
    let frame_flag = match build {
        Build::FramePointers => "-fno-omit-frame-pointer",
        Build::NoFramePointers => "-fomit-frame-pointer",
    };
    let mut gxx = Command::new("g++");
    gxx.args(["-O2", "-g", frame_flag, "-o"])
        .arg(&output)
        .arg(&source);
    run_compiler(gxx, &source);
    output
}

/// samples/src/bin/NAME.rs compiled directly with rustc, as [`compile_rust`] does.
pub fn compile_rust_bin(dir: &Path, name: &str, build: Build) -> PathBuf {
    let source = samples_dir().join(format!("src/bin/{name}.rs"));
    let output = dir.join(format!("{name}.{}", build.suffix()));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition", "2024", "-C", "opt-level=2", "-g"]);
    if build == Build::FramePointers {
        cmd.args(["-C", "force-frame-pointers=yes"]);
    }
    cmd.arg("-o").arg(&output).arg(&source);
    run_compiler(cmd, &source);
    output
}

/// The 1-based line of `source` (under samples/) holding the comment marker `@name`.
pub fn marker_line(source: &str, name: &str) -> u32 {
    let path = samples_dir().join(source);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let marker = format!("@{name} ");
    let matches: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(&marker) || line.ends_with(&format!("@{name}")))
        .map(|(index, _)| index + 1)
        .collect();
    assert_eq!(matches.len(), 1, "marker @{name} in {}", path.display());
    matches[0] as u32
}

/// The launched process's stacks unwound and bytes of stack copied per snapshot, from the
/// line `MEMPROF_TIMINGS=1` makes memprof print: "unwinding: N stacks, ..., B bytes of stack
/// per snapshot".
pub fn unwinding_line(stderr: &str) -> (u64, f64) {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("unwinding: "))
        .unwrap_or_else(|| panic!("no unwinding line: {stderr}"));
    let stacks = line["unwinding: ".len()..]
        .split(' ')
        .next()
        .and_then(|stacks| stacks.parse().ok())
        .unwrap_or_else(|| panic!("no stack count in {line}"));
    let per_snapshot = line
        .rsplit(", ")
        .next()
        .and_then(|last| last.strip_suffix(" bytes of stack per snapshot"))
        .and_then(|bytes| bytes.parse().ok())
        .unwrap_or_else(|| panic!("no bytes per snapshot in {line}"));
    (stacks, per_snapshot)
}

/// A child killed when the test ends, failed or not: a target left running (a CPU-bound one
/// above all) slows every test after it, and the machine after the run.
pub struct KilledOnDrop(pub std::process::Child);

impl std::ops::Deref for KilledOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KilledOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
