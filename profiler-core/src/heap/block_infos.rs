//! What blocks have in common: their size, kind, thread and stack. Each distinct combination is
//! stored once and named by a 32-bit id, so that an entry of the heap's address table is its
//! address, a time and that id (16 bytes; heaptrack interns (size, stack) the same way).
//! A program's blocks come from far fewer combinations than blocks (see ARCHITECTURE.md for
//! python3's).

use crate::fasthash::FastHashMap;
use crate::stacks::StackId;
use profiler_common::EventKind;
use std::hash::{Hash, Hasher};

/// Bits of `size_kind` holding the size; the kind sits above them.
const SIZE_BITS: u32 = 56;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;

/// A block's size, kind, thread and stack, packed into 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BlockInfo {
    /// The size below 2^56 and the kind above it.
    size_kind: u64,
    /// The stack id + 1 (0: none).
    stack: u32,
    tid: u32,
}

impl Hash for BlockInfo {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.size_kind);
        state.write_u64(u64::from(self.stack) << 32 | u64::from(self.tid));
    }
}

impl BlockInfo {
    /// The packed form, if the fields fit: a size below 2^56 (no allocator hands out more)
    /// and a stack id below u32::MAX.
    pub(super) fn new(
        size: u64,
        kind: EventKind,
        tid: u32,
        stack: Option<StackId>,
    ) -> Option<BlockInfo> {
        if size > SIZE_MASK {
            return None;
        }
        let stack = match stack {
            Some(id) => id.0.checked_add(1)?,
            None => 0,
        };
        Some(BlockInfo {
            size_kind: (kind as u64) << SIZE_BITS | size,
            stack,
            tid,
        })
    }

    pub(super) fn size(&self) -> u64 {
        self.size_kind & SIZE_MASK
    }

    pub(super) fn kind(&self) -> EventKind {
        EventKind::from_u32((self.size_kind >> SIZE_BITS) as u32).expect("packed from a kind")
    }

    pub(super) fn tid(&self) -> u32 {
        self.tid
    }

    pub(super) fn stack(&self) -> Option<StackId> {
        self.stack.checked_sub(1).map(StackId)
    }
}

/// The distinct [`BlockInfo`]s seen, by id.
#[derive(Debug, Default)]
pub(super) struct BlockInfos {
    by_id: Vec<BlockInfo>,
    ids: FastHashMap<BlockInfo, u32>,
}

impl BlockInfos {
    /// `info`'s id, giving it the next one if it is new. None once 2^32 - 1 are held.
    #[inline]
    pub(super) fn intern(&mut self, info: BlockInfo) -> Option<u32> {
        if let Some(&id) = self.ids.get(&info) {
            return Some(id);
        }
        let id = u32::try_from(self.by_id.len())
            .ok()
            .filter(|&id| id < u32::MAX)?;
        self.by_id.push(info);
        self.ids.insert(info, id);
        Some(id)
    }

    #[inline]
    pub(super) fn get(&self, id: u32) -> &BlockInfo {
        &self.by_id[id as usize]
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Keeps only the infos `used` marks (indexed by id) and returns each old id's new one
    /// (u32::MAX for those dropped).
    pub(super) fn compact(&mut self, used: &[bool]) -> Vec<u32> {
        let mut renumbered = vec![u32::MAX; self.by_id.len()];
        let old = std::mem::take(&mut self.by_id);
        self.ids = FastHashMap::default();
        for (old_id, info) in old.into_iter().enumerate() {
            if used[old_id] {
                renumbered[old_id] = self.intern(info).expect("fewer than before");
            }
        }
        renumbered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infos_round_trip_at_the_edges() {
        for kind in EventKind::ALL {
            for stack in [None, Some(StackId(0)), Some(StackId(u32::MAX - 1))] {
                let info = BlockInfo::new(SIZE_MASK, kind, u32::MAX, stack).unwrap();
                assert_eq!(
                    (info.size(), info.kind(), info.tid(), info.stack()),
                    (SIZE_MASK, kind, u32::MAX, stack)
                );
            }
        }
        assert_eq!(
            BlockInfo::new(SIZE_MASK + 1, EventKind::Malloc, 1, None),
            None
        );
        assert_eq!(
            BlockInfo::new(1, EventKind::Malloc, 1, Some(StackId(u32::MAX))),
            None
        );
    }

    #[test]
    fn equal_infos_share_an_id_and_compaction_renumbers_the_used_ones() {
        let mut infos = BlockInfos::default();
        let info = |size| BlockInfo::new(size, EventKind::Malloc, 7, Some(StackId(3))).unwrap();
        assert_eq!(infos.intern(info(16)), Some(0));
        assert_eq!(infos.intern(info(32)), Some(1));
        assert_eq!(infos.intern(info(16)), Some(0));
        assert_eq!(infos.intern(info(48)), Some(2));
        assert_eq!(infos.len(), 3);
        let renumbered = infos.compact(&[false, true, true]);
        assert_eq!(renumbered, vec![u32::MAX, 0, 1]);
        assert_eq!(infos.get(0).size(), 32);
        assert_eq!(infos.get(1).size(), 48);
        assert_eq!(infos.intern(info(48)), Some(1));
        assert_eq!(infos.intern(info(16)), Some(2));
    }
}
