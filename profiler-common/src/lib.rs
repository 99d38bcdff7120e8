//! The interface between memprof's eBPF programs and its userspace collector.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and padded explicitly so that the layout the BPF
//! program writes is the layout userspace reads. The sizes are asserted at compile time.
#![no_std]

/// What the target called. The discriminants are part of the ring-buffer format.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Malloc = 1,
    Calloc = 2,
    Realloc = 3,
    Reallocarray = 4,
    PosixMemalign = 5,
    AlignedAlloc = 6,
    Memalign = 7,
    Valloc = 8,
    Pvalloc = 9,
    Free = 10,
    Mmap = 11,
    Munmap = 12,
    Mremap = 13,
}

impl EventKind {
    /// Every kind, in discriminant order.
    pub const ALL: [EventKind; 13] = [
        EventKind::Malloc,
        EventKind::Calloc,
        EventKind::Realloc,
        EventKind::Reallocarray,
        EventKind::PosixMemalign,
        EventKind::AlignedAlloc,
        EventKind::Memalign,
        EventKind::Valloc,
        EventKind::Pvalloc,
        EventKind::Free,
        EventKind::Mmap,
        EventKind::Munmap,
        EventKind::Mremap,
    ];

    pub const fn from_u32(value: u32) -> Option<EventKind> {
        if value >= 1 && value as usize <= Self::ALL.len() {
            Some(Self::ALL[value as usize - 1])
        } else {
            None
        }
    }

    /// The C symbol this kind is probed at.
    pub const fn symbol(self) -> &'static str {
        match self {
            EventKind::Malloc => "malloc",
            EventKind::Calloc => "calloc",
            EventKind::Realloc => "realloc",
            EventKind::Reallocarray => "reallocarray",
            EventKind::PosixMemalign => "posix_memalign",
            EventKind::AlignedAlloc => "aligned_alloc",
            EventKind::Memalign => "memalign",
            EventKind::Valloc => "valloc",
            EventKind::Pvalloc => "pvalloc",
            EventKind::Free => "free",
            EventKind::Mmap => "mmap",
            EventKind::Munmap => "munmap",
            EventKind::Mremap => "mremap",
        }
    }

    /// Allocation functions of the malloc family (counted in `summary.allocations`).
    pub const fn is_malloc_family(self) -> bool {
        !matches!(
            self,
            EventKind::Free | EventKind::Mmap | EventKind::Munmap | EventKind::Mremap
        )
    }

    /// Kinds whose result is only known when the function returns, so they need a uretprobe.
    pub const fn needs_return_probe(self) -> bool {
        !matches!(self, EventKind::Free | EventKind::Munmap)
    }
}

/// Number of slots in per-kind counter arrays (index = discriminant; slot 0 is unused).
pub const KIND_SLOTS: u32 = EventKind::ALL.len() as u32 + 1;

/// Deepest user stack the probes copy, in frames.
pub const MAX_STACK_DEPTH: usize = 127;

/// `EventHeader::flags`: the stack was deeper than the depth limit and was cut.
pub const FLAG_STACK_TRUNCATED: u32 = 1 << 0;
/// `EventHeader::flags`: the kernel could not read the user stack at all.
pub const FLAG_STACK_MISSING: u32 = 1 << 1;

/// One ring-buffer record: this header, then `stack_depth` return addresses (u64, innermost first).
///
/// Field meaning per kind:
/// - allocations: `addr` = returned pointer (0 = the call failed), `size` = bytes requested
///   (`nmemb * size` for calloc/reallocarray), `old_addr` = realloc's input pointer,
///   `aux` = requested alignment (posix_memalign, aligned_alloc, memalign).
/// - free: `addr` = the pointer freed (never 0: free(NULL) is filtered in the kernel).
/// - mmap: `addr` = mapping (or MAP_FAILED), `size` = length, `aux` = flags.
/// - munmap: `addr`, `size` = length.
/// - mremap: `old_addr`, `aux` = old size, `size` = new size, `addr` = result.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) at the call's return, or its entry for
    /// functions probed only at entry.
    pub ts_ns: u64,
    pub addr: u64,
    pub size: u64,
    pub old_addr: u64,
    pub aux: u64,
    pub stack_depth: u32,
    pub flags: u32,
}

pub const EVENT_HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();
const _: () = assert!(EVENT_HEADER_SIZE == 56);

/// A whole record as the BPF program assembles it before copying the used part to the ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventRecord {
    pub header: EventHeader,
    pub stack: [u64; MAX_STACK_DEPTH],
}

/// Indices into the `COUNTERS` per-CPU array (beyond the per-kind lost-event slots).
pub mod counter {
    /// Records dropped because the ring buffer was full, at index `kind` (1..=13).
    pub const LOST_BASE: u32 = 0;
    /// In-flight call table full: a call whose entry could not be remembered.
    pub const INFLIGHT_FULL: u32 = super::KIND_SLOTS;
    /// Allocations whose user stack could not be read.
    pub const STACK_ERRORS: u32 = super::KIND_SLOTS + 1;
    pub const COUNT: u32 = super::KIND_SLOTS + 2;
}

/// Load-time configuration, written into the BPF object's `.rodata` before loading.
pub mod config {
    /// Name of the global holding the target's tgid.
    pub const TARGET_TGID: &str = "TARGET_TGID";
    /// Name of the global holding the fill level (bytes queued) above which a record wakes the
    /// collector instead of waiting for its timer.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// Name of the global holding the number of frames to copy (1..=MAX_STACK_DEPTH, 0 = none).
    pub const STACK_DEPTH: &str = "STACK_DEPTH";
}

/// Name of the ring buffer map.
pub const RING_MAP: &str = "EVENTS";
/// Name of the per-CPU counters map.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Default ring buffer size in bytes (a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 64 << 20;
