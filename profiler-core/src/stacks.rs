//! Interning of call stacks: each distinct (frames, truncated) pair is stored once and named
//! by a [`StackId`].
//!
//! A program allocates from a few thousand sites but may make millions of calls, so blocks hold
//! a 4-byte id instead of a frame vector. Lookups of an already-known stack hash the borrowed
//! slice and compare in place: no allocation on the hot path. The index is a small
//! open-addressing table (std's HashMap cannot look up an owned key by a borrowed `&[u64]`
//! stored in an arena).

use crate::fasthash::hash_words;

/// Names one interned stack in its [`StackTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(pub u32);

#[derive(Clone, Copy)]
struct Entry {
    /// Range of this stack in `StackTable::frames`.
    start: u32,
    len: u32,
    truncated: bool,
    hash: u64,
}

/// Every distinct stack seen, in interning order.
#[derive(Default)]
pub struct StackTable {
    /// All stacks' frames back to back, innermost first.
    frames: Vec<u64>,
    entries: Vec<Entry>,
    /// Open-addressing index: `StackId + 1`, or 0 for an empty slot. Length is a power of two
    /// kept at most half full, so linear probes stay short.
    slots: Vec<u32>,
}

impl StackTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the id of `frames` (innermost first), adding it if new. `truncated` is part of
    /// the identity: a cut stack must not be reported as if it were a whole one.
    pub fn intern(&mut self, frames: &[u64], truncated: bool) -> StackId {
        let hash = hash_words(frames, u64::from(truncated));
        if let Some(id) = self.find(frames, truncated, hash) {
            return id;
        }
        if (self.entries.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let id = u32::try_from(self.entries.len()).expect("more than 4 billion distinct stacks");
        let start = u32::try_from(self.frames.len()).expect("more than 4 billion stored frames");
        self.frames.extend_from_slice(frames);
        self.entries.push(Entry {
            start,
            len: frames.len() as u32,
            truncated,
            hash,
        });
        self.place(id, hash);
        StackId(id)
    }

    /// The frames of `id`, innermost first. Panics on an id from another table.
    pub fn get(&self, id: StackId) -> &[u64] {
        let entry = &self.entries[id.0 as usize];
        &self.frames[entry.start as usize..(entry.start + entry.len) as usize]
    }

    /// Whether the probe cut this stack at its depth limit (outermost frames missing).
    pub fn is_truncated(&self, id: StackId) -> bool {
        self.entries[id.0 as usize].truncated
    }

    /// Number of distinct stacks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, frames: &[u64], truncated: bool, hash: u64) -> Option<StackId> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            let stored = self.slots[slot];
            if stored == 0 {
                return None;
            }
            let id = StackId(stored - 1);
            let entry = &self.entries[id.0 as usize];
            if entry.hash == hash && entry.truncated == truncated && self.get(id) == frames {
                return Some(id);
            }
            slot = (slot + 1) & mask;
        }
    }

    fn place(&mut self, id: u32, hash: u64) {
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        while self.slots[slot] != 0 {
            slot = (slot + 1) & mask;
        }
        self.slots[slot] = id + 1;
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(64);
        self.slots = vec![0; size];
        for id in 0..self.entries.len() {
            let hash = self.entries[id].hash;
            self.place(id as u32, hash);
        }
    }
}

impl std::fmt::Debug for StackTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackTable")
            .field("stacks", &self.entries.len())
            .field("frames", &self.frames.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_stack_same_id() {
        let mut table = StackTable::new();
        let a = table.intern(&[1, 2, 3], false);
        let b = table.intern(&[1, 2], false);
        assert_ne!(a, b);
        assert_eq!(table.intern(&[1, 2, 3], false), a);
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(a), [1, 2, 3]);
        assert_eq!(table.get(b), [1, 2]);
    }

    #[test]
    fn truncation_is_part_of_identity() {
        let mut table = StackTable::new();
        let whole = table.intern(&[1, 2, 3], false);
        let cut = table.intern(&[1, 2, 3], true);
        assert_ne!(whole, cut);
        assert!(!table.is_truncated(whole));
        assert!(table.is_truncated(cut));
    }

    #[test]
    fn empty_stack_is_a_stack() {
        let mut table = StackTable::new();
        let empty = table.intern(&[], false);
        assert_eq!(table.get(empty), [] as [u64; 0]);
        assert_eq!(table.intern(&[], false), empty);
    }

    #[test]
    fn survives_growth_with_many_stacks() {
        let mut table = StackTable::new();
        let ids: Vec<StackId> = (0..10_000u64)
            .map(|i| table.intern(&[i, i * 3, 0x40_0000], i.is_multiple_of(7)))
            .collect();
        assert_eq!(table.len(), 10_000);
        for (i, id) in ids.iter().enumerate() {
            let i = i as u64;
            assert_eq!(table.get(*id), [i, i * 3, 0x40_0000]);
            assert_eq!(
                table.intern(&[i, i * 3, 0x40_0000], i.is_multiple_of(7)),
                *id
            );
        }
        assert_eq!(table.len(), 10_000);
    }

    /// Numbers are defined in order; a reference finds its stack; a definition of 0 starts
    /// over; a number out of sequence or never defined names no stack.
    #[test]
    fn stack_numbers_follow_their_definitions() {
        let mut numbers = StackNumbers::default();
        numbers.define(0, StackId(5));
        numbers.define(1, StackId(9));
        numbers.define(3, StackId(11));
        assert_eq!(
            (
                numbers.get(0),
                numbers.get(1),
                numbers.get(2),
                numbers.get(3)
            ),
            (Some(StackId(5)), Some(StackId(9)), None, None)
        );
        numbers.define(0, StackId(2));
        assert_eq!((numbers.get(0), numbers.get(1)), (Some(StackId(2)), None));
        assert_eq!(numbers.get(u64::MAX), None);
    }
}

/// The numbers the in-process capture gave the stacks it sent (`FLAG_STACK_NUMBERED`), for
/// one process image: number `n` is the `n`th defined, and a definition of 0 starts a new
/// numbering (an exec'd program; a forked child has a heap of its own).
#[derive(Debug, Default)]
pub struct StackNumbers {
    ids: Vec<StackId>,
}

impl StackNumbers {
    /// Records that `number` is `id`. A number out of sequence is not recorded (the records
    /// naming it then have no stack): only a damaged ring sends one.
    pub fn define(&mut self, number: u64, id: StackId) {
        if number == 0 {
            self.ids.clear();
        }
        if number == self.ids.len() as u64 {
            self.ids.push(id);
        }
    }

    pub fn get(&self, number: u64) -> Option<StackId> {
        usize::try_from(number)
            .ok()
            .and_then(|index| self.ids.get(index))
            .copied()
    }
}
