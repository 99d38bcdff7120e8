//! memprof's engine: everything that turns a stream of allocation events into a report,
//! with no eBPF, no aya and no root, so all of it is tested with plain `cargo test`.
//!
//! The pipeline, in the order data flows through it:
//!
//! 1. [`event`] decodes one ring-buffer record (an `EventHeader` from `profiler-common` plus
//!    its stack of return addresses) without copying or allocating.
//! 2. [`stacks`] interns each stack once; blocks then carry a 4-byte [`stacks::StackId`].
//! 3. [`heap`] applies events in order to rebuild the live heap: malloc-family blocks,
//!    mmap regions, peaks, and the anomalies (unknown and double frees, lost-event symptoms).
//!    [`recorder::Recorder`] runs steps 1-3 for one record: the hot path.
//! 4. [`maps`] keeps the target's `/proc/PID/maps` snapshots merged over time, and
//!    [`symbolize`] turns return addresses into function, file and line through them, reading
//!    object files only through [`module_file`] (regular files, bounded, the file mapped).
//! 5. [`report`] groups what is still live by stack, symbolizes it, and produces the
//!    serializable [`report::Report`] (the JSON schema).
//! 6. [`render`] writes a report as terminal text, JSON, folded stacks or a flame graph, and
//!    [`output`] writes the files of a session atomically, through [`output_dir`], the one
//!    way memprof writes a file (no symlink followed, nothing readable by others).
//! 7. [`session_end`] ends a session, live or replayed: the report and every file built from it;
//!    [`offline`] rebuilds a session from a recording (`memprof report`).
//!
//! [`diff`] compares two reports site by site (`memprof diff`).
//!
//! [`live`] is the live view's model (`--live`, `memprof view`): snapshots of a running
//! [`recorder::Recorder`] (or of a replayed recording) as rows for each view.
//!
//! [`fasthash`], [`demangle`] and [`load_segments`] are small helpers for steps 2-4.

pub mod allocator_code;
pub mod analysis;
pub mod demangle;
pub mod diff;
pub mod event;
pub mod fasthash;
pub mod heap;
mod huge_pages;
pub mod leak_check;
pub mod live;
pub mod load_segments;
pub mod maps;
pub mod module_file;
pub mod offline;
pub mod output;
pub mod output_dir;
pub mod recorder;
pub mod recording;
pub mod render;
pub mod report;
pub mod session_end;
pub mod sites;
pub mod stacks;
mod string_table;
pub mod symbolize;
pub mod unwind;
