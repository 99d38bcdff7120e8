//! Per-thread caches: a free list per class that serves most allocations and frees without a
//! lock. A block freed by another thread than the one that allocated it simply joins the
//! freeing thread's cache (blocks belong to their class, not to a thread).
//!
//! The calling thread's cache pointer lives in a const-initialised `thread_local!` cell without
//! a destructor (so reading it needs no lazy setup, and never calls malloc). A pthread key,
//! set once per thread, is what runs the exit destructor that returns a dying thread's blocks
//! to the central lists (`__cxa_thread_atexit`, which Rust would use, can call malloc). Cache
//! structures come from their own mmap'd pool.
use core::{
    cell::Cell,
    ptr,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::{
    central::{CENTRAL, Chain, Free},
    classes::{CLASS_COUNT, CLASSES, in_range},
    lock::SpinLock,
    os,
    stats::Pending,
};

/// One class's cache: a list of free blocks, then a range of never-used ones.
struct Bin {
    list: Chain,
    fresh: usize,
    fresh_end: usize,
}

pub struct ThreadCache {
    bins: [Bin; CLASS_COUNT],
    pub stats: Pending,
    /// Link in the pool of unused caches.
    next: *mut ThreadCache,
}

/// Blocks moved per exchange with the central list (16 KiB worth, 4 to 64); a bin's list
/// holds at most twice that.
const BATCH: [usize; CLASS_COUNT] = {
    let mut table = [0; CLASS_COUNT];
    let mut i = 0;
    while i < CLASS_COUNT {
        let n = 16384 / CLASSES[i];
        table[i] = if n < 4 {
            4
        } else if n > 64 {
            64
        } else {
            n
        };
        i += 1;
    }
    table
};

static KEY: AtomicUsize = AtomicUsize::new(usize::MAX);

thread_local! {
    /// The thread's cache: null before its first allocation, [`DEAD`] once its destructor ran.
    static CURRENT: Cell<*mut ThreadCache> = const { Cell::new(ptr::null_mut()) };
}

/// A thread whose cache was returned at exit uses the central lists directly from then on.
const DEAD: usize = 1;

/// Creates the pthread key; false when none is left (threads then use the central lists).
pub fn init() -> bool {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: plain key creation with a destructor that does not allocate.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } != 0 {
        return false;
    }
    KEY.store(key as usize, Ordering::Release);
    true
}

/// The calling thread's cache, or null while it cannot have one (during its own setup or
/// after its exit destructor, or without a key).
#[inline]
pub fn current() -> *mut ThreadCache {
    let cache = CURRENT.get();
    if cache as usize > DEAD {
        return cache;
    }
    if cache as usize == DEAD {
        return ptr::null_mut();
    }
    let key = KEY.load(Ordering::Relaxed);
    if key == usize::MAX {
        return ptr::null_mut();
    }
    setup(key as libc::pthread_key_t)
}

/// Threads in the middle of `setup`: pthread_setspecific may calloc for high keys, and that
/// nested call must not set up a second cache.
static SETTING_UP: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];

#[cold]
fn setup(key: libc::pthread_key_t) -> *mut ThreadCache {
    // SAFETY: pthread_self only reads the thread pointer.
    let me = unsafe { libc::pthread_self() } as usize;
    if SETTING_UP
        .iter()
        .any(|slot| slot.load(Ordering::Relaxed) == me)
    {
        return ptr::null_mut();
    }
    let Some(slot) = SETTING_UP.iter().find(|slot| {
        slot.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }) else {
        return ptr::null_mut();
    };
    let mut cache = pool_take();
    if !cache.is_null() {
        // SAFETY: a valid key; the value is ours.
        if unsafe { libc::pthread_setspecific(key, cache.cast()) } == 0 {
            CURRENT.set(cache);
        } else {
            pool_give(cache);
            cache = ptr::null_mut();
        }
    }
    slot.store(0, Ordering::Release);
    cache
}

/// The key's destructor: give everything back; the thread's last allocations (other
/// destructors) then go to the central lists.
unsafe extern "C" fn thread_exit(cache: *mut libc::c_void) {
    let cache = cache.cast::<ThreadCache>();
    CURRENT.set(DEAD as *mut ThreadCache);
    // SAFETY: the key only ever holds caches from the pool, owned by this dying thread.
    unsafe { drain(&mut *cache) };
    pool_give(cache);
}

/// Returns every cached block (never-used ones too) and publishes the pending statistics.
fn drain(cache: &mut ThreadCache) {
    for (class, bin) in cache.bins.iter_mut().enumerate() {
        let mut chain = core::mem::replace(&mut bin.list, Chain::EMPTY);
        while bin.fresh < bin.fresh_end {
            // SAFETY: never-used blocks of this bin, ours alone.
            unsafe { chain.push(bin.fresh as *mut Free) };
            bin.fresh += CLASSES[class];
        }
        CENTRAL.give(class, chain);
    }
    cache.stats.flush();
}

/// Returns the calling thread's cached blocks to the central lists (before a trim).
pub fn drain_current() {
    let cache = current();
    if !cache.is_null() {
        // SAFETY: our own thread's cache.
        unsafe { drain(&mut *cache) };
    }
}

