//! Page runs: the bookkeeping of the medium path, over page indices only ([`crate::medium`]
//! does the memory, the system calls and the locking).
//!
//! The pages tiled so far are cut into runs, each allocated or free. A side table holds one
//! [`Entry`] per page:
//! - a run's first and last pages carry its length and state (boundary tags), so that a freed
//!   run finds its free neighbours in O(1) and merges with them, and a free of anything but an
//!   allocated run's first page (a double free, an interior pointer) is recognised;
//! - a free run's first page links it into the list of its bin: one bin per length up to
//!   [`EXACT`] pages, one for longer runs; a bitmap of non-empty bins finds the smallest
//!   fitting bin in one instruction;
//! - every page says whether it may hold data (dirty) or reads as zeros (never handed out, or
//!   given back to the kernel since), so that calloc clears only dirty pages and a purge gives
//!   back only those.

/// Runs up to this many pages have a bin of their own; longer ones share the last bin.
pub const EXACT: u32 = 64;
const BINS: usize = EXACT as usize + 1;
const NIL: u32 = u32::MAX;

const START: u32 = 1;
const END: u32 = 2;
const FREE: u32 = 4;
const LEN_SHIFT: u32 = 3;

/// One page's entry in the side table. All zero is a valid state: an interior, clean page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Entry {
    /// Boundary tag: START and/or END, FREE, the run's length from bit LEN_SHIFT; 0 inside a run.
    tag: u32,
    /// Bin list links (page indices), in a free run's first page.
    next: u32,
    prev: u32,
    /// 1 when the page may hold data.
    dirty: u32,
}

pub struct Runs {
    map: *mut Entry,
    /// Pages tiled by runs so far.
    pages: u32,
    heads: [u32; BINS],
    /// Bit `b` set when bin `b` is not empty.
    nonempty: u128,
    /// Dirty pages in free runs.
    free_dirty: u32,
}

/// The bin of runs of `len` pages.
#[inline]
fn bin(len: u32) -> usize {
    (len.min(EXACT + 1) as usize).saturating_sub(1)
}

impl Runs {
    pub const fn new() -> Runs {
        Runs {
            map: core::ptr::null_mut(),
            pages: 0,
            heads: [NIL; BINS],
            nonempty: 0,
            free_dirty: 0,
        }
    }

    /// Uses `map` as the side table.
    ///
    /// # Safety
    /// `map` must be zeroed and hold an entry for every page ever passed to [`Runs::grow`].
    pub unsafe fn set_map(&mut self, map: *mut Entry) {
        self.map = map;
    }

    pub fn has_map(&self) -> bool {
        !self.map.is_null()
    }

    /// Pages tiled by runs so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Dirty pages in free runs (what a purge would give back).
    pub fn free_dirty(&self) -> u32 {
        self.free_dirty
    }

    fn at(&mut self, page: u32) -> &mut Entry {
        // SAFETY: callers pass pages below `self.pages`, which the map covers (set_map).
        unsafe { &mut *self.map.add(page as usize) }
    }

    fn get(&self, page: u32) -> Entry {
        // SAFETY: as in `at`.
        unsafe { *self.map.add(page as usize) }
    }

    fn mark(&mut self, start: u32, len: u32, free: bool) {
        let tag = (len << LEN_SHIFT) | if free { FREE } else { 0 };
        if len == 1 {
            self.at(start).tag = tag | START | END;
        } else {
            self.at(start).tag = tag | START;
            self.at(start + len - 1).tag = tag | END;
        }
    }

    /// Clears a run's boundary tags: its pages become the interior of a merged run.
    fn unmark(&mut self, start: u32, len: u32) {
        self.at(start).tag = 0;
        self.at(start + len - 1).tag = 0;
    }

    fn link(&mut self, start: u32, len: u32) {
        let b = bin(len);
        let head = self.heads.get(b).copied().unwrap_or(NIL);
        let entry = self.at(start);
        entry.next = head;
        entry.prev = NIL;
        if head != NIL {
            self.at(head).prev = start;
        }
        if let Some(h) = self.heads.get_mut(b) {
            *h = start;
        }
        self.nonempty |= 1 << b;
    }

