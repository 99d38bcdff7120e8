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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::heap::Effect;
use crate::maps::ProcessMaps;
use crate::recorder::Recorder;
use crate::report::{StackFrame, site_frame};
use crate::stacks::StackId;
use crate::symbolize::Symbolizer;

mod recorded;
#[cfg(test)]
mod tests;

pub use recorded::{MAX_RECORDED_SNAPSHOTS, RECORDED_INTERVAL_NS, Recorded, recorded_snapshots};

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
    mappings: usize,
}

impl SymbolNamer {
    pub fn new(maps: &ProcessMaps, pid: u32) -> Self {
        Self {
            symbolizer: Symbolizer::for_process(maps, pid),
            pid: Some(pid),
            mappings: maps.iter().count(),
        }
    }

    /// Over a recording's maps: the files are read by path (the process is gone).
    pub fn offline(maps: &ProcessMaps) -> Self {
        Self {
            symbolizer: Symbolizer::new(maps),
            pid: None,
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
        let fresh = match self.pid {
            Some(pid) => Symbolizer::for_process(maps, pid),
            None => Symbolizer::new(maps),
        };
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
}

/// A site whose live bytes rose over the growth window.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthRow {
    pub stack: StackId,
    pub names: SiteNames,
    /// Bytes per second over the window.
    pub bytes_per_sec: f64,
    pub live_bytes: u64,
    /// The window the rate was measured over, in seconds.
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
    pub allocations: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadRow {
    pub tid: u32,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub allocations: u64,
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
}

impl SiteSort {
    pub fn next(self) -> SiteSort {
        match self {
            SiteSort::LiveBytes => SiteSort::LiveBlocks,
            SiteSort::LiveBlocks => SiteSort::Allocations,
            SiteSort::Allocations => SiteSort::AllocatedBytes,
            SiteSort::AllocatedBytes => SiteSort::LiveBytes,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SiteSort::LiveBytes => "live bytes",
            SiteSort::LiveBlocks => "live blocks",
            SiteSort::Allocations => "allocations",
            SiteSort::AllocatedBytes => "bytes allocated",
        }
    }

    fn key(self, row: &SiteRow) -> u64 {
        match self {
            SiteSort::LiveBytes => row.live_bytes,
            SiteSort::LiveBlocks => row.live_blocks,
            SiteSort::Allocations => row.allocations,
            SiteSort::AllocatedBytes => row.allocated_bytes,
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
            .cmp(&sort.key(a))
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

/// How far back growth is measured.
const GROWTH_WINDOW_NS: u64 = 10_000_000_000;
/// How often a growth sample is kept.
const GROWTH_SAMPLE_NS: u64 = 1_000_000_000;
/// Graph points kept before the history is halved (pairs merged, keeping the larger value).
const HISTORY_POINTS: usize = 1200;

/// The state the view model keeps between snapshots.
#[derive(Debug)]
pub struct LiveModel {
    start_ns: u64,
    names: HashMap<StackId, SiteNames>,
    /// Successful allocations per thread.
    thread_allocations: BTreeMap<u32, u64>,
    /// The last allocating thread's allocations not yet in `thread_allocations`: runs of
    /// allocations by one thread cost one map lookup, not one each.
    pending_thread: Option<(u32, u64)>,
    /// Successful allocations per log2 size class.
    size_allocations: [u64; 65],
    history: Vec<HistoryPoint>,
    /// Live bytes per stack at past moments, oldest first (for growth).
    growth_samples: VecDeque<(u64, Vec<u64>)>,
    last_snapshot: Option<(u64, u64)>,
}

impl LiveModel {
    /// A model whose times count from `start_ns` (CLOCK_MONOTONIC).
    pub fn new(start_ns: u64) -> Self {
        Self {
            start_ns,
            names: HashMap::new(),
            thread_allocations: BTreeMap::new(),
            pending_thread: None,
            size_allocations: [0; 65],
            history: Vec::new(),
            growth_samples: VecDeque::new(),
            last_snapshot: None,
        }
    }

    /// Names every stack again at the next snapshot: the maps grew, and a frame in a library
    /// mapped since (libc, seen before the first maps read after the exec) gets its name.
    pub fn forget_names(&mut self) {
        self.names.clear();
    }

    /// Follows one applied record.
    pub fn observe(&mut self, effect: &Effect) {
        if let Some((_, block)) = &effect.created {
            match &mut self.pending_thread {
                Some((tid, count)) if *tid == block.tid => *count += 1,
                _ => {
                    self.count_pending_thread();
                    self.pending_thread = Some((block.tid, 1));
                }
            }
            self.size_allocations[size_class(block.size)] += 1;
        }
    }

    /// Adds the pending run of one thread's allocations to the per-thread counts.
    fn count_pending_thread(&mut self) {
        if let Some((tid, count)) = self.pending_thread.take() {
            *self.thread_allocations.entry(tid).or_default() += count;
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
            });
        }
        let growing = self.growth(&sites, now_ns);
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

        self.count_pending_thread();
        let mut threads: BTreeMap<u32, ThreadRow> = self
            .thread_allocations
            .iter()
            .map(|(&tid, &allocations)| {
                let row = ThreadRow {
                    tid,
                    live_bytes: 0,
                    live_blocks: 0,
                    allocations,
                };
                (tid, row)
            })
            .collect();
        let mut sizes: Vec<SizeRow> = (0..65)
            .map(|class| {
                let (low, high) = class_bounds(class);
                SizeRow {
                    low,
                    high,
                    allocations: self.size_allocations[class],
                    live_blocks: 0,
                    live_bytes: 0,
                }
            })
            .collect();
        for (_, block) in recorder.heap.blocks() {
            let thread = threads.entry(block.tid).or_insert(ThreadRow {
                tid: block.tid,
                live_bytes: 0,
                live_blocks: 0,
                allocations: 0,
            });
            thread.live_bytes += block.size;
            thread.live_blocks += 1;
            let size = &mut sizes[size_class(block.size)];
            size.live_blocks += 1;
            size.live_bytes += block.size;
        }
        let mut threads: Vec<ThreadRow> = threads.into_values().collect();
        threads.sort_by(|a, b| {
            (b.live_bytes, b.allocations, a.tid).cmp(&(a.live_bytes, a.allocations, b.tid))
        });
        sizes.retain(|row| row.allocations > 0 || row.live_blocks > 0);

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

    /// Ranks sites by how fast their live bytes rose since the oldest sample of the window,
    /// and keeps a sample of now when one is due.
    fn growth(&mut self, sites: &[SiteRow], now_ns: u64) -> Vec<GrowthRow> {
        let mut rows = Vec::new();
        if let Some((then_ns, live)) = self.growth_samples.front()
            && now_ns > *then_ns
        {
            let window_secs = (now_ns - then_ns) as f64 / 1e9;
            for site in sites {
                let before = live.get(site.stack.0 as usize).copied().unwrap_or(0);
                if site.live_bytes > before {
                    rows.push(GrowthRow {
                        stack: site.stack,
                        names: site.names.clone(),
                        bytes_per_sec: (site.live_bytes - before) as f64 / window_secs,
                        live_bytes: site.live_bytes,
                        window_secs,
                    });
                }
            }
        }
        rows.sort_by(|a, b| {
            b.bytes_per_sec
                .total_cmp(&a.bytes_per_sec)
                .then_with(|| a.stack.cmp(&b.stack))
        });
        let due = self
            .growth_samples
            .back()
            .is_none_or(|(ts, _)| now_ns >= ts + GROWTH_SAMPLE_NS);
        if due {
            let len = sites
                .iter()
                .map(|s| s.stack.0 as usize + 1)
                .max()
                .unwrap_or(0);
            let mut live = vec![0; len];
            for site in sites {
                live[site.stack.0 as usize] = site.live_bytes;
            }
            self.growth_samples.push_back((now_ns, live));
            while self
                .growth_samples
                .front()
                .is_some_and(|(ts, _)| now_ns - ts > GROWTH_WINDOW_NS)
            {
                self.growth_samples.pop_front();
            }
        }
        rows
    }
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
