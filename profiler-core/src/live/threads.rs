//! The live view's threads: allocations counted per (thread, site) as records arrive, and the
//! live blocks grouped the same way at each snapshot, for the Threads view and for the Sites
//! of one thread (`t`).

use std::collections::{BTreeMap, HashMap};

use super::SiteRow;
use crate::fasthash::FastHashMap;
use crate::heap::Block;
use crate::recorder::Recorder;
use crate::stacks::StackId;

#[derive(Clone, Debug, PartialEq)]
pub struct ThreadRow {
    pub tid: u32,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub allocations: u64,
    /// Allocations per second since the previous snapshot (0 at the first).
    pub allocations_per_sec: f64,
}

/// One thread's share of one site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadSite {
    pub tid: u32,
    pub stack: StackId,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub allocations: u64,
    pub allocated_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    allocations: u64,
    allocated_bytes: u64,
}

/// Allocations per (thread, stack) so far.
#[derive(Debug, Default)]
pub(super) struct ThreadTallies {
    tallies: FastHashMap<(u32, Option<StackId>), Tally>,
    /// The last (thread, stack) allocated from, not yet in `tallies`: a loop allocating at one
    /// site costs one map lookup per run, not one per allocation.
    pending: Option<((u32, Option<StackId>), Tally)>,
    /// Each thread's allocations at the previous snapshot, and when it was taken.
    previous: (u64, HashMap<u32, u64>),
}

impl ThreadTallies {
    #[inline]
    pub(super) fn allocated(&mut self, block: &Block) {
        let key = (block.tid, block.stack);
        match &mut self.pending {
            Some((pending, tally)) if *pending == key => {
                tally.allocations += 1;
                tally.allocated_bytes += block.size;
            }
            _ => {
                self.flush();
                let tally = Tally {
                    allocations: 1,
                    allocated_bytes: block.size,
                };
                self.pending = Some((key, tally));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((key, tally)) = self.pending.take() {
            let total = self.tallies.entry(key).or_default();
            total.allocations += tally.allocations;
            total.allocated_bytes += tally.allocated_bytes;
        }
    }

    /// Every thread (most live bytes first) and, when more than one allocated, each one's
    /// share of each site.
    pub(super) fn rows(
        &mut self,
        recorder: &Recorder,
        now_ns: u64,
    ) -> (Vec<ThreadRow>, Vec<ThreadSite>) {
        self.flush();
        let mut shares: BTreeMap<(u32, Option<StackId>), ThreadSite> = BTreeMap::new();
        let share = |tid: u32, stack: Option<StackId>| ThreadSite {
            tid,
            stack: stack.unwrap_or(StackId(u32::MAX)),
            live_bytes: 0,
            live_blocks: 0,
            allocations: 0,
            allocated_bytes: 0,
        };
        for (&(tid, stack), tally) in &self.tallies {
            let entry = shares
                .entry((tid, stack))
                .or_insert_with(|| share(tid, stack));
            entry.allocations = tally.allocations;
            entry.allocated_bytes = tally.allocated_bytes;
        }
        for (_, block) in recorder.heap.blocks() {
            let key = (block.tid, block.stack);
            let entry = shares
                .entry(key)
                .or_insert_with(|| share(block.tid, block.stack));
            entry.live_bytes += block.size;
            entry.live_blocks += 1;
        }
        let mut threads: BTreeMap<u32, ThreadRow> = BTreeMap::new();
        for site in shares.values() {
            let row = threads.entry(site.tid).or_insert(ThreadRow {
                tid: site.tid,
                live_bytes: 0,
                live_blocks: 0,
                allocations: 0,
                allocations_per_sec: 0.0,
            });
            row.live_bytes += site.live_bytes;
            row.live_blocks += site.live_blocks;
            row.allocations += site.allocations;
        }
        let (then_ns, before) = &self.previous;
        if now_ns > *then_ns && !before.is_empty() {
            let secs = (now_ns - then_ns) as f64 / 1e9;
            for row in threads.values_mut() {
                let earlier = before.get(&row.tid).copied().unwrap_or(0);
                row.allocations_per_sec = row.allocations.saturating_sub(earlier) as f64 / secs;
            }
        }
        self.previous = (
            now_ns,
            threads.values().map(|t| (t.tid, t.allocations)).collect(),
        );
        let mut threads: Vec<ThreadRow> = threads.into_values().collect();
        threads.sort_by(|a, b| {
            (b.live_bytes, b.allocations, a.tid).cmp(&(a.live_bytes, a.allocations, b.tid))
        });
        let thread_sites = match threads.len() {
            0 | 1 => Vec::new(),
            _ => shares
                .into_iter()
                .filter(|((_, stack), _)| stack.is_some())
                .map(|(_, site)| site)
                .collect(),
        };
        (threads, thread_sites)
    }
}

/// The Sites of thread `tid` in `snapshot`: its share of each site it allocated at or holds
/// blocks of, named as the site. Rates are per site, so a thread's rows have none.
pub fn thread_site_rows(snapshot: &super::Snapshot, tid: u32) -> Vec<SiteRow> {
    if snapshot.thread_sites.is_empty() {
        // One thread allocated (or none): its sites are all of them.
        let only = snapshot.threads.first().is_some_and(|t| t.tid == tid);
        return match only {
            true => snapshot.sites.clone(),
            false => Vec::new(),
        };
    }
    let names: HashMap<StackId, &SiteRow> = snapshot.sites.iter().map(|s| (s.stack, s)).collect();
    snapshot
        .thread_sites
        .iter()
        .filter(|share| share.tid == tid)
        .filter_map(|share| {
            let site = names.get(&share.stack)?;
            Some(SiteRow {
                stack: share.stack,
                names: site.names.clone(),
                live_bytes: share.live_bytes,
                live_blocks: share.live_blocks,
                allocations: share.allocations,
                allocated_bytes: share.allocated_bytes,
                growth_bytes_per_sec: None,
            })
        })
        .collect()
}
