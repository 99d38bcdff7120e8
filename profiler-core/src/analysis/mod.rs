//! The analyses users come for, as pure functions of the event stream: the heap over time,
//! leaks and steady growth, lifetimes, size classes and internal fragmentation, external
//! fragmentation, realloc chains and odd frees, and cost per operation.
//!
//! Each analysis is an [`Analysis`]: its own state, fed with every applied event
//! ([`Analysis::observe`]), and its section of the report with the stacks it refers to
//! ([`Analysis::report`]), in its own module with its schema. [`Analyses`] only composes them:
//! it keeps the facts several of them read (the live bytes and blocks, and glibc's mmap
//! threshold), feeds each event to all, and puts their sections into [`AnalysesReport`], the
//! `analyses` section of report.json. Memory is bounded by the live heap and the number of
//! sites, never by the number of events (histograms and timelines are fixed-size and
//! coarsen); per-site figures come from [`SiteStats`], not from a copy of them.

pub mod allocator;
pub mod fragmentation;
pub mod growth;
pub mod lifetimes;
mod packed_blocks;
pub mod reallocs;
pub mod sizes;
pub mod timeline;

#[cfg(test)]
mod tests;

use crate::event::Event;
use crate::heap::{Effect, HeapState};
use crate::recorder::Recorder;
use crate::report::StackFrame;
use crate::report::stack_names::StackNames;
use crate::sites::SiteStats;
use crate::stacks::StackId;
use allocator::{Allocator, GlibcMmap};
use fragmentation::PeakBlocks;
use growth::Growth;
use lifetimes::Lifetimes;
use reallocs::Reallocs;
use serde::{Deserialize, Serialize};
use sizes::Sizes;
use std::collections::{BTreeMap, BTreeSet};
use timeline::{Timeline, TimelinePoint};

pub use fragmentation::{FragmentationReport, FragmentationSnapshot, OverheadPoint};
pub use growth::{GrowingSite, LeaksReport, LiveAtEnd, OldBlock};
pub use lifetimes::{LifetimeBucket, LifetimesReport, PoolCandidate, SiteLifetime, SizeCount};
pub use reallocs::{ChainReport, OddFreeReport, ReallocsReport};
pub use sizes::SizeClassesReport;
pub use timeline::{PeakReport, SiteAtPeak, TimelineReport};

/// Rows kept in the lists of the report (sites at the peak, growing sites, oldest blocks...).
pub const TOP: usize = 10;

/// One analysis: what it keeps while the events are applied, and what it reports at the end.
pub trait Analysis {
    /// Its part of [`AnalysesReport`].
    type Report;
    /// Follows one applied event.
    fn observe(&mut self, seen: &Observed<'_>);
    /// Its part of the report, from its state and the session's end.
    fn report(&self, end: &SessionEnd<'_>) -> Self::Report;
}

/// One applied event as every analysis sees it.
pub struct Observed<'a> {
    pub event: &'a Event,
    /// What it did to the heap.
    pub effect: &'a Effect,
    /// Live malloc-family bytes and blocks after it.
    pub live_bytes: u64,
    pub live_blocks: u64,
    /// glibc's mmap threshold after it (which of its blocks glibc would mmap).
    pub glibc: &'a GlibcMmap,
}

/// What the report needs besides the analyses' own state.
#[derive(Clone, Copy, Debug)]
pub struct AnalysisInput<'a> {
    pub heap: &'a HeapState,
    pub sites: &'a SiteStats,
    /// Session start and end, CLOCK_MONOTONIC ns (times are reported relative to the start).
    pub start_ns: u64,
    pub end_ns: u64,
    /// The allocator serving the target.
    pub allocator: Allocator,
}

/// The session's end as each [`Analysis`] reports it: [`AnalysisInput`] (read through it),
/// with an end never before the last event, and glibc's mmap threshold then.
#[derive(Clone, Copy, Debug)]
pub struct SessionEnd<'a> {
    input: AnalysisInput<'a>,
    pub glibc: &'a GlibcMmap,
}

impl<'a> std::ops::Deref for SessionEnd<'a> {
    type Target = AnalysisInput<'a>;

    fn deref(&self) -> &AnalysisInput<'a> {
        &self.input
    }
}

