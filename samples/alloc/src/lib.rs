//! memprof's own allocator, one of the allocators memprof compares.
//!
//! - Small requests (up to 14336 bytes) are rounded up to a size class ([`classes`]) and served
//!   from per-thread caches ([`cache`]), which exchange batches with per-class central lists
//!   ([`central`]); those carve blocks from 256 KiB slabs ([`slab`]) in one reserved region
//!   ([`region`]).
//! - Requests up to 256 KiB above that (the classes from 16384 to 32768 are whole pages) get
//!   runs of whole pages from their own part of the region ([`medium`]), kept as free runs that
//!   merge with their neighbours ([`runs`]); dirty free pages go back to the kernel past a
//!   bound.
//! - Larger requests get their own page-rounded mapping ([`large`]).
//! - [`heap`] holds the malloc-style entry points; [`MemprofAlloc`] makes them Rust's global
//!   allocator, and the `memprof-alloc-preload` crate exports them as the C API.
//! - Explicit allocators on top: [`Pool`], [`Arena`], [`Bump`].
//! - [`stats()`] reads the counters; `MEMPROF_ALLOC_STATS=1` prints them at exit.
//! - A free of a block that is not allocated (double free) is counted and ignored.
//! - Wholly free slabs and dirty free page runs go back to the kernel: automatically as they
//!   grow, or through [`heap::trim`].

mod arena;
mod bump;
mod cache;
mod central;
pub mod classes;
pub mod heap;
mod large;
mod lock;
mod medium;
mod os;
mod pool;
mod region;
mod runs;
mod slab;
mod stats;

use core::alloc::{GlobalAlloc, Layout};

pub use arena::Arena;
pub use bump::Bump;
pub use classes::{CLASSES, size_class};
pub use pool::Pool;
pub use stats::{Stats, print as print_stats, stats};

/// The allocator as Rust's global allocator: `#[global_allocator] static A: MemprofAlloc =
/// MemprofAlloc;`.
pub struct MemprofAlloc;

// SAFETY: every method forwards to the heap, which returns blocks of at least the size asked
// for, aligned as asked, and frees only what it handed out.
unsafe impl GlobalAlloc for MemprofAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        heap::aligned(layout.align(), layout.size())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { heap::free(ptr) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= heap::MIN_ALIGN {
            return heap::calloc(1, layout.size());
        }
        let p = heap::aligned(layout.align(), layout.size());
        if !p.is_null() {
            // SAFETY: the block holds at least layout.size() bytes.
            unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= heap::MIN_ALIGN {
            // SAFETY: forwarded from the caller; new_size is never 0 here.
            return unsafe { heap::realloc(ptr, new_size) };
        }
        let q = heap::aligned(layout.align(), new_size);
        if !q.is_null() {
            // SAFETY: both blocks hold the bytes copied.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                heap::free(ptr);
            }
        }
        q
    }
}
