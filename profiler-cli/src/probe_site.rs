//! Where one allocation function is probed: what `targets` plans and `probes` attaches.
use std::path::PathBuf;

use profiler_common::EventKind;

use crate::prologue::Placement;

/// One uprobe (and its return probe) to attach.
#[derive(Clone, Debug)]
pub struct ProbeSite {
    /// The function events from this site are reported as.
    pub kind: EventKind,
    /// The symbol probed (`kind.symbol()`, or a C++ operator's mangled name).
    pub symbol: &'static str,
    /// Other probed functions at the same address (glibc's memalign is aligned_alloc); their
    /// calls cannot be told apart and are reported under `kind`.
    pub aliases: Vec<EventKind>,
    /// The object as memprof opens it (under /proc/PID/root for a running target).
    pub path: PathBuf,
    /// The object's path as the target sees it.
    pub module: PathBuf,
    /// File offset of the probe (function entry + placement offset).
    pub file_offset: u64,
    pub placement: Placement,
    /// Bytes of the function from its entry (the ELF symbol's size): where its code ends.
    pub function_len: u64,
}
