//! Handing memory memprof freed back to the system.

/// Returns the free memory of every malloc arena to the kernel. glibc keeps what a thread
/// freed in that thread's arena, below its top, where its own trimming never reaches: a
/// report's modules (megabytes of inflated debug info each) stayed in memprof's RSS after
/// they were dropped.
pub fn to_the_system() {
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
    unsafe { libc::malloc_trim(0) };
}
