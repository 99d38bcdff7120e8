//! The comparison as a text table (metrics down, allocators across) and as an SVG bar chart.
use std::fmt::Write as _;

use profiler_core::render::{escape, short_bytes, thousands};

use super::column::Column;

/// Shown instead of a figure memprof knows to be wrong.
const NOT_EXACT: &str = "not exact*";

/// One row of the table: a label and each column's cell.
fn rows(columns: &[Column]) -> Vec<(&'static str, Vec<String>)> {
    let dash = || "-".to_owned();
    let cell = |column: &Column, exact_only: bool, value: Option<String>| {
        if column.figures().is_none() {
            "FAILED".to_owned()
        } else if exact_only && !column.exact() {
            NOT_EXACT.to_owned()
        } else {
            value.unwrap_or_else(dash)
        }
    };
    type Row = (&'static str, bool, fn(&Column) -> Option<String>);
    let table: [Row; 16] = [
        ("malloc served by", false, |c| {
            let module = &c.figures()?.module;
            Some(module.rsplit('/').next().unwrap_or(module).to_owned())
        }),
        ("wall time", false, |c| {
            Some(format!("{:.3} s", c.wall_secs()?))
        }),
        ("ops", false, |c| Some(thousands(c.ops()?))),
        ("ops/s", false, |c| Some(format!("{:.1}", c.ops_per_sec()?))),
        ("allocations", true, |c| {
            Some(thousands(c.figures()?.allocations))
        }),
        ("bytes allocated", true, |c| {
            Some(thousands(c.figures()?.bytes_allocated))
        }),
        ("allocations/op", true, |c| {
            per_op(c, c.figures()?.allocations)
        }),
        ("bytes/op", true, |c| {
            per_op(c, c.figures()?.bytes_allocated)
        }),
        ("peak live bytes", true, |c| {
            Some(short_bytes(c.figures()?.peak_live_bytes))
        }),
        ("peak RSS", false, |c| {
            Some(short_bytes(c.peak_rss_bytes()?))
        }),
        ("RSS / peak live", true, |c| {
            Some(format!("{:.1}x", c.overhead()?))
        }),
        ("internal fragmentation", true, |c| {
            Some(format!(
                "{:.1} %",
                c.figures()?.internal_fragmentation? * 100.0
            ))
        }),
        ("size-class waste", true, |c| {
            Some(short_bytes(c.figures()?.size_class_waste_bytes?))
        }),
        ("leaked blocks", true, |c| {
            Some(thousands(c.figures()?.leak_blocks))
        }),
        ("leaked bytes", true, |c| {
            Some(thousands(c.figures()?.leak_bytes))
        }),
        ("allocator start-up", false, |c| {
            let startup = c.figures()?.startup;
            Some(format!(
                "{} / {}",
                startup.allocations,
                short_bytes(startup.bytes)
            ))
        }),
    ];
    table
        .iter()
        .map(|(label, exact_only, value)| {
            let cells = columns
                .iter()
                .map(|column| cell(column, *exact_only, value(column)))
                .collect();
            (*label, cells)
        })
        .collect()
}

/// `value` per operation of the workload, when the operation count is known.
fn per_op(column: &Column, value: u64) -> Option<String> {
    let ops = column.ops().filter(|&n| n > 0)?;
    Some(format!("{:.2}", value as f64 / ops as f64))
}

/// The table and the notes under it.
pub fn table(columns: &[Column]) -> String {
    let rows = rows(columns);
    let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            rows.iter()
                .map(|(_, cells)| cells[i].len())
                .chain([column.allocator.name().len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:label_width$}", "");
    for (column, width) in columns.iter().zip(&widths) {
        let _ = write!(out, "  {:>width$}", column.allocator.name());
    }
    out.push('\n');
    for (label, cells) in &rows {
        let _ = write!(out, "{label:label_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(out, "  {cell:>width$}");
        }
        out.push('\n');
    }
    let mut any_inexact = false;
    for column in columns {
        any_inexact |= column.figures().is_some() && !column.exact();
        for note in column.notes() {
            let _ = writeln!(out, "{}: {note}", column.allocator.name());
        }
    }
    if any_inexact {
        let _ = writeln!(
            out,
            "* {NOT_EXACT}: memprof cannot count these exactly under that allocator (see its \
             note); the numbers are in compare.json and its report.json"
        );
    }
    out
}

/// Colour of each allocator's bars.
fn colour(index: usize) -> &'static str {
    [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2",
    ][index % 6]
}

/// A bar chart per metric, allocators as bars; a metric is left out when no allocator has it.
pub fn svg(columns: &[Column]) -> String {
    type Metric = (&'static str, fn(&Column) -> Option<f64>, fn(f64) -> String);
    let bytes = |v: f64| short_bytes(v as u64);
    let count = |v: f64| thousands(v as u64);
    let metrics: [Metric; 9] = [
        (
            "wall time (s), lower is better",
            |c| c.wall_secs(),
            |v| format!("{v:.3} s"),
        ),
        (
            "workload throughput (ops/s), higher is better",
            |c| c.ops_per_sec(),
            |v| format!("{v:.1}"),
        ),
        (
            "allocations",
            |c| {
                c.exact()
                    .then(|| c.figures())
                    .flatten()
                    .map(|f| f.allocations as f64)
            },
            count,
        ),
        (
            "bytes allocated",
            |c| {
                c.exact()
                    .then(|| c.figures())
                    .flatten()
                    .map(|f| f.bytes_allocated as f64)
            },
            bytes,
        ),
        (
            "peak live heap",
            |c| {
                c.exact()
                    .then(|| c.figures())
                    .flatten()
                    .map(|f| f.peak_live_bytes as f64)
            },
            bytes,
        ),
        (
            "peak RSS (VmHWM)",
            |c| c.peak_rss_bytes().map(|b| b as f64),
            bytes,
        ),
        (
            "peak RSS / peak live heap",
            |c| c.exact().then(|| c.overhead()).flatten(),
            |v| format!("{v:.1}x"),
        ),
        (
            "internal fragmentation (usable - requested) / usable, lower is better",
            |c| {
                c.exact()
                    .then(|| c.figures())
                    .flatten()
                    .and_then(|f| f.internal_fragmentation)
                    .map(|ratio| ratio * 100.0)
            },
            |v| format!("{v:.1} %"),
        ),
        (
            "leaked bytes at exit",
            |c| {
                c.exact()
                    .then(|| c.figures())
                    .flatten()
                    .map(|f| f.leak_bytes as f64)
            },
            bytes,
        ),
    ];
    const WIDTH: f64 = 900.0;
    const LABEL: f64 = 110.0;
    const BAR: f64 = 20.0;
    const GAP: f64 = 6.0;
    const TITLE: f64 = 28.0;
    const VALUE: f64 = 130.0;
    let mut body = String::new();
    let mut y = 40.0;
    for (title, value, format) in metrics {
        let values: Vec<Option<f64>> = columns.iter().map(value).collect();
        let Some(max) = values.iter().flatten().copied().reduce(f64::max) else {
            continue;
        };
        let _ = writeln!(
            body,
            r#"<text x="10" y="{}" font-weight="bold">{}</text>"#,
            y + 16.0,
            escape(title)
        );
        y += TITLE;
        for (index, (column, value)) in columns.iter().zip(&values).enumerate() {
            let _ = writeln!(
                body,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                LABEL - 8.0,
                y + 15.0,
                column.allocator.name()
            );
            let (length, text) = match value {
                Some(v) if max > 0.0 => ((v / max) * (WIDTH - LABEL - VALUE), format(*v)),
                Some(v) => (0.0, format(*v)),
                None => (0.0, "n/a".to_owned()),
            };
            let _ = writeln!(
                body,
                r#"<rect x="{LABEL}" y="{y}" width="{length:.1}" height="{BAR}" fill="{}"/>"#,
                colour(index)
            );
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{}">{}</text>"#,
                LABEL + length + 6.0,
                y + 15.0,
                escape(&text)
            );
            y += BAR + GAP;
        }
        y += 14.0;
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="24" font-size="17" font-weight="bold">memprof compare</text>
{body}</svg>
"#,
        height = y + 10.0
    )
}
