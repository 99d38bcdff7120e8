//! The system calls underneath: anonymous mappings, nothing else. None of them allocates.
use core::ptr;

/// Maps `len` bytes of zeroed read-write memory, or null.
pub fn map(len: usize) -> *mut u8 {
    map_with(len, libc::PROT_READ | libc::PROT_WRITE, 0)
}

/// Reserves `len` bytes of address space that is neither readable nor charged, or null.
pub fn reserve(len: usize) -> *mut u8 {
    map_with(len, libc::PROT_NONE, libc::MAP_NORESERVE)
}

fn map_with(len: usize, prot: i32, flags: i32) -> *mut u8 {
    // SAFETY: a fresh anonymous private mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Makes reserved memory usable.
///
/// # Safety
/// `[p, p + len)` must lie inside a reservation of ours.
pub unsafe fn commit(p: *mut u8, len: usize) -> bool {
    // SAFETY: the caller guarantees the range is ours.
    unsafe { libc::mprotect(p.cast(), len, libc::PROT_READ | libc::PROT_WRITE) == 0 }
}

/// Gives the pages of `[p, p + len)` back to the kernel: they read as zeros afterwards and stop
/// counting in the resident set until touched again.
///
/// # Safety
/// `[p, p + len)` must be mapped memory of ours whose contents nobody needs.
pub unsafe fn decommit(p: *mut u8, len: usize) {
    // SAFETY: the caller guarantees the contents are no longer needed.
    unsafe {
        libc::madvise(p.cast(), len, libc::MADV_DONTNEED);
    }
}

/// # Safety
/// `[p, p + len)` must be a mapping of ours that nothing uses any more.
pub unsafe fn unmap(p: *mut u8, len: usize) {
    // SAFETY: the caller guarantees nothing refers to the range.
    unsafe {
        libc::munmap(p.cast(), len);
    }
}

/// Grows or shrinks a mapping, moving it if needed; null on failure (the old one stays).
///
/// # Safety
/// `[p, p + old)` must be a whole mapping of ours.
pub unsafe fn remap(p: *mut u8, old: usize, new: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the mapping is ours; MAYMOVE keeps the contents.
    let q = unsafe { libc::mremap(p.cast(), old, new, libc::MREMAP_MAYMOVE) };
    if q == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        q.cast()
    }
}

/// Writes all of `bytes` to stderr, ignoring errors (used for messages that must not
/// allocate).
pub fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = rest.get(n as usize..).unwrap_or_default();
    }
}
