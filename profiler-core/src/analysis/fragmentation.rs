//! External fragmentation of the heap's address ranges, at the peak and at the end.
//!
//! Live blocks are grouped by the 64 MiB-aligned window of the address space that holds them:
//! glibc's secondary arenas are heaps aligned to HEAP_MAX_SIZE (64 MiB on 64-bit), and the main
//! heap (brk) and the other allocators' regions sit in windows of their own. Blocks glibc
//! mmapped one by one are left out (each is its own mapping). Within a range, the used span
//! runs from the first block's footprint to the last one's; the free bytes are the gaps between
//! footprints, and fragmentation = 1 - largest gap / free bytes (0 when nothing is free).
//!
//! The heap at the peak is rebuilt at the end, without replaying: the blocks live then are the
//! blocks still live that were allocated by the peak, plus those allocated by the peak and
//! released since (kept in [`PeakBlocks`], at most as many as were live at the peak). "By the
//! peak" goes by allocation time, and times are in whole clock ticks
//! ([`CLOCK_TICK_NS`](crate::event::CLOCK_TICK_NS)): the blocks created after the peak in its
//! own tick are remembered, so that they are not taken for blocks live at the peak.

use super::allocator::{Allocator, GlibcMmap};
use super::packed_blocks::PackedBlocks;
use super::{Analysis, Observed, SessionEnd};
use crate::fasthash::FastHashSet;
use serde::{Deserialize, Serialize};

/// Most blocks remembered as created in the peak's tick after it (see
/// [`PeakBlocks::created_in_peak_tick`]).
const MAX_CREATED_IN_PEAK_TICK: usize = 1 << 16;

/// log2 of the window size that groups blocks into ranges.
pub const RANGE_SHIFT: u32 = 26;
/// Ranges listed per snapshot (the largest spans); the totals cover all of them.
pub const RANGES_SHOWN: usize = 8;

/// Blocks live at the latest peak and released since.
#[derive(Debug, Default)]
pub struct PeakBlocks {
    peak_ts_ns: Option<u64>,
    /// Blocks live at the peak: no more than that can be released after it. Events of one
    /// nanosecond (or of CPUs whose clocks disagree) can make a later block look as old as
    /// the peak; the cap keeps memory bounded even then.
    peak_blocks: u64,
    released: PackedBlocks,
    /// Addresses of the blocks created after the peak within its clock tick: their times
    /// equal the peak's, but they were not live at it. A tick holds a few events; the cap
    /// only matters for a clock that stood still.
    created_in_peak_tick: FastHashSet<u64>,
    /// glibc's mmap threshold at the peak, to tell its mmapped blocks then.
    glibc_at_peak: GlibcMmap,
}

impl Analysis for PeakBlocks {
    type Report = Snapshots;

    #[inline]
    fn observe(&mut self, seen: &Observed<'_>) {
        let effect = seen.effect;
        if effect.new_peak {
            // This event's releases happened before the peak it set.
            self.peak_ts_ns = Some(seen.event.ts_ns);
            self.peak_blocks = seen.live_blocks;
            self.glibc_at_peak = *seen.glibc;
            self.released.clear();
            // Most events of a growing heap set a new peak: clearing an empty set (which
            // rewrites its control bytes) is skipped.
            if !self.created_in_peak_tick.is_empty() {
                self.created_in_peak_tick.clear();
            }
            return;
        }
        let Some(peak) = self.peak_ts_ns else { return };
        for (addr, block) in effect.ended() {
            if self.live_at_peak(*addr, block.ts_ns)
                && (self.released.len() as u64) < self.peak_blocks
            {
                self.released.push(*addr, block.size);
            }
        }
        if let Some((addr, block)) = &effect.created
            && block.ts_ns == peak
            && self.created_in_peak_tick.len() < MAX_CREATED_IN_PEAK_TICK
        {
            self.created_in_peak_tick.insert(*addr);
        }
    }