    fn unlink(&mut self, start: u32, len: u32) {
        let Entry { next, prev, .. } = self.get(start);
        if next != NIL {
            self.at(next).prev = prev;
        }
        if prev != NIL {
            self.at(prev).next = next;
        } else {
            let b = bin(len);
            if let Some(h) = self.heads.get_mut(b) {
                *h = next;
            }
            if next == NIL {
                self.nonempty &= !(1 << b);
            }
        }
    }

    /// The free run starting at `page` with its length, if there is one.
    fn free_at(&self, page: u32) -> Option<u32> {
        let tag = self.get(page).tag;
        (tag & START != 0 && tag & FREE != 0).then_some(tag >> LEN_SHIFT)
    }

    /// The length of the allocated run starting at `page`; `None` for anything else.
    pub fn allocated(&self, page: u32) -> Option<u32> {
        if page >= self.pages {
            return None;
        }
        let tag = self.get(page).tag;
        (tag & START != 0 && tag & FREE == 0).then_some(tag >> LEN_SHIFT)
    }

    /// Takes a free run of `len` pages (the shortest fitting one, split if longer) and marks it
    /// allocated; `dirty(first, count)` is called for each stretch of its pages that may hold
    /// data. `None` when no free run is long enough.
    pub fn take(&mut self, len: u32, dirty: impl FnMut(u32, u32)) -> Option<u32> {
        let fitting = self.nonempty & !((1u128 << bin(len)) - 1);
        if len == 0 || fitting == 0 {
            return None;
        }
        let b = fitting.trailing_zeros() as usize;
        let start = if b < BINS - 1 {
            self.heads.get(b).copied()?
        } else {
            self.shortest_long(len)?
        };
        let free = self.free_at(start)?;
        self.unlink(start, free);
        self.carve(start, free, len, dirty);
        Some(start)
    }

    /// The shortest run of the last bin at least `at_least` pages long.
    fn shortest_long(&self, at_least: u32) -> Option<u32> {
        let mut page = self.heads.get(BINS - 1).copied()?;
        let mut best: Option<(u32, u32)> = None;
        while page != NIL {
            let len = self.get(page).tag >> LEN_SHIFT;
            if len >= at_least && best.is_none_or(|(_, l)| len < l) {
                best = Some((page, len));
            }
            page = self.get(page).next;
        }
        best.map(|(page, _)| page)
    }

    /// Makes the first `len` pages of the unlinked free run `[start, start + free)` an
    /// allocated run, the rest a free one.
    fn carve(&mut self, start: u32, free: u32, len: u32, mut dirty: impl FnMut(u32, u32)) {
        let mut stretch: Option<(u32, u32)> = None;
        for page in start..start + len {
            if self.get(page).dirty == 0 {
                self.at(page).dirty = 1;
                if let Some((first, count)) = stretch.take() {
                    dirty(first, count);
                }
            } else {
                self.free_dirty -= 1;
                stretch = Some(stretch.map_or((page, 1), |(first, count)| (first, count + 1)));
            }
        }
        if let Some((first, count)) = stretch {
            dirty(first, count);
        }
        if free > len {
            self.mark(start + len, free - len, true);
            self.link(start + len, free - len);
        }
        self.mark(start, len, false);
    }

    /// Frees the allocated run starting at `page`, merging it with free neighbours; its
    /// length, or `None` when no allocated run starts there (the map is left untouched).
    pub fn release(&mut self, page: u32) -> Option<u32> {
        let len = self.allocated(page)?;
        // Every page of an allocated run counts as dirty.
        self.free_dirty += len;
        self.insert_free(page, len);
        Some(len)
    }

    /// Adds `[start, start + len)` as a free run, merged with its free neighbours.
    fn insert_free(&mut self, mut start: u32, mut len: u32) {
        self.unmark(start, len);
        if start > 0 {
            let before = self.get(start - 1).tag;
            if before & END != 0 && before & FREE != 0 {
                let left = before >> LEN_SHIFT;
                start -= left;
                self.unlink(start, left);
                self.unmark(start, left);
                len += left;
            }
        }
        if let Some(right) = (start + len < self.pages)
            .then(|| self.free_at(start + len))
            .flatten()
        {
            self.unlink(start + len, right);
            self.unmark(start + len, right);
            len += right;
        }
        self.mark(start, len, true);
        self.link(start, len);
    }

