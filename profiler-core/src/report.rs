//! The report: a plain, serializable model of one profiling session. Its serde form IS the
//! JSON schema (`report.json`); renderers read only this.
//!
//! Times are seconds since the session start (`ReportMeta::start_ns`, same clock as events).
//! Stacks are innermost first: frame 0 is the function that called the allocator.

use crate::fasthash::FastHashMap;
use crate::heap::{HeapState, Mode};
use crate::leak_check::{LeakCheck, LeakCheckSummary, Reachability};
use crate::sites::{SiteCounts, SiteStats};
use crate::stacks::{StackId, StackTable};
use crate::symbolize::{Frame, ModuleInfo, Symbolizer};
use profiler_common::{EventKind, KIND_SLOTS};
use serde::{Deserialize, Serialize};
use stack_names::StackNames;
use std::sync::Arc;
use std::time::Duration;

mod flame_stacks;
mod kind_map;
mod lost;
pub(crate) mod stack_names;

pub use flame_stacks::{FlameStacks, NO_STACK, StackWeights, TRUNCATED_ROOT, UNLISTED};
pub use kind_map::KindMap;

/// Sites listed in full in `leaks`, `mappings` and `sites`, the first in report order; the
/// others are summed up in `unlisted_leaks`, `unlisted_mappings` and `unlisted_sites`. A
/// site listed in full weighs a few kilobytes of JSON (its whole symbolized stack), so a
/// program leaking from 200,000 distinct stacks made a report.json of 2.5 GB; the flame
/// graphs, `profile.pb.gz` and the recording keep every site.
pub const LISTED_SITES: usize = 1000;

/// Everything about the session that is not in the events; supplied by the collector.
#[derive(Clone, Debug)]
pub struct ReportMeta {
    pub command: Vec<String>,
    /// The file the target runs (`/proc/PID/exe`), when known.
    pub executable: Option<String>,
    pub pid: u32,
    pub mode: Mode,
    pub exit: Option<ExitStatus>,
    /// Monotonic nanoseconds (the events' clock) when recording started.
    pub start_ns: u64,
    pub duration: Duration,
    pub probes: Vec<ProbeInfo>,
    pub lost: LostCounts,
}

/// The kernel side's loss counters, read at the end of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostCounts {
    /// Records dropped because the ring buffer was full, indexed by `EventKind as usize`.
    pub by_kind: [u64; KIND_SLOTS as usize],
    /// Allocations whose user stack could not be read (the event itself arrived).
    pub stack_errors: u64,
    /// Calls whose entry could not be remembered (in-flight table full): no event was sent.
    pub inflight_full: u64,
}

impl Default for LostCounts {
    fn default() -> Self {
        Self {
            by_kind: [0; KIND_SLOTS as usize],
            stack_errors: 0,
            inflight_full: 0,
        }
    }
}

impl LostCounts {
    /// Events that never reached the collector: ring drops plus in-flight-table overflows.
    pub fn total(&self) -> u64 {
        self.by_kind.iter().sum::<u64>() + self.inflight_full
    }
}

/// One memprof session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Version of memprof that wrote the report.
    pub memprof_version: String,
    /// `run`: launched under memprof; `attach`: attached to a running process.
    pub mode: Mode,
    pub target: Target,
    /// The uprobes that were attached.
    pub probes: Vec<ProbeInfo>,
    pub summary: Summary,
    pub lost: Lost,
    /// Live malloc-family blocks at the end, grouped by allocation stack (Run: live at exit;
    /// Attach: allocated while attached and live at detach). Sorted by bytes desc, blocks
    /// desc, then first frame name; the first [`LISTED_SITES`].
    pub leaks: Vec<Site>,
    /// The leak sites after the first [`LISTED_SITES`], summed up; absent when `leaks` lists
    /// them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted_leaks: Option<UnlistedSites>,
    /// Live mmap regions at the end, grouped by the stack that mapped them; same order, the
    /// first [`LISTED_SITES`].
    pub mappings: Vec<Site>,
    /// The mapping sites after the first [`LISTED_SITES`], summed up (`blocks`: regions);
    /// absent when `mappings` lists them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted_mappings: Option<UnlistedSites>,
    /// Run mode only: frees of already-freed pointers, in order (at most 1024 kept; the
    /// summary counts all).
    pub double_frees: Vec<DoubleFreeSite>,
    /// Every stack that allocated at least once (malloc family), with what it allocated, what
    /// of it is live at the end and what was live at the global peak. Sorted by allocated
    /// bytes desc, allocations desc, then first frame name; the first [`LISTED_SITES`].
    #[serde(default)]
    pub sites: Vec<AllocationSite>,
    /// The allocation sites after the first [`LISTED_SITES`], summed up; absent when `sites`
    /// lists them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted_sites: Option<UnlistedAllocationSites>,
    /// The object files the stacks were symbolized from, by path: with their build-id a
    /// recording can be symbolized again later on the same machine.
    #[serde(default)]
    pub modules: Vec<ModuleFile>,
    /// Timeline, leaks and growth, lifetimes, size classes, fragmentation, realloc chains and
    /// per-operation costs (`session_end::build_report`); absent from reports built without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analyses: Option<crate::analysis::AnalysesReport>,
    /// Calls the probes cannot see, so figures that are wrong for a known reason (e.g. C++
    /// operator new served by the allocator without going through malloc).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// `run` following the process tree: every process image of the tree (a pid from its
    /// fork or exec to its exit or next exec), the launched process first, in order of start.
    /// Each image's own report is in its `output` directory. Absent when the target started
    /// no process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessImage>,
    /// Every stack, listed or not, with its weight in each flame graph: what the flame graphs
    /// are drawn from. Not in report.json; absent from a report read back from it (the flame
    /// graphs then use the listed sites, see [`FlameStacks::from_listed_sites`]).
    #[serde(skip)]
    pub flame_stacks: Option<Arc<FlameStacks>>,
}

