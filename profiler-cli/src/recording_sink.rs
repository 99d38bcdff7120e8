//! The live side of recordings: writes what the collector ingests to `recording.mprof` as the
//! session goes (profiler-core's recording writer), with the maps and RSS samples.
//!
//! A failed write (disk full) must not end the session: the recording stops, the report is
//! still written, and the error is printed at the end.

use std::{
    collections::HashSet,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use profiler_core::{
    analysis::FragmentationSnapshot,
    heap::HeapState,
    maps::ProcessMaps,
    recorder::{Ingested, Recorder},
    recording::{MappingRecord, Trailer, Writer},
    report::{Capture, LostCounts},
};

use crate::{
    build_ids::{BuildIds, lookup_build_id},
    meta::SessionStart,
    options::StackOptions,
};

pub struct RecordingSink {
    pub path: PathBuf,
    writer: Option<Writer<File>>,
    /// Why the recording stopped early, if it did.
    error: Option<String>,
    /// Mappings already in the file: (start, end, offset, path).
    written: HashSet<(u64, u64, u64, PathBuf)>,
    /// The target, whose files are opened through `/proc/PID/root` for their build-ids.
    pid: u32,
}

impl RecordingSink {
    /// Creates the file and writes the header (whose maps are marked written).
    pub fn create(path: &Path, header: &profiler_core::recording::Header) -> Result<RecordingSink> {
        let file = profiler_core::output_dir::create_file(path)?;
        let writer = Writer::create(file, header)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let written = header.maps.iter().map(key).collect();
        Ok(RecordingSink {
            path: path.to_owned(),
            writer: Some(writer),
            error: None,
            written,
            pid: header.pid,
        })
    }

    /// Adds an ingested event. Before the event that completes a chunk, the loss counters
    /// `lost` reads go in too, so every chunk ends with the losses up to its last event.
    pub fn ingested(
        &mut self,
        ingested: &Ingested,
        recorder: &Recorder,
        lost: impl FnOnce() -> Option<LostCounts>,
    ) {
        self.with_writer(|writer| {
            if writer.next_event_ends_chunk()
                && let Some(lost) = lost()
            {
                writer.lost(&(&lost).into())?;
            }
            writer.ingested(ingested, recorder)
        });
    }

    /// The end of the heap, after the last event (see [`Writer::heap_end`]).
    pub fn heap_end(&mut self, heap: &HeapState, at_peak: Option<&Option<FragmentationSnapshot>>) {
        self.with_writer(|writer| writer.heap_end(heap, at_peak));
    }

    /// Records the mappings of `maps` not recorded yet, with their build-ids.
    pub fn maps(&mut self, maps: &ProcessMaps, build_ids: &mut BuildIds) {
        let pid = self.pid;
        let fresh: Vec<MappingRecord> = maps
            .iter()
            .filter(|mapping| {
                !self.written.contains(&(
                    mapping.start,
                    mapping.end,
                    mapping.offset,
                    mapping.path.clone(),
                ))
            })
            .map(|mapping| MappingRecord::new(mapping, lookup_build_id(build_ids, mapping, pid)))
            .collect();
        if fresh.is_empty() {
            return;
        }
        self.written.extend(fresh.iter().map(key));
        self.with_writer(|writer| writer.maps(&fresh));
    }

    /// The leak check's result, so that a replay shows the classes the live session found.
    pub fn leak_check(&mut self, check: &profiler_core::leak_check::LeakCheck) {
        self.with_writer(|writer| {
            writer.leak_check(check);
            Ok(())
        });
    }

    /// The frames the session's report named (see [`Collected::record_symbols`]).
    ///
    /// [`Collected::record_symbols`]: crate::collected::Collected::record_symbols
    pub fn symbols(&mut self, symbols: &profiler_core::symbolize::RecordedSymbols) {
        self.with_writer(|writer| writer.symbols(symbols));
    }

    pub fn rss(&mut self, ts_ns: u64, bytes: u64) {
        self.with_writer(|writer| {
            writer.rss(ts_ns, bytes);
            Ok(())
        });
    }

    /// Writes the pending chunk if it is a second old, with the loss counters `lost` reads
    /// (only then: reading them costs a syscall per CPU).
    pub fn flush_if_due(&mut self, lost: impl FnOnce() -> Option<LostCounts>) {
        self.with_writer(|writer| {
            if !writer.flush_due() {
                return Ok(());
            }
            if let Some(lost) = lost() {
                writer.lost(&(&lost).into())?;
            }
            writer.flush_chunk()
        });
    }

    /// Writes the trailer. Returns how the recording ended: its size and events, or the
    /// error that stopped it.
    pub fn finish(mut self, trailer: &Trailer) -> Result<(u64, u64), String> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let writer = self
            .writer
            .take()
            .expect("a sink without error has its writer");
        let (bytes, events) = (writer.bytes_written(), writer.events());
        match writer.finish(trailer) {
            Ok(file) => Ok((file.metadata().map(|m| m.len()).unwrap_or(bytes), events)),
            Err(error) => Err(error.to_string()),
        }
    }

    fn with_writer(&mut self, write: impl FnOnce(&mut Writer<File>) -> std::io::Result<()>) {
        let Some(writer) = &mut self.writer else {
            return;
        };
        if let Err(error) = write(writer) {
            self.error = Some(format!("cannot write {}: {error}", self.path.display()));
            self.writer = None;
        }
    }
}

