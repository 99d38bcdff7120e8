//! The interface between memprof's eBPF programs and its userspace collector.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and padded explicitly so that the layout the BPF
//! program writes is the layout userspace reads. The sizes are asserted at compile time.
#![no_std]

// Userspace only: the eBPF target has no atomics of these widths, and its programs never
// touch the in-process path's ring.
#[cfg(not(target_arch = "bpf"))]
pub mod shared_ring;
pub mod size_classes;

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
    /// C++ `operator new`/`new[]` (all variants) served by an allocator's own code, probed
    /// only where it does not go through a probed `malloc`.
    OperatorNew = 14,
    /// C++ `operator delete`/`delete[]` (all variants), likewise; behaves as `free`.
    /// Kinds above 14 take one more byte per event in a recording (format 2's escape), so
    /// any number of kinds can be added.
    OperatorDelete = 15,
}

impl EventKind {
    /// Every kind, in discriminant order.
    pub const ALL: [EventKind; 15] = [
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
        EventKind::OperatorNew,
        EventKind::OperatorDelete,
    ];

    pub const fn from_u32(value: u32) -> Option<EventKind> {
        if value >= 1 && value as usize <= Self::ALL.len() {
            Some(Self::ALL[value as usize - 1])
        } else {
            None
        }
    }

    /// The C symbol this kind is probed at (for the C++ operators, probed at several mangled
    /// symbols, their C++ name): the kind's name in reports.
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
            EventKind::OperatorNew => "operator new",
            EventKind::OperatorDelete => "operator delete",
        }
    }

    /// Allocation functions of the malloc family (counted in `summary.allocations`).
    pub const fn is_malloc_family(self) -> bool {
        !matches!(
            self,
            EventKind::Free
                | EventKind::OperatorDelete
                | EventKind::Mmap
                | EventKind::Munmap
                | EventKind::Mremap
        )
    }

    /// Functions that release a block: `free` and C++ `operator delete`.
    pub const fn is_free(self) -> bool {
        matches!(self, EventKind::Free | EventKind::OperatorDelete)
    }

    /// Kinds whose result is only known when the function returns, so they need a uretprobe.
    pub const fn needs_return_probe(self) -> bool {
        !matches!(
            self,
            EventKind::Free | EventKind::OperatorDelete | EventKind::Munmap
        )
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
/// `EventHeader::flags`: the record carries a [`StackSnapshot`] (registers and raw stack bytes,
/// unwound in userspace) instead of `stack_depth` return addresses; `stack_depth` is then 0.
pub const FLAG_STACK_SNAPSHOT: u32 = 1 << 2;
/// `EventHeader::flags`, set by the collector (never by the probes) and kept in recordings:
/// the call came from the allocator's own code (a free or munmap whose caller lies in the
/// module providing malloc/free, or an mmap made inside `free`): the allocator managing its
/// caches, arenas and stacks, not the program.
pub const FLAG_ALLOCATOR_INTERNAL: u32 = 1 << 3;
/// `EventHeader::flags`, set by the collector (never by a capture path) and kept in
/// recordings: a synthetic free or munmap of a block or mapping that was live when the target
/// exec'd another program: the exec released it, the program did not.
pub const FLAG_RELEASED_BY_EXEC: u32 = 1 << 4;
/// `EventHeader::flags` of a `Realloc` or `Reallocarray` record written at the call's entry
/// (the in-process capture, before forwarding), `old_addr` the block the call may release.
/// Not a call of its own and no change to the heap: it tells the collector that, until this
/// thread's record of the same call arrives, another thread handed that address has it
/// because the realloc released it, not because its free was lost.
pub const FLAG_REALLOC_ENTRY: u32 = 1 << 5;
/// `EventHeader::flags`, set by the collector (never by a capture path) and kept in
/// recordings: a synthetic allocation of a block or mapping that was live in the parent when
/// this process was forked: the child starts with it (and may free it), but never made the call.
pub const FLAG_INHERITED_AT_FORK: u32 = 1 << 6;
/// `EventHeader::flags` of a record from the in-process capture, which numbers the stacks it
/// has sent (0, 1, ... per process image): the body starts with the stack's number (a u64).
/// With `stack_depth` frames after it, this record defines that number (number 0 starts a new
/// numbering: a new image, or a forked child); with `stack_depth` 0, the record's stack is
/// the one that number was defined as. The collector drops the bit as it decodes: it never
/// reaches a recording.
pub const FLAG_STACK_NUMBERED: u32 = 1 << 7;

/// How the probes capture user stacks, selected at load time (`UNWIND_MODE`).
pub mod unwind_mode {
    /// Frame-pointer walk in the kernel (`bpf_get_stack`): cheap, wrong without frame pointers.
    pub const FRAME_POINTERS: u32 = 0;
    /// Registers plus a copy of the stack, unwound with `.eh_frame` by the collector.
    pub const DWARF: u32 = 1;
}

/// Largest user-stack copy per record, in bytes (`--stack-bytes` is at most this). The per-CPU
/// scratch record must stay below the kernel's 32 KiB per-CPU value limit.
pub const MAX_STACK_BYTES: usize = 16384;
/// Default stack copy, as `perf record --call-graph dwarf`.
pub const DEFAULT_STACK_BYTES: u32 = 8192;

/// `StackSnapshot::flags`: the copy stopped at the byte limit (the stack goes on above it), as
/// opposed to stopping at the first unreadable page (the top of the stack).
pub const SNAPSHOT_CUT: u32 = 1 << 0;

/// Follows the [`EventHeader`] of a record with [`FLAG_STACK_SNAPSHOT`]; `stack_bytes` bytes of
/// user stack, copied from `sp` upward, follow it. Record: header (56) + snapshot (32) + bytes.
///
/// The registers are those at the probed function's return: `ip` is the return address into
/// the caller (frame 0), `sp` the caller's stack pointer after the return, `bp` its `%rbp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackSnapshot {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of stack that follow (at most [`MAX_STACK_BYTES`]).
    pub stack_bytes: u32,
    /// `SNAPSHOT_*` bits.
    pub flags: u32,
}

