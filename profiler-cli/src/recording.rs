//! The live side of recordings: writes what the collector ingests to `recording.mprof` as the
//! session goes (profiler-core's recording writer), with the maps and RSS samples.
//!
//! A failed write (disk full) must not end the session: the recording stops, the report is
//! still written, and the error is printed at the end.

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use profiler_core::{
    maps::{Mapping, ProcessMaps},
    module_file,
    recorder::Ingested,
    recording::{MappingRecord, Trailer, Writer, build_id_of},
    report::LostCounts,
    stacks::StackTable,
};

/// Build-ids by mapped path (None: the file has none or could not be read).
pub type BuildIds = BTreeMap<PathBuf, Option<String>>;

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
        stacks: &StackTable,
        lost: impl FnOnce() -> Option<LostCounts>,
    ) {
        self.with_writer(|writer| {
            if writer.next_event_ends_chunk()
                && let Some(lost) = lost()
            {
                writer.lost(&(&lost).into())?;
            }
            writer.ingested(ingested, stacks)
        });
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

/// The build-id of the file `mapping` maps, read from the file the target really maps (see
/// profiler-core's `module_file`); cached by path.
pub fn lookup_build_id(build_ids: &mut BuildIds, mapping: &Mapping, pid: u32) -> Option<String> {
    if !mapping.is_file() {
        return None;
    }
    build_ids
        .entry(mapping.path.clone())
        .or_insert_with(|| {
            module_file::open_mapped(pid, mapping)
                .ok()
                .and_then(build_id_of)
        })
        .clone()
}

/// [`lookup_build_id`] of the first mapping of `path` in `maps`.
pub fn build_id_of_path(
    build_ids: &mut BuildIds,
    maps: &ProcessMaps,
    path: &Path,
    pid: u32,
) -> Option<String> {
    if let Some(known) = build_ids.get(path) {
        return known.clone();
    }
    let mapping = maps.iter().find(|mapping| mapping.path == path)?;
    lookup_build_id(build_ids, mapping, pid)
}

/// The target's resident set size: `/proc/PID/statm`'s second field, in pages.
pub fn read_rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory arguments.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).unwrap_or(4096))
}

/// Starts recording the session into `capture`'s recording path (unless `--no-recording`):
/// the header holds the target, the clocks and its maps now.
pub fn start(
    collected: &mut crate::recorder::Collected,
    capture: &crate::cli::CaptureArgs,
    header: &SessionStart,
) -> Result<()> {
    let Some(path) = capture.recording_path() else {
        return Ok(());
    };
    let maps = ProcessMaps::read(header.pid).unwrap_or_default();
    let records = maps
        .iter()
        .map(|mapping| {
            let id = lookup_build_id(&mut collected.build_ids, mapping, header.pid);
            MappingRecord::new(mapping, id)
        })
        .collect();
    let header = profiler_core::recording::Header {
        memprof_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        command: header.command.clone(),
        executable: header.executable.clone(),
        pid: header.pid,
        mode: header.mode,
        start_unix_ns: collected.started_unix_ns,
        start_monotonic_ns: header.start_ns,
        maps: records,
        unwinding: Some(profiler_core::recording::Unwinding {
            mode: match capture.unwind {
                crate::cli::Unwind::Fp => "frame-pointers",
                crate::cli::Unwind::Dwarf => "dwarf",
            }
            .to_owned(),
            max_depth: capture.max_depth,
        }),
        ops: capture.ops,
        capture: collected.capture.clone(),
    };
    collected.recording = Some(RecordingSink::create(&path, &header)?);
    Ok(())
}

/// What [`start`] needs to know about the session.
pub struct SessionStart {
    pub command: Vec<String>,
    /// /proc/PID/exe.
    pub executable: Option<String>,
    pub pid: u32,
    pub mode: profiler_core::heap::Mode,
    pub start_ns: u64,
}

/// The end of a session: writes the report, then the recording's trailer (even when the
/// report could not be written), and says where the recording is.
pub fn finish_session(
    collected: &mut crate::recorder::Collected,
    meta: &crate::report::Meta<'_>,
    capture: &crate::cli::CaptureArgs,
) -> Result<()> {
    let reported = crate::report::finish(collected, meta, capture);
    finish_recording(collected, meta, true);
    reported
}

/// Writes the recording's trailer; `announce` prints where the recording is.
pub fn finish_recording(
    collected: &mut crate::recorder::Collected,
    meta: &crate::report::Meta<'_>,
    announce: bool,
) {
    if let Some(sink) = collected.recording.take() {
        let trailer = Trailer {
            end_monotonic_ns: meta.end_ns,
            exit: meta.exit,
            lost: (&meta.counters).into(),
            malformed: collected.malformed,
            probes: meta.sites.iter().map(crate::report::probe_info).collect(),
            peak_rss_bytes: collected.peak_rss_bytes,
            warnings: collected.warnings.clone(),
            ops: collected.recorder.analyses.ops(),
            held: collected.held,
        };
        let path = sink.path.clone();
        match sink.finish(&trailer) {
            Ok((_, 0)) if announce => eprintln!("recording:  {} (0 events)", path.display()),
            Ok((bytes, events)) if announce => eprintln!(
                "recording:  {} ({events} events, {:.1} bytes/event)",
                path.display(),
                bytes as f64 / events as f64
            ),
            Ok(_) => {}
            Err(error) => eprintln!("memprof: warning: recording incomplete: {error}"),
        }
    }
}
