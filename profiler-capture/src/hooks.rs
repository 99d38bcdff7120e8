//! The exported allocation functions.
//!
//! Each export is a naked trampoline: on entry `[rsp]` is the return address into the caller
//! and `rsp + 8` the caller's stack pointer once the call returns, which is where the eBPF
//! return probe takes its snapshot. The trampoline passes `rsp` (and `rbp`, when a register is
//! left) as extra arguments and jumps to the Rust hook, which returns straight to the caller.
//! `mmap` and `mremap`, whose arguments fill the registers, pass them on the stack through a
//! call instead. `rbp` matters: code built with frame pointers has its unwind rules based on it.
//!
//! What each records, and when, matches the probes (profiler-ebpf): allocations at their
//! return, with a stack; `free` and `munmap` at their entry (before the memory can be reused),
//! with the caller's return address in `aux` and no stack; `free(NULL)` not at all.

use core::arch::naked_asm;
use core::ffi::c_void;
use core::mem::MaybeUninit;

use libc::{c_int, off_t, size_t};
use profiler_common::{
    EventHeader, EventKind, FLAG_REALLOC_ENTRY, FLAG_STACK_NUMBERED, FLAG_STACK_TRUNCATED,
    MAX_STACK_DEPTH,
    shared_ring::{STACKS_FRAME_POINTERS, STACKS_NONE},
};

use crate::real::{self, BOOTSTRAP};
use crate::ring;
use crate::stack_numbers::{self, Numbered};
use crate::thread::{self, Entered};
use crate::unwind::{self, Outcome};

/// The bytes of a `#[repr(C)]` plain-data value.
fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is Copy plain data (the profiler-common record structs) with no padding bytes
    // left uninitialised: both are laid out without implicit padding (asserted there).
    unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The bytes of return addresses, as the record's body holds them.
fn words_as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u64s have no padding; the length covers exactly the words.
    unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), size_of_val(words)) }
}

/// The caller's return address: the word at the entry stack pointer.
fn caller(entry_sp: usize) -> u64 {
    // SAFETY: the trampoline passed the stack pointer it was entered with; it points at the
    // return address the call pushed.
    unsafe { *(entry_sp as *const u64) }
}

fn errno() -> c_int {
    // SAFETY: errno is thread-local and always readable.
    unsafe { *libc::__errno_location() }
}

fn set_errno(value: c_int) {
    // SAFETY: as above, writable.
    unsafe { *libc::__errno_location() = value };
}

/// Records an allocation call that returned `addr`, with the caller's stack.
#[inline(never)]
pub(crate) fn allocation(
    kind: EventKind,
    addr: u64,
    size: u64,
    old_addr: u64,
    aux: u64,
    entry_sp: usize,
    entry_bp: usize,
) {
    let Some(ring) = ring::ring() else { return };
    let saved = errno();
    let mut header = EventHeader {
        kind: kind as u32,
        tid: thread::tid(),
        ts_ns: ring.event_ns(),
        addr,
        size,
        old_addr,
        aux,
        stack_depth: 0,
        flags: 0,
    };
    let mode = ring.control().stack_mode;
    let max_depth = (ring.control().max_depth as usize).min(MAX_STACK_DEPTH);
    if mode == STACKS_NONE || max_depth == 0 {
        ring.write(header.kind, &[bytes_of(&header)]);
        set_errno(saved);
        return;
    }
    // The caller's registers once the call returns: the state the probes unwind from.
    let (ip, sp) = (caller(entry_sp), entry_sp as u64 + 8);
    let (low, high) = thread::stack_bounds(sp as usize);
    let stack_end = if (low..high).contains(&(sp as usize)) {
        high as u64
    } else {
        sp
    };
    let mut buffer = [MaybeUninit::<u64>::uninit(); MAX_STACK_DEPTH];
    let frames = &mut buffer[..max_depth];
    let unwind::Walked {
        depth,
        outcome,
        folded,
    } = match mode {
        STACKS_FRAME_POINTERS => unwind::frame_pointers(ip, sp, entry_bp as u64, stack_end, frames),
        _ => unwind::eh_frame(ip, sp, entry_bp as u64, stack_end, frames),
    };
    header.stack_depth = depth as u32;
    match outcome {
        Outcome::Complete => {}
        Outcome::Cut => header.flags |= FLAG_STACK_TRUNCATED,
        Outcome::Failed => {
            header.flags |= FLAG_STACK_TRUNCATED;
            ring.stack_error();
        }
    }
    // SAFETY: the unwinders initialised the first `depth` entries.
    let walked = unsafe { core::slice::from_raw_parts(buffer.as_ptr().cast::<u64>(), depth) };
    let truncated = header.flags & FLAG_STACK_TRUNCATED != 0;
    stack_numbers::send(walked, truncated, folded, |numbered| match numbered {
        Numbered::Known(number) => {
            header.flags |= FLAG_STACK_NUMBERED;
            header.stack_depth = 0;
            ring.write(header.kind, &[bytes_of(&header), &number.to_le_bytes()])
        }
        Numbered::New(number) => {
            header.flags |= FLAG_STACK_NUMBERED;
            let parts = [
                bytes_of(&header),
                &number.to_le_bytes(),
                words_as_bytes(walked),
            ];
            ring.write(header.kind, &parts)
        }
        Numbered::Unnumbered => {
            ring.write(header.kind, &[bytes_of(&header), words_as_bytes(walked)])
        }
    });
    set_errno(saved);
}

