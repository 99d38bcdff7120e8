//! The allocator's own code in the target, to tell calls the allocator makes for itself from
//! the program's.
//!
//! glibc flushes an exiting thread's tcache through `free` (`tcache_thread_shutdown`): every
//! chunk it hands back was already freed by the program, and the tcache itself was never
//! returned by malloc, so the heap would count them as double and unknown frees. A new thread's
//! first `free` may create its arena (an mmap of 64 MiB of address space); `free` is probed at
//! entry only, so nothing silences the calls it makes, as malloc's nesting does.
//!
//! The probes record the caller of free and munmap (their return address); the collector
//! marks with [`FLAG_ALLOCATOR_INTERNAL`]:
//! - a free or munmap whose caller lies in the module providing the allocator (not the
//!   program's executable, whose code is mostly the program's);
//! - an mmap whose stack goes through that module's `free` function.
//!
//! The flag is kept in recordings, so a replay needs none of this. The heap then counts such
//! frees of non-live blocks, munmaps of untracked ranges and mmaps apart (`allocator_internal_*`
//! in the report) instead of reporting them as the program's.

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;

use profiler_common::{EventKind, FLAG_ALLOCATOR_INTERNAL};

use crate::event::Event;
use crate::heap::HeapState;
use crate::maps::ProcessMaps;
use crate::unwind::ModuleSource;

/// 1 MiB regions of callers remembered as looked up; beyond this no new lookups are made.
const MAX_TRIED_REGIONS: usize = 4096;

/// A file that provides the probed allocation functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorModule {
    /// Names the target's maps may give the file (as found, and with symlinks resolved).
    pub paths: Vec<PathBuf>,
    /// File offsets of the `free` function, when this module provides it.
    pub free: Option<Range<u64>>,
    /// A caller anywhere in the module is the allocator. False for the program's executable
    /// (an allocator linked into the program shares its module with the program's code).
    pub callers_are_internal: bool,
}

/// Where the allocator's code is mapped in the target; see the module doc.
#[derive(Debug, Default)]
pub struct AllocatorCode {
    modules: Vec<AllocatorModule>,
    /// Executable mappings of `modules`: addresses, file offset of the start, module index.
    text: Vec<(Range<u64>, u64, usize)>,
    tried: HashSet<u64>,
}

impl AllocatorCode {
    pub fn new(modules: Vec<AllocatorModule>) -> AllocatorCode {
        AllocatorCode {
            modules,
            ..AllocatorCode::default()
        }
    }

    /// The same modules, mapped nowhere yet: for a new program of the same process (exec).
    pub fn renewed(&self) -> AllocatorCode {
        AllocatorCode::new(self.modules.clone())
    }

    /// No allocator module is known (offline replay: the recorded flags already say).
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Recomputes where the modules are mapped from a union of the target's maps.
    pub fn update(&mut self, maps: &ProcessMaps) {
        self.text.clear();
        for mapping in maps.iter().filter(|m| m.perms.contains('x')) {
            if let Some(index) = self
                .modules
                .iter()
                .position(|module| module.paths.contains(&mapping.path))
            {
                self.text
                    .push((mapping.start..mapping.end, mapping.offset, index));
            }
        }
    }

    /// The allocator module mapped at `addr` and the file offset there.
    fn locate(&self, addr: u64) -> Option<(&AllocatorModule, u64)> {
        self.text
            .iter()
            .find(|(range, _, _)| range.contains(&addr))
            .map(|(range, offset, index)| (&self.modules[*index], addr - range.start + offset))
    }

    /// A call returning to `caller` is the allocator's own.
    pub fn caller_is_internal(&self, caller: u64) -> bool {
        self.locate(caller)
            .is_some_and(|(module, _)| module.callers_are_internal)
    }

    /// `addr` (a return address) lies inside the allocator's `free`.
    pub fn in_free(&self, addr: u64) -> bool {
        self.locate(addr).is_some_and(|(module, offset)| {
            module
                .free
                .as_ref()
                .is_some_and(|free| free.contains(&offset))
        })
    }

    /// Sets [`FLAG_ALLOCATOR_INTERNAL`] on `event` when the allocator made the call. `frames`
    /// is the event's stack (empty for free and munmap). A caller in a region not looked up
    /// before, where the event would otherwise be an anomaly, makes it ask `modules` for
    /// fresher maps once (a library mapped since they were last read).
    pub fn classify(
        &mut self,
        event: &mut Event,
        frames: &[u64],
        heap: &HeapState,
        modules: &mut dyn ModuleSource,
    ) {
        if self.is_empty() {
            return;
        }
        let internal = match event.kind {
            EventKind::Free | EventKind::OperatorDelete | EventKind::Munmap if event.aux != 0 => {
                let suspect = event.kind == EventKind::Munmap || !heap.is_live(event.addr);
                self.caller_is_internal(event.aux)
                    || (suspect
                        && self.refresh(event.aux, modules)
                        && self.caller_is_internal(event.aux))
            }
            EventKind::Mmap if !frames.is_empty() => {
                let in_free = |code: &AllocatorCode| frames.iter().any(|&f| code.in_free(f));
                in_free(self) || (self.refresh(frames[0], modules) && in_free(self))
            }
            _ => false,
        };
        if internal {
            event.flags |= FLAG_ALLOCATOR_INTERNAL;
        }
    }

    /// Reads fresher maps for `pc` if its region was never looked up; true if it did.
    fn refresh(&mut self, pc: u64, modules: &mut dyn ModuleSource) -> bool {
        if self.tried.len() >= MAX_TRIED_REGIONS || !self.tried.insert(pc >> 20) {
            return false;
        }
        let Some(maps) = modules.maps_covering(pc) else {
            return false;
        };
        self.update(maps);
        true
    }
}

#[cfg(test)]
mod tests;
