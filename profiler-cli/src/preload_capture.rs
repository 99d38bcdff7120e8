//! The in-process capture path of `memprof run --capture preload`: memprof's side of the ring
//! shared with `libmemprof_capture.so` (profiler-capture), which the target preloads.
//!
//! memprof creates the ring (a memfd: the control page, then the data area), passes its
//! descriptor to the target (`MEMPROF_RING_FD`, the library first in `LD_PRELOAD`), and drains
//! it on the collector's timer. A producer that finds the ring full sleeps on a futex until
//! the next drain, so nothing is lost; how often and how long is reported as held time.
use std::{
    mem::offset_of,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context as _, Result, bail};
use profiler_common::{
    EVENT_HEADER_SIZE, EventHeader, EventKind,
    shared_ring::{
        DATA_OFFSET, FRAME_HEADER_BYTES, LOCK_WAITERS, MAX_RECORD_BYTES, PADDING, RING_FD_ENV,
        RING_PATH_ENV, RingControl, TscAnchor, frame_bytes,
    },
};
use profiler_core::report::{Held, LostCounts};

/// How long the event clock's rate is measured before producers use it: a clock read's ~30 ns
/// of jitter over 20 ms is a rate off by 1.5 parts per million, 1.5 ns over the millisecond
/// between anchors.
const CLOCK_CALIBRATION_NS: u64 = 20_000_000;

/// Whether the kernel keeps CLOCK_MONOTONIC from the TSC: only then is the clock a linear
/// function of the counter, and the counter the same on every CPU.
fn kernel_clock_is_tsc() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|source| source.trim() == "tsc")
}

/// The TSC and CLOCK_MONOTONIC at one moment: the clock read between two counter reads, the
/// closest of a few tries (a try the scheduler cut into is wide).
fn tsc_and_ns() -> Option<(u64, u64)> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut best: Option<(u64, u64, u64)> = None;
        for _ in 0..3 {
            // SAFETY: rdtsc has no preconditions.
            let before = unsafe { core::arch::x86_64::_rdtsc() };
            let ns = crate::clock::monotonic_ns();
            // SAFETY: as above.
            let after = unsafe { core::arch::x86_64::_rdtsc() };
            let width = after.wrapping_sub(before);
            if after >= before && best.is_none_or(|(_, _, best_width)| width < best_width) {
                best = Some((before + width / 2, ns, width));
            }
        }
        best.map(|(tsc, ns, _)| (tsc, ns))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// File name of the capture library, looked for next to the memprof executable.
pub const LIBRARY: &str = "libmemprof_capture.so";

/// Where the capture library is: next to this executable (where cargo builds both).
pub fn library() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the memprof executable")?;
    let library = exe.with_file_name(LIBRARY);
    if !library.is_file() {
        bail!(
            "--capture preload needs {LIBRARY} next to memprof ({}); build it with `cargo build \
             -p memprof-capture` (same profile as memprof)",
            library.display()
        );
    }
    Ok(library)
}

/// The environment the target gets: the library first in `LD_PRELOAD` (an allocator the user
/// preloads stays after it and is what it forwards to) and the ring's descriptor.
pub fn target_env(
    library: &Path,
    ring: &SharedRing,
    mut env: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let preload_index = env.iter().position(|(key, _)| key == "LD_PRELOAD");
    let inherited = std::env::var("LD_PRELOAD").ok();
    let others = match preload_index {
        Some(index) => Some(env.remove(index).1),
        None => inherited,
    };
    let mut preload = library.display().to_string();
    if let Some(others) = others.filter(|o| !o.trim().is_empty()) {
        preload.push(':');
        preload.push_str(&others);
    }
    env.push(("LD_PRELOAD".into(), preload));
    env.push((RING_FD_ENV.into(), ring.fd().to_string()));
    // For a child that closes the inherited descriptor before it execs a program.
    env.push((
        RING_PATH_ENV.into(),
        format!("/proc/{}/fd/{}", std::process::id(), ring.fd()),
    ));
    env
}

/// Frames [`SharedRing::drain`] announces before it delivers them.
const READ_AHEAD: usize = 8;
/// How far past the frame being read ahead the ring's bytes are prefetched: a few dozen of
/// the in-process path's numbered records (64-80 bytes each).
const RING_PREFETCH_BYTES: u64 = 2048;

