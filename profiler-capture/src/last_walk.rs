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
//! previous walk did: its remaining frames and its ending are taken instead. Checking those
//! words is a few loads per frame against a rule-cache lookup, a module search and a rule.
//!
//! The kept walk is stored outermost frame first: the frames a walk shares with it are its
//! outer ones, a prefix, so joining cuts the kept walk at the shared frame and appends the
//! new walk's own frames, instead of copying the shared ones.

use crate::stack_numbers::{FOLD_START, fold_frame};
use crate::unwind::Outcome;

/// A frame's registers, as the walk reached it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Registers {
    pc: u64,
    sp: u64,
    bp: u64,
}

#[derive(Clone, Copy)]
struct StackRead {
    address: u64,
    value: u64,
}

/// The walk in progress, innermost frame first: the frames not found in the kept walk.
#[derive(Default)]
pub struct Fresh {
    frames: Vec<FreshFrame>,
    reads: Vec<StackRead>,
}

#[derive(Clone, Copy)]
struct FreshFrame {
    registers: Registers,
    /// Index in `reads` of the first word read to unwind this frame.
    reads_from: u32,
}

impl Fresh {
    /// Starts a walk.
    pub fn begin(&mut self) {
        self.frames.clear();
        self.reads.clear();
    }

    /// The walk is at a new frame (before unwinding it).
    #[inline]
    pub fn enter(&mut self, pc: u64, sp: u64, bp: u64) {
        let reads_from = self.reads.len() as u32;
        self.frames.push(FreshFrame {
            registers: Registers { pc, sp, bp },
            reads_from,
        });
    }

    /// Unwinding the current frame read `value` at `address`.
    #[inline]
    pub fn read(&mut self, address: u64, value: u64) {
        self.reads.push(StackRead { address, value });
    }

    /// Frame `index`'s reads.
    fn reads_of(&self, index: usize) -> &[StackRead] {
        let from = self.frames[index].reads_from as usize;
        let to = self
            .frames
            .get(index + 1)
            .map_or(self.reads.len(), |next| next.reads_from as usize);
        &self.reads[from..to]
    }
}

/// The walk kept for the next one to join, outermost frame first.
#[derive(Default)]
pub struct Walk {
    /// The modules' epoch the walk ran under.
    epoch: u64,
    /// The end of the stack it walked: every word it read lies below it, 8-aligned.
    stack_end: u64,
    /// How it ended; `None` for a walk that cannot be joined.
    outcome: Option<Outcome>,
    frames: Vec<KeptFrame>,
    /// The words read, the outermost frame's first.
    reads: Vec<StackRead>,
}

#[derive(Clone, Copy)]
struct KeptFrame {
    registers: Registers,
    /// Where this frame's reads end in `reads`: `reads[..reads_end]` are the words read to
    /// unwind it and every frame above it.
    reads_end: u32,
    /// The fold of the frames' `pc`s from the outermost down to this one ([`fold_frame`]):
    /// a walk joining here folds only its own frames onto it.
    folded: u64,
}

/// Where a walk joins the kept one: the index of the shared frame there.
#[derive(Clone, Copy)]
pub struct Joined(usize);

/// How far a walk's search for a join has come down the kept walk: frames only go up the
/// stack, so it only moves outward. Counts the kept frames not passed yet.
pub struct Cursor(usize);

impl Walk {
    /// A search for a join, from the innermost kept frame.
    pub fn cursor(&self) -> Cursor {
        Cursor(self.frames.len())
    }

    /// The kept frame with registers `(pc, sp, bp)` under the modules' `epoch`, on the stack
    /// ending at `stack_end`, if every word read from it on still holds its value.
    /// `read_word(address)` reads as the new walk would; the words it is asked for are
    /// 8-aligned and below `stack_end` (this walk read them there), so it only has the new
    /// walk's lower bound left to check.
    #[inline]
    pub fn join(
        &self,
        cursor: &mut Cursor,
        (epoch, stack_end): (u64, u64),
        (pc, sp, bp): (u64, u64, u64),
        read_word: impl Fn(u64) -> Result<u64, ()>,
    ) -> Option<Joined> {
        if self.outcome.is_none() || self.epoch != epoch || self.stack_end != stack_end {
            return None;
        }
        while cursor.0 > 0 && self.frames[cursor.0 - 1].registers.sp < sp {
            cursor.0 -= 1;
        }
        let index = cursor.0.checked_sub(1)?;
        let frame = &self.frames[index];
        if frame.registers != (Registers { pc, sp, bp }) {
            return None;
        }
        let unchanged = self.reads[..frame.reads_end as usize]
            .iter()
            .all(|read| read_word(read.address) == Ok(read.value));
        unchanged.then_some(Joined(index))
    }

