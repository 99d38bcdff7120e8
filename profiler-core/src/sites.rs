//! Per-allocation-site statistics: for every stack, how much it allocated, how much of it is
//! live now, and how much of it was live at the moment of the heap's global peak.
//!
//! Follows the heap through the [`Effect`] of each event, so it never keeps a second copy of the
//! blocks. "Live at the peak" is kept exact in O(1) per event with a peak epoch: each new global
//! peak bumps the epoch, and a site whose last change is older than the current epoch copies its
//! live figures into its at-peak figures before it changes again (its values then are exactly
//! what they were at the latest peak).

use crate::event::Event;
use crate::heap::{Block, Effect};
use crate::stacks::StackId;

/// What one stack did, as returned by [`SiteStats::get`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SiteCounts {
    /// Successful malloc-family calls attributed to this stack.
    pub allocations: u64,
    /// Bytes requested by them.
    pub allocated_bytes: u64,
    /// Live now.
    pub live_blocks: u64,
    pub live_bytes: u64,
    /// Live at the moment of the global malloc-family peak (`HeapStats::peak_live_bytes`).
    pub peak_live_blocks: u64,
    pub peak_live_bytes: u64,
    /// Time of the first and of the last allocation (CLOCK_MONOTONIC ns).
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Site {
    counts: SiteCounts,
    /// The global epoch when this site last changed; `counts.peak_*` are valid only up to it.
    epoch: u64,
}

impl Site {
    /// Brings `peak_*` up to date before a change: a peak happened since the last change iff
    /// the epoch moved, and then the live figures have not changed since that peak.
    fn settle(&mut self, epoch: u64) {
        if self.epoch < epoch {
            self.counts.peak_live_blocks = self.counts.live_blocks;
            self.counts.peak_live_bytes = self.counts.live_bytes;
            self.epoch = epoch;
        }
    }

    fn counts(&self, epoch: u64) -> SiteCounts {
        let mut settled = *self;
        settled.settle(epoch);
        settled.counts
    }
}

/// Counts per [`StackId`], in a dense vector indexed by the id (ids are allocated densely by
/// the stack table).
#[derive(Debug, Default)]
pub struct SiteStats {
    sites: Vec<Site>,
    /// Number of global peaks seen so far.
    epoch: u64,
}

impl SiteStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows one applied event. `stack` is the event's stack; the blocks in `effect` carry
    /// their own (a free releases a block allocated elsewhere).
    pub fn observe(&mut self, _event: &Event, _stack: Option<StackId>, effect: &Effect) {
        for (_, block) in effect.ended() {
            self.release(block);
        }
        if let Some((_, block)) = &effect.created {
            self.create(block);
        }
        if effect.new_peak {
            // Sites changed by this event settle lazily: the peak includes their change.
            self.epoch += 1;
        }
    }

    /// The counts of `id`; all zero for a stack that never allocated.
    pub fn get(&self, id: StackId) -> SiteCounts {
        self.sites
            .get(id.0 as usize)
            .map_or_else(SiteCounts::default, |site| site.counts(self.epoch))
    }

    /// Every stack that allocated at least once, by ascending id.
    pub fn iter(&self) -> impl Iterator<Item = (StackId, SiteCounts)> + '_ {
        self.sites
            .iter()
            .enumerate()
            .filter(|(_, site)| site.counts.allocations > 0)
            .map(|(index, site)| (StackId(index as u32), site.counts(self.epoch)))
    }

    fn site_mut(&mut self, id: StackId) -> &mut Site {
        let index = id.0 as usize;
        if index >= self.sites.len() {
            self.sites.resize(index + 1, Site::default());
        }
        let site = &mut self.sites[index];
        site.settle(self.epoch);
        site
    }

    fn create(&mut self, block: &Block) {
        let Some(id) = block.stack else { return };
        let counts = &mut self.site_mut(id).counts;
        if counts.allocations == 0 {
            counts.first_ts_ns = block.ts_ns;
        }
        counts.allocations += 1;
        counts.allocated_bytes += block.size;
        counts.last_ts_ns = block.ts_ns;
        counts.live_blocks += 1;
        counts.live_bytes += block.size;
    }

    fn release(&mut self, block: &Block) {
        let Some(id) = block.stack else { return };
        let counts = &mut self.site_mut(id).counts;
        counts.live_blocks -= 1;
        counts.live_bytes -= block.size;
    }
}

#[cfg(test)]
mod tests;
