//! The analyses users come for, as pure functions of the event stream: the heap over time,
//! leaks and steady growth, lifetimes, size classes and internal fragmentation, external
//! fragmentation, realloc chains and odd frees, and cost per operation.
//!
//! [`Analyses`] is fed by `Recorder::apply` with each event and its [`Effect`], and with RSS
//! samples; its memory is bounded by the live heap and the number of sites, never by the
//! number of events (histograms and timelines are fixed-size and coarsen). At the end,
//! [`Analyses::report`] turns it into [`AnalysesReport`], the `analyses` section of
//! report.json; per-site figures come from [`SiteStats`], not from a copy of them.

pub mod allocator;
pub mod fragmentation;
pub mod growth;
pub mod lifetimes;
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
use allocator::Allocator;
use fragmentation::{FragmentationSnapshot, PeakBlocks};
use growth::Growth;
use lifetimes::{LIFETIME_BUCKETS, Lifetimes};
use reallocs::Reallocs;
use serde::{Deserialize, Serialize};
use sizes::{SizeClassesReport, Sizes};
use std::collections::{BTreeMap, BTreeSet};
use timeline::{Timeline, TimelinePoint};

/// Rows kept in the lists of the report (sites at the peak, growing sites, oldest blocks...).
pub const TOP: usize = 10;

/// Every analysis' running state.
#[derive(Debug, Default)]
pub struct Analyses {
    timeline: Timeline,
    growth: Growth,
    lifetimes: Lifetimes,
    sizes: Sizes,
    peak_blocks: PeakBlocks,
    reallocs: Reallocs,
    /// Latest timestamp observed (events and RSS samples).
    last_ns: u64,
    /// Operations the target performed (`--ops`), if known.
    ops: Option<u64>,
}

/// What the report needs besides the analyses' own state.
#[derive(Clone, Copy, Debug)]
pub struct AnalysisInput<'a> {
    pub heap: &'a HeapState,
    pub sites: &'a SiteStats,
    /// Session start and end, CLOCK_MONOTONIC ns (times are reported relative to the start).
    pub start_ns: u64,
    pub end_ns: u64,
    pub allocator: Allocator,
    /// Operations the target performed (`--ops`), for per-operation costs.
    pub ops: Option<u64>,
}