/// One process image of a followed tree (`Report::processes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessImage {
    pub pid: u32,
    /// The process that forked it (None for the launched process).
    pub parent_pid: Option<u32>,
    /// 1 for the image a fork (or the launch) started, then one more per exec.
    pub image: u32,
    /// Its command line (`/proc/PID/cmdline` when it started).
    pub command: Vec<String>,
    pub executable: Option<String>,
    /// Seconds since the session started.
    pub start_secs: f64,
    /// When it exited or exec'd; None while it still ran as the launched process exited.
    pub end_secs: Option<f64>,
    /// How it ended: `exit`, `exec` (another image of the pid followed) or `running`.
    pub end: ProcessEnd,
    /// Its exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// The capture path (`preload` or `uprobes`).
    pub capture: String,
    /// Its report's directory, relative to this report's (`.` for the launched process).
    pub output: String,
    pub allocations: u64,
    pub frees: u64,
    pub peak_live_bytes: u64,
    /// Blocks live at its end (exit, or when memprof stopped), its inherited ones included.
    pub leaked_blocks: u64,
    pub leaked_bytes: u64,
    /// Blocks it started with, live in its parent at the fork.
    pub inherited_blocks: u64,
    pub inherited_bytes: u64,
    /// Its largest leak sites (at most 3), by bytes.
    #[serde(default)]
    pub top_leaks: Vec<ProcessLeak>,
}

impl ProcessImage {
    /// How it ended, in a few words: `exit 3`, `signal 9`, `exec`, `still running`.
    pub fn ending(&self) -> String {
        match (self.end, self.exit) {
            (ProcessEnd::Exec, _) => "exec".to_owned(),
            (ProcessEnd::Running, _) => "still running".to_owned(),
            (ProcessEnd::Exit, Some(exit)) => match (exit.code, exit.signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "exited".to_owned(),
            },
            (ProcessEnd::Exit, None) => "exited".to_owned(),
        }
    }
}

/// How a process image ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessEnd {
    /// It exited (`ProcessImage::exit` says how).
    Exit,
    /// It exec'd another program: the next image of the same pid.
    Exec,
    /// Still running when the launched process exited; memprof detached from it.
    Running,
}

/// A leak site across a process tree: the top leak sites of every image with the same
/// innermost frame, summed (four pre-fork workers leaking in one function are one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeLeak {
    pub frame: String,
    pub blocks: u64,
    pub bytes: u64,
    /// The images it leaked in: (pid, image), in the order of `processes`.
    pub images: Vec<(u32, u32)>,
}

/// The leak sites of `processes` merged by frame, the most bytes first (then by frame).
pub fn tree_leaks(processes: &[ProcessImage]) -> Vec<TreeLeak> {
    let mut merged: Vec<TreeLeak> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for process in processes {
        for leak in &process.top_leaks {
            let at = *index.entry(leak.frame.as_str()).or_insert_with(|| {
                merged.push(TreeLeak {
                    frame: leak.frame.clone(),
                    blocks: 0,
                    bytes: 0,
                    images: Vec::new(),
                });
                merged.len() - 1
            });
            let site = &mut merged[at];
            site.blocks += leak.blocks;
            site.bytes += leak.bytes;
            let image = (process.pid, process.image);
            if !site.images.contains(&image) {
                site.images.push(image);
            }
        }
    }
    merged.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.frame.cmp(&b.frame)));
    merged
}

impl TreeLeak {
    /// `pid 11 #1`, or `3 images: pid 11 #1, pid 12 #1, ...` (the first four named).
    pub fn where_(&self) -> String {
        let named: Vec<String> = self
            .images
            .iter()
            .take(4)
            .map(|(pid, image)| format!("pid {pid} #{image}"))
            .collect();
        let more = if self.images.len() > 4 { ", ..." } else { "" };
        match self.images.len() {
            1 => named.join(""),
            n => format!("{n} images: {}{more}", named.join(", ")),
        }
    }
}

