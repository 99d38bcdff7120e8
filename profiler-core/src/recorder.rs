//! The hot path in one call: decode a ring record, intern its stack, apply it to the heap.
//!
//! Allocation-free once warmed up: frames are copied into a reused buffer, a known stack is
//! found without allocating, and the heap's maps only grow (amortized) for new addresses.

use crate::event::{DecodeError, decode};
use crate::heap::{HeapState, Mode};
use crate::stacks::{StackId, StackTable};

/// The engine's state during a session: every stack seen and the live heap.
#[derive(Debug)]
pub struct Recorder {
    pub stacks: StackTable,
    pub heap: HeapState,
    /// Frames of the record being ingested; reused to avoid an allocation per event.
    scratch: Vec<u64>,
    events: u64,
}

impl Recorder {
    pub fn new(mode: Mode) -> Self {
        Self {
            stacks: StackTable::new(),
            heap: HeapState::new(mode),
            scratch: Vec::with_capacity(profiler_common::MAX_STACK_DEPTH),
            events: 0,
        }
    }

    /// Decodes and applies one ring record. A record that does not decode is not applied.
    pub fn ingest(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        let (event, frames) = decode(record)?;
        // Only calls that create a block or region are ever attributed to a stack.
        let wants_stack = event.kind.is_malloc_family()
            || matches!(
                event.kind,
                profiler_common::EventKind::Mmap | profiler_common::EventKind::Mremap
            );
        let stack: Option<StackId> = if wants_stack && frames.len() > 0 && !event.stack_missing() {
            frames.copy_into(&mut self.scratch);
            Some(self.stacks.intern(&self.scratch, event.stack_truncated()))
        } else {
            None
        };
        self.heap.apply(&event, stack);
        self.events += 1;
        Ok(())
    }

    /// Records applied so far.
    pub fn events(&self) -> u64 {
        self.events
    }
}
