use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
        generated::{
            bpf_get_current_task, bpf_probe_read_user as probe_read_user_raw,
            bpf_send_signal_thread,
        },
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use profiler_common::{
    DEFAULT_RING_BYTES, EVENT_HEADER_SIZE, EventHeader, EventKind, EventRecord, FLAG_REALLOC_ENTRY,
    FLAG_STACK_MISSING, FLAG_STACK_SNAPSHOT, FLAG_STACK_TRUNCATED, HOLD_SIGNAL,
    HOLD_SIGNAL_BLOCKED, MAX_STACK_BYTES, MAX_STACK_DEPTH, SNAPSHOT_CUT, STACK_SNAPSHOT_SIZE,
    StackSnapshot, StackTop, counter, unwind_mode,
};

const PAGE: u64 = 4096;

// Load-time configuration (set by the collector through the object's .rodata).
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;
#[unsafe(no_mangle)]
static STACK_DEPTH: u32 = 0;
#[unsafe(no_mangle)]
static UNWIND_MODE: u32 = 0;
#[unsafe(no_mangle)]
static STACK_BYTES: u32 = 0;
#[unsafe(no_mangle)]
static HOLD_BYTES: u64 = 0;
#[unsafe(no_mangle)]
static TASK_BLOCKED_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_MM_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static MM_START_STACK_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TID_SLOTS: u32 = 0;
#[unsafe(no_mangle)]
static FREE_CALLERS: u32 = 0;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Slot 0 set by memprof at the end of an attach window (or of any session) before the probes
/// are detached: from then on no call is started, so the window ends at one instant for every
/// probe (a call already entered still has its return recorded).
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn stopped() -> bool {
    CONTROL.get(0).is_some_and(|value| *value != 0)
}

/// The other processes of a followed tree (`run`), by tgid: their threads are targets too.
/// The links of each are scoped to its pid, so this only confirms what the kernel filtered.
#[map]
static FOLLOWED: HashMap<u32, u32> = HashMap::with_max_entries(1 << 14, 0);

/// Calls entered but not yet returned, by thread id: a thread's slot is its own while it is
/// in a call (thread ids are unique among live threads; `id` tells a slot left by a thread of
/// another process). An array lookup is an address computation, where the hash map's insert,
/// lookup and delete, each under a bucket lock, were 9% of redis's time under `attach`.
#[map]
static CALLS_BY_TID: Array<InFlight> = Array::with_max_entries(1, 0);

/// Where each thread's stack ends, by thread id (see [`thread_stack_room`]); sized like
/// [`CALLS_BY_TID`] at load time, filled by memprof.
#[map]
static STACK_TOPS: Array<StackTop> = Array::with_max_entries(1, 0);

/// Calls in flight of threads whose id has no slot in [`CALLS_BY_TID`], by pid_tgid.
#[map]
static INFLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(1 << 16, 0);

/// One record under construction per CPU (uprobe programs run with preemption disabled).
#[map]
static SCRATCH: PerCpuArray<EventRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[derive(Clone, Copy)]
#[repr(C)]
struct InFlight {
    /// The thread's pid_tgid.
    id: u64,
    /// Probed calls this thread is inside; only the outermost is reported (0: none).
    depth: u32,
    kind: u32,
    size: u64,
    old_addr: u64,
    aux: u64,
    /// posix_memalign's `void **memptr`, read at return.
    out_ptr: u64,
}

