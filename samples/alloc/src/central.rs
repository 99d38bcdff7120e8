//! The central free lists, one per class, shared by all threads: thread caches take blocks
//! from them in batches and give surplus back. Never-used blocks are handed out as a range
//! ([`Refill::fresh`]), not linked, so that their pages stay untouched (not resident) until a
//! thread really allocates them.
//!
//! When a class's list grows large, it is trimmed: slabs whose every carved block is on the
//! list are taken off it and released to the kernel ([`region::release_slab`]). The next trim
//! waits until the list has doubled again, so trimming costs O(1) per free, amortised.
use core::{cell::UnsafeCell, ptr};

use crate::{
    classes::{CLASS_COUNT, CLASSES, in_range},
    lock::SpinLock,
    region::{self, SLAB},
    slab::{HEADER, STATE_LINE, Slab},
};

/// A free block: its first word links to the next one.
#[repr(C)]
pub struct Free {
    pub next: *mut Free,
}

/// A chain of free blocks, `count` long, ending at `tail` (null when empty).
pub struct Chain {
    pub head: *mut Free,
    pub tail: *mut Free,
    pub count: usize,
}

impl Chain {
    pub const EMPTY: Chain = Chain {
        head: ptr::null_mut(),
        tail: ptr::null_mut(),
        count: 0,
    };

    /// # Safety
    /// `block` must be a free block nobody else holds.
    pub unsafe fn push(&mut self, block: *mut Free) {
        // SAFETY: the caller hands the block over.
        unsafe { (*block).next = self.head };
        if self.head.is_null() {
            self.tail = block;
        }
        self.head = block;
        self.count += 1;
    }
}

/// What a thread cache gets from [`Central::take`]: free blocks, or a range of never-used
/// blocks `[fresh, fresh_end)`, or (only when memory runs out) nothing.
pub struct Refill {
    pub chain: Chain,
    pub fresh: usize,
    pub fresh_end: usize,
}

/// A class's central list grows this large before its first trim.
const TRIM_FIRST: usize = 4 * SLAB;

struct Class {
    free: Chain,
    /// Next never-used block of the current slab, and the end of its blocks.
    carve: usize,
    carve_end: usize,
    /// Free bytes on the list that trigger the next trim.
    trim_at: usize,
}

/// A class's lock and list on cache lines of their own, so that threads exchanging blocks of
/// different classes do not contend for one line (all the locks used to share one). 128 bytes,
/// as the adjacent-line prefetcher pairs lines.
#[repr(C, align(128))]
struct List {
    lock: SpinLock,
    class: UnsafeCell<Class>,
}

pub struct Central {
    lists: [List; CLASS_COUNT],
}

// SAFETY: each class is only touched under its lock.
unsafe impl Sync for Central {}

pub static CENTRAL: Central = Central {
    lists: [const {
        List {
            lock: SpinLock::new(),
            class: UnsafeCell::new(Class {
                free: Chain::EMPTY,
                carve: 0,
                carve_end: 0,
                trim_at: TRIM_FIRST,
            }),
        }
    }; CLASS_COUNT],
};

impl Central {
    pub fn lock_all(&self) {
        self.lists.iter().for_each(|list| list.lock.lock());
    }

    pub fn unlock_all(&self) {
        self.lists.iter().for_each(|list| list.lock.unlock());
    }