    /// Tiles `len` more pages (clean: never handed out) as a free run.
    pub fn grow(&mut self, len: u32) {
        let start = self.pages;
        self.pages += len;
        self.mark(start, len, true);
        self.insert_free(start, len);
    }

    /// Resizes the allocated run at `page` to `len` pages in place: a shrink frees its tail, a
    /// growth takes the free run right after it. False when `page` starts no allocated run, or
    /// the free run after it is missing or too short.
    pub fn resize(&mut self, page: u32, len: u32) -> bool {
        let Some(old) = self.allocated(page) else {
            return false;
        };
        if len == old {
            return true;
        }
        if len == 0 {
            return false;
        }
        if len < old {
            self.mark(page, len, false);
            self.mark(page + len, old - len, false);
            self.release(page + len);
            return true;
        }
        let next = page + old;
        let Some(free) = (next < self.pages).then(|| self.free_at(next)).flatten() else {
            return false;
        };
        if old + free < len {
            return false;
        }
        self.unlink(next, free);
        self.unmark(next, free);
        self.unmark(page, old);
        self.carve(next, free, len - old, |_, _| {});
        // The carved piece's tags fall inside the grown run.
        self.unmark(next, len - old);
        self.mark(page, len, false);
        true
    }

    /// Marks dirty pages of free runs clean, the longest runs first, until at most `keep`
    /// dirty free pages are left, calling `give_back(first, count)` for each stretch of them
    /// (which must make them read as zeros); returns how many pages.
    pub fn purge(&mut self, keep: u32, mut give_back: impl FnMut(u32, u32)) -> u32 {
        let mut purged = 0;
        for b in (0..BINS).rev() {
            let mut run = self.heads.get(b).copied().unwrap_or(NIL);
            while run != NIL && self.free_dirty - purged > keep {
                let len = self.get(run).tag >> LEN_SHIFT;
                let mut stretch: Option<(u32, u32)> = None;
                for page in run..run + len + 1 {
                    if page < run + len && self.get(page).dirty != 0 {
                        self.at(page).dirty = 0;
                        purged += 1;
                        stretch =
                            Some(stretch.map_or((page, 1), |(first, count)| (first, count + 1)));
                    } else if let Some((first, count)) = stretch.take() {
                        give_back(first, count);
                    }
                }
                run = self.get(run).next;
            }
        }
        self.free_dirty -= purged;
        purged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs over a map of `pages` entries, all of them tiled as one free run.
    fn runs(map: &mut Vec<Entry>, pages: u32) -> Runs {
        *map = vec![Entry::default(); pages as usize];
        let mut runs = Runs::new();
        unsafe { runs.set_map(map.as_mut_ptr()) };
        runs.grow(pages);
        runs
    }

    /// Walks the tiling and the bins: runs tile every page, no two free runs are adjacent,
    /// interior tags are clear, the bins hold exactly the free runs, and the dirty count adds
    /// up. Returns (allocated pages, free pages).
    fn check(r: &Runs) -> (u32, u32) {
        let (mut page, mut used, mut free, mut dirty, mut free_runs) = (0, 0, 0, 0, 0);
        let mut previous_free = false;
        while page < r.pages {
            let tag = r.get(page).tag;
            assert_ne!(tag & START, 0, "no run starts at {page}");
            let len = tag >> LEN_SHIFT;
            assert!(len > 0 && page + len <= r.pages);
            let end = r.get(page + len - 1).tag;
            assert_ne!(end & END, 0, "run at {page} has no end tag");
            assert_eq!(end >> LEN_SHIFT, len);
            for inner in page + 1..page + len - 1 {
                assert_eq!(r.get(inner).tag, 0, "tag inside the run at {page}");
            }
            let is_free = tag & FREE != 0;
            assert!(!(is_free && previous_free), "adjacent free runs at {page}");
            if is_free {
                free += len;
                free_runs += 1;
                dirty += (page..page + len).filter(|&p| r.get(p).dirty != 0).count() as u32;
            } else {
                used += len;
            }
            previous_free = is_free;
            page += len;
        }
        assert_eq!(dirty, r.free_dirty);
        let mut binned = 0;
        for b in 0..BINS {
            assert_eq!(r.nonempty & (1 << b) != 0, r.heads[b] != NIL, "bin {b}");
            let (mut run, mut prev) = (r.heads[b], NIL);
            while run != NIL {
                let len = r.free_at(run).expect("a binned run is free");
                assert_eq!(bin(len), b);
                assert_eq!(r.get(run).prev, prev);
                binned += 1;
                prev = run;
                run = r.get(run).next;
            }
        }
        assert_eq!(binned, free_runs);
        (used, free)
    }

    #[test]
    fn random_operations_keep_the_tiling_sound() {
        let mut map = Vec::new();
        let mut r = runs(&mut map, 4096);
        let mut live: Vec<(u32, u32)> = Vec::new();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for step in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 1 + (state >> 20) as u32 % 80;
            match state % 7 {
                0..=2 => {
                    if let Some(page) = r.take(len, |_, _| {}) {
                        live.push((page, len));
                    }
                }
                3 | 4 if !live.is_empty() => {
                    let (page, len) = live.swap_remove((state >> 40) as usize % live.len());
                    assert_eq!(r.release(page), Some(len));
                }
                5 if !live.is_empty() => {
                    let i = (state >> 40) as usize % live.len();
                    if r.resize(live[i].0, len) {
                        live[i].1 = len;
                    }
                }
                _ => {
                    r.purge((state >> 30) as u32 % 64, |_, _| {});
                }
            }
            if step % 10 == 0 {
                let (used, _) = check(&r);
                assert_eq!(used, live.iter().map(|b| b.1).sum::<u32>(), "step {step}");
            }
        }
        for (page, _) in live.drain(..) {
            r.release(page);
        }
        // Everything merged back into one free run.
        assert_eq!(check(&r), (0, 4096));
        assert_eq!(r.take(4096, |_, _| {}), Some(0));
    }

