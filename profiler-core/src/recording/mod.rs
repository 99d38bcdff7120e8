//! Recordings: everything a session saw, in a file that `memprof report` replays offline
//! through the same [`Recorder`](crate::recorder::Recorder) a live session uses.
//!
//! # Format (version 4)
//!
//! ```text
//! magic      8 bytes   "MPROF\r\n\x1a" (a text-mode copy or a truncated header breaks it)
//! version    u32 LE    FORMAT_VERSION
//! length     u32 LE    of the header JSON
//! crc32      u32 LE    of the header JSON
//! header     JSON      Header: versions, kernel, target, mode, start clocks, maps + build-ids,
//!                      `--ops`
//! chunk*     compressed_len u32 LE | raw_len u32 LE | crc32 u32 LE of the compressed bytes |
//!            zstd frame of raw_len bytes holding whole records
//! ```
//!
//! A chunk is written with one `write()` when it holds [`CHUNK_EVENTS`] events or
//! [`CHUNK_INTERVAL`] has passed, so a memprof killed at any point leaves a file readable up to
//! its last complete chunk. The trailer record, alone in the last chunk, marks a complete file.
//! The kernel's loss counters go into the chunk written by the collector's timer whenever they
//! changed, so a file without trailer still says how many events were lost before it stops.
//!
//! Records start with a tag byte. Its low nibble is the [`EventKind`](profiler_common::EventKind)
//! of an event (1..=14), or 15: the kind follows the tag as a varint (any kind, so new kinds
//! need no format change; version 1 files had no escape and used 15 for `OperatorDelete`).
//! Nibble 0 marks the other records, told apart by the high nibble:
//!
//! | tag | record | body |
//! |---|---|---|
//! | `0x00` | new stack | frame count, truncated (byte), first frame, then zigzag deltas |
//! | `0x10` | maps update | length + JSON list of [`MappingRecord`] (mappings seen later) |
//! | `0x20` | RSS sample | zigzag ts delta, resident bytes |
//! | `0x30` | trailer | length + JSON [`Trailer`] |
//! | `0x40` | loss counters so far | length + JSON [`LostRecord`] (when they changed) |
//! | `0x50` | leak check | length + JSON summary, block count, then address delta and class per block (`leak_record.rs`) |
//! | `0x60` | symbols | length + JSON [`RecordedSymbols`](crate::symbolize::RecordedSymbols): the frames the live report named, before the trailer |
//! | `0x70` | live blocks at the end (version 4) | length + count, then by address: address delta, block (below); before the trailer, in as many records as needed |
//! | `0x80` | fragmentation at the peak (version 4) | length + JSON `Option<FragmentationSnapshot>` as the session's report gave it, before the live blocks |
//! | `0x90`-`0xf0` | a record type added later | length + body: a reader that does not know it skips it |
//! | `0xK1`-`0xKf` | event | see below |
//!
//! A reader skips events of kinds it does not know (every event has the layout below) and
//! records of types it does not know, counts them, and says so: a newer memprof's recording
//! still replays, without what it added.
//!
//! Event tag bits: 4 = thread changed (tid follows), 5 = has a stack (id follows last),
//! 6 = extras byte follows (bit 0 old_addr, bit 1 aux, bit 2 flags, bit 3 lookup answers), 7 =
//! size is not zero.
//! The body, optional parts in brackets:
//!
//! ```text
//! [kind, when the nibble is 15] [tid] ts delta (zigzag, from the previous event or RSS
//! sample), recent (from version 3), addr delta (zigzag, from the previous event) unless
//! `recent` named the address,
//! [size], [extras, [old_addr - addr zigzag], [aux], [flags], [answers]], [stack id]
//! ```
//!
//! Version 4 records what the live heap's table answered for the event's lookups of blocks
//! (at most two: a realloc releases one block and creates another) whenever a ring of the
//! last 64 blocks created, kept alike by the writer and the reader, would not infer it
//! (`heap/block_store.rs`): a mask byte of the lookups answered, then per answer 0 (nothing
//! live there), 1 and a block (live), or 2, size and stack id + 1 (a freed block: a double
//! free). A block is its info's number + 1, or 0 and the info (size, kind, tid, stack id + 1),
//! then its allocation time in ticks, zigzag from the event's. With those answers and the
//! live blocks at the end, `memprof report` replays a recording without a table of every
//! address, and with the fragmentation at the peak recorded, without the blocks of the peak.
//! A recording without those end records (cut, written without answers, or without a report)
//! is replayed with the table.
//!
//! Times are in microseconds ([`CLOCK_TICK_NS`](crate::event::CLOCK_TICK_NS): events are
//! timed to it from the moment they are decoded, so a live report and a replay agree). An
//! address starts with `recent`: for an event without a size (a free, mostly), 1 to 64 names
//! the address of the sized event that many sized events ago; for an event with a size, the
//! address of the unsized event that many unsized events ago (a free list handing a block out
//! again); 0: the delta follows. Both took most of a recording before version 3, which kept
//! nanoseconds and deltas only (the low bits of nanosecond deltas and deltas to unrelated
//! addresses do not compress): redis under load 2.74 bytes per event, sqlite3 inserting 1.70;
//! version 3 writes 0.58 and 0.27.
//!
//! Integers are LEB128 varints. free and munmap carry their caller in `aux`, and
//! `flags` may hold the collector's `FLAG_ALLOCATOR_INTERNAL` (same layout: an older file
//! simply has neither). Stacks are numbered in the order their
//! definitions appear, which is the order the live recorder interned them, so a replay that
//! interns them in that order gets the same [`StackId`](crate::stacks::StackId)s.

