//! Freed page-path mappings kept for reuse. A request above the largest class would otherwise
//! cost an `mmap`, a page fault per page it touches and a `munmap` on free; a kept mapping is
//! already resident, so reusing it costs at most one system call (to trim or extend it).
//!
//! The set is bounded in entries and in bytes (kept pages count in the resident set); a freed
//! mapping that does not fit is unmapped by the caller, as before. This is only the policy:
//! [`crate::large`] does the system calls and holds the lock.

/// Mappings kept at most.
pub const SLOTS: usize = 32;
/// Bytes kept at most.
pub const CAP_BYTES: usize = 1 << 20;
/// Longer mappings are never kept: one of them would crowd out the common sizes.
pub const MAX_KEPT: usize = CAP_BYTES / 4;

/// Kept mappings as (address, length) pairs, unordered, `count` of them.
pub struct Spares {
    entries: [(usize, usize); SLOTS],
    count: usize,
    bytes: usize,
}

impl Spares {
    pub const fn new() -> Spares {
        Spares {
            entries: [(0, 0); SLOTS],
            count: 0,
            bytes: 0,
        }
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps the freed mapping `[addr, addr + len)` if the caps allow; false when the caller
    /// must unmap it.
    pub fn put(&mut self, addr: usize, len: usize) -> bool {
        if len > MAX_KEPT || self.bytes + len > CAP_BYTES {
            return false;
        }
        // `get_mut`, not indexing: no panic path in the allocator (see `classes::in_range`).
        let Some(slot) = self.entries.get_mut(self.count) else {
            return false;
        };
        *slot = (addr, len);
        self.count += 1;
        self.bytes += len;
        true
    }

    /// The kept mapping that best serves a request of `len` bytes, removed from the set: the
    /// shortest one at least `len` long (the caller trims its tail), else the longest one
    /// (the caller extends it, so only the missing pages are new).
    pub fn take(&mut self, len: usize) -> Option<(usize, usize)> {
        let kept = || self.entries.iter().take(self.count).enumerate();
        let fits = kept().filter(|(_, e)| e.1 >= len).min_by_key(|(_, e)| e.1);
        let (i, &entry) = fits.or_else(|| kept().max_by_key(|(_, e)| e.1))?;
        self.count -= 1;
        let last = self.entries.get(self.count).copied()?;
        *self.entries.get_mut(i)? = last;
        self.bytes -= entry.1;
        Some(entry)
    }

    /// Removes every kept mapping, handing each to `f` (which unmaps it).
    pub fn drain(&mut self, mut f: impl FnMut(usize, usize)) {
        self.entries
            .iter()
            .take(self.count)
            .for_each(|&(addr, len)| f(addr, len));
        self.count = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 4096;

    #[test]
    fn exact_then_shortest_longer_then_longest_shorter() {
        let mut s = Spares::new();
        assert!(s.put(0x10000, 10 * P));
        assert!(s.put(0x20000, 12 * P));
        assert!(s.put(0x30000, 16 * P));
        assert_eq!(s.bytes(), 38 * P);
        assert_eq!(s.take(12 * P), Some((0x20000, 12 * P)));
        assert_eq!(s.take(11 * P), Some((0x30000, 16 * P)));
        assert_eq!(s.take(20 * P), Some((0x10000, 10 * P)));
        assert_eq!(s.take(P), None);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn caps_entries_bytes_and_length() {
        let mut s = Spares::new();
        assert!(!s.put(0x1000, MAX_KEPT + P));
        let len = CAP_BYTES / 4;
        for i in 0..4 {
            assert!(s.put(i * len, len), "entry {i}");
        }
        assert_eq!(s.bytes(), CAP_BYTES);
        assert!(!s.put(0x9000_0000, P), "byte cap");

        let mut s = Spares::new();
        for i in 0..SLOTS {
            assert!(s.put(i * P, P));
        }
        assert!(!s.put(0x9000_0000, P), "entry cap");
        let mut drained = Vec::new();
        s.drain(|addr, len| drained.push((addr, len)));
        assert_eq!(drained.len(), SLOTS);
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.take(P), None);
    }
}