/// Bytes read between two hand-backs of room during one drain. Handing it back only at the
/// drain's end kept a producer that found the ring full waiting for the whole backlog (tens
/// of MB, a few hundred ms on python3) while its core idled; every MiB, it writes on while
/// memprof reads.
const PUBLISH_BYTES: u64 = 1 << 20;

/// What [`SharedRing::drain`] hands its sink.
pub enum Drained<'a> {
    /// A record about `addr` (and `old_addr`) comes [`READ_AHEAD`] frames later: a hint only,
    /// read from bytes the target could still be scribbling on.
    Ahead { pid: u32, addr: u64, old_addr: u64 },
    /// The next record, copied out of the ring, written by process `pid`.
    Record { pid: u32, record: &'a [u8] },
}

/// A frame of the ring as [`SharedRing::frame_at`] reads it.
enum Frame {
    /// Unused room up to the ring's end; the next frame starts at `next`.
    Padding { next: u64 },
    /// A record of `len` bytes at data offset `offset`.
    Record {
        pid: u32,
        offset: usize,
        len: usize,
        next: u64,
    },
    /// Not a frame the library writes.
    Malformed,
}

/// memprof's mapping of the ring.
pub struct SharedRing {
    fd: OwnedFd,
    base: *mut u8,
    len: usize,
    /// The data area's size, as created: the control page's copy is the target's to write,
    /// and every offset read must stay inside the mapping whatever it says.
    data_bytes: u64,
    /// Where the reader is: its own copy, the control page's is for the producers to read.
    read_pos: u64,
    /// One record, copied out of the shared area before it is decoded (the target can write
    /// the area at any time; the decoder must see bytes that hold still).
    record: Vec<u8>,
    /// The counter and the clock when the ring was made, which the event clock's rate is
    /// measured from (see [`TscAnchor`]); `None` where the kernel's clock is not the TSC.
    clock_start: Option<(u64, u64)>,
}

// SAFETY: the mapping is owned by this value and only read through it.
unsafe impl Send for SharedRing {}

impl SharedRing {
    /// A ring of `data_bytes` (a power of two) whose producers capture stacks as `stacks`
    /// says (`RingControl::stack_mode`, `max_depth`); with `follow_children`, every process of
    /// the target's tree records into it.
    pub fn create(
        data_bytes: u64,
        stacks: (u32, u32),
        follow_children: bool,
    ) -> Result<SharedRing> {
        let fd =
            nix::sys::memfd::memfd_create(c"memprof-ring", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .context("cannot create the capture ring (memfd_create)")?;
        let len = DATA_OFFSET + data_bytes as usize;
        nix::unistd::ftruncate(&fd, len as i64).context("cannot size the capture ring")?;
        // SAFETY: a fresh shared mapping of the memfd, owned by the SharedRing until drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("cannot map the capture ring");
        }
        let ring = SharedRing {
            fd,
            base: base.cast(),
            len,
            data_bytes,
            read_pos: 0,
            record: Vec::with_capacity(MAX_RECORD_BYTES),
            clock_start: kernel_clock_is_tsc().then(tsc_and_ns).flatten(),
        };
        // SAFETY: the control page is at the start of the mapping, zeroed, not shared yet.
        unsafe {
            ring.base.cast::<RingControl>().write(RingControl::new(
                data_bytes,
                stacks,
                std::process::id(),
                follow_children,
            ))
        };
        Ok(ring)
    }

    /// The descriptor the target inherits.
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn control(&self) -> &RingControl {
        // SAFETY: the mapping starts with the control page written in create().
        unsafe { &*self.base.cast::<RingControl>() }
    }

    /// A handle on the counters, for the collector's loss accounting.
    pub fn counters(&self) -> RingCounters {
        RingCounters {
            fd: self.fd.try_clone().ok().map(Arc::new),
        }
    }

