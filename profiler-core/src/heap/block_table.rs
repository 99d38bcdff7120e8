//! What the heap remembers at each address: a live block, or the block last freed there until
//! the address is handed out again.
//!
//! The common case packs into an [`AddressTable`] entry of 16 bytes: the address, the time in
//! clock ticks and the id of the block's [`BlockInfo`] (size, kind, thread, stack). What does
//! not pack (an address at or above 2^48, a time that is not a whole tick or beyond 2^47 ticks,
//! a size of 2^56 or more) is kept whole in a map beside it, so every figure stays exact.

use super::address_table::AddressTable;
use super::block_infos::{BlockInfo, BlockInfos};
use super::{Block, FreedBlock};
use crate::event::CLOCK_TICK_NS;
use crate::fasthash::FastHashMap;
use value_bits::*;

/// What an address holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remembered {
    Live(Block),
    Freed(FreedBlock),
}

/// The layout of a table value: the info id in bits 0-31, "freed" in bit 32, the time in
/// ticks (allocation time while live, free time once freed) in bits 33-79.
mod value_bits {
    pub const ID_BITS: u32 = 32;
    pub const FREED: u128 = 1 << ID_BITS;
    pub const TICK_SHIFT: u32 = ID_BITS + 1;
    pub const TICK_BITS: u32 = super::super::address_table::VALUE_BITS - TICK_SHIFT;
    /// The value of an address whose block is in the overflow map (no info has this id).
    pub const OVERFLOW: u128 = u32::MAX as u128;
}

/// Infos are compacted (those no address refers to dropped) once there are this many and
/// more than twice as many as addresses: a program whose threads come and go keeps making new
/// ones, and they must not outgrow the heap.
const COMPACT_AT_INFOS: usize = 1 << 20;

/// `ts_ns` in ticks, if it is a whole number of them below 2^47.
fn ticks(ts_ns: u64) -> Option<u128> {
    let ticks = ts_ns / CLOCK_TICK_NS;
    (ts_ns.is_multiple_of(CLOCK_TICK_NS) && ticks >> TICK_BITS == 0).then_some(u128::from(ticks))
}

/// Blocks by address; see the module's documentation.
#[derive(Debug, Default)]
pub struct BlockTable {
    table: AddressTable,
    infos: BlockInfos,
    /// Blocks that do not pack: by addresses the table cannot hold, and by those whose table
    /// value is [`OVERFLOW`].
    overflow: FastHashMap<u64, Remembered>,
}

impl BlockTable {
    /// Packs a live block, if its fields fit.
    #[inline]
    fn pack_live(&mut self, block: &Block) -> Option<u128> {
        let ticks = ticks(block.ts_ns)?;
        let info = BlockInfo::new(block.size, block.kind, block.tid, block.stack)?;
        let id = self.infos.intern(info)?;
        Some(ticks << TICK_SHIFT | u128::from(id))
    }

    #[inline]
    fn unpack(&self, value: u128) -> Remembered {
        let info = self.infos.get(value as u32);
        let ts_ns = (value >> TICK_SHIFT) as u64 * CLOCK_TICK_NS;
        if value & FREED != 0 {
            Remembered::Freed(FreedBlock {
                size: info.size(),
                stack: info.stack(),
                free_ts_ns: ts_ns,
            })
        } else {
            Remembered::Live(Block {
                size: info.size(),
                kind: info.kind(),
                tid: info.tid(),
                ts_ns,
                stack: info.stack(),
            })
        }
    }

    /// What `addr` holds, if anything.
    #[inline]
    pub fn get(&self, addr: u64) -> Option<Remembered> {
        if !AddressTable::holds(addr) {
            return self.overflow.get(&addr).copied();
        }
        match self.table.get(addr)? {
            OVERFLOW => self.overflow.get(&addr).copied(),
            value => Some(self.unpack(value)),
        }
    }

    /// `addr` holds a live block.
    #[inline]
    pub fn is_live(&self, addr: u64) -> bool {
        matches!(self.get(addr), Some(Remembered::Live(_)))
    }

