//! Command-line arguments, turned into validated options for the session.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use profiler_common::MAX_STACK_DEPTH;

use crate::compare::AllocatorName;
use crate::options::{self, SessionOptions, StackOptions};
use crate::report_cmd;

#[derive(Parser, Debug)]
#[command(
    name = "memprof",
    version,
    about = "Heap profiler for Linux processes, built on eBPF uprobes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Launch a program under the profiler; everything it allocates from its first
    /// instruction on is seen.
    Run {
        #[command(flatten)]
        capture: CaptureArgs,
        /// Set a variable in the program's environment only, not memprof's (repeatable), e.g.
        /// `--env LD_PRELOAD=/path/to/libmemprof_alloc.so` to profile another allocator.
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Take the operation count from the program's last `ops: N` line on stdout (which
        /// memprof passes through: the program then writes to a pipe, not a terminal).
        #[arg(long, conflicts_with = "ops")]
        ops_from_output: bool,
        /// How calls are captured: `preload` (a library memprof preloads into the program
        /// records each call into a ring shared with memprof: several times cheaper), `uprobes`
        /// (eBPF probes on the allocator, as `attach` does), or `auto`: preload where it sees
        /// every call (a dynamically linked program whose allocator it reaches), else uprobes.
        #[arg(long = "capture", value_enum, default_value_t = CapturePath::Auto,
              value_name = "PATH")]
        capture_path: CapturePath,
        /// Profile the launched process alone. By default every process it starts is followed
        /// (forked children, theirs, every program they exec; in-process capture path): each
        /// process image gets its own report in DIR/processes/PID-N/, listed in DIR/report.json.
        #[arg(long)]
        no_follow: bool,
        /// Run the program as this user (its uid, gid and groups), not as root: memprof keeps
        /// its privileges to profile it. The environment stays memprof's (with --env applied).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Skip the leak check at exit (which scans the exiting program's memory, as valgrind's
        /// memcheck does, to tell blocks it can no longer reach from those it still holds).
        #[arg(long)]
        no_leak_check: bool,
        /// The program and its arguments.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Profile a running process without restarting it, then detach and leave it running.
    Attach {
        /// Process id of the target.
        pid: u32,
        /// Stop after this many seconds (otherwise on Ctrl-C or when the target exits).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Lose no event: trace the target's threads (ptrace) so that one allocating while half
        /// the ring is queued waits for memprof, as in `run`. Every signal the target gets then
        /// passes through memprof; the threads are detached at the end.
        #[arg(long)]
        hold: bool,
        /// Follow the processes the target starts during the window (and theirs, and what they
        /// exec): each process image gets its own report in DIR/processes/PID-N/, listed in
        /// DIR/report.json. Traces the target's threads (ptrace) as `--hold` does.
        #[arg(long)]
        children: bool,
        /// At the end of the window, stop the process for a moment, scan its memory and
        /// classify the blocks the window allocated as memcheck does (definitely, indirectly or
        /// possibly lost, still reachable); blocks from before the window count as reachable.
        #[arg(long, conflicts_with_all = ["hold", "children"])]
        leak_check: bool,
        #[command(flatten)]
        capture: CaptureArgs,
    },
    /// Run the same workload once per allocator (preloaded into it with LD_PRELOAD), each
    /// under memprof, and compare them side by side: a table on stdout, DIR/compare.json,
    /// DIR/compare.svg, and each run's memprof output in DIR/ALLOCATOR/.
    Compare(CompareArgs),
    /// Browse a recording (`recording.mprof`) in the live view, with a time cursor (Left and
    /// Right step through it); stdout must be a terminal.
    View {
        /// The recording, or a session's output directory (its recording.mprof).
        file: PathBuf,
    },
    /// Replay a recording (`recording.mprof`) offline: rebuild the heap and write the same
    /// report files a live session writes, plus `profile.pb.gz` (pprof).
    Report {
        /// The recording, written by `memprof run` or `memprof attach`; or a session's output
        /// directory, whose whole process tree (every DIR/processes/PID-N/ recording, listed
        /// in DIR/report.json) is replayed with `--format all` (otherwise its recording.mprof).
        file: PathBuf,
        /// What to produce: `all` writes every file and prints the summary; `text` prints the
        /// summary on stdout; the others write only their files.
        #[arg(long, value_enum, default_value_t = ReportFormat::All)]
        format: ReportFormat,
        /// Directory for the files.
        #[arg(long, short, default_value = "memprof-out", value_name = "DIR")]
        output: PathBuf,
        /// Leak sites printed in the summary.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: usize,
        /// Operations the target performed, for the per-operation figures [default: the
        /// `--ops` given to the session that recorded the file, if any].
        #[arg(long, value_name = "N")]
        ops: Option<u64>,
    },
    /// Compare two recordings site by site (sites matched by symbolized stack): a table of
    /// the changes, diff.json and a differential flame graph diff.svg.
    Diff(DiffArgs),
    /// Write a deterministic synthetic churn recording of N events (for `cargo xtask bench
    /// report`).
    #[command(hide = true)]
    SynthesizeRecording {
        #[arg(long)]
        events: u64,
        file: PathBuf,
    },
}

