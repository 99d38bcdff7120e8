//! The previous stack walk, so that the next one can stop at the first frame both share and
//! take the rest from it. A program's consecutive allocations mostly come from one deep call
//! path (python3: ~18 frames per allocation, most of them the interpreter's, shared with the
//! allocation before), and walking those frames again was most of the hook's time.
//!
//! Sound without guessing which frames "are the same": unwinding from a frame is a function
//! of its registers (ip, sp, bp: framehop's rules read no other), the modules' rules and the
//! stack words it reads. A walk that reaches a frame whose registers equal those of a frame of
//! the previous walk, under the same modules, where every stack word the previous walk read
//! from that frame on still holds the value it read, would read and compute exactly what the
//! previous walk did: its remaining frames and its ending are copied instead. Checking those
//! words is a few loads per frame against a rule-cache lookup, a module search and a rule.

use crate::stack_numbers::{FOLD_START, fold_frame};
use crate::unwind::Outcome;

/// One walk: the registers at each frame and every stack word read, in order.
#[derive(Default)]
pub struct Walk {
    /// The modules' epoch the walk ran under.
    epoch: u64,
    /// The end of the stack it walked: every word it read lies below it, 8-aligned.
    stack_end: u64,
    /// How it ended; `None` while it is written, and for a walk that cannot be joined.
    outcome: Option<Outcome>,
    frames: Vec<FrameState>,
    reads: Vec<StackRead>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FrameState {
    pc: u64,
    sp: u64,
    bp: u64,
    /// Index in `reads` of the first word read to unwind this frame.
    reads_from: u32,
    /// The fold of the frames' `pc`s from the outermost down to this one
    /// ([`fold_frame`]), once the walk ended: a walk joining here folds only its own frames.
    folded: u64,
}

#[derive(Clone, Copy)]
struct StackRead {
    address: u64,
    value: u64,
}

/// Where a walk joins the previous one: the index of the shared frame there.
#[derive(Clone, Copy)]
pub struct Joined(usize);

impl Walk {
    /// Starts recording a walk of the stack ending at `stack_end` under the modules' `epoch`.
    pub fn begin(&mut self, epoch: u64, stack_end: u64) {
        self.epoch = epoch;
        self.stack_end = stack_end;
        self.outcome = None;
        self.frames.clear();
        self.reads.clear();
    }

    /// The walk is at a new frame (before unwinding it).
    #[inline]
    pub fn enter(&mut self, pc: u64, sp: u64, bp: u64) {
        let reads_from = self.reads.len() as u32;
        self.frames.push(FrameState {
            pc,
            sp,
            bp,
            reads_from,
            folded: 0,
        });
    }

    /// Unwinding the current frame read `value` at `address`.
    #[inline]
    pub fn read(&mut self, address: u64, value: u64) {
        self.reads.push(StackRead { address, value });
    }

    /// The walk may no longer be joined.
    pub fn forget(&mut self) {
        self.outcome = None;
    }

    /// The walk ended, and may be joined.
    pub fn end(&mut self, outcome: Outcome) {
        self.fold_frames(self.frames.len(), FOLD_START);
        self.outcome = Some(outcome);
    }

    /// Folds the first `count` frames, from the last of them in, onto `outer`.
    fn fold_frames(&mut self, count: usize, outer: u64) {
        let mut folded = outer;
        for frame in self.frames[..count].iter_mut().rev() {
            folded = fold_frame(folded, frame.pc);
            frame.folded = folded;
        }
    }

    /// The fold of all its frames' `pc`s (the frames a walk returned, in a walk that was not
    /// cut), once it ended.
    pub fn folded(&self) -> Option<u64> {
        self.outcome?;
        Some(self.frames.first().map_or(FOLD_START, |frame| frame.folded))
    }

    /// The frame of this (previous) walk with registers `(pc, sp, bp)` under the modules'
    /// `epoch`, on the stack ending at `stack_end`, if every word read from it on still holds
    /// its value. `cursor` carries the search along one walk: frames only go up the stack, so
    /// it only moves forward. `read_word(address)` reads as the new walk would; the words it
    /// is asked for are 8-aligned and below `stack_end` (this walk read them there), so it
    /// only has the new walk's lower bound left to check.
    #[inline]
    pub fn join(
        &self,
        cursor: &mut usize,
        (epoch, stack_end): (u64, u64),
        (pc, sp, bp): (u64, u64, u64),
        read_word: impl Fn(u64) -> Result<u64, ()>,
    ) -> Option<Joined> {
        if self.outcome.is_none() || self.epoch != epoch || self.stack_end != stack_end {
            return None;
        }
        while self.frames.get(*cursor).is_some_and(|frame| frame.sp < sp) {
            *cursor += 1;
        }
        let frame = self.frames.get(*cursor)?;
        if (frame.pc, frame.sp, frame.bp) != (pc, sp, bp) {
            return None;
        }
        let unchanged = self.reads[frame.reads_from as usize..]
            .iter()
            .all(|read| read_word(read.address) == Ok(read.value));
        unchanged.then_some(Joined(*cursor))
    }

    /// The return addresses above the joined frame, outermost last.
    pub fn frames_above(&self, joined: Joined) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.frames[joined.0 + 1..].iter().map(|frame| frame.pc)
    }

    /// How the walk ended (after a successful [`Walk::join`], always known).
    pub fn outcome(&self) -> Outcome {
        self.outcome.unwrap_or(Outcome::Failed)
    }

