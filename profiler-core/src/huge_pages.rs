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
