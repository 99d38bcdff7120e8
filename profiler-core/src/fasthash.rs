//! A tiny multiply-fold hasher for integer keys (addresses, return addresses).
//!
//! std's SipHash is DoS-resistant but slow; the keys here come from the profiled process, not
//! from an adversary, and the hot path does several lookups per event. A plain Fx multiply
//! leaves 16-byte-aligned addresses clustered in a few buckets, so each word goes through a
//! folded 64x64->128 multiply (as foldhash and ahash do), and `finish` folds once more.

use std::hash::{BuildHasherDefault, Hasher};

/// Odd multipliers with well-spread bits (rustc-hash's and the golden ratio).
const MUL_WORD: u64 = 0xf135_7aea_2e62_a9c5;
const MUL_FINISH: u64 = 0x9e37_79b9_7f4a_7c15;

/// The high and low halves of the 128-bit product, xored: every input bit reaches every
/// output bit.
#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// `state = fold(state ^ word, MUL_WORD)` per word; `finish` folds with a second constant.
#[derive(Clone, Copy, Default)]
pub struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = folded_multiply(self.hash ^ word, MUL_WORD);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("chunk of 8")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    #[inline]
    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    #[inline]
    fn write_u32(&mut self, word: u32) {
        self.add(u64::from(word));
    }

    #[inline]
    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        folded_multiply(self.hash ^ MUL_FINISH, MUL_FINISH)
    }
}

/// `HashMap<K, V, FastBuildHasher>` builds an [`FastHasher`] per lookup.
pub type FastBuildHasher = BuildHasherDefault<FastHasher>;

/// A `HashMap` keyed by integers from the target process.
pub type FastHashMap<K, V> = std::collections::HashMap<K, V, FastBuildHasher>;

/// A `HashSet` of integers from the target process.
pub type FastHashSet<K> = std::collections::HashSet<K, FastBuildHasher>;

/// Hashes one word with the same function as [`FastHasher`].
#[inline]
pub fn hash_word(word: u64) -> u64 {
    let mut hasher = FastHasher::default();
    hasher.add(word);
    hasher.finish()
}

/// Hashes a slice of words (a stack) with the same function as [`FastHasher`].
#[inline]
pub fn hash_words(words: &[u64], extra: u64) -> u64 {
    let mut hasher = FastHasher::default();
    hasher.add(extra);
    for &word in words {
        hasher.add(word);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_addresses_spread_over_low_bits() {
        // 1024 keys thrown at 1024 buckets at random fill ~647 (1 - 1/e); a clustering hash
        // (plain Fx on 16-aligned or page-aligned addresses) fills fewer than 450.
        for stride in [16, 4096] {
            let mut buckets = std::collections::HashSet::new();
            for i in 0..1024u64 {
                let mut hasher = FastHasher::default();
                hasher.write_u64(0x5555_0000_0000 + i * stride);
                buckets.insert(hasher.finish() & 1023);
            }
            assert!(
                buckets.len() > 580,
                "stride {stride}: {} buckets",
                buckets.len()
            );
        }
    }

    #[test]
    fn hash_words_depends_on_order_and_extra() {
        assert_ne!(hash_words(&[1, 2], 0), hash_words(&[2, 1], 0));
        assert_ne!(hash_words(&[1, 2], 0), hash_words(&[1, 2], 1));
        assert_eq!(hash_words(&[1, 2], 7), hash_words(&[1, 2], 7));
    }
}