    /// A live block at `addr`; returns what the address held before. Address 0 holds nothing.
    #[inline]
    pub fn insert_live(&mut self, addr: u64, block: &Block) -> Option<Remembered> {
        if addr == 0 {
            return None;
        }
        if !AddressTable::holds(addr) {
            return self.overflow.insert(addr, Remembered::Live(*block));
        }
        let infos_before = self.infos.len();
        let packed = self.pack_live(block);
        let old = self.table.insert(addr, packed.unwrap_or(OVERFLOW));
        let old_overflow = match packed {
            None => self.overflow.insert(addr, Remembered::Live(*block)),
            Some(_) if old == Some(OVERFLOW) => self.overflow.remove(&addr),
            Some(_) => None,
        };
        let old = match old {
            Some(OVERFLOW) => old_overflow,
            Some(value) => Some(self.unpack(value)),
            None => None,
        };
        if self.infos.len() > infos_before {
            self.compact_infos_if_outgrown();
        }
        old
    }

    /// Ends the life of the live block at `addr` (freed at `ts_ns`) and returns it; the address
    /// then remembers it as freed. When `addr` holds no live block: the freed block it
    /// remembers, if any.
    #[inline]
    pub fn release(&mut self, addr: u64, ts_ns: u64) -> Result<Block, Option<FreedBlock>> {
        if !AddressTable::holds(addr) {
            return self.release_in_overflow(addr, ts_ns);
        }
        let value = self.table.get(addr).ok_or(None)?;
        if value == OVERFLOW {
            return self.release_in_overflow(addr, ts_ns);
        }
        let block = match self.unpack(value) {
            Remembered::Live(block) => block,
            Remembered::Freed(freed) => return Err(Some(freed)),
        };
        let id = value & u128::from(u32::MAX);
        match ticks(ts_ns) {
            Some(ticks) => self.table.insert(addr, ticks << TICK_SHIFT | FREED | id),
            None => {
                self.overflow
                    .insert(addr, Remembered::Freed(freed_from(&block, ts_ns)));
                self.table.insert(addr, OVERFLOW)
            }
        };
        Ok(block)
    }

    fn release_in_overflow(&mut self, addr: u64, ts_ns: u64) -> Result<Block, Option<FreedBlock>> {
        let remembered = self.overflow.get_mut(&addr).ok_or(None)?;
        match *remembered {
            Remembered::Live(block) => {
                *remembered = Remembered::Freed(freed_from(&block, ts_ns));
                Ok(block)
            }
            Remembered::Freed(freed) => Err(Some(freed)),
        }
    }

    /// Every address and what it holds, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Remembered)> + '_ {
        let packed = self.table.iter().filter_map(|(addr, value)| match value {
            OVERFLOW => None,
            value => Some((addr, self.unpack(value))),
        });
        packed.chain(self.overflow.iter().map(|(&addr, &held)| (addr, held)))
    }

    /// Forgets the freed blocks, keeping the live ones.
    pub fn retain_live(&mut self) {
        self.overflow
            .retain(|_, held| matches!(held, Remembered::Live(_)));
        let overflow = &self.overflow;
        self.table.retain(|addr, value| match value {
            OVERFLOW => overflow.contains_key(&addr),
            value => value & FREED == 0,
        });
        self.compact_infos();
    }

    /// A hint that an event about `addr` comes soon: its entry is brought into the cache.
    #[inline]
    pub fn prefetch(&self, addr: u64) {
        self.table.prefetch(addr);
    }

    fn compact_infos_if_outgrown(&mut self) {
        if self.infos.len() >= COMPACT_AT_INFOS && self.infos.len() > 2 * self.table.len() {
            self.compact_infos();
        }
    }

    /// Drops the infos no address refers to.
    fn compact_infos(&mut self) {
        let mut used = vec![false; self.infos.len()];
        for (_, value) in self.table.iter().filter(|&(_, value)| value != OVERFLOW) {
            used[value as u32 as usize] = true;
        }
        let renumbered = self.infos.compact(&used);
        self.table.map_values(|value| match value {
            OVERFLOW => OVERFLOW,
            value => value & !u128::from(u32::MAX) | u128::from(renumbered[value as u32 as usize]),
        });
    }

    /// Distinct infos held (for tests).
    #[cfg(test)]
    fn info_count(&self) -> usize {
        self.infos.len()
    }
}

