//! The live view's model (`memprof run --live`, `memprof attach --live`): plain data built
//! from the [`Recorder`] a few times a second, with no terminal in sight. The collector calls
//! [`LiveModel::observe`] for each ingested record (per-thread and per-size allocation counts)
//! and [`LiveModel::snapshot`] at most ~4 times a second; the terminal UI
//! (profiler-cli's `live` module) only renders [`Snapshot`]s, sorted and filtered with
//! [`site_rows`].
//!
//! Stacks are named once each ([`Namer`]; [`SymbolNamer`] symbolizes, tests name by hand) and
//! the names are kept as shared strings, so a snapshot costs a pass over the sites and the
//! live blocks, never a symbolization of a known stack.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::analysis::allocator::Allocator;
use crate::heap::Effect;
use crate::maps::ProcessMaps;
use crate::recorder::Recorder;
use crate::report::{StackFrame, site_frame};
use crate::stacks::StackId;
use crate::symbolize::{RecordedSymbols, Symbolizer};

mod recorded;
#[cfg(test)]
mod tests;
mod threads;

pub use recorded::{MAX_RECORDED_SNAPSHOTS, RECORDED_INTERVAL_NS, Recorded, recorded_snapshots};
use threads::ThreadTallies;
pub use threads::{ThreadRow, ThreadSite, thread_site_rows};

/// The names of one stack: the function its site is known by, and every frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteNames {
    pub function: Arc<str>,
    /// Innermost first, `function (file:line)` where known.
    pub stack: Arc<[String]>,
}

/// Names stacks (return addresses, innermost first).
pub trait Namer {
    fn name(&mut self, frames: &[u64]) -> SiteNames;
}

/// A [`Namer`] over the target's maps, as the report names sites.
pub struct SymbolNamer {
    symbolizer: Symbolizer,
    /// The live process whose files are read (`None`: a recording's, read by path).
    pid: Option<u32>,
    /// The frames a recording names, answered before any file is read.
    recorded: Option<RecordedSymbols>,
    mappings: usize,
}

impl SymbolNamer {
    pub fn new(maps: &ProcessMaps, pid: u32) -> Self {
        Self {
            symbolizer: Symbolizer::for_process(maps, pid),
            pid: Some(pid),
            recorded: None,
            mappings: maps.iter().count(),
        }
    }

    /// Over a recording's maps: the frames it names (`recorded`) as named there, others from
    /// the files, read by path (the process is gone).
    pub fn offline(maps: &ProcessMaps, recorded: Option<RecordedSymbols>) -> Self {
        let symbolizer = Symbolizer::new(maps);
        Self {
            symbolizer: match &recorded {
                Some(symbols) => symbolizer.with_recorded(symbols),
                None => symbolizer,
            },
            pid: None,
            recorded,
            mappings: maps.iter().count(),
        }
    }

    /// The symbolizer, with the modules it opened: the session's report takes them over
    /// ([`Symbolizer::with_modules_of`]) instead of reading their symbols and DWARF again.
    pub fn into_symbolizer(self) -> Symbolizer {
        self.symbolizer
    }

    /// Takes new maps (libraries loaded since), keeping the modules already opened. Returns
    /// whether they changed: names given before may then be better now
    /// ([`LiveModel::forget_names`]).
    pub fn update(&mut self, maps: &ProcessMaps) -> bool {
        let mappings = maps.iter().count();
        if mappings == self.mappings {
            return false;
        }
        let previous = std::mem::replace(&mut self.symbolizer, Symbolizer::new(maps));
        let mut fresh = match self.pid {
            Some(pid) => Symbolizer::for_process(maps, pid),
            None => Symbolizer::new(maps),
        };
        if let Some(symbols) = &self.recorded {
            fresh = fresh.with_recorded(symbols);
        }
        self.symbolizer = fresh.with_modules_of(previous);
        self.mappings = mappings;
        true
    }
}

