//! The medium path: requests above the largest slab class up to [`MAX`] bytes (the classes
//! above [`crate::classes::SLAB_MAX`] are whole pages, so those too) get a run of whole
//! pages from their own part of the reserved region ([`region::medium_area`]), kept by
//! [`Runs`] under one lock. Freed runs merge with free neighbours and are reused as they are,
//! still resident: no system call and no page fault on the common path (an mmap per block
//! cost both). Dirty free pages go back to the kernel (`MADV_DONTNEED`) once there are more
//! than [`DIRTY_LIMIT`] bytes of them (those of the longest free runs, until at most
//! [`DIRTY_KEEP`] are left), and all of them on [`trim`]. The sample server keeps 1-2 MiB of
//! medium blocks churning: a lower limit turns its page faults back into thousands.
//!
//! The part of the region starts with the side table (one [`Entry`] per page), then the pages;
//! both are made read-write [`COMMIT_STEP`] at a time as the runs grow.
use core::{
    ptr,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::{
    classes::PAGE,
    lock::SpinLock,
    os, region,
    runs::{Entry, Runs},
};

/// Largest request served here; longer ones get their own mapping ([`crate::large`]).
pub const MAX: usize = 256 * 1024;
/// Dirty bytes kept in free runs before they are given back.
pub const DIRTY_LIMIT: usize = 2 << 20;
/// What a purge past the limit leaves dirty: the shortest runs, likeliest to be reused soon.
const DIRTY_KEEP: usize = 1 << 20;
/// The runs grow by at least this much at a time.
const GROW: usize = 1 << 20;
/// Pages are made read-write this much at a time, to save mprotect calls.
const COMMIT_STEP: usize = 4 << 20;

pub static LOCK: SpinLock = SpinLock::new();
/// Start of the pages (0 before the first medium request).
static BASE: AtomicUsize = AtomicUsize::new(0);
/// Bytes tiled by runs so far: every medium block lies in `[BASE, BASE + TILED)`.
static TILED: AtomicUsize = AtomicUsize::new(0);

struct Medium {
    runs: Runs,
    /// Pages the area can hold.
    capacity: usize,
    /// Pages (and their table entries) made read-write so far.
    committed: usize,
    /// Start of the side table.
    map: usize,
}

static mut MEDIUM: Medium = Medium {
    runs: Runs::new(),
    capacity: 0,
    committed: 0,
    map: 0,
};

fn medium() -> &'static mut Medium {
    // SAFETY: only called under LOCK.
    unsafe { &mut *ptr::addr_of_mut!(MEDIUM) }
}

/// Whether `p` lies among the pages handed out so far (a block or not).
#[inline]
pub fn contains(p: *const u8) -> bool {
    (p as usize).wrapping_sub(BASE.load(Ordering::Relaxed)) < TILED.load(Ordering::Acquire)
}

impl Medium {
    /// Splits the region's medium part into the table and the pages; false without one.
    fn init(&mut self) -> bool {
        if self.runs.has_map() {
            return true;
        }
        let (start, len) = region::medium_area();
        let entry = core::mem::size_of::<Entry>();
        let table = (len / PAGE * entry).next_multiple_of(PAGE);
        if len <= table + GROW {
            return false;
        }
        self.capacity = ((len - table) / PAGE).min(u32::MAX as usize / 2);
        self.map = start;
        // SAFETY: the table's part of the region is reserved, zero once committed, and holds an
        // entry for each of the `capacity` pages.
        unsafe { self.runs.set_map(start as *mut Entry) };
        BASE.store(start + table, Ordering::Relaxed);
        true
    }

    /// Tiles at least `pages` more pages; false when the area is full.
    fn extend(&mut self, pages: usize) -> bool {
        let tiled = self.runs.pages() as usize;
        let grow = pages.max(GROW / PAGE).min(self.capacity - tiled);
        if grow < pages {
            return false;
        }
        if tiled + grow > self.committed {
            let step = COMMIT_STEP / PAGE;
            let committed = (tiled + grow).next_multiple_of(step).min(self.capacity);
            let base = BASE.load(Ordering::Relaxed);
            let entry = core::mem::size_of::<Entry>();
            let table_from = (self.committed * entry) & !(PAGE - 1);
            let table_to = (committed * entry).next_multiple_of(PAGE);
            // SAFETY: both ranges lie in the region's medium part.
            let ok = unsafe {
                os::commit(
                    (base + self.committed * PAGE) as *mut u8,
                    (committed - self.committed) * PAGE,
                ) && os::commit((self.map + table_from) as *mut u8, table_to - table_from)
            };
            if !ok {
                return false;
            }
            self.committed = committed;
        }
        self.runs.grow(grow as u32);
        TILED.store((tiled + grow) * PAGE, Ordering::Release);
        true
    }

