//! Transparent huge pages for the collector's largest tables.
//!
//! The heap's address table is looked up at a random entry per event, and on a program with
//! millions of live blocks it spans hundreds of MB: with 4 KiB pages nearly every lookup also
//! missed the TLB (`perf` on python3: the prefetch of the next entries stalled on the page
//! walk, 13% of all samples; 4% with huge pages). Debian's default THP mode is `madvise`, so
//! the table asks for them.

use std::mem::MaybeUninit;

/// The x86-64 huge page.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole huge pages inside `memory` with huge pages as they are
/// first touched. Only a hint: where the kernel declines, nothing changes.
pub fn advise<T>(memory: &mut [MaybeUninit<T>]) {
    let start = memory.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(memory);
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end / HUGE_PAGE * HUGE_PAGE;
    if last <= first {
        return;
    }
    // SAFETY: the range lies inside memory this caller owns; the advice changes how it is
    // backed, never what it holds.
    let advised = unsafe {
        rustix::mm::madvise(
            first as *mut std::ffi::c_void,
            last - first,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
    // A kernel without THP says EINVAL: small pages it is.
    let _ = advised;
}

/// `len` all-zero `T`s in memory mapped for them alone: aligned to a huge page and advised to
/// use them when at least one fits, zero without being written (the kernel hands out zeroed
/// pages as they are first touched), and unmapped when dropped. The heap's table grows by
/// parts; from the allocator, a part it freed could stay in its heap, and a table larger than
/// the memory it needs is what this was made to avoid.
pub struct ZeroedPages<T> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    /// The mapping's length in bytes (0: nothing mapped).
    mapped: usize,
}

// SAFETY: the pages are owned like a Box<[T]>'s memory.
unsafe impl<T: Send> Send for ZeroedPages<T> {}
// SAFETY: as above; shared access only reads.
unsafe impl<T: Sync> Sync for ZeroedPages<T> {}

/// The base page.
const PAGE: usize = 4096;

impl<T> ZeroedPages<T> {
    /// # Safety
    /// An all-zero `T` must be a valid one.
    pub unsafe fn new(len: usize) -> Self {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("a table that fits the address space")
            .next_multiple_of(PAGE);
        if bytes == 0 {
            return Self::default();
        }
        const { assert!(std::mem::align_of::<T>() <= PAGE) };
        let slack = if bytes >= HUGE_PAGE { HUGE_PAGE } else { 0 };
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let mapped = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                bytes + slack,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        };
        let Ok(mapped) = mapped else {
            let layout = std::alloc::Layout::from_size_align(bytes, PAGE).expect("page layout");
            std::alloc::handle_alloc_error(layout);
        };
        let start = mapped as usize;
        let aligned = if slack == 0 {
            start
        } else {
            start.next_multiple_of(HUGE_PAGE)
        };
        // The slack before and after the aligned range goes back.
        for (from, to) in [(start, aligned), (aligned + bytes, start + bytes + slack)] {
            if to > from {
                // SAFETY: the range is part of the mapping just made, outside what is kept.
                let _ = unsafe { rustix::mm::munmap(from as *mut std::ffi::c_void, to - from) };
            }
        }
        let pages = ZeroedPages {
            ptr: std::ptr::NonNull::new(aligned as *mut T).expect("mmap never returns 0"),
            len,
            mapped: bytes,
        };
        // SAFETY: the mapping holds `len` T's worth of bytes, which is what the slice covers.
        let memory = unsafe {
            std::slice::from_raw_parts_mut(pages.ptr.as_ptr().cast::<MaybeUninit<T>>(), len)
        };
        advise(memory);
        pages
    }
}

impl<T> Default for ZeroedPages<T> {
    fn default() -> Self {
        ZeroedPages {
            ptr: std::ptr::NonNull::dangling(),
            len: 0,
            mapped: 0,
        }
    }
}

impl<T> std::ops::Deref for ZeroedPages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` zero-valid T's live at `ptr` (or none, at a dangling aligned pointer).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::ops::DerefMut for ZeroedPages<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for ZeroedPages<T> {
    fn drop(&mut self) {
        if self.mapped != 0 {
            // SAFETY: the mapping is ours and nothing refers to it past this point.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.mapped) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_pages_are_zero_writable_and_huge_page_aligned_when_large() {
        // SAFETY: an all-zero u64 is 0.
        let mut small = unsafe { ZeroedPages::<u64>::new(3) };
        assert_eq!(&*small, &[0, 0, 0]);
        small[2] = 7;
        assert_eq!(small[2], 7);
        // SAFETY: as above.
        let mut large = unsafe { ZeroedPages::<u64>::new(HUGE_PAGE / 8 * 3 + 5) };
        assert_eq!(large.as_ptr() as usize % HUGE_PAGE, 0);
        assert!(large.iter().all(|&word| word == 0));
        let last = large.len() - 1;
        large[last] = 9;
        assert_eq!(large[last], 9);
        // SAFETY: as above.
        let empty = unsafe { ZeroedPages::<u64>::new(0) };
        assert!(empty.is_empty());
    }
}
