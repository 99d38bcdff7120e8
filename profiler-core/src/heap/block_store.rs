//! Where the heap's blocks are looked up: a table of every address (a live session, `memprof
//! view`, a recording of an older memprof), or the answers a recording carries (`memprof
//! report`).
//!
//! Every event looks up at most two addresses (a realloc releases its old block and creates
//! its new one). With a table, the heap notes each lookup and what it found on a [`Tape`],
//! which the recording's writer reads after the event: the answers its [`BlockRing`] cannot
//! infer are recorded with the event. A replay answers the same lookups from that ring and
//! those recorded answers, so it needs memory for the last blocks and the distinct (size,
//! kind, thread, stack) only, and sees what the live heap saw, verdicts included (double,
//! unknown and overwritten blocks). The blocks live at the end are recorded once, before the
//! trailer, and fill a table of their own for the reports.

use super::block_ring::{BlockRing, Lookup};
use super::block_table::{BlockTable, Remembered};
use super::{Block, FreedBlock};

/// Most lookups one event makes.
pub const LOOKUPS_PER_EVENT: usize = 2;

/// What one lookup did, and what it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapeEntry {
    pub addr: u64,
    pub op: LookupOp,
    pub found: Lookup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupOp {
    /// A block was created at the address (what it replaced was found).
    Insert(Block),
    /// The block at the address was released.
    Release,
    /// Only asked whether a block is live there (a realloc's entry).
    Query,
}

/// The lookups of the last event applied, in order: the first `len` entries (the others are
/// stale). Starting an event only resets `len`: the collector does it for every event.
#[derive(Clone, Copy, Debug)]
pub struct Tape {
    entries: [TapeEntry; LOOKUPS_PER_EVENT],
    len: usize,
}

impl Default for Tape {
    fn default() -> Self {
        let unused = TapeEntry {
            addr: 0,
            op: LookupOp::Query,
            found: Lookup::Absent,
        };
        Tape {
            entries: [unused; LOOKUPS_PER_EVENT],
            len: 0,
        }
    }
}

impl Tape {
    pub fn entries(&self) -> &[TapeEntry] {
        &self.entries[..self.len]
    }

    #[inline]
    fn note(&mut self, entry: TapeEntry) {
        debug_assert!(
            self.len < LOOKUPS_PER_EVENT,
            "an event looks up at most two blocks"
        );
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = entry;
            self.len += 1;
        }
    }
}

/// The answers a recording gives for one event's lookups, in order: `None` where the
/// ring of recent blocks infers it (`block_ring.rs`).
pub type RecordedLookups = [Option<Lookup>; LOOKUPS_PER_EVENT];

/// A replay's blocks: the ring and the current event's recorded answers, then the blocks
/// live at the end.
#[derive(Debug, Default)]
pub struct Answered {
    ring: BlockRing,
    answers: RecordedLookups,
    /// How many of the current event's lookups were made.
    made: usize,
    /// The blocks live at the end, once the recording gave them.
    end: BlockTable,
}

impl Answered {
    #[inline]
    fn answer(&mut self, addr: u64) -> Lookup {
        let recorded = self.answers.get(self.made).copied().flatten();
        self.made += 1;
        recorded.unwrap_or_else(|| self.ring.infer(addr))
    }
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "the table is looked up by every event of a live session: no indirection there"
)]
pub enum BlockStore {
    Table { table: BlockTable, tape: Tape },
    Answered(Box<Answered>),
}

impl Default for BlockStore {
    fn default() -> Self {
        BlockStore::Table {
            table: BlockTable::default(),
            tape: Tape::default(),
        }
    }
}

impl BlockStore {
    pub fn answered() -> BlockStore {
        BlockStore::Answered(Box::default())
    }

    /// The table of the blocks: every address, or (answered) the blocks live at the end.
    pub fn table(&self) -> &BlockTable {
        match self {
            BlockStore::Table { table, .. } => table,
            BlockStore::Answered(answered) => &answered.end,
        }
    }