/// One leak site of a process image, for the summary across the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessLeak {
    /// The innermost frame that is not the allocator's.
    pub frame: String,
    pub blocks: u64,
    pub bytes: u64,
}

impl ProcessLeak {
    /// The first `n` sites of a report's `leaks` (sorted by bytes), named by their innermost
    /// frame.
    pub fn top(leaks: &[Site], n: usize) -> Vec<ProcessLeak> {
        leaks
            .iter()
            .take(n)
            .map(|site| ProcessLeak {
                frame: site.stack.first().map_or_else(
                    || "[unknown]".to_owned(),
                    |frame| {
                        frame
                            .function
                            .clone()
                            .unwrap_or_else(|| format!("{}+{:#x}", frame.module, frame.offset))
                    },
                ),
                blocks: site.blocks,
                bytes: site.bytes,
            })
            .collect()
    }
}

/// Leak sites listed per process image in `Report::processes`.
pub const PROCESS_TOP_LEAKS: usize = 3;

/// Sites of `leaks` or `mappings` that the report does not list, summed up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlistedSites {
    /// How many sites.
    pub sites: u64,
    /// Their live blocks (regions, for `mappings`) and bytes.
    pub blocks: u64,
    pub bytes: u64,
}

/// Allocation sites that `sites` does not list, summed up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlistedAllocationSites {
    /// How many sites.
    pub sites: u64,
    /// The sums of their [`AllocationSite`] figures.
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub peak_live_blocks: u64,
    pub peak_live_bytes: u64,
}

/// What one allocation stack did over the whole session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocationSite {
    /// Successful malloc-family calls from this stack, and the bytes they requested.
    pub allocations: u64,
    pub allocated_bytes: u64,
    /// Still live at the end (the leaks of this stack).
    pub live_blocks: u64,
    pub live_bytes: u64,
    /// Live at the moment of the global peak (`summary.peak_time_secs`).
    pub peak_live_blocks: u64,
    pub peak_live_bytes: u64,
    /// Time of the first and of the last allocation.
    pub first_alloc_secs: f64,
    pub last_alloc_secs: f64,
    /// Innermost first.
    pub stack: Vec<StackFrame>,
    /// The probe cut the stack at its depth limit: outermost frames are missing.
    pub truncated: bool,
}

/// An object file used for symbolization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleFile {
    /// Path as the target mapped it.
    pub path: String,
    /// GNU build-id as hex, null when the file has none.
    pub build_id: Option<String>,
    /// The separate debug file whose DWARF was used (found by build-id or .gnu_debuglink),
    /// null when the object carries its own DWARF or none was found.
    pub debug_file: Option<String>,
}