    /// Hands every published record to `sink` with the pid of the process that wrote it;
    /// returns how many frames could not be trusted (the rest of the ring is then skipped).
    /// Records [`READ_AHEAD`] frames on are announced first ([`Drained::Ahead`]), so that the
    /// heap entries they touch are in the cache by the time they are applied.
    pub fn drain(&mut self, mut sink: impl FnMut(Drained<'_>)) -> u64 {
        self.anchor_clock();
        let control = self.control();
        let write_pos = control.write_pos.load(Ordering::Acquire);
        let mut read_pos = self.read_pos;
        let mut malformed = 0;
        // Producers never write more than the ring holds past the reader: a position beyond
        // that was written by something else, and walking up to it could take forever.
        if write_pos < read_pos || write_pos - read_pos > self.data_bytes {
            malformed += 1;
            read_pos = write_pos;
        }
        let mut published = read_pos;
        let mut ahead_pos = read_pos;
        let mut ahead_frames = 0;
        while read_pos < write_pos {
            while ahead_frames < READ_AHEAD && ahead_pos < write_pos {
                self.prefetch_ring(ahead_pos + RING_PREFETCH_BYTES);
                match self.frame_at(ahead_pos) {
                    Frame::Padding { next } => ahead_pos = next,
                    Frame::Record {
                        pid, offset, next, ..
                    } => {
                        let (addr, old_addr) = self.addresses_at(offset);
                        sink(Drained::Ahead {
                            pid,
                            addr,
                            old_addr,
                        });
                        ahead_pos = next;
                        ahead_frames += 1;
                    }
                    Frame::Malformed => break,
                }
            }
            match self.frame_at(read_pos) {
                Frame::Padding { next } => read_pos = next,
                Frame::Record {
                    pid,
                    offset,
                    len,
                    next,
                } => {
                    self.record.clear();
                    // SAFETY: the frame's bytes lie inside the data area (frame_at checked).
                    self.record.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(self.data().add(offset), len)
                    });
                    read_pos = next;
                    ahead_frames = ahead_frames.saturating_sub(1);
                    sink(Drained::Record {
                        pid,
                        record: &self.record,
                    });
                    if read_pos - published >= PUBLISH_BYTES {
                        self.publish(read_pos);
                        published = read_pos;
                    }
                }
                Frame::Malformed => {
                    // Not a frame the library writes: the rest cannot be trusted.
                    malformed += 1;
                    read_pos = write_pos;
                }
            }
        }
        self.publish(read_pos);
        malformed
    }

    /// Re-anchors the producers' event clock at the counter and the clock now, with the rate
    /// measured since the ring was made, once that spans [`CLOCK_CALIBRATION_NS`].
    fn anchor_clock(&mut self) {
        let Some((start_tsc, start_ns)) = self.clock_start else {
            return;
        };
        let Some((tsc, ns)) = tsc_and_ns() else {
            return;
        };
        if ns.saturating_sub(start_ns) < CLOCK_CALIBRATION_NS {
            return;
        }
        if let Some(anchor) = TscAnchor::measured(start_tsc, start_ns, tsc, ns) {
            self.control().set_tsc_anchor(anchor);
        }
    }

    /// Hands the bytes up to `read_pos` back to the producers, waking any waiting for room.
    fn publish(&mut self, read_pos: u64) {
        self.read_pos = read_pos;
        let control = self.control();
        control.read_pos.store(read_pos, Ordering::Release);
        control.drained.fetch_add(1, Ordering::Release);
        if control.waiters.load(Ordering::Acquire) > 0 {
            // SAFETY: FUTEX_WAKE on the aligned u32 of the shared mapping.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    control.drained.as_ptr(),
                    libc::FUTEX_WAKE,
                    i32::MAX,
                );
            }
        }
    }

    /// The start of the data area, after the control page.
    fn data(&self) -> *const u8 {
        // SAFETY: the data area follows the control page inside the mapping.
        unsafe { self.base.add(DATA_OFFSET) }
    }

    /// Asks the CPU for the ring's bytes at position `pos` (which may not be written yet: a
    /// hint only). The producer wrote them on another CPU, so the first read of each line
    /// waits for it to come over; asked for this far ahead, it has come by then.
    #[inline]
    fn prefetch_ring(&self, pos: u64) {
        let offset = (pos & (self.data_bytes - 1)) as usize;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch of an address inside the mapped data area; it reads nothing the
        // program sees and cannot fault.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch(self.data().add(offset).cast::<i8>(), _MM_HINT_T0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = offset;
    }

    /// What the frame at ring position `pos` (published, below the write position) is.
    fn frame_at(&self, pos: u64) -> Frame {
        let size = self.data_bytes;
        let offset = (pos & (size - 1)) as usize;
        // SAFETY: offsets are 8-aligned and below `size`; a frame header is 8 bytes.
        let len = unsafe { self.data().add(offset).cast::<u32>().read_volatile() } as usize;
        if len == PADDING as usize {
            return Frame::Padding {
                next: pos + size - offset as u64,
            };
        }
        if len > MAX_RECORD_BYTES || offset + FRAME_HEADER_BYTES + len > size as usize {
            return Frame::Malformed;
        }
        // SAFETY: as the length, the frame's second word.
        let pid = unsafe { self.data().add(offset + 4).cast::<u32>().read_volatile() };
        Frame::Record {
            pid,
            offset: offset + FRAME_HEADER_BYTES,
            len,
            next: pos + frame_bytes(len),
        }
    }

    /// The block addresses of the record at data offset `offset`, read for a prefetch hint
    /// only (0 where the record is too short to hold them).
    fn addresses_at(&self, offset: usize) -> (u64, u64) {
        if offset + EVENT_HEADER_SIZE > self.data_bytes as usize {
            return (0, 0);
        }
        let word = |field: usize| {
            // SAFETY: inside the data area (checked above); 8-aligned like every record.
            unsafe {
                self.data()
                    .add(offset + field)
                    .cast::<u64>()
                    .read_volatile()
            }
        };
        (
            word(offset_of!(EventHeader, addr)),
            word(offset_of!(EventHeader, old_addr)),
        )
    }

    /// Frees the producers' lock if process `pid` holds it: only once none of its threads can
    /// write (it exec'd, its old threads gone, or it died), when a thread killed inside the
    /// lock may have left it taken. Other processes of the tree may hold it legitimately.
    pub fn release_lock_of(&self, pid: u32) {
        let control = self.control();
        // Alone in the ring, the process that exec'd or died can only be the one holding it.
        let alone = control.follow_children == 0;
        let word = control.lock.load(Ordering::Acquire);
        let owner = word & !LOCK_WAITERS;
        if word != 0
            && (alone || owner == pid)
            && control
                .lock
                .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // SAFETY: FUTEX_WAKE on the aligned u32 of the shared mapping.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    control.lock.as_ptr(),
                    libc::FUTEX_WAKE,
                    i32::MAX,
                );
            }
        }
    }

    /// Tells producers that collection is over: processes still running stop recording.
    pub fn close(&self) {
        self.control().closed.store(1, Ordering::Release);
    }

    /// How often and how long the target's threads waited for room, if they ever did.
    pub fn held(&self) -> Option<Held> {
        let control = self.control();
        let times = control.holds.load(Ordering::Relaxed);
        (times > 0).then(|| Held {
            times,
            secs: control.held_ns.load(Ordering::Relaxed) as f64 / 1e9,
        })
    }
}