/// Records a release (`free`, `munmap`) at its entry.
#[inline(never)]
pub(crate) fn release(kind: EventKind, addr: u64, size: u64, entry_sp: usize) {
    let Some(ring) = ring::ring() else { return };
    let saved = errno();
    let header = EventHeader {
        kind: kind as u32,
        tid: thread::tid(),
        ts_ns: ring.event_ns(),
        addr,
        size,
        old_addr: 0,
        aux: caller(entry_sp),
        stack_depth: 0,
        flags: 0,
    };
    ring.write(header.kind, &[bytes_of(&header)]);
    set_errno(saved);
}

/// Records that a realloc of `old` starts (see `FLAG_REALLOC_ENTRY`): it may release `old`
/// before its own record is written, and another thread may be handed that address first.
#[inline(never)]
fn realloc_entry(kind: EventKind, old: u64) {
    let Some(ring) = ring::ring() else { return };
    let saved = errno();
    let header = EventHeader {
        kind: kind as u32,
        tid: thread::tid(),
        ts_ns: ring.event_ns(),
        addr: 0,
        size: 0,
        old_addr: old,
        aux: 0,
        stack_depth: 0,
        flags: FLAG_REALLOC_ENTRY,
    };
    ring.write(header.kind, &[bytes_of(&header)]);
    set_errno(saved);
}

/// [`hooked`] for realloc and reallocarray: the outermost call of a live block is announced
/// before it is forwarded ([`realloc_entry`]).
#[inline(always)]
fn hooked_realloc<T: Copy>(
    kind: EventKind,
    old: *mut c_void,
    forward: impl FnOnce() -> T,
    record: impl FnOnce(T),
) -> T {
    let Some(_entered) = Entered::try_enter() else {
        return forward();
    };
    if !old.is_null() && !BOOTSTRAP.owns(old) {
        realloc_entry(kind, old as u64);
    }
    let result = forward();
    record(result);
    result
}

/// Runs the hooked call (`forward`) and, when this is its thread's outermost hook, records it
/// with `record` once it returned; a call nested in another hook (the library's own, the
/// allocator's, a signal handler's) is part of that call and only forwarded.
#[inline(always)]
pub(crate) fn hooked<T: Copy>(forward: impl FnOnce() -> T, record: impl FnOnce(T)) -> T {
    let Some(_entered) = Entered::try_enter() else {
        return forward();
    };
    let result = forward();
    record(result);
    result
}

/// `count * size`, or u64::MAX when it overflows (as the probes compute it).
fn array_bytes(count: size_t, size: size_t) -> u64 {
    (count as u64).saturating_mul(size as u64)
}

// --- the malloc family -------------------------------------------------------------------

fn forward_malloc(size: size_t) -> *mut c_void {
    match real::malloc() {
        // SAFETY: the next definition of malloc, with the caller's argument.
        Some(malloc) => unsafe { malloc(size) },
        None => BOOTSTRAP.alloc(size, 16),
    }
}

/// # Safety
/// Called as C's malloc.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: size_t) -> *mut c_void {
    naked_asm!("mov rsi, rsp", "mov rdx, rbp", "jmp {hook}", hook = sym malloc_hook)
}

extern "C" fn malloc_hook(size: size_t, sp: usize, bp: usize) -> *mut c_void {
    hooked(
        || forward_malloc(size),
        |p| {
            allocation(EventKind::Malloc, p as u64, size as u64, 0, 0, sp, bp);
        },
    )
}

fn forward_calloc(count: size_t, size: size_t) -> *mut c_void {
    match real::calloc() {
        // SAFETY: the next definition of calloc, with the caller's arguments.
        Some(calloc) => unsafe { calloc(count, size) },
        None => match count.checked_mul(size) {
            // The arena is zeroed and never reused.
            Some(bytes) => BOOTSTRAP.alloc(bytes, 16),
            None => core::ptr::null_mut(),
        },
    }
}

/// # Safety
/// Called as C's calloc.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(count: size_t, size: size_t) -> *mut c_void {
    naked_asm!("mov rdx, rsp", "mov rcx, rbp", "jmp {hook}", hook = sym calloc_hook)
}

