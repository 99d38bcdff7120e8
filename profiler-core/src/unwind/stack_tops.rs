//! Where each thread's stack ends, learned from its walks, for the probes to copy no further
//! (`profiler_common::StackTop`).
//!
//! A walk that reached its root (an outermost frame, whose caller the call-frame information
//! marks undefined) read every word any walk of that thread reads from its root frames: they
//! stay where the thread started them. Just above the highest word it read is as far as a
//! copy of that thread's stack needs to go; the probes check that the word still holds what
//! the walk read before they trust the top (a new thread with the same id and another stack
//! does not), and copy `--stack-bytes` otherwise.

use crate::fasthash::FastHashMap;

/// Threads remembered at most; past that the table starts over (the probes keep what they
/// were sent, and a thread is sent again when a walk shows a different top).
const MAX_THREADS: usize = 1 << 16;

/// A thread's stack top and the word below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedTop {
    pub thread: u32,
    /// Just above the highest word the walk read.
    pub top: u64,
    /// That word's value.
    pub canary: u64,
}

/// The tops learned so far, and those not yet taken for the probes.
#[derive(Debug, Default)]
pub struct StackTops {
    known: FastHashMap<u32, (u64, u64)>,
    new: Vec<LearnedTop>,
}

impl StackTops {
    /// A walk of `thread` reached its root; the highest word it read was `canary` at
    /// `highest`.
    pub fn saw(&mut self, thread: u32, highest: u64, canary: u64) {
        let top = highest + 8;
        if self.known.get(&thread) == Some(&(top, canary)) {
            return;
        }
        if self.known.len() >= MAX_THREADS {
            self.known.clear();
        }
        self.known.insert(thread, (top, canary));
        self.new.push(LearnedTop {
            thread,
            top,
            canary,
        });
    }

    /// A walk of `thread` needed a word above the end of its copy, which the copy did not say
    /// was cut: the probe bounded it at a top that was too low (a thread whose first walk
    /// ended at another root, a coroutine's). The thread's copies go whole again (a top of 0)
    /// until a walk reaches its root once more.
    pub fn forget(&mut self, thread: u32) {
        if self.known.remove(&thread).is_some() {
            self.new.push(LearnedTop {
                thread,
                top: 0,
                canary: 0,
            });
        }
    }

    /// The tops learned, changed or forgotten (a top of 0) since the last call.
    pub fn take_new(&mut self) -> Vec<LearnedTop> {
        std::mem::take(&mut self.new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_is_new_once_until_it_changes() {
        let mut tops = StackTops::default();
        tops.saw(7, 0x1000, 42);
        tops.saw(7, 0x1000, 42);
        tops.saw(8, 0x2000, 43);
        assert_eq!(
            tops.take_new(),
            [
                LearnedTop {
                    thread: 7,
                    top: 0x1008,
                    canary: 42
                },
                LearnedTop {
                    thread: 8,
                    top: 0x2008,
                    canary: 43
                }
            ]
        );
        tops.saw(7, 0x1000, 42);
        assert!(tops.take_new().is_empty());
        // Another stack under the same thread id.
        tops.saw(7, 0x3000, 42);
        assert_eq!(
            tops.take_new(),
            [LearnedTop {
                thread: 7,
                top: 0x3008,
                canary: 42
            }]
        );
        // Forgotten once, then learned again.
        tops.forget(7);
        tops.forget(7);
        tops.forget(9);
        assert_eq!(
            tops.take_new(),
            [LearnedTop {
                thread: 7,
                top: 0,
                canary: 0
            }]
        );
        tops.saw(7, 0x3000, 42);
        assert_eq!(tops.take_new().len(), 1);
    }
}
