//! Realloc chains (one block reallocated again and again) and frees that released nothing.
//!
//! A chain follows a block through its reallocs, wherever they move it; it ends when the
//! block is freed. Only blocks reallocated at least once are tracked (bounded by the live
//! heap), and only the [`CHAINS_KEPT`] longest finished chains are kept.

use super::{Analysis, Observed, SessionEnd};
use crate::event::Event;
use crate::fasthash::FastHashMap;
use crate::heap::{Block, Effect};
use crate::stacks::StackId;
use profiler_common::EventKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Chains with at least this many reallocs are reported.
pub const MIN_CHAIN: u32 = 2;
pub const CHAINS_KEPT: usize = 16;
/// Frees of no live block kept with their details (all are counted).
pub const ODD_FREES_KEPT: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Reallocs applied to the block.
    pub reallocs: u32,
    pub first_size: u64,
    pub final_size: u64,
    /// Where the block was first allocated, and where it was last reallocated.
    pub origin_stack: Option<StackId>,
    pub last_stack: Option<StackId>,
    pub first_ts_ns: u64,
    /// Still live at the end.
    pub live: bool,
}

/// A free (or realloc) of a pointer that was not live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OddFree {
    pub kind: EventKind,
    pub addr: u64,
    pub tid: u32,
    pub ts_ns: u64,
}

#[derive(Debug)]
pub struct Reallocs {
    pub reallocs: u64,
    live: FastHashMap<u64, Chain>,
    /// The longest finished chains, longest first.
    finished: Vec<Chain>,
    pub odd_frees: Vec<OddFree>,
}

impl Default for Reallocs {
    fn default() -> Self {
        Self {
            reallocs: 0,
            live: FastHashMap::default(),
            finished: Vec::with_capacity(CHAINS_KEPT + 1),
            odd_frees: Vec::with_capacity(ODD_FREES_KEPT),
        }
    }
}

impl Analysis for Reallocs {
    type Report = ReallocsReport;

    #[inline]
    fn observe(&mut self, seen: &Observed<'_>) {
        self.follow(seen.event, seen.effect);
    }