mod buildid;
pub(crate) mod codec;
mod leak_record;
mod read_thread;
mod reader;
pub(crate) mod recent;
mod replay;
mod synthetic;
mod writer;

#[cfg(test)]
mod tests;

use crate::heap::Mode;
use crate::maps::{Mapping, ProcessMaps};
use crate::report::{ExitStatus, LostCounts, ProbeInfo};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

pub use buildid::{build_id, build_id_of, hex};
pub(crate) use read_thread::each_record;
pub use reader::{ReadError, ReadErrorKind, Reader, Record};
pub(crate) use replay::{ReadAhead, intern_recorded_stack};
pub use replay::{Replay, replay, replay_answered};
pub use synthetic::{synthetic_header, write_synthetic_churn};
pub use writer::Writer;

/// First bytes of every recording.
pub const MAGIC: [u8; 8] = *b"MPROF\r\n\x1a";
/// The version written; bumped on any incompatible change of the layout above.
pub const FORMAT_VERSION: u32 = 4;
/// The oldest version still read (versions 1 and 2 differ only in their event tags, times and
/// addresses: see above).
pub const FIRST_FORMAT_VERSION: u32 = 1;
/// Events per chunk before it is written.
pub const CHUNK_EVENTS: u32 = 64 * 1024;
/// Longest a record stays in memory before its chunk is written.
pub const CHUNK_INTERVAL: Duration = Duration::from_secs(1);
/// Largest chunk (compressed or not) a reader accepts, so a corrupt length cannot make it
/// allocate gigabytes.
pub const MAX_CHUNK_BYTES: u32 = 64 << 20;

/// What the session knew when it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub memprof_version: String,
    /// `uname -r` of the machine that recorded.
    pub kernel: String,
    pub command: Vec<String>,
    /// The file the target runs (/proc/PID/exe). Absent from recordings made before it was
    /// recorded.
    #[serde(default)]
    pub executable: Option<String>,
    pub pid: u32,
    pub mode: Mode,
    /// Wall clock at the start, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// CLOCK_MONOTONIC at the start: the events' clock.
    pub start_monotonic_ns: u64,
    /// `/proc/PID/maps` at the start; later mappings come as maps records.
    pub maps: Vec<MappingRecord>,
    /// How stacks were captured, when the collector says.
    pub unwinding: Option<Unwinding>,
    /// Operations the target performed (`--ops`), for the report's per-operation figures.
    /// Absent from recordings made before it was recorded.
    #[serde(default)]
    pub ops: Option<u64>,
    /// The capture path and why (`run --capture`); absent from older recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<crate::report::Capture>,
    /// The allocator serving the target when recording started (the trailer's probes say it
    /// at the end); absent from older recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocator: Option<crate::analysis::allocator::Allocator>,
    /// Where the image stands in the process tree `run` followed: absent for the launched
    /// process (and in older recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// A process image of a followed tree: one recording per image (each has its own heap, and a
/// fork copies its parent's blocks into the child's recording as flagged allocations, so each
/// recording replays alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The process that forked it; None for an image of the launched process after an exec.
    pub parent_pid: Option<u32>,
    /// Which image of its pid it is, from 1 (each exec starts the next).
    pub image: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unwinding {
    /// e.g. `frame-pointers` or `dwarf`.
    pub mode: String,
    /// Deepest stack recorded, in frames.
    pub max_depth: u32,
}

