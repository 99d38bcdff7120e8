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
use profiler_core::report::Report;

pub use allocators::AllocatorName;
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
    std::fs::create_dir_all(&options.output)
        .with_context(|| format!("cannot create {}", options.output.display()))?;

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
            let output = if options.runs == 1 {
                options.output.join(name)
            } else {
                options.output.join(name).join(format!("run-{round}"))
            };
            eprintln!("memprof compare: {name} (run {round} of {})", options.runs);
            let spec = workload::RunSpec {
                label: name,
                library: column.library.as_deref(),
                output: &output,
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
    print!("{table}");
    let json = serde_json::json!({
        "command": options.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
        "load": options.load,
        "runs": options.runs,
        "allocators": columns.iter().map(Column::to_json).collect::<Vec<_>>(),
    });
    let json_path = options.output.join("compare.json");
    write(&json_path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    let svg_path = options.output.join("compare.svg");
    write(&svg_path, render::svg(&columns).as_bytes())?;
    eprintln!("comparison: {}", json_path.display());
    eprintln!("chart:      {}", svg_path.display());
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

/// Writes through a temporary file renamed into place: whole or not at all.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("cannot write {}", path.display()))
}
