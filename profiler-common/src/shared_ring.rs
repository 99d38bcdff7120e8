//! The ring between the in-process capture library (`libmemprof_capture.so`, preloaded into
//! a target `memprof run` launched) and memprof: a memfd both map, holding a [`RingControl`]
//! page and then a power-of-two data area of framed records.
//!
//! Records are the ones the eBPF probes write in frame-pointer mode ([`crate::EventHeader`],
//! then `stack_depth` return addresses, innermost first), so the collector decodes both paths
//! alike; the library unwinds each stack itself ([`RingControl::stack_mode`]). Each sits in a frame: a `u32` length, the writer's `u32` process id, the
//! record, padding to 8 bytes. A frame never wraps: a length of [`PADDING`] means "skip to the
//! start of the data area".
//!
//! The frame's second word is the id of the process that wrote the record: with
//! [`RingControl::follow_children`] set, every process of the target's tree writes into the
//! one ring (a forked child shares the mapping, an exec'd one maps the inherited descriptor
//! again) and memprof hands each record to its process's collector.
//!
//! Producers (the target's threads) take [`RingControl::lock`], wait while the ring lacks
//! room (sleeping on the [`RingControl::drained`] futex word, which memprof bumps after each
//! drain: nothing is ever dropped), write the frame and publish it by storing `write_pos`
//! with release ordering. memprof reads up to `write_pos` (acquire), then stores `read_pos`.
//! Positions grow without wrapping; offsets are positions modulo the data size.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{EVENT_HEADER_SIZE, MAX_STACK_DEPTH};

/// Environment variable naming the ring's file descriptor in the target.
pub const RING_FD_ENV: &str = "MEMPROF_RING_FD";
/// Environment variable naming the ring as a path (`/proc/MEMPROF_PID/fd/N`), for a process
/// that closed the inherited descriptor before it exec'd (the tree is followed).
pub const RING_PATH_ENV: &str = "MEMPROF_RING_PATH";
/// Name of the memfd the capture library maps for its own memory (`/memfd:NAME` in the
/// target's maps): like the ring, never a root of the leak check.
pub const ARENA_NAME: &core::ffi::CStr = c"memprof-capture-arena";
/// [`RingControl::magic`]: the layout's name and version.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MPRING04");
/// Offset of the data area in the shared file (the control page comes first).
pub const DATA_OFFSET: usize = 4096;
/// Bytes before each record in its frame.
pub const FRAME_HEADER_BYTES: usize = 8;
/// A frame length meaning "the rest of the data area is padding".
pub const PADDING: u32 = 0;
/// The longest record a producer writes.
pub const MAX_RECORD_BYTES: usize = EVENT_HEADER_SIZE + 8 * MAX_STACK_DEPTH;
/// [`RingControl::stack_mode`]: no stacks (`--max-depth 0`).
pub const STACKS_NONE: u32 = 0;
/// [`RingControl::stack_mode`]: unwound in the target with `.eh_frame` (`--unwind dwarf`).
pub const STACKS_EH_FRAME: u32 = 1;
/// [`RingControl::stack_mode`]: the frame-pointer chain, walked in the target (`--unwind fp`).
pub const STACKS_FRAME_POINTERS: u32 = 2;

/// `RingControl::state`: no process has claimed the ring yet.
pub const UNCLAIMED: u32 = 0;

/// The bit of [`RingControl::lock`] saying producers sleep on it (pids stay below 2^22).
pub const LOCK_WAITERS: u32 = 1 << 31;

/// The control page. memprof writes the first fields before the target starts. Unless
/// [`RingControl::follow_children`] is set, the target's first allocation claims the ring for
/// its process ([`RingControl::owner_pid`]), so that processes it starts (which inherit the
/// variable and the descriptor) record nothing.
#[repr(C, align(64))]
pub struct RingControl {
    pub magic: u64,
    /// Size of the data area (a power of two).
    pub data_bytes: u64,
    /// The process that records: 0 until the first allocation claims it.
    pub owner_pid: AtomicU32,
    /// memprof: a producer that has waited for room for a second checks it is still alive,
    /// and stops recording if not (nothing would ever drain the ring again).
    pub collector_pid: u32,
    /// Non-zero: every process that maps the ring records (`run` following the process tree);
    /// zero: only the one that claims it.
    pub follow_children: u32,
    /// Set by memprof when collection is over: producers stop recording at once (a process
    /// left running, detached, must not wait for a drain that will never come).
    pub closed: AtomicU32,
    /// How the library captures each allocation's stack: one of [`STACKS_NONE`],
    /// [`STACKS_EH_FRAME`], [`STACKS_FRAME_POINTERS`].
    pub stack_mode: u32,
    /// Deepest stack recorded, in frames (1..=`MAX_STACK_DEPTH`).
    pub max_depth: u32,
    _config_pad: [u8; 24],