impl Namer for SymbolNamer {
    fn name(&mut self, frames: &[u64]) -> SiteNames {
        let stack: Vec<StackFrame> = frames
            .iter()
            .flat_map(|&address| self.symbolizer.frames(address).to_vec())
            .map(StackFrame::from)
            .collect();
        let function = site_frame(&stack)
            .map_or_else(|| "[no stack]".to_string(), |frame| frame.display_name());
        let lines = stack
            .iter()
            .map(|frame| match (&frame.file, frame.line) {
                // The file's name only: a build directory's path would push the line out of
                // an 80-column screen.
                (Some(file), Some(line)) => {
                    let name = std::path::Path::new(file)
                        .file_name()
                        .map_or(file.as_str(), |name| name.to_str().unwrap_or(file));
                    format!("{} ({name}:{line})", frame.display_name())
                }
                _ => frame.display_name(),
            })
            .collect::<Vec<_>>();
        SiteNames {
            function: function.into(),
            stack: lines.into(),
        }
    }
}

/// One allocation site (a distinct stack) in a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteRow {
    pub stack: StackId,
    pub names: SiteNames,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub allocations: u64,
    pub allocated_bytes: u64,
    /// How fast its live bytes changed over the last [`RATE_WINDOW_NS`] (at most), in bytes
    /// per second, negative when they fell; None before a second has passed, and in one
    /// thread's rows (rates are kept per site).
    pub growth_bytes_per_sec: Option<f64>,
}

/// A site whose live bytes grow steadily: the growth analysis's least-squares line over the
/// session fits ([`Fit::is_steady_growth`](crate::analysis::growth::Fit::is_steady_growth)),
/// as the report's `growing` list.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthRow {
    pub stack: StackId,
    pub names: SiteNames,
    /// The line's slope, bytes per second.
    pub bytes_per_sec: f64,
    pub live_bytes: u64,
    /// How well the line fits (1 = a perfect line).
    pub r2: f64,
    /// The share of the site's changes that were increases.
    pub monotonicity: f64,
    /// The window the line was fitted over: the session so far, in seconds.
    pub window_secs: f64,
}

/// A site whose blocks die young: freed less than
/// [`SHORT_LIVED_NS`](crate::analysis::lifetimes::SHORT_LIVED_NS) after allocation.
#[derive(Clone, Debug, PartialEq)]
pub struct LifetimeRow {
    pub stack: StackId,
    pub names: SiteNames,
    /// Blocks of the site freed so far, and how many of them were short-lived.
    pub freed: u64,
    pub short_lived: u64,
    /// The median lifetime of its freed blocks, to a power of two (the lower bound of its
    /// log2 bucket), in ns.
    pub median_ns: u64,
    /// The report's pool-candidate rule holds.
    pub pool_candidate: bool,
}

/// One power-of-two size class: requests of `low..=high` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeRow {
    pub low: u64,
    pub high: u64,
    /// Every allocation so far of a size in the class, and the bytes they asked for.
    pub allocations: u64,
    pub requested_bytes: u64,
    /// What the serving allocator gave them ([`Allocator::usable_size`]); None when the
    /// allocator is unknown. `usable - requested` is the class's internal fragmentation.
    pub usable_bytes: Option<u64>,
    pub live_blocks: u64,
    pub live_bytes: u64,
}

/// One point of the heap graph.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryPoint {
    pub secs: f64,
    pub live_bytes: u64,
    pub rss_bytes: Option<u64>,
}

/// What the collector knows that the recorder does not.
#[derive(Clone, Debug, Default)]
pub struct SessionFacts {
    pub rss_bytes: Option<u64>,
    pub lost_events: u64,
    pub held_threads: u64,
    /// The target has exited (the view stays until `q`).
    pub ended: bool,
    /// The allocator serving the target, for the usable sizes in Sizes.
    pub allocator: Option<Allocator>,
}

/// Everything the UI shows, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub elapsed_secs: f64,
    pub events: u64,
    pub events_per_sec: f64,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub peak_bytes: u64,
    /// When the peak was reached, seconds from the start.
    pub peak_secs: Option<f64>,
    pub facts: SessionFacts,
    pub history: Vec<HistoryPoint>,
    pub sites: Vec<SiteRow>,
    pub growing: Vec<GrowthRow>,
    pub sizes: Vec<SizeRow>,
    pub threads: Vec<ThreadRow>,
    /// Each thread's share of each site, when more than one thread allocated (one thread's
    /// sites are `sites`); see [`thread_site_rows`].
    pub thread_sites: Vec<ThreadSite>,
    /// Short-lived sites, most short-lived blocks first.
    pub lifetimes: Vec<LifetimeRow>,
}

/// How the Sites view is sorted (`s` cycles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SiteSort {
    #[default]
    LiveBytes,
    LiveBlocks,
    Allocations,
    AllocatedBytes,
    Growth,
}

