//! The end of a session: symbolize, build the report, print the summary, write the files.
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use profiler_core::{
    heap::Mode,
    output::write_outputs,
    render::write_text,
    report::{ExitStatus, LostCounts, ProbeInfo, ReportMeta, build_report},
    symbolize::Symbolizer,
};

use crate::{cli::CaptureArgs, launch::Exit, recorder::Collected, targets::ProbeSite};

/// What the session knows beyond the events.
pub struct Meta<'a> {
    pub mode: Mode,
    pub command: Vec<String>,
    pub pid: u32,
    pub exit: Option<Exit>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub sites: &'a [ProbeSite],
    pub counters: LostCounts,
}

pub fn finish(collected: &Collected, meta: &Meta<'_>, capture: &CaptureArgs) -> Result<()> {
    let started = Instant::now();
    let mut symbolizer = Symbolizer::new(&collected.maps);
    let report_meta = ReportMeta {
        command: meta.command.clone(),
        pid: meta.pid,
        mode: meta.mode,
        exit: meta.exit.map(|exit| match exit {
            Exit::Code(code) => ExitStatus {
                code: Some(code),
                signal: None,
            },
            Exit::Signal(signal) => ExitStatus {
                code: None,
                signal: Some(signal),
            },
        }),
        start_ns: meta.start_ns,
        duration: Duration::from_nanos(meta.end_ns.saturating_sub(meta.start_ns)),
        probes: meta.sites.iter().map(probe_info).collect(),
        lost: meta.counters,
    };
    let report = build_report(
        &collected.recorder.heap,
        &collected.recorder.stacks,
        &mut symbolizer,
        &report_meta,
    );
    let title = format!("memprof: leaked bytes of {}", meta.command.join(" "));
    let files = write_outputs(&capture.output, &report, &title)
        .with_context(|| format!("cannot write the report into {}", capture.output.display()))?;

    // The files are written; a closed stderr (`memprof ... 2>&1 | head`) must not turn the
    // session into a failure, so the summary is best effort.
    let _ = print_summary(
        &report,
        collected,
        &symbolizer,
        &files,
        capture.top,
        started,
    );
    Ok(())
}

fn print_summary(
    report: &profiler_core::report::Report,
    collected: &Collected,
    symbolizer: &Symbolizer,
    files: &profiler_core::output::OutputFiles,
    top: usize,
    started: Instant,
) -> std::io::Result<()> {
    let mut stderr = std::io::stderr().lock();
    write_text(report, &mut stderr, top)?;
    if collected.malformed > 0 {
        writeln!(
            stderr,
            "warning: {} records could not be decoded",
            collected.malformed
        )?;
    }
    for error in symbolizer.module_errors() {
        writeln!(stderr, "warning: {error}")?;
    }
    writeln!(stderr, "report:     {}", files.json.display())?;
    writeln!(stderr, "flamegraph: {}", files.flamegraph.display())?;
    writeln!(stderr, "folded:     {}", files.folded.display())?;
    if std::env::var_os("MEMPROF_TIMINGS").is_some() {
        writeln!(stderr, "report written in {:?}", started.elapsed())?;
    }
    Ok(())
}

fn probe_info(site: &ProbeSite) -> ProbeInfo {
    ProbeInfo {
        function: site.kind.symbol().to_owned(),
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