    fn report(&self, input: &SessionEnd<'_>) -> Snapshots {
        let live_now = || {
            input
                .heap
                .blocks()
                .map(|(addr, block)| (addr, block.size, block.ts_ns))
        };
        // Streamed, not collected: at the end of a long session these are millions of blocks.
        let live = input.heap.stats().live_blocks as usize;
        Snapshots {
            at_peak: self.peak_ts_ns().map(|_| {
                let count = live + self.released.len();
                let blocks = self.at_peak(live_now());
                snapshot(blocks, count, input.allocator, self.glibc_at_peak())
            }),
            at_end: snapshot(
                live_now().map(|(addr, size, _)| (addr, size)),
                live,
                input.allocator,
                input.glibc,
            ),
        }
    }
}

/// The heap's ranges at the peak and at the end.
pub struct Snapshots {
    /// None when nothing was ever live.
    pub at_peak: Option<FragmentationSnapshot>,
    pub at_end: FragmentationSnapshot,
}

impl PeakBlocks {
    pub fn peak_ts_ns(&self) -> Option<u64> {
        self.peak_ts_ns
    }

    pub fn glibc_at_peak(&self) -> &GlibcMmap {
        &self.glibc_at_peak
    }

    /// Whether the block at `addr` allocated at `ts_ns` was live at the peak, if it is live
    /// now or was released after the peak.
    fn live_at_peak(&self, addr: u64, ts_ns: u64) -> bool {
        self.peak_ts_ns.is_some_and(|peak| {
            ts_ns < peak || (ts_ns == peak && !self.created_in_peak_tick.contains(&addr))
        })
    }

    /// The blocks live at the peak, given the blocks live now as (address, size, alloc time).
    pub fn at_peak(
        &self,
        live_now: impl Iterator<Item = (u64, u64, u64)>,
    ) -> impl Iterator<Item = (u64, u64)> {
        let peak = self.peak_ts_ns;
        live_now
            .filter(move |&(addr, _, ts)| self.live_at_peak(addr, ts))
            .map(|(addr, size, _)| (addr, size))
            .chain(self.released.iter().filter(move |_| peak.is_some()))
    }
}

/// One address range of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeFragmentation {
    /// Used span [start, end) as `0x` hex: first to last block footprint.
    pub start: String,
    pub end: String,
    pub blocks: u64,
    /// Bytes of block footprints (usable size plus allocator header).
    pub used_bytes: u64,
    /// Bytes of gaps between footprints within the span.
    pub free_bytes: u64,
    pub largest_free_bytes: u64,
    /// 1 - largest_free_bytes / free_bytes (0 when nothing is free).
    pub fragmentation: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FragmentationSnapshot {
    pub ranges: usize,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Blocks glibc served with their own mapping, left out of the ranges.
    pub mmapped_blocks: u64,
    /// The largest spans first.
    pub largest_ranges: Vec<RangeFragmentation>,
}