impl SiteSort {
    pub fn next(self) -> SiteSort {
        match self {
            SiteSort::LiveBytes => SiteSort::LiveBlocks,
            SiteSort::LiveBlocks => SiteSort::Allocations,
            SiteSort::Allocations => SiteSort::AllocatedBytes,
            SiteSort::AllocatedBytes => SiteSort::Growth,
            SiteSort::Growth => SiteSort::LiveBytes,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SiteSort::LiveBytes => "live bytes",
            SiteSort::LiveBlocks => "live blocks",
            SiteSort::Allocations => "allocations",
            SiteSort::AllocatedBytes => "bytes allocated",
            SiteSort::Growth => "growth",
        }
    }

    /// Larger first; an unknown growth after every known one.
    fn key(self, row: &SiteRow) -> f64 {
        match self {
            SiteSort::LiveBytes => row.live_bytes as f64,
            SiteSort::LiveBlocks => row.live_blocks as f64,
            SiteSort::Allocations => row.allocations as f64,
            SiteSort::AllocatedBytes => row.allocated_bytes as f64,
            SiteSort::Growth => row.growth_bytes_per_sec.unwrap_or(f64::NEG_INFINITY),
        }
    }
}

/// The sites whose function name contains `filter` (case-insensitive; all when empty), largest
/// first by `sort`, ties by function name then stack id (a stable order between snapshots).
pub fn site_rows<'a>(sites: &'a [SiteRow], sort: SiteSort, filter: &str) -> Vec<&'a SiteRow> {
    let filter = filter.to_lowercase();
    let mut rows: Vec<&SiteRow> = sites
        .iter()
        .filter(|row| filter.is_empty() || row.names.function.to_lowercase().contains(&filter))
        .collect();
    rows.sort_by(|a, b| {
        sort.key(b)
            .total_cmp(&sort.key(a))
            .then_with(|| a.names.function.cmp(&b.names.function))
            .then_with(|| a.stack.cmp(&b.stack))
    });
    rows
}

/// The growing sites whose function name contains `filter`.
pub fn growth_rows<'a>(rows: &'a [GrowthRow], filter: &str) -> Vec<&'a GrowthRow> {
    let filter = filter.to_lowercase();
    rows.iter()
        .filter(|row| filter.is_empty() || row.names.function.to_lowercase().contains(&filter))
        .collect()
}

/// How far back a site's growth rate (Sites) is measured.
pub const RATE_WINDOW_NS: u64 = 10_000_000_000;
/// How often a sample of every site's live bytes is kept for the rates.
const RATE_SAMPLE_NS: u64 = 1_000_000_000;
/// Graph points kept before the history is halved (pairs merged, keeping the larger value).
const HISTORY_POINTS: usize = 1200;

/// The state the view model keeps between snapshots.
#[derive(Debug)]
pub struct LiveModel {
    start_ns: u64,
    names: HashMap<StackId, SiteNames>,
    threads: ThreadTallies,
    /// Live blocks by size class (see [`size_class`]), followed as records arrive: a
    /// snapshot never walks the heap.
    live_by_class: [LiveTally; SIZE_CLASSES],
    history: Vec<HistoryPoint>,
    /// Live bytes per stack at past moments, oldest first (for the sites' rates).
    rate_samples: VecDeque<(u64, Vec<u64>)>,
    last_snapshot: Option<(u64, u64)>,
}

impl LiveModel {
    /// A model whose times count from `start_ns` (CLOCK_MONOTONIC).
    pub fn new(start_ns: u64) -> Self {
        Self {
            start_ns,
            names: HashMap::new(),
            threads: ThreadTallies::default(),
            live_by_class: [LiveTally::default(); SIZE_CLASSES],
            history: Vec::new(),
            rate_samples: VecDeque::new(),
            last_snapshot: None,
        }
    }

    /// Names every stack again at the next snapshot: the maps grew, and a frame in a library
    /// mapped since (libc, seen before the first maps read after the exec) gets its name.
    pub fn forget_names(&mut self) {
        self.names.clear();
    }

    /// Follows one applied record.
    #[inline]
    pub fn observe(&mut self, effect: &Effect) {
        self.threads.observe(effect);
        if let Some((_, block)) = &effect.created {
            let class = &mut self.live_by_class[size_class(block.size)];
            class.blocks += 1;
            class.bytes += block.size;
        }
        for (_, block) in effect.ended() {
            let class = &mut self.live_by_class[size_class(block.size)];
            class.blocks -= 1;
            class.bytes -= block.size;
        }
    }

