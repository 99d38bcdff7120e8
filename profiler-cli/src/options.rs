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
    /// Size of the ring the capture path writes records into (a power of two).
    pub ring_bytes: u32,
    /// Leak sites in the terminal summary.
    pub top: usize,
    /// Operations the target performed, for the per-operation figures.
    pub ops: Option<u64>,
    /// Show the full-screen live view.
    pub live: bool,
}

impl SessionOptions {
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