    /// Bytes published so far (producers, under `lock`).
    pub write_pos: AtomicU64,
    /// 0 free; taken: the pid of the process holding it, with [`LOCK_WAITERS`] set when
    /// others sleep on it (a futex word). The owner is in the word taken, not written after:
    /// memprof frees the lock of a process that died or exec'd inside a write, and only of
    /// that one.
    pub lock: AtomicU32,
    /// Producers sleeping until memprof drains.
    pub waiters: AtomicU32,
    /// Times a producer found the ring full and waited: the counterpart of the eBPF path's
    /// held threads.
    pub holds: AtomicU64,
    /// Nanoseconds producers spent waiting for room, summed.
    pub held_ns: AtomicU64,
    _producer_pad: [u8; 32],

    /// Bytes consumed so far (memprof).
    pub read_pos: AtomicU64,
    /// Bumped by memprof after each drain: the futex word full producers sleep on.
    pub drained: AtomicU32,
    /// The event clock's anchor ([`TscAnchor`]), behind a sequence count memprof makes odd
    /// while it writes it. Next to `read_pos`, which producers read on every write anyway.
    pub clock_seq: AtomicU32,
    pub clock_tsc: AtomicU64,
    pub clock_ns: AtomicU64,
    /// 0: no anchor (producers read CLOCK_MONOTONIC).
    pub clock_ns_per_tick: AtomicU64,
    _consumer_pad: [u8; 24],

    /// Calls that could not be recorded, by event kind: memprof went away while the ring was
    /// full. (A call made while its thread is inside a hook, by the allocator itself or by a
    /// signal handler, belongs to that call and is not recorded, as on the probe path.)
    pub unrecorded: [AtomicU64; crate::KIND_SLOTS as usize],
    /// Stacks the library could not unwind to their root or the depth limit (no rule for an
    /// address, a frame outside the stack): recorded with the frames found, marked truncated.
    pub stack_errors: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<RingControl>() == 192 + 192);
const _: () = assert!(core::mem::size_of::<RingControl>() <= DATA_OFFSET);

/// How producers turn the CPU's time-stamp counter into CLOCK_MONOTONIC nanoseconds, as
/// memprof measured it: `ns` at `tsc`, and the nanoseconds per tick in 32.32 fixed point.
///
/// Reading the TSC costs a third of `clock_gettime` (which reads it too, ordered, then scales
/// it the same way from the kernel's anchor); memprof publishes an anchor only where the
/// kernel's own clock source is the TSC, re-anchors it at every drain and measures the rate
/// over the whole session, so a converted time strays from the clock's by nanoseconds, far
/// below the microsecond events are kept at (`profiler_core::event::CLOCK_TICK_NS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscAnchor {
    pub tsc: u64,
    pub ns: u64,
    pub ns_per_tick: u64,
}

impl TscAnchor {
    /// CLOCK_MONOTONIC nanoseconds at counter value `tsc` (before or after the anchor).
    #[inline]
    pub const fn ns_at(&self, tsc: u64) -> u64 {
        let ticks = tsc.wrapping_sub(self.tsc) as i64 as i128;
        // Rounded to the nearest nanosecond.
        let ns = self.ns as i128 + ((ticks * self.ns_per_tick as i128 + (1 << 31)) >> 32);
        if ns < 0 { 0 } else { ns as u64 }
    }

    /// The anchor `ns` at `tsc` with the rate measured since `(start_tsc, start_ns)`; `None`
    /// if the counter did not move forward.
    pub const fn measured(start_tsc: u64, start_ns: u64, tsc: u64, ns: u64) -> Option<TscAnchor> {
        if tsc <= start_tsc || ns <= start_ns {
            return None;
        }
        let ns_per_tick = (((ns - start_ns) as u128) << 32) / (tsc - start_tsc) as u128;
        if ns_per_tick == 0 || ns_per_tick > u64::MAX as u128 {
            return None;
        }
        Some(TscAnchor {
            tsc,
            ns,
            ns_per_tick: ns_per_tick as u64,
        })
    }
}

impl RingControl {
    /// A fresh control page for a data area of `data_bytes` (a power of two).
    pub const fn new(
        data_bytes: u64,
        stacks: (u32, u32),
        collector_pid: u32,
        follow_children: bool,
    ) -> RingControl {
        let (stack_mode, max_depth) = stacks;
        RingControl {
            magic: MAGIC,
            data_bytes,
            stack_mode,
            max_depth,
            owner_pid: AtomicU32::new(UNCLAIMED),
            collector_pid,
            follow_children: follow_children as u32,
            closed: AtomicU32::new(0),
            _config_pad: [0; 24],
            write_pos: AtomicU64::new(0),
            lock: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            holds: AtomicU64::new(0),
            held_ns: AtomicU64::new(0),
            _producer_pad: [0; 32],
            read_pos: AtomicU64::new(0),
            drained: AtomicU32::new(0),
            clock_seq: AtomicU32::new(0),
            clock_tsc: AtomicU64::new(0),
            clock_ns: AtomicU64::new(0),
            clock_ns_per_tick: AtomicU64::new(0),
            _consumer_pad: [0; 24],
            unrecorded: [const { AtomicU64::new(0) }; crate::KIND_SLOTS as usize],
            stack_errors: AtomicU64::new(0),
        }
    }