    #[cfg(test)]
    fn named(&self) -> usize {
        self.names.len()
    }

    /// The view at `now_ns` of `recorder`, stacks named by `namer` (each stack once).
    pub fn snapshot(
        &mut self,
        recorder: &Recorder,
        namer: &mut dyn Namer,
        now_ns: u64,
        facts: SessionFacts,
    ) -> Snapshot {
        let start_ns = self.start_ns;
        let secs = move |ts: u64| ts.saturating_sub(start_ns) as f64 / 1e9;
        let stats = recorder.heap.stats();
        let events = recorder.events();
        let events_per_sec = match self.last_snapshot {
            Some((ts, previous)) if now_ns > ts => {
                (events - previous.min(events)) as f64 / ((now_ns - ts) as f64 / 1e9)
            }
            _ => 0.0,
        };
        self.last_snapshot = Some((now_ns, events));
        self.push_history(HistoryPoint {
            secs: secs(now_ns),
            live_bytes: stats.live_bytes,
            rss_bytes: facts.rss_bytes,
        });

        let mut sites = Vec::new();
        for (stack, counts) in recorder.sites.iter() {
            let names = self
                .names
                .entry(stack)
                .or_insert_with(|| namer.name(recorder.stacks.get(stack)))
                .clone();
            sites.push(SiteRow {
                stack,
                names,
                live_bytes: counts.live_bytes,
                live_blocks: counts.live_blocks,
                allocations: counts.allocations,
                allocated_bytes: counts.allocated_bytes,
                growth_bytes_per_sec: None,
            });
        }
        self.rates(&mut sites, now_ns);
        let growing = self.growing(recorder, &sites, now_ns);
        let mut lifetimes = Vec::new();
        for (stack, site) in recorder.analyses.lifetimes().sites() {
            if site.short_lived == 0 {
                continue;
            }
            let names = self
                .names
                .entry(stack)
                .or_insert_with(|| namer.name(recorder.stacks.get(stack)))
                .clone();
            lifetimes.push(LifetimeRow {
                stack,
                names,
                freed: site.freed,
                short_lived: site.short_lived,
                median_ns: median_bucket(&site.histogram, site.freed),
                pool_candidate: site.is_pool_candidate(),
            });
        }
        lifetimes.sort_by(|a, b| {
            (b.short_lived, b.freed, a.stack).cmp(&(a.short_lived, a.freed, b.stack))
        });

        let mut sizes = size_rows(recorder, facts.allocator.unwrap_or(Allocator::Unknown));
        for (row, live) in sizes.iter_mut().zip(&self.live_by_class) {
            row.live_blocks = live.blocks;
            row.live_bytes = live.bytes;
        }
        sizes.retain(|row| row.allocations > 0 || row.live_blocks > 0);
        let (threads, thread_sites) = self.threads.rows(now_ns);

        Snapshot {
            elapsed_secs: secs(now_ns),
            events,
            events_per_sec,
            live_bytes: stats.live_bytes,
            live_blocks: stats.live_blocks,
            peak_bytes: stats.peak_live_bytes,
            peak_secs: stats.peak_ts_ns.map(secs),
            facts,
            history: self.history.clone(),
            sites,
            growing,
            sizes,
            threads,
            thread_sites,
            lifetimes,
        }
    }

    fn push_history(&mut self, point: HistoryPoint) {
        if self.history.len() >= HISTORY_POINTS {
            let merged = self
                .history
                .chunks(2)
                .map(|pair| {
                    let last = pair[pair.len() - 1];
                    HistoryPoint {
                        secs: last.secs,
                        live_bytes: pair.iter().map(|p| p.live_bytes).max().unwrap_or(0),
                        rss_bytes: pair.iter().filter_map(|p| p.rss_bytes).max(),
                    }
                })
                .collect();
            self.history = merged;
        }
        self.history.push(point);
    }