/// `memprof compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Allocators to compare, comma-separated.
    #[arg(
        long = "allocator",
        value_parser = allocator_names(),
        value_delimiter = ',',
        default_value = "glibc,jemalloc,mimalloc,tcmalloc,memprof"
    )]
    pub allocators: Vec<AllocatorName>,
    /// Use this library for an allocator (repeatable), e.g. `memprof=/path/libmemprof_alloc.so`.
    #[arg(long = "allocator-lib", value_name = "NAME=PATH", value_parser = parse_allocator_lib)]
    pub allocator_libs: Vec<(AllocatorName, PathBuf)>,
    /// Directory for compare.json, compare.svg and one subdirectory per allocator.
    #[arg(long, short, default_value = "memprof-out/compare", value_name = "DIR")]
    pub output: PathBuf,
    /// Runs per allocator (timings are medians; outputs go to DIR/ALLOCATOR/run-N).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// A command run by /bin/sh (not profiled) once CMD prints `listening on ADDR`, with
    /// `{addr}` replaced by ADDR; its `ops:`/`ops/s:` lines are the throughput. CMD gets
    /// SIGTERM if it is still running 10 s after the load command ended.
    #[arg(long, value_name = "CMD ARGS")]
    pub load: Option<String>,
    /// Operations the workload performs, when it does not print an `ops: N` line.
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// The program and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `--allocator-lib NAME=PATH`.
/// `--allocator`'s values: the allocators `compare` knows, by name.
fn allocator_names() -> impl clap::builder::TypedValueParser<Value = AllocatorName> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    let names = crate::compare::ALL_ALLOCATORS.map(|allocator| {
        let name = PossibleValue::new(allocator.name());
        match allocator.description() {
            Some(description) => name.help(description),
            None => name,
        }
    });
    PossibleValuesParser::new(names)
        .map(|name| AllocatorName::from_name(&name).expect("one of the possible values"))
}

fn parse_allocator_lib(text: &str) -> Result<(AllocatorName, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .filter(|(_, path)| !path.is_empty())
        .ok_or_else(|| format!("expected NAME=PATH, not {text:?}"))?;
    let allocator =
        AllocatorName::from_name(name).ok_or_else(|| format!("unknown allocator {name:?}"))?;
    Ok((allocator, PathBuf::from(path)))
}

/// `memprof diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The first ("before") run: a recording, or an output directory holding recording.mprof.
    pub a: PathBuf,
    /// The second ("after") run, likewise.
    pub b: PathBuf,
    /// Directory for diff.json and diff.svg.
    #[arg(long, short, default_value = "memprof-diff", value_name = "DIR")]
    pub output: PathBuf,
    /// Sites printed in the table.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top: usize,
    /// What the differential flame graph weighs stacks by.
    #[arg(long, value_enum, default_value_t = DiffFlame::AllocBytes)]
    pub flame: DiffFlame,
}

/// `memprof diff --flame`: what the differential flame graph weighs.
impl DiffArgs {
    /// The comparison's options.
    pub fn into_options(self) -> crate::diff::DiffOptions {
        use profiler_core::render::FlameKind;
        crate::diff::DiffOptions {
            a: self.a,
            b: self.b,
            output: self.output,
            top: self.top,
            flame: match self.flame {
                // Every live byte, as the diff's live_bytes_at_end: comparable with or
                // without a leak check on either side.
                DiffFlame::Leaks => FlameKind::LiveAtEnd,
                DiffFlame::Lost => FlameKind::Lost,
                DiffFlame::AllocBytes => FlameKind::AllocBytes,
                DiffFlame::AllocCount => FlameKind::AllocCount,
                DiffFlame::Peak => FlameKind::Peak,
            },
        }
    }
}