impl Drop for SharedRing {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in create(); nothing refers to it any more.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// The ring's loss counters, readable on their own (a second mapping of the control page).
pub struct RingCounters {
    fd: Option<Arc<OwnedFd>>,
}

impl RingCounters {
    /// Calls the library could not record, by kind.
    pub fn read(&self) -> Result<LostCounts> {
        let fd = self.fd.as_ref().context("the capture ring is gone")?;
        // SAFETY: a read-only view of the control page, unmapped before returning.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                DATA_OFFSET,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("cannot map the capture ring");
        }
        // SAFETY: the page holds the control structure.
        let control = unsafe { &*page.cast::<RingControl>() };
        let mut counts = LostCounts::default();
        for kind in EventKind::ALL {
            counts.by_kind[kind as usize] =
                control.unrecorded[kind as usize].load(Ordering::Relaxed);
        }
        counts.stack_errors = control.stack_errors.load(Ordering::Relaxed);
        // SAFETY: unmapping the page mapped above.
        unsafe { libc::munmap(page, DATA_OFFSET) };
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target owns the control page: a size it writes there must not take the reader
    /// outside the mapping.
    #[test]
    fn a_size_the_target_wrote_in_the_control_page_is_not_trusted() {
        let mut ring = SharedRing::create(4096, (0, 0), false).expect("ring");
        // A frame 16 bytes before the end whose record runs 512 bytes on: past the real end,
        // inside the size the target claims.
        let (at, record_bytes) = (4096 - 16, 512u32);
        // SAFETY: the control page and a data word of the ring this test owns.
        unsafe {
            let control = ring.base.cast::<RingControl>();
            std::ptr::addr_of_mut!((*control).data_bytes).write(1 << 20);
            let frame = ring.base.add(DATA_OFFSET + at).cast::<u32>();
            frame.write(record_bytes);
            frame.add(1).write(1);
        }
        let control = ring.control();
        control.read_pos.store(at as u64, Ordering::Release);
        control.write_pos.store(
            at as u64 + frame_bytes(record_bytes as usize),
            Ordering::Release,
        );
        let mut records = 0;
        let malformed = ring.drain(|drained| {
            if let Drained::Record { .. } = drained {
                records += 1;
            }
        });
        assert_eq!((malformed, records), (1, 0));
    }

