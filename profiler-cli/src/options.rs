//! What a live session (`run`, `attach`) is asked to do, validated once from the command
//! line (`cli.rs` builds it); the session's code never sees clap's types.
use std::path::{Path, PathBuf};

/// Name of a session's recording in its output directory.
pub const RECORDING_FILE: &str = "recording.mprof";

/// Where a session directory's recording is: `DIR/recording.mprof`.
pub fn recording_of(dir: &Path) -> PathBuf {
    dir.join(RECORDING_FILE)
}

/// The options every live session takes.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Directory of report.json, the flame graphs and the recording.
    pub output: PathBuf,
    /// Where the session is recorded; None: not recorded.
    pub recording: Option<PathBuf>,
    pub stacks: StackOptions,
    /// Size of the ring the capture path writes records into (a power of two); None: the
    /// path's default ([`SessionOptions::probe_ring_bytes`], [`SessionOptions::shared_ring_bytes`]).
    pub ring_bytes: Option<u32>,
    /// Leak sites in the terminal summary.
    pub top: usize,
    /// Operations the target performed, for the per-operation figures.
    pub ops: Option<u64>,
    /// Show the full-screen live view.
    pub live: bool,
}

/// The probes' ring by default when a full ring loses events (`attach` without `--hold`):
/// a larger ring loses fewer.
const LOSSY_PROBE_RING_BYTES: u32 = 64 << 20;
/// The probes' ring by default when a full ring holds the allocating threads (`run`,
/// `attach --hold`): the collector keeps up, and the kernel maps the ring's pages twice into
/// memprof, so its resident size grows by twice the ring. Against 64 MiB (interleaved, two
/// rounds, python3 one): memprof's peak RSS on churn 184 -> 86 MiB, sqlite3 186 -> 88 MiB
/// (10.6 -> 9.4 s), python3 298 -> 202 MiB (heaptrack's: 109, 179, 233), no hold on those
/// nor on redis under redis-benchmark (8 MiB held python3 6 times).
const HELD_PROBE_RING_BYTES: u32 = 16 << 20;
/// The in-process capture's ring by default: its producers wait when it is full and the
/// collector keeps up, and its pages count in memprof's memory as much as the target's (the
/// bench's workloads: memprof's peak RSS 32 MiB lower, no time measurably added against 64).
const SHARED_RING_BYTES: u32 = 32 << 20;

impl SessionOptions {
    /// The size of the probes' ring; `hold_threads`: a full ring holds the threads that
    /// allocate instead of losing their events.
    pub fn probe_ring_bytes(&self, hold_threads: bool) -> u32 {
        self.ring_bytes.unwrap_or(if hold_threads {
            HELD_PROBE_RING_BYTES
        } else {
            LOSSY_PROBE_RING_BYTES
        })
    }

    /// The size of the ring shared with the in-process capture.
    pub fn shared_ring_bytes(&self) -> u32 {
        self.ring_bytes.unwrap_or(SHARED_RING_BYTES)
    }

    /// The same options for one process image of a followed tree, whose files go to
    /// `output` (recorded there unless the session is not recorded), without a live view.
    pub fn for_image(&self, output: PathBuf) -> SessionOptions {
        SessionOptions {
            recording: self.recording.as_ref().map(|_| recording_of(&output)),
            output,
            live: false,
            ..self.clone()
        }
    }
}

/// How stacks are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackOptions {
    /// Deepest stack recorded, in frames; 0: no stacks.
    pub max_depth: u32,
    pub unwind: Unwind,
    /// Bytes of user stack the probes copy for DWARF unwinding (a multiple of 8).
    pub stack_bytes: u32,
}

/// How a stack is walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwind {
    /// Through the frame-pointer chain.
    FramePointers,
    /// With the binaries' `.eh_frame` unwinding tables.
    Dwarf,
}

impl Unwind {
    /// The name recordings and reports give it.
    pub fn name(self) -> &'static str {
        match self {
            Unwind::FramePointers => "frame-pointers",
            Unwind::Dwarf => "dwarf",
        }
    }
}

/// Which capture path `memprof run` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapturePath {
    /// The in-process path where it can serve the target, the probes otherwise.
    Auto,
    Uprobes,
    Preload,
}

impl CapturePath {
    pub fn name(self) -> &'static str {
        match self {
            CapturePath::Auto => "auto",
            CapturePath::Uprobes => "uprobes",
            CapturePath::Preload => "preload",
        }
    }
}
