//! One allocator's column of the comparison: its runs, the figures shown (medians of the
//! timings, counts of the first run) and why a figure cannot be trusted.
use std::path::PathBuf;

use serde_json::{Value, json};

use super::{allocators::AllocatorName, figures::Figures, workload::Outcome};

/// One run of one allocator.
pub struct RunResult {
    pub output: PathBuf,
    pub outcome: Option<Outcome>,
    /// The run's figures, or why there are none.
    pub figures: Result<Figures, String>,
}

pub struct Column {
    pub allocator: AllocatorName,
    pub library: Option<PathBuf>,
    pub runs: Vec<RunResult>,
    /// `--ops`: the operation count when the workload prints none.
    pub ops_override: Option<u64>,
}

impl Column {
    /// The first successful run's figures, None when every run failed or the preload did not
    /// take (then `failure` says why).
    pub fn figures(&self) -> Option<&Figures> {
        if self.failure().is_some() {
            return None;
        }
        self.runs.iter().find_map(|run| run.figures.as_ref().ok())
    }

    /// Why this column has no figures.
    pub fn failure(&self) -> Option<String> {
        let first = self.runs.iter().find_map(|run| run.figures.as_ref().ok());
        let Some(figures) = first else {
            return Some(
                self.runs
                    .iter()
                    .find_map(|run| run.figures.as_ref().err().cloned())
                    .unwrap_or_else(|| "not run".to_owned()),
            );
        };
        let expected = self.allocator.expected();
        if figures.serving != Some(expected) {
            let how = match self.library.as_deref() {
                Some(library) => format!("LD_PRELOAD={} did not take", library.display()),
                None => "glibc does not serve malloc".to_owned(),
            };
            let module = if figures.module.is_empty() {
                "nothing".to_owned()
            } else {
                figures.module.clone()
            };
            return Some(format!(
                "{how}: malloc is served by {module} (a static binary, or one with its own \
                 allocator?)"
            ));
        }
        None
    }

    /// Figures are exact unless memprof lost events or warned about calls it cannot see (C++
    /// operators are probed where the allocator serves them: no warning for those).
    pub fn exact(&self) -> bool {
        self.figures()
            .is_some_and(|f| f.warnings.is_empty() && f.lost_events == 0)
    }

    /// The workload's operation count: `--ops`, else what it printed.
    pub fn ops(&self) -> Option<u64> {
        self.ops_override.or_else(|| {
            self.runs
                .iter()
                .find_map(|run| run.outcome.as_ref().and_then(|o| o.ops))
        })
    }

    pub fn wall_secs(&self) -> Option<f64> {
        median(self.ok_figures().map(|f| f.wall_secs))
    }

