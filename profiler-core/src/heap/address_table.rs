//! The heap's blocks by address: an open-addressing table built for the collector's lookup
//! per event.
//!
//! Each entry holds its key beside its value, and collisions probe the next entries (linear
//! probing), so a lookup in a table far larger than the caches usually costs one cache miss.
//! std's table reads a group of control bytes first, then the entry: two misses, which made
//! most of the collector's time on a program with a million live blocks (`perf` on python3).
//! Nothing is ever taken out (the heap remembers a freed block until its address is handed
//! out again), so there are no tombstones and no deletion.
//!
//! An entry is 16 bytes, four to a cache line: a 48-bit key (every user-space address of
//! x86-64's 4-level paging) and an 80-bit value share two words. On python3 (4.75 million
//! addresses) the table was most of memprof's memory at 32 bytes an entry.

use crate::fasthash::hash_word;
use crate::huge_pages::ZeroedPages;

/// Bits of a key: keys are below 2^48 (see [`AddressTable::holds`]).
pub const KEY_BITS: u32 = 48;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;
/// Bits of a value: values are below 2^80.
pub const VALUE_BITS: u32 = 64 + (64 - KEY_BITS);
/// Key of an empty entry: no block lives at address 0.
const EMPTY: u64 = 0;

/// The key in the low bits of `head`, the value's high bits above it, its low 64 in `tail`.
/// All zero is an empty entry. Aligned to 16 bytes: an entry never straddles two cache lines.
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Entry {
    head: u64,
    tail: u64,
}

impl Entry {
    fn new(key: u64, value: u128) -> Entry {
        debug_assert!(key & !KEY_MASK == 0 && value >> VALUE_BITS == 0);
        Entry {
            head: key | ((value >> 64) as u64) << KEY_BITS,
            tail: value as u64,
        }
    }

    #[inline]
    fn key(&self) -> u64 {
        self.head & KEY_MASK
    }

    #[inline]
    fn value(&self) -> u128 {
        u128::from(self.head >> KEY_BITS) << 64 | u128::from(self.tail)
    }
}

/// log2 of the number of parts: a part doubles on its own, so the table never holds its old
/// and its new entries at once (python3: memprof's peak RSS was the moment its 64 MiB table
/// became 128 MiB).
const PART_BITS: u32 = 4;
const PARTS: usize = 1 << PART_BITS;
/// Entries a part's first insertion makes room for.
const FIRST_PART_CAPACITY: usize = 256;

/// A map from addresses to 80-bit values; address 0 is never held. A key's hash picks its part
/// by its top bits and its home entry in the part by its low bits.
#[derive(Default)]
pub struct AddressTable {
    parts: [Part; PARTS],
    len: usize,
}

/// A linear-probing table of its own.
#[derive(Default)]
struct Part {
    /// A power of two in length (or empty); at most 3/4 full.
    entries: ZeroedPages<Entry>,
    len: usize,
}

