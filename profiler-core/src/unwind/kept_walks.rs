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
//! under the same module set, computes what the previous walk computed for each frame from
//! there whose reads give the same results in this snapshot (the same word, or unreadable
//! again): it takes those frames (and the previous walk's ending, if all of its frames hold),
//! and unwinds on from the first frame whose reads differ.
//!
//! `%rbp` is a data register in code built without frame pointers, so two walks through the
//! same frames often reach them with different values in it until a frame restores it from the
//! stack. A frame whose rule neither reads `%rbp` nor lets an outer rule read it ([`BpUse`]:
//! it passes it through to a frame that restores it) unwinds the same whatever it holds: a
//! join is allowed there with `%rbp` differing.

use framehop::Error as FrameError;

use crate::fasthash::FastHashMap;

/// Threads whose walks are kept at most; past it they are all forgotten (threads come and go,
/// their last walks must not pile up).
const MAX_THREADS: usize = 1024;

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

/// What a frame's unwind rule does with the `%rbp` it is reached with (rules depend on the
/// frame's pc alone: the unwinder learns this once per pc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BpUse {
    /// Unknown, or read: the frame's unwinding depends on it.
    Reads,
    /// Neither read nor changed: the caller is reached with the same `%rbp`.
    PassesOn,
    /// Replaced by a word read from the stack, unread otherwise.
    Restores,
}

#[derive(Clone, Copy, Debug)]
struct KeptFrame {
    registers: Registers,
    /// Index in the walk's reads of the first read made to unwind this frame.
    reads_from: u32,
    bp_use: BpUse,
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
            bp_use: BpUse::Reads,
        });
    }

    /// What the frame entered last does with `%rbp`.
    pub fn set_bp_use(&mut self, bp_use: BpUse) {
        if let Some(frame) = self.frames.last_mut() {
            frame.bp_use = bp_use;
        }
    }

    /// The addresses the frame entered last has read so far.
    pub fn last_frame_reads(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        let from = self
            .frames
            .last()
            .map_or(0, |frame| frame.reads_from as usize);
        self.reads[from..].iter().map(|read| read.address)
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

    /// Asks the CPU to bring the words of `stack` (the snapshot's bytes from `start`) this
    /// walk read into the cache, all at once: the snapshot was just written by another CPU
    /// (the kernel's ring), and checking the reads one after the other waited on each line in
    /// turn (half of [`Walk::join`]'s time under `attach` on redis). Only a hint.
    pub fn prefetch_reads(&self, stack: &[u8], start: u64) {
        for read in &self.reads {
            let offset = read.address.wrapping_sub(start);
            if offset < stack.len() as u64 {
                let line = stack[offset as usize..].as_ptr().cast::<i8>();
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a prefetch reads nothing the program sees and cannot fault.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(line, std::arch::x86_64::_MM_HINT_T0);
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = line;
            }
        }
    }

    /// Where a walk at a frame with `registers` can take frames from this kept walk (made under
    /// `module_epoch`, or none is): from the kept frame with those registers (`%rbp` aside
    /// where no rule reads it) on, as far as each frame's reads give the same now through
    /// `read`.
    pub fn join(
        &self,
        cursor: &mut usize,
        registers: Registers,
        module_epoch: u64,
        read: impl Fn(u64) -> Option<u64>,
    ) -> Option<Join> {
        if self.module_epoch != module_epoch || self.ending.is_none() {
            return None;
        }
        // Frames lie ever higher on the stack: the cursor only moves outward.
        while *cursor < self.frames.len() && self.frames[*cursor].registers.sp < registers.sp {
            *cursor += 1;
        }
        let index = (*cursor..self.frames.len())
            .take_while(|&index| self.frames[index].registers.sp == registers.sp)
            .find(|&index| self.frames[index].registers.pc == registers.pc)?;
        let mut bp_differs = self.frames[index].registers.bp != registers.bp;
        let mut until = index;
        while until < self.frames.len() {
            let frame = &self.frames[until];
            if bp_differs && frame.bp_use == BpUse::Reads {
                break;
            }
            let reads_end = self
                .frames
                .get(until + 1)
                .map_or(self.reads.len(), |next| next.reads_from as usize);
            let reads = &self.reads[frame.reads_from as usize..reads_end];
            if !reads.iter().all(|kept| read(kept.address) == kept.value) {
                break;
            }
            if frame.bp_use == BpUse::Restores {
                bp_differs = false;
            }
            until += 1;
        }
        (until > index).then(|| {
            let bp = match self.frames.get(until) {
                Some(frame) if !bp_differs => frame.registers.bp,
                _ => registers.bp,
            };
            Join {
                index,
                until,
                bp,
                walk_bp: registers.bp,
            }
        })
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// The registers frame `index` was reached with (`%rbp` aside: see [`Join::bp`]).
    pub fn registers(&self, index: usize) -> Registers {
        self.frames[index].registers
    }

    /// The pcs of frames `from..to`.
    pub fn pcs(&self, from: usize, to: usize) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.frames[from..to].iter().map(|frame| frame.registers.pc)
    }

    pub fn ending(&self) -> Option<Ending> {
        self.ending
    }

    /// Appends `kept`'s frames `join.index..join.until`, with the reads that unwound them, and
    /// when they are all of its frames, its ending: this walk joined it.
    pub fn take(&mut self, kept: &Walk, join: &Join) {
        let from = kept.frames[join.index].reads_from;
        let to = kept
            .frames
            .get(join.until)
            .map_or(kept.reads.len(), |frame| frame.reads_from as usize);
        let base = self.reads.len() as u32;
        // The %rbp this walk reached the joined frame with is the one of each frame that passes
        // it on, up to the first that restores it.
        let mut passed_on = true;
        self.frames
            .extend(kept.frames[join.index..join.until].iter().map(|frame| {
                let mut registers = frame.registers;
                if passed_on {
                    registers.bp = join.walk_bp;
                    passed_on = frame.bp_use == BpUse::PassesOn;
                }
                KeptFrame {
                    registers,
                    reads_from: frame.reads_from - from + base,
                    bp_use: frame.bp_use,
                }
            }));
        self.reads.extend_from_slice(&kept.reads[from as usize..to]);
        if join.until == kept.frames.len() {
            self.ending = kept.ending;
        }
    }
}

/// Frames `index..until` of a kept walk unwind alike in the walk joining it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Join {
    pub index: usize,
    pub until: usize,
    /// The `%rbp` frame `until` is reached with (if it is a frame).
    pub bp: u64,
    /// The `%rbp` the joining walk reached frame `index` with.
    pub walk_bp: u64,
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