impl From<ModuleInfo> for ModuleFile {
    fn from(info: ModuleInfo) -> Self {
        ModuleFile {
            path: info.path.display().to_string(),
            build_id: info.build_id,
            debug_file: info.debug_file.map(|path| path.display().to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// argv of the launched command; in attach mode, /proc/PID/cmdline (what the process
    /// says its argv is: `argv[0]` need not name its program); empty when unknown.
    pub command: Vec<String>,
    /// The file the target runs: /proc/PID/exe (symlinks resolved), read at exec (run) or
    /// at attach. Absent when unknown (recordings made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    pub pid: u32,
    /// How the target ended; null if it was still running (attach, or interrupted); code and
    /// signal both null when an attached process exited (only its parent learns how).
    pub exit: Option<ExitStatus>,
    /// Wall time of the recording.
    pub duration_secs: f64,
    /// The target's peak resident set size (VmHWM of /proc/PID/status) read as it exited;
    /// absent when unknown (attach, replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// How often, and how long in all, the target's threads were held while memprof caught up
    /// (`run`, `attach --hold`); absent when they never were. Nothing was lost for it, but the
    /// report's times and rates include the pauses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// How the events were captured (`run --capture`): `uprobes` or `preload`, and why that
    /// path; absent in reports of recordings made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
}

/// The capture path of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    /// `uprobes` (eBPF probes on the allocator) or `preload` (the in-process library).
    pub path: String,
    /// Why this path: what the user asked for, or what `auto` found.
    pub reason: String,
}

/// Blocks and bytes released other than by the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub blocks: u64,
    pub bytes: u64,
}

/// Threads held by memprof's backpressure.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub times: u64,
    pub secs: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when the target exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Symbol probed, e.g. `malloc`.
    pub function: String,
    /// Path of the object the probe is attached in.
    pub module: String,
    /// Offset of the probe in that file.
    pub offset: u64,
    /// Whether the kernel single-steps this probe (slower) rather than emulating it.
    pub single_step: bool,
    /// Other symbol names at the same offset (e.g. `__libc_malloc`).
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// malloc-family calls, failed ones included.
    pub allocations: u64,
    /// malloc-family calls that returned NULL (realloc(p, 0) is not one).
    pub failed_allocations: u64,
    /// Frees of blocks that were live. Double and unknown frees are not included.
    pub frees: u64,
    /// Requested bytes of successful malloc-family calls.
    pub bytes_allocated: u64,
    /// Live malloc-family blocks at the end (mmap regions not included).
    pub live_blocks: u64,
    pub live_bytes: u64,
    /// Highest live_bytes reached, the live block count then, and when it was first reached
    /// (null if nothing was ever live).
    pub peak_live_bytes: u64,
    pub peak_live_blocks: u64,
    pub peak_time_secs: Option<f64>,
    /// Same as `lost.total`.
    pub lost_events: u64,
    /// Frees of pointers never seen allocated (allocated before attach, or lost events).
    pub unknown_frees: u64,
    /// Run mode: frees of pointers already freed and not allocated again since.
    pub double_frees: u64,
    /// Frees of pointers that were not live, made by the allocator's own code (glibc flushing
    /// an exiting thread's tcache). Not the program's: neither unknown nor double frees.
    #[serde(default)]
    pub allocator_internal_frees: u64,
    /// reallocs of pointers that were not live.
    pub unknown_reallocs: u64,
    /// Allocations that returned a still-live address: the old block's free was lost.
    pub overwritten_blocks: u64,
    /// Blocks live when the target exec'd another program (`run` follows the exec): the exec
    /// released them, so they are neither frees nor leaks. Absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by_exec: Option<Released>,
    /// Blocks live in the parent when this process was forked: it started with them (and
    /// may have freed some). Not counted in `allocations`. Absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherited_at_fork: Option<Released>,
    /// Per probed function with at least one call, in probe order. `bytes`: allocators:
    /// requested bytes of successful calls; free: bytes of the live blocks it released; mmap
    /// and mremap: page-rounded bytes mapped; munmap: tracked bytes unmapped.
    pub by_function: KindMap<CallCount>,
    pub mmap: MmapSummary,
    /// Which live blocks the program could still reach when the leak check ran (at exit in
    /// `run`, at the end of the window in `attach --leak-check`); absent when none ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_check: Option<LeakCheckSummary>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCount {
    pub calls: u64,
    pub bytes: u64,
}

/// mmap regions, counted apart from the malloc heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmapSummary {
    /// mmap calls, failed ones included.
    pub calls: u64,
    /// mmap calls that returned MAP_FAILED.
    pub failed_calls: u64,
    /// Page-rounded bytes of successful mmaps (tracked regions only).
    pub bytes: u64,
    /// mmaps made inside the allocator's free (a new thread's arena): not tracked as regions.
    #[serde(default)]
    pub allocator_internal_mmaps: u64,
    pub munmap_calls: u64,
    /// munmaps of no tracked region (mappings from before the probes, lost events), the
    /// allocator's own excepted.
    pub unknown_munmaps: u64,
    /// munmaps of no tracked region by the allocator's code (its large blocks, arena trims).
    #[serde(default)]
    pub allocator_internal_munmaps: u64,
    pub live_regions: u64,
    pub live_bytes: u64,
    pub peak_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Events that never reached memprof: sum of `by_kind` plus `inflight_full`.
    pub total: u64,
    /// Ring-buffer drops per function, only functions with drops.
    pub by_kind: KindMap<u64>,
    /// Stacks that could not be read or followed to their root: cut where unwinding stopped
    /// and marked `truncated` (an empty stack when not one frame could be read).
    pub stack_errors: u64,
    /// Calls dropped because the in-flight call table was full (function unknown).
    pub inflight_full: u64,
    /// Which figures the losses make uncertain, and in which direction.
    pub uncertain: Vec<String>,
}

/// Live blocks (or regions) that share one allocation stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub blocks: u64,
    pub bytes: u64,
    /// Allocation time of the oldest and newest of these blocks.
    pub first_seen_secs: f64,
    pub last_seen_secs: f64,
    /// Innermost first; empty when the stack could not be read.
    pub stack: Vec<StackFrame>,
    /// The probe cut the stack at its depth limit: outermost frames are missing.
    pub truncated: bool,
    /// `leaks` only, when a leak check ran: the class of these blocks (a site whose blocks
    /// fall in different classes is one entry per class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability: Option<Reachability>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFrame {
    /// Demangled function name, null when no symbol covers the address.
    pub function: Option<String>,
    /// File name of the mapped object, `[vdso]`-style pseudo-name, or `[unknown]`.
    pub module: String,
    /// The return address, as `0x` hex.
    pub address: String,
    /// Offset of the address in the module's file.
    pub offset: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// A function inlined into the next (outer) frame: it has the same address.
    #[serde(default)]
    pub inlined: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoubleFreeSite {
    /// The pointer freed twice, as `0x` hex.
    pub address: String,
    /// Size of the block when it was live.
    pub size: u64,
    /// Where the block had been allocated.
    pub alloc_stack: Vec<StackFrame>,
    /// When the second free happened, and on which thread.
    pub time_secs: f64,
    pub tid: u32,
    /// The function that called free the second time (with the functions inlined into it at
    /// that call, innermost first); empty if unknown. Frees carry no full stack.
    #[serde(default)]
    pub freed_from: Vec<StackFrame>,
}

