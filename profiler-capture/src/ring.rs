//! The producer side of the shared ring (`profiler_common::shared_ring`).
//!
//! The ring is attached on the first recorded call of a process: the descriptor named by
//! `MEMPROF_RING_FD` is mapped. When memprof follows the process tree
//! (`RingControl::follow_children`), every process records into it, each frame naming its
//! writer's pid: a forked child keeps the mapping (its fork handler takes its own pid) and an
//! exec'd one maps the inherited descriptor again. Otherwise the first process claims it; a
//! process that finds it claimed by another (a child that inherited the variable, then exec'd)
//! and a child forked from the target (its fork handler turns recording off) forward their
//! calls without recording.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};

use profiler_common::shared_ring::{
    DATA_OFFSET, FRAME_HEADER_BYTES, LOCK_WAITERS, MAGIC, MAX_RECORD_BYTES, PADDING, RING_FD_ENV,
    RING_PATH_ENV, RingControl, UNCLAIMED, frame_bytes, place,
};

const DETACHED: u8 = 0;
const ATTACHING: u8 = 1;
const RECORDING: u8 = 2;
/// Not recording: no ring, another process's ring, a forked child, or memprof is gone.
const OFF: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(DETACHED);
/// The mapped ring (control page first), once attached.
static BASE: AtomicUsize = AtomicUsize::new(0);
/// This process's id, written into every frame (read once: getpid is a syscall).
static PID: AtomicU32 = AtomicU32::new(0);

/// How long a producer sleeps on a full ring before checking that memprof still lives.
const WAIT_SLICE: libc::timespec = libc::timespec {
    tv_sec: 1,
    tv_nsec: 0,
};

/// The ring, if this process records.
#[inline]
pub fn ring() -> Option<Ring> {
    match STATE.load(Ordering::Acquire) {
        RECORDING => Some(Ring::at(BASE.load(Ordering::Relaxed))),
        OFF => None,
        _ => attach(),
    }
}

#[cold]
fn attach() -> Option<Ring> {
    if STATE
        .compare_exchange(DETACHED, ATTACHING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Another thread attaches: its calls meanwhile are this process's first few; wait.
        loop {
            match STATE.load(Ordering::Acquire) {
                RECORDING => return Some(Ring::at(BASE.load(Ordering::Relaxed))),
                OFF => return None,
                _ => core::hint::spin_loop(),
            }
        }
    }
    let mapped = map_ring();
    match mapped {
        Some(base) => {
            BASE.store(base, Ordering::Relaxed);
            // SAFETY: the handler only stores to atomics and resets the unwinder's locks.
            unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
            STATE.store(RECORDING, Ordering::Release);
            Some(Ring::at(base))
        }
        None => {
            STATE.store(OFF, Ordering::Release);
            None
        }
    }
}

/// In a forked child: its own pid when the tree is followed (its records then go to its own
/// heap), else no recording (its calls go straight through).
extern "C" fn forked_child() {
    crate::unwind::forked();
    let ring = Ring::at(BASE.load(Ordering::Relaxed));
    if ring.control().follow_children == 0 {
        STATE.store(OFF, Ordering::Release);
        return;
    }
    // SAFETY: getpid has no arguments.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    crate::thread::forget_tid();
    crate::stack_numbers::forked();
}

/// Maps the ring named by the environment and claims it; None if this process is not the one
/// memprof profiles.
fn map_ring() -> Option<usize> {
    let (base, len) = match env_fd().and_then(map_fd) {
        Some(mapped) => mapped,
        // The inherited descriptor was closed (Python's subprocess closes all but 0-2) or
        // reused: the same ring through memprof's own descriptor, which root can open.
        None => map_path()?,
    };
    let base = base as *mut libc::c_void;
    let ring = Ring::at(base as usize);
    // SAFETY: getpid has no arguments.
    let pid = unsafe { libc::getpid() } as u32;
    let control = ring.control();
    PID.store(pid, Ordering::Relaxed);
    if control.follow_children != 0 {
        return Some(base as usize);
    }
    let owner = match control.owner_pid.compare_exchange(
        UNCLAIMED,
        pid,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => pid,
        Err(owner) => owner,
    };
    if owner != pid {
        // SAFETY: unmapping what was mapped above; nothing refers to it.
        unsafe { libc::munmap(base, len) };
        return None;
    }
    Some(base as usize)
}

/// The descriptor `MEMPROF_RING_FD` names.
fn env_fd() -> Option<libc::c_int> {
    let name = c"MEMPROF_RING_FD";
    debug_assert_eq!(name.to_bytes(), RING_FD_ENV.as_bytes());
    env_str(name)?.parse().ok()
}