    fn take(runs: &mut Runs, len: u32) -> (u32, Vec<(u32, u32)>) {
        let mut dirty = Vec::new();
        let page = runs
            .take(len, |first, count| dirty.push((first, count)))
            .unwrap();
        (page, dirty)
    }

    #[test]
    fn carves_in_order_and_reuses_the_exact_length_first() {
        let mut map = Vec::new();
        let mut r = runs(&mut map, 100);
        assert_eq!(take(&mut r, 10), (0, vec![]));
        assert_eq!(take(&mut r, 12), (10, vec![]));
        assert_eq!(take(&mut r, 9), (22, vec![]));
        assert_eq!(r.release(10), Some(12));
        assert_eq!(r.free_dirty(), 12);
        // 12 pages fit the hole [10, 22) exactly: its bin is found before the tail's.
        assert_eq!(take(&mut r, 12), (10, vec![(10, 12)]));
        assert_eq!(r.free_dirty(), 0);
        // A shorter request splits the hole; its tail stays a dirty free run.
        assert_eq!(r.release(10), Some(12));
        assert_eq!(take(&mut r, 8), (10, vec![(10, 8)]));
        assert_eq!(r.free_dirty(), 4);
        assert_eq!(r.allocated(18), None);
    }

    #[test]
    fn frees_merge_with_both_neighbours() {
        let mut map = Vec::new();
        let mut r = runs(&mut map, 40);
        let a = take(&mut r, 10).0;
        let b = take(&mut r, 10).0;
        let c = take(&mut r, 10).0;
        let d = take(&mut r, 10).0;
        assert_eq!((a, b, c, d), (0, 10, 20, 30));
        assert_eq!(r.take(1, |_, _| {}), None, "all 40 pages are allocated");
        r.release(a);
        r.release(c);
        assert_eq!(
            r.take(11, |_, _| {}),
            None,
            "two holes of 10 are not merged"
        );
        r.release(b);
        // a, b and c are one free run of 30 pages now, its interior tags cleared.
        assert_eq!(take(&mut r, 30), (0, vec![(0, 30)]));
        r.release(0);
        r.release(d);
        assert_eq!(r.free_dirty(), 40);
        assert_eq!(map.iter().filter(|e| e.tag != 0).count(), 2);
        let mut r2 = r;
        assert_eq!(take(&mut r2, 40), (0, vec![(0, 40)]));
    }