/// Computes a snapshot from (address, requested size) pairs (about `count` of them); `glibc`
/// tells which blocks glibc mmapped (its threshold at the time of the snapshot). The
/// footprints are held once, packed, and sorted by address: the ranges are their runs
/// of one window.
pub fn snapshot(
    blocks: impl IntoIterator<Item = (u64, u64)>,
    count: usize,
    allocator: Allocator,
    glibc: &GlibcMmap,
) -> FragmentationSnapshot {
    let header = allocator.header_bytes();
    let mut mmapped_blocks = 0;
    let mut footprints = Footprints::with_capacity(count);
    for (addr, size) in blocks {
        let mmapped = allocator == Allocator::Glibc && glibc.is_mmapped(size);
        if mmapped {
            mmapped_blocks += 1;
            continue;
        }
        let usable = allocator.usable_size(size, false).unwrap_or(size);
        let start = addr.saturating_sub(header);
        let end = addr.saturating_add(usable);
        footprints.push(start, end);
    }
    let mut computed: Vec<RangeFragmentation> = Vec::new();
    let mut range: Option<RangeSum> = None;
    for (start, end) in footprints.sorted() {
        match &mut range {
            Some(sum) if sum.first >> RANGE_SHIFT == start >> RANGE_SHIFT => sum.add(start, end),
            _ => {
                computed.extend(range.take().map(RangeSum::finish));
                range = Some(RangeSum::new(start, end));
            }
        }
    }
    computed.extend(range.map(RangeSum::finish));
    let used_bytes = computed.iter().map(|r| r.used_bytes).sum();
    let free_bytes = computed.iter().map(|r| r.free_bytes).sum();
    let ranges = computed.len();
    computed.sort_by_key(|r| std::cmp::Reverse(r.used_bytes + r.free_bytes));
    computed.truncate(RANGES_SHOWN);
    FragmentationSnapshot {
        ranges,
        used_bytes,
        free_bytes,
        mmapped_blocks,
        largest_ranges: computed,
    }
}

/// Bits of a packed footprint's length (see [`Footprints`]).
const LENGTH_BITS: u32 = 16;

/// Block footprints, `[start, end)`, sorted once all are in. A footprint whose start is below
/// 2^48 and whose length is below 64 KiB (all but a few large blocks) is one word, the start
/// above the length, so that sorting the words sorts by (start, end); the others are kept as
/// pairs and merged in. Half the memory of pairs, and a faster sort: python3's peak held 4.5
/// million blocks, 69 MiB as pairs.
struct Footprints {
    packed: Vec<u64>,
    wide: Vec<(u64, u64)>,
}

impl Footprints {
    fn with_capacity(count: usize) -> Footprints {
        Footprints {
            packed: Vec::with_capacity(count),
            wide: Vec::new(),
        }
    }

    fn push(&mut self, start: u64, end: u64) {
        let length = end - start;
        if start >> (64 - LENGTH_BITS) == 0 && length >> LENGTH_BITS == 0 {
            self.packed.push(start << LENGTH_BITS | length);
        } else {
            self.wide.push((start, end));
        }
    }

    /// Every footprint, by start, then end.
    fn sorted(mut self) -> impl Iterator<Item = (u64, u64)> {
        self.packed.sort_unstable();
        self.wide.sort_unstable();
        let packed = self.packed.into_iter().map(|word| {
            let start = word >> LENGTH_BITS;
            (start, start + (word & ((1 << LENGTH_BITS) - 1)))
        });
        Merged {
            a: packed.peekable(),
            b: self.wide.into_iter().peekable(),
        }
    }
}