/// Publishes the calling thread's statistics.
pub fn flush_current_stats() {
    let cache = current();
    if !cache.is_null() {
        // SAFETY: our own thread's cache.
        unsafe { (*cache).stats.flush() };
    }
}

impl ThreadCache {
    /// A block of `class`, or null when memory is exhausted.
    #[inline]
    pub fn pop(&mut self, class: usize) -> *mut u8 {
        let class = in_range(class);
        let bin = &mut self.bins[class];
        let block = bin.list.head;
        if !block.is_null() {
            // SAFETY: cached blocks are free and owned by this thread.
            bin.list.head = unsafe { (*block).next };
            bin.list.count -= 1;
            return block.cast();
        }
        if bin.fresh < bin.fresh_end {
            let block = bin.fresh;
            bin.fresh += CLASSES[class];
            return block as *mut u8;
        }
        self.refill(class)
    }

    #[cold]
    fn refill(&mut self, class: usize) -> *mut u8 {
        let class = in_range(class);
        let refill = CENTRAL.take(class, BATCH[class]);
        self.stats.flush();
        let bin = &mut self.bins[class];
        bin.list = refill.chain;
        bin.fresh = refill.fresh;
        bin.fresh_end = refill.fresh_end;
        if bin.list.head.is_null() && bin.fresh >= bin.fresh_end {
            return ptr::null_mut();
        }
        self.pop(class)
    }

    /// Caches a free block of `class`, returning a batch to the central list when full.
    ///
    /// # Safety
    /// `block` must be a free block of `class` that nobody else holds.
    #[inline]
    pub unsafe fn push(&mut self, class: usize, block: *mut u8) {
        let class = in_range(class);
        let bin = &mut self.bins[class];
        // SAFETY: handed over by the caller.
        unsafe { bin.list.push(block.cast::<Free>()) };
        if bin.list.count > 2 * BATCH[class] {
            self.overflow(class);
        }
    }

    #[cold]
    fn overflow(&mut self, class: usize) {
        let class = in_range(class);
        // SAFETY: the bin's blocks are ours.
        let surplus = unsafe { split_off(&mut self.bins[class].list, BATCH[class]) };
        CENTRAL.give(class, surplus);
        self.stats.flush();
    }
}

/// Takes the first `n` blocks of `chain` (which holds more than `n`).
///
/// # Safety
/// The chain's blocks must be owned by the caller.
unsafe fn split_off(chain: &mut Chain, n: usize) -> Chain {
    let head = chain.head;
    let mut tail = head;
    for _ in 1..n {
        // SAFETY: the chain holds more than n blocks.
        tail = unsafe { (*tail).next };
    }
    // SAFETY: as above.
    chain.head = unsafe { (*tail).next };
    chain.count -= n;
    Chain {
        head,
        tail,
        count: n,
    }
}

/// Unused cache structures, linked through `next`, and never-used ones `[fresh, fresh_end)`
/// of the newest mapping: those are handed out as they are (an all-zero cache is an empty
/// one), so that a mapping's pages only become resident as threads appear.
struct Pool {
    free: *mut ThreadCache,
    fresh: *mut ThreadCache,
    fresh_end: *mut ThreadCache,
}

pub static POOL_LOCK: SpinLock = SpinLock::new();
static mut POOL: Pool = Pool {
    free: ptr::null_mut(),
    fresh: ptr::null_mut(),
    fresh_end: ptr::null_mut(),
};

/// Caches per mapping of the pool.
const POOL_CHUNK: usize = 64;

fn pool_take() -> *mut ThreadCache {
    POOL_LOCK.with(|| {
        // SAFETY: POOL is only touched under POOL_LOCK.
        let pool = unsafe { &mut *ptr::addr_of_mut!(POOL) };
        if !pool.free.is_null() {
            let cache = pool.free;
            // SAFETY: a pooled cache.
            pool.free = unsafe { (*cache).next };
            return cache;
        }
        if pool.fresh == pool.fresh_end {
            let chunk = os::map(core::mem::size_of::<ThreadCache>() * POOL_CHUNK);
            if chunk.is_null() {
                return ptr::null_mut();
            }
            pool.fresh = chunk.cast();
            // SAFETY: the end of the fresh mapping.
            pool.fresh_end = unsafe { pool.fresh.add(POOL_CHUNK) };
        }
        let cache = pool.fresh;
        // SAFETY: inside the mapping.
        pool.fresh = unsafe { cache.add(1) };
        cache
    })
}

fn pool_give(cache: *mut ThreadCache) {
    POOL_LOCK.with(|| {
        // SAFETY: POOL is only touched under POOL_LOCK; the cache is drained and unused.
        let pool = unsafe { &mut *ptr::addr_of_mut!(POOL) };
        unsafe { (*cache).next = pool.free };
        pool.free = cache;
    });
}

/// After fork, only the forking thread exists: forget setups of others.
pub fn forget_other_threads() {
    SETTING_UP
        .iter()
        .for_each(|slot| slot.store(0, Ordering::Relaxed));
}