#[inline(always)]
fn target_thread() -> Option<u64> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: a plain read of a global the loader sets; volatile keeps it from being folded.
    let tgid = unsafe { read_volatile(&TARGET_TGID) };
    let current = (id >> 32) as u32;
    // SAFETY: the value is only tested for presence, never read.
    (current == tgid || unsafe { FOLLOWED.get(&current) }.is_some()).then_some(id)
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Where a thread keeps its call in flight: its slot in [`CALLS_BY_TID`], or (an id past the
/// slots) the [`INFLIGHT`] hash map. Looked up once per probe hit.
#[derive(Clone, Copy)]
enum CallStore {
    Slot(*mut InFlight),
    Hashed,
}

impl CallStore {
    #[inline(always)]
    fn of(id: u64) -> CallStore {
        let tid = id as u32;
        // SAFETY: a volatile read of a loader-set global.
        if tid < unsafe { read_volatile(&TID_SLOTS) }
            && let Some(slot) = CALLS_BY_TID.get_ptr_mut(tid)
        {
            return CallStore::Slot(slot);
        }
        CallStore::Hashed
    }

    /// The call the thread `id` is inside, if any.
    #[inline(always)]
    fn in_flight(self, id: u64) -> Option<*mut InFlight> {
        match self {
            // SAFETY: the slot is this thread's (its id) or unused; only this thread writes it
            // while it holds its id.
            CallStore::Slot(slot) => unsafe {
                ((*slot).id == id && (*slot).depth > 0).then_some(slot)
            },
            CallStore::Hashed => INFLIGHT.get_ptr_mut(id),
        }
    }

    /// Starts the thread's outermost call.
    #[inline(always)]
    fn start(self, id: u64, call: InFlight) {
        match self {
            // SAFETY: the thread's own slot, not in use (its caller checked).
            CallStore::Slot(slot) => unsafe { store_in_flight(slot, call) },
            CallStore::Hashed => {
                // A copy made here: the map takes a reference, and a struct whose address is
                // taken is built in memory (with the memset) wherever it is made.
                let hashed = core::hint::black_box(call);
                if INFLIGHT.insert(id, hashed, 0).is_err() {
                    bump(counter::INFLIGHT_FULL);
                }
            }
        }
    }

    /// The thread's outermost call returned.
    #[inline(always)]
    fn end(self, id: u64) {
        match self {
            // SAFETY: the thread's own slot.
            CallStore::Slot(slot) => unsafe { (*slot).depth = 0 },
            CallStore::Hashed => {
                let _ = INFLIGHT.remove(id);
            }
        }
    }
}

// A struct with zero fields stored whole compiles to a call of a byte-at-a-time `memset`
// (the BPF backend expands none): 24 to 40 one-byte stores on every malloc and free (0.6% of
// redis's time under `attach`). Stored field by field, with volatile writes LLVM cannot merge
// back into one, each is one instruction.

/// Stores `call` into a slot of [`CALLS_BY_TID`] field by field (see above).
///
/// # Safety
/// `slot` points to a slot of the map.
#[inline(always)]
unsafe fn store_in_flight(slot: *mut InFlight, call: InFlight) {
    // SAFETY: fields of a valid slot (the caller's promise).
    unsafe {
        write_volatile(&raw mut (*slot).id, call.id);
        write_volatile(&raw mut (*slot).depth, call.depth);
        write_volatile(&raw mut (*slot).kind, call.kind);
        write_volatile(&raw mut (*slot).size, call.size);
        write_volatile(&raw mut (*slot).old_addr, call.old_addr);
        write_volatile(&raw mut (*slot).aux, call.aux);
        write_volatile(&raw mut (*slot).out_ptr, call.out_ptr);
    }
}

/// Stores `header` at `to` field by field (see above).
///
/// # Safety
/// `to` points to room for a header: the scratch record's, or a reserved ring entry.
#[inline(always)]
unsafe fn store_header(to: *mut EventHeader, header: EventHeader) {
    // SAFETY: fields of a header this program owns (the caller's promise).
    unsafe {
        write_volatile(&raw mut (*to).kind, header.kind);
        write_volatile(&raw mut (*to).tid, header.tid);
        write_volatile(&raw mut (*to).ts_ns, header.ts_ns);
        write_volatile(&raw mut (*to).addr, header.addr);
        write_volatile(&raw mut (*to).size, header.size);
        write_volatile(&raw mut (*to).old_addr, header.old_addr);
        write_volatile(&raw mut (*to).aux, header.aux);
        write_volatile(&raw mut (*to).stack_depth, header.stack_depth);
        write_volatile(&raw mut (*to).flags, header.flags);
    }
}

/// Remembers an allocation call's arguments until it returns.
#[inline(always)]
fn enter(kind: EventKind, size: u64, old_addr: u64, aux: u64, out_ptr: u64) {
    let Some(id) = target_thread() else { return };
    let store = CallStore::of(id);
    if let Some(call) = store.in_flight(id) {
        // SAFETY: the entry belongs to this thread only.
        unsafe { (*call).depth += 1 };
        return;
    }
    if stopped() {
        return;
    }
    let call = InFlight {
        id,
        depth: 1,
        kind: kind as u32,
        size,
        old_addr,
        aux,
        out_ptr,
    };
    store.start(id, call);
}

/// True when this thread is inside a call that will be reported (its inner calls are not).
#[inline(always)]
fn nested(id: u64) -> bool {
    CallStore::of(id).in_flight(id).is_some()
}

/// Emits the record of a call: its header alone, written straight into the ring, or with its
/// stack, built in the per-CPU scratch area and its used part copied to the ring.
#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, id: u64, mut header: EventHeader, with_stack: bool) {
    header.tid = id as u32;
    header.ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: volatile reads of loader-set globals.
    let depth = (unsafe { read_volatile(&STACK_DEPTH) } as usize).min(MAX_STACK_DEPTH);
    if !with_stack || depth == 0 {
        emit_header(header, with_stack);
        return;
    }
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, not shared while this program runs.
    let record = unsafe { &mut *record };
    // SAFETY: a volatile read of a loader-set global.
    let body_bytes = if unsafe { read_volatile(&UNWIND_MODE) } == unwind_mode::DWARF {
        snapshot(ctx, id, record, &mut header)
    } else {
        frames(ctx, record, &mut header, depth)
    };
    // SAFETY: the scratch record's header.
    unsafe { store_header(&raw mut record.header, header) };
    let flags = ring_flags(true);
    let len = EVENT_HEADER_SIZE + body_bytes;
    // SAFETY: `len` is at most size_of::<EventRecord>() and the record is initialised that far.
    let bytes =
        unsafe { core::slice::from_raw_parts((record as *const EventRecord).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, flags).is_err() {
        bump(counter::LOST_BASE + header.kind);
    }
}

/// A record that is its header alone (free, munmap, a realloc's entry, any call without
/// stacks): reserved in the ring and written there, with no copy through the scratch area.
/// `allocation`: the record of an allocation call (see [`ring_flags`]).
#[inline(always)]
fn emit_header(header: EventHeader, allocation: bool) {
    let flags = ring_flags(allocation);
    match EVENTS.reserve::<EventHeader>(0) {
        Some(mut entry) => {
            // SAFETY: the entry has room for a header.
            unsafe { store_header(entry.as_mut_ptr(), header) };
            entry.submit(flags);
        }
        None => bump(counter::LOST_BASE + header.kind),
    }
}

/// The ring's flags for the next record: wake the collector once a quarter of the ring is
/// queued (else it drains on its timer). The collector is falling behind: this thread stops
/// (held by the tracer) as it returns to user space, after this record, which still has
/// room. Without holds (`attach`), the records of frees, munmaps and realloc entries skip the
/// ring's fill level (~40 ns of a free's probe): allocations, which carry the stacks that fill
/// the ring, still look.
#[inline(always)]
fn ring_flags(allocation: bool) -> u64 {
    // SAFETY: volatile reads of loader-set globals.
    let (wakeup_at, hold_at) =
        unsafe { (read_volatile(&WAKEUP_BYTES), read_volatile(&HOLD_BYTES)) };
    if hold_at == 0 && !allocation {
        return BPF_RB_NO_WAKEUP as u64;
    }
    let queued = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if hold_at != 0 && queued >= hold_at {
        hold();
    }
    if queued >= wakeup_at {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Stops the current thread, a target's, as it returns to user space: the tracer holds it
/// until the collector has drained the ring once more.
#[inline(always)]
fn hold() {
    let signal = if blocks_hold_signal() {
        HOLD_SIGNAL_BLOCKED
    } else {
        HOLD_SIGNAL
    };
    // SAFETY: signals the current thread, which belongs to the target (checked by callers).
    unsafe { bpf_send_signal_thread(signal) };
    bump(counter::HOLDS);
}

/// The current thread blocks [`HOLD_SIGNAL`] (its `task_struct.blocked`, at the offset the
/// loader read from the kernel's BTF): it would never stop for it.
#[inline(always)]
fn blocks_hold_signal() -> bool {
    // SAFETY: a volatile read of a loader-set global.
    let offset = unsafe { read_volatile(&TASK_BLOCKED_OFFSET) };
    if offset == 0 {
        return false;
    }
    // SAFETY: the current task's pointer, read through the kernel-read helper, which copes
    // with any address.
    let mask = unsafe {
        let task = bpf_get_current_task() as *const u8;
        bpf_probe_read_kernel(task.add(offset as usize).cast::<u64>()).unwrap_or(0)
    };
    mask & (1 << (HOLD_SIGNAL - 1)) != 0
}

/// Frame-pointer walk: up to `depth` return addresses into the record body; returns its bytes.
/// One frame more than kept is asked for, so that only a stack really deeper than `depth` is
/// flagged truncated.
#[inline(always)]
fn frames<C: EbpfContext>(
    ctx: &C,
    record: &mut EventRecord,
    header: &mut EventHeader,
    depth: usize,
) -> usize {
    let want = ((depth + 1) * 8) as u32;
    // SAFETY: the body holds more than MAX_STACK_DEPTH + 1 u64s and `want` never exceeds that.
    let got = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            record.body.as_mut_ptr().cast(),
            want,
            BPF_F_USER_STACK as u64,
        )
    };
    if got < 0 {
        header.flags |= FLAG_STACK_MISSING;
        bump(counter::STACK_ERRORS);
        return 0;
    }
    let mut bytes = (got as usize).min((MAX_STACK_DEPTH + 1) * 8) & !7;
    if bytes > depth * 8 {
        header.flags |= FLAG_STACK_TRUNCATED;
        bytes = depth * 8;
    }
    header.stack_depth = (bytes / 8) as u32;
    bytes
}

/// Bytes from `sp` to just above `argc` when `sp` is on the main thread's stack within a
/// copy's reach, else `u64::MAX`. Above `argc` lie only argv, the environment and the auxiliary
/// vector (kilobytes of strings: 7 KiB in a typical shell), which no frame reads, so the
/// main thread's copies stop there. `argc`'s address is the kernel's `mm->start_stack`, read
/// from the current task: each exec sets it, so an exec'd program and every process of a
/// followed tree is bounded by its own.
#[inline(always)]
fn main_stack_room(sp: u64) -> u64 {
    // SAFETY: volatile reads of loader-set globals.
    let (mm_at, start_stack_at) = unsafe {
        (
            read_volatile(&TASK_MM_OFFSET),
            read_volatile(&MM_START_STACK_OFFSET),
        )
    };
    if start_stack_at == 0 {
        return u64::MAX;
    }
    // SAFETY: the current task's pointer, read through the kernel-read helper, which copes
    // with any address (a kernel thread's mm is null, and its read fails).
    let top = unsafe {
        let task = bpf_get_current_task() as *const u8;
        bpf_probe_read_kernel(task.add(mm_at as usize).cast::<*const u8>())
            .and_then(|mm| bpf_probe_read_kernel(mm.add(start_stack_at as usize).cast::<u64>()))
            .unwrap_or(0)
    };
    if top == 0 || sp > top || top - sp >= MAX_STACK_BYTES as u64 {
        return u64::MAX;
    }
    // argc and argv[0] are copied too, and the length rounded up to whole words.
    (top + 16 - sp + 7) & !7
}

/// Bytes from `sp` to the top of this thread's stack as memprof learned it from a walk that
/// reached the thread's root ([`StackTop`]), and the word that walk read just below the top,
/// when `sp` is within a copy's reach below it. A thread's stack (the main thread's too) is
/// otherwise copied to its bound: `--stack-bytes` deep, past the root frames into the
/// thread's descriptor and TLS (8 KiB per allocation where the frames take a few hundred
/// bytes), or up to `argc` on the main thread (two kernel reads per copy).
#[inline(always)]
fn learned_room(id: u64, sp: u64) -> Option<(u64, u64)> {
    let tid = id as u32;
    // SAFETY: a volatile read of a loader-set global.
    if tid >= unsafe { read_volatile(&TID_SLOTS) } {
        return None;
    }
    let known = *STACK_TOPS.get(tid)?;
    if known.id != id
        || known.top < 8
        || sp > known.top - 8
        || known.top - sp >= MAX_STACK_BYTES as u64
    {
        return None;
    }
    Some((known.top - sp, known.canary))
}

/// Copies `limit` bytes of user stack from `sp` to the snapshot's bytes in `stack` (the record
/// body) in one read; false if some page of it is unreadable. Each read costs the probe ~150
/// ns on top of its bytes, so a copy takes one where it can.
#[inline(always)]
fn copy_whole(stack: *mut u8, sp: u64, limit: u64) -> bool {
    // SAFETY: `limit` <= MAX_STACK_BYTES bytes from STACK_SNAPSHOT_SIZE stay inside the body
    // (the mask restates that bound for the verifier); the helper copes with any user address.
    limit > 0
        && limit <= MAX_STACK_BYTES as u64
        && unsafe {
            probe_read_user_raw(
                stack.add(STACK_SNAPSHOT_SIZE).cast(),
                (limit & (2 * MAX_STACK_BYTES as u64 - 1)) as u32,
                sp as *const _,
            )
        } == 0
}

/// The copied word `offset` bytes above `sp` (less than MAX_STACK_BYTES - 8).
#[inline(always)]
fn copied_word(stack: *const u8, offset: u64) -> u64 {
    let at = STACK_SNAPSHOT_SIZE + (offset & (MAX_STACK_BYTES as u64 - 1)) as usize;
    // SAFETY: `at` + 8 stays inside the body (MAX_STACK_BYTES + slack after the snapshot
    // header); the read need not be aligned.
    unsafe { stack.add(at).cast::<u64>().read_unaligned() }
}

/// DWARF mode: the user registers and a copy of the user stack from `sp` upward, for the
/// collector to unwind. A copy stops at the thread's learned top when the word below it
/// still holds what the walk read there (checked in the copied bytes, so it costs no read of
/// its own: a thread with another stack under the same id, or one running elsewhere, a
/// coroutine's stack or an alternate signal stack, fails it and is copied again to its
/// bound); otherwise at `argc` on the main thread, else `STACK_BYTES`, in one read; if some
/// page of that is unreadable (the top of a thread's stack), page by page up to the first
/// unreadable one. Returns the bytes of the record body used.
#[inline(always)]
fn snapshot<C: EbpfContext>(
    ctx: &C,
    id: u64,
    record: &mut EventRecord,
    header: &mut EventHeader,
) -> usize {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: uprobe programs get the user registers as their context.
    let (ip, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    // SAFETY: volatile read of a loader-set global.
    let configured = (unsafe { read_volatile(&STACK_BYTES) } as u64).min(MAX_STACK_BYTES as u64);
    let stack = record.body.as_mut_ptr().cast::<u8>();
    let mut copied = 0;
    let mut bounded = false;
    if let Some((room, canary)) = learned_room(id, sp)
        && room <= configured
    {
        // The top is 8 above the canary's word, which the copy rounded to words holds.
        let limit = (room + 7) & !7;
        if copy_whole(stack, sp, limit) && copied_word(stack, room - 8) == canary {
            copied = limit;
            bounded = true;
        }
    }
    let mut limit = copied;
    if !bounded {
        // The main thread's id is its process's (pid_tgid's halves are equal).
        let room = if id as u32 == (id >> 32) as u32 {
            main_stack_room(sp)
        } else {
            u64::MAX
        };
        bounded = room < configured;
        limit = (if bounded { room } else { configured }) & !7;
        copied = if copy_whole(stack, sp, limit) {
            limit
        } else {
            copy_pages(stack, sp, limit)
        };
    }
    if copied == 0 {
        bump(counter::STACK_ERRORS);
    }
    let snapshot = StackSnapshot {
        ip,
        sp,
        bp,
        stack_bytes: copied as u32,
        flags: if copied == limit && !bounded {
            SNAPSHOT_CUT
        } else {
            0
        },
    };
    // SAFETY: the body starts 8-aligned and holds the snapshot header first.
    unsafe {
        record
            .body
            .as_mut_ptr()
            .cast::<StackSnapshot>()
            .write(snapshot)
    };
    header.flags |= FLAG_STACK_SNAPSHOT;
    header.stack_depth = 0;
    // Restated bound for the verifier (the record length must fit the scratch value).
    let used = if copied > MAX_STACK_BYTES as u64 {
        MAX_STACK_BYTES
    } else {
        copied as usize
    };
    STACK_SNAPSHOT_SIZE + used
}

/// Copies `limit` bytes of user stack from `sp` to the snapshot's bytes in `stack` (the record
/// body) page by page, stopping at the first unreadable page; returns the bytes copied.
#[inline(always)]
fn copy_pages(stack: *mut u8, sp: u64, limit: u64) -> u64 {
    let mut copied: u64 = 0;
    let mut addr = sp;
    // A copy of `limit` bytes spans at most limit / PAGE + 1 pages.
    for _ in 0..(MAX_STACK_BYTES as u64 / PAGE + 1) {
        if copied >= limit {
            break;
        }
        let in_page = PAGE - (addr & (PAGE - 1));
        let left = limit - copied;
        let chunk = if left < in_page { left } else { in_page };
        // The masks restate bounds that hold anyway (copied < limit <= MAX_STACK_BYTES, chunk
        // <= PAGE) in a form the verifier can check against the buffer's slack.
        let offset =
            (STACK_SNAPSHOT_SIZE as u64 + (copied & (MAX_STACK_BYTES as u64 - 1))) as usize;
        let chunk = chunk & (2 * PAGE - 1);
        if chunk > PAGE {
            break;
        }
        // SAFETY: offset + chunk stays inside the body (MAX_STACK_BYTES + a page of slack);
        // the helper copes with any user address.
        let failed = unsafe {
            probe_read_user_raw(stack.add(offset).cast(), chunk as u32, addr as *const _)
        } != 0;
        if failed {
            break;
        }
        copied += chunk;
        addr += chunk;
    }
    copied
}

/// Reports an allocation call when its outermost instance returns.
#[uretprobe]
pub fn memprof_return(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let store = CallStore::of(id);
    let Some(in_flight) = store.in_flight(id) else {
        return 0;
    };
    // SAFETY: the entry belongs to this thread only.
    let call = unsafe { &mut *in_flight };
    if call.depth > 1 {
        call.depth -= 1;
        return 0;
    }
    let call = *call;
    store.end(id);

    let ret: u64 = ctx.ret();
    let addr = if call.kind == EventKind::PosixMemalign as u32 {
        // posix_memalign returns 0 on success and stores the block through memptr.
        if ret as u32 == 0 {
            // SAFETY: bpf_probe_read_user copes with any user address.
            unsafe { bpf_probe_read_user(call.out_ptr as *const u64) }.unwrap_or(0)
        } else {
            0
        }
    } else {
        ret
    };
    let header = EventHeader {
        kind: call.kind,
        addr,
        size: call.size,
        old_addr: call.old_addr,
        aux: call.aux,
        ..EventHeader::default()
    };
    emit(&ctx, id, header, true);
    0
}

/// `count * size` as calloc and reallocarray compute it; an overflowing product (which those
/// functions refuse) saturates instead of wrapping, so it can never read as a size of 0.
#[inline(always)]
fn array_bytes(count: u64, size: u64) -> u64 {
    let product = count.wrapping_mul(size);
    // black_box keeps LLVM from folding the check into a 128-bit multiply, which BPF lacks.
    if count != 0 && core::hint::black_box(product) / count != size {
        u64::MAX
    } else {
        product
    }
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    enter(EventKind::Malloc, arg(&ctx, 0), 0, 0, 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let size = array_bytes(arg(&ctx, 0), arg(&ctx, 1));
    enter(EventKind::Calloc, size, 0, 0, 0);
    0
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    realloc_entry(&ctx, EventKind::Realloc, arg(&ctx, 1));
    0
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let size = array_bytes(arg(&ctx, 1), arg(&ctx, 2));
    realloc_entry(&ctx, EventKind::Reallocarray, size);
    0
}

/// A realloc's entry: remembered like any call and, when it is the thread's outermost call
/// and may release a block, announced at once (`FLAG_REALLOC_ENTRY`): the block is released
/// inside the call, and another thread may be handed its address before the return record.
#[inline(always)]
fn realloc_entry(ctx: &ProbeContext, kind: EventKind, size: u64) {
    let old_addr = arg(ctx, 0);
    let Some(id) = target_thread() else { return };
    let outermost = !nested(id) && !stopped();
    enter(kind, size, old_addr, 0, 0);
    if outermost && old_addr != 0 {
        let header = EventHeader {
            kind: kind as u32,
            old_addr,
            flags: FLAG_REALLOC_ENTRY,
            ..EventHeader::default()
        };
        emit(ctx, id, header, false);
    }
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    enter(
        EventKind::PosixMemalign,
        arg(&ctx, 2),
        0,
        arg(&ctx, 1),
        arg(&ctx, 0),
    );
    0
}

#[uprobe]
pub fn aligned_alloc_enter(ctx: ProbeContext) -> u32 {
    enter(EventKind::AlignedAlloc, arg(&ctx, 1), 0, arg(&ctx, 0), 0);
    0
}

#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    enter(EventKind::Memalign, arg(&ctx, 1), 0, arg(&ctx, 0), 0);
    0
}

#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    enter(EventKind::Valloc, arg(&ctx, 0), 0, 0, 0);
    0
}

#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    enter(EventKind::Pvalloc, arg(&ctx, 0), 0, 0, 0);
    0
}