    pub fn table_mut(&mut self) -> &mut BlockTable {
        match self {
            BlockStore::Table { table, .. } => table,
            BlockStore::Answered(answered) => &mut answered.end,
        }
    }

    /// The lookups of the last event (empty when answered).
    pub fn tape(&self) -> Option<&Tape> {
        match self {
            BlockStore::Table { tape, .. } => Some(tape),
            BlockStore::Answered(_) => None,
        }
    }

    /// A new event starts; `answers` are its recorded answers (ignored with a table).
    #[inline]
    pub fn begin_event(&mut self, answers: &RecordedLookups) {
        match self {
            BlockStore::Table { tape, .. } => tape.len = 0,
            BlockStore::Answered(answered) => {
                answered.answers = *answers;
                answered.made = 0;
            }
        }
    }

    /// Makes `block` live at `addr`; returns the live block it replaced, if any.
    #[inline]
    pub fn insert_live(&mut self, addr: u64, block: &Block) -> Option<Block> {
        match self {
            BlockStore::Table { table, tape } => {
                let replaced = match table.insert_live(addr, block) {
                    Some(Remembered::Live(missed)) => Some(missed),
                    _ => None,
                };
                tape.note(TapeEntry {
                    addr,
                    op: LookupOp::Insert(*block),
                    found: replaced.map_or(Lookup::Absent, Lookup::Live),
                });
                replaced
            }
            BlockStore::Answered(answered) => {
                let found = answered.answer(addr);
                answered.ring.push(addr, block);
                match found {
                    Lookup::Live(missed) => Some(missed),
                    _ => None,
                }
            }
        }
    }

    /// Ends the live block at `addr` (at `ts_ns`); see [`BlockTable::release`].
    #[inline]
    pub fn release(&mut self, addr: u64, ts_ns: u64) -> Result<Block, Option<FreedBlock>> {
        match self {
            BlockStore::Table { table, tape } => {
                let released = table.release(addr, ts_ns);
                let found = match released {
                    Ok(block) => Lookup::Live(block),
                    Err(Some(freed)) => Lookup::Freed {
                        size: freed.size,
                        stack: freed.stack,
                    },
                    Err(None) => Lookup::Absent,
                };
                tape.note(TapeEntry {
                    addr,
                    op: LookupOp::Release,
                    found,
                });
                released
            }
            BlockStore::Answered(answered) => {
                let found = answered.answer(addr);
                answered.ring.release(addr);
                match found {
                    Lookup::Live(block) => Ok(block),
                    Lookup::Freed { size, stack } => Err(Some(FreedBlock {
                        size,
                        stack,
                        free_ts_ns: ts_ns,
                    })),
                    Lookup::Absent => Err(None),
                }
            }
        }
    }

    /// Whether a block is live at `addr`, as a step of an event (noted or answered).
    #[inline]
    pub fn query_live(&mut self, addr: u64) -> bool {
        match self {
            BlockStore::Table { table, tape } => {
                let found = match table.get(addr) {
                    Some(Remembered::Live(block)) => Lookup::Live(block),
                    _ => Lookup::Absent,
                };
                tape.note(TapeEntry {
                    addr,
                    op: LookupOp::Query,
                    found,
                });
                matches!(found, Lookup::Live(_))
            }
            BlockStore::Answered(answered) => matches!(answered.answer(addr), Lookup::Live(_)),
        }
    }
}

/// Keeps the writer's [`BlockRing`] in step with the lookups of one event, and says which of
/// them it could not infer: those the recording must carry.
pub fn recorded_answers(ring: &mut BlockRing, tape: &Tape) -> RecordedLookups {
    let mut answers = RecordedLookups::default();
    for (entry, answer) in tape.entries().iter().zip(&mut answers) {
        if ring.infer(entry.addr) != entry.found {
            *answer = Some(entry.found);
        }
        match entry.op {
            LookupOp::Insert(block) => ring.push(entry.addr, &block),
            LookupOp::Release => ring.release(entry.addr),
            LookupOp::Query => {}
        }
    }
    answers
}
