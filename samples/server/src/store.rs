//! What the server holds: a key/value cache kept under a byte budget by LRU eviction (unless
//! the budget is off, the `--unbounded-cache` bug), and named FIFO message queues.

use std::collections::{HashMap, VecDeque};

use lru::LruCache;

pub struct Store {
    cache: LruCache<String, Vec<u8>>,
    cache_bytes: u64,
    /// Payload bytes the cache may hold; `None` never evicts.
    budget: Option<u64>,
    evictions: u64,
    /// An emptied queue is removed, so that queue names do not pile up.
    queues: HashMap<String, VecDeque<Vec<u8>>>,
    queued: u64,
    queued_bytes: u64,
}

/// The store's part of STATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreCounts {
    pub cache_entries: u64,
    pub cache_bytes: u64,
    pub evictions: u64,
    pub queued: u64,
    pub queued_bytes: u64,
}

impl Store {
    pub fn new(budget: Option<u64>) -> Store {
        Store {
            cache: LruCache::unbounded(),
            cache_bytes: 0,
            budget,
            evictions: 0,
            queues: HashMap::new(),
            queued: 0,
            queued_bytes: 0,
        }
    }

    /// Stores a copy of `value` under `key`, first evicting the least recently used entries
    /// until it fits the budget (a value larger than the whole budget is kept alone).
    pub fn put(&mut self, key: &str, value: &[u8]) {
        self.remove(key);
        let size = len(value);
        if let Some(budget) = self.budget {
            while self.cache_bytes + size > budget {
                let Some((_, evicted)) = self.cache.pop_lru() else {
                    break;
                };
                self.cache_bytes -= len(&evicted);
                self.evictions += 1;
            }
        }
        self.cache.put(key.to_owned(), value.to_vec());
        self.cache_bytes += size;
    }

    /// The value under `key`, now the most recently used.
    pub fn get(&mut self, key: &str) -> Option<&[u8]> {
        self.cache.get(key).map(Vec::as_slice)
    }

    /// Whether `key` was there.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.cache.pop(key) {
            Some(old) => {
                self.cache_bytes -= len(&old);
                true
            }
            None => false,
        }
    }

    pub fn push(&mut self, queue: &str, message: &[u8]) {
        match self.queues.get_mut(queue) {
            Some(messages) => messages.push_back(message.to_vec()),
            None => {
                self.queues
                    .insert(queue.to_owned(), VecDeque::from([message.to_vec()]));
            }
        }
        self.queued += 1;
        self.queued_bytes += len(message);
    }

    pub fn pop(&mut self, queue: &str) -> Option<Vec<u8>> {
        let messages = self.queues.get_mut(queue)?;
        let message = messages.pop_front()?;
        if messages.is_empty() {
            self.queues.remove(queue);
        }
        self.queued -= 1;
        self.queued_bytes -= len(&message);
        Some(message)
    }

    pub fn counts(&self) -> StoreCounts {
        StoreCounts {
            cache_entries: self.cache.len() as u64,
            cache_bytes: self.cache_bytes,
            evictions: self.evictions,
            queued: self.queued,
            queued_bytes: self.queued_bytes,
        }
    }
}

fn len(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entries_go_first() {
        let mut store = Store::new(Some(300));
        store.put("a", &[1; 100]);
        store.put("b", &[2; 100]);
        store.put("c", &[3; 100]);
        assert!(store.get("a").is_some(), "a becomes the most recent");
        store.put("d", &[4; 150]);
        // b (100) and c (100) had to go to fit 150 next to a (100).
        assert_eq!(store.get("b"), None);
        assert_eq!(store.get("c"), None);
        assert_eq!(store.get("a"), Some(&[1; 100][..]));
        let counts = store.counts();
        assert_eq!(
            (counts.cache_entries, counts.cache_bytes, counts.evictions),
            (2, 250, 2)
        );
    }

    #[test]
    fn replacing_a_key_counts_its_bytes_once() {
        let mut store = Store::new(Some(100));
        store.put("a", &[1; 80]);
        store.put("a", &[2; 90]);
        let counts = store.counts();
        assert_eq!(
            (counts.cache_entries, counts.cache_bytes, counts.evictions),
            (1, 90, 0)
        );
        assert!(store.remove("a"));
        assert!(!store.remove("a"));
        assert_eq!(store.counts().cache_bytes, 0);
    }

    #[test]
    fn without_a_budget_nothing_is_evicted() {
        let mut store = Store::new(None);
        for i in 0..100 {
            store.put(&format!("k{i}"), &[0; 1000]);
        }
        let counts = store.counts();
        assert_eq!(
            (counts.cache_entries, counts.cache_bytes, counts.evictions),
            (100, 100_000, 0)
        );
    }

    #[test]
    fn queues_are_fifo_and_vanish_when_empty() {
        let mut store = Store::new(None);
        store.push("q", b"one");
        store.push("q", b"two");
        store.push("r", b"x");
        assert_eq!((store.counts().queued, store.counts().queued_bytes), (3, 7));
        assert_eq!(store.pop("q").as_deref(), Some(&b"one"[..]));
        assert_eq!(store.pop("q").as_deref(), Some(&b"two"[..]));
        assert_eq!(store.pop("q"), None);
        assert_eq!(store.queues.len(), 1);
        assert_eq!((store.counts().queued, store.counts().queued_bytes), (1, 1));
    }
}