impl From<Frame> for StackFrame {
    fn from(frame: Frame) -> Self {
        StackFrame {
            function: frame.function,
            module: frame.module,
            address: format!("{:#x}", frame.address),
            offset: frame.module_offset,
            file: frame.file,
            line: frame.line,
            inlined: frame.inlined,
        }
    }
}

impl StackFrame {
    /// The name shown for this frame: the function, else `module+0xoffset`, else the address.
    pub fn display_name(&self) -> String {
        match (&self.function, self.module.as_str()) {
            (Some(function), _) => function.clone(),
            (None, "[unknown]") => self.address.clone(),
            (None, module) => format!("{module}+{:#x}", self.offset),
        }
    }

    /// Whether this frame belongs to the allocation machinery between the program's code and
    /// the probed function: Rust's liballoc and `std::alloc` (`Vec::push`, `RawVec`,
    /// `__rust_alloc`), C++'s `operator new` and standard allocators.
    pub fn is_allocation_plumbing(&self) -> bool {
        let Some(function) = self.function.as_deref() else {
            return false;
        };
        const PREFIXES: [&str; 12] = [
            "alloc::",
            "<alloc::",
            "core::alloc::",
            "std::alloc::",
            "<std::alloc::",
            "__rust_alloc",
            "__rust_realloc",
            "__rdl_",
            "__rg_",
            "operator new",
            "std::__new_allocator",
            "__gnu_cxx::new_allocator",
        ];
        PREFIXES.iter().any(|prefix| function.starts_with(prefix))
            || function.contains(" as alloc::")
            || function.starts_with("std::allocator_traits")
    }

    /// The name shown in flame graphs: `function (file:line)` with the file's base name when
    /// the source location is known, else [`StackFrame::display_name`].
    pub fn located_name(&self) -> String {
        let name = self.display_name();
        match (&self.function, &self.file, self.line) {
            (Some(_), Some(file), Some(line)) => {
                let base = file.rsplit('/').next().unwrap_or(file);
                format!("{name} ({base}:{line})")
            }
            _ => name,
        }
    }
}

/// Builds the report from the final heap state, without per-site statistics (`sites` is
/// empty). Symbolizes only the stacks that appear in it.
pub fn build_report(
    heap: &HeapState,
    stacks: &StackTable,
    symbolizer: &mut Symbolizer,
    meta: &ReportMeta,
) -> Report {
    build_report_with_sites(heap, stacks, &SiteStats::default(), None, symbolizer, meta)
}

/// Builds the report from the final heap state and the per-site statistics of the same
/// events (`Recorder::sites`). Symbolizes in full only the sites it lists (the first
/// [`LISTED_SITES`] of `leaks`, `mappings` and `sites`); every stack gets its name and its
/// flame-graph path from each of its return addresses, symbolized once
/// ([`Report::flame_stacks`]).
pub fn build_report_with_sites(
    heap: &HeapState,
    stacks: &StackTable,
    site_stats: &SiteStats,
    leak_check: Option<&LeakCheck>,
    symbolizer: &mut Symbolizer,
    meta: &ReportMeta,
) -> Report {
    let mut names = StackNames::new(symbolizer);
    build_sites_report(heap, stacks, site_stats, leak_check, &mut names, meta)
}