impl CompareArgs {
    /// The comparison's options.
    pub fn into_options(self) -> crate::compare::CompareOptions {
        crate::compare::CompareOptions {
            allocators: self.allocators,
            libraries: self.allocator_libs,
            output: self.output,
            runs: self.runs,
            load: self.load,
            ops: self.ops,
            command: self.command,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffFlame {
    /// Bytes live at the end.
    Leaks,
    /// Bytes the leak check found lost (runs with a leak check).
    Lost,
    AllocBytes,
    AllocCount,
    Peak,
}

/// `memprof report --format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
    Flamegraph,
    Folded,
    Pprof,
    All,
}

impl From<ReportFormat> for report_cmd::Format {
    fn from(format: ReportFormat) -> report_cmd::Format {
        match format {
            ReportFormat::Text => report_cmd::Format::Text,
            ReportFormat::Json => report_cmd::Format::Json,
            ReportFormat::Flamegraph => report_cmd::Format::Flamegraph,
            ReportFormat::Folded => report_cmd::Format::Folded,
            ReportFormat::Pprof => report_cmd::Format::Pprof,
            ReportFormat::All => report_cmd::Format::All,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Directory for report.json and the flamegraphs.
    #[arg(long, short, default_value = "memprof-out", value_name = "DIR")]
    pub output: PathBuf,
    /// Deepest stack recorded per allocation, in frames (0 turns stacks off).
    #[arg(long, default_value_t = 64, value_name = "FRAMES",
          value_parser = clap::value_parser!(u32).range(0..=MAX_STACK_DEPTH as i64))]
    pub max_depth: u32,
    /// How call stacks are captured: `dwarf` copies the user stack and unwinds it with the
    /// binaries' .eh_frame (works without frame pointers); `fp` walks frame pointers in the
    /// kernel (cheaper, but cut short in code built without them).
    #[arg(long, value_enum, default_value_t = Unwind::Dwarf, value_name = "MODE")]
    pub unwind: Unwind,
    /// `--unwind dwarf`: bytes of user stack copied per allocation (a multiple of 8, at most
    /// 16384); deeper stacks are cut and marked truncated.
    #[arg(long, default_value_t = profiler_common::DEFAULT_STACK_BYTES, value_name = "BYTES")]
    pub stack_bytes: u32,
    /// Where to record the session for `memprof report` [default: DIR/recording.mprof].
    #[arg(long, value_name = "PATH", conflicts_with = "no_recording")]
    pub recording: Option<PathBuf>,
    /// Do not record the session.
    #[arg(long)]
    pub no_recording: bool,
    /// Ring buffer size in MiB (a power of two) [default: 32 for the in-process capture; for
    /// the probes 16 when threads are held (`run`, `attach --hold`), 64 otherwise]. In `run`,
    /// threads that allocate while it is full (half full, with probes) wait for memprof to
    /// drain it; in `attach`, larger rings lose fewer events.
    #[arg(long, value_name = "MIB")]
    pub ring_mib: Option<u32>,
    /// Leak sites printed in the terminal summary.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Operations the target performed (requests served, items processed...): the report
    /// then gives allocations and bytes per operation.
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// Show a full-screen live view while profiling (stdout must be a terminal; `q` leaves the
    /// view, profiling goes on). In `run`, the program's output goes to DIR/target-output.log.
    #[arg(long)]
    pub live: bool,
}

/// How `run` captures calls (`--capture`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapturePath {
    /// The in-process library where it sees every call, uprobes otherwise.
    Auto,
    /// eBPF uprobes on the allocation functions.
    Uprobes,
    /// The in-process library, preloaded.
    Preload,
}

impl From<CapturePath> for options::CapturePath {
    fn from(path: CapturePath) -> options::CapturePath {
        match path {
            CapturePath::Auto => options::CapturePath::Auto,
            CapturePath::Uprobes => options::CapturePath::Uprobes,
            CapturePath::Preload => options::CapturePath::Preload,
        }
    }
}

/// How call stacks are captured (`--unwind`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwind {
    /// Frame-pointer walk in the kernel.
    Fp,
    /// Stack copy unwound with DWARF call frame information.
    Dwarf,
}

