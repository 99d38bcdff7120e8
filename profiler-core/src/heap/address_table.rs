//! The heap's blocks by address: an open-addressing table built for the collector's lookup
//! per event.
//!
//! Each entry holds its key beside its value, and collisions probe the next entries (linear
//! probing), so a lookup in a table far larger than the caches usually costs one cache miss.
//! std's table reads a group of control bytes first, then the entry: two misses, which made
//! most of the collector's time on a program with a million live blocks (`perf` on python3).
//! Nothing is ever taken out (the heap remembers a freed block until its address is handed
//! out again), so there are no tombstones and no deletion.

use crate::fasthash::hash_word;

/// Key of an empty entry: no block lives at address 0.
const EMPTY: u64 = 0;
/// Entries the first insertion makes room for.
const FIRST_CAPACITY: usize = 1024;

/// Aligned to 32 bytes: the heap's 32-byte entries then never straddle two cache lines (a
/// large allocation from glibc starts 16 bytes into a page, which split every other one).
#[derive(Clone, Copy)]
#[repr(align(32))]
struct Entry<V> {
    key: u64,
    value: V,
}

/// A map from addresses to `V`; address 0 is never held (no block lives there).
pub struct AddressTable<V> {
    /// A power of two in length (or empty); at most 3/4 full.
    entries: Box<[Entry<V>]>,
    len: usize,
}

impl<V: Copy + Default> Default for AddressTable<V> {
    fn default() -> Self {
        AddressTable {
            entries: Box::default(),
            len: 0,
        }
    }
}

impl<V: Copy + Default> AddressTable<V> {
    /// Entries held; the heap keeps its own counts, so only the tests ask.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        hash_word(key) as usize & (self.entries.len() - 1)
    }

    /// The index holding `key`, or the empty one where it would go. The table is not empty.
    #[inline]
    fn probe(&self, key: u64) -> Result<usize, usize> {
        let mask = self.entries.len() - 1;
        let mut index = self.home(key);
        loop {
            match self.entries[index].key {
                found if found == key => return Ok(index),
                EMPTY => return Err(index),
                _ => index = (index + 1) & mask,
            }
        }
    }

    #[inline]
    pub fn get(&self, key: u64) -> Option<&V> {
        if key == EMPTY || self.entries.is_empty() {
            return None;
        }
        let index = self.probe(key).ok()?;
        Some(&self.entries[index].value)
    }

    #[inline]
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        if key == EMPTY || self.entries.is_empty() {
            return None;
        }
        let index = self.probe(key).ok()?;
        Some(&mut self.entries[index].value)
    }

    /// Asks the CPU to bring `key`'s home entry into the cache, so that a lookup a few events
    /// later finds it there instead of waiting on memory (the collector reads ahead in its
    /// ring). Only a hint: it changes nothing.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        if self.entries.is_empty() {
            return;
        }
        let entry = std::ptr::from_ref(&self.entries[self.home(key)]).cast::<i8>();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // An entry whose size does not divide a cache line can straddle two: both are
            // asked for.
            let size = std::mem::size_of::<Entry<V>>();
            // SAFETY: a prefetch reads nothing the program sees and cannot fault.
            unsafe {
                _mm_prefetch(entry, _MM_HINT_T0);
                if 64 % size != 0 {
                    _mm_prefetch(entry.wrapping_add(size - 1), _MM_HINT_T0);
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = entry;
    }

    /// Sets `key`'s value; returns the one it replaces. Key 0 is never held.
    #[inline]
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        if key == EMPTY {
            return None;
        }
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow();
        }
        match self.probe(key) {
            Ok(index) => Some(std::mem::replace(&mut self.entries[index].value, value)),
            Err(index) => {
                self.entries[index] = Entry { key, value };
                self.len += 1;
                None
            }
        }
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.entries
            .iter()
            .filter(|entry| entry.key != EMPTY)
            .map(|entry| (entry.key, &entry.value))
    }

    /// Keeps only the entries whose value passes `keep`, in a table sized for them.
    pub fn retain(&mut self, keep: impl Fn(&V) -> bool) {
        let old = std::mem::take(&mut self.entries);
        self.len = 0;
        let kept = old
            .iter()
            .filter(|entry| entry.key != EMPTY && keep(&entry.value));
        for entry in kept {
            self.insert(entry.key, entry.value);
        }
    }

    fn grow(&mut self) {
        let capacity = (self.entries.len() * 2).max(FIRST_CAPACITY);
        let empty = Entry {
            key: EMPTY,
            value: V::default(),
        };
        let mut entries = Vec::with_capacity(capacity);
        crate::huge_pages::advise(entries.spare_capacity_mut());
        entries.resize(capacity, empty);
        let old = std::mem::replace(&mut self.entries, entries.into_boxed_slice());
        for entry in old.iter().filter(|entry| entry.key != EMPTY) {
            let Err(index) = self.probe(entry.key) else {
                unreachable!("keys are unique");
            };
            self.entries[index] = *entry;
        }
    }
}

