//! What the heap's address table holds for an address: a live block or the block last freed
//! there, packed into 24 bytes. With its 8-byte key an entry is then 32 bytes: two per cache
//! line, none straddling two. The unpacked entry was 48 bytes; on python3 (4.5 million live
//! blocks) the table was most of memprof's memory, and zeroing its pages as it grew took a
//! tenth of the collector's time (`perf`).

use profiler_common::EventKind;

use super::{Block, FreedBlock};
use crate::stacks::StackId;

/// Bits of `size_kind` holding the size; the kind sits above them.
const SIZE_BITS: u32 = 56;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;

/// A packed [`Block`] or [`FreedBlock`]. All zero (the default) is a freed block of 0 bytes
/// with no stack: what an empty entry of the table holds.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Slot {
    /// The size in bytes (below 2^56: no allocator hands out more), and above it the kind of
    /// a live block, 0 for a freed one (kinds start at 1).
    size_kind: u64,
    /// When the block was allocated (live) or freed (freed).
    ts_ns: u64,
    /// The stack id + 1 (0: none) in the low half; the allocating thread in the high half.
    stack_tid: u64,
}

/// A slot unpacked.
pub(super) enum SlotView {
    Live(Block),
    Freed(FreedBlock),
}

fn pack_stack(stack: Option<StackId>, tid: u32) -> u64 {
    // An id of u32::MAX (four billion stacks) would not fit: kept as no stack.
    let stack = stack.and_then(|id| id.0.checked_add(1)).unwrap_or(0);
    u64::from(tid) << 32 | u64::from(stack)
}

impl Slot {
    pub(super) fn live(block: &Block) -> Slot {
        Slot {
            size_kind: (block.kind as u64) << SIZE_BITS | block.size.min(SIZE_MASK),
            ts_ns: block.ts_ns,
            stack_tid: pack_stack(block.stack, block.tid),
        }
    }

    pub(super) fn freed(freed: &FreedBlock) -> Slot {
        Slot {
            size_kind: freed.size.min(SIZE_MASK),
            ts_ns: freed.free_ts_ns,
            stack_tid: pack_stack(freed.stack, 0),
        }
    }

    fn kind(&self) -> Option<EventKind> {
        EventKind::from_u32((self.size_kind >> SIZE_BITS) as u32)
    }

    pub(super) fn is_live(&self) -> bool {
        self.kind().is_some()
    }

    fn stack(&self) -> Option<StackId> {
        (self.stack_tid as u32).checked_sub(1).map(StackId)
    }

    pub(super) fn view(&self) -> SlotView {
        let size = self.size_kind & SIZE_MASK;
        match self.kind() {
            Some(kind) => SlotView::Live(Block {
                size,
                kind,
                tid: (self.stack_tid >> 32) as u32,
                ts_ns: self.ts_ns,
                stack: self.stack(),
            }),
            None => SlotView::Freed(FreedBlock {
                size,
                stack: self.stack(),
                free_ts_ns: self.ts_ns,
            }),
        }
    }

    /// The block, if live.
    pub(super) fn live_block(&self) -> Option<Block> {
        match self.view() {
            SlotView::Live(block) => Some(block),
            SlotView::Freed(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn live_blocks_round_trip() {
        for kind in EventKind::ALL {
            for stack in [None, Some(StackId(0)), Some(StackId(u32::MAX - 1))] {
                let block = Block {
                    size: SIZE_MASK,
                    kind,
                    tid: u32::MAX,
                    ts_ns: u64::MAX,
                    stack,
                };
                let slot = Slot::live(&block);
                assert!(slot.is_live());
                assert_eq!(slot.live_block(), Some(block));
            }
        }
    }

    #[test]
    fn freed_blocks_round_trip() {
        let freed = FreedBlock {
            size: 48,
            stack: Some(StackId(7)),
            free_ts_ns: 99,
        };
        let slot = Slot::freed(&freed);
        assert!(!slot.is_live());
        assert!(matches!(slot.view(), SlotView::Freed(f) if f == freed));
        assert!(matches!(
            Slot::default().view(),
            SlotView::Freed(FreedBlock {
                size: 0,
                stack: None,
                free_ts_ns: 0
            })
        ));
    }
}