impl Part {
    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.entries.len() - 1)
    }

    /// The index holding `key`, or the empty one where it would go. The part is not empty.
    #[inline]
    fn probe(&self, key: u64, hash: u64) -> Result<usize, usize> {
        let mask = self.entries.len() - 1;
        let mut index = self.home(hash);
        loop {
            match self.entries[index].key() {
                found if found == key => return Ok(index),
                EMPTY => return Err(index),
                _ => index = (index + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let capacity = (self.entries.len() * 2).max(FIRST_PART_CAPACITY);
        // SAFETY: an all-zero Entry is a valid (empty) one.
        let entries = unsafe { ZeroedPages::new(capacity) };
        let old = std::mem::replace(&mut self.entries, entries);
        for entry in old.iter().filter(|entry| entry.key() != EMPTY) {
            let Err(index) = self.probe(entry.key(), hash_word(entry.key())) else {
                unreachable!("keys are unique");
            };
            self.entries[index] = *entry;
        }
    }
}

impl AddressTable {
    /// Whether `key` can be held: not 0, below 2^48. Others are the caller's to keep.
    #[inline]
    pub fn holds(key: u64) -> bool {
        key != EMPTY && key & !KEY_MASK == 0
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `key`'s part and hash.
    #[inline]
    fn locate(&self, key: u64) -> (&Part, u64) {
        let hash = hash_word(key);
        (&self.parts[(hash >> (64 - PART_BITS)) as usize], hash)
    }

    /// `key`'s value, if held.
    #[inline]
    pub fn get(&self, key: u64) -> Option<u128> {
        if !Self::holds(key) {
            return None;
        }
        let (part, hash) = self.locate(key);
        if part.entries.is_empty() {
            return None;
        }
        let index = part.probe(key, hash).ok()?;
        Some(part.entries[index].value())
    }

    /// Asks the CPU to bring `key`'s home entry into the cache, so that a lookup a few events
    /// later finds it there instead of waiting on memory (the collector reads ahead in its
    /// ring). Only a hint: it changes nothing.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        let (part, hash) = self.locate(key);
        if part.entries.is_empty() {
            return;
        }
        let entry = std::ptr::from_ref(&part.entries[part.home(hash)]).cast::<i8>();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing the program sees and cannot fault.
        unsafe {
            std::arch::x86_64::_mm_prefetch(entry, std::arch::x86_64::_MM_HINT_T0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = entry;
    }

    /// Sets `key`'s value; returns the one it replaces. `key` must be one the table
    /// [`holds`](Self::holds) and `value` below 2^80.
    #[inline]
    pub fn insert(&mut self, key: u64, value: u128) -> Option<u128> {
        assert!(Self::holds(key), "key {key:#x} cannot be held");
        let hash = hash_word(key);
        let part = &mut self.parts[(hash >> (64 - PART_BITS)) as usize];
        if (part.len + 1) * 4 > part.entries.len() * 3 {
            part.grow();
        }
        match part.probe(key, hash) {
            Ok(index) => {
                let old = part.entries[index].value();
                part.entries[index] = Entry::new(key, value);
                Some(old)
            }
            Err(index) => {
                part.entries[index] = Entry::new(key, value);
                part.len += 1;
                self.len += 1;
                None
            }
        }
    }

    fn occupied(&self) -> impl Iterator<Item = &Entry> {
        self.parts
            .iter()
            .flat_map(|part| part.entries.iter())
            .filter(|entry| entry.key() != EMPTY)
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u128)> + '_ {
        self.occupied().map(|entry| (entry.key(), entry.value()))
    }

    /// Keeps only the entries that pass `keep`, in a table sized for them.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, u128) -> bool) {
        let old = std::mem::take(self);
        for (key, value) in old.iter() {
            if keep(key, value) {
                self.insert(key, value);
            }
        }
    }

    /// Rewrites every value in place (keys stay where they are).
    pub fn map_values(&mut self, mut map: impl FnMut(u128) -> u128) {
        for part in &mut self.parts {
            for entry in part.entries.iter_mut().filter(|entry| entry.key() != EMPTY) {
                *entry = Entry::new(entry.key(), map(entry.value()));
            }
        }
    }

    /// Entries allocated, held or empty (for tests).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.parts.iter().map(|part| part.entries.len()).sum()
    }
}

impl std::fmt::Debug for AddressTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressTable")
            .field("len", &self.len)
            .field(
                "capacity",
                &self.parts.iter().map(|p| p.entries.len()).sum::<usize>(),
            )
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
        Insert(u64, u128),
        Get(u64),
    }

    #[test]
    fn an_entry_is_16_bytes_and_none_straddles_cache_lines() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        let mut table = AddressTable::default();
        for key in 1..5000 {
            table.insert(key * 16, 1);
        }
        for part in &table.parts {
            assert_eq!(part.entries.as_ptr() as usize % 16, 0);
        }
    }

    #[test]
    fn the_widest_keys_and_values_round_trip() {
        let mut table = AddressTable::default();
        let key = KEY_MASK;
        let value = (1u128 << VALUE_BITS) - 1;
        assert!(AddressTable::holds(key));
        assert!(!AddressTable::holds(key + 1));
        assert!(!AddressTable::holds(0));
        table.insert(key, value);
        table.insert(16, 1 << 64);
        assert_eq!(table.get(key), Some(value));
        assert_eq!(table.get(16), Some(1 << 64));
        assert_eq!(table.get(key + 1), None);
    }

    #[test]
    fn retain_keeps_what_passes_in_a_smaller_table() {
        let mut table = AddressTable::default();
        for key in 1..=10_000u64 {
            table.insert(key * 16, key.into());
        }
        table.retain(|key, value| key == value as u64 * 16 && value % 1000 == 0);
        assert_eq!(table.len(), 10);
        assert!(
            table.capacity() <= 10 * FIRST_PART_CAPACITY,
            "{}",
            table.capacity()
        );
        assert_eq!(table.get(16_000), Some(1000));
        assert_eq!(table.get(16), None);
    }

    #[test]
    fn map_values_rewrites_every_value() {
        let mut table = AddressTable::default();
        for key in 1..=3000u64 {
            table.insert(key * 16, key.into());
        }
        table.map_values(|value| value + (1 << 70));
        assert_eq!(table.len(), 3000);
        for key in 1..=3000u64 {
            assert_eq!(table.get(key * 16), Some(u128::from(key) + (1 << 70)));
        }
    }

    /// Keys from a small range, so that operations hit the same keys and long probe runs form.
    fn op() -> impl Strategy<Value = Op> {
        let key = 1..1500u64;
        let value = any::<u128>().prop_map(|v| v >> (128 - VALUE_BITS));
        prop_oneof![
            (key.clone(), value).prop_map(|(k, v)| Op::Insert(k * 16, v)),
            key.prop_map(|k| Op::Get(k * 16)),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in prop::collection::vec(op(), 1..2500)) {
            let mut table = AddressTable::default();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(table.insert(k, v), model.insert(k, v)),
                    Op::Get(k) => prop_assert_eq!(table.get(k), model.get(&k).copied()),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            let mut entries: Vec<(u64, u128)> = table.iter().collect();
            entries.sort_unstable();
            let mut expected: Vec<(u64, u128)> = model.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(entries, expected);
        }
    }

    #[test]
    fn a_probe_run_wraps_past_the_tables_end() {
        let mut table = AddressTable::default();
        let last = FIRST_PART_CAPACITY - 1;
        // Keys of one part whose home is that part's last entry.
        let part_of = |k: u64| hash_word(k) >> (64 - PART_BITS);
        let first = 16;
        table.insert(first, 0);
        let keys: Vec<u64> = (2..KEY_MASK / 16)
            .map(|k| k * 16)
            .filter(|&k| {
                part_of(k) == part_of(first) && hash_word(k) as usize % FIRST_PART_CAPACITY == last
            })
            .take(4)
            .collect();
        for (value, &key) in keys.iter().enumerate() {
            table.insert(key, value as u128);
        }
        for (value, &key) in keys.iter().enumerate() {
            assert_eq!(table.get(key), Some(value as u128), "key {key:#x}");
        }
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn keys_it_cannot_hold_are_never_found() {
        let table = AddressTable::default();
        assert_eq!(table.get(0), None);
        assert_eq!(table.get(1 << KEY_BITS), None);
    }
}