    /// The event clock's anchor, if memprof published one and is not rewriting it now.
    #[inline]
    pub fn tsc_anchor(&self) -> Option<TscAnchor> {
        let seq = self.clock_seq.load(Ordering::Acquire);
        let ns_per_tick = self.clock_ns_per_tick.load(Ordering::Relaxed);
        if seq & 1 != 0 || ns_per_tick == 0 {
            return None;
        }
        let anchor = TscAnchor {
            tsc: self.clock_tsc.load(Ordering::Relaxed),
            ns: self.clock_ns.load(Ordering::Relaxed),
            ns_per_tick,
        };
        core::sync::atomic::fence(Ordering::Acquire);
        (self.clock_seq.load(Ordering::Relaxed) == seq).then_some(anchor)
    }

    /// Publishes `anchor` (memprof: the only writer).
    pub fn set_tsc_anchor(&self, anchor: TscAnchor) {
        let seq = self.clock_seq.load(Ordering::Relaxed);
        self.clock_seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Release);
        self.clock_tsc.store(anchor.tsc, Ordering::Relaxed);
        self.clock_ns.store(anchor.ns, Ordering::Relaxed);
        self.clock_ns_per_tick
            .store(anchor.ns_per_tick, Ordering::Relaxed);
        self.clock_seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

/// Bytes a record of `record_bytes` takes in the ring, frame included.
pub const fn frame_bytes(record_bytes: usize) -> u64 {
    (FRAME_HEADER_BYTES + ((record_bytes + 7) & !7)) as u64
}

/// Where a frame of `frame` bytes goes when `write_pos` is published and `read_pos` consumed:
/// `Some(padding)` (bytes to skip first, up to the end of the data area) when it fits now,
/// `None` when the producer must wait for memprof to drain.
pub const fn place(write_pos: u64, read_pos: u64, data_bytes: u64, frame: u64) -> Option<u64> {
    let offset = write_pos & (data_bytes - 1);
    let padding = if offset + frame > data_bytes {
        data_bytes - offset
    } else {
        0
    };
    let used = write_pos - read_pos;
    if used + padding + frame <= data_bytes {
        Some(padding)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anchor_converts_ticks_at_the_measured_rate() {
        // 3 GHz: a third of a nanosecond per tick.
        let anchor = TscAnchor::measured(1_000, 5_000, 3_001_000, 1_005_000).unwrap();
        assert_eq!(anchor.ns_at(3_001_000), 1_005_000);
        assert_eq!(anchor.ns_at(6_001_000), 2_005_000);
        // Before the anchor (a record read before memprof re-anchored), and before 0.
        assert_eq!(anchor.ns_at(1_000), 5_000);
        assert_eq!(anchor.ns_at(0), 4_667);
        let early = TscAnchor { ns: 10, ..anchor };
        assert_eq!(early.ns_at(1_000), 0);
        // A counter that did not move gives no anchor.
        assert_eq!(TscAnchor::measured(5, 5, 5, 9), None);
        assert_eq!(TscAnchor::measured(5, 9, 7, 9), None);
    }

    #[test]
    fn an_anchor_is_read_only_whole() {
        let control = RingControl::new(1 << 20, (0, 0), 1, false);
        assert_eq!(control.tsc_anchor(), None, "none published");
        let anchor = TscAnchor {
            tsc: 7,
            ns: 11,
            ns_per_tick: 1 << 31,
        };
        control.set_tsc_anchor(anchor);
        assert_eq!(control.tsc_anchor(), Some(anchor));
        // A write in progress (odd count): producers read the clock instead.
        control.clock_seq.fetch_add(1, Ordering::Relaxed);
        assert_eq!(control.tsc_anchor(), None);
    }

    #[test]
    fn frames_are_whole_words() {
        assert_eq!(frame_bytes(56), 64);
        assert_eq!(frame_bytes(57), 72);
        assert_eq!(frame_bytes(MAX_RECORD_BYTES), 8 + MAX_RECORD_BYTES as u64);
    }

    #[test]
    fn a_frame_never_wraps_and_never_overtakes_the_reader() {
        // Fits at the start.
        assert_eq!(place(0, 0, 1024, 64), Some(0));
        // Would cross the end: padded to the start, if the reader is far enough.
        assert_eq!(place(1000, 1000, 1024, 64), Some(24));
        assert_eq!(place(1000, 990, 1024, 64), Some(24));
        // The padded frame would reach unread bytes.
        assert_eq!(place(1000, 20, 1024, 64), None);
        // Full.
        assert_eq!(place(1024, 0, 1024, 8), None);
        assert_eq!(place(1016, 0, 1024, 8), Some(0));
    }
}
