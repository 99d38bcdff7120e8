//! `memprof compare`: the same workload once per allocator (each preloaded into the target
//! only, each under `memprof run`), side by side.
//!
//! Each run is a child `memprof run` (this executable): runs are isolated (their own probes,
//! ring and report; a crash or a failed preload costs one column, not the comparison), the
//! child's environment is exactly what `run --env` gives, and the report.json it writes is the
//! interface, so what compare shows is what a user would find running memprof by hand. The
//! target's stdout comes back through the child, which writes only to stderr itself.
//!
//! Figures are the workload's: allocations made by libraries only the preloaded allocator
//! brought in (its start-up) are counted apart, so a deterministic program shows the same
//! counts under every allocator (a C++ program's operators included: memprof probes them where
//! the allocator serves them itself). Where memprof cannot count exactly under an allocator
//! (lost events, calls report.json's `warnings` names), the table says so instead of showing
//! the numbers.
mod allocators;
mod column;
mod figures;
mod render;
mod workload;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use profiler_core::{output_dir::OutputDir, report::Report};
use std::io::Write as _;

pub use allocators::{ALL as ALL_ALLOCATORS, AllocatorName, executable};
use column::{Column, RunResult};
use figures::Figures;

/// `memprof compare`'s validated options.
pub struct CompareOptions {
    pub allocators: Vec<AllocatorName>,
    pub libraries: Vec<(AllocatorName, PathBuf)>,
    pub output: PathBuf,
    pub runs: u32,
    pub load: Option<String>,
    pub ops: Option<u64>,
    pub command: Vec<OsString>,
}

/// Runs the comparison; exits 0 when every allocator's column has figures.
pub fn compare(options: &CompareOptions) -> Result<i32> {
    let mut allocators: Vec<AllocatorName> = Vec::new();
    for allocator in &options.allocators {
        if !allocators.contains(allocator) {
            allocators.push(*allocator);
        }
    }
    if allocators.is_empty() {
        allocators = allocators::ALL.to_vec();
    }
    // Every library is checked before anything runs.
    let libraries = allocators
        .iter()
        .map(|a| a.library(&options.libraries))
        .collect::<Result<Vec<_>>>()?;
    let program = Path::new(options.command.first().context("no command given")?);
    let Some(exe) = allocators::executable(program) else {
        bail!("command not found: {}", program.display());
    };
    crate::privileges::check()?;
    let dir = OutputDir::open(&options.output)?;

    let mut columns: Vec<Column> = allocators
        .iter()
        .zip(libraries)
        .map(|(&allocator, library)| Column {
            allocator,
            library,
            runs: Vec::new(),
            ops_override: options.ops,
        })
        .collect();
    let startup: Vec<_> = columns
        .iter()
        .map(|c| {
            c.library
                .as_deref()
                .map(|library| allocators::brought_in(&exe, library))
                .unwrap_or_default()
        })
        .collect();
    // Rounds of every allocator, so that a noisy moment hits all of them alike.
    for round in 1..=options.runs {
        for (column, startup) in columns.iter_mut().zip(&startup) {
            let name = column.allocator.name();
            let allocator_dir = dir.subdir(name)?;
            let run_dir = if options.runs == 1 {
                allocator_dir
            } else {
                allocator_dir.subdir(&format!("run-{round}"))?
            };
            let output = run_dir.path().to_owned();
            stderr_line!("memprof compare: {name} (run {round} of {})", options.runs);
            let spec = workload::RunSpec {
                label: name,
                library: column.library.as_deref(),
                output: &run_dir,
                command: &options.command,
                load: options.load.as_deref(),
                ops: options.ops,
            };
            let result = match workload::run(&spec) {
                Ok(outcome) => {
                    let figures = read_figures(&output, startup).map_err(|error| {
                        format!("{error} ({})", workload::last_log_line(&outcome.log))
                    });
                    RunResult {
                        output,
                        outcome: Some(outcome),
                        figures,
                    }
                }
                Err(error) => RunResult {
                    output,
                    outcome: None,
                    figures: Err(format!("{error:#}")),
                },
            };
            column.runs.push(result);
        }
    }

    let table = render::table(&columns);
    // The files below are written even when stdout's reader is gone.
    let _ = write!(std::io::stdout(), "{table}");
    let json = serde_json::json!({
        "command": options.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
        "load": options.load,
        "runs": options.runs,
        "allocators": columns.iter().map(Column::to_json).collect::<Vec<_>>(),
    });
    let json_text = serde_json::to_string_pretty(&json)?;
    let json_path =
        dir.write_atomically("compare.json", |out| out.write_all(json_text.as_bytes()))?;
    let svg_text = render::svg(&columns);
    let svg_path = dir.write_atomically("compare.svg", |out| out.write_all(svg_text.as_bytes()))?;
    stderr_line!("comparison: {}", json_path.display());
    stderr_line!("chart:      {}", svg_path.display());
    Ok(if columns.iter().all(|c| c.figures().is_some()) {
        0
    } else {
        1
    })
}

fn read_figures(output: &Path, startup: &std::collections::HashSet<String>) -> Result<Figures> {
    let path = output.join("report.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no report ({})", path.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a memprof report", path.display()))?;
    Ok(Figures::from_report(&report, startup))
}
