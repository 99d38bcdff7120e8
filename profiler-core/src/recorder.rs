//! The hot path in one call: decode a ring record, intern its stack, apply it to the heap.
//!
//! Allocation-free once warmed up: frames are copied into a reused buffer, a known stack is
//! found without allocating, and the heap's maps only grow (amortized) for new addresses.
//!
//! [`Recorder::apply`] is the part shared with offline replay of a recording: everything that
//! follows an event once its stack is known.

use crate::allocator_code::AllocatorCode;
use crate::analysis::Analyses;
use crate::event::{DecodeError, Event, RecordStack, decode};
use crate::heap::{Effect, HeapState, Mode, RecordedLookups};
use crate::sites::SiteStats;
use crate::stacks::{StackId, StackNumbers, StackTable};
use crate::unwind::{ModuleSource, NoModuleSource, StackUnwinder};

/// The engine's state during a session: every stack seen and the live heap.
#[derive(Debug)]
pub struct Recorder {
    pub stacks: StackTable,
    pub heap: HeapState,
    /// Per-stack allocation counts, live and at-peak figures.
    pub sites: SiteStats,
    /// The analyses of report.json's `analyses` section.
    pub analyses: Analyses,
    /// Turns stack snapshots (`--unwind dwarf`) into frames; holds the target's modules.
    pub unwinder: StackUnwinder,
    /// Where the allocator's code is, to flag the calls it makes for itself (live sessions;
    /// empty in a replay, whose events carry the flag).
    pub allocator: AllocatorCode,
    /// The in-process capture's numbers of the stacks it sent.
    stack_numbers: StackNumbers,
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
            sites: SiteStats::new(),
            analyses: Analyses::new(),
            unwinder: StackUnwinder::default(),
            allocator: AllocatorCode::default(),
            stack_numbers: StackNumbers::default(),
            scratch: Vec::with_capacity(profiler_common::MAX_STACK_DEPTH),
            events: 0,
        }
    }

    /// Decodes and applies one ring record. A record that does not decode is not applied.
    /// Stack snapshots are unwound with the modules `self.unwinder` already knows.
    pub fn ingest(&mut self, record: &[u8]) -> Result<Ingested, DecodeError> {
        self.ingest_with(record, &mut NoModuleSource)
    }

    /// [`Recorder::ingest`], asking `modules` for the module of any address of a stack
    /// snapshot that no known module covers (a library loaded since they were last read).
    /// Inlined into the collector's loop: the `Ingested` it returns (a few hundred bytes) is
    /// then built where it is used instead of copied out (`perf` on python3: 6% of memprof's
    /// time in that copy).
    #[inline]
    pub fn ingest_with(
        &mut self,
        record: &[u8],
        modules: &mut dyn ModuleSource,
    ) -> Result<Ingested, DecodeError> {
        let (mut event, record_stack) = decode(record)?;
        // Only calls that create a block or region (those probed at return) are ever
        // attributed to a stack.
        let wants_stack = event.kind.needs_return_probe();
        let known_stacks = self.stacks.len();
        let snapshot = matches!(record_stack, RecordStack::Snapshot(_));
        let stack = match record_stack {
            // A definition is recorded whatever its event: every later number depends on it.
            RecordStack::Define { number, frames } if frames.len() > 0 => {
                frames.copy_into(&mut self.scratch);
                let id = self.stacks.intern(&self.scratch, event.stack_truncated());
                self.stack_numbers.define(number, id);
                (wants_stack && !event.stack_missing()).then_some(id)
            }
            _ if !wants_stack || event.stack_missing() => None,
            RecordStack::Numbered(number) => self.stack_numbers.get(number),
            RecordStack::Frames(frames) if frames.len() == 0 => None,
            RecordStack::Frames(frames) => {
                frames.copy_into(&mut self.scratch);
                Some(self.stacks.intern(&self.scratch, event.stack_truncated()))
            }
            // Decoding gives a definition only with frames, matched above.
            RecordStack::Define { .. } => None,
            RecordStack::Snapshot(snapshot) => {
                let outcome =
                    self.unwinder
                        .unwind(&snapshot, event.tid, modules, &mut self.scratch);
                (!self.scratch.is_empty())
                    .then(|| self.stacks.intern(&self.scratch, outcome.truncated()))
            }
        };
        if self.stacks.len() > known_stacks && !snapshot {
            // Frames unwound by the capture path: the first sight of a library's addresses
            // (dlopen) is when its maps must be read, before a dlclose can take them away.
            for &frame in &self.scratch {
                modules.maps_covering(frame.saturating_sub(1));
            }
        }
        let frames = stack.map_or(&[][..], |id| self.stacks.get(id));
        self.allocator
            .classify(&mut event, frames, &self.heap, modules);
        let effect = self.apply(&event, stack);
        Ok(Ingested {
            event,
            stack,
            new_stack: self.stacks.len() > known_stacks,
            effect,
        })
    }

    /// Applies one event whose stack is already interned in `self.stacks`. Inlined into
    /// replay's loop, so that the effect is not copied out of a call it is never used after.
    #[inline]
    pub fn apply(&mut self, event: &Event, stack: Option<StackId>) -> Effect {
        self.apply_recorded(event, stack, &RecordedLookups::default())
    }

    /// [`Recorder::apply`] with the answers a recording gave for the event's heap lookups
    /// ([`HeapState::apply_recorded`]).
    #[inline]
    pub fn apply_recorded(
        &mut self,
        event: &Event,
        stack: Option<StackId>,
        answers: &RecordedLookups,
    ) -> Effect {
        let effect = self.heap.apply_recorded(event, stack, answers);
        self.sites.observe(event, stack, &effect);
        self.analyses.observe(event, &effect);
        self.events += 1;
        effect
    }

    /// A hint from a collector reading ahead: a record about `addr` (and `old_addr`, a
    /// realloc's) follows soon. Changes nothing.
    #[inline]
    pub fn prefetch(&self, addr: u64, old_addr: u64) {
        self.heap.prefetch(addr);
        if old_addr != 0 {
            self.heap.prefetch(old_addr);
        }
    }

    /// Records applied so far.
    pub fn events(&self) -> u64 {
        self.events
    }
}