    /// The target owns the control page: a write position it sets far ahead must not keep the
    /// reader walking the ring round and round, nor a read position it sets move the reader.
    #[test]
    fn positions_the_target_wrote_in_the_control_page_are_not_followed() {
        let mut ring = SharedRing::create(4096, (0, 0), false).expect("ring");
        // Padding frames all the way round: a reader walking to a far write position would
        // go round the ring 2^28 times.
        // SAFETY: data words of the ring this test owns.
        unsafe {
            for at in (0..4096).step_by(16) {
                let frame = ring.base.add(DATA_OFFSET + at).cast::<u32>();
                frame.write(0);
                frame.add(1).write(0);
            }
        }
        let control = ring.control();
        control.write_pos.store(1 << 40, Ordering::Release);
        let started = std::time::Instant::now();
        let malformed = ring.drain(|_| {});
        assert_eq!(malformed, 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Behind the reader: skipped too.
        ring.control().write_pos.store(16, Ordering::Release);
        assert_eq!(ring.drain(|_| {}), 1);
        // A read position written by the target is not where the reader reads from.
        ring.control().read_pos.store(1 << 50, Ordering::Release);
        ring.control().write_pos.store(16, Ordering::Release);
        assert_eq!(ring.drain(|_| {}), 0);
        assert_eq!(ring.read_pos, 16);
    }

    /// The lock's word names its holder from the moment it is taken: a process killed inside
    /// a write leaves a lock memprof can give back, and only that process's.
    #[test]
    fn only_the_holders_lock_is_given_back() {
        let ring = SharedRing::create(4096, (0, 0), true).expect("ring");
        let lock = &ring.control().lock;
        lock.store(4242 | LOCK_WAITERS, Ordering::Release);
        ring.release_lock_of(4243);
        assert_eq!(lock.load(Ordering::Acquire), 4242 | LOCK_WAITERS);
        ring.release_lock_of(4242);
        assert_eq!(lock.load(Ordering::Acquire), 0);
        // A free lock stays free.
        ring.release_lock_of(4242);
        assert_eq!(lock.load(Ordering::Acquire), 0);
    }

    /// A full ring is handed back to its producers as it is read, not once at the drain's end:
    /// a producer waiting for room writes on while memprof works through the backlog.
    #[test]
    fn room_is_handed_back_during_a_long_drain() {
        let data_bytes = 4 * PUBLISH_BYTES;
        let mut ring = SharedRing::create(data_bytes, (0, 0), false).expect("ring");
        let record_bytes = EVENT_HEADER_SIZE;
        let frame = frame_bytes(record_bytes);
        let frames = data_bytes / frame;
        // SAFETY: data words of the ring this test owns: frame headers of zeroed records.
        unsafe {
            for at in (0..frames * frame).step_by(frame as usize) {
                let header = ring.base.add(DATA_OFFSET + at as usize).cast::<u32>();
                header.write(record_bytes as u32);
                header.add(1).write(7);
            }
        }
        ring.control()
            .write_pos
            .store(frames * frame, Ordering::Release);
        let base = ring.base as usize;
        let mut seen = Vec::new();
        let mut records = 0u64;
        ring.drain(|drained| {
            if let Drained::Record { .. } = drained {
                records += 1;
                // SAFETY: the control page of the ring this test owns, mapped during the drain.
                let control = unsafe { &*(base as *const RingControl) };
                let shared = control.read_pos.load(Ordering::Acquire);
                if seen.last() != Some(&shared) {
                    seen.push(shared);
                }
            }
        });
        assert_eq!(records, frames);
        // Handed back after each MiB read: 0, then about 1, 2 and 3 MiB during the drain.
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(
            seen.windows(2)
                .all(|pair| pair[1] - pair[0] >= PUBLISH_BYTES)
        );
        assert_eq!(
            ring.control().read_pos.load(Ordering::Acquire),
            frames * frame
        );
    }
}