impl<V> std::fmt::Debug for AddressTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressTable")
            .field("len", &self.len)
            .field("capacity", &self.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u32),
        Get(u64),
    }

    #[test]
    fn retain_keeps_what_passes_in_a_smaller_table() {
        let mut table = AddressTable::<u32>::default();
        for key in 1..=10_000u64 {
            table.insert(key * 16, key as u32);
        }
        table.retain(|value| value % 1000 == 0);
        assert_eq!(table.len(), 10);
        assert_eq!(table.entries.len(), FIRST_CAPACITY);
        assert_eq!(table.get(16_000), Some(&1000));
        assert_eq!(table.get(16), None);
    }

    /// The heap's entries fill half a cache line each and start on a half-line boundary:
    /// none straddles two lines.
    #[test]
    fn heap_entries_never_straddle_cache_lines() {
        assert_eq!(std::mem::size_of::<Entry<crate::heap::slot::Slot>>(), 32);
        let mut table = AddressTable::<crate::heap::slot::Slot>::default();
        for key in 1..5000 {
            table.insert(key * 16, Default::default());
        }
        assert_eq!(table.entries.as_ptr() as usize % 32, 0);
    }

    /// Keys from a small range, so that operations hit the same keys and long probe runs form.
    fn op() -> impl Strategy<Value = Op> {
        let key = 0..1500u64;
        prop_oneof![
            (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k * 16, v)),
            key.prop_map(|k| Op::Get(k * 16)),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in prop::collection::vec(op(), 1..2500)) {
            let mut table = AddressTable::<u32>::default();
            let mut model = HashMap::new();
            for op in ops {
                // Address 0 is never held: the model forgets it.
                let op = match op {
                    Op::Insert(0, _) => Op::Get(0),
                    op => op,
                };
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(table.insert(k, v), model.insert(k, v)),
                    Op::Get(k) => prop_assert_eq!(table.get(k), model.get(&k)),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            let mut entries: Vec<(u64, u32)> = table.iter().map(|(k, v)| (k, *v)).collect();
            entries.sort_unstable();
            let mut expected: Vec<(u64, u32)> = model.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(entries, expected);
        }
    }

    #[test]
    fn a_probe_run_wraps_past_the_tables_end() {
        let mut table = AddressTable::<u32>::default();
        table.insert(16, 0);
        let last = FIRST_CAPACITY - 1;
        let keys: Vec<u64> = (1..u64::MAX / 2)
            .map(|k| k * 16)
            .filter(|&k| table.home(k) == last)
            .take(4)
            .collect();
        for (value, &key) in keys.iter().enumerate() {
            table.insert(key, value as u32);
        }
        for (value, &key) in keys.iter().enumerate() {
            assert_eq!(table.get(key), Some(&(value as u32)), "key {key:#x}");
        }
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn get_mut_changes_the_value_in_place() {
        let mut table = AddressTable::<u32>::default();
        assert_eq!(table.get_mut(32), None);
        assert_eq!(table.insert(0, 5), None, "address 0 is never held");
        assert_eq!(table.get(0), None);
        table.insert(32, 1);
        *table.get_mut(32).unwrap() = 7;
        assert_eq!(table.get(32), Some(&7));
        assert_eq!(table.len(), 1);
    }
}