    pub fn ops_per_sec(&self) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|run| run.outcome.as_ref().and_then(|o| o.ops_per_sec)),
        )
    }

    pub fn peak_rss_bytes(&self) -> Option<u64> {
        median(
            self.ok_figures()
                .filter_map(|f| f.peak_rss_bytes)
                .map(|b| b as f64),
        )
        .map(|b| b as u64)
    }

    /// Peak RSS (median) per peak live byte.
    pub fn overhead(&self) -> Option<f64> {
        let live = self.figures()?.peak_live_bytes;
        (live > 0).then(|| self.peak_rss_bytes().map(|rss| rss as f64 / live as f64))?
    }

    fn ok_figures(&self) -> impl Iterator<Item = &Figures> {
        self.runs.iter().filter_map(|run| run.figures.as_ref().ok())
    }

    /// Notes shown under the table.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(failure) = self.failure() {
            notes.push(format!("FAILED: {failure}"));
            return notes;
        }
        let figures = self.figures().expect("no failure");
        notes.extend(figures.warnings.iter().map(|w| format!("NOT EXACT: {w}")));
        if figures.lost_events > 0 {
            notes.push(format!(
                "NOT EXACT: {} events were lost (a larger --ring-mib helps)",
                figures.lost_events
            ));
        }
        if figures.startup.allocations > 0 {
            notes.push(format!(
                "{} allocations ({} bytes, {} blocks live at exit) were made by libraries only \
                 the preload brought in (their start-up), and are left out of the workload's \
                 figures",
                figures.startup.allocations, figures.startup.bytes, figures.startup.live_blocks
            ));
        }
        let counts: Vec<(u64, u64, u64)> = self
            .ok_figures()
            .map(|f| (f.allocations, f.bytes_allocated, f.leak_blocks))
            .collect();
        if counts.windows(2).any(|pair| pair[0] != pair[1]) {
            notes.push(format!(
                "allocation counts differ between runs (allocations, bytes, leaks): {counts:?}"
            ));
        }
        for run in &self.runs {
            if let Some(outcome) = &run.outcome {
                notes.extend(outcome.notes.iter().cloned());
                if !outcome.status.success() {
                    notes.push(format!(
                        "memprof run exited with {} ({})",
                        outcome.status,
                        run.output.display()
                    ));
                }
            }
            if let Err(error) = &run.figures {
                notes.push(format!("a run failed: {error}"));
            }
        }
        notes
    }

    pub fn to_json(&self) -> Value {
        let figures = self.figures();
        let ops = self.ops();
        let per_op = |value: u64| ops.filter(|&n| n > 0).map(|n| value as f64 / n as f64);
        json!({
            "allocator": self.allocator.name(),
            "library": self.library,
            "ok": figures.is_some(),
            "exact": self.exact(),
            "failure": self.failure(),
            "module": figures.map(|f| &f.module),
            "wall_secs": self.wall_secs(),
            "ops": ops,
            "ops_per_sec": self.ops_per_sec(),
            "allocations": figures.map(|f| f.allocations),
            "bytes_allocated": figures.map(|f| f.bytes_allocated),
            "allocations_per_op": figures.and_then(|f| per_op(f.allocations)),
            "bytes_per_op": figures.and_then(|f| per_op(f.bytes_allocated)),
            "peak_live_bytes": figures.map(|f| f.peak_live_bytes),
            "peak_rss_bytes": self.peak_rss_bytes(),
            "overhead": self.overhead(),
            "internal_fragmentation": figures.and_then(|f| f.internal_fragmentation),
            "size_class_waste_bytes": figures.and_then(|f| f.size_class_waste_bytes),
            "leaks": figures.map(|f| json!({"blocks": f.leak_blocks, "bytes": f.leak_bytes})),
            "startup": figures.map(|f| json!({
                "allocations": f.startup.allocations,
                "bytes": f.startup.bytes,
                "live_blocks": f.startup.live_blocks,
                "live_bytes": f.startup.live_bytes,
            })),
            "lost_events": figures.map(|f| f.lost_events),
            "warnings": figures.map(|f| f.warnings.clone()).unwrap_or_default(),
            "notes": self.notes(),
            "runs": self.runs.iter().map(run_json).collect::<Vec<_>>(),
        })
    }
}

fn run_json(run: &RunResult) -> Value {
    let outcome = run.outcome.as_ref();
    let figures = run.figures.as_ref().ok();
    json!({
        "output": run.output,
        "exit_code": outcome.and_then(|o| o.status.code()),
        "ops": outcome.and_then(|o| o.ops),
        "ops_per_sec": outcome.and_then(|o| o.ops_per_sec),
        "wall_secs": figures.map(|f| f.wall_secs),
        "allocations": figures.map(|f| f.allocations),
        "bytes_allocated": figures.map(|f| f.bytes_allocated),
        "leak_blocks": figures.map(|f| f.leak_blocks),
        "leak_bytes": figures.map(|f| f.leak_bytes),
        "peak_live_bytes": figures.map(|f| f.peak_live_bytes),
        "peak_rss_bytes": figures.and_then(|f| f.peak_rss_bytes),
        "error": run.figures.as_ref().err(),
    })
}

/// The median (the mean of the middle two for an even count).
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}