impl Analyses {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lifetimes of freed blocks so far, per site (the live view's Lifetimes).
    pub fn lifetimes(&self) -> &Lifetimes {
        &self.lifetimes
    }

    /// Follows one applied event.
    pub fn observe(&mut self, event: &Event, _stack: Option<StackId>, effect: &Effect) {
        self.last_ns = self.last_ns.max(event.ts_ns);
        self.timeline.observe(event.ts_ns, effect);
        self.growth.observe(event.ts_ns, effect);
        self.lifetimes.observe(event.kind, event.ts_ns, effect);
        self.peak_blocks.observe(
            event.ts_ns,
            self.timeline.live_blocks(),
            self.sizes.glibc(),
            effect,
        );
        self.reallocs.observe(event, effect);
        if let Some((_, block)) = &effect.created {
            self.sizes.allocated(block.size);
        }
        if let Some((_, block)) = &effect.released
            && effect.created.is_none()
        {
            self.sizes.freed(block.size);
        }
    }

    /// Sets the number of operations the target performed, for per-operation costs.
    pub fn set_ops(&mut self, ops: Option<u64>) {
        self.ops = ops;
    }

    /// The number of operations the target performed, if known.
    pub fn ops(&self) -> Option<u64> {
        self.ops
    }

    /// Follows one sample of the target's resident set size.
    pub fn observe_rss(&mut self, ts_ns: u64, rss_bytes: u64) {
        self.last_ns = self.last_ns.max(ts_ns);
        self.timeline.observe_rss(ts_ns, rss_bytes);
    }

    /// The analyses' results, with stacks as ids (`stacks` is left empty: see [`attach`]).
    pub fn report(&self, input: &AnalysisInput<'_>) -> AnalysesReport {
        let secs = |ts_ns: u64| ts_ns.saturating_sub(input.start_ns) as f64 / 1e9;
        let end_ns = input.end_ns.max(self.last_ns);
        let timeline = self.timeline.points(secs);
        let glibc = self.sizes.glibc();
        let live_now = || {
            input
                .heap
                .blocks()
                .map(|(addr, block)| (addr, block.size, block.ts_ns))
        };
        let end_blocks: Vec<(u64, u64)> = live_now().map(|(a, s, _)| (a, s)).collect();
        let peak_blocks = self.peak_blocks.at_peak(live_now());
        let fragmentation = FragmentationReport {
            allocator: input.allocator,
            at_peak: self.peak_blocks.peak_ts_ns().map(|_| {
                let glibc = self.peak_blocks.glibc_at_peak();
                fragmentation::snapshot(&peak_blocks, input.allocator, glibc)
            }),
            at_end: fragmentation::snapshot(&end_blocks, input.allocator, glibc),
            overhead: timeline
                .points
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
                .collect(),
        };
        AnalysesReport {
            timeline: TimelineReport {
                bucket_secs: timeline.bucket_secs,
                peak: timeline.peak.map(|peak| PeakReport {
                    time_secs: secs(peak.ts_ns),
                    live_bytes: peak.bytes,
                    live_blocks: peak.blocks,
                    sites: sites_at_peak(input.sites),
                }),
                points: timeline.points,
            },
            leaks: self.leaks(input, end_ns, &secs),
            lifetimes: self.lifetimes_report(),
            size_classes: self.sizes.report(input.allocator),
            fragmentation,
            reallocs: self.reallocs_report(input.heap, &secs),
            per_operation: input.ops.map(|ops| per_operation(input.heap, ops)),
            stacks: BTreeMap::new(),
        }
    }

    fn leaks(
        &self,
        input: &AnalysisInput<'_>,
        end_ns: u64,
        secs: &impl Fn(u64) -> f64,
    ) -> LeaksReport {
        let mut fits: Vec<_> = self
            .growth
            .fits(end_ns)
            .into_iter()
            .filter(growth::Fit::is_steady_growth)
            .collect();
        fits.sort_by(|a, b| {
            b.slope_bytes_per_sec
                .total_cmp(&a.slope_bytes_per_sec)
                .then(a.stack.cmp(&b.stack))
        });
        let growing = fits
            .iter()
            .take(TOP)
            .map(|fit| {
                let counts = input.sites.get(fit.stack);
                GrowingSite {
                    stack_id: fit.stack.0,
                    slope_bytes_per_sec: fit.slope_bytes_per_sec,
                    r2: fit.r2,
                    monotonicity: fit.monotonicity,
                    live_blocks: counts.live_blocks,
                    live_bytes: counts.live_bytes,
                    allocations: counts.allocations,
                    first_seen_secs: secs(counts.first_ts_ns),
                    last_seen_secs: secs(counts.last_ts_ns),
                }
            })
            .collect();
        let mut oldest: Vec<(u64, u64, u64, Option<StackId>)> = input
            .heap
            .blocks()
            .map(|(addr, block)| (block.ts_ns, addr, block.size, block.stack))
            .collect();
        oldest.sort_unstable_by_key(|&(ts, addr, _, _)| (ts, addr));
        let stats = input.heap.stats();
        LeaksReport {
            live_at_end: LiveAtEnd {
                blocks: stats.live_blocks,
                bytes: stats.live_bytes,
                sites: input
                    .sites
                    .iter()
                    .filter(|(_, counts)| counts.live_blocks > 0)
                    .count() as u64,
            },
            growing,
            growth_rule: format!(
                "least-squares line of the site's live bytes over the window: slope > 0, r2 >= {}, \
                 and at least {}% of its changes were increases; ranked by slope",
                growth::MIN_R2,
                growth::MIN_MONOTONICITY * 100.0
            ),
            oldest: oldest
                .into_iter()
                .take(TOP)
                .map(|(ts, addr, size, stack)| OldBlock {
                    address: format!("{addr:#x}"),
                    size,
                    allocated_secs: secs(ts),
                    age_secs: end_ns.saturating_sub(ts) as f64 / 1e9,
                    stack_id: stack.map(|id| id.0),
                })
                .collect(),
        }
    }

    fn lifetimes_report(&self) -> LifetimesReport {
        let mut sites: Vec<_> = self.lifetimes.sites().collect();
        sites.sort_by(|(a_id, a), (b_id, b)| b.freed.cmp(&a.freed).then(a_id.cmp(b_id)));
        let pool_candidates = sites
            .iter()
            .filter(|(_, site)| site.is_pool_candidate())
            .take(TOP)
            .map(|(id, site)| PoolCandidate {
                stack_id: id.0,
                freed: site.freed,
                short_lived: site.short_lived,
                sizes: site
                    .sizes
                    .iter()
                    .filter(|(_, count)| *count > 0)
                    .map(|&(size, count)| SizeCount { size, count })
                    .collect(),
                other_sizes: site.other_sizes,
                min_size: site.min_size,
                max_size: site.max_size,
            })
            .collect();
        LifetimesReport {
            rule: format!(
                "pool or arena candidate: at least {} blocks freed, at least {}% of them within \
                 {} ns of their allocation",
                lifetimes::POOL_MIN_FREED,
                lifetimes::POOL_MIN_SHORT_FRACTION * 100.0,
                lifetimes::SHORT_LIVED_NS
            ),
            histogram: lifetime_buckets(&self.lifetimes.all),
            sites: sites
                .iter()
                .take(TOP)
                .map(|(id, site)| SiteLifetime {
                    stack_id: id.0,
                    freed: site.freed,
                    short_lived: site.short_lived,
                    histogram: lifetime_buckets(&site.histogram),
                })
                .collect(),
            pool_candidates,
        }
    }

    fn reallocs_report(&self, heap: &HeapState, secs: &impl Fn(u64) -> f64) -> ReallocsReport {
        let stats = heap.stats();
        let doubles: BTreeMap<(u64, u64), Option<StackId>> = heap
            .double_frees()
            .iter()
            .map(|double| ((double.addr, double.ts_ns), double.alloc_stack))
            .collect();
        ReallocsReport {
            reallocs: self.reallocs.reallocs,
            longest_chains: self
                .reallocs
                .longest()
                .into_iter()
                .map(|chain| ChainReport {
                    reallocs: chain.reallocs,
                    first_size: chain.first_size,
                    final_size: chain.final_size,
                    stack_id: chain.origin_stack.map(|id| id.0),
                    last_realloc_stack_id: chain.last_stack.map(|id| id.0),
                    first_seen_secs: secs(chain.first_ts_ns),
                    live: chain.live,
                })
                .collect(),
            unknown_frees: stats.unknown_frees,
            double_frees: stats.double_frees,
            unknown_reallocs: stats.unknown_reallocs,
            odd_frees: self
                .reallocs
                .odd_frees
                .iter()
                .map(|odd| {
                    let double = odd
                        .kind
                        .is_free()
                        .then(|| doubles.get(&(odd.addr, odd.ts_ns)))
                        .flatten();
                    OddFreeReport {
                        function: odd.kind.symbol().to_owned(),
                        address: format!("{:#x}", odd.addr),
                        tid: odd.tid,
                        time_secs: secs(odd.ts_ns),
                        double_free: double.is_some(),
                        alloc_stack_id: double.copied().flatten().map(|id| id.0),
                    }
                })
                .collect(),
            note: "free() is recorded without a call stack, so a free of an unknown pointer is \
                   known only by its address, thread and time; a double free (run mode) also \
                   by the stack that allocated the block"
                .to_owned(),
        }
    }
}

/// The blocks an event ended (overwritten, then released), borrowed: copying the effect's
/// blocks into a temporary array costs more than everything the analyses do with them.
fn ended_blocks(effect: &Effect) -> impl Iterator<Item = &(u64, crate::heap::Block)> {
    effect.overwritten.iter().chain(&effect.released)
}

fn sites_at_peak(sites: &SiteStats) -> Vec<SiteAtPeak> {
    let mut at_peak: Vec<SiteAtPeak> = sites
        .iter()
        .filter(|(_, counts)| counts.peak_live_blocks > 0)
        .map(|(id, counts)| SiteAtPeak {
            stack_id: id.0,
            live_bytes: counts.peak_live_bytes,
            live_blocks: counts.peak_live_blocks,
        })
        .collect();
    at_peak.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then(b.live_blocks.cmp(&a.live_blocks))
            .then(a.stack_id.cmp(&b.stack_id))
    });
    at_peak.truncate(TOP);
    at_peak
}