    /// Completes this walk (which reached `previous`'s joined frame, not entered yet) with
    /// `previous`'s frames and reads from there on: the walk as a full unwinding would have
    /// recorded it.
    pub fn complete_from(&mut self, previous: &Walk, joined: Joined) {
        let own = self.frames.len();
        let from = previous.frames[joined.0].reads_from as usize;
        let shift = self.reads.len() as i64 - from as i64;
        self.frames
            .extend(previous.frames[joined.0..].iter().map(|frame| FrameState {
                reads_from: (frame.reads_from as i64 + shift) as u32,
                ..*frame
            }));
        self.reads.extend_from_slice(&previous.reads[from..]);
        self.fold_frames(own, previous.frames[joined.0].folded);
        self.outcome = previous.outcome;
    }

    /// Whether nothing was recorded since [`Walk::begin`].
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames entered.
    pub fn len(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of the stack the tests' walks read.
    const END: u64 = 0x1000;

    /// A walk of three frames, each read at `sp - 8` (its return address).
    fn three_frames(stack: &[(u64, u64)]) -> Walk {
        let mut walk = Walk::default();
        walk.begin(7, END);
        for &(pc, sp) in stack {
            walk.enter(pc, sp, 0);
            walk.read(sp + 8, pc + 1);
        }
        walk.end(Outcome::Complete);
        walk
    }

    #[test]
    fn joins_at_the_shared_frame_while_its_words_are_unchanged() {
        let walk = three_frames(&[(0x10, 0x100), (0x20, 0x110), (0x30, 0x120)]);
        // The words as the walk read them.
        let same = |address: u64| match address {
            0x108 => Ok(0x11),
            0x118 => Ok(0x21),
            0x128 => Ok(0x31),
            _ => Err(()),
        };
        let mut cursor = 0;
        let joined = walk
            .join(&mut cursor, (7, END), (0x20, 0x110, 0), same)
            .unwrap();
        assert_eq!(walk.frames_above(joined).collect::<Vec<_>>(), [0x30]);
        assert_eq!(walk.outcome(), Outcome::Complete);

        // A word above the frame changed: the rest must be walked.
        let changed = |address: u64| {
            if address == 0x128 {
                Ok(0x99)
            } else {
                same(address)
            }
        };
        let mut cursor = 0;
        assert!(
            walk.join(&mut cursor, (7, END), (0x20, 0x110, 0), changed)
                .is_none()
        );
        // A word below it changed: no matter.
        let below = |address: u64| {
            if address == 0x108 {
                Ok(0x99)
            } else {
                same(address)
            }
        };
        let mut cursor = 0;
        assert!(
            walk.join(&mut cursor, (7, END), (0x20, 0x110, 0), below)
                .is_some()
        );
    }

    #[test]
    fn different_registers_modules_or_stacks_do_not_join() {
        let walk = three_frames(&[(0x10, 0x100), (0x20, 0x110)]);
        let any = |_: u64| Ok(0);
        let same = |address: u64| Ok(if address == 0x108 { 0x11 } else { 0x21 });
        assert!(
            walk.join(&mut 0, (7, END), (0x20, 0x110, 1), any).is_none(),
            "bp"
        );
        assert!(
            walk.join(&mut 0, (7, END), (0x21, 0x110, 0), any).is_none(),
            "pc"
        );
        assert!(
            walk.join(&mut 0, (8, END), (0x20, 0x110, 0), same)
                .is_none(),
            "epoch"
        );
        assert!(
            walk.join(&mut 0, (7, END + 0x1000), (0x20, 0x110, 0), same)
                .is_none(),
            "another stack"
        );
        assert!(
            walk.join(&mut 0, (7, END), (0x20, 0x110, 0), same)
                .is_some()
        );
    }

    #[test]
    fn a_walk_being_written_never_joins() {
        let mut walk = three_frames(&[(0x10, 0x100)]);
        walk.begin(7, END);
        walk.enter(0x10, 0x100, 0);
        walk.read(0x108, 0x11);
        assert!(
            walk.join(&mut 0, (7, END), (0x10, 0x100, 0), |_| Ok(0x11))
                .is_none()
        );
    }

    #[test]
    fn a_completed_walk_is_the_walk_in_full() {
        let previous = three_frames(&[(0x10, 0x100), (0x20, 0x110), (0x30, 0x120)]);
        let mut walk = Walk::default();
        walk.begin(7, END);
        walk.enter(0x5, 0xf0, 0);
        walk.read(0xf8, 0x21);
        walk.read(0xf0, 0x3);
        let joined = previous
            .join(&mut 0, (7, END), (0x20, 0x110, 0), |address| {
                Ok(if address == 0x118 { 0x21 } else { 0x31 })
            })
            .unwrap();
        walk.complete_from(&previous, joined);
        let expected = {
            let mut full = Walk::default();
            full.begin(7, END);
            full.enter(0x5, 0xf0, 0);
            full.read(0xf8, 0x21);
            full.read(0xf0, 0x3);
            full.enter(0x20, 0x110, 0);
            full.read(0x118, 0x21);
            full.enter(0x30, 0x120, 0);
            full.read(0x128, 0x31);
            full.end(Outcome::Complete);
            full
        };
        assert!(walk.frames == expected.frames);
        let fold_all = |pcs: &[u64]| {
            pcs.iter()
                .rev()
                .fold(FOLD_START, |h, &pc| fold_frame(h, pc))
        };
        assert_eq!(walk.folded(), Some(fold_all(&[0x5, 0x20, 0x30])));
        assert_eq!(expected.folded(), walk.folded());
        let reads = |w: &Walk| {
            w.reads
                .iter()
                .map(|r| (r.address, r.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(reads(&walk), reads(&expected));
        assert_eq!(walk.outcome, expected.outcome);
    }
}