/// [`build_report_with_sites`] naming stacks with `names`, which the rest of the report
/// (the analyses) goes on using.
pub(crate) fn build_sites_report(
    heap: &HeapState,
    stacks: &StackTable,
    site_stats: &SiteStats,
    leak_check: Option<&LeakCheck>,
    names: &mut StackNames<'_>,
    meta: &ReportMeta,
) -> Report {
    let stats = heap.stats();
    let secs = |ts_ns: u64| ts_ns.saturating_sub(meta.start_ns) as f64 / 1e9;
    // The functions that freed a block a second time (one frame each, inlined ones expanded).
    let mut double_free_callers = heap
        .double_frees()
        .iter()
        .map(|double| match double.freed_from {
            0 => Vec::new(),
            caller => names.frames(&[caller]),
        })
        .collect::<Vec<_>>()
        .into_iter();
    // With a leak check, a site is one entry per class, and the flame graph of leaks weighs
    // only what is lost.
    let class_of = |addr: u64| leak_check.map(|check| check.class_of(addr));
    let leak_sites = site_totals_by_class(
        heap.blocks()
            .map(|(addr, block)| ((block.stack, class_of(addr)), block.size, block.ts_ns)),
    );
    let (leaks, unlisted_leaks) = list_sites(
        leak_sites
            .iter()
            .map(|(&(stack, _), totals)| (stack, totals)),
        stacks,
        names,
        secs,
    );
    drop(leak_sites);
    let leak_totals = site_totals(
        heap.blocks()
            .map(|(_, block)| (block.stack, block.size, block.ts_ns)),
    );
    let lost_totals = site_totals(
        heap.blocks()
            .filter(|&(addr, _)| class_of(addr).is_some_and(Reachability::is_lost))
            .map(|(_, block)| (block.stack, block.size, block.ts_ns)),
    );
    let region_totals = site_totals(
        heap.regions()
            .map(|(start, region)| (region.stack, region.end - start, region.ts_ns)),
    );
    let (mappings, unlisted_mappings) = list_sites(
        region_totals.iter().map(|(&stack, totals)| (stack, totals)),
        stacks,
        names,
        secs,
    );
    let double_frees = heap
        .double_frees()
        .iter()
        .map(|double| DoubleFreeSite {
            address: format!("{:#x}", double.addr),
            size: double.size,
            alloc_stack: double
                .alloc_stack
                .map(|id| names.stack_frames(stacks, id))
                .unwrap_or_default(),
            time_secs: secs(double.ts_ns),
            tid: double.tid,
            freed_from: double_free_callers.next().unwrap_or_default(),
        })
        .collect();
    let (sites, unlisted_sites) = list_allocation_sites(site_stats, stacks, names, secs);

    // The flame graphs' stacks: every site, listed or not, once per stack id (a stack that
    // allocated is in `site_stats`, with its leaks if it has any).
    let mut path = Vec::new();
    let mut attributed = StackWeights::default();
    for (id, counts) in site_stats.iter() {
        names.folded_path(stacks.get(id), stacks.is_truncated(id), &mut path);
        let weights = StackWeights {
            leaked_bytes: leak_totals.get(&Some(id)).map_or(0, |totals| totals.bytes),
            lost_bytes: lost_totals.get(&Some(id)).map_or(0, |totals| totals.bytes),
            allocated_bytes: counts.allocated_bytes,
            allocations: counts.allocations,
            peak_bytes: counts.peak_live_bytes,
        };
        attributed.add(&weights);
        names.flames.add(&path, &weights);
    }
    // Leaks of no such stack: blocks without one, and (with per-site statistics left out)
    // every leak.
    for (stack, totals) in &leak_totals {
        if stack.is_some_and(|id| site_stats.get(id).allocations > 0) {
            continue;
        }
        let frames = stack.map(|id| stacks.get(id)).unwrap_or_default();
        let truncated = stack.is_some_and(|id| stacks.is_truncated(id));
        names.folded_path(frames, truncated, &mut path);
        let weights = StackWeights {
            leaked_bytes: totals.bytes,
            lost_bytes: lost_totals.get(stack).map_or(0, |lost| lost.bytes),
            ..StackWeights::default()
        };
        names.flames.add(&path, &weights);
    }
    drop(leak_totals);
    drop(lost_totals);
    let mut flames = std::mem::take(&mut names.flames);

    let by_function = EventKind::ALL
        .iter()
        .map(|&kind| (kind, stats.by_function[kind as usize]))
        .filter(|(_, counts)| counts.calls > 0)
        .map(|(kind, counts)| {
            let count = CallCount {
                calls: counts.calls,
                bytes: counts.bytes,
            };
            (kind.symbol().to_owned(), count)
        })
        .collect();
    let mmap = stats.mmap;
    let mut report = Report {
        memprof_version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: meta.mode,
        target: Target {
            command: meta.command.clone(),
            executable: meta.executable.clone(),
            pid: meta.pid,
            exit: meta.exit,
            duration_secs: meta.duration.as_secs_f64(),
            peak_rss_bytes: None,
            held: None,
            capture: None,
        },
        probes: meta.probes.clone(),
        summary: Summary {
            allocations: stats.allocations,
            failed_allocations: stats.failed_allocations,
            frees: stats.frees,
            bytes_allocated: stats.bytes_allocated,
            live_blocks: stats.live_blocks,
            live_bytes: stats.live_bytes,
            peak_live_bytes: stats.peak_live_bytes,
            peak_live_blocks: stats.peak_live_blocks,
            peak_time_secs: stats.peak_ts_ns.map(secs),
            lost_events: meta.lost.total(),
            unknown_frees: stats.unknown_frees,
            double_frees: stats.double_frees,
            allocator_internal_frees: stats.allocator_internal_frees,
            unknown_reallocs: stats.unknown_reallocs,
            overwritten_blocks: stats.overwritten_blocks,
            released_by_exec: (stats.released_by_exec_blocks > 0).then_some(Released {
                blocks: stats.released_by_exec_blocks,
                bytes: stats.released_by_exec_bytes,
            }),
            inherited_at_fork: (stats.inherited_blocks > 0).then_some(Released {
                blocks: stats.inherited_blocks,
                bytes: stats.inherited_bytes,
            }),
            by_function: KindMap(by_function),
            mmap: MmapSummary {
                calls: mmap.calls,
                failed_calls: mmap.failed_calls,
                bytes: mmap.bytes,
                allocator_internal_mmaps: mmap.allocator_internal_mmaps,
                munmap_calls: mmap.munmap_calls,
                unknown_munmaps: mmap.unknown_munmaps,
                allocator_internal_munmaps: mmap.allocator_internal_munmaps,
                live_regions: mmap.live_regions,
                live_bytes: mmap.live_bytes,
                peak_bytes: mmap.peak_bytes,
            },
            leak_check: leak_check.map(|check| check.summary.clone()),
        },
        lost: lost::describe(&meta.lost),
        leaks,
        unlisted_leaks,
        mappings,
        unlisted_mappings,
        double_frees,
        sites,
        unlisted_sites,
        modules: names
            .symbolizer()
            .modules()
            .into_iter()
            .map(ModuleFile::from)
            .collect(),
        analyses: None,
        warnings: Vec::new(),
        processes: Vec::new(),
        flame_stacks: None,
    };
    flames.add_unattributed(&report, &attributed);
    report.flame_stacks = Some(Arc::new(flames.finish()));
    report
}

