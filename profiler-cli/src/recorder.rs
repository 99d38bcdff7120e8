//! The collector's state: profiler-core's recorder plus the target's memory maps, kept fresh
//! enough to symbolize every stack after the target is gone.
use profiler_core::{heap::Mode, maps::ProcessMaps, recorder::Recorder};

pub struct Collected {
    pub recorder: Recorder,
    /// Union of the target's memory maps seen so far.
    pub maps: ProcessMaps,
    /// Records that did not decode (a format mismatch; never expected).
    pub malformed: u64,
    /// Number of interned stacks when the maps were last read.
    stacks_at_last_read: usize,
}

impl Collected {
    pub fn new(mode: Mode) -> Collected {
        Collected {
            recorder: Recorder::new(mode),
            maps: ProcessMaps::default(),
            malformed: 0,
            stacks_at_last_read: usize::MAX,
        }
    }

    pub fn record(&mut self, bytes: &[u8]) {
        if self.recorder.ingest(bytes).is_err() {
            self.malformed += 1;
        }
    }

    /// Re-reads the target's maps when new stacks appeared since the last read: they may
    /// point into libraries loaded since.
    pub fn refresh_maps(&mut self, pid: u32) {
        let stacks = self.recorder.stacks.len();
        if stacks == self.stacks_at_last_read {
            return;
        }
        if let Ok(maps) = ProcessMaps::read(pid) {
            self.maps.merge(maps);
            self.stacks_at_last_read = stacks;
        }
    }
}
