//! The target's words the interior-pointer heuristics look at (a block's first two words, the
//! word an interior pointer points to, a vtable's entries), read in batches, not one read per
//! word: a scan that meets a million interior pointers would otherwise make a million
//! `process_vm_readv` calls.

use std::collections::HashMap;

use super::Memory;
use crate::fasthash::FastHashMap;

/// Most ranges read at once (`process_vm_readv` takes at most 1024 remote iovecs).
const BATCH_RANGES: usize = 1024;
const WORD: u64 = 8;

/// Words read ahead for one scanned batch, and which addresses are vtables.
#[derive(Default)]
pub(super) struct Words {
    /// Address -> word, or None where it cannot be read.
    known: FastHashMap<u64, Option<u64>>,
    vtables: HashMap<u64, bool>,
    buffer: Vec<u8>,
}

impl Words {
    /// Reads the aligned words at `addresses` (sorted and deduplicated here), adjacent ones as
    /// one range, up to [`BATCH_RANGES`] ranges a read.
    pub(super) fn prefetch(&mut self, addresses: &mut Vec<u64>, memory: &mut dyn Memory) {
        addresses.sort_unstable();
        addresses.dedup();
        addresses.retain(|addr| !self.known.contains_key(addr));
        let mut ranges: Vec<(u64, usize)> = Vec::new();
        for &addr in addresses.iter() {
            match ranges.last_mut() {
                Some((start, len)) if *start + *len as u64 == addr => *len += WORD as usize,
                _ => {
                    if ranges.len() == BATCH_RANGES {
                        self.read(&ranges, memory);
                        ranges.clear();
                    }
                    ranges.push((addr, WORD as usize));
                }
            }
        }
        if !ranges.is_empty() {
            self.read(&ranges, memory);
        }
    }

    fn read(&mut self, ranges: &[(u64, usize)], memory: &mut dyn Memory) {
        let bytes: usize = ranges.iter().map(|&(_, len)| len).sum();
        self.buffer.resize(bytes, 0);
        if memory.read(ranges, &mut self.buffer) > 0 {
            // Some word could not be read and the read does not say which: these words one
            // by one (rare: a heuristic's word lies in a block, which is mapped).
            for &(start, len) in ranges {
                for addr in (start..start + len as u64).step_by(WORD as usize) {
                    let word = word_at(addr, memory);
                    self.known.insert(addr, word);
                }
            }
            return;
        }
        let mut words = self.buffer.chunks_exact(WORD as usize);
        for &(start, len) in ranges {
            for addr in (start..start + len as u64).step_by(WORD as usize) {
                let word = words.next().expect("one word per 8 bytes read");
                let word = u64::from_ne_bytes(word.try_into().expect("8-byte chunk"));
                self.known.insert(addr, Some(word));
            }
        }
    }

    /// The word at `addr`: read ahead, or read now.
    pub(super) fn get(&mut self, addr: u64, memory: &mut dyn Memory) -> Option<u64> {
        if let Some(&word) = self.known.get(&addr) {
            return word;
        }
        let word = word_at(addr, memory);
        self.known.insert(addr, word);
        word
    }

    /// Forgets the words read ahead (the vtables found stay): the next batch wants others.
    pub(super) fn forget(&mut self) {
        self.known.clear();
    }

    /// Whether `addr` is a vtable, by `check`, once per address.
    pub(super) fn is_vtable(&mut self, addr: u64, check: impl FnOnce(&mut Self) -> bool) -> bool {
        if let Some(&known) = self.vtables.get(&addr) {
            return known;
        }
        let found = check(self);
        self.vtables.insert(addr, found);
        found
    }

    /// `count` words from `addr` in one read, or None if any cannot be read.
    pub(super) fn run(
        &mut self,
        addr: u64,
        count: u64,
        memory: &mut dyn Memory,
    ) -> Option<Vec<u64>> {
        let mut bytes = vec![0u8; (count * WORD) as usize];
        if memory.read(&[(addr, bytes.len())], &mut bytes) > 0 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(WORD as usize)
                .map(|word| u64::from_ne_bytes(word.try_into().expect("8-byte chunk")))
                .collect(),
        )
    }
}

/// One aligned word of the target, or None if it cannot be read.
fn word_at(addr: u64, memory: &mut dyn Memory) -> Option<u64> {
    let mut bytes = [0u8; 8];
    (memory.read(&[(addr, 8)], &mut bytes) == 0).then(|| u64::from_ne_bytes(bytes))
}