fn key(record: &MappingRecord) -> (u64, u64, u64, PathBuf) {
    (record.start, record.end, record.offset, record.path.clone())
}

/// What the header says of the session besides the target and its maps.
pub struct HeaderFacts {
    /// `--ops`.
    pub ops: Option<u64>,
    pub capture: Option<Capture>,
    /// The allocator serving the target, when known.
    pub allocator: Option<profiler_core::analysis::allocator::Allocator>,
}

impl RecordingSink {
    /// Starts recording the session into `path`: the header holds the target, the clocks, how
    /// stacks are captured and the target's maps now.
    pub fn start(
        path: &Path,
        start: &SessionStart,
        stacks: StackOptions,
        facts: HeaderFacts,
        started_unix_ns: u64,
        build_ids: &mut BuildIds,
    ) -> Result<RecordingSink> {
        let maps = ProcessMaps::read(start.pid).unwrap_or_default();
        let records = maps
            .iter()
            .map(|mapping| {
                let id = lookup_build_id(build_ids, mapping, start.pid);
                MappingRecord::new(mapping, id)
            })
            .collect();
        let header = profiler_core::recording::Header {
            memprof_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            command: start.command.clone(),
            executable: start.executable.clone(),
            pid: start.pid,
            mode: start.mode,
            start_unix_ns: started_unix_ns,
            start_monotonic_ns: start.start_ns,
            maps: records,
            unwinding: Some(profiler_core::recording::Unwinding {
                mode: stacks.unwind.name().to_owned(),
                max_depth: stacks.max_depth,
            }),
            ops: facts.ops,
            capture: facts.capture,
            allocator: facts.allocator,
            lineage: start.lineage,
        };
        RecordingSink::create(path, &header)
    }

    /// Writes the trailer; `announce` prints where the recording is.
    pub fn close(self, trailer: &Trailer, announce: bool) {
        let path = self.path.clone();
        match self.finish(trailer) {
            Ok((_, 0)) if announce => stderr_line!("recording:  {} (0 events)", path.display()),
            Ok((bytes, events)) if announce => stderr_line!(
                "recording:  {} ({events} events, {:.1} bytes/event)",
                path.display(),
                bytes as f64 / events as f64
            ),
            Ok(_) => {}
            Err(error) => stderr_line!("memprof: warning: recording incomplete: {error}"),
        }
    }
}