    #[test]
    fn double_and_interior_frees_are_refused_without_changes() {
        let mut map = Vec::new();
        let mut r = runs(&mut map, 20);
        let a = take(&mut r, 5).0;
        let b = take(&mut r, 5).0;
        assert_eq!(r.release(a + 1), None, "interior page");
        assert_eq!(r.release(a + 4), None, "last page");
        assert_eq!(r.release(99), None, "beyond the tiled pages");
        assert_eq!(r.release(a), Some(5));
        assert_eq!(r.release(a), None, "double free");
        assert_eq!(r.free_dirty(), 5);
        assert_eq!(r.allocated(b), Some(5));
        // One page runs carry both tags in one entry.
        let one = take(&mut r, 1).0;
        assert_eq!(r.release(one), Some(1));
        assert_eq!(r.release(one), None);
    }

    #[test]
    fn long_runs_are_split_shortest_first() {
        let mut map = Vec::new();
        let mut r = runs(&mut map, 400);
        let a = take(&mut r, 100).0;
        let _b = take(&mut r, 1).0;
        let c = take(&mut r, 80).0;
        let _d = take(&mut r, 1).0;
        r.release(a);
        r.release(c);
        // Free: 100 at 0, 80 at 101, 218 at 182: the shortest fitting long run is taken.
        assert_eq!(r.take(219, |_, _| {}), None);
        assert_eq!(take(&mut r, 70).0, 101);
        assert_eq!(take(&mut r, 90).0, 0);
        assert_eq!(take(&mut r, 200).0, 182);
    }

    #[test]
    fn resize_shrinks_and_grows_in_place() {
        let mut map = Vec::new();
        let mut r = runs(&mut map, 50);
        let a = take(&mut r, 10).0;
        assert!(r.resize(a, 10));
        assert!(r.resize(a, 6));
        assert_eq!(r.allocated(a), Some(6));
        assert_eq!(r.free_dirty(), 4);
        // Growing takes the freed tail (dirty) and the clean run after it.
        assert!(r.resize(a, 20));
        assert_eq!(r.allocated(a), Some(20));
        assert_eq!(r.free_dirty(), 0);
        // No stale tags inside the grown run.
        assert_eq!(r.release(a + 6), None);
        assert_eq!(r.release(a + 10), None);
        assert_eq!(map[10].tag, 0);
        let b = take(&mut r, 30).0;
        assert_eq!(b, 20);
        assert!(!r.resize(a, 21), "no free run after it");
        assert!(!r.resize(b, 31), "end of the tiled pages");
        assert!(!r.resize(a + 1, 5), "not a run's start");
        assert_eq!(r.allocated(a), Some(20));
    }

    #[test]
    fn purge_gives_back_dirty_stretches_and_they_come_back_clean() {
        let mut map = Vec::new();
        let mut r = runs(&mut map, 64);
        let a = take(&mut r, 8).0;
        let b = take(&mut r, 8).0;
        let c = take(&mut r, 8).0;
        r.release(a);
        r.release(c);
        let mut given = Vec::new();
        assert_eq!(r.purge(0, |first, count| given.push((first, count))), 16);
        given.sort();
        assert_eq!(given, vec![(0, 8), (16, 8)]);
        assert_eq!(r.free_dirty(), 0);
        assert_eq!(r.purge(0, |_, _| panic!("nothing is dirty")), 0);
        // The purged run comes back clean, merged ones report only their dirty stretch.
        assert_eq!(take(&mut r, 8), (0, vec![]));
        r.release(b);
        assert_eq!(take(&mut r, 40), (8, vec![(8, 8)]));
    }
}