    /// Up to `want` free blocks of `class`, or when the list is empty up to `want` never-used
    /// ones; nothing only when memory runs out.
    pub fn take(&self, class: usize, want: usize) -> Refill {
        let class = in_range(class);
        self.lists[class].lock.with(|| {
            // SAFETY: we hold the class lock.
            let state = unsafe { &mut *self.lists[class].class.get() };
            let mut out = Refill {
                chain: Chain::EMPTY,
                fresh: 0,
                fresh_end: 0,
            };
            while out.chain.count < want && !state.free.head.is_null() {
                let block = state.free.head;
                // SAFETY: blocks on the list are free and ours while we hold the lock.
                unsafe {
                    state.free.head = (*block).next;
                    out.chain.push(block);
                }
                state.free.count -= 1;
            }
            if state.free.head.is_null() {
                state.free = Chain::EMPTY;
            }
            if out.chain.count > 0 {
                return out;
            }
            let block = CLASSES[class];
            if state.carve >= state.carve_end {
                let slab = region::new_slab(|slab| {
                    // SAFETY: a fresh slab, not yet visible to anyone else.
                    unsafe { Slab::init(slab, class, block) }
                });
                if slab.is_null() {
                    return out;
                }
                (state.carve, state.carve_end) = Slab::blocks_of(slab, block);
            }
            // Up to the end of a state line when that at most doubles the range: the blocks
            // of one line then go to one thread (see `slab::STATE_LINE`). Not for a single
            // block: a thread without a cache takes exactly that one.
            let first = region::slab_of(state.carve as *const u8) + HEADER;
            let index = (state.carve - first) / block + want;
            let rounded = index.next_multiple_of(STATE_LINE);
            let index = if want > 1 && rounded - index <= want {
                rounded
            } else {
                index
            };
            let end = state.carve_end.min(first + index * block);
            out.fresh = state.carve;
            out.fresh_end = end;
            // SAFETY: the carve slab is live; its counters change under this lock only.
            unsafe { (*Slab::of(state.carve)).carved += ((end - state.carve) / block) as u32 };
            state.carve = end;
            out
        })
    }

    /// Returns a chain of free blocks of `class`; trims the list when it has grown enough.
    pub fn give(&self, class: usize, chain: Chain) {
        let class = in_range(class);
        if chain.head.is_null() {
            return;
        }
        self.lists[class].lock.with(|| {
            // SAFETY: we hold the class lock; the chain's blocks are free and handed over.
            let state = unsafe { &mut *self.lists[class].class.get() };
            unsafe { (*chain.tail).next = state.free.head };
            if state.free.head.is_null() {
                state.free.tail = chain.tail;
            }
            state.free.head = chain.head;
            state.free.count += chain.count;
            if state.free.count * CLASSES[class] >= state.trim_at {
                // SAFETY: we hold the class lock.
                unsafe { trim_class(state) };
                state.trim_at = (2 * state.free.count * CLASSES[class]).max(TRIM_FIRST);
            }
        });
    }

    /// Releases every slab of `class` whose blocks are all on the central list; returns how
    /// many were released.
    pub fn trim(&self, class: usize) -> usize {
        let class = in_range(class);
        self.lists[class].lock.with(|| {
            // SAFETY: we hold the class lock.
            let state = unsafe { &mut *self.lists[class].class.get() };
            // SAFETY: as above.
            let released = unsafe { trim_class(state) };
            state.trim_at = (2 * state.free.count * CLASSES[class]).max(TRIM_FIRST);
            released
        })
    }
}

/// Takes the blocks of wholly free slabs off the list and releases those slabs. Three walks:
/// count the list's blocks per slab (in the headers' scratch words), keep the blocks of slabs
/// with blocks elsewhere, reset the scratch words of the kept slabs.
///
/// # Safety
/// The caller holds the class's lock.
unsafe fn trim_class(state: &mut Class) -> usize {
    let current = if state.carve < state.carve_end {
        // SAFETY: the carve slab is live.
        unsafe { Slab::of(state.carve) }
    } else {
        ptr::null_mut()
    };
    let mut block = state.free.head;
    while !block.is_null() {
        // SAFETY: list blocks are free blocks of live slabs of this class; under its lock.
        unsafe {
            (*Slab::of(block as usize)).scratch += 1;
            block = (*block).next;
        }
    }
    let mut kept = Chain::EMPTY;
    let mut released = 0;
    let mut block = state.free.head;
    while !block.is_null() {
        // SAFETY: as above; a released slab is only touched once its last block is passed.
        unsafe {
            let next = (*block).next;
            let slab = Slab::of(block as usize);
            // carved == 0 marks a slab found wholly free earlier in this walk.
            if slab != current
                && ((*slab).carved == 0 || (*slab).scratch == (*slab).carved as usize)
            {
                (*slab).carved = 0;
                (*slab).scratch -= 1;
                if (*slab).scratch == 0 {
                    // Every block of the slab is behind us in this walk.
                    region::release_slab(slab);
                    released += 1;
                }
            } else {
                kept.push(block);
            }
            block = next;
        }
    }
    let mut block = kept.head;
    while !block.is_null() {
        // SAFETY: kept blocks belong to live slabs.
        unsafe {
            (*Slab::of(block as usize)).scratch = 0;
            block = (*block).next;
        }
    }
    state.free = kept;
    released
}