/// A site before it is listed or summed up: its stack, the id of its name
/// ([`StackNames::site_name`]) and its figures.
struct Candidate<T> {
    stack: Option<StackId>,
    name: u32,
    figures: T,
}

/// Puts the first [`LISTED_SITES`] of `candidates` in report order and returns them, then
/// the others (in no order). Report order: `weight` descending (a major and a minor figure),
/// then the site's name, its return addresses, truncated last; the stack id breaks the ties
/// left (a site without a stack and one with an empty stack), so hash order never shows.
fn split_listed<T, W: Ord>(
    mut candidates: Vec<Candidate<T>>,
    weight: impl Fn(&T) -> W,
    stacks: &StackTable,
    names: &StackNames<'_>,
) -> (Vec<Candidate<T>>, Vec<Candidate<T>>) {
    let addresses = |c: &Candidate<T>| c.stack.map(|id| stacks.get(id)).unwrap_or_default();
    let truncated = |c: &Candidate<T>| c.stack.is_some_and(|id| stacks.is_truncated(id));
    let order = |a: &Candidate<T>, b: &Candidate<T>| {
        weight(&b.figures)
            .cmp(&weight(&a.figures))
            .then_with(|| names.display_name(a.name).cmp(names.display_name(b.name)))
            .then_with(|| addresses(a).cmp(addresses(b)))
            .then_with(|| truncated(a).cmp(&truncated(b)))
            .then(a.stack.cmp(&b.stack))
    };
    let mut rest = Vec::new();
    if candidates.len() > LISTED_SITES {
        // The first LISTED_SITES end up before index LISTED_SITES, in some order.
        candidates.select_nth_unstable_by(LISTED_SITES, order);
        rest = candidates.split_off(LISTED_SITES);
    }
    candidates.sort_unstable_by(order);
    (candidates, rest)
}

/// Every site that allocated: the first [`LISTED_SITES`] symbolized, in report order, and
/// the others summed up.
fn list_allocation_sites(
    site_stats: &SiteStats,
    stacks: &StackTable,
    names: &mut StackNames<'_>,
    secs: impl Fn(u64) -> f64,
) -> (Vec<AllocationSite>, Option<UnlistedAllocationSites>) {
    let candidates: Vec<Candidate<SiteCounts>> = site_stats
        .iter()
        .map(|(id, counts)| Candidate {
            stack: Some(id),
            name: names.site_name(stacks.get(id)),
            figures: counts,
        })
        .collect();
    let weight = |counts: &SiteCounts| (counts.allocated_bytes, counts.allocations);
    let (listed, rest) = split_listed(candidates, weight, stacks, names);
    let listed = listed
        .into_iter()
        .map(|candidate| {
            let counts = candidate.figures;
            let id = candidate.stack.expect("allocation sites have a stack");
            AllocationSite {
                allocations: counts.allocations,
                allocated_bytes: counts.allocated_bytes,
                live_blocks: counts.live_blocks,
                live_bytes: counts.live_bytes,
                peak_live_blocks: counts.peak_live_blocks,
                peak_live_bytes: counts.peak_live_bytes,
                first_alloc_secs: secs(counts.first_ts_ns),
                last_alloc_secs: secs(counts.last_ts_ns),
                stack: names.stack_frames(stacks, id),
                truncated: stacks.is_truncated(id),
            }
        })
        .collect();
    let unlisted = (!rest.is_empty()).then(|| {
        let mut sum = UnlistedAllocationSites::default();
        for candidate in &rest {
            let counts = &candidate.figures;
            sum.sites += 1;
            sum.allocations += counts.allocations;
            sum.allocated_bytes += counts.allocated_bytes;
            sum.live_blocks += counts.live_blocks;
            sum.live_bytes += counts.live_bytes;
            sum.peak_live_blocks += counts.peak_live_blocks;
            sum.peak_live_bytes += counts.peak_live_bytes;
        }
        sum
    });
    (listed, unlisted)
}

