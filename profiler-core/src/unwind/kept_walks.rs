//! Each thread's previous walk, so that its next one can stop at the first frame both share
//! and take the rest from it. A thread's consecutive allocations mostly come from one deep
//! call path (sqlite3 under `run --capture uprobes`: unwinding was half of the collector's
//! time), and walking those frames again repeated the same work. The capture library joins
//! its walks the same way (`profiler-capture/src/last_walk.rs`).
//!
//! Sound without guessing which frames "are the same": unwinding a frame is a function of its
//! registers (pc, sp, bp: framehop's rules read no other), of the module set and of the stack
//! words it reads (framehop reads the stack only through the unwinder's read function). A
//! walk that reaches a frame whose registers equal those of a frame of the previous walk,
//! under the same module set, where every read the previous walk made from that frame on gives
//! the same result in this snapshot (the same word, or unreadable again), would compute
//! exactly what the previous walk computed from there: its remaining frames and its ending.

use framehop::Error as FrameError;

use crate::fasthash::FastHashMap;

/// Threads whose walks are kept at most; past it they are all forgotten (threads come and go,
/// their last walks must not pile up).
const MAX_THREADS: usize = 4096;

/// A frame's registers as the walk reached it, before unwinding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Registers {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
}

/// One read of the stack and what it gave (None: outside the copied bytes).
#[derive(Clone, Copy, Debug)]
struct StackRead {
    address: u64,
    value: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct KeptFrame {
    registers: Registers,
    /// Index in the walk's reads of the first read made to unwind this frame.
    reads_from: u32,
}

/// How a walk ended after its last frame, before the snapshot's limits say what that means
/// (a failed read past a cut copy is a cut stack, not an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// The last frame has no caller.
    Root,
    /// The last frame has a caller, not kept: the depth limit.
    Deeper,
    Error(FrameError),
}

/// One walk: its frames innermost first, every read it made in order, its ending.
#[derive(Debug, Default)]
pub(super) struct Walk {
    module_epoch: u64,
    frames: Vec<KeptFrame>,
    reads: Vec<StackRead>,
    ending: Option<Ending>,
}

impl Walk {
    pub fn begin(&mut self, module_epoch: u64) {
        self.module_epoch = module_epoch;
        self.frames.clear();
        self.reads.clear();
        self.ending = None;
    }

    /// The walk is at a new frame (before unwinding it).
    #[inline]
    pub fn enter(&mut self, registers: Registers) {
        self.frames.push(KeptFrame {
            registers,
            reads_from: self.reads.len() as u32,
        });
    }

    /// Reads the word at `address` through `read` and remembers what it gave.
    #[inline]
    pub fn read(&mut self, address: u64, read: impl Fn(u64) -> Option<u64>) -> Option<u64> {
        let value = read(address);
        self.reads.push(StackRead { address, value });
        value
    }

    pub fn end(&mut self, ending: Ending) {
        self.ending = Some(ending);
    }

    /// The kept walk's frame with `registers`, if every read made from it on gives the same
    /// now (through `read`) and the walk was made under `module_epoch`: its index.
    pub fn joinable_at(
        &self,
        cursor: &mut usize,
        registers: Registers,
        module_epoch: u64,
        read: impl Fn(u64) -> Option<u64>,
    ) -> Option<usize> {
        if self.module_epoch != module_epoch || self.ending.is_none() {
            return None;
        }
        // Frames lie ever higher on the stack: the cursor only moves outward.
        while *cursor < self.frames.len() && self.frames[*cursor].registers.sp < registers.sp {
            *cursor += 1;
        }
        let same = self.frames[*cursor..]
            .iter()
            .take_while(|frame| frame.registers.sp == registers.sp)
            .position(|frame| frame.registers == registers)?;
        let index = *cursor + same;
        let from = self.frames[index].reads_from as usize;
        self.reads[from..]
            .iter()
            .all(|kept| read(kept.address) == kept.value)
            .then_some(index)
    }

    /// The pcs of frames `index..` (the first is the frame joined at).
    pub fn pcs_from(&self, index: usize) -> impl Iterator<Item = u64> + '_ {
        self.frames[index..].iter().map(|frame| frame.registers.pc)
    }

    pub fn frames_from(&self, index: usize) -> usize {
        self.frames.len() - index
    }

    pub fn ending(&self) -> Option<Ending> {
        self.ending
    }

    /// Appends `kept`'s frames from `index` on, their reads and its ending: this walk joined
    /// it there.
    pub fn take_rest(&mut self, kept: &Walk, index: usize) {
        let from = kept.frames[index].reads_from;
        let base = self.reads.len() as u32;
        self.frames
            .extend(kept.frames[index..].iter().map(|frame| KeptFrame {
                registers: frame.registers,
                reads_from: frame.reads_from - from + base,
            }));
        self.reads.extend_from_slice(&kept.reads[from as usize..]);
        self.ending = kept.ending;
    }
}

/// The last whole walk of each thread.
#[derive(Debug, Default)]
pub(super) struct KeptWalks {
    by_thread: FastHashMap<u32, Walk>,
}

impl KeptWalks {
    pub fn get(&self, thread: u32) -> Option<&Walk> {
        self.by_thread.get(&thread)
    }

    /// Keeps `walk` as `thread`'s last; `walk` is left holding the one it replaces (its buffers
    /// are reused).
    pub fn keep(&mut self, thread: u32, walk: &mut Walk) {
        if let Some(kept) = self.by_thread.get_mut(&thread) {
            std::mem::swap(kept, walk);
            return;
        }
        if self.by_thread.len() >= MAX_THREADS {
            self.by_thread.clear();
        }
        self.by_thread.insert(thread, std::mem::take(walk));
    }
}
