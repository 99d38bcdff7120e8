//! The hot path in one call: decode a ring record, intern its stack, apply it to the heap.
//!
//! Allocation-free once warmed up: frames are copied into a reused buffer, a known stack is
//! found without allocating, and the heap's maps only grow (amortized) for new addresses.
//!
//! [`Recorder::apply`] is the part shared with offline replay of a recording: everything that
//! follows an event once its stack is known.

use crate::event::{DecodeError, Event, decode};
use crate::heap::{Effect, HeapState, Mode};
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

/// One ingested record, for consumers that follow the stream (the recording writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ingested {
    pub event: Event,
    pub stack: Option<StackId>,
    /// `stack` was interned by this record (it was never seen before).
    pub new_stack: bool,
    pub effect: Effect,
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
    pub fn ingest(&mut self, record: &[u8]) -> Result<Ingested, DecodeError> {
        let (event, frames) = decode(record)?;
        // Only calls that create a block or region are ever attributed to a stack.
        let wants_stack = event.kind.is_malloc_family()
            || matches!(
                event.kind,
                profiler_common::EventKind::Mmap | profiler_common::EventKind::Mremap
            );
        let known_stacks = self.stacks.len();
        let stack: Option<StackId> = if wants_stack && frames.len() > 0 && !event.stack_missing() {
            frames.copy_into(&mut self.scratch);
            Some(self.stacks.intern(&self.scratch, event.stack_truncated()))
        } else {
            None
        };
        let effect = self.apply(&event, stack);
        Ok(Ingested {
            event,
            stack,
            new_stack: self.stacks.len() > known_stacks,
            effect,
        })
    }

    /// Applies one event whose stack is already interned in `self.stacks`.
    pub fn apply(&mut self, event: &Event, stack: Option<StackId>) -> Effect {
        let effect = self.heap.apply(event, stack);
        self.events += 1;
        effect
    }

    /// Records applied so far.
    pub fn events(&self) -> u64 {
        self.events
    }
}
