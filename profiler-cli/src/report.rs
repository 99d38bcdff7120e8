//! The end of a session: symbolize, build the report, print the summary, write the files.
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use profiler_core::{
    heap::Mode,
    output_dir::OutputDir,
    render::write_text,
    report::{ExitStatus, LostCounts, ProbeInfo, ReportMeta},
    session::{SessionView, write_all},
    symbolize::Symbolizer,
};

use crate::{cli::CaptureArgs, recorder::Collected, targets::ProbeSite};

/// What the session knows beyond the events.
pub struct Meta<'a> {
    pub mode: Mode,
    pub command: Vec<String>,
    /// /proc/PID/exe, when it could be read.
    pub executable: Option<String>,
    pub pid: u32,
    /// How the target ended: None while it runs; code and signal unknown when an attached
    /// process exited (memprof is not its parent).
    pub exit: Option<ExitStatus>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub sites: &'a [ProbeSite],
    pub counters: LostCounts,
}

pub fn finish(collected: &Collected, meta: &Meta<'_>, capture: &CaptureArgs) -> Result<()> {
    // Through /proc/PID/ while the target lives (attach): its namespace, its deleted files.
    let symbolizer = Symbolizer::for_process(&collected.maps, meta.pid);
    let report_meta = report_meta(meta);
    let mut build_ids = collected.build_ids.clone();
    finish_report(
        &collected.view(),
        collected.malformed,
        symbolizer,
        &report_meta,
        |path| crate::recording::build_id_of_path(&mut build_ids, &collected.maps, path, meta.pid),
        &capture.output,
        capture.top,
    )
}

/// Writes the files of one process image of a followed tree into `output`, without a
/// summary (the launched process's summary lists every image), and returns its report. The
/// modules `previous` (the last image's symbolizer) opened are used again where they are the
/// same files; the symbolizer is handed back for the next image.
pub fn write_image(
    collected: &Collected,
    meta: &Meta<'_>,
    output: &std::path::Path,
    previous: Option<Symbolizer>,
) -> (Result<profiler_core::report::Report>, Symbolizer) {
    let mut symbolizer = Symbolizer::for_process(&collected.maps, meta.pid);
    if let Some(previous) = previous {
        symbolizer = symbolizer.with_modules_of(previous);
    }
    let mut build_ids = collected.build_ids.clone();
    let written = OutputDir::open(output)
        .map_err(anyhow::Error::from)
        .and_then(|dir| {
            write_all(
                &dir,
                &collected.view(),
                &mut symbolizer,
                &report_meta(meta),
                |path| {
                    crate::recording::build_id_of_path(
                        &mut build_ids,
                        &collected.maps,
                        path,
                        meta.pid,
                    )
                },
            )
            .with_context(|| format!("cannot write the report into {}", output.display()))
        })
        .map(|outputs| outputs.report);
    (written, symbolizer)
}

fn report_meta(meta: &Meta<'_>) -> ReportMeta {
    ReportMeta {
        command: meta.command.clone(),
        executable: meta.executable.clone(),
        pid: meta.pid,
        mode: meta.mode,
        exit: meta.exit,
        start_ns: meta.start_ns,
        duration: Duration::from_nanos(meta.end_ns.saturating_sub(meta.start_ns)),
        probes: meta.sites.iter().map(probe_info).collect(),
        lost: meta.counters,
    }
}

/// Builds, writes and summarizes the report of `session`: the end of a live session, and of
/// `memprof report` replaying a recording (offline.rs). `build_id` names the build-id of a
/// mapped file for `profile.pb.gz`.
pub fn finish_report(
    session: &SessionView<'_>,
    malformed: u64,
    mut symbolizer: Symbolizer,
    report_meta: &ReportMeta,
    build_id: impl FnMut(&std::path::Path) -> Option<String>,
    output: &std::path::Path,
    top: usize,
) -> Result<()> {
    let started = Instant::now();
    let dir = OutputDir::open(output)?;
    let outputs = write_all(&dir, session, &mut symbolizer, report_meta, build_id)
        .with_context(|| format!("cannot write the report into {}", output.display()))?;

    // The files are written; a closed stderr (`memprof ... 2>&1 | head`) must not turn the
    // session into a failure, so the summary is best effort.
    let _ = print_summary(
        &outputs.report,
        malformed,
        &symbolizer,
        &outputs.files,
        top,
        started,
    );
    let _ = writeln!(std::io::stderr(), "pprof:      {}", outputs.pprof.display());
    Ok(())
}

fn print_summary(
    report: &profiler_core::report::Report,
    malformed: u64,
    symbolizer: &Symbolizer,
    files: &profiler_core::output::OutputFiles,
    top: usize,
    started: Instant,
) -> std::io::Result<()> {
    let mut stderr = std::io::stderr().lock();
    write_text(report, &mut stderr, top)?;
    if malformed > 0 {
        writeln!(stderr, "warning: {malformed} records could not be decoded")?;
    }
    for error in symbolizer.module_errors() {
        writeln!(stderr, "warning: {error}")?;
    }
    for warning in &report.warnings {
        writeln!(stderr, "warning: {warning}")?;
    }
    writeln!(stderr, "report:     {}", files.json.display())?;
    writeln!(stderr, "html:       {}", files.html.display())?;
    writeln!(
        stderr,
        "charts:     {} {}",
        files.timeline.display(),
        files.sizes.display()
    )?;
    for flame in &files.flamegraphs {
        writeln!(
            stderr,
            "flamegraph: {} ({})",
            flame.svg.display(),
            flame.folded.display()
        )?;
    }
    if std::env::var_os("MEMPROF_TIMINGS").is_some() {
        writeln!(stderr, "report written in {:?}", started.elapsed())?;
    }
    Ok(())
}

pub fn probe_info(site: &ProbeSite) -> ProbeInfo {
    ProbeInfo {
        function: site.symbol.to_owned(),
        module: site.module.display().to_string(),
        offset: site.file_offset,
        single_step: site.placement.single_step,
        aliases: site
            .aliases
            .iter()
            .map(|kind| kind.symbol().to_owned())
            .collect(),
    }
}
