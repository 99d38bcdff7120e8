//! The live view's threads: allocations and live blocks counted per (thread, site) as records
//! arrive, for the Threads view and for the Sites of one thread (`t`). A snapshot reads the
//! counts, never the heap: on python3 (4.5 million live blocks) grouping the heap's blocks at
//! each snapshot was most of `memprof view`'s time.

use std::collections::{BTreeMap, HashMap};

use super::SiteRow;
use crate::fasthash::FastHashMap;
use crate::heap::{Block, Effect};
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

/// What one (thread, stack) allocated and holds. The live counts go down as blocks end,
/// so a change being gathered can be negative; the totals never are.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    allocations: u64,
    allocated_bytes: u64,
    live_bytes: u64,
    live_blocks: u64,
}

impl Tally {
    fn add(&mut self, change: &Tally) {
        self.allocations += change.allocations;
        self.allocated_bytes += change.allocated_bytes;
        self.live_bytes = self.live_bytes.wrapping_add(change.live_bytes);
        self.live_blocks = self.live_blocks.wrapping_add(change.live_blocks);
    }
}

type Key = (u32, Option<StackId>);

/// Allocations and live blocks per (thread, stack) so far.
#[derive(Debug, Default)]
pub(super) struct ThreadTallies {
    tallies: FastHashMap<Key, Tally>,
    /// The changes of the last (thread, stack) seen, not yet in `tallies`: a loop allocating
    /// and freeing at one site costs one map lookup per run, not one per call.
    pending: Option<(Key, Tally)>,
    /// Each thread's allocations at the previous snapshot, and when it was taken.
    previous: (u64, HashMap<u32, u64>),
}

impl ThreadTallies {
    /// Follows one applied record: the block it created, those it ended.
    #[inline]
    pub(super) fn observe(&mut self, effect: &Effect) {
        if let Some((_, block)) = &effect.created {
            let change = self.change(block);
            change.allocations += 1;
            change.allocated_bytes += block.size;
            change.live_bytes = change.live_bytes.wrapping_add(block.size);
            change.live_blocks = change.live_blocks.wrapping_add(1);
        }
        for (_, block) in effect.ended() {
            let change = self.change(block);
            change.live_bytes = change.live_bytes.wrapping_sub(block.size);
            change.live_blocks = change.live_blocks.wrapping_sub(1);
        }
    }

    /// The pending change of `block`'s (thread, stack), the previous one flushed if it was
    /// another's.
    #[inline]
    fn change(&mut self, block: &Block) -> &mut Tally {
        let key = (block.tid, block.stack);
        if self
            .pending
            .as_ref()
            .is_none_or(|(pending, _)| *pending != key)
        {
            self.flush();
            self.pending = Some((key, Tally::default()));
        }
        &mut self.pending.as_mut().expect("set above").1
    }

    fn flush(&mut self) {
        if let Some((key, change)) = self.pending.take() {
            self.tallies.entry(key).or_default().add(&change);
        }
    }

    /// Every thread (most live bytes first) and, when more than one allocated, each one's
    /// share of each site.
    pub(super) fn rows(&mut self, now_ns: u64) -> (Vec<ThreadRow>, Vec<ThreadSite>) {
        self.flush();
        // Sorted by (thread, stack), as the Sites of one thread list them.
        let shares: BTreeMap<Key, ThreadSite> = self
            .tallies
            .iter()
            .filter(|(_, tally)| tally.allocations > 0 || tally.live_blocks > 0)
            .map(|(&(tid, stack), tally)| {
                let share = ThreadSite {
                    tid,
                    stack: stack.unwrap_or(StackId(u32::MAX)),
                    live_bytes: tally.live_bytes,
                    live_blocks: tally.live_blocks,
                    allocations: tally.allocations,
                    allocated_bytes: tally.allocated_bytes,
                };
                ((tid, stack), share)
            })
            .collect();
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