pub const STACK_SNAPSHOT_SIZE: usize = core::mem::size_of::<StackSnapshot>();
const _: () = assert!(STACK_SNAPSHOT_SIZE == 32);

/// One ring-buffer record: this header, then either `stack_depth` return addresses (u64,
/// innermost first), or, with [`FLAG_STACK_SNAPSHOT`], a [`StackSnapshot`] and its stack bytes.
///
/// Field meaning per kind:
/// - allocations: `addr` = returned pointer (0 = the call failed), `size` = bytes requested
///   (`nmemb * size` for calloc/reallocarray), `old_addr` = realloc's input pointer,
///   `aux` = requested alignment (posix_memalign, aligned_alloc, memalign, the aligned forms of
///   operator new; 0 otherwise).
/// - free and operator delete: `addr` = the pointer freed (never 0: free(NULL) is filtered in the kernel),
///   `aux` = the caller's return address (the word at `%rsp` on entry: the probe sits before
///   anything moves `%rsp`), to tell the allocator freeing its own caches from the program.
/// - mmap: `addr` = mapping (or MAP_FAILED), `size` = length, `aux` = flags.
/// - munmap: `addr`, `size` = length, `aux` = the caller's return address, as for free.
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

/// Slack after the largest payload of an [`EventRecord`]: the stack copy writes up to one page
/// at a variable offset, and the verifier must see every such write inside the buffer.
pub const RECORD_SLACK_BYTES: usize = 4096;

/// Words in the body of an [`EventRecord`]: room for `MAX_STACK_DEPTH + 1` frames (the probe
/// asks for one more to tell a cut stack from a complete one) or a snapshot and its bytes.
pub const RECORD_BODY_WORDS: usize =
    (STACK_SNAPSHOT_SIZE + MAX_STACK_BYTES + RECORD_SLACK_BYTES) / 8;
const _: () = assert!(RECORD_BODY_WORDS > MAX_STACK_DEPTH);

/// A whole record as the BPF program assembles it (per CPU) before copying the used part to
/// the ring: the header, then the frames, or a [`StackSnapshot`] and the stack bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventRecord {
    pub header: EventHeader,
    pub body: [u64; RECORD_BODY_WORDS],
}
// Per-CPU map values are limited to 32 KiB.
const _: () = assert!(core::mem::size_of::<EventRecord>() <= 32768);

/// Indices into the `COUNTERS` per-CPU array (beyond the per-kind lost-event slots).
pub mod counter {
    /// Records dropped because the ring buffer was full, at index `kind` (1..=15).
    pub const LOST_BASE: u32 = 0;
    /// In-flight call table full: a call whose entry could not be remembered.
    pub const INFLIGHT_FULL: u32 = super::KIND_SLOTS;
    /// Allocations whose user stack could not be read.
    pub const STACK_ERRORS: u32 = super::KIND_SLOTS + 1;
    /// Times a probe asked the tracer to hold its thread ([`super::HOLD_SIGNAL`]).
    pub const HOLDS: u32 = super::KIND_SLOTS + 2;
    pub const COUNT: u32 = super::KIND_SLOTS + 3;
}

