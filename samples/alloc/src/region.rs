//! The slab region: one large reservation of address space, cut into aligned slabs of
//! [`SLAB`] bytes on demand. Because every slab lives in it, "is this pointer a slab block?" is
//! one comparison, and its slab header is found by masking the address.
//!
//! Slabs whose blocks are all free can be released ([`release_slab`]): their pages go back to
//! the kernel and the slab is reused, for any class, before the region grows.
//!
//! The reservation's last quarter (at most [`MEDIUM_MAX_LEN`]) is not cut into slabs: it holds
//! the page runs of the medium path ([`crate::medium`]).
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{lock::SpinLock, os, slab::Slab};

pub const SLAB: usize = 256 * 1024;
/// Reservations tried, largest first (an RLIMIT_AS may refuse the big ones).
const RESERVATIONS: [usize; 5] = [256 << 30, 64 << 30, 16 << 30, 4 << 30, 1 << 30];
/// Reserved memory is made read-write this much at a time, to save mprotect calls.
const COMMIT_STEP: usize = 16 * SLAB;
/// The medium path's part of the reservation at most.
const MEDIUM_MAX_LEN: usize = 16 << 30;

static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
/// Offset of the next unused slab; slabs below it are committed and initialised.
static NEXT: AtomicUsize = AtomicUsize::new(0);
static COMMITTED: AtomicUsize = AtomicUsize::new(0);
/// The medium path's part: its start and length (0 without a reservation).
static MEDIUM_START: AtomicUsize = AtomicUsize::new(0);
static MEDIUM_LEN: AtomicUsize = AtomicUsize::new(0);
/// Released slabs, linked through their headers' `scratch`; 0 ends the list.
static RELEASED: AtomicUsize = AtomicUsize::new(0);
/// Slabs released so far, for tests and statistics.
static RELEASES: AtomicUsize = AtomicUsize::new(0);
pub static LOCK: SpinLock = SpinLock::new();

/// Reserves the region; false when no reservation could be made (everything then goes to the
/// page path).
pub fn init() -> bool {
    for len in RESERVATIONS {
        let p = os::reserve(len + SLAB);
        if p.is_null() {
            continue;
        }
        // Align the base to a slab; the slack at both ends stays reserved and unused.
        let base = (p as usize + SLAB - 1) & !(SLAB - 1);
        let medium = (len / 4).min(MEDIUM_MAX_LEN);
        BASE.store(base, Ordering::Relaxed);
        MEDIUM_START.store(base + len - medium, Ordering::Relaxed);
        MEDIUM_LEN.store(medium, Ordering::Relaxed);
        LEN.store(len - medium, Ordering::Release);
        return true;
    }
    false
}

/// The medium path's part of the reservation, reserved and not yet committed: its start and
/// length (0 when there is no reservation).
pub fn medium_area() -> (usize, usize) {
    (
        MEDIUM_START.load(Ordering::Relaxed),
        MEDIUM_LEN.load(Ordering::Relaxed),
    )
}

/// Whether `p` points into a slab handed out so far.
#[inline]
pub fn contains(p: *const u8) -> bool {
    (p as usize).wrapping_sub(BASE.load(Ordering::Relaxed)) < NEXT.load(Ordering::Acquire)
}

/// The start of the slab holding `p` (which must satisfy [`contains`]).
#[inline]
pub fn slab_of(p: *const u8) -> usize {
    let base = BASE.load(Ordering::Relaxed);
    base + (((p as usize) - base) & !(SLAB - 1))
}

/// A zeroed, committed slab (a released one first); null when the region is exhausted.
/// `init` runs on it before any other thread can see it.
pub fn new_slab(init: impl FnOnce(*mut u8)) -> *mut u8 {
    LOCK.with(|| {
        let released = RELEASED.load(Ordering::Relaxed);
        if released != 0 {
            let slab = released as *mut Slab;
            // SAFETY: a released slab: committed, zero but for its header, ours alone.
            unsafe {
                RELEASED.store((*slab).scratch, Ordering::Relaxed);
                (*slab).scratch = 0;
            }
            init(slab.cast());
            return slab.cast();
        }
        let base = BASE.load(Ordering::Relaxed);
        let len = LEN.load(Ordering::Relaxed);
        let next = NEXT.load(Ordering::Relaxed);
        if base == 0 || next + SLAB > len {
            return core::ptr::null_mut();
        }
        let committed = COMMITTED.load(Ordering::Relaxed);
        if next + SLAB > committed {
            let step = COMMIT_STEP.min(len - committed);
            // SAFETY: [committed, committed + step) is inside our reservation.
            if !unsafe { os::commit((base + committed) as *mut u8, step) } {
                return core::ptr::null_mut();
            }
            COMMITTED.store(committed + step, Ordering::Relaxed);
        }
        let slab = (base + next) as *mut u8;
        init(slab);
        NEXT.store(next + SLAB, Ordering::Release);
        slab
    })
}

/// Gives a slab's pages back to the kernel and keeps the slab for reuse. Its header reads as
/// no blocks, so a stray free into it is an invalid free.
///
/// # Safety
/// Every block of the slab must be free and referenced by no list any more.
pub unsafe fn release_slab(slab: *mut Slab) {
    // SAFETY: the caller guarantees nothing in the slab is in use.
    unsafe { os::decommit(slab.cast(), SLAB) };
    LOCK.with(|| {
        // SAFETY: the slab is zero now and ours; only its link is written.
        unsafe { (*slab).scratch = RELEASED.load(Ordering::Relaxed) };
        RELEASED.store(slab as usize, Ordering::Relaxed);
    });
    RELEASES.fetch_add(1, Ordering::Relaxed);
}

/// How many slabs have been released so far.
pub fn releases() -> usize {
    RELEASES.load(Ordering::Relaxed)
}
