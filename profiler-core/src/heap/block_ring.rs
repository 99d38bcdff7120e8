//! The last blocks the heap created, which a recording's writer and its replay both keep in
//! step: what the heap's table would answer for an address among them needs no recording (a
//! free of a block allocated a few calls earlier, the common case), only the other answers
//! do. This is what lets `memprof report` replay a recording without a table of every
//! address (see [`Lookup`]).

use super::Block;
use crate::recording::recent::{RecentBlocks, WINDOW};
use crate::stacks::StackId;

/// What the heap's table held at an address when the heap looked it up for an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Nothing live (nor, for a release, remembered as freed).
    Absent,
    Live(Block),
    /// A block freed and not handed out again (only a release tells this apart from
    /// [`Lookup::Absent`]: it makes a double free in Run mode).
    Freed {
        size: u64,
        stack: Option<StackId>,
    },
}

/// The last [`WINDOW`] blocks created, with whether each is still live.
#[derive(Clone, Debug)]
pub struct BlockRing {
    addrs: RecentBlocks,
    /// By ring position, as [`RecentBlocks`] places addresses.
    blocks: [(Block, bool); WINDOW as usize],
    pushed: u64,
}

impl Default for BlockRing {
    fn default() -> Self {
        let none = Block {
            size: 0,
            kind: profiler_common::EventKind::Malloc,
            tid: 0,
            ts_ns: 0,
            stack: None,
        };
        BlockRing {
            addrs: RecentBlocks::default(),
            blocks: [(none, false); WINDOW as usize],
            pushed: 0,
        }
    }
}

impl BlockRing {
    /// Where the latest block created at `addr` sits, if it is within reach.
    #[inline]
    fn position(&self, addr: u64) -> Option<usize> {
        let distance = self.addrs.find(addr)?;
        Some(((self.pushed - distance) % WINDOW) as usize)
    }

    /// What the table holds at `addr`, as far as the ring knows: the block created there if it
    /// is among the last ones and still live, nothing otherwise.
    #[inline]
    pub fn infer(&self, addr: u64) -> Lookup {
        match self.position(addr).map(|at| self.blocks[at]) {
            Some((block, true)) => Lookup::Live(block),
            _ => Lookup::Absent,
        }
    }

    /// A block created at `addr`.
    #[inline]
    pub fn push(&mut self, addr: u64, block: &Block) {
        self.blocks[(self.pushed % WINDOW) as usize] = (*block, true);
        self.addrs.push(addr);
        self.pushed += 1;
    }

    /// The block at `addr`, if the ring holds it, is no longer live.
    #[inline]
    pub fn release(&mut self, addr: u64) {
        if let Some(at) = self.position(addr) {
            self.blocks[at].1 = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::EventKind;

    fn block(size: u64) -> Block {
        Block {
            size,
            kind: EventKind::Malloc,
            tid: 1,
            ts_ns: 1000,
            stack: None,
        }
    }

    #[test]
    fn infers_the_recent_live_blocks_only() {
        let mut ring = BlockRing::default();
        assert_eq!(ring.infer(0x40), Lookup::Absent);
        ring.push(0x40, &block(8));
        ring.push(0x80, &block(16));
        assert_eq!(ring.infer(0x40), Lookup::Live(block(8)));
        ring.release(0x40);
        assert_eq!(ring.infer(0x40), Lookup::Absent);
        assert_eq!(ring.infer(0x80), Lookup::Live(block(16)));
        // Handed out again: the latest block at the address is the one inferred.
        ring.push(0x40, &block(24));
        assert_eq!(ring.infer(0x40), Lookup::Live(block(24)));
        for i in 0..WINDOW {
            ring.push(0x1000 + i * 16, &block(i));
        }
        assert_eq!(ring.infer(0x40), Lookup::Absent, "out of reach");
        assert_eq!(ring.infer(0x1000), Lookup::Live(block(0)));
    }
}