    /// The return addresses above the joined frame, innermost first.
    pub fn frames_above(&self, joined: Joined) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.frames[..joined.0]
            .iter()
            .rev()
            .map(|frame| frame.registers.pc)
    }

    /// How the walk ended (after a successful [`Walk::join`], always known).
    pub fn outcome(&self) -> Outcome {
        self.outcome.unwrap_or(Outcome::Failed)
    }

    /// Makes this the walk `fresh` became by joining it at `joined`: its frames from there
    /// on, then `fresh`'s (which reached the joined frame but did not enter it).
    pub fn rejoin(&mut self, joined: Joined, fresh: &Fresh) {
        self.frames.truncate(joined.0 + 1);
        self.reads
            .truncate(self.frames[joined.0].reads_end as usize);
        self.append(fresh);
    }

    /// Keeps `fresh`, which ended without joining, as the walk to join.
    pub fn replace(&mut self, fresh: &Fresh, epoch: u64, stack_end: u64, outcome: Outcome) {
        self.epoch = epoch;
        self.stack_end = stack_end;
        self.outcome = Some(outcome);
        self.frames.clear();
        self.reads.clear();
        self.append(fresh);
    }

    /// Appends `fresh`'s frames, outermost first, onto the frames kept.
    fn append(&mut self, fresh: &Fresh) {
        let mut folded = self.frames.last().map_or(FOLD_START, |frame| frame.folded);
        for index in (0..fresh.frames.len()).rev() {
            self.reads.extend_from_slice(fresh.reads_of(index));
            let registers = fresh.frames[index].registers;
            folded = fold_frame(folded, registers.pc);
            self.frames.push(KeptFrame {
                registers,
                reads_end: self.reads.len() as u32,
                folded,
            });
        }
    }

    /// The fold of the `pc`s of its frames (the frames a walk returned, when it was not cut).
    pub fn folded(&self) -> Option<u64> {
        self.outcome?;
        Some(self.frames.last().map_or(FOLD_START, |frame| frame.folded))
    }

    /// The frames kept.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// The walk may no longer be joined.
    pub fn forget(&mut self) {
        self.outcome = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of the stack the tests' walks read.
    const END: u64 = 0x1000;

    /// A fresh walk of frames `(pc, sp)`, innermost first, each read at `sp + 8`, where the
    /// word is `pc + 1`.
    fn fresh(stack: &[(u64, u64)]) -> Fresh {
        let mut fresh = Fresh::default();
        fresh.begin();
        for &(pc, sp) in stack {
            fresh.enter(pc, sp, 0);
            fresh.read(sp + 8, pc + 1);
        }
        fresh
    }

    /// The kept walk of those frames.
    fn kept(stack: &[(u64, u64)]) -> Walk {
        let mut walk = Walk::default();
        walk.replace(&fresh(stack), 7, END, Outcome::Complete);
        walk
    }

    fn pcs(walk: &Walk) -> Vec<u64> {
        walk.frames.iter().map(|frame| frame.registers.pc).collect()
    }

    fn reads(walk: &Walk) -> Vec<(u64, u64)> {
        walk.reads.iter().map(|r| (r.address, r.value)).collect()
    }

    fn fold_all(pcs_innermost_first: &[u64]) -> u64 {
        pcs_innermost_first
            .iter()
            .rev()
            .fold(FOLD_START, |h, &pc| fold_frame(h, pc))
    }

    #[test]
    fn joins_at_the_shared_frame_while_its_words_are_unchanged() {
        let walk = kept(&[(0x10, 0x100), (0x20, 0x110), (0x30, 0x120)]);
        // The words as the walk read them.
        let same = |address: u64| match address {
            0x108 => Ok(0x11),
            0x118 => Ok(0x21),
            0x128 => Ok(0x31),
            _ => Err(()),
        };
        let mut cursor = walk.cursor();
        let joined = walk
            .join(&mut cursor, (7, END), (0x20, 0x110, 0), same)
            .unwrap();
        assert_eq!(walk.frames_above(joined).collect::<Vec<_>>(), [0x30]);
        assert_eq!(walk.outcome(), Outcome::Complete);

        // The words as the walk read them, but the one at `changed`.
        let with_changed = |changed: u64| {
            move |address: u64| {
                if address == changed {
                    Ok(0x99)
                } else {
                    same(address)
                }
            }
        };
        let joins = |read: &dyn Fn(u64) -> Result<u64, ()>| {
            walk.join(&mut walk.cursor(), (7, END), (0x20, 0x110, 0), read)
                .is_some()
        };
        assert!(
            !joins(&with_changed(0x128)),
            "a word above the frame changed: the rest must be walked"
        );
        assert!(
            joins(&with_changed(0x108)),
            "a word below it changed: no matter"
        );
    }

    #[test]
    fn different_registers_modules_or_stacks_do_not_join() {
        let walk = kept(&[(0x10, 0x100), (0x20, 0x110)]);
        let any = |_: u64| Ok(0);
        let same = |address: u64| Ok(if address == 0x108 { 0x11 } else { 0x21 });
        let join = |epoch_end, registers, read: &dyn Fn(u64) -> Result<u64, ()>| {
            walk.join(&mut walk.cursor(), epoch_end, registers, read)
                .is_some()
        };
        assert!(!join((7, END), (0x20, 0x110, 1), &any), "bp");
        assert!(!join((7, END), (0x21, 0x110, 0), &any), "pc");
        assert!(!join((8, END), (0x20, 0x110, 0), &same), "epoch");
        assert!(!join((7, END + 0x1000), (0x20, 0x110, 0), &same), "stack");
        assert!(join((7, END), (0x20, 0x110, 0), &same));
    }

    #[test]
    fn a_forgotten_walk_never_joins() {
        let mut walk = kept(&[(0x10, 0x100)]);
        walk.forget();
        assert!(
            walk.join(&mut walk.cursor(), (7, END), (0x10, 0x100, 0), |_| Ok(0x11))
                .is_none()
        );
        assert_eq!(walk.folded(), None);
    }

    #[test]
    fn a_rejoined_walk_is_the_walk_in_full() {
        let mut walk = kept(&[(0x10, 0x100), (0x20, 0x110), (0x30, 0x120)]);
        // A new walk: two frames of its own, then the kept walk's second frame.
        let own_frames = |walk: &mut Fresh| {
            walk.begin();
            walk.enter(0x5, 0xf0, 0);
            walk.read(0xf8, 0x6);
            walk.read(0xf0, 0x3);
            walk.enter(0x7, 0x100, 0);
            walk.read(0x108, 0x21);
        };
        let mut new = Fresh::default();
        own_frames(&mut new);
        let joined = walk
            .join(&mut walk.cursor(), (7, END), (0x20, 0x110, 0), |address| {
                Ok(if address == 0x118 { 0x21 } else { 0x31 })
            })
            .unwrap();
        walk.rejoin(joined, &new);
        let expected = {
            let mut full = Fresh::default();
            own_frames(&mut full);
            full.enter(0x20, 0x110, 0);
            full.read(0x118, 0x21);
            full.enter(0x30, 0x120, 0);
            full.read(0x128, 0x31);
            let mut walk = Walk::default();
            walk.replace(&full, 7, END, Outcome::Complete);
            walk
        };
        assert_eq!(pcs(&walk), pcs(&expected));
        assert_eq!(pcs(&walk), [0x30, 0x20, 0x7, 0x5]);
        assert_eq!(reads(&walk), reads(&expected));
        let ends = |w: &Walk| w.frames.iter().map(|f| f.reads_end).collect::<Vec<_>>();
        assert_eq!(ends(&walk), ends(&expected));
        assert!(
            walk.frames
                .iter()
                .zip(&expected.frames)
                .all(|(a, b)| a.registers == b.registers)
        );
        assert_eq!(walk.outcome, expected.outcome);
        assert_eq!(walk.folded(), Some(fold_all(&[0x5, 0x7, 0x20, 0x30])));
        assert_eq!(walk.folded(), expected.folded());
    }

    #[test]
    fn a_walk_joining_at_its_first_frame_keeps_only_the_frames_from_there() {
        let mut walk = kept(&[(0x10, 0x100), (0x20, 0x110), (0x30, 0x120)]);
        let joined = walk
            .join(&mut walk.cursor(), (7, END), (0x20, 0x110, 0), |address| {
                Ok(if address == 0x118 { 0x21 } else { 0x31 })
            })
            .unwrap();
        walk.rejoin(joined, &Fresh::default());
        assert_eq!(pcs(&walk), [0x30, 0x20]);
        assert_eq!(reads(&walk), [(0x128, 0x31), (0x118, 0x21)]);
        assert_eq!(walk.folded(), Some(fold_all(&[0x20, 0x30])));
    }
}