/// Two sorted iterators as one.
struct Merged<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A, B> Iterator for Merged<A, B>
where
    A: Iterator<Item = (u64, u64)>,
    B: Iterator<Item = (u64, u64)>,
{
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        match (self.a.peek(), self.b.peek()) {
            (Some(a), Some(b)) if b < a => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// One range's figures, from its footprints in address order.
struct RangeSum {
    first: u64,
    blocks: u64,
    used: u64,
    free: u64,
    largest: u64,
    reached: u64,
}

impl RangeSum {
    fn new(start: u64, end: u64) -> RangeSum {
        let mut sum = RangeSum {
            first: start,
            blocks: 0,
            used: 0,
            free: 0,
            largest: 0,
            reached: start,
        };
        sum.add(start, end);
        sum
    }

    fn add(&mut self, start: u64, end: u64) {
        if start > self.reached {
            self.free += start - self.reached;
            self.largest = self.largest.max(start - self.reached);
        }
        // Overlaps (an allocator rule that does not fit) are counted once.
        self.used += end.saturating_sub(start.max(self.reached));
        self.reached = self.reached.max(end);
        self.blocks += 1;
    }

    fn finish(self) -> RangeFragmentation {
        let (first, reached) = (self.first, self.reached);
        RangeFragmentation {
            start: format!("{first:#x}"),
            end: format!("{reached:#x}"),
            blocks: self.blocks,
            used_bytes: self.used,
            free_bytes: self.free,
            largest_free_bytes: self.largest,
            fragmentation: if self.free == 0 {
                0.0
            } else {
                1.0 - self.largest as f64 / self.free as f64
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A range's start, end, blocks, used, free and largest free bytes.
    type Figures = (u64, u64, u64, u64, u64, u64);

    /// The snapshot as computed before footprints were packed: pairs, sorted, cut into runs
    /// of one window. The packed form must give the same figures.
    fn by_pairs(blocks: &[(u64, u64)], allocator: Allocator, glibc: &GlibcMmap) -> Vec<Figures> {
        let header = allocator.header_bytes();
        let mut footprints: Vec<(u64, u64)> = blocks
            .iter()
            .filter(|&&(_, size)| !(allocator == Allocator::Glibc && glibc.is_mmapped(size)))
            .map(|&(addr, size)| {
                let usable = allocator.usable_size(size, false).unwrap_or(size);
                (addr.saturating_sub(header), addr.saturating_add(usable))
            })
            .collect();
        footprints.sort_unstable();
        footprints
            .chunk_by(|a, b| a.0 >> RANGE_SHIFT == b.0 >> RANGE_SHIFT)
            .map(|run| {
                let first = run[0].0;
                let (mut used, mut free, mut largest, mut reached) = (0, 0, 0, first);
                for &(start, end) in run {
                    if start > reached {
                        free += start - reached;
                        largest = largest.max(start - reached);
                    }
                    used += end.saturating_sub(start.max(reached));
                    reached = reached.max(end);
                }
                (first, reached, run.len() as u64, used, free, largest)
            })
            .collect()
    }

    fn figures(snapshot: &FragmentationSnapshot) -> Vec<Figures> {
        let hex = |text: &str| u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap();
        snapshot
            .largest_ranges
            .iter()
            .map(|r| {
                let (start, end) = (hex(&r.start), hex(&r.end));
                (
                    start,
                    end,
                    r.blocks,
                    r.used_bytes,
                    r.free_bytes,
                    r.largest_free_bytes,
                )
            })
            .collect()
    }

    /// Blocks in a few windows, some of them large (past a packed length) or high (past a
    /// packed start), some overlapping.
    fn block() -> impl Strategy<Value = (u64, u64)> {
        let addr = prop_oneof![
            (0u64..4, 0u64..1 << 20).prop_map(|(window, at)| (window << RANGE_SHIFT) + at * 16),
            (1u64 << 48..(1u64 << 48) + (1 << 20)).prop_map(|at| at & !15),
        ];
        let size = prop_oneof![1u64..512, 60_000u64..70_000, 1u64 << 20..1u64 << 21];
        (addr, size)
    }

    proptest! {
        #[test]
        fn packed_footprints_give_the_figures_pairs_give(
            blocks in prop::collection::vec(block(), 1..300),
            glibc in any::<bool>(),
        ) {
            let allocator = if glibc { Allocator::Glibc } else { Allocator::Jemalloc };
            let threshold = GlibcMmap::default();
            let snapshot = snapshot(blocks.iter().copied(), blocks.len(), allocator, &threshold);
            let mut expected = by_pairs(&blocks, allocator, &threshold);
            prop_assert_eq!(snapshot.ranges, expected.len());
            let total = |i: usize| expected.iter().map(|r| [r.3, r.4][i]).sum::<u64>();
            prop_assert_eq!(snapshot.used_bytes, total(0));
            prop_assert_eq!(snapshot.free_bytes, total(1));
            // The largest spans first, ties in address order, as the snapshot lists them.
            expected.sort_by_key(|r| std::cmp::Reverse(r.3 + r.4));
            expected.truncate(RANGES_SHOWN);
            prop_assert_eq!(figures(&snapshot), expected);
        }
    }
}