extern "C" fn calloc_hook(count: size_t, size: size_t, sp: usize, bp: usize) -> *mut c_void {
    hooked(
        || forward_calloc(count, size),
        |p| {
            allocation(
                EventKind::Calloc,
                p as u64,
                array_bytes(count, size),
                0,
                0,
                sp,
                bp,
            );
        },
    )
}

fn forward_realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    if BOOTSTRAP.owns(p) {
        // A block of the arena moves to the real heap; the arena's end bounds the copy.
        let moved = forward_malloc(size);
        if !moved.is_null() {
            let room = BOOTSTRAP.bytes_after(p);
            // SAFETY: both ranges are valid for min(size, room) bytes and do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(p.cast::<u8>(), moved.cast(), size.min(room)) };
        }
        return moved;
    }
    match real::realloc() {
        // SAFETY: the next definition of realloc, with the caller's arguments.
        Some(realloc) => unsafe { realloc(p, size) },
        None => core::ptr::null_mut(),
    }
}

/// # Safety
/// Called as C's realloc.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    naked_asm!("mov rdx, rsp", "mov rcx, rbp", "jmp {hook}", hook = sym realloc_hook)
}

extern "C" fn realloc_hook(p: *mut c_void, size: size_t, sp: usize, bp: usize) -> *mut c_void {
    hooked_realloc(
        EventKind::Realloc,
        p,
        || forward_realloc(p, size),
        |moved| {
            if !BOOTSTRAP.owns(p) {
                allocation(
                    EventKind::Realloc,
                    moved as u64,
                    size as u64,
                    p as u64,
                    0,
                    sp,
                    bp,
                );
            }
        },
    )
}

/// # Safety
/// Called as C's reallocarray.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, count: size_t, size: size_t) -> *mut c_void {
    naked_asm!("mov rcx, rsp", "mov r8, rbp", "jmp {hook}", hook = sym reallocarray_hook)
}

extern "C" fn reallocarray_hook(
    p: *mut c_void,
    count: size_t,
    size: size_t,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    let forward = || match real::reallocarray() {
        // SAFETY: the next definition of reallocarray, with the caller's arguments.
        Some(reallocarray) => unsafe { reallocarray(p, count, size) },
        None => core::ptr::null_mut(),
    };
    hooked_realloc(EventKind::Reallocarray, p, forward, |moved| {
        allocation(
            EventKind::Reallocarray,
            moved as u64,
            array_bytes(count, size),
            p as u64,
            0,
            sp,
            bp,
        );
    })
}

/// # Safety
/// Called as C's posix_memalign.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    naked_asm!("mov rcx, rsp", "mov r8, rbp", "jmp {hook}", hook = sym posix_memalign_hook)
}

extern "C" fn posix_memalign_hook(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
    sp: usize,
    bp: usize,
) -> c_int {
    let forward = || match real::posix_memalign() {
        // SAFETY: the next definition of posix_memalign, with the caller's arguments.
        Some(posix_memalign) => unsafe { posix_memalign(out, align, size) },
        None => {
            let p = BOOTSTRAP.alloc(size, align);
            if p.is_null() {
                return libc::ENOMEM;
            }
            // SAFETY: the caller passes a writable pointer.
            unsafe { *out = p };
            0
        }
    };
    hooked(forward, |result| {
        // SAFETY: on success the function stored the block at `out`.
        let addr = if result == 0 {
            unsafe { *out as u64 }
        } else {
            0
        };
        allocation(
            EventKind::PosixMemalign,
            addr,
            size as u64,
            0,
            align as u64,
            sp,
            bp,
        );
    })
}

macro_rules! aligned_hook {
    ($export:ident, $hook:ident, $real:ident, $kind:expr) => {
        /// # Safety
        /// Called as the C function of this name.
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $export(align: size_t, size: size_t) -> *mut c_void {
            naked_asm!("mov rdx, rsp", "mov rcx, rbp", "jmp {hook}", hook = sym $hook)
        }

        extern "C" fn $hook(align: size_t, size: size_t, sp: usize, bp: usize) -> *mut c_void {
            let forward = || match real::$real() {
                // SAFETY: the next definition, with the caller's arguments.
                Some(function) => unsafe { function(align, size) },
                None => BOOTSTRAP.alloc(size, align),
            };
            hooked(forward, |p| allocation($kind, p as u64, size as u64, 0, align as u64, sp, bp))
        }
    };
}

aligned_hook!(
    aligned_alloc,
    aligned_alloc_hook,
    aligned_alloc,
    EventKind::AlignedAlloc
);
aligned_hook!(memalign, memalign_hook, memalign, EventKind::Memalign);