    /// Sets each site's rate: its live bytes now against the oldest sample of the window; and
    /// keeps a sample of now when one is due.
    fn rates(&mut self, sites: &mut [SiteRow], now_ns: u64) {
        if let Some((then_ns, live)) = self.rate_samples.front()
            && now_ns > *then_ns
        {
            let window_secs = (now_ns - then_ns) as f64 / 1e9;
            for site in sites.iter_mut() {
                let before = live.get(site.stack.0 as usize).copied().unwrap_or(0);
                site.growth_bytes_per_sec =
                    Some((site.live_bytes as f64 - before as f64) / window_secs);
            }
        }
        let due = self
            .rate_samples
            .back()
            .is_none_or(|(ts, _)| now_ns >= ts + RATE_SAMPLE_NS);
        if due {
            let len = sites
                .iter()
                .map(|s| s.stack.0 as usize + 1)
                .max()
                .unwrap_or(0);
            let mut live = vec![0; len];
            for site in sites.iter() {
                live[site.stack.0 as usize] = site.live_bytes;
            }
            self.rate_samples.push_back((now_ns, live));
            while self
                .rate_samples
                .front()
                .is_some_and(|(ts, _)| now_ns - ts > RATE_WINDOW_NS)
            {
                self.rate_samples.pop_front();
            }
        }
    }

    /// The sites the growth analysis finds growing steadily up to `now_ns`, fastest first.
    fn growing(&self, recorder: &Recorder, sites: &[SiteRow], now_ns: u64) -> Vec<GrowthRow> {
        let by_stack: HashMap<StackId, &SiteRow> = sites.iter().map(|s| (s.stack, s)).collect();
        let window_secs = recorder
            .analyses
            .growth()
            .origin_ns()
            .map_or(0.0, |origin| now_ns.saturating_sub(origin) as f64 / 1e9);
        let mut rows: Vec<GrowthRow> = recorder
            .analyses
            .growth()
            .fits(now_ns)
            .into_iter()
            .filter(|fit| fit.is_steady_growth())
            .filter_map(|fit| {
                let site = by_stack.get(&fit.stack)?;
                Some(GrowthRow {
                    stack: fit.stack,
                    names: site.names.clone(),
                    bytes_per_sec: fit.slope_bytes_per_sec,
                    live_bytes: site.live_bytes,
                    r2: fit.r2,
                    monotonicity: fit.monotonicity,
                    window_secs,
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            b.bytes_per_sec
                .total_cmp(&a.bytes_per_sec)
                .then_with(|| a.stack.cmp(&b.stack))
        });
        rows
    }
}

/// Size classes: 0-1 bytes, then each power of two up to 2^64 (see [`size_class`]).
const SIZE_CLASSES: usize = 65;

/// Live blocks of one size class.
#[derive(Clone, Copy, Debug, Default)]
struct LiveTally {
    blocks: u64,
    bytes: u64,
}

/// Every power-of-two class, with what was requested in it so far and what `allocator` gave.
fn size_rows(recorder: &Recorder, allocator: Allocator) -> Vec<SizeRow> {
    let mut rows: Vec<SizeRow> = (0..SIZE_CLASSES)
        .map(|class| {
            let (low, high) = class_bounds(class);
            SizeRow {
                low,
                high,
                allocations: 0,
                requested_bytes: 0,
                usable_bytes: (allocator != Allocator::Unknown).then_some(0),
                live_blocks: 0,
                live_bytes: 0,
            }
        })
        .collect();
    for (size, mmapped, count) in recorder.analyses.sizes().counts() {
        let row = &mut rows[size_class(size)];
        row.allocations += count;
        row.requested_bytes += size * count;
        if let (Some(total), Some(usable)) =
            (&mut row.usable_bytes, allocator.usable_size(size, mmapped))
        {
            *total += usable * count;
        }
    }
    rows
}

/// The lower bound of the log2 bucket holding the median of `count` lifetimes.
fn median_bucket(histogram: &[u64], count: u64) -> u64 {
    let mut seen = 0;
    for (bucket, &n) in histogram.iter().enumerate() {
        seen += n;
        if seen * 2 >= count {
            return if bucket == 0 { 0 } else { 1 << bucket };
        }
    }
    0
}

/// The power-of-two class of a request: 0 holds 0 and 1 byte, class k holds 2^(k-1)+1..=2^k.
fn size_class(size: u64) -> usize {
    if size <= 1 {
        0
    } else {
        (64 - (size - 1).leading_zeros()) as usize
    }
}

fn class_bounds(class: usize) -> (u64, u64) {
    match class {
        0 => (0, 1),
        64 => ((1 << 63) + 1, u64::MAX),
        k => ((1u64 << (k - 1)) + 1, 1u64 << k),
    }
}