/// A leak site: its stack and, when a leak check ran, the class of its blocks.
type SiteKey = (Option<StackId>, Option<Reachability>);

#[derive(Clone, Copy)]
struct SiteTotals {
    /// The leak check's class of these blocks, when one ran: a site whose blocks fall in
    /// different classes is one entry per class.
    class: Option<Reachability>,
    blocks: u64,
    bytes: u64,
    first_ns: u64,
    last_ns: u64,
}

/// Groups (stack, bytes, time) items by stack.
fn site_totals(
    items: impl Iterator<Item = (Option<StackId>, u64, u64)>,
) -> FastHashMap<Option<StackId>, SiteTotals> {
    site_totals_by_class(items.map(|(stack, bytes, ts_ns)| ((stack, None), bytes, ts_ns)))
        .into_iter()
        .map(|((stack, _), totals)| (stack, totals))
        .collect()
}

/// Groups (stack and class, bytes, time) items by stack and class.
fn site_totals_by_class(
    items: impl Iterator<Item = (SiteKey, u64, u64)>,
) -> FastHashMap<SiteKey, SiteTotals> {
    let mut totals: FastHashMap<SiteKey, SiteTotals> = FastHashMap::default();
    for (key, bytes, ts_ns) in items {
        let site = totals.entry(key).or_insert(SiteTotals {
            class: key.1,
            blocks: 0,
            bytes: 0,
            first_ns: ts_ns,
            last_ns: ts_ns,
        });
        site.blocks += 1;
        site.bytes += bytes;
        site.first_ns = site.first_ns.min(ts_ns);
        site.last_ns = site.last_ns.max(ts_ns);
    }
    totals
}

/// The grouped sites: the first [`LISTED_SITES`] symbolized, in report order, and the others
/// summed up.
fn list_sites<'t>(
    totals: impl Iterator<Item = (Option<StackId>, &'t SiteTotals)>,
    stacks: &StackTable,
    names: &mut StackNames<'_>,
    secs: impl Fn(u64) -> f64,
) -> (Vec<Site>, Option<UnlistedSites>) {
    let candidates: Vec<Candidate<SiteTotals>> = totals
        .map(|(stack, &figures)| Candidate {
            stack,
            name: stack.map_or(0, |id| names.site_name(stacks.get(id))),
            figures,
        })
        .collect();
    // The worst class first (lost before still reachable), then the most bytes.
    let weight =
        |totals: &SiteTotals| (std::cmp::Reverse(totals.class), totals.bytes, totals.blocks);
    let (listed, rest) = split_listed(candidates, weight, stacks, names);
    let listed = listed
        .into_iter()
        .map(|candidate| {
            let t = candidate.figures;
            Site {
                blocks: t.blocks,
                bytes: t.bytes,
                first_seen_secs: secs(t.first_ns),
                last_seen_secs: secs(t.last_ns),
                stack: candidate
                    .stack
                    .map(|id| names.stack_frames(stacks, id))
                    .unwrap_or_default(),
                truncated: candidate.stack.is_some_and(|id| stacks.is_truncated(id)),
                reachability: t.class,
            }
        })
        .collect();
    let unlisted = (!rest.is_empty()).then(|| UnlistedSites {
        sites: rest.len() as u64,
        blocks: rest.iter().map(|c| c.figures.blocks).sum(),
        bytes: rest.iter().map(|c| c.figures.bytes).sum(),
    });
    (listed, unlisted)
}

/// The frame a site is named after: the first one outside the allocation plumbing, so a leak
/// through `Vec::push` or `new` is named after the code that pushed or called `new`. When
/// every frame is plumbing, the innermost one.
pub fn site_frame(stack: &[StackFrame]) -> Option<&StackFrame> {
    stack
        .iter()
        .find(|frame| !frame.is_allocation_plumbing())
        .or(stack.first())
}

#[cfg(test)]
mod tests;