macro_rules! page_hook {
    ($export:ident, $hook:ident, $real:ident, $kind:expr) => {
        /// # Safety
        /// Called as the C function of this name.
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $export(size: size_t) -> *mut c_void {
            naked_asm!("mov rsi, rsp", "mov rdx, rbp", "jmp {hook}", hook = sym $hook)
        }

        extern "C" fn $hook(size: size_t, sp: usize, bp: usize) -> *mut c_void {
            let forward = || match real::$real() {
                // SAFETY: the next definition, with the caller's argument.
                Some(function) => unsafe { function(size) },
                None => BOOTSTRAP.alloc(size, 4096),
            };
            hooked(forward, |p| allocation($kind, p as u64, size as u64, 0, 0, sp, bp))
        }
    };
}

page_hook!(valloc, valloc_hook, valloc, EventKind::Valloc);
page_hook!(pvalloc, pvalloc_hook, pvalloc, EventKind::Pvalloc);

/// # Safety
/// Called as C's free.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    naked_asm!("mov rsi, rsp", "jmp {hook}", hook = sym free_hook)
}

extern "C" fn free_hook(p: *mut c_void, sp: usize) {
    if p.is_null() || BOOTSTRAP.owns(p) {
        return;
    }
    // Held through the real free: what it calls is part of this call.
    let entered = Entered::try_enter();
    if entered.is_some() {
        release(EventKind::Free, p as u64, 0, sp);
    }
    if let Some(free) = real::free() {
        // SAFETY: the next definition of free, with the caller's pointer.
        unsafe { free(p) }
    }
    drop(entered);
}

// --- mappings ----------------------------------------------------------------------------

/// # Safety
/// Called as C's mmap.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    // Six arguments fill the registers: the entry rsp and rbp go on the stack as a seventh
    // and an eighth, with the stack kept 16-byte aligned at the call.
    naked_asm!(
        "mov rax, rsp",
        "sub rsp, 8",
        "push rbp",
        "push rax",
        "call {hook}",
        "add rsp, 24",
        "ret",
        hook = sym mmap_hook
    )
}

extern "C" fn mmap_hook(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    let forward = || match real::mmap() {
        // SAFETY: the next definition of mmap, with the caller's arguments.
        Some(mmap) => unsafe { mmap(addr, len, prot, flags, fd, offset) },
        None => libc::MAP_FAILED,
    };
    hooked(forward, |mapped| {
        allocation(
            EventKind::Mmap,
            mapped as u64,
            len as u64,
            0,
            flags as u64,
            sp,
            bp,
        );
    })
}

/// # Safety
/// Called as C's munmap.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    naked_asm!("mov rdx, rsp", "jmp {hook}", hook = sym munmap_hook)
}

extern "C" fn munmap_hook(addr: *mut c_void, len: size_t, sp: usize) -> c_int {
    let entered = Entered::try_enter();
    if entered.is_some() && !addr.is_null() {
        release(EventKind::Munmap, addr as u64, len as u64, sp);
    }
    let result = match real::munmap() {
        // SAFETY: the next definition of munmap, with the caller's arguments.
        Some(munmap) => unsafe { munmap(addr, len) },
        None => -1,
    };
    drop(entered);
    result
}

/// # Safety
/// Called as C's mremap (whose fifth argument is read only with MREMAP_FIXED).
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_size: size_t,
    new_size: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    // Five arguments: rsp as the sixth, rbp on the stack as the seventh (aligned at the call).
    naked_asm!(
        "mov r9, rsp",
        "push rbp",
        "call {hook}",
        "add rsp, 8",
        "ret",
        hook = sym mremap_hook
    )
}

extern "C" fn mremap_hook(
    old: *mut c_void,
    old_size: size_t,
    new_size: size_t,
    flags: c_int,
    new_addr: *mut c_void,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    let forward = || match real::mremap() {
        // SAFETY: the next definition of mremap, with the caller's arguments.
        Some(mremap) => unsafe { mremap(old, old_size, new_size, flags, new_addr) },
        None => libc::MAP_FAILED,
    };
    hooked(forward, |moved| {
        allocation(
            EventKind::Mremap,
            moved as u64,
            new_size as u64,
            old as u64,
            old_size as u64,
            sp,
            bp,
        );
    })
}

// --- libraries ---------------------------------------------------------------------------

/// # Safety
/// Called as C's dlclose.
///
/// A library's calls are symbolized from its mapping, which dlclose may remove: the calls
/// recorded so far are read by memprof first.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    if let Some(ring) = ring::ring() {
        ring.wait_until_read();
    }
    let closed = match real::dlclose() {
        // SAFETY: the next definition of dlclose, with the caller's handle.
        Some(dlclose) => unsafe { dlclose(handle) },
        None => -1,
    };
    // The unwinder's copy of an unloaded library's tables must not stand for whatever is
    // mapped at its addresses next.
    unwind::forget_modules();
    closed
}