/// An environment variable's value, if it is UTF-8.
fn env_str(name: &core::ffi::CStr) -> Option<&'static str> {
    // SAFETY: getenv with a NUL-terminated name; the result is read before anything can
    // change the environment on this path.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    unsafe { core::ffi::CStr::from_ptr(value) }.to_str().ok()
}

/// Opens the ring by `MEMPROF_RING_PATH` (`/proc/MEMPROF/fd/N`) and maps it; the descriptor is
/// closed once mapped.
fn map_path() -> Option<(usize, usize)> {
    let name = c"MEMPROF_RING_PATH";
    debug_assert_eq!(name.to_bytes(), RING_PATH_ENV.as_bytes());
    let path = env_str(name)?;
    // NUL-terminated on the stack: no allocation in here.
    let mut buf = [0u8; 64];
    if path.len() >= buf.len() {
        return None;
    }
    buf[..path.len()].copy_from_slice(path.as_bytes());
    // SAFETY: a NUL-terminated path in `buf`.
    let fd = unsafe { libc::open(buf.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mapped = map_fd(fd);
    // SAFETY: closing the descriptor opened above; the mapping stays.
    unsafe { libc::close(fd) };
    mapped
}

/// Maps the ring behind `fd` once its control page says it is one: (base, length).
fn map_fd(fd: libc::c_int) -> Option<(usize, usize)> {
    // SAFETY: mapping a descriptor read-write and shared; checked below before any use.
    let control = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            DATA_OFFSET,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if control == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: a mapping of DATA_OFFSET bytes holds the control page.
    let (magic, data_bytes) = unsafe {
        let page = &*(control as *const RingControl);
        (page.magic, page.data_bytes)
    };
    // SAFETY: unmapping the page mapped above.
    unsafe { libc::munmap(control, DATA_OFFSET) };
    if magic != MAGIC || !data_bytes.is_power_of_two() || data_bytes < 2 * MAX_RECORD_BYTES as u64 {
        return None;
    }
    let len = DATA_OFFSET + data_bytes as usize;
    // SAFETY: as above, for the whole ring.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    (base != libc::MAP_FAILED).then_some((base as usize, len))
}

/// The mapped ring.
#[derive(Clone, Copy)]
pub struct Ring {
    base: usize,
}

impl Ring {
    fn at(base: usize) -> Ring {
        Ring { base }
    }

    pub fn control(&self) -> &'static RingControl {
        // SAFETY: `base` is a live shared mapping starting with the control page, never unmapped
        // once recording started.
        unsafe { &*(self.base as *const RingControl) }
    }

    fn data(&self) -> *mut u8 {
        (self.base + DATA_OFFSET) as *mut u8
    }

    /// The time of an event happening now, in CLOCK_MONOTONIC nanoseconds: from the CPU's
    /// time-stamp counter through memprof's anchor where it published one (`TscAnchor`: 10 ns
    /// here against `clock_gettime`'s 24, on every recorded call), else from the clock.
    #[inline]
    pub fn event_ns(&self) -> u64 {
        match self.control().tsc_anchor() {
            // SAFETY: rdtsc has no preconditions (memprof anchors only where the kernel's
            // clock source is the TSC).
            Some(anchor) => anchor.ns_at(unsafe { core::arch::x86_64::_rdtsc() }),
            None => now_ns(),
        }
    }

    /// Counts a stack the library could not unwind to its root or the depth limit.
    pub fn stack_error(&self) {
        self.control().stack_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes one record made of `parts` (header, return addresses), waiting while the
    /// ring is full. Returns false if the record could not be written (memprof is gone).
    /// Inlined so that the parts' lengths, known at each call, copy without a `memcpy` call.
    #[inline(always)]
    pub fn write(&self, kind: u32, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        if len > MAX_RECORD_BYTES {
            self.unrecorded(kind);
            return false;
        }
        let control = self.control();
        // memprof ended the session (this process outlives the one it launched): stop.
        if control.closed.load(Ordering::Relaxed) != 0 {
            STATE.store(OFF, Ordering::Release);
            return false;
        }
        let size = control.data_bytes;
        let frame = frame_bytes(len);
        self.lock();
        let write_pos = control.write_pos.load(Ordering::Relaxed);
        let padding = loop {
            let read_pos = control.read_pos.load(Ordering::Acquire);
            if let Some(padding) = place(write_pos, read_pos, size, frame) {
                break padding;
            }
            if !self.wait_for_room(write_pos, frame) {
                self.unlock();
                STATE.store(OFF, Ordering::Release);
                self.unrecorded(kind);
                return false;
            }
        };
        let mut at = write_pos;
        // SAFETY: every write below lies in the data area, in bytes the reader has consumed
        // (place() checked the room), and only this lock holder writes.
        unsafe {
            if padding > 0 {
                let offset = (at & (size - 1)) as usize;
                self.data().add(offset).cast::<u32>().write(PADDING);
                at += padding;
            }
            let offset = (at & (size - 1)) as usize;
            let mut out = self.data().add(offset);
            out.cast::<u32>().write(len as u32);
            out.add(4).cast::<u32>().write(PID.load(Ordering::Relaxed));
            out = out.add(FRAME_HEADER_BYTES);
            for part in parts {
                core::ptr::copy_nonoverlapping(part.as_ptr(), out, part.len());
                out = out.add(part.len());
            }
        }
        control.write_pos.store(at + frame, Ordering::Release);
        self.unlock();
        true
    }

    /// Counts a call that could not be recorded.
    pub fn unrecorded(&self, kind: u32) {
        if let Some(slot) = self.control().unrecorded.get(kind as usize) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sleeps until memprof has read every record written so far (or is gone): the records
    /// of a library's calls are then unwound while the library is still mapped.
    #[cold]
    pub fn wait_until_read(&self) {
        let control = self.control();
        let written = control.write_pos.load(Ordering::Acquire);
        control.waiters.fetch_add(1, Ordering::AcqRel);
        loop {
            let drained = control.drained.load(Ordering::Acquire);
            if control.read_pos.load(Ordering::Acquire) >= written {
                break;
            }
            let woken = futex_wait(&control.drained, drained, Some(&WAIT_SLICE));
            // SAFETY: kill with signal 0 only checks that the process exists.
            if !woken && unsafe { libc::kill(control.collector_pid as libc::pid_t, 0) } != 0 {
                break;
            }
        }
        control.waiters.fetch_sub(1, Ordering::AcqRel);
    }

    /// Sleeps until memprof has drained (true), or finds it gone (false).
    #[cold]
    fn wait_for_room(&self, write_pos: u64, frame: u64) -> bool {
        let control = self.control();
        let started = now_ns();
        control.holds.fetch_add(1, Ordering::Relaxed);
        control.waiters.fetch_add(1, Ordering::AcqRel);
        let alive = loop {
            let drained = control.drained.load(Ordering::Acquire);
            let read_pos = control.read_pos.load(Ordering::Acquire);
            if place(write_pos, read_pos, control.data_bytes, frame).is_some() {
                break true;
            }
            let woken = futex_wait(&control.drained, drained, Some(&WAIT_SLICE));
            // SAFETY: kill with signal 0 only checks that the process exists.
            if !woken && unsafe { libc::kill(control.collector_pid as libc::pid_t, 0) } != 0 {
                break false;
            }
        };
        control.waiters.fetch_sub(1, Ordering::AcqRel);
        control
            .held_ns
            .fetch_add(now_ns().saturating_sub(started), Ordering::Relaxed);
        alive
    }

    /// Takes the lock with this process's pid in its word (see [`RingControl::lock`]).
    fn lock(&self) {
        let lock = &self.control().lock;
        // Never 0, which would read as free.
        let me = PID.load(Ordering::Relaxed).max(1) & !LOCK_WAITERS;
        if lock
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        loop {
            let word = lock.load(Ordering::Relaxed);
            if word == 0 {
                // Taken after sleeping: others may sleep still, so the word says so.
                if lock
                    .compare_exchange(0, me | LOCK_WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            if word & LOCK_WAITERS == 0
                && lock
                    .compare_exchange(
                        word,
                        word | LOCK_WAITERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                continue;
            }
            futex_wait(lock, word | LOCK_WAITERS, None);
        }
    }

    fn unlock(&self) {
        let lock = &self.control().lock;
        if lock.swap(0, Ordering::Release) & LOCK_WAITERS != 0 {
            futex_wake(lock, 1);
        }
    }
}

/// Sleeps while `*word == expected`, at most `timeout`; false on a timeout.
fn futex_wait(
    word: &core::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Option<&libc::timespec>,
) -> bool {
    let timeout = timeout.map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a live, aligned u32 of a shared mapping (not PRIVATE: memprof
    // wakes it from another process).
    let result = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            timeout,
        )
    };
    // SAFETY: errno is thread-local.
    !(result != 0 && unsafe { *libc::__errno_location() } == libc::ETIMEDOUT)
}

fn futex_wake(word: &core::sync::atomic::AtomicU32, count: i32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, count);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of memprof and of bpf_ktime_get_ns.
#[inline]
pub fn now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given (through the vDSO: no syscall).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
