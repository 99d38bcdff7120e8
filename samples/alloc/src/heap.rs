//! The allocator's entry points: malloc, free, realloc and aligned allocation over the thread
//! caches, the central lists and the page path. They never allocate through anything else,
//! so they are safe to export as the process's malloc.
use core::{
    ptr,
    sync::atomic::{AtomicU8, Ordering},
};

use crate::{
    cache,
    central::{CENTRAL, Chain, Free},
    classes::{CLASSES, PAGE, SLAB_MAX, class_index, in_range, slab_class},
    large, medium, region, slab,
    stats::{self, Pending},
};

/// Every block is aligned to this much.
pub const MIN_ALIGN: usize = 16;

const UNINIT: u8 = 0;
const RUNNING: u8 = 1;
const READY: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static HOOKS: AtomicU8 = AtomicU8::new(UNINIT);

#[inline]
fn ensure_init() {
    if STATE.load(Ordering::Acquire) != READY {
        init();
    }
}

#[cold]
fn init() {
    // Phase 1 (nothing here allocates): the region and the cache key.
    if STATE
        .compare_exchange(UNINIT, RUNNING, Ordering::Acquire, Ordering::Acquire)
        .is_ok()
    {
        region::init();
        cache::init();
        STATE.store(READY, Ordering::Release);
    } else {
        while STATE.load(Ordering::Acquire) != READY {
            core::hint::spin_loop();
        }
    }
    // Phase 2 (may call malloc, which is usable now): fork handlers and the exit report.
    if HOOKS
        .compare_exchange(UNINIT, RUNNING, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        // SAFETY: registering handlers that only take and release our own locks.
        unsafe {
            libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork_child));
            let name = c"MEMPROF_ALLOC_STATS";
            let value = libc::getenv(name.as_ptr());
            if !value.is_null() && core::ffi::CStr::from_ptr(value).to_bytes() == b"1" {
                libc::atexit(stats::print_at_exit);
            }
        }
        HOOKS.store(READY, Ordering::Release);
    }
}

/// fork copies one thread: every lock is taken first so that none is copied mid-update.
extern "C" fn before_fork() {
    cache::POOL_LOCK.lock();
    CENTRAL.lock_all();
    region::LOCK.lock();
    medium::LOCK.lock();
    large::LOCK.lock();
}

extern "C" fn after_fork() {
    large::LOCK.unlock();
    medium::LOCK.unlock();
    region::LOCK.unlock();
    CENTRAL.unlock_all();
    cache::POOL_LOCK.unlock();
}

extern "C" fn after_fork_child() {
    cache::forget_other_threads();
    after_fork();
}

/// Records into the thread's pending stats, or straight into the globals without a cache.
#[inline]
fn record(cache: *mut cache::ThreadCache, f: impl FnOnce(&mut Pending)) {
    if cache.is_null() {
        let mut pending = Pending::new();
        f(&mut pending);
        pending.flush();
    } else {
        // SAFETY: the calling thread's own cache.
        f(unsafe { &mut (*cache).stats });
    }
}

/// Allocates `size` bytes (a class, or whole pages); null when memory is exhausted.
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    ensure_init();
    let p = match slab_class(size) {
        Some(class) => small(class).or_else(|| page_path(size, PAGE, false)),
        None => page_path(size, PAGE, false),
    };
    p.unwrap_or_else(|| {
        stats::failed();
        ptr::null_mut()
    })
}

#[inline]
fn small(class: usize) -> Option<*mut u8> {
    let class = in_range(class);
    let cache = cache::current();
    let block = if cache.is_null() {
        let refill = CENTRAL.take(class, 1);
        if refill.chain.head.is_null() {
            refill.fresh as *mut u8
        } else {
            refill.chain.head.cast::<u8>()
        }
    } else {
        // SAFETY: the calling thread's own cache.
        unsafe { (*cache).pop(class) }
    };
    if block.is_null() {
        return None;
    }
    // SAFETY: a block just taken from a slab.
    let (slab, index) = unsafe { slab::of_block(block, class) };
    slab.mark_allocated(index);
    record(cache, |s| s.allocated(CLASSES[class]));
    Some(block)
}

/// Whole pages: a medium run when the length and alignment allow (and the area has room),
/// else a mapping of its own.
fn page_path(size: usize, align: usize, zero: bool) -> Option<*mut u8> {
    let len = size.max(1).checked_add(PAGE - 1)? & !(PAGE - 1);
    let mut p = ptr::null_mut();
    if len <= medium::MAX && align <= PAGE {
        p = medium::alloc(len, zero);
    }
    if p.is_null() {
        p = large::alloc(len, align);
    }
    if p.is_null() {
        return None;
    }
    record(cache::current(), |s| s.allocated(len));
    Some(p)
}

/// Allocates `count * size` zeroed bytes; null on overflow or exhaustion.
pub fn calloc(count: usize, size: usize) -> *mut u8 {
    let Some(total) = count.checked_mul(size) else {
        ensure_init();
        stats::failed();
        return ptr::null_mut();
    };
    ensure_init();
    // Slab blocks may be reused; the page path zeroes the pages that are not fresh.
    let zeroed_small = |class| {
        let p = small(class)?;
        // SAFETY: the block holds at least `total` bytes.
        unsafe { ptr::write_bytes(p, 0, total) };
        Some(p)
    };
    let p = match slab_class(total) {
        Some(class) => zeroed_small(class).or_else(|| page_path(total, PAGE, true)),
        None => page_path(total, PAGE, true),
    };
    p.unwrap_or_else(|| {
        stats::failed();
        ptr::null_mut()
    })
}

