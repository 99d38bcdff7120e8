//! The functions the hooks forward to: the next definitions after this library in ld.so's
//! lookup order, resolved once with `dlsym(RTLD_NEXT)`.
//!
//! `dlsym` may allocate (glibc's error buffer, TLS descriptors). While the first thread
//! resolves, its own calls of the allocation functions are served from [`Bootstrap`], a small
//! static bump arena whose blocks are never freed (frees of them are ignored).

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_void};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use libc::{c_int, off_t, size_t};

pub type Malloc = unsafe extern "C" fn(size_t) -> *mut c_void;
pub type Free = unsafe extern "C" fn(*mut c_void);
pub type Calloc = unsafe extern "C" fn(size_t, size_t) -> *mut c_void;
pub type Realloc = unsafe extern "C" fn(*mut c_void, size_t) -> *mut c_void;
pub type Reallocarray = unsafe extern "C" fn(*mut c_void, size_t, size_t) -> *mut c_void;
pub type PosixMemalign = unsafe extern "C" fn(*mut *mut c_void, size_t, size_t) -> c_int;
pub type AlignedAlloc = unsafe extern "C" fn(size_t, size_t) -> *mut c_void;
pub type Valloc = unsafe extern "C" fn(size_t) -> *mut c_void;
pub type Mmap =
    unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;
pub type Munmap = unsafe extern "C" fn(*mut c_void, size_t) -> c_int;
pub type Mremap =
    unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, *mut c_void) -> *mut c_void;
pub type Dlclose = unsafe extern "C" fn(*mut c_void) -> c_int;

/// One resolved function, as an address (0: not found).
struct Slot(AtomicUsize);

impl Slot {
    const fn new() -> Slot {
        Slot(AtomicUsize::new(0))
    }
}

static MALLOC: Slot = Slot::new();
static FREE: Slot = Slot::new();
static CALLOC: Slot = Slot::new();
static REALLOC: Slot = Slot::new();
static REALLOCARRAY: Slot = Slot::new();
static POSIX_MEMALIGN: Slot = Slot::new();
static ALIGNED_ALLOC: Slot = Slot::new();
static MEMALIGN: Slot = Slot::new();
static VALLOC: Slot = Slot::new();
static PVALLOC: Slot = Slot::new();
static MMAP: Slot = Slot::new();
static MUNMAP: Slot = Slot::new();
static MREMAP: Slot = Slot::new();
static DLCLOSE: Slot = Slot::new();

/// The allocation functions the hooks record, each with the slot of its next definition.
static FORWARDED: [(&Slot, &CStr); 13] = [
    (&MALLOC, c"malloc"),
    (&FREE, c"free"),
    (&CALLOC, c"calloc"),
    (&REALLOC, c"realloc"),
    (&REALLOCARRAY, c"reallocarray"),
    (&POSIX_MEMALIGN, c"posix_memalign"),
    (&ALIGNED_ALLOC, c"aligned_alloc"),
    (&MEMALIGN, c"memalign"),
    (&VALLOC, c"valloc"),
    (&PVALLOC, c"pvalloc"),
    (&MMAP, c"mmap"),
    (&MUNMAP, c"munmap"),
    (&MREMAP, c"mremap"),
];

/// Whether `symbol` is an allocation function this library exports and records: a call of it
/// through a PLT reaches its hook.
pub fn records(symbol: &[u8]) -> bool {
    FORWARDED.iter().any(|(_, name)| name.to_bytes() == symbol)
}

const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const RESOLVED: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);

/// Resolves every function on first use. Returns false while this thread is the one
/// resolving (its calls must use the bootstrap arena).
#[inline]
fn ensure_resolved() -> bool {
    match STATE.load(Ordering::Acquire) {
        RESOLVED => true,
        _ => resolve_slow(),
    }
}