impl AnalysisInput<'_> {
    /// Seconds from the session's start to `ts_ns`.
    pub fn secs(&self, ts_ns: u64) -> f64 {
        ts_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

/// Every analysis, composed.
#[derive(Debug, Default)]
pub struct Analyses {
    timeline: Timeline,
    growth: Growth,
    lifetimes: Lifetimes,
    sizes: Sizes,
    peak_blocks: PeakBlocks,
    /// The fragmentation at the peak as the live session reported it: a replay that answers
    /// from a recording takes it from there and keeps no blocks of the peak (`peak_given`).
    recorded_peak: Option<Option<FragmentationSnapshot>>,
    peak_given: bool,
    reallocs: Reallocs,
    /// Live malloc-family bytes and blocks now.
    live_bytes: u64,
    live_blocks: u64,
    /// glibc's mmap threshold now (it follows frees).
    glibc: GlibcMmap,
    /// Latest timestamp observed (events and RSS samples).
    last_ns: u64,
}

impl Analyses {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lifetimes of freed blocks so far, per site (the live view's Lifetimes).
    pub fn lifetimes(&self) -> &Lifetimes {
        &self.lifetimes
    }

    /// Each site's least-squares growth so far (the live view's Growing).
    pub fn growth(&self) -> &Growth {
        &self.growth
    }

    /// Requested sizes so far (the live view's Sizes).
    pub fn sizes(&self) -> &Sizes {
        &self.sizes
    }

    /// The fragmentation at the peak will come from the recording being replayed
    /// ([`Analyses::take_recorded_peak`]): the blocks live at the peak are not kept.
    pub fn expect_recorded_peak(&mut self) {
        self.peak_given = true;
    }

    /// The fragmentation at the peak as the recording gives it (see
    /// [`Analyses::expect_recorded_peak`]).
    pub fn take_recorded_peak(&mut self, at_peak: Option<FragmentationSnapshot>) {
        self.recorded_peak = Some(at_peak);
    }

    /// Follows one applied event.
    pub fn observe(&mut self, event: &Event, effect: &Effect) {
        self.last_ns = self.last_ns.max(event.ts_ns);
        for (_, block) in effect.ended() {
            self.live_bytes -= block.size;
            self.live_blocks -= 1;
        }
        if let Some((_, block)) = &effect.created {
            self.live_bytes += block.size;
            self.live_blocks += 1;
        }
        // A free (not a realloc's release) moves glibc's threshold. No event both frees and
        // allocates, so the analyses all see the threshold the allocation met.
        if let Some((_, block)) = &effect.released
            && effect.created.is_none()
        {
            self.glibc.freed(block.size);
        }
        let seen = Observed {
            event,
            effect,
            live_bytes: self.live_bytes,
            live_blocks: self.live_blocks,
            glibc: &self.glibc,
        };
        self.timeline.observe(&seen);
        self.growth.observe(&seen);
        self.lifetimes.observe(&seen);
        if !self.peak_given {
            self.peak_blocks.observe(&seen);
        }
        self.reallocs.observe(&seen);
        self.sizes.observe(&seen);
    }

    /// Follows one sample of the target's resident set size.
    pub fn observe_rss(&mut self, ts_ns: u64, rss_bytes: u64) {
        self.last_ns = self.last_ns.max(ts_ns);
        self.timeline.observe_rss(ts_ns, rss_bytes);
    }

    /// The analyses' results, with stacks as ids (`stacks` is left empty: see
    /// `report_with_stacks`); `ops`, the operations the target performed, gives the
    /// per-operation costs.
    pub fn report(&self, input: &AnalysisInput<'_>, ops: Option<u64>) -> AnalysesReport {
        let input = SessionEnd {
            input: AnalysisInput {
                end_ns: input.end_ns.max(self.last_ns),
                ..*input
            },
            glibc: &self.glibc,
        };
        let timeline = self.timeline.report(&input);
        let snapshots = self.peak_blocks.report(&input);
        let fragmentation = FragmentationReport {
            allocator: input.allocator,
            at_peak: match &self.recorded_peak {
                Some(at_peak) => at_peak.clone(),
                None => snapshots.at_peak,
            },
            at_end: snapshots.at_end,
            overhead: overhead(&timeline.points),
        };
        AnalysesReport {
            timeline,
            leaks: self.growth.report(&input),
            lifetimes: self.lifetimes.report(&input),
            size_classes: self.sizes.report(&input),
            fragmentation,
            reallocs: self.reallocs.report(&input),
            per_operation: ops.map(|ops| per_operation(input.heap, ops)),
            stacks: BTreeMap::new(),
        }
    }
}

/// Allocator overhead over time: RSS against live requested bytes, at the timeline points
/// that have an RSS sample.
fn overhead(points: &[TimelinePoint]) -> Vec<OverheadPoint> {
    points
        .iter()
        .filter_map(|point| {
            let rss = point.rss_bytes?;
            Some(OverheadPoint {
                time_secs: point.time_secs,
                rss_bytes: rss,
                live_bytes: point.live_bytes,
                rss_per_live_byte: (point.live_bytes > 0)
                    .then(|| rss as f64 / point.live_bytes as f64),
            })
        })
        .collect()
}

fn per_operation(heap: &HeapState, ops: u64) -> PerOperation {
    let stats = heap.stats();
    let per = |value: u64| {
        if ops == 0 {
            0.0
        } else {
            value as f64 / ops as f64
        }
    };
    PerOperation {
        ops,
        allocations_per_op: per(stats.allocations),
        bytes_per_op: per(stats.bytes_allocated),
        frees_per_op: per(stats.frees),
    }
}

/// The fragmentation at the peak of `recorder`'s heap, as its report would give it with
/// `allocator` serving: what a writer without a report (a synthetic recording, a test)
/// records at the heap's end.
pub fn fragmentation_at_peak(
    recorder: &Recorder,
    allocator: Allocator,
) -> Option<FragmentationSnapshot> {
    let analyses = &recorder.analyses;
    let input = AnalysisInput {
        heap: &recorder.heap,
        sites: &recorder.sites,
        start_ns: 0,
        end_ns: analyses.last_ns,
        allocator,
    };
    let end = SessionEnd {
        input,
        glibc: &analyses.glibc,
    };
    analyses.peak_blocks.report(&end).at_peak
}

/// Session facts the analyses need that are not in the events.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnalysisOptions {
    pub start_ns: u64,
    pub end_ns: u64,
    /// Operations the target performed, for per-operation costs.
    pub ops: Option<u64>,
}

/// The analyses of `recorder`, with their stacks symbolized through `names` (the report's
/// one cache of symbolized stacks). `allocator` is the one serving the target.
pub(crate) fn report_with_stacks(
    recorder: &Recorder,
    names: &mut StackNames<'_>,
    options: &AnalysisOptions,
    allocator: Allocator,
) -> AnalysesReport {
    let input = AnalysisInput {
        heap: &recorder.heap,
        sites: &recorder.sites,
        start_ns: options.start_ns,
        end_ns: options.end_ns,
        allocator,
    };
    let mut analyses = recorder.analyses.report(&input, options.ops);
    for id in analyses.stack_ids() {
        let frames = names.stack_frames(&recorder.stacks, StackId(id));
        analyses.stacks.insert(id, frames);
    }
    analyses
}

impl AnalysesReport {
    /// Every stack id the analyses refer to.
    pub fn stack_ids(&self) -> BTreeSet<u32> {
        let mut ids = BTreeSet::new();
        ids.extend(self.timeline.stack_ids());
        ids.extend(self.leaks.stack_ids());
        ids.extend(self.lifetimes.stack_ids());
        ids.extend(self.reallocs.stack_ids());
        ids
    }

    /// The symbolized stack of `id`, if the report has it.
    pub fn stack(&self, id: u32) -> &[StackFrame] {
        self.stacks.get(&id).map(Vec::as_slice).unwrap_or_default()
    }
}

/// The `analyses` section of report.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysesReport {
    pub timeline: TimelineReport,
    pub leaks: LeaksReport,
    pub lifetimes: LifetimesReport,
    pub size_classes: SizeClassesReport,
    pub fragmentation: FragmentationReport,
    pub reallocs: ReallocsReport,
    /// Present when the number of operations was given (`--ops`).
    pub per_operation: Option<PerOperation>,
    /// The stacks referred to by `stack_id` fields above, symbolized, innermost first.
    pub stacks: BTreeMap<u32, Vec<StackFrame>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerOperation {
    pub ops: u64,
    pub allocations_per_op: f64,
    pub bytes_per_op: f64,
    pub frees_per_op: f64,
}
