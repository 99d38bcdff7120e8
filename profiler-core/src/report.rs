//! The report: a plain, serializable model of one profiling session. Its serde form IS the
//! JSON schema (`report.json`); renderers read only this.
//!
//! Times are seconds since the session start (`ReportMeta::start_ns`, same clock as events).
//! Stacks are innermost first: frame 0 is the function that called the allocator.

use crate::heap::{HeapState, Mode};
use crate::stacks::{StackId, StackTable};
use crate::symbolize::{Frame, Symbolizer};
use profiler_common::{EventKind, KIND_SLOTS};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

mod kind_map;
mod lost;

pub use kind_map::KindMap;

/// Everything about the session that is not in the events; supplied by the collector.
#[derive(Clone, Debug)]
pub struct ReportMeta {
    pub command: Vec<String>,
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
    /// desc, then first frame name.
    pub leaks: Vec<Site>,
    /// Live mmap regions at the end, grouped by the stack that mapped them; same order.
    pub mappings: Vec<Site>,
    /// Run mode only: frees of already-freed pointers, in order (at most 1024 kept; the
    /// summary counts all).
    pub double_frees: Vec<DoubleFreeSite>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// argv of the launched command; empty in attach mode when unknown.
    pub command: Vec<String>,
    pub pid: u32,
    /// How the target ended; null if it was still running (attach, or interrupted).
    pub exit: Option<ExitStatus>,
    /// Wall time of the recording.
    pub duration_secs: f64,
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
    /// reallocs of pointers that were not live.
    pub unknown_reallocs: u64,
    /// Allocations that returned a still-live address: the old block's free was lost.
    pub overwritten_blocks: u64,
    /// Per probed function with at least one call, in probe order. `bytes`: allocators:
    /// requested bytes of successful calls; free: bytes of the live blocks it released; mmap
    /// and mremap: page-rounded bytes mapped; munmap: tracked bytes unmapped.
    pub by_function: KindMap<CallCount>,
    pub mmap: MmapSummary,
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
    /// Page-rounded bytes of successful mmaps.
    pub bytes: u64,
    pub munmap_calls: u64,
    /// munmaps of no tracked region (mappings from before the probes, the allocator's own).
    pub unknown_munmaps: u64,
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
    /// Allocations recorded without a stack (listed under an empty stack in `leaks`).
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
}

/// Builds the report from the final heap state. Symbolizes only the stacks that appear in it.
pub fn build_report(
    heap: &HeapState,
    stacks: &StackTable,
    symbolizer: &mut Symbolizer,
    meta: &ReportMeta,
) -> Report {
    let stats = heap.stats();
    let secs = |ts_ns: u64| ts_ns.saturating_sub(meta.start_ns) as f64 / 1e9;
    let mut symbolize_stack = |stack: Option<StackId>| -> Vec<StackFrame> {
        stack
            .map(|id| {
                stacks
                    .get(id)
                    .iter()
                    .map(|&addr| symbolizer.symbolize(addr).into())
                    .collect()
            })
            .unwrap_or_default()
    };

    let leaks = heap
        .blocks()
        .map(|(_, block)| (block.stack, block.size, block.ts_ns));
    let leaks = group_sites(leaks, stacks, &mut symbolize_stack, secs);
    let regions = heap
        .regions()
        .map(|(start, region)| (region.stack, region.end - start, region.ts_ns));
    let mappings = group_sites(regions, stacks, &mut symbolize_stack, secs);
    let double_frees = heap
        .double_frees()
        .iter()
        .map(|double| DoubleFreeSite {
            address: format!("{:#x}", double.addr),
            size: double.size,
            alloc_stack: symbolize_stack(double.alloc_stack),
            time_secs: secs(double.ts_ns),
            tid: double.tid,
        })
        .collect();

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
    Report {
        memprof_version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: meta.mode,
        target: Target {
            command: meta.command.clone(),
            pid: meta.pid,
            exit: meta.exit,
            duration_secs: meta.duration.as_secs_f64(),
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
            unknown_reallocs: stats.unknown_reallocs,
            overwritten_blocks: stats.overwritten_blocks,
            by_function: KindMap(by_function),
            mmap: MmapSummary {
                calls: mmap.calls,
                failed_calls: mmap.failed_calls,
                bytes: mmap.bytes,
                munmap_calls: mmap.munmap_calls,
                unknown_munmaps: mmap.unknown_munmaps,
                live_regions: mmap.live_regions,
                live_bytes: mmap.live_bytes,
                peak_bytes: mmap.peak_bytes,
            },
        },
        lost: lost::describe(&meta.lost),
        leaks,
        mappings,
        double_frees,
    }
}

#[derive(Clone, Copy)]
struct SiteTotals {
    blocks: u64,
    bytes: u64,
    first_ns: u64,
    last_ns: u64,
}

/// Groups (stack, bytes, time) items by stack and sorts the sites in report order.
fn group_sites(
    items: impl Iterator<Item = (Option<StackId>, u64, u64)>,
    stacks: &StackTable,
    symbolize_stack: &mut impl FnMut(Option<StackId>) -> Vec<StackFrame>,
    secs: impl Fn(u64) -> f64,
) -> Vec<Site> {
    let mut totals: HashMap<Option<StackId>, SiteTotals> = HashMap::new();
    for (stack, bytes, ts_ns) in items {
        let site = totals.entry(stack).or_insert(SiteTotals {
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
    let mut sites: Vec<(Site, &[u64])> = totals
        .into_iter()
        .map(|(stack, t)| {
            let site = Site {
                blocks: t.blocks,
                bytes: t.bytes,
                first_seen_secs: secs(t.first_ns),
                last_seen_secs: secs(t.last_ns),
                stack: symbolize_stack(stack),
                truncated: stack.is_some_and(|id| stacks.is_truncated(id)),
            };
            (site, stack.map(|id| stacks.get(id)).unwrap_or_default())
        })
        .collect();
    // Raw addresses break the remaining ties so the order never depends on hash order.
    sites.sort_by(|(a, a_addrs), (b, b_addrs)| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.blocks.cmp(&a.blocks))
            .then_with(|| first_frame_name(a).cmp(&first_frame_name(b)))
            .then_with(|| a_addrs.cmp(b_addrs))
            .then(a.truncated.cmp(&b.truncated))
    });
    sites.into_iter().map(|(site, _)| site).collect()
}

fn first_frame_name(site: &Site) -> String {
    site.stack
        .first()
        .map(StackFrame::display_name)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