    /// Gives dirty free pages back to the kernel, the longest runs first, until at most `keep`
    /// bytes of them are left; how many bytes that was.
    fn purge(&mut self, keep: usize) -> usize {
        let base = BASE.load(Ordering::Relaxed);
        let pages = self.runs.purge((keep / PAGE) as u32, |first, count| {
            // SAFETY: pages of free runs: nobody uses their contents.
            unsafe {
                os::decommit(
                    (base + first as usize * PAGE) as *mut u8,
                    count as usize * PAGE,
                )
            }
        });
        pages as usize * PAGE
    }

    fn purge_if_over_limit(&mut self) {
        if self.runs.free_dirty() as usize * PAGE > DIRTY_LIMIT {
            self.purge(DIRTY_KEEP);
        }
    }
}

/// A run of `len` bytes (a multiple of PAGE, at most [`MAX`]), zeroed if `zero`; null when the
/// area is missing or full.
pub fn alloc(len: usize, zero: bool) -> *mut u8 {
    let pages = len / PAGE;
    LOCK.with(|| {
        let m = medium();
        if !m.init() {
            return ptr::null_mut();
        }
        let base = BASE.load(Ordering::Relaxed);
        let clear = |first: u32, count: u32| {
            if zero {
                // SAFETY: pages of the run just taken, ours alone.
                unsafe {
                    ptr::write_bytes(
                        (base + first as usize * PAGE) as *mut u8,
                        0,
                        count as usize * PAGE,
                    )
                };
            }
        };
        let page = match m.runs.take(pages as u32, clear) {
            Some(page) => page,
            None if m.extend(pages) => match m.runs.take(pages as u32, clear) {
                Some(page) => page,
                None => return ptr::null_mut(),
            },
            None => return ptr::null_mut(),
        };
        (base + page as usize * PAGE) as *mut u8
    })
}

/// The page index of `p` if it is page-aligned inside the area.
fn page_of(p: *const u8) -> Option<u32> {
    let offset = (p as usize).wrapping_sub(BASE.load(Ordering::Relaxed));
    (offset < TILED.load(Ordering::Acquire) && offset.is_multiple_of(PAGE))
        .then_some((offset / PAGE) as u32)
}

/// The length of the medium block at `p`, if there is one.
pub fn size(p: *const u8) -> Option<usize> {
    let page = page_of(p)?;
    LOCK.with(|| medium().runs.allocated(page))
        .map(|pages| pages as usize * PAGE)
}

/// Frees the medium block at `p` and returns its length; `None` (and nothing changes) when
/// `p` is not one (a double free, an interior or foreign pointer).
pub fn free(p: *mut u8) -> Option<usize> {
    let page = page_of(p)?;
    LOCK.with(|| {
        let m = medium();
        let pages = m.runs.release(page)?;
        m.purge_if_over_limit();
        Some(pages as usize * PAGE)
    })
}

/// Resizes the medium block at `p` to `len` bytes (a multiple of PAGE) in place; false when it
/// is not one or cannot grow there.
pub fn resize(p: *mut u8, len: usize) -> bool {
    let Some(page) = page_of(p) else {
        return false;
    };
    LOCK.with(|| {
        let m = medium();
        let done = m.runs.resize(page, (len / PAGE) as u32);
        m.purge_if_over_limit();
        done
    })
}

/// Gives every dirty free page back to the kernel (`malloc_trim`); how many bytes that was.
pub fn trim() -> usize {
    LOCK.with(|| {
        let m = medium();
        if m.runs.has_map() { m.purge(0) } else { 0 }
    })
}

/// Dirty bytes in free runs: resident, free, and not yet given back.
pub fn free_dirty_bytes() -> usize {
    LOCK.with(|| medium().runs.free_dirty() as usize * PAGE)
}
