//! `memprof diff A B`: what changed between two recorded runs, site by site.
//!
//! Each run is replayed and symbolized as `memprof report` does. Sites are matched by their
//! symbolized stack (the folded line of the flame graphs: `main (a.c:9);make (a.c:4)`), never
//! by address, so two runs with different ASLR bases, or even different builds, line up. The
//! four figures per site are the four flame graphs' weights (allocations, bytes allocated,
//! bytes live at the end, bytes live at the global peak), so the table, diff.json and diff.svg
//! agree with the flame graphs of each run.

//!
//! The comparison itself is profiler-core's `diff`; this module loads the two runs and writes
//! the files.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use profiler_core::{
    diff::{DiffReport, write_diff_flamegraph, write_diff_table},
    output_dir::OutputDir,
    render::{FlameKind, Printable},
    report::Report,
    session_end::build_report,
};

/// What `memprof diff` compares and where it writes.
pub struct DiffOptions {
    /// The runs before and after: recordings or session directories.
    pub a: PathBuf,
    pub b: PathBuf,
    pub output: PathBuf,
    /// Sites in the terminal table.
    pub top: usize,
    /// The flame graph diff.svg draws.
    pub flame: FlameKind,
}

pub fn diff(args: &DiffOptions) -> Result<i32> {
    let (a_file, a) = load(&args.a)?;
    let (b_file, b) = load(&args.b)?;
    let kind = args.flame;
    let report = DiffReport::new((a_file, &a), (b_file, &b));
    let dir = OutputDir::open(&args.output)?;
    let json = dir.write_atomically("diff.json", |out| {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        out.write_all(b"\n")
    })?;
    let svg = dir.write_atomically("diff.svg", |out| write_diff_flamegraph(&a, &b, kind, out))?;
    // The recordings' names are untrusted text for a terminal.
    let mut stdout = Printable::new(std::io::stdout().lock());
    // A closed stdout (`memprof diff ... | head`) is not a failure: the files are written.
    let _ = write_diff_table(&report, args.top, &mut stdout)
        .and_then(|()| stdout.finish())
        .and_then(|mut out| out.flush());
    stderr_line!("diff:       {}", json.display());
    stderr_line!("flamegraph: {}", svg.display());
    Ok(0)
}

/// A recording, or an output directory holding `recording.mprof`: replayed and symbolized.
fn load(path: &Path) -> Result<(PathBuf, Report)> {
    let file = if path.is_dir() {
        let file = path.join("recording.mprof");
        if !file.is_file() {
            bail!("{} holds no recording.mprof", path.display());
        }
        file
    } else {
        path.to_owned()
    };
    let replayed = crate::report_cmd::load(&file)?;
    let mut symbolizer = replayed.symbolizer();
    let report = build_report(&replayed.view(), &mut symbolizer, &replayed.meta);
    Ok((file, report))
}
