//! The stacks this process has sent, by number: a stack seen before goes into the ring as
//! its number (8 bytes) instead of its frames (python3's are 60 deep: 480 bytes), and the
//! collector looks it up instead of hashing it again (`FLAG_STACK_NUMBERED`).
//!
//! The ring's bytes were most of what the in-process path cost memprof: on python3 with
//! `PYTHONMALLOC=malloc` (21.8 million records) copying them out of the ring and reading the
//! frames' cache lines took a quarter of the collector's time (`perf`), and the collector is
//! what the target waits on when the ring fills.
//!
//! Numbers count up from 0 in each process image. The record that defines a number is
//! written while the table's write lock is held and the number is added to the table only
//! after, so no thread can send a number before its definition is in the ring. A thread that
//! finds the lock taken sends its frames whole, unnumbered: correct, only larger. A forked
//! child starts over at 0 (its records name its own pid and go to its own heap), and so does
//! an exec'd program (the library starts afresh).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::fork_safe::ForkSafeLock;

/// Most stacks numbered; past them, stacks are sent whole.
const MAX_STACKS: usize = 1 << 20;
/// Most frames kept over all numbered stacks (64 MiB); past them, stacks are sent whole.
const MAX_WORDS: usize = 8 << 20;
/// No next stack with the same hash.
const NONE: u32 = u32::MAX;

/// How one stack goes into the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numbered {
    /// Sent before as this number.
    Known(u64),
    /// To be defined as this number by the record written now.
    New(u64),
    /// Sent whole, without a number.
    Unnumbered,
}

struct Span {
    start: u32,
    len: u32,
    truncated: bool,
    /// The next stack whose hash is the same (or [`NONE`]).
    next: u32,
}

struct Stacks {
    /// The most recent number of each hash.
    by_hash: HashMap<u64, u32, BuildHasherDefault<Passthrough>>,
    spans: Vec<Span>,
    words: Vec<u64>,
}

impl Stacks {
    const fn new() -> Stacks {
        Stacks {
            by_hash: HashMap::with_hasher(BuildHasherDefault::new()),
            spans: Vec::new(),
            words: Vec::new(),
        }
    }

    fn find(&self, hash: u64, frames: &[u64], truncated: bool) -> Option<u64> {
        let mut number = *self.by_hash.get(&hash)?;
        while number != NONE {
            let span = &self.spans[number as usize];
            let start = span.start as usize;
            if span.truncated == truncated
                && self.words[start..start + span.len as usize] == *frames
            {
                return Some(u64::from(number));
            }
            number = span.next;
        }
        None
    }

    fn has_room(&self, frames: &[u64]) -> bool {
        self.spans.len() < MAX_STACKS && self.words.len() + frames.len() <= MAX_WORDS
    }

    fn add(&mut self, hash: u64, frames: &[u64], truncated: bool) {
        let number = self.spans.len() as u32;
        let next = self.by_hash.insert(hash, number).unwrap_or(NONE);
        self.spans.push(Span {
            start: self.words.len() as u32,
            len: frames.len() as u32,
            truncated,
            next,
        });
        self.words.extend_from_slice(frames);
    }
}

static STACKS: ForkSafeLock<Stacks> = ForkSafeLock::new(Stacks::new());

/// Sends `frames` through `write`, which writes the record as [`Numbered`] says and returns
/// whether it reached the ring. A new stack is numbered only once its record did. `folded`
/// is the frames' fold ([`fold_frame`]) if the walk knew it.
pub fn send(
    frames: &[u64],
    truncated: bool,
    folded: Option<u64>,
    write: impl FnOnce(Numbered) -> bool,
) {
    if frames.is_empty() {
        write(Numbered::Unnumbered);
        return;
    }
    let hash = hash(frames, truncated, folded);
    let known = STACKS.read().find(hash, frames, truncated);
    if let Some(number) = known {
        write(Numbered::Known(number));
        return;
    }
    let Some(mut stacks) = STACKS.try_write() else {
        write(Numbered::Unnumbered);
        return;
    };
    // Another thread may have numbered it since the read.
    if let Some(number) = stacks.find(hash, frames, truncated) {
        drop(stacks);
        write(Numbered::Known(number));
        return;
    }
    if !stacks.has_room(frames) {
        drop(stacks);
        write(Numbered::Unnumbered);
        return;
    }
    let number = stacks.spans.len() as u64;
    if write(Numbered::New(number)) {
        stacks.add(hash, frames, truncated);
    }
}