/// Load-time configuration, written into the BPF object's `.rodata` before loading.
pub mod config {
    /// Name of the global holding the target's tgid.
    pub const TARGET_TGID: &str = "TARGET_TGID";
    /// Name of the global holding the fill level (bytes queued) above which a record wakes the
    /// collector instead of waiting for its timer.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// Name of the global holding the fill level (bytes queued) from which a probe sends its
    /// thread [`super::HOLD_SIGNAL`] for the tracer to hold it (0: never, as in attach mode).
    pub const HOLD_BYTES: &str = "HOLD_BYTES";
    /// Name of the global holding the number of frames to copy (1..=MAX_STACK_DEPTH, 0 = none).
    pub const STACK_DEPTH: &str = "STACK_DEPTH";
    /// Name of the global selecting how stacks are captured (`unwind_mode::*`).
    pub const UNWIND_MODE: &str = "UNWIND_MODE";
    /// Name of the global holding the bytes of user stack to copy in DWARF mode (a multiple of
    /// 8, at most `MAX_STACK_BYTES`).
    pub const STACK_BYTES: &str = "STACK_BYTES";
    /// Name of the global holding the byte offset of `task_struct.mm` on the running kernel
    /// (from its BTF; 0 with [`MM_START_STACK_OFFSET`] 0: unknown).
    pub const TASK_MM_OFFSET: &str = "TASK_MM_OFFSET";
    /// Name of the global holding the byte offset of `mm_struct.start_stack`: the address of
    /// `argc` on the main thread's stack, set by each exec (`/proc/PID/stat`'s `startstack`;
    /// 0: unknown). Nothing a frame needs lies above it, so a DWARF-mode copy that starts
    /// below it stops there.
    pub const MM_START_STACK_OFFSET: &str = "MM_START_STACK_OFFSET";
    /// Name of the global holding the byte offset of `task_struct.blocked` on the running
    /// kernel (from its BTF; 0: unknown): a thread blocking [`super::HOLD_SIGNAL`] is held
    /// with [`super::HOLD_SIGNAL_BLOCKED`] instead.
    pub const TASK_BLOCKED_OFFSET: &str = "TASK_BLOCKED_OFFSET";
    /// Name of the global saying whether free and operator delete report their caller (1) or
    /// not (0): only `run` needs it, for the second free of a double free and to tell the
    /// allocator's own frees of blocks no longer live from the program's (in `attach` both
    /// are unknown frees anyway). munmap reports its caller always.
    pub const FREE_CALLERS: &str = "FREE_CALLERS";
    /// Name of the global holding the number of slots of [`super::CALLS_BY_TID_MAP`]: a thread
    /// whose id is below it keeps its call in flight in the slot of that index.
    pub const TID_SLOTS: &str = "TID_SLOTS";
}

/// The signal a probe sends its own thread when the ring is filling faster than the collector
/// drains it. In `run`, memprof traces every thread of the target and holds the signalled
/// thread, the signal suppressed, until the ring is drained: backpressure instead of lost
/// events. SIGCHLD: ignored by default, so a thread that gets it with no tracer to take it
/// (memprof died) is not harmed, and the kernel's own SIGCHLDs carry `CLD_*` codes, never the
/// `SI_KERNEL` code of `bpf_send_signal_thread`, so the tracer tells ours apart.
pub const HOLD_SIGNAL: u32 = 17;

/// The hold signal for a thread that blocks [`HOLD_SIGNAL`] (a program reading SIGCHLD through
/// a signalfd blocks it): SIGSTOP, which no thread can block or catch. The tracer takes it
/// the same way (the `SI_KERNEL` code tells it from a user's SIGSTOP) and suppresses it. Only
/// such threads get it: were memprof to die with one pending, the process would stop (until a
/// SIGCONT) rather than shrug it off.
pub const HOLD_SIGNAL_BLOCKED: u32 = 19;

/// Name of the ring buffer map.
pub const RING_MAP: &str = "EVENTS";
/// Name of the array of calls in flight by thread id (sized at load time: see
/// [`config::TID_SLOTS`]).
pub const CALLS_BY_TID_MAP: &str = "CALLS_BY_TID";
/// The most slots [`CALLS_BY_TID_MAP`] gets (48 bytes each): the thread ids below
/// `/proc/sys/kernel/pid_max` up to this; a thread with a larger id keeps its call in a hash
/// map instead.
pub const MAX_TID_SLOTS: u32 = 1 << 17;
/// Name of the array of thread stack tops by thread id (as many slots as
/// [`CALLS_BY_TID_MAP`]), which memprof fills from its walks: each value is three words,
/// [`StackTop`].
pub const STACK_TOPS_MAP: &str = "STACK_TOPS";

/// Where a thread's stack ends, learned by memprof from a walk of it that reached its root:
/// `top` is just above the highest word the walk read, and `canary` that word's value. A probe
/// copies a snapshot of this thread only up to `top` while the word below `top` still holds
/// `canary` (the thread's root frames are where they were), else `--stack-bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct StackTop {
    /// The thread's pid_tgid (a slot left by a thread of another process is not taken).
    pub id: u64,
    pub top: u64,
    pub canary: u64,
}

impl StackTop {
    /// As the map holds it.
    pub fn to_words(self) -> [u64; 3] {
        [self.id, self.top, self.canary]
    }
}

/// Name of the control array: slot 0 set to 1 stops every probe from starting a call.
pub const CONTROL_MAP: &str = "CONTROL";
/// Name of the map of the other processes of a followed tree (`run`), by tgid.
pub const FOLLOWED_MAP: &str = "FOLLOWED";
/// Name of the per-CPU counters map.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Default ring buffer size in bytes (a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 64 << 20;
