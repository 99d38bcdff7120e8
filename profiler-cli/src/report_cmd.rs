//! `memprof report FILE`: replays a recording through the same recorder, report and renderers
//! a live session uses (profiler-core's `offline` and `session`), and writes the same files.
//!
//! Frames are named as the live session named them, from the recording. A recording without
//! them (cut short) is symbolized from the recorded maps: each module is opened by its path
//! and checked against its recorded build-id; a module that changed since (rebuilt,
//! upgraded) is not trusted, and its frames are shown as `module+offset`.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use profiler_core::{
    offline::{ModuleFiles, Replayed},
    output_dir::{OutputDir, create_file},
    recording::{ReadError, Reader, write_synthetic_churn},
    render::{FlameKind, Printable, write_flamegraph, write_folded, write_json, write_text},
    session_end::{build_report, write_pprof_file},
};

use crate::report_writer;

/// What `memprof report` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The terminal summary, on stdout.
    Text,
    Json,
    Flamegraph,
    Folded,
    Pprof,
    /// Every file a live session writes, and the summary.
    All,
}

/// Reads the recording at `file`, rebuilds the session and writes what `format` asks for.
/// `ops` overrides the operation count the recording holds.
pub fn report(
    file: &Path,
    format: Format,
    output: &Path,
    top: usize,
    ops: Option<u64>,
) -> Result<i32> {
    let mut replayed = load(file)?;
    if ops.is_some() {
        replayed.ops = ops;
    }
    let mut symbolizer = replayed.symbolizer();
    let session = replayed.view();
    let meta = &replayed.meta;
    let build_id = |path: &Path| replayed.build_id(path);
    if format == Format::All {
        report_writer::finish_report(
            &session,
            replayed.malformed,
            &mut symbolizer,
            meta,
            build_id,
            output,
            top,
        )?;
        return Ok(0);
    }
    let report = build_report(&session, &mut symbolizer, meta);
    if format == Format::Text {
        let mut stdout = std::io::stdout().lock();
        // A reader that stops early (`memprof report --format text ... | head`) has what it
        // wanted: not a failure.
        match write_text(&report, &mut stdout, top).and_then(|()| stdout.flush()) {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written?,
        }
        return Ok(0);
    }
    let dir = OutputDir::open(output)?;
    let mut written = Vec::new();
    match format {
        Format::Json => {
            written.push(dir.write_atomically("report.json", |out| write_json(&report, out))?);
        }
        Format::Flamegraph | Format::Folded => {
            for kind in FlameKind::ALL {
                let stem = kind.file_stem();
                written.push(if format == Format::Flamegraph {
                    dir.write_atomically(&format!("{stem}.svg"), |out| {
                        write_flamegraph(&report, kind, out)
                    })?
                } else {
                    dir.write_atomically(&format!("{stem}.folded"), |out| {
                        write_folded(&report, kind, out)
                    })?
                });
            }
        }
        Format::Pprof => {
            written.push(write_pprof_file(
                &dir,
                &session,
                &mut symbolizer,
                meta,
                build_id,
            )?);
        }
        Format::All | Format::Text => unreachable!("handled above"),
    }
    for path in written {
        stderr_line!("wrote {}", path.display());
    }
    Ok(0)
}

/// Replays the recording at `file` (also used by `memprof diff`), saying on stderr where it
/// stops early and which recorded files are not trusted for symbols.
pub fn load(file: &Path) -> Result<Replayed> {
    let source = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    // Unbuffered: the reader reads each chunk whole into its own buffer, so a BufReader
    // would only copy every chunk once more.
    let reader = Reader::new(source).with_context(|| format!("cannot read {}", file.display()))?;
    // Opened again only when the first reading cannot stand alone (see `offline::load`).
    let reopen = || Reader::new(File::open(file).map_err(ReadError::opening)?);
    let replayed = profiler_core::offline::load(reader, reopen, ModuleFiles::Host)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if let Some(end) = &replayed.early_end {
        stderr_line!(
            "memprof: warning: {}: {end}; the report covers the {} events before it",
            file.display(),
            replayed.events
        );
    }
    // Recorded paths: untrusted text for a terminal.
    let mut stderr = Printable::new(std::io::stderr().lock());
    for replaced in &replayed.replaced {
        let _ = writeln!(stderr, "memprof: warning: {replaced}");
    }
    let _ = stderr.finish();
    Ok(replayed)
}

/// `memprof synthesize-recording`: a deterministic churn recording for the benchmark.
pub fn synthesize(file: &Path, events: u64) -> Result<i32> {
    let out = create_file(file)?;
    let (out, _) = write_synthetic_churn(BufWriter::new(out), events)
        .with_context(|| format!("cannot write {}", file.display()))?;
    out.into_inner()
        .map_err(std::io::IntoInnerError::into_error)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::EventKind;
    use profiler_core::{
        event::Event,
        recording::{Header, Trailer, Writer, synthetic_header},
    };

    /// A recording of eight 16-byte mallocs made with `--ops` = `ops`.
    fn recording_with_ops(path: &Path, ops: Option<u64>) {
        let header = Header {
            ops,
            ..synthetic_header()
        };
        let start = header.start_monotonic_ns;
        let mut writer = Writer::create(File::create(path).unwrap(), &header).unwrap();
        for i in 0..8 {
            let malloc = Event {
                kind: EventKind::Malloc,
                tid: 1,
                ts_ns: start + i * 1000,
                addr: 0x1000 + i * 0x100,
                size: 16,
                old_addr: 0,
                aux: 0,
                flags: 0,
            };
            writer.event(&malloc, None, None).unwrap();
        }
        let trailer = Trailer::ended_at(start + 10_000);
        writer.finish(&trailer).unwrap();
    }

    /// `analyses.per_operation` of `memprof report FILE --format json [--ops OPS]`.
    fn per_operation(file: &Path, ops: Option<u64>) -> serde_json::Value {
        let output = file.with_extension("out");
        report(file, Format::Json, &output, 10, ops).unwrap();
        let json = std::fs::read_to_string(output.join("report.json")).unwrap();
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        report["analyses"]["per_operation"].clone()
    }

    #[test]
    fn report_uses_the_recorded_ops_unless_given_others() {
        let dir = tempfile::tempdir().unwrap();
        let with_ops = dir.path().join("ops.mprof");
        recording_with_ops(&with_ops, Some(4));
        let recorded = per_operation(&with_ops, None);
        assert_eq!(recorded["ops"], 4);
        assert_eq!(recorded["allocations_per_op"], 2.0);
        assert_eq!(recorded["bytes_per_op"], 32.0);
        let overridden = per_operation(&with_ops, Some(16));
        assert_eq!(overridden["ops"], 16);
        assert_eq!(overridden["allocations_per_op"], 0.5);
        let without = dir.path().join("none.mprof");
        recording_with_ops(&without, None);
        assert!(per_operation(&without, None).is_null());
        assert_eq!(per_operation(&without, Some(2))["allocations_per_op"], 4.0);
    }
}