/// One line of `/proc/PID/maps`, with the GNU build-id of the file when it has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRecord {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub path: PathBuf,
    pub deleted: bool,
    /// Lowercase hex.
    pub build_id: Option<String>,
}

impl MappingRecord {
    pub fn new(mapping: &Mapping, build_id: Option<String>) -> MappingRecord {
        MappingRecord {
            start: mapping.start,
            end: mapping.end,
            perms: mapping.perms.clone(),
            offset: mapping.offset,
            path: mapping.path.clone(),
            deleted: mapping.deleted,
            build_id,
        }
    }

    pub fn mapping(&self) -> Mapping {
        Mapping {
            start: self.start,
            end: self.end,
            perms: self.perms.clone(),
            offset: self.offset,
            path: self.path.clone(),
            deleted: self.deleted,
            file_id: None,
        }
    }
}

/// Builds a [`ProcessMaps`] from records, later ones replacing what they overlap (as
/// [`ProcessMaps::merge`] does). Goes through the maps text: paths in `/proc/PID/maps` never
/// hold a newline (the kernel escapes it).
pub fn process_maps<'a>(records: impl IntoIterator<Item = &'a MappingRecord>) -> ProcessMaps {
    let mut text = String::new();
    for record in records {
        let path = record.path.to_string_lossy();
        if path.contains('\n') {
            continue;
        }
        let deleted = if record.deleted { " (deleted)" } else { "" };
        text.push_str(&format!(
            "{:x}-{:x} {} {:x} 00:00 0 {path}{deleted}\n",
            record.start, record.end, record.perms, record.offset
        ));
    }
    // Records are validated when read, so every line parses; a bad one only loses that line.
    text.lines()
        .filter_map(|line| ProcessMaps::parse(line).ok())
        .fold(ProcessMaps::default(), |mut maps, line| {
            maps.merge(line);
            maps
        })
}

/// The recorded maps with every file marked deleted, so that a symbolizer over them opens
/// none (a recording that names its frames needs no file of this machine).
pub fn every_file_untrusted(records: &[MappingRecord]) -> Vec<MappingRecord> {
    let mut maps = records.to_vec();
    for mapping in &mut maps {
        mapping.deleted = true;
    }
    maps
}

/// What the session knew when it ended; its presence marks a complete recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trailer {
    pub end_monotonic_ns: u64,
    /// How the target ended; null if it was still running; code and signal both null when an
    /// attached process exited.
    pub exit: Option<ExitStatus>,
    pub lost: LostRecord,
    /// Ring records that did not decode.
    pub malformed: u64,
    pub probes: Vec<ProbeInfo>,
    /// The target's peak resident set size as it exited (run mode), when known.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// Warnings the session printed that belong in the report.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Operations the target performed, when known only at its end (`--ops-from-output`);
    /// overrides the header's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<u64>,
    /// How much the target's threads were held while memprof caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<crate::report::Held>,
}

impl Trailer {
    /// The trailer of a session that ended at `end_monotonic_ns` with nothing else to say:
    /// no exit status, nothing lost, no probes, no warnings.
    pub fn ended_at(end_monotonic_ns: u64) -> Trailer {
        Trailer {
            end_monotonic_ns,
            exit: None,
            lost: LostRecord::default(),
            malformed: 0,
            probes: Vec::new(),
            peak_rss_bytes: None,
            warnings: Vec::new(),
            ops: None,
            held: None,
        }
    }
}

/// [`LostCounts`] in a serializable form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRecord {
    /// Indexed by `EventKind as usize`.
    pub by_kind: Vec<u64>,
    pub stack_errors: u64,
    pub inflight_full: u64,
}

impl LostRecord {
    /// Nothing lost (an empty `by_kind` counts as zeros).
    pub fn is_zero(&self) -> bool {
        self.stack_errors == 0 && self.inflight_full == 0 && self.by_kind.iter().all(|&n| n == 0)
    }
}

impl From<&LostCounts> for LostRecord {
    fn from(lost: &LostCounts) -> Self {
        LostRecord {
            by_kind: lost.by_kind.to_vec(),
            stack_errors: lost.stack_errors,
            inflight_full: lost.inflight_full,
        }
    }
}

impl From<&LostRecord> for LostCounts {
    fn from(lost: &LostRecord) -> Self {
        let mut counts = LostCounts {
            stack_errors: lost.stack_errors,
            inflight_full: lost.inflight_full,
            ..LostCounts::default()
        };
        for (slot, value) in counts.by_kind.iter_mut().zip(&lost.by_kind) {
            *slot = *value;
        }
        counts
    }
}
