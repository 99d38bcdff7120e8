//! Rebuilds a session from a recording (`memprof report`): the replayed [`Recorder`] plus
//! what the report needs beyond the events (maps, clocks, the trailer's exit and counters).
//!
//! Frames are named as the live session named them when the recording carries its names
//! ([`Replayed::symbolizer`]), and then no file of this machine is read. A recording without
//! them (cut short) is symbolized from the files named in its maps. A file is trusted only
//! when it still has the recorded build-id; otherwise its mappings are marked replaced and
//! the symbolizer shows their frames as `module+offset`, never opening them.

use crate::maps::ProcessMaps;
use crate::recorder::Recorder;
use crate::recording::{
    MappingRecord, ReadError, Reader, Replay, build_id, every_file_untrusted, process_maps, replay,
    replay_answered,
};
use crate::report::{LostCounts, ReportMeta};
use crate::session_end::SessionView;
use crate::symbolize::{RecordedSymbols, Symbolizer};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which files of this machine the symbolizer may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleFiles {
    /// A recorded file whose path on this machine holds the recorded build-id.
    Host,
    /// None: every recorded file is treated as missing, so the report is the same on any
    /// machine (frames the recording does not name are `module+offset`). For reproducible
    /// output such as golden tests.
    Absent,
}

/// A recorded file that is not used for symbols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplacedModule {
    pub path: PathBuf,
    /// The build-id of the file at that path now, if it exists and has one.
    pub found: Option<String>,
    pub recorded: String,
}

impl fmt::Display for ReplacedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not the file that was recorded (build-id {} now, {} then): its frames are \
             shown as module+offset",
            self.path.display(),
            self.found.as_deref().unwrap_or("missing"),
            self.recorded
        )
    }
}

/// A session rebuilt from a recording.
pub struct Replayed {
    pub recorder: Recorder,
    /// The recorded maps, replaced files marked `deleted` (the symbolizer skips them).
    pub maps: ProcessMaps,
    /// Recorded build-ids by path.
    pub build_ids: BTreeMap<PathBuf, Option<String>>,
    pub started_unix_ns: u64,
    pub peak_rss_bytes: Option<u64>,
    pub warnings: Vec<String>,
    /// How much the target's threads were held (from the trailer).
    pub held: Option<crate::report::Held>,
    /// Records the live collector could not decode.
    pub malformed: u64,
    pub meta: ReportMeta,
    /// Events replayed.
    pub events: u64,
    /// Why the recording stops before its trailer, if it does.
    pub early_end: Option<ReadError>,
    /// Recorded files not trusted for symbols, each once, in recording order.
    pub replaced: Vec<ReplacedModule>,
    /// The recorded capture path.
    pub capture: Option<crate::report::Capture>,
    /// The leak check the live session ran, as recorded.
    pub leak_check: Option<crate::leak_check::LeakCheck>,
    /// Operations the target performed, as the live session knew them.
    pub ops: Option<u64>,
    /// The frames the live session's report named, if the recording carries them.
    pub symbols: Option<RecordedSymbols>,
}

impl Replayed {
    pub fn view(&self) -> SessionView<'_> {
        SessionView {
            recorder: &self.recorder,
            maps: &self.maps,
            started_unix_ns: self.started_unix_ns,
            peak_rss_bytes: self.peak_rss_bytes,
            held: self.held,
            warnings: &self.warnings,
            processes: &[],
            capture: self.capture.as_ref(),
            leak_check: self.leak_check.as_ref(),
            ops: self.ops,
        }
    }

    /// A symbolizer for the report: it names the frames the recording carries as the live
    /// session did; when the recording carries none, it opens the trusted recorded files
    /// ([`Replayed::maps`]).
    pub fn symbolizer(&self) -> Symbolizer {
        let symbolizer = Symbolizer::new(&self.maps);
        match &self.symbols {
            Some(symbols) => symbolizer.with_recorded(symbols),
            None => symbolizer,
        }
    }

    /// The recorded build-id of `path` (for the pprof mappings).
    pub fn build_id(&self, path: &Path) -> Option<String> {
        self.build_ids.get(path).cloned().flatten()
    }
}

