//! Writes a session's report: symbolize, build the report, write the files, print the
//! summary; for a live session, a followed tree's images and a replayed recording alike.
use std::{io::Write as _, time::Instant};

use anyhow::{Context as _, Result};
use profiler_core::{
    output_dir::OutputDir,
    render::{Printable, write_text},
    report::ReportMeta,
    session_end::{SessionView, write_all},
    symbolize::Symbolizer,
};

use crate::{
    build_ids::{BuildIds, build_id_of_path},
    meta::Meta,
};

/// Writes the files of one process image of a followed tree into `output`, without a
/// summary (the launched process's summary lists every image), and returns its report. The
/// modules `previous` (the last image's symbolizer) opened are used again where they are the
/// same files; the symbolizer is handed back for the next image.
pub fn write_image(
    session: &SessionView<'_>,
    mut build_ids: BuildIds,
    meta: &Meta<'_>,
    output: &std::path::Path,
    previous: Option<Symbolizer>,
) -> (Result<profiler_core::report::Report>, Symbolizer) {
    let mut symbolizer = Symbolizer::for_process(session.maps, meta.pid);
    if let Some(previous) = previous {
        symbolizer = symbolizer.with_modules_of(previous);
    }
    let written = OutputDir::open(output)
        .map_err(anyhow::Error::from)
        .and_then(|dir| {
            write_all(
                &dir,
                session,
                &mut symbolizer,
                &meta.report_meta(),
                |path| build_id_of_path(&mut build_ids, session.maps, path, meta.pid),
            )
            .with_context(|| format!("cannot write the report into {}", output.display()))
        })
        .map(|outputs| outputs.report);
    (written, symbolizer)
}

/// Builds, writes and summarizes the report of `session`: the end of a live session, and of
/// `memprof report` replaying a recording (offline.rs). `build_id` names the build-id of a
/// mapped file for `profile.pb.gz`. Returns the report (a live session records parts of it).
pub fn finish_report(
    session: &SessionView<'_>,
    malformed: u64,
    symbolizer: &mut Symbolizer,
    report_meta: &ReportMeta,
    build_id: impl FnMut(&std::path::Path) -> Option<String>,
    output: &std::path::Path,
    top: usize,
) -> Result<profiler_core::report::Report> {
    let started = Instant::now();
    let dir = OutputDir::open(output)?;
    let outputs = write_all(&dir, session, symbolizer, report_meta, build_id)
        .with_context(|| format!("cannot write the report into {}", output.display()))?;

    // The files are written; a closed stderr (`memprof ... 2>&1 | head`) must not turn the
    // session into a failure, so the summary is best effort.
    let _ = print_summary(
        &outputs.report,
        malformed,
        symbolizer,
        &outputs.files,
        top,
        started,
    );
    let _ = writeln!(std::io::stderr(), "pprof:      {}", outputs.pprof.display());
    Ok(outputs.report)
}

fn print_summary(
    report: &profiler_core::report::Report,
    malformed: u64,
    symbolizer: &Symbolizer,
    files: &profiler_core::output::OutputFiles,
    top: usize,
    started: Instant,
) -> std::io::Result<()> {
    // Names, paths and warnings may come from a recording: untrusted text for a terminal.
    let mut stderr = Printable::new(std::io::stderr().lock());
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
    if crate::timings::enabled() {
        writeln!(stderr, "report written in {:?}", started.elapsed())?;
        writeln!(stderr, "memprof itself: {}", own_usage())?;
    }
    stderr.finish().map(drop)
}

/// memprof's own CPU time and peak resident set so far (the target's are not in them).
fn own_usage() -> String {
    // SAFETY: rusage is plain integers: all zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a pointer to a struct this function owns.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return "unknown (getrusage failed)".into();
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| vm_hwm_kib(&status))
        .unwrap_or(usage.ru_maxrss as u64);
    format!(
        "{:.3} s user, {:.3} s system, peak RSS {} MiB",
        secs(usage.ru_utime),
        secs(usage.ru_stime),
        peak_kib / 1024
    )
}

/// The `VmHWM` line of a `/proc/PID/status` text: the high-water mark of the process's own
/// memory, in KiB. Not getrusage's `ru_maxrss`: Linux carries into that the high-water mark
/// of the memory an exec replaced, which for a process spawned through vfork (Rust's
/// `Command`, `posix_spawn`) is its parent's: `memprof report` started by a benchmark
/// holding 64 MiB said 64 MiB where it used 8.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_this_processs_own_high_water_mark() {
        assert_eq!(
            vm_hwm_kib("Name:\tmemprof\nVmPeak:\t  9000 kB\nVmHWM:\t  8192 kB\n"),
            Some(8192)
        );
        assert_eq!(vm_hwm_kib("Name:\tmemprof\n"), None);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(vm_hwm_kib(&status).is_some_and(|kib| kib > 0), "{status}");
    }
}
