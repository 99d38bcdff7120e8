//! The library's own allocator (its `#[global_allocator]`): the unwinder's tables and caches
//! never come from the program's allocator.
//!
//! Taken from the program's heap, they were blocks memprof never saw allocated, in memory the
//! leak check scans as the program's: megabytes of copied `.eh_frame` made a possibly lost
//! block look reachable. Here every byte lives in one reserved region, a private mapping of a
//! memfd named [`ARENA_NAME`], which the leak check skips as it skips the ring, and no hook
//! is ever entered for them.
//!
//! Small sizes (up to 32 KiB) come from power-of-two free lists carved from 256 KiB chunks;
//! larger ones take the next pages of the region and give their memory back when freed. The
//! lists sit behind a lock a forked child resets ([`crate::fork_safe`]). Should the region be
//! refused or used up, plain anonymous mappings serve instead.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::fork_safe::ForkSafeLock;

pub use profiler_common::shared_ring::ARENA_NAME;

/// Size classes 16, 32, ... 32768 bytes.
const CLASSES: usize = 12;
const SMALLEST: usize = 16;
const LARGEST_SMALL: usize = SMALLEST << (CLASSES - 1);
const CHUNK: usize = 256 << 10;
const PAGE: usize = 4096;

struct FreeLists {
    /// The first free block of each class; each free block holds the next one's address.
    heads: [usize; CLASSES],
    /// What is left of the chunk being carved.
    cursor: usize,
    end: usize,
}

static LISTS: ForkSafeLock<FreeLists> = ForkSafeLock::new(FreeLists::new());

impl FreeLists {
    const fn new() -> FreeLists {
        FreeLists {
            heads: [0; CLASSES],
            cursor: 0,
            end: 0,
        }
    }
}

/// In a forked child: the lists as no other thread left them.
pub fn forked() {
    // SAFETY: called from the child's fork handler.
    unsafe { LISTS.reset_in_child(FreeLists::new()) };
}

pub struct Arena;

// SAFETY: blocks are handed out once until deallocated, sized and aligned as asked (sizes are
// rounded up to a power-of-two class at least the alignment, carved at multiples of it from
// page-aligned chunks; larger ones are page-aligned mappings).
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > PAGE {
            return null_mut();
        }
        match class_of(layout) {
            Some(class) => small(class),
            None => map(round_to_page(layout.size())),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(class) => {
                let mut lists = exclusive();
                // SAFETY: the block is ours and at least 16 bytes: it holds the link.
                unsafe { ptr.cast::<usize>().write(lists.heads[class]) };
                lists.heads[class] = ptr as usize;
            }
            None => unmap(ptr, round_to_page(layout.size())),
        }
    }
}

fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(SMALLEST);
    (size <= LARGEST_SMALL).then(|| size.next_power_of_two().trailing_zeros() as usize - 4)
}

fn round_to_page(len: usize) -> usize {
    (len.max(1) + PAGE - 1) & !(PAGE - 1)
}

fn exclusive() -> crate::fork_safe::WriteGuard<'static, FreeLists> {
    loop {
        if let Some(lists) = LISTS.try_write() {
            return lists;
        }
        core::hint::spin_loop();
    }
}

fn small(class: usize) -> *mut u8 {
    let size = SMALLEST << class;
    let mut lists = exclusive();
    let head = lists.heads[class];
    if head != 0 {
        // SAFETY: a free block of ours holds the next free block's address.
        lists.heads[class] = unsafe { (head as *const usize).read() };
        return head as *mut u8;
    }
    // Carved at a multiple of its size (chunks are page-aligned), so aligned to it.
    let at = (lists.cursor + size - 1) & !(size - 1);
    if lists.cursor != 0 && at + size <= lists.end {
        lists.cursor = at + size;
        return at as *mut u8;
    }
    let chunk = map(CHUNK);
    if chunk.is_null() {
        return null_mut();
    }
    lists.cursor = chunk as usize + size;
    lists.end = chunk as usize + CHUNK;
    chunk
}

/// `len` fresh bytes (a multiple of the page size): the next stretch of the region, or an
/// anonymous mapping once it is used up or if it could not be made.
fn map(len: usize) -> *mut u8 {
    if let Some((start, end)) = region() {
        let at = NEXT.fetch_add(len, Ordering::Relaxed);
        if at.checked_add(len).is_some_and(|stop| stop <= end - start) {
            return (start + at) as *mut u8;
        }
    }
    // SAFETY: maps new memory.
    let mapped = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        null_mut()
    } else {
        mapped.cast()
    }
}

/// Gives back the pages of a large block: in the region, its memory (the addresses are not
/// handed out again); elsewhere, its mapping.
fn unmap(ptr: *mut u8, len: usize) {
    let in_region = region().is_some_and(|(start, end)| (start..end).contains(&(ptr as usize)));
    // SAFETY: the pages of a block of ours, `len` rounded as when it was made.
    unsafe {
        if in_region {
            libc::madvise(ptr.cast(), len, libc::MADV_DONTNEED);
        } else {
            libc::munmap(ptr.cast(), len);
        }
    }
}

/// Bytes of address space reserved (memory is used only where written).
const REGION_BYTES: usize = 1 << 30;
const UNSET: u8 = 0;
const SETTING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;
static STATE: AtomicU8 = AtomicU8::new(UNSET);
static START: AtomicUsize = AtomicUsize::new(0);
/// Offset of the next unused byte of the region.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The region, `[start, end)`, reserved on first use: a private mapping of a sparse memfd
/// named [`ARENA_NAME`], whose descriptor is closed at once (a program closing every
/// descriptor it did not open cannot take it away).
fn region() -> Option<(usize, usize)> {
    loop {
        match STATE.load(Ordering::Acquire) {
            READY => {
                let start = START.load(Ordering::Relaxed);
                return Some((start, start + REGION_BYTES));
            }
            FAILED => return None,
            SETTING => core::hint::spin_loop(),
            _ => {
                if STATE
                    .compare_exchange(UNSET, SETTING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let reserved = reserve();
                    START.store(reserved.unwrap_or(0), Ordering::Relaxed);
                    let state = if reserved.is_some() { READY } else { FAILED };
                    STATE.store(state, Ordering::Release);
                }
            }
        }
    }
}

fn reserve() -> Option<usize> {
    // SAFETY: a new descriptor, sized, mapped and closed; every result is checked.
    unsafe {
        let fd = libc::memfd_create(ARENA_NAME.as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let mapped = if libc::ftruncate(fd, REGION_BYTES as libc::off_t) == 0 {
            libc::mmap(
                null_mut(),
                REGION_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                fd,
                0,
            )
        } else {
            libc::MAP_FAILED
        };
        libc::close(fd);
        (mapped != libc::MAP_FAILED).then_some(mapped as usize)
    }
}