/// Replays `reader` into a fresh recorder and rebuilds the rest of the session. A recording
/// that stops early is replayed up to where it stops ([`Replayed::early_end`]); corruption is
/// an error. The heap answers its lookups from the recording when it can
/// ([`replay_answered`]); otherwise `reopen` gives the recording again, from its start, for a
/// replay with a table of every address.
pub fn load<R: Read + Send>(
    reader: Reader<R>,
    reopen: impl FnOnce() -> Result<Reader<R>, ReadError>,
    files: ModuleFiles,
) -> Result<Replayed, ReadError> {
    let mode = reader.header().mode;
    let mut recorder = Recorder::new(mode);
    let replay = match replay_answered(reader, &mut recorder)? {
        Some(replay) => replay,
        None => {
            recorder = Recorder::new(mode);
            replay(reopen()?, &mut recorder)?
        }
    };
    // Every event is applied and the leak check came recorded: the reports need only the
    // live blocks.
    recorder.heap.forget_freed();
    // As the live session did: the per-operation figures use the recorded `--ops`, or the
    // count the target printed (`--ops-from-output`, in the trailer).
    let printed_ops = replay.trailer.as_ref().and_then(|t| t.ops);
    let ops = printed_ops.or(replay.header.ops);
    let (maps, replaced) = match files {
        // The recording names the frames its report shows: no file of this machine is read.
        _ if replay.symbols.is_some() => (every_file_untrusted(&replay.maps), Vec::new()),
        ModuleFiles::Host => checked_maps(&replay.maps, build_id),
        // Files recorded without a build-id cannot be checked: not trusted either.
        ModuleFiles::Absent => (
            every_file_untrusted(&replay.maps),
            checked_maps(&replay.maps, |_| None).1,
        ),
    };
    let trailer = replay.trailer.as_ref();
    let mut warnings = trailer.map(|t| t.warnings.clone()).unwrap_or_default();
    if replay.skipped > 0 {
        warnings.push(format!(
            "{} records of kinds this memprof does not know were left out (the recording was \
             written by a newer memprof)",
            replay.skipped
        ));
    }
    Ok(Replayed {
        maps: process_maps(&maps),
        build_ids: replay
            .maps
            .iter()
            .map(|m| (m.path.clone(), m.build_id.clone()))
            .collect(),
        started_unix_ns: replay.header.start_unix_ns,
        peak_rss_bytes: trailer.and_then(|t| t.peak_rss_bytes),
        warnings,
        held: trailer.and_then(|t| t.held),
        malformed: trailer.map_or(0, |t| t.malformed),
        meta: report_meta(&replay),
        events: replay.events,
        capture: replay.header.capture.clone(),
        leak_check: replay.leak_check.clone(),
        ops,
        early_end: replay.early_end,
        symbols: replay.symbols,
        replaced,
        recorder,
    })
}

fn report_meta(replay: &Replay) -> ReportMeta {
    let header = &replay.header;
    let trailer = replay.trailer.as_ref();
    let end_ns = trailer.map_or(replay.last_ts_ns, |t| t.end_monotonic_ns);
    ReportMeta {
        command: header.command.clone(),
        executable: header.executable.clone(),
        pid: header.pid,
        mode: header.mode,
        exit: trailer.and_then(|t| t.exit),
        start_ns: header.start_monotonic_ns,
        duration: Duration::from_nanos(end_ns.saturating_sub(header.start_monotonic_ns)),
        probes: trailer.map(|t| t.probes.clone()).unwrap_or_default(),
        // A recording without trailer has the counters of its last timer flush.
        lost: trailer
            .map(|t| &t.lost)
            .or(replay.lost.as_ref())
            .map(LostCounts::from)
            .unwrap_or_default(),
    }
}