/// Frees a block. A pointer that is not an allocated block of ours (a double free, a foreign
/// pointer) is counted in `invalid_frees` and otherwise ignored: the heap is never touched for
/// it.
///
/// # Safety
/// `p` must not be used after this call if it was a live block.
pub unsafe fn free(p: *mut u8) {
    if p.is_null() {
        return;
    }
    ensure_init();
    if region::contains(p) {
        let Some(at) = slab::locate(p) else {
            stats::invalid_free();
            return;
        };
        if !at.slab.mark_free(at.index) {
            stats::invalid_free();
            return;
        }
        let class = in_range(at.slab.class as usize);
        let cache = cache::current();
        if cache.is_null() {
            let mut chain = Chain::EMPTY;
            // SAFETY: the block was just marked free by us alone.
            unsafe { chain.push(at.start as *mut Free) };
            CENTRAL.give(class, chain);
        } else {
            // SAFETY: as above; the calling thread's own cache.
            unsafe { (*cache).push(class, at.start as *mut u8) };
        }
        record(cache, |s| s.freed(CLASSES[class]));
    } else if medium::contains(p) {
        match medium::free(p) {
            Some(len) => record(cache::current(), |s| s.freed(len)),
            None => stats::invalid_free(),
        }
    } else if let Some(len) = large::free(p) {
        record(cache::current(), |s| s.freed(len));
    } else {
        stats::invalid_free();
    }
}

/// Returns free memory to the kernel, as glibc's `malloc_trim`: the calling thread's cached
/// blocks go back to the central lists, every slab whose blocks are all free there is
/// released, and the dirty pages of free medium runs are given back. Returns how many slabs
/// were released.
pub fn trim() -> usize {
    ensure_init();
    cache::drain_current();
    medium::trim();
    (0..CLASSES.len()).map(|class| CENTRAL.trim(class)).sum()
}

/// Bytes of freed medium runs that may still be resident (at most [`MEDIUM_DIRTY_LIMIT`];
/// [`trim`] gives them back).
pub fn free_medium_dirty_bytes() -> usize {
    medium::free_dirty_bytes()
}

/// Largest request served from page runs; longer ones get a mapping of their own.
pub const MEDIUM_MAX: usize = medium::MAX;
/// Dirty free bytes of medium runs kept before they are given back to the kernel.
pub const MEDIUM_DIRTY_LIMIT: usize = medium::DIRTY_LIMIT;

/// Slabs released to the kernel since the process started (by trims, explicit or automatic).
pub fn released_slabs() -> usize {
    region::releases()
}

/// The bytes usable from `p` on: to the end of its block. 0 for null or a pointer not ours.
pub fn usable_size(p: *const u8) -> usize {
    if p.is_null() {
        return 0;
    }
    if region::contains(p) {
        return match slab::locate(p) {
            Some(at) => at.start + at.slab.block as usize - p as usize,
            None => 0,
        };
    }
    if medium::contains(p) {
        return medium::size(p).unwrap_or(0);
    }
    large::size(p).unwrap_or(0)
}

/// glibc's realloc: null `p` allocates, size 0 frees and returns null; a block stays in place
/// when its class (or page count) does not change; on failure null and the old block stays.
///
/// # Safety
/// `p` is null or a live block of ours.
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: forwarded from the caller.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    ensure_init();
    let old = usable_size(p);
    if region::contains(p) {
        if let Some(at) = slab::locate(p)
            && at.start == p as usize
            && class_index(size) == Some(at.slab.class as usize)
        {
            return p;
        }
    } else if old > 0 && size > SLAB_MAX {
        let Some(len) = size.checked_add(PAGE - 1).map(|s| s & !(PAGE - 1)) else {
            stats::failed();
            return ptr::null_mut();
        };
        if len == old {
            return p;
        }
        if medium::contains(p) {
            // In place when the run shrinks or the free run after it has room.
            if len <= medium::MAX && medium::resize(p, len) {
                record(cache::current(), |s| {
                    s.freed(old);
                    s.allocated(len);
                });
                return p;
            }
            // SAFETY: forwarded from the caller.
            return unsafe { move_to(p, old, size) };
        }
        let q = large::resize(p, old, len);
        if q.is_null() {
            stats::failed();
        } else {
            record(cache::current(), |s| {
                s.freed(old);
                s.allocated(len);
            });
        }
        return q;
    }
    // SAFETY: forwarded from the caller.
    unsafe { move_to(p, old, size) }
}

/// realloc by allocating, copying and freeing.
///
/// # Safety
/// `p` is a live block of ours of `old` usable bytes.
unsafe fn move_to(p: *mut u8, old: usize, size: usize) -> *mut u8 {
    let q = malloc(size);
    if !q.is_null() {
        // SAFETY: both blocks hold at least the bytes copied and do not overlap.
        unsafe {
            ptr::copy_nonoverlapping(p, q, old.min(size));
            free(p);
        }
    }
    q
}

/// Allocates `size` bytes aligned to `align` (a power of two). Alignments up to a page with a
/// small enough request are served from a class large enough for `size + align - 16` (blocks
/// are 16-aligned, so an aligned address with `size` bytes after it lies in it); anything else
/// is a page-path mapping placed at an aligned address.
pub fn aligned(align: usize, size: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    if align <= MIN_ALIGN {
        return malloc(size);
    }
    ensure_init();
    if align <= PAGE
        && let Some(padded) = size.checked_add(align - MIN_ALIGN)
        && padded <= SLAB_MAX
    {
        let p = malloc(padded);
        if p.is_null() {
            return p;
        }
        return ((p as usize + align - 1) & !(align - 1)) as *mut u8;
    }
    page_path(size, align, false).unwrap_or_else(|| {
        stats::failed();
        ptr::null_mut()
    })
}