/// In a forked child: its numbering starts over (its records go to a heap of its own).
pub fn forked() {
    // SAFETY: called from the child's fork handler, before any other use of the lock.
    unsafe { STACKS.reset_in_child(Stacks::new()) };
    if let Some(mut stacks) = STACKS.try_write() {
        *stacks = Stacks::new();
    }
}

/// Where a stack's fold starts (see [`fold_frame`]).
pub const FOLD_START: u64 = 0x243f_6a88_85a3_08d3;
const MUL: u64 = 0xf135_7aea_2e62_a9c5;

/// The high and low halves of `a * b` xored: every bit of both in every bit of the result.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// One step of a stack's hash, which folds its frames from the outermost in: the frames a
/// stack shares with the one before are its outer ones, so a walk that joined the walk
/// before ([`crate::last_walk`]) takes their fold from it and folds only its own frames.
#[inline(always)]
pub fn fold_frame(outer: u64, frame: u64) -> u64 {
    fold(outer ^ frame, MUL)
}

/// A hash of the frames and the truncation; `folded` is the frames' fold when the caller
/// knows it already (equal hashes are told apart by their frames anyway).
fn hash(frames: &[u64], truncated: bool, folded: Option<u64>) -> u64 {
    let folded = folded.unwrap_or_else(|| {
        frames
            .iter()
            .rev()
            .fold(FOLD_START, |h, &pc| fold_frame(h, pc))
    });
    fold(
        folded ^ frames.len() as u64,
        MUL ^ (u64::from(truncated) << 1),
    )
}

/// The table's keys are hashes already.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("only u64 keys");
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `frames` and returns what `write` was told.
    fn sent(frames: &[u64], truncated: bool, reaches_ring: bool) -> Numbered {
        let mut told = None;
        send(frames, truncated, None, |numbered| {
            told = Some(numbered);
            reaches_ring
        });
        told.unwrap()
    }

    /// One test, as the table is the process's: numbers count up from 0 as stacks are first
    /// seen; a stack seen again is its number; truncation is part of the stack; a record
    /// that did not reach the ring numbers nothing; a forked child starts over.
    #[test]
    fn numbers_each_stack_once_in_the_order_they_are_first_sent() {
        let a = [0x40_1000, 0x40_2000, 0x40_3000];
        let b = [0x40_1000, 0x40_2000];
        assert_eq!(sent(&a, false, true), Numbered::New(0));
        assert_eq!(sent(&b, false, true), Numbered::New(1));
        assert_eq!(sent(&a, false, true), Numbered::Known(0));
        assert_eq!(sent(&a, true, true), Numbered::New(2));
        assert_eq!(sent(&b, false, true), Numbered::Known(1));
        assert_eq!(sent(&[], false, true), Numbered::Unnumbered);
        let c = [0x50_0000];
        assert_eq!(sent(&c, false, false), Numbered::New(3));
        assert_eq!(
            sent(&c, false, true),
            Numbered::New(3),
            "the lost definition is sent again"
        );
        assert_eq!(sent(&c, false, true), Numbered::Known(3));
        // Another thread looking a stack up keeps the table from changing: sent whole.
        let reader = STACKS.read();
        assert_eq!(sent(&[0x60_0000], false, true), Numbered::Unnumbered);
        drop(reader);
        assert_eq!(sent(&[0x60_0000], false, true), Numbered::New(4));
        forked();
        assert_eq!(sent(&b, false, true), Numbered::New(0));
    }

    #[test]
    fn a_known_fold_gives_the_hash_of_the_frames() {
        let frames = [0x40_1000, 0x40_2000, 0x40_3000];
        let folded = fold_frame(
            fold_frame(fold_frame(FOLD_START, 0x40_3000), 0x40_2000),
            0x40_1000,
        );
        assert_eq!(
            hash(&frames, false, Some(folded)),
            hash(&frames, false, None)
        );
        assert_ne!(hash(&frames, false, None), hash(&frames, true, None));
        assert_ne!(hash(&frames, false, None), hash(&frames[1..], false, None));
    }

    #[test]
    fn stacks_with_one_hash_are_told_apart_by_their_frames() {
        let mut stacks = Stacks::new();
        stacks.add(7, &[1, 2], false);
        stacks.add(7, &[3], false);
        assert_eq!(stacks.find(7, &[1, 2], false), Some(0));
        assert_eq!(stacks.find(7, &[3], false), Some(1));
        assert_eq!(stacks.find(7, &[4], false), None);
        assert_eq!(stacks.find(8, &[3], false), None);
    }
}
