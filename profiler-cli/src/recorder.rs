//! Turns ring records into heap state: decode, intern the stack, apply.
use profiler_core::{
    event::decode,
    heap::{HeapState, Mode},
    stacks::StackTable,
};

/// Everything collected from one target.
pub struct Recorder {
    pub heap: HeapState,
    pub stacks: StackTable,
    /// Union of the target's memory maps seen so far (kept after it exits, to symbolize).
    pub events: u64,
    pub malformed: u64,
    frames: Vec<u64>,
    /// Stacks already covered by `maps` (refreshing the maps is needed when new ones appear).
    stacks_mapped: usize,
}

impl Recorder {
    pub fn new(mode: Mode) -> Recorder {
        Recorder {
            heap: HeapState::new(mode),
            stacks: StackTable::new(),
            events: 0,
            malformed: 0,
            frames: Vec::new(),
            stacks_mapped: 0,
        }
    }

    pub fn record(&mut self, bytes: &[u8]) {
        let Ok((event, frames)) = decode(bytes) else {
            self.malformed += 1;
            return;
        };
        self.events += 1;
        let stack = (frames.len() > 0).then(|| {
            frames.copy_into(&mut self.frames);
            self.stacks.intern(&self.frames, event.stack_truncated())
        });
        self.heap.apply(&event, stack);
    }

    pub fn refresh_maps(&mut self, _pid: u32) {}
}
