//! `libmemprof_alloc.so`: memprof's own allocator behind the C allocation API, for
//! `LD_PRELOAD`. Each export is a real, default-visibility symbol, so ld.so binds every
//! program's (and libc's own) malloc to it and memprof finds and probes it by name.
//!
//! Rust code in this library allocates through [`MemprofAlloc`] as well, so nothing here ever
//! reaches another malloc (which would be this one again, or recursion).
//!
//! The exports are `extern "C-unwind"` (the same C calling convention): plain `extern "C"`
//! would wrap each in an abort-on-unwind landing pad, and a landing pad keeps the standard
//! library's panic machinery linked in (see build.rs). Nothing here panics in a release build.
use core::ffi::c_void;

use libc::{EINVAL, ENOMEM, c_int, size_t};
use memprof_alloc::{MemprofAlloc, heap};

#[global_allocator]
static GLOBAL: MemprofAlloc = MemprofAlloc;

const PAGE: usize = memprof_alloc::classes::PAGE;

fn set_errno(value: c_int) {
    // SAFETY: errno is thread-local and always writable.
    unsafe { *libc::__errno_location() = value };
}

/// Null with errno ENOMEM, as C expects of a failed allocation.
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(ENOMEM);
    }
    p.cast()
}

#[unsafe(no_mangle)]
pub extern "C-unwind" fn malloc(size: size_t) -> *mut c_void {
    or_enomem(heap::malloc(size))
}

/// # Safety
/// `p` is null or a live block of this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn free(p: *mut c_void) {
    // SAFETY: forwarded from the caller.
    unsafe { heap::free(p.cast()) }
}

/// # Safety
/// As `free`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded from the caller.
    unsafe { heap::free(p.cast()) }
}

#[unsafe(no_mangle)]
pub extern "C-unwind" fn calloc(count: size_t, size: size_t) -> *mut c_void {
    or_enomem(heap::calloc(count, size))
}

/// # Safety
/// `p` is null or a live block of this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    // SAFETY: forwarded from the caller.
    let q = unsafe { heap::realloc(p.cast(), size) };
    // realloc(p, 0) frees and returns null: that is no failure.
    if q.is_null() && (size != 0 || p.is_null()) {
        set_errno(ENOMEM);
    }
    q.cast()
}

/// # Safety
/// As `realloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn reallocarray(
    p: *mut c_void,
    count: size_t,
    size: size_t,
) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: forwarded from the caller.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// # Safety
/// `out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return EINVAL;
    }
    let p = heap::aligned(align, size);
    if p.is_null() {
        return ENOMEM;
    }
    // SAFETY: the caller provides a writable slot.
    unsafe { *out = p.cast() };
    0
}

/// C11 asks for a power-of-two alignment (glibc accepts any size, as here).
#[unsafe(no_mangle)]
pub extern "C-unwind" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(EINVAL);
        return core::ptr::null_mut();
    }
    or_enomem(heap::aligned(align, size))
}

/// glibc rounds a non-power-of-two alignment up to the next power of two.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    let Some(align) = align.checked_next_power_of_two() else {
        set_errno(EINVAL);
        return core::ptr::null_mut();
    };
    or_enomem(heap::aligned(align, size))
}

#[unsafe(no_mangle)]
pub extern "C-unwind" fn valloc(size: size_t) -> *mut c_void {
    or_enomem(heap::aligned(PAGE, size))
}

/// Page-aligned, size rounded up to whole pages (pvalloc(0) gets one page).
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pvalloc(size: size_t) -> *mut c_void {
    let Some(rounded) = size.max(1).checked_next_multiple_of(PAGE) else {
        set_errno(ENOMEM);
        return core::ptr::null_mut();
    };
    or_enomem(heap::aligned(PAGE, rounded))
}

/// glibc's `malloc_trim`: gives free slabs back to the kernel; 1 when some were released.
/// `pad` is accepted and ignored (slabs are released whole).
#[unsafe(no_mangle)]
pub extern "C-unwind" fn malloc_trim(_pad: size_t) -> c_int {
    c_int::from(heap::trim() > 0)
}

/// # Safety
/// `p` is null or a live block of this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn malloc_usable_size(p: *mut c_void) -> size_t {
    heap::usable_size(p.cast())
}