    fn report(&self, input: &SessionEnd<'_>) -> ReallocsReport {
        let stats = input.heap.stats();
        let doubles: BTreeMap<(u64, u64), Option<StackId>> = input
            .heap
            .double_frees()
            .iter()
            .map(|double| ((double.addr, double.ts_ns), double.alloc_stack))
            .collect();
        ReallocsReport {
            reallocs: self.reallocs,
            longest_chains: self
                .longest()
                .into_iter()
                .map(|chain| ChainReport {
                    reallocs: chain.reallocs,
                    first_size: chain.first_size,
                    final_size: chain.final_size,
                    stack_id: chain.origin_stack.map(|id| id.0),
                    last_realloc_stack_id: chain.last_stack.map(|id| id.0),
                    first_seen_secs: input.secs(chain.first_ts_ns),
                    live: chain.live,
                })
                .collect(),
            unknown_frees: stats.unknown_frees,
            double_frees: stats.double_frees,
            unknown_reallocs: stats.unknown_reallocs,
            odd_frees: self
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
                        time_secs: input.secs(odd.ts_ns),
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

impl Reallocs {
    fn follow(&mut self, event: &Event, effect: &Effect) {
        let kind = event.kind;
        if let Some((addr, block)) = &effect.overwritten {
            self.end(*addr, block);
        }
        let is_realloc = is_realloc(kind);
        match (&effect.released, &effect.created) {
            (Some((old, block)), Some((new, created))) if is_realloc => {
                self.reallocs += 1;
                let mut chain = self.take(*old, block).unwrap_or(Chain {
                    reallocs: 0,
                    first_size: block.size,
                    final_size: block.size,
                    origin_stack: block.stack,
                    last_stack: block.stack,
                    first_ts_ns: block.ts_ns,
                    live: true,
                });
                chain.reallocs += 1;
                chain.final_size = created.size;
                chain.last_stack = created.stack;
                self.live.insert(*new, chain);
            }
            (Some((old, block)), _) => self.end(*old, block),
            (None, _) => {
                // A failed realloc (NULL for a non-zero size) leaves its block live: not odd.
                let failed = event.addr == 0 && event.size != 0;
                // The allocator recycling its own caches (glibc's tcache at thread exit) is
                // not the program's doing.
                let internal = event.flags & profiler_common::FLAG_ALLOCATOR_INTERNAL != 0;
                let odd_pointer = match kind {
                    EventKind::Free | EventKind::OperatorDelete if !internal => Some(event.addr),
                    EventKind::Realloc | EventKind::Reallocarray if !failed => Some(event.old_addr),
                    _ => None,
                };
                if let Some(pointer) = odd_pointer.filter(|&p| p != 0)
                    && self.odd_frees.len() < ODD_FREES_KEPT
                {
                    self.odd_frees.push(OddFree {
                        kind,
                        addr: pointer,
                        tid: event.tid,
                        ts_ns: event.ts_ns,
                    });
                }
            }
        }
    }

    /// The live block `block` at `addr` ended (freed, or overwritten).
    fn end(&mut self, addr: u64, block: &Block) {
        if let Some(mut chain) = self.take(addr, block) {
            chain.live = false;
            self.keep(chain);
        }
    }

    /// Removes the chain of the live block `block` at `addr`, if it has one. A chain is only
    /// ever keyed by the address of a block a realloc created (and removed when that block
    /// stops being live), so any other block has none: most frees skip the lookup.
    #[inline]
    fn take(&mut self, addr: u64, block: &Block) -> Option<Chain> {
        if !is_realloc(block.kind) {
            return None;
        }
        self.live.remove(&addr)
    }

    fn keep(&mut self, chain: Chain) {
        if chain.reallocs < MIN_CHAIN {
            return;
        }
        let at = self.finished.partition_point(|kept| longer(kept, &chain));
        if at < CHAINS_KEPT {
            self.finished.insert(at, chain);
            self.finished.truncate(CHAINS_KEPT);
        }
    }

    /// The longest chains, finished or still live: longest first, then oldest.
    pub fn longest(&self) -> Vec<Chain> {
        let mut chains = self.finished.clone();
        chains.extend(
            self.live
                .values()
                .filter(|chain| chain.reallocs >= MIN_CHAIN)
                .copied(),
        );
        chains.sort_by(|a, b| {
            b.reallocs
                .cmp(&a.reallocs)
                .then(a.first_ts_ns.cmp(&b.first_ts_ns))
                .then(a.first_size.cmp(&b.first_size))
                .then(a.final_size.cmp(&b.final_size))
        });
        chains.truncate(CHAINS_KEPT);
        chains
    }
}

fn is_realloc(kind: EventKind) -> bool {
    matches!(kind, EventKind::Realloc | EventKind::Reallocarray)
}

/// Ordering of kept chains: more reallocs first, then older.
fn longer(a: &Chain, b: &Chain) -> bool {
    (a.reallocs, std::cmp::Reverse(a.first_ts_ns)) >= (b.reallocs, std::cmp::Reverse(b.first_ts_ns))
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

impl ReallocsReport {
    /// The stacks it refers to.
    pub fn stack_ids(&self) -> impl Iterator<Item = u32> + '_ {
        let chains = self.longest_chains.iter().flat_map(|chain| {
            chain
                .stack_id
                .into_iter()
                .chain(chain.last_realloc_stack_id)
        });
        chains.chain(self.odd_frees.iter().filter_map(|odd| odd.alloc_stack_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::{HeapState, Mode};
    use proptest::prelude::*;

    const KINDS: [EventKind; 4] = [
        EventKind::Malloc,
        EventKind::Realloc,
        EventKind::Reallocarray,
        EventKind::Free,
    ];

    proptest! {
        /// `Reallocs::take` skips the chain lookup for blocks no realloc created, which is
        /// only right if every chain is keyed by a live block that a realloc created, whatever
        /// the events (failed calls, unknown pointers, overwrites, in-place reallocs...).
        #[test]
        fn chains_are_keyed_by_live_blocks_a_realloc_created(
            calls in prop::collection::vec((0..KINDS.len(), 0u64..6, 0u64..6, 0u64..3), 1..300)
        ) {
            let mut heap = HeapState::new(Mode::Run);
            let mut reallocs = Reallocs::default();
            for (ts_ns, (kind, addr, old, size)) in calls.into_iter().enumerate() {
                let kind = KINDS[kind];
                let event = Event {
                    kind,
                    tid: 1,
                    ts_ns: ts_ns as u64,
                    addr: addr * 16,
                    size: size * 8,
                    old_addr: if is_realloc(kind) { old * 16 } else { 0 },
                    aux: 0,
                    flags: 0,
                };
                let effect = heap.apply(&event, Some(StackId(kind as u32)));
                reallocs.follow(&event, &effect);
                for addr in reallocs.live.keys() {
                    let kind = heap.blocks().find(|(a, _)| a == addr).map(|(_, b)| b.kind);
                    prop_assert!(kind.is_some_and(is_realloc), "chain at {addr:#x}: {kind:?}");
                }
            }
        }
    }
}