/// `operator new(size_t)`, `new[]` and their nothrow forms (the second argument, if any, is
/// the `nothrow_t` tag, not an alignment).
#[uprobe]
pub fn operator_new_enter(ctx: ProbeContext) -> u32 {
    enter(EventKind::OperatorNew, arg(&ctx, 0), 0, 0, 0);
    0
}

/// `operator new(size_t, align_val_t)` and its `new[]`/nothrow forms: the alignment in `aux`.
#[uprobe]
pub fn operator_new_aligned_enter(ctx: ProbeContext) -> u32 {
    enter(EventKind::OperatorNew, arg(&ctx, 0), 0, arg(&ctx, 1), 0);
    0
}

#[uprobe]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    // aux = flags, so the collector can tell anonymous mappings from file mappings.
    enter(EventKind::Mmap, arg(&ctx, 1), 0, arg(&ctx, 3), 0);
    0
}

#[uprobe]
pub fn mremap_enter(ctx: ProbeContext) -> u32 {
    enter(
        EventKind::Mremap,
        arg(&ctx, 2),
        arg(&ctx, 0),
        arg(&ctx, 1),
        0,
    );
    0
}

/// Reports a call that needs no result: free, operator delete and munmap. `aux` carries the
/// caller's return address, still at the top of the stack (the probe runs before anything
/// moves `%rsp`): the collector tells the allocator's own calls (thread exit flushing its
/// cache) from the program's. The read costs a free ~150 ns, almost half its probe's run
/// time (redis under `attach`): free and operator delete skip it where the caller is not
/// wanted (`FREE_CALLERS`).
#[inline(always)]
fn release(ctx: &ProbeContext, kind: EventKind, addr: u64, size: u64) {
    if addr == 0 {
        return;
    }
    let Some(id) = target_thread() else { return };
    if nested(id) || stopped() {
        return;
    }
    // SAFETY: a volatile read of a loader-set global.
    let wanted = kind == EventKind::Munmap || unsafe { read_volatile(&FREE_CALLERS) } != 0;
    let caller = if wanted {
        let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
        // SAFETY: uprobe programs get the user registers as their context; the read copes
        // with any user address (0 if unreadable).
        unsafe { bpf_probe_read_user((*regs).rsp as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    let header = EventHeader {
        kind: kind as u32,
        addr,
        size,
        aux: caller,
        ..EventHeader::default()
    };
    emit(ctx, id, header, false);
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    release(&ctx, EventKind::Free, arg(&ctx, 0), 0);
    0
}

/// Every `operator delete`/`delete[]` form: the sized and aligned forms' extra arguments add
/// nothing the allocation did not record.
#[uprobe]
pub fn operator_delete_enter(ctx: ProbeContext) -> u32 {
    release(&ctx, EventKind::OperatorDelete, arg(&ctx, 0), 0);
    0
}

#[uprobe]
pub fn munmap_enter(ctx: ProbeContext) -> u32 {
    release(&ctx, EventKind::Munmap, arg(&ctx, 0), arg(&ctx, 1));
    0
}

/// dlclose may unmap a library whose calls are still queued. With holds on (`run`), the
/// thread stops until the collector has read them, so their frames are unwound and the
/// library's maps read while it is still mapped (the in-process path waits the same way).
#[uprobe]
pub fn dlclose_enter(_ctx: ProbeContext) -> u32 {
    if target_thread().is_none() || stopped() {
        return 0;
    }
    // SAFETY: a volatile read of a loader-set global.
    let hold_at = unsafe { read_volatile(&HOLD_BYTES) };
    // Held even with the ring empty: the collector may still be unwinding records it took.
    if hold_at != 0 {
        hold();
    }
    0
}