fn freed_from(block: &Block, ts_ns: u64) -> FreedBlock {
    FreedBlock {
        size: block.size,
        stack: block.stack,
        free_ts_ns: ts_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::StackId;
    use profiler_common::EventKind;
    use proptest::prelude::*;

    fn block(size: u64, ts_ns: u64, tid: u32) -> Block {
        Block {
            size,
            kind: EventKind::Malloc,
            tid,
            ts_ns,
            stack: Some(StackId(5)),
        }
    }

    /// Blocks that pack and blocks that do not (address, time, size), through the same life:
    /// allocated, looked up, freed, freed again, handed out again.
    #[test]
    fn every_block_lives_and_dies_the_same_packed_or_not() {
        let cases = [
            (0x1000, block(24, 5_000, 1)),
            (1 << 48, block(24, 5_000, 1)),
            (0x2000, block(24, 5_001, 1)),
            (0x3000, block(24, (1 << TICK_BITS) * CLOCK_TICK_NS, 1)),
            (0x4000, block(1 << 56, 5_000, 1)),
            (
                0x5000,
                Block {
                    stack: Some(StackId(u32::MAX)),
                    ..block(8, 0, 2)
                },
            ),
        ];
        let mut blocks = BlockTable::default();
        for (addr, block) in cases {
            assert_eq!(blocks.insert_live(addr, &block), None);
            assert_eq!(blocks.get(addr), Some(Remembered::Live(block)), "{addr:#x}");
            assert!(blocks.is_live(addr));
            assert_eq!(blocks.release(addr, 7_000), Ok(block));
            let freed = freed_from(&block, 7_000);
            assert_eq!(blocks.get(addr), Some(Remembered::Freed(freed)));
            assert_eq!(blocks.release(addr, 8_000), Err(Some(freed)));
            assert!(!blocks.is_live(addr));
            let again = self::block(64, 9_000, 3);
            assert_eq!(
                blocks.insert_live(addr, &again),
                Some(Remembered::Freed(freed))
            );
            assert_eq!(blocks.get(addr), Some(Remembered::Live(again)));
        }
        assert_eq!(blocks.release(0x9000, 1_000), Err(None));
        assert_eq!(blocks.insert_live(0, &block(1, 0, 1)), None);
        assert_eq!(blocks.get(0), None);
        let mut all: Vec<u64> = blocks.iter().map(|(addr, _)| addr).collect();
        all.sort_unstable();
        assert_eq!(all, [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 1 << 48]);
    }

    #[test]
    fn a_free_at_an_odd_time_moves_a_packed_block_to_the_overflow_and_back() {
        let mut blocks = BlockTable::default();
        let live = block(32, 1_000, 1);
        blocks.insert_live(0x1000, &live);
        assert_eq!(blocks.release(0x1000, 1_234), Ok(live));
        let freed = freed_from(&live, 1_234);
        assert_eq!(blocks.get(0x1000), Some(Remembered::Freed(freed)));
        assert_eq!(blocks.overflow.len(), 1);
        assert_eq!(
            blocks.insert_live(0x1000, &live),
            Some(Remembered::Freed(freed))
        );
        assert_eq!(blocks.overflow.len(), 0, "packed again");
        assert_eq!(blocks.get(0x1000), Some(Remembered::Live(live)));
    }

    #[test]
    fn retain_live_forgets_freed_blocks_and_their_infos() {
        let mut blocks = BlockTable::default();
        for i in 1..=100u64 {
            blocks.insert_live(i * 16, &block(i, i * 1_000, 1));
            blocks.insert_live((1 << 48) + i * 16, &block(i, 1, 1));
        }
        for i in (2..=100u64).step_by(2) {
            blocks.release(i * 16, 500_000).unwrap();
            blocks.release((1 << 48) + i * 16, 500_000).unwrap();
        }
        assert_eq!(blocks.info_count(), 100);
        blocks.retain_live();
        assert_eq!(blocks.info_count(), 50);
        let mut live: Vec<(u64, Remembered)> = blocks.iter().collect();
        live.sort_unstable_by_key(|&(addr, _)| addr);
        let expected: Vec<(u64, Remembered)> = (1..=100u64)
            .step_by(2)
            .map(|i| (i * 16, Remembered::Live(block(i, i * 1_000, 1))))
            .chain(
                (1..=100u64)
                    .step_by(2)
                    .map(|i| ((1 << 48) + i * 16, Remembered::Live(block(i, 1, 1)))),
            )
            .collect();
        assert_eq!(live, expected);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate(u64, Block),
        Release(u64, u64),
        Get(u64),
        RetainLive,
    }

    /// Addresses from a small set, half of them beyond what the table holds; times, sizes and
    /// stacks that pack and that do not.
    fn op() -> impl Strategy<Value = Op> {
        let addr = (1..64u64, any::<bool>()).prop_map(|(a, high)| a * 16 + (u64::from(high) << 48));
        let ts = prop_oneof![
            (0..1_000u64).prop_map(|t| t * CLOCK_TICK_NS),
            0..1_000_000u64,
            Just((1 << TICK_BITS) * CLOCK_TICK_NS),
        ];
        let block = (
            1..100u64,
            ts.clone(),
            0..4u32,
            prop_oneof![
                Just(None),
                (0..3u32).prop_map(|s| Some(StackId(s))),
                Just(Some(StackId(u32::MAX)))
            ],
            any::<bool>(),
        )
            .prop_map(|(size, ts_ns, tid, stack, huge)| Block {
                size: if huge { size << 56 } else { size },
                kind: EventKind::Malloc,
                tid,
                ts_ns,
                stack,
            });
        prop_oneof![
            4 => (addr.clone(), block).prop_map(|(a, b)| Op::Allocate(a, b)),
            3 => (addr.clone(), ts).prop_map(|(a, t)| Op::Release(a, t)),
            2 => addr.prop_map(Op::Get),
            1 => Just(Op::RetainLive),
        ]
    }

    proptest! {
        /// The table remembers exactly what a plain map of whole blocks would.
        #[test]
        fn behaves_like_a_map_of_whole_blocks(ops in prop::collection::vec(op(), 1..400)) {
            let mut blocks = BlockTable::default();
            let mut model: std::collections::HashMap<u64, Remembered> = Default::default();
            for op in ops {
                match op {
                    Op::Allocate(addr, block) => {
                        let old = model.insert(addr, Remembered::Live(block));
                        prop_assert_eq!(blocks.insert_live(addr, &block), old);
                    }
                    Op::Release(addr, ts_ns) => {
                        let expected = match model.get(&addr).copied() {
                            None => Err(None),
                            Some(Remembered::Freed(freed)) => Err(Some(freed)),
                            Some(Remembered::Live(block)) => {
                                model.insert(addr, Remembered::Freed(freed_from(&block, ts_ns)));
                                Ok(block)
                            }
                        };
                        prop_assert_eq!(blocks.release(addr, ts_ns), expected);
                    }
                    Op::Get(addr) => prop_assert_eq!(blocks.get(addr), model.get(&addr).copied()),
                    Op::RetainLive => {
                        model.retain(|_, held| matches!(held, Remembered::Live(_)));
                        blocks.retain_live();
                    }
                }
            }
            let mut held: Vec<(u64, Remembered)> = blocks.iter().collect();
            held.sort_unstable_by_key(|&(addr, _)| addr);
            let mut expected: Vec<(u64, Remembered)> = model.into_iter().collect();
            expected.sort_unstable_by_key(|&(addr, _)| addr);
            prop_assert_eq!(held, expected);
        }
    }

    /// Threads that come and go make infos no block refers to any more: they are dropped once
    /// they outnumber the addresses twice over, and the blocks still read the same.
    #[test]
    fn infos_nobody_refers_to_are_compacted_away() {
        let mut blocks = BlockTable::default();
        let kept = block(40, 3_000, 0);
        blocks.insert_live(0x10, &kept);
        for tid in 1..=(COMPACT_AT_INFOS as u32 + 10) {
            blocks.insert_live(0x20, &block(40, 3_000, tid));
        }
        assert!(blocks.info_count() < 16, "{} infos", blocks.info_count());
        assert_eq!(blocks.get(0x10), Some(Remembered::Live(kept)));
        let last = block(40, 3_000, COMPACT_AT_INFOS as u32 + 10);
        assert_eq!(blocks.get(0x20), Some(Remembered::Live(last)));
    }
}
