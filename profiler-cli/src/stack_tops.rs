//! The probes' table of thread stack tops (`profiler_common::StackTop`), filled from what the
//! collector's walks learn (`profiler_core::unwind::LearnedTop`): with it a thread's stack
//! copy stops above its root frames instead of going `--stack-bytes` deep.

use anyhow::{Result, anyhow};
use aya::maps::{Array, MapData};
use profiler_common::StackTop;
use profiler_core::unwind::LearnedTop;

/// The map, taken from the loaded programs.
pub struct StackTops {
    map: Array<MapData, [u64; 3]>,
}

impl StackTops {
    pub fn new(map: aya::maps::Map) -> Result<StackTops> {
        Ok(StackTops {
            map: Array::try_from(map).map_err(|error| anyhow!("stack tops map: {error}"))?,
        })
    }

    /// Tells the probes where the stacks of `pid`'s threads in `learned` end (a top of 0:
    /// nowhere known, copy whole). A thread whose
    /// id has no slot keeps full copies; a failed update only leaves the copies as they were.
    pub fn publish(&mut self, pid: u32, learned: &[LearnedTop]) {
        for top in learned {
            let value = StackTop {
                id: u64::from(pid) << 32 | u64::from(top.thread),
                top: top.top,
                canary: top.canary,
            };
            if top.thread < self.map.len() {
                let _ = self.map.set(top.thread, value.to_words(), 0);
            }
        }
    }
}
