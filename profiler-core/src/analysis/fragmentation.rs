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
        for (addr, block) in super::ended_blocks(effect) {
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
/// footprints are held once, in one vector sorted by address: the ranges are its runs of one
/// window.
pub fn snapshot(
    blocks: impl IntoIterator<Item = (u64, u64)>,
    count: usize,
    allocator: Allocator,
    glibc: &GlibcMmap,
) -> FragmentationSnapshot {
    let header = allocator.header_bytes();
    let mut mmapped_blocks = 0;
    let mut footprints: Vec<(u64, u64)> = Vec::with_capacity(count);
    for (addr, size) in blocks {
        let mmapped = allocator == Allocator::Glibc && glibc.is_mmapped(size);
        if mmapped {
            mmapped_blocks += 1;
            continue;
        }
        let usable = allocator.usable_size(size, false).unwrap_or(size);
        let start = addr.saturating_sub(header);
        let end = addr.saturating_add(usable);
        footprints.push((start, end));
    }
    footprints.sort_unstable();
    let mut computed: Vec<RangeFragmentation> = footprints
        .chunk_by(|a, b| a.0 >> RANGE_SHIFT == b.0 >> RANGE_SHIFT)
        .map(|footprints| {
            let first = footprints[0].0;
            let (mut used, mut free, mut largest, mut reached) = (0, 0, 0, first);
            for &(start, end) in footprints {
                if start > reached {
                    free += start - reached;
                    largest = largest.max(start - reached);
                }
                // Overlaps (an allocator rule that does not fit) are counted once.
                used += end.saturating_sub(start.max(reached));
                reached = reached.max(end);
            }
            RangeFragmentation {
                start: format!("{first:#x}"),
                end: format!("{reached:#x}"),
                blocks: footprints.len() as u64,
                used_bytes: used,
                free_bytes: free,
                largest_free_bytes: largest,
                fragmentation: if free == 0 {
                    0.0
                } else {
                    1.0 - largest as f64 / free as f64
                },
            }
        })
        .collect();
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