impl From<Unwind> for options::Unwind {
    fn from(unwind: Unwind) -> options::Unwind {
        match unwind {
            Unwind::Fp => options::Unwind::FramePointers,
            Unwind::Dwarf => options::Unwind::Dwarf,
        }
    }
}

impl CaptureArgs {
    /// The session's options, each checked.
    pub fn into_options(self) -> anyhow::Result<SessionOptions> {
        let stack_bytes = self.stack_bytes()?;
        let ring_bytes = self.ring_bytes()?;
        Ok(SessionOptions {
            recording: match self.no_recording {
                true => None,
                false => Some(
                    self.recording
                        .unwrap_or_else(|| options::recording_of(&self.output)),
                ),
            },
            output: self.output,
            stacks: StackOptions {
                max_depth: self.max_depth,
                unwind: self.unwind.into(),
                stack_bytes,
            },
            ring_bytes,
            top: self.top,
            ops: self.ops,
            live: self.live,
        })
    }

    fn stack_bytes(&self) -> anyhow::Result<u32> {
        let max = profiler_common::MAX_STACK_BYTES as u32;
        if self.stack_bytes == 0 || self.stack_bytes > max || !self.stack_bytes.is_multiple_of(8) {
            anyhow::bail!(
                "--stack-bytes must be a multiple of 8 between 8 and {max}, not {}",
                self.stack_bytes
            );
        }
        Ok(self.stack_bytes)
    }

    fn ring_bytes(&self) -> anyhow::Result<Option<u32>> {
        let Some(mib) = self.ring_mib else {
            return Ok(None);
        };
        if !mib.is_power_of_two() || mib > 1024 {
            anyhow::bail!("--ring-mib must be a power of two no larger than 1024, not {mib}");
        }
        Ok(Some(mib << 20))
    }
}

/// `--duration SECONDS`: a finite number above zero (a zero window would record nothing).
pub fn duration(seconds: Option<f64>) -> anyhow::Result<Option<Duration>> {
    seconds
        .map(|s| match Duration::try_from_secs_f64(s) {
            Ok(duration) if !duration.is_zero() => Ok(duration),
            _ => Err(anyhow::anyhow!(
                "--duration must be a positive number of seconds, not {s}"
            )),
        })
        .transpose()
}

/// `--env KEY=VALUE`: a non-empty key without `=` or NUL.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !text.contains('\0') => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, not {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_must_be_positive() {
        let refused = |s: f64| duration(Some(s)).unwrap_err().to_string();
        assert_eq!(
            refused(0.0),
            "--duration must be a positive number of seconds, not 0"
        );
        assert_eq!(
            refused(-0.0),
            "--duration must be a positive number of seconds, not -0"
        );
        assert_eq!(
            refused(-1.5),
            "--duration must be a positive number of seconds, not -1.5"
        );
        assert_eq!(
            refused(f64::NAN),
            "--duration must be a positive number of seconds, not NaN"
        );
        assert_eq!(
            duration(Some(0.25)).unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(duration(None).unwrap(), None);
    }

    /// The session options `memprof ARGS` gives.
    fn session_options(args: &[&str]) -> SessionOptions {
        let capture = match Cli::try_parse_from(args).unwrap().command {
            Command::Run { capture, .. } => capture,
            other => panic!("not a run: {other:?}"),
        };
        capture.into_options().unwrap()
    }

    /// A ring that holds threads when full gets 16 MiB of probes' ring by default, one that
    /// loses events 64; `--ring-mib` sets every ring.
    #[test]
    fn ring_sizes_follow_what_a_full_ring_does() {
        let defaults = session_options(&["memprof", "run", "--", "true"]);
        assert_eq!(defaults.probe_ring_bytes(true), 16 << 20);
        assert_eq!(defaults.probe_ring_bytes(false), 64 << 20);
        assert_eq!(defaults.shared_ring_bytes(), 32 << 20);
        let set = session_options(&["memprof", "run", "--ring-mib", "4", "--", "true"]);
        assert_eq!(set.probe_ring_bytes(true), 4 << 20);
        assert_eq!(set.probe_ring_bytes(false), 4 << 20);
        assert_eq!(set.shared_ring_bytes(), 4 << 20);
    }
}
