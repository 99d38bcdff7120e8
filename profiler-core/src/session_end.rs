//! The end of a session, live or replayed from a recording: the report of what was collected,
//! and every file memprof writes from it (the renderers' files and `profile.pb.gz`).
//!
//! The CLI's live collector and [`crate::offline`] both end here, so `memprof run` and
//! `memprof report` write the same files from the same events.

use crate::analysis::{self, AnalysisOptions, allocator::Allocator};
use crate::maps::ProcessMaps;
use crate::output::{OutputDir, OutputError, OutputFiles, write_outputs};
use crate::recorder::Recorder;
use crate::render::pprof::{PprofLine, PprofMapping, PprofMeta, write_pprof};
use crate::report::stack_names::StackNames;
use crate::report::{Report, ReportMeta, StackFrame, build_sites_report};
use crate::symbolize::Symbolizer;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the pprof file in the output directory.
pub const PPROF_FILE: &str = "profile.pb.gz";

/// What a session collected, as the report needs it.
#[derive(Clone, Copy)]
pub struct SessionView<'a> {
    pub recorder: &'a Recorder,
    /// Union of the target's memory maps seen during the session.
    pub maps: &'a ProcessMaps,
    /// Wall clock when collection started, ns since the Unix epoch.
    pub started_unix_ns: u64,
    /// The target's peak resident set size, when it was read.
    pub peak_rss_bytes: Option<u64>,
    /// How much the target's threads were held, if at all.
    pub held: Option<crate::report::Held>,
    /// What the probes could not see, copied into the report.
    pub warnings: &'a [String],
    /// The capture path, when known.
    pub capture: Option<&'a crate::report::Capture>,
    /// The leak check's classes, when one ran.
    pub leak_check: Option<&'a crate::leak_check::LeakCheck>,
    /// The process images of a followed tree (`run`), for `Report::processes`.
    pub processes: &'a [crate::report::ProcessImage],
    /// Operations the target performed (`--ops`, `--ops-from-output`), if known.
    pub ops: Option<u64>,
}

/// Everything [`write_all`] produced.
pub struct AllOutputs {
    pub report: Report,
    pub files: OutputFiles,
    pub pprof: PathBuf,
}

/// The report of `session`, analyses included: the one place a report is built, every stack
/// symbolized once for all its sections.
pub fn build_report(
    session: &SessionView<'_>,
    symbolizer: &mut Symbolizer,
    meta: &ReportMeta,
) -> Report {
    let recorder = session.recorder;
    let mut names = StackNames::new(symbolizer);
    let mut report = build_sites_report(
        &recorder.heap,
        &recorder.stacks,
        &recorder.sites,
        session.leak_check,
        &mut names,
        meta,
    );
    // Times are relative to the start, as in the rest of the report.
    let options = AnalysisOptions {
        start_ns: meta.start_ns,
        end_ns: meta.start_ns + meta.duration.as_nanos() as u64,
        ops: session.ops,
    };
    let allocator = Allocator::from_probes(&report.probes);
    report.analyses = Some(analysis::report_with_stacks(
        recorder, &mut names, &options, allocator,
    ));
    report.target.peak_rss_bytes = session.peak_rss_bytes;
    report.target.held = session.held;
    report.target.capture = session.capture.cloned();
    report.warnings = session.warnings.to_vec();
    report.processes = session.processes.to_vec();
    // The launched process's own leak sites are this report's.
    let own = crate::report::ProcessLeak::top(&report.leaks, crate::report::PROCESS_TOP_LEAKS);
    if let Some(process) = report.processes.iter_mut().find(|p| p.output == ".") {
        process.top_leaks = own;
    }
    report
}

/// Builds the report of `session` and writes all its files into `dir`: those of
/// [`write_outputs`], then `profile.pb.gz`. `build_id` gives the build-id of a mapped file
/// for the profile's mappings.
pub fn write_all(
    dir: &OutputDir,
    session: &SessionView<'_>,
    symbolizer: &mut Symbolizer,
    meta: &ReportMeta,
    build_id: impl FnMut(&Path) -> Option<String>,
) -> Result<AllOutputs, OutputError> {
    let report = build_report(session, symbolizer, meta);
    let files = write_outputs(dir, &report)?;
    let pprof = write_pprof_file(dir, session, symbolizer, meta, build_id)?;
    Ok(AllOutputs {
        report,
        files,
        pprof,
    })
}

/// Writes `dir/profile.pb.gz` atomically and returns its path.
pub fn write_pprof_file(
    dir: &OutputDir,
    session: &SessionView<'_>,
    symbolizer: &mut Symbolizer,
    meta: &ReportMeta,
    build_id: impl FnMut(&Path) -> Option<String>,
) -> Result<PathBuf, OutputError> {
    dir.write_atomically(PPROF_FILE, |out| {
        write_session_pprof(session, symbolizer, meta, build_id, out)
    })
}

/// The session's per-site statistics as a gzipped pprof profile.
pub fn write_session_pprof(
    session: &SessionView<'_>,
    symbolizer: &mut Symbolizer,
    meta: &ReportMeta,
    mut build_id: impl FnMut(&Path) -> Option<String>,
    out: impl io::Write,
) -> io::Result<()> {
    let mappings = session
        .maps
        .iter()
        .filter(|mapping| mapping.is_file())
        .map(|mapping| PprofMapping {
            start: mapping.start,
            end: mapping.end,
            offset: mapping.offset,
            path: mapping.path.clone(),
            build_id: build_id(&mapping.path),
        })
        .collect();
    let pprof_meta = PprofMeta {
        time_nanos: session.started_unix_ns,
        duration_nanos: meta.duration.as_nanos() as u64,
        mappings,
    };
    let stacks = &session.recorder.stacks;
    // Streamed: one sample per stack, however many there are, and no copy of them first.
    let sites = session
        .recorder
        .sites
        .iter()
        .map(|(id, counts)| (stacks.get(id), counts));
    let lines = |address: u64| -> Vec<PprofLine> {
        symbolizer
            .frames(address)
            .iter()
            .map(|frame| {
                let frame = StackFrame::from(frame.clone());
                PprofLine {
                    // Named as every other output names it.
                    function: frame.display_name(),
                    file: frame.file,
                    line: frame.line,
                }
            })
            .collect()
    };
    write_pprof(sites, &pprof_meta, lines, out)
}