#[cold]
fn resolve_slow() -> bool {
    match STATE.compare_exchange(UNRESOLVED, RESOLVING, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            RESOLVER.store(crate::thread::id_for_bootstrap(), Ordering::Relaxed);
            for (slot, name) in FORWARDED.iter().chain([&(&DLCLOSE, c"dlclose")]) {
                // SAFETY: RTLD_NEXT with a NUL-terminated name.
                let address = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
                slot.0.store(address as usize, Ordering::Release);
            }
            STATE.store(RESOLVED, Ordering::Release);
            true
        }
        Err(RESOLVED) => true,
        Err(_) => {
            if RESOLVER.load(Ordering::Relaxed) == crate::thread::id_for_bootstrap() {
                return false;
            }
            while STATE.load(Ordering::Acquire) != RESOLVED {
                core::hint::spin_loop();
            }
            true
        }
    }
}

/// The thread resolving (its stack address), to tell its reentrant calls from other threads'.
static RESOLVER: AtomicUsize = AtomicUsize::new(0);

macro_rules! getter {
    ($name:ident, $slot:ident, $ty:ty) => {
        /// The next definition, or None while this thread resolves (or if there is none).
        #[inline]
        pub fn $name() -> Option<$ty> {
            if !ensure_resolved() {
                return None;
            }
            let address = $slot.0.load(Ordering::Acquire);
            // SAFETY: a non-zero address is the function dlsym returned for this name, whose
            // C signature is the type's.
            (address != 0).then(|| unsafe { core::mem::transmute::<usize, $ty>(address) })
        }
    };
}

getter!(malloc, MALLOC, Malloc);
getter!(free, FREE, Free);
getter!(calloc, CALLOC, Calloc);
getter!(realloc, REALLOC, Realloc);
getter!(reallocarray, REALLOCARRAY, Reallocarray);
getter!(posix_memalign, POSIX_MEMALIGN, PosixMemalign);
getter!(aligned_alloc, ALIGNED_ALLOC, AlignedAlloc);
getter!(memalign, MEMALIGN, AlignedAlloc);
getter!(valloc, VALLOC, Valloc);
getter!(pvalloc, PVALLOC, Valloc);
getter!(mmap, MMAP, Mmap);
getter!(munmap, MUNMAP, Munmap);
getter!(mremap, MREMAP, Mremap);
getter!(dlclose, DLCLOSE, Dlclose);

/// The arena serving the resolving thread's allocations.
pub struct Bootstrap {
    bytes: UnsafeCell<[u8; BOOTSTRAP_BYTES]>,
    used: AtomicUsize,
}

const BOOTSTRAP_BYTES: usize = 64 * 1024;

// SAFETY: blocks are handed out by an atomic bump; each is used by one caller.
unsafe impl Sync for Bootstrap {}

pub static BOOTSTRAP: Bootstrap = Bootstrap {
    bytes: UnsafeCell::new([0; BOOTSTRAP_BYTES]),
    used: AtomicUsize::new(0),
};

impl Bootstrap {
    /// A zeroed block of `size` bytes aligned to `align` (a power of two), or null.
    pub fn alloc(&self, size: usize, align: usize) -> *mut c_void {
        let align = align.max(16);
        let base = self.bytes.get() as usize;
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let start = (base + used).next_multiple_of(align) - base;
            let Some(end) = start
                .checked_add(size)
                .filter(|&end| end <= BOOTSTRAP_BYTES)
            else {
                return core::ptr::null_mut();
            };
            match self
                .used
                .compare_exchange(used, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut c_void,
                Err(now) => used = now,
            }
        }
    }

    /// Bytes from `p` (a block of this arena) to the arena's end: a bound for copying it.
    pub fn bytes_after(&self, p: *mut c_void) -> usize {
        let base = self.bytes.get() as usize;
        (base + BOOTSTRAP_BYTES).saturating_sub(p as usize)
    }

    /// Whether `p` is a block of this arena (never given to the real free).
    pub fn owns(&self, p: *mut c_void) -> bool {
        let base = self.bytes.get() as usize;
        (base..base + BOOTSTRAP_BYTES).contains(&(p as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::records;

    #[test]
    fn only_the_recorded_allocation_functions_count_as_recorded() {
        for name in [
            "malloc", "free", "calloc", "realloc", "mmap", "munmap", "mremap",
        ] {
            assert!(records(name.as_bytes()), "{name}");
        }
        // dlclose is hooked but records no call; the others are not hooked.
        for name in ["dlclose", "sdallocx", "je_free", "_ZdlPv", ""] {
            assert!(!records(name.as_bytes()), "{name}");
        }
    }
}