/// The recorded maps, with every mapping of a file whose build-id (as `current` reads it
/// now) is not the recorded one marked deleted, and those files listed once each.
pub(crate) fn checked_maps(
    recorded: &[MappingRecord],
    mut current: impl FnMut(&Path) -> Option<String>,
) -> (Vec<MappingRecord>, Vec<ReplacedModule>) {
    let mut found: BTreeMap<PathBuf, Option<String>> = BTreeMap::new();
    let mut replaced = Vec::new();
    let mut maps = recorded.to_vec();
    for mapping in &mut maps {
        let Some(expected) = &mapping.build_id else {
            continue;
        };
        let first_check = !found.contains_key(&mapping.path);
        let now = found
            .entry(mapping.path.clone())
            .or_insert_with(|| current(&mapping.path));
        if now.as_ref() == Some(expected) {
            continue;
        }
        if first_check {
            replaced.push(ReplacedModule {
                path: mapping.path.clone(),
                found: now.clone(),
                recorded: expected.clone(),
            });
        }
        mapping.deleted = true;
    }
    (maps, replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &Path, build_id: Option<&str>) -> MappingRecord {
        MappingRecord {
            start: 0x1000,
            end: 0x2000,
            perms: "r-xp".into(),
            offset: 0,
            path: path.to_owned(),
            deleted: false,
            build_id: build_id.map(str::to_owned),
        }
    }

    #[test]
    fn a_module_with_another_build_id_is_marked_replaced() {
        let exe = std::env::current_exe().unwrap();
        let real = build_id(&exe).unwrap();
        let (maps, replaced) = checked_maps(&[record(&exe, Some(&real))], build_id);
        assert!(!maps[0].deleted, "same build-id: trusted");
        assert!(replaced.is_empty());
        let (maps, replaced) = checked_maps(&[record(&exe, Some("00ff"))], build_id);
        assert!(maps[0].deleted, "other build-id: module+offset");
        assert_eq!(replaced[0].found.as_deref(), Some(real.as_str()));
        let rebuilt = process_maps(&maps);
        assert!(rebuilt.find(0x1800).unwrap().deleted);
    }

    /// A recording that names its frames is reported without reading any file it names: none
    /// is checked (so none is called replaced), and none is opened for a frame.
    #[test]
    fn a_recording_with_its_symbols_reads_no_file() {
        use crate::recording::{Header, Writer, synthetic_header};
        use crate::symbolize::{Frame, RecordedSymbols};
        let exe = std::env::current_exe().unwrap();
        let header = Header {
            maps: vec![record(&exe, Some("00ff"))],
            ..synthetic_header()
        };
        let frame = Frame {
            address: 0x1100,
            module: "recorded".into(),
            module_offset: 0x100,
            function: Some("recorded_function".into()),
            file: None,
            line: None,
            inlined: false,
        };
        let symbols = RecordedSymbols::of(&[(0x1100, vec![frame.clone()])], &[]);
        let mut writer = Writer::create(Vec::new(), &header).unwrap();
        writer.symbols(&symbols).unwrap();
        let trailer = crate::recording::Trailer::ended_at(header.start_monotonic_ns);
        let bytes = writer.finish(&trailer).unwrap();
        let open = || Reader::new(&bytes[..]);
        let replayed = load(open().unwrap(), open, ModuleFiles::Host).unwrap();
        assert!(replayed.replaced.is_empty(), "{:?}", replayed.replaced);
        assert!(replayed.maps.iter().all(|mapping| mapping.deleted));
        let mut symbolizer = replayed.symbolizer();
        assert_eq!(symbolizer.frames(0x1100), [frame]);
        assert_eq!(symbolizer.symbolize(0x1200).function, None);
    }

    #[test]
    fn a_missing_module_is_named_once() {
        let path = Path::new("/nonexistent/libgone.so");
        let mut second = record(path, Some("abcd"));
        second.start = 0x2000;
        second.end = 0x3000;
        let (maps, replaced) = checked_maps(&[record(path, Some("abcd")), second], build_id);
        assert!(maps.iter().all(|m| m.deleted));
        assert_eq!(
            replaced.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "/nonexistent/libgone.so is not the file that was recorded (build-id missing now, \
              abcd then): its frames are shown as module+offset"
            ]
        );
    }

    #[test]
    fn recorded_paths_naming_a_fifo_or_a_device_are_neither_waited_on_nor_read() {
        // A crafted recording can name any path as a mapped object.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("libfifo.so");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RUSR).unwrap();
        let mut zero = record(Path::new("/dev/zero"), None);
        zero.start = 0x2000;
        zero.end = 0x3000;
        let (records, replaced) = checked_maps(&[record(&fifo, None), zero], build_id);
        assert!(replaced.is_empty(), "no build-id was recorded to compare");
        let maps = process_maps(&records);
        let mut symbolizer = crate::symbolize::Symbolizer::new(&maps);
        let fifo_frame = symbolizer.symbolize(0x1010);
        assert_eq!(fifo_frame.function, None);
        let zero_frame = symbolizer.symbolize(0x2010);
        assert_eq!(zero_frame.function, None);
        let mut errors: Vec<String> = symbolizer
            .module_errors()
            .map(ToString::to_string)
            .collect();
        errors.sort();
        assert_eq!(
            errors,
            [
                "cannot read /dev/zero: not a regular file".to_owned(),
                format!("cannot read {}: not a regular file", fifo.display()),
            ]
        );
    }

    /// A hostile file for a recorded path: the paths a crafted recording can name.
    fn hostile_paths(dir: &Path) -> Vec<std::path::PathBuf> {
        let fifo = dir.join("fifo.so");
        let _ = rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RUSR);
        let link = dir.join("zero.so");
        let _ = std::os::unix::fs::symlink("/dev/zero", &link);
        vec![
            "/dev/zero".into(),
            "/dev/urandom".into(),
            "/proc/self/mem".into(),
            "/proc/kcore".into(),
            "/".into(),
            "".into(),
            dir.to_owned(),
            fifo,
            link,
            "relative/lib.so".into(),
            format!("/{}", "x/".repeat(3000)).into(),
            std::env::current_exe().unwrap(),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever files a recording names (in its header's executable and maps, and in later
        /// maps records), `memprof report` replays it and builds the whole report: no panic,
        /// no hang on a FIFO, no endless read of a device.
        #[test]
        fn any_recorded_paths_give_a_report(
            picks in proptest::collection::vec((0usize..12, 0u64..4), 1..8),
            executable in 0usize..12,
            frames in proptest::collection::vec(0u64..0x4000, 1..6),
        ) {
            use crate::recording::{Header, Trailer, Writer};
            use profiler_common::EventKind;
            let dir = tempfile::tempdir().unwrap();
            let paths = hostile_paths(dir.path());
            let mapping = |(index, slot): (usize, u64)| MappingRecord {
                start: 0x10_0000 + slot * 0x1000,
                end: 0x10_1000 + slot * 0x1000,
                perms: "r-xp".into(),
                offset: 0,
                path: paths[index].clone(),
                deleted: false,
                build_id: None,
            };
            let header = Header {
                memprof_version: "0.1.0".into(),
                kernel: "6.18.0".into(),
                command: vec!["./hostile".into()],
                executable: Some(paths[executable].display().to_string()),
                pid: 1,
                mode: crate::heap::Mode::Run,
                start_unix_ns: 0,
                start_monotonic_ns: 0,
                maps: picks.iter().copied().map(mapping).collect(),
                unwinding: None,
                ops: None,
                capture: None,
                allocator: None,
                lineage: None,
            };
            let mut writer = Writer::create(Vec::new(), &header).unwrap();
            let later: Vec<MappingRecord> = picks.iter().rev().copied().map(mapping).collect();
            writer.maps(&later).unwrap();
            let stack: Vec<u64> = frames.iter().map(|offset| 0x10_0000 + offset).collect();
            let event = crate::event::Event {
                kind: EventKind::Malloc,
                tid: 1,
                ts_ns: 10,
                addr: 0x5000,
                size: 8,
                old_addr: 0,
                aux: 0,
                flags: 0,
            };
            writer
                .event(&event, Some(crate::stacks::StackId(0)), Some((&stack[..], false)))
                .unwrap();
            let trailer = Trailer::ended_at(20);
            let bytes = writer.finish(&trailer).unwrap();
            let open = || crate::recording::Reader::new(&bytes[..]);
            let replayed = load(open().unwrap(), open, ModuleFiles::Host).unwrap();
            let mut symbolizer = crate::symbolize::Symbolizer::new(&replayed.maps);
            let report = crate::session_end::build_report(&replayed.view(), &mut symbolizer, &replayed.meta);
            proptest::prop_assert_eq!(report.summary.live_blocks, 1);
            proptest::prop_assert_eq!(report.leaks.len(), 1);
        }
    }
}