fn lifetime_buckets(histogram: &lifetimes::Histogram) -> Vec<LifetimeBucket> {
    histogram
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(index, &count)| LifetimeBucket {
            min_ns: if index == 0 { 0 } else { 1 << index },
            max_ns: (index + 1 < LIFETIME_BUCKETS).then(|| (1u64 << (index + 1)) - 1),
            count,
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

/// Session facts the analyses need that are not in the events (the operation count is set
/// on the analyses with [`Analyses::set_ops`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct AnalysisOptions {
    pub start_ns: u64,
    pub end_ns: u64,
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
        ops: recorder.analyses.ops,
    };
    let mut analyses = recorder.analyses.report(&input);
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
        if let Some(peak) = &self.timeline.peak {
            ids.extend(peak.sites.iter().map(|s| s.stack_id));
        }
        ids.extend(self.leaks.growing.iter().map(|s| s.stack_id));
        ids.extend(self.leaks.oldest.iter().filter_map(|b| b.stack_id));
        ids.extend(self.lifetimes.sites.iter().map(|s| s.stack_id));
        ids.extend(self.lifetimes.pool_candidates.iter().map(|s| s.stack_id));
        for chain in &self.reallocs.longest_chains {
            ids.extend(chain.stack_id);
            ids.extend(chain.last_realloc_stack_id);
        }
        ids.extend(
            self.reallocs
                .odd_frees
                .iter()
                .filter_map(|o| o.alloc_stack_id),
        );
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
pub struct TimelineReport {
    /// Width of each point's bucket (it doubles as the recording outgrows the buckets).
    pub bucket_secs: f64,
    pub points: Vec<TimelinePoint>,
    /// The malloc-family peak (null when nothing was ever live).
    pub peak: Option<PeakReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeakReport {
    pub time_secs: f64,
    pub live_bytes: u64,
    pub live_blocks: u64,
    /// What was live at the peak, by site, largest first.
    pub sites: Vec<SiteAtPeak>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteAtPeak {
    pub stack_id: u32,
    pub live_bytes: u64,
    pub live_blocks: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaksReport {
    /// What is live at the end; the sites themselves are the report's top-level `leaks`.
    pub live_at_end: LiveAtEnd,
    /// Sites whose live bytes grew steadily over the window (the unbounded-cache and
    /// growing-buffer patterns), fastest first.
    pub growing: Vec<GrowingSite>,
    pub growth_rule: String,
    /// The oldest live blocks.
    pub oldest: Vec<OldBlock>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveAtEnd {
    pub blocks: u64,
    pub bytes: u64,
    pub sites: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrowingSite {
    pub stack_id: u32,
    pub slope_bytes_per_sec: f64,
    pub r2: f64,
    pub monotonicity: f64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub allocations: u64,
    /// First and last allocation at this site.
    pub first_seen_secs: f64,
    pub last_seen_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OldBlock {
    pub address: String,
    pub size: u64,
    pub allocated_secs: f64,
    /// Time from allocation to the end of the session.
    pub age_secs: f64,
    pub stack_id: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifetimesReport {
    pub rule: String,
    /// Lifetimes of every freed block, in log2 buckets of nanoseconds.
    pub histogram: Vec<LifetimeBucket>,
    /// The sites that freed most blocks, with their histograms.
    pub sites: Vec<SiteLifetime>,
    pub pool_candidates: Vec<PoolCandidate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifetimeBucket {
    pub min_ns: u64,
    /// Null for the last, open-ended bucket.
    pub max_ns: Option<u64>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteLifetime {
    pub stack_id: u32,
    pub freed: u64,
    pub short_lived: u64,
    pub histogram: Vec<LifetimeBucket>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCandidate {
    pub stack_id: u32,
    pub freed: u64,
    pub short_lived: u64,
    /// Requested sizes of the short-lived blocks (up to four distinct ones)...
    pub sizes: Vec<SizeCount>,
    /// ...short-lived blocks of other sizes, and the size range of all of them.
    pub other_sizes: u64,
    pub min_size: u64,
    pub max_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeCount {
    pub size: u64,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FragmentationReport {
    pub allocator: Allocator,
    /// Null when nothing was ever live.
    pub at_peak: Option<FragmentationSnapshot>,
    pub at_end: FragmentationSnapshot,
    /// Allocator overhead over time: RSS against live requested bytes, for the timeline
    /// points that have an RSS sample.
    pub overhead: Vec<OverheadPoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverheadPoint {
    pub time_secs: f64,
    pub rss_bytes: u64,
    pub live_bytes: u64,
    /// Null when nothing is live.
    pub rss_per_live_byte: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReallocsReport {
    /// reallocs that moved or resized a live block.
    pub reallocs: u64,
    /// Blocks reallocated at least twice, most reallocs first.
    pub longest_chains: Vec<ChainReport>,
    pub unknown_frees: u64,
    pub double_frees: u64,
    pub unknown_reallocs: u64,
    /// The first frees and reallocs of pointers that were not live.
    pub odd_frees: Vec<OddFreeReport>,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainReport {
    pub reallocs: u32,
    pub first_size: u64,
    pub final_size: u64,
    /// Where the block was first allocated, and where it was last reallocated.
    pub stack_id: Option<u32>,
    pub last_realloc_stack_id: Option<u32>,
    pub first_seen_secs: f64,
    /// The block is still live at the end.
    pub live: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OddFreeReport {
    /// `free` or `realloc`.
    pub function: String,
    pub address: String,
    pub tid: u32,
    pub time_secs: f64,
    /// The pointer had been freed before (run mode); else it was never seen allocated.
    pub double_free: bool,
    /// For a double free: where the block had been allocated.
    pub alloc_stack_id: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerOperation {
    pub ops: u64,
    pub allocations_per_op: f64,
    pub bytes_per_op: f64,
    pub frees_per_op: f64,
}
