//! The last few addresses a recording's events named, so that a later event can name the
//! same address by how recently it was seen: a free the block a recent allocation created, an
//! allocation the block a recent free released (a free list hands it out again). One byte
//! instead of a delta from an unrelated address, which compresses badly (redis under load:
//! 0.61 of its 2.7 bytes per event were such deltas).
//!
//! The writer and the reader push the same addresses in the same order, so a distance means
//! the same block on both sides.

/// How many of the last created blocks a distance can reach.
pub const WINDOW: u64 = 64;
/// Slots of the writer's lookup by address (a power of two).
const INDEX_SLOTS: usize = 256;

#[derive(Clone, Debug)]
pub struct RecentBlocks {
    /// Ring of the last [`WINDOW`] addresses pushed; push number `n` (from 1) sits at
    /// `(n - 1) % WINDOW`.
    addrs: [u64; WINDOW as usize],
    pushed: u64,
    /// By a hash of the address: the ring position where an address with that hash was last
    /// stored (the ring says whether it still is). A collision only costs a miss. Positions
    /// are bytes: the collector's lookups into its heap evict these lines from the cache
    /// between events, and 256 bytes are four lines where push numbers took 32.
    index: [u8; INDEX_SLOTS],
}

impl Default for RecentBlocks {
    fn default() -> Self {
        RecentBlocks {
            addrs: [0; WINDOW as usize],
            pushed: 0,
            index: [0; INDEX_SLOTS],
        }
    }
}

impl RecentBlocks {
    #[inline]
    pub fn push(&mut self, addr: u64) {
        let position = (self.pushed % WINDOW) as usize;
        self.pushed += 1;
        self.addrs[position] = addr;
        self.index[slot(addr)] = position as u8;
    }

    /// How recently `addr` was pushed (1: the last push, up to [`WINDOW`]), if it is within
    /// reach.
    #[inline]
    pub fn find(&self, addr: u64) -> Option<u64> {
        let position = u64::from(self.index[slot(addr)]);
        // The position of the last push, and how many pushes back `position` was written.
        let last = self.pushed.wrapping_sub(1) % WINDOW;
        let distance = (last + WINDOW - position) % WINDOW + 1;
        (distance <= self.pushed && self.addrs[position as usize] == addr).then_some(distance)
    }

    /// The address pushed `distance` pushes ago (1: the last), if there was one.
    #[inline]
    pub fn get(&self, distance: u64) -> Option<u64> {
        if distance == 0 || distance > WINDOW || distance > self.pushed {
            return None;
        }
        let number = self.pushed - distance + 1;
        Some(self.addrs[((number - 1) % WINDOW) as usize])
    }
}

#[inline]
fn slot(addr: u64) -> usize {
    // Blocks are at least 8-aligned: the low bits say little.
    ((addr >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % INDEX_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_is_within_the_window_and_gets_it_back() {
        let mut recent = RecentBlocks::default();
        assert_eq!(recent.find(0x1000), None);
        assert_eq!(recent.get(1), None);
        for i in 0..200u64 {
            recent.push(0x1000 + i * 16);
        }
        assert_eq!(recent.find(0x1000 + 199 * 16), Some(1));
        assert_eq!(recent.find(0x1000 + 136 * 16), Some(64));
        assert_eq!(
            recent.find(0x1000 + 135 * 16),
            None,
            "65 pushes ago: out of reach"
        );
        assert_eq!(recent.get(64), Some(0x1000 + 136 * 16));
        assert_eq!((recent.get(0), recent.get(65)), (None, None));
        for distance in 1..=WINDOW {
            let addr = recent.get(distance).unwrap();
            assert_eq!(recent.find(addr), Some(distance));
        }
    }

    #[test]
    fn a_pushed_again_address_is_found_at_its_last_push() {
        let mut recent = RecentBlocks::default();
        recent.push(0x40);
        recent.push(0x80);
        recent.push(0x40);
        assert_eq!(recent.find(0x40), Some(1));
        assert_eq!(recent.find(0x80), Some(2));
    }
}
