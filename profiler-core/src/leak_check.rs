//! Which live blocks the program can still reach: memcheck's four leak classes, computed
//! from the exact live heap and a conservative scan of the stopped target's memory.
//!
//! - [`roots`] picks the memory that holds the program's own pointers (writable mappings
//!   that are neither the allocator's heap nor memprof's ring, the stack from the stack
//!   pointer up) from `/proc/PID/maps`.
//! - [`mark`] classifies the blocks as memcheck does: a block pointed to at its start from a
//!   root, or from a block reached that way, is still reachable; one pointed to only in its
//!   interior (and not recognised by one of memcheck's four interior-pointer heuristics) is
//!   possibly lost; one reachable only from lost blocks is indirectly lost; the rest are
//!   definitely lost.
//!
//! The target's memory is read through [`Memory`] (the CLI reads it with
//! `process_vm_readv`, in large batches), so everything here is tested on plain buffers.

pub mod mark;
pub mod roots;
#[cfg(test)]
mod tests;
mod words;

use serde::{Deserialize, Serialize};

pub use mark::{Classification, classify};

/// memcheck's leak kinds, in the order a report lists them (the worst first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Nothing points to the block, except other lost blocks it does not lead to.
    DefinitelyLost,
    /// Only lost blocks point to it: freeing the definitely lost block that leads here
    /// would not free it.
    IndirectlyLost,
    /// Only interior pointers reach it: maybe a pointer into the block, maybe a coincidence.
    PossiblyLost,
    /// A pointer to its start is held in the program's memory or registers.
    StillReachable,
}

impl Reachability {
    pub const ALL: [Reachability; 4] = [
        Reachability::DefinitelyLost,
        Reachability::IndirectlyLost,
        Reachability::PossiblyLost,
        Reachability::StillReachable,
    ];

    /// The report's name of the class.
    pub fn name(self) -> &'static str {
        match self {
            Reachability::DefinitelyLost => "definitely_lost",
            Reachability::IndirectlyLost => "indirectly_lost",
            Reachability::PossiblyLost => "possibly_lost",
            Reachability::StillReachable => "still_reachable",
        }
    }

    /// The class in words, as memcheck prints it.
    pub fn words(self) -> &'static str {
        match self {
            Reachability::DefinitelyLost => "definitely lost",
            Reachability::IndirectlyLost => "indirectly lost",
            Reachability::PossiblyLost => "possibly lost",
            Reachability::StillReachable => "still reachable",
        }
    }

    /// The program can no longer free these blocks.
    pub fn is_lost(self) -> bool {
        !matches!(self, Reachability::StillReachable)
    }

    /// The wire value of the class in a recording.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Reachability> {
        Self::ALL.get(code as usize).copied()
    }
}

/// A live block, as the scan sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveBlock {
    pub addr: u64,
    pub size: u64,
}

/// A mapping of the target, as far as the heuristics need it (a vtable lives in a readable
/// file mapping and points into an executable one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub executable: bool,
    pub file_backed: bool,
}

/// The memory of a stopped process.
pub trait Memory {
    /// Reads each `(address, length)` of `ranges` into `out`, back to back (`out` holds the
    /// sum of the lengths). What cannot be read (an unmapped or protected page) reads as
    /// zeros, which is never a pointer to a block; returns how many bytes that was.
    fn read(&mut self, ranges: &[(u64, usize)], out: &mut [u8]) -> u64;
}

/// Blocks and bytes of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassTotal {
    pub blocks: u64,
    pub bytes: u64,
}

/// The report's `summary.leak_check`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakCheckSummary {
    pub definitely_lost: ClassTotal,
    pub indirectly_lost: ClassTotal,
    pub possibly_lost: ClassTotal,
    pub still_reachable: ClassTotal,
    pub scan: ScanStats,
}

impl LeakCheckSummary {
    pub fn class(&self, class: Reachability) -> ClassTotal {
        match class {
            Reachability::DefinitelyLost => self.definitely_lost,
            Reachability::IndirectlyLost => self.indirectly_lost,
            Reachability::PossiblyLost => self.possibly_lost,
            Reachability::StillReachable => self.still_reachable,
        }
    }

    fn class_mut(&mut self, class: Reachability) -> &mut ClassTotal {
        match class {
            Reachability::DefinitelyLost => &mut self.definitely_lost,
            Reachability::IndirectlyLost => &mut self.indirectly_lost,
            Reachability::PossiblyLost => &mut self.possibly_lost,
            Reachability::StillReachable => &mut self.still_reachable,
        }
    }

    /// Bytes the program can no longer free (the three lost classes).
    pub fn lost_bytes(&self) -> u64 {
        self.definitely_lost.bytes + self.indirectly_lost.bytes + self.possibly_lost.bytes
    }
}

/// What the scan cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Root memory and block contents read and scanned.
    pub bytes_scanned: u64,
    /// Bytes that could not be read (read as zeros): guard pages, a mapping unmapped meanwhile.
    #[serde(default)]
    pub bytes_unreadable: u64,
    /// Time spent reading and classifying.
    pub secs: f64,
    /// How long the target was stopped for it (at exit, `run` adds nothing: the program had
    /// ended).
    pub paused_secs: f64,
}

/// The result of a leak check: the class of every block live when it ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeakCheck {
    /// Block address -> class, for every block live at the check.
    pub classes: crate::fasthash::FastHashMap<u64, Reachability>,
    pub summary: LeakCheckSummary,
}

impl LeakCheck {
    /// Builds the result from the blocks and their classes (same order), and the scan's cost.
    pub fn new(blocks: &[LiveBlock], classes: &[Reachability], scan: ScanStats) -> LeakCheck {
        let mut check = LeakCheck {
            classes: Default::default(),
            summary: LeakCheckSummary {
                scan,
                ..LeakCheckSummary::default()
            },
        };
        for (block, &class) in blocks.iter().zip(classes) {
            check.classes.insert(block.addr, class);
            let total = check.summary.class_mut(class);
            total.blocks += 1;
            total.bytes += block.size;
        }
        check
    }

    /// The class of the block at `addr`; blocks the check did not see (allocated after it)
    /// are still reachable as far as anything knows.
    pub fn class_of(&self, addr: u64) -> Reachability {
        self.classes
            .get(&addr)
            .copied()
            .unwrap_or(Reachability::StillReachable)
    }
}
