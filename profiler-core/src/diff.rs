//! What changed between two runs, site by site (`memprof diff A B`): the comparison, its
//! JSON schema (`diff.json`), the differential flame graph and the terminal table.
//!
//! Each run is replayed and symbolized as `memprof report` does. Sites are matched by their
//! symbolized stack (the folded line of the flame graphs: `main (a.c:9);make (a.c:4)`), never
//! by address, so two runs with different ASLR bases, or even different builds, line up. The
//! figures per site are the flame graphs' weights (allocations, bytes allocated, bytes live at
//! the end, bytes live at the global peak) and, where a leak check ran, the bytes it found
//! lost, so the table, diff.json and diff.svg agree with the flame graphs of each run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use inferno::{differential, flamegraph};
use serde::Serialize;

use crate::render::{FlameKind, folded_lines_of, short_bytes, thousands};
use crate::report::Report;

/// The per-site figures, in this order everywhere.
const METRICS: [(FlameKind, &str); 5] = [
    (FlameKind::AllocCount, "allocations"),
    (FlameKind::AllocBytes, "bytes_allocated"),
    (FlameKind::LiveAtEnd, "live_bytes_at_end"),
    (FlameKind::Peak, "live_bytes_at_peak"),
    (FlameKind::Lost, "lost_bytes_at_end"),
];

/// One figure in both runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    pub a: u64,
    pub b: u64,
    pub delta: i64,
}

impl Change {
    fn new(a: u64, b: u64) -> Change {
        Change {
            a,
            b,
            delta: b as i64 - a as i64,
        }
    }
}

/// One site (one symbolized stack) in both runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteDiff {
    /// Frames root first, as in the folded files (`[no stack]` for what had none).
    pub stack: Vec<String>,
    pub allocations: Change,
    pub bytes_allocated: Change,
    pub live_bytes_at_end: Change,
    pub live_bytes_at_peak: Change,
    /// Bytes the leak check found lost (0 on a side without one).
    pub lost_bytes_at_end: Change,
}

impl SiteDiff {
    fn changes(&self) -> [Change; 5] {
        [
            self.allocations,
            self.bytes_allocated,
            self.live_bytes_at_end,
            self.live_bytes_at_peak,
            self.lost_bytes_at_end,
        ]
    }

    /// Largest change in bytes, then in allocations: the sort key.
    fn magnitude(&self) -> (u64, u64) {
        let bytes = [
            self.bytes_allocated,
            self.live_bytes_at_end,
            self.live_bytes_at_peak,
        ]
        .iter()
        .map(|c| c.delta.unsigned_abs())
        .max()
        .unwrap_or(0);
        (bytes, self.allocations.delta.unsigned_abs())
    }
}

/// The run a side of the diff came from.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub recording: PathBuf,
    pub command: Vec<String>,
    pub duration_secs: f64,
}

/// diff.json.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub a: RunInfo,
    pub b: RunInfo,
    pub totals: Totals,
    /// Every site of either run, largest change first.
    pub sites: Vec<SiteDiff>,
}

impl DiffReport {
    /// Compares run `a` with run `b`, each given with the recording it was replayed from.
    pub fn new((a_file, a): (PathBuf, &Report), (b_file, b): (PathBuf, &Report)) -> DiffReport {
        let run = |file: PathBuf, report: &Report| RunInfo {
            recording: file,
            command: report.target.command.clone(),
            duration_secs: report.target.duration_secs,
        };
        DiffReport {
            totals: totals(a, b),
            sites: site_diffs(a, b),
            a: run(a_file, a),
            b: run(b_file, b),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Totals {
    pub allocations: Change,
    pub bytes_allocated: Change,
    pub live_bytes_at_end: Change,
    /// Bytes the leak check found lost (0 on a side without one).
    pub lost_bytes_at_end: Change,
    pub peak_live_bytes: Change,
    pub lost_events: Change,
}

/// Per-site figures of two reports, matched by folded stack.
pub fn site_diffs(a: &Report, b: &Report) -> Vec<SiteDiff> {
    let mut by_stack: BTreeMap<String, [[u64; 2]; METRICS.len()]> = BTreeMap::new();
    for (side, report) in [a, b].into_iter().enumerate() {
        for (metric, (kind, _)) in METRICS.iter().enumerate() {
            for line in folded_lines_of(report, *kind) {
                let (stack, weight) = split_folded(&line);
                by_stack.entry(stack.to_owned()).or_default()[metric][side] += weight;
            }
        }
    }
    let mut sites: Vec<SiteDiff> = by_stack
        .into_iter()
        .map(|(stack, figures)| {
            let change = |metric: usize| Change::new(figures[metric][0], figures[metric][1]);
            SiteDiff {
                stack: stack.split(';').map(str::to_owned).collect(),
                allocations: change(0),
                bytes_allocated: change(1),
                live_bytes_at_end: change(2),
                live_bytes_at_peak: change(3),
                lost_bytes_at_end: change(4),
            }
        })
        .collect();
    // Stable: equal magnitudes keep the stacks' alphabetical order.
    sites.sort_by_key(|site| std::cmp::Reverse(site.magnitude()));
    sites
}

/// `stack weight` -> (stack, weight); folded lines are produced by memprof, so well formed.
fn split_folded(line: &str) -> (&str, u64) {
    let (stack, weight) = line.rsplit_once(' ').expect("folded lines end in a weight");
    (stack, weight.parse().expect("folded weights are integers"))
}

fn totals(a: &Report, b: &Report) -> Totals {
    let (sa, sb) = (&a.summary, &b.summary);
    let lost = |s: &crate::report::Summary| s.leak_check.as_ref().map_or(0, |c| c.lost_bytes());
    Totals {
        allocations: Change::new(sa.allocations, sb.allocations),
        bytes_allocated: Change::new(sa.bytes_allocated, sb.bytes_allocated),
        live_bytes_at_end: Change::new(sa.live_bytes, sb.live_bytes),
        lost_bytes_at_end: Change::new(lost(sa), lost(sb)),
        peak_live_bytes: Change::new(sa.peak_live_bytes, sb.peak_live_bytes),
        lost_events: Change::new(sa.lost_events, sb.lost_events),
    }
}

/// The differential flame graph of `kind`: widths from B, red where B has more, blue where
/// it has less (inferno's differential colours). When B has nothing of `kind` (every leak of A
/// fixed), inferno would have no width to draw: the widths then come from A and every frame is
/// blue by what B lost.
pub fn write_diff_flamegraph(
    a: &Report,
    b: &Report,
    kind: FlameKind,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let (a_lines, b_lines) = (folded_lines_of(a, kind), folded_lines_of(b, kind));
    // Folded lines only hold positive weights: no line, nothing to draw.
    let nothing_in_b = b_lines.is_empty() && !a_lines.is_empty();
    let (before, after) = match nothing_in_b {
        false => (a_lines.join("\n"), b_lines.join("\n")),
        true => (b_lines.join("\n"), a_lines.join("\n")),
    };
    let mut merged = Vec::new();
    differential::from_readers(
        differential::Options::default(),
        before.as_bytes(),
        after.as_bytes(),
        &mut merged,
    )?;
    // inferno writes the merged stacks in hash order: sort for a reproducible file.
    let merged = String::from_utf8(merged).expect("folded lines are UTF-8");
    let mut lines: Vec<&str> = merged.lines().collect();
    lines.sort_unstable();
    let title = match nothing_in_b {
        false => format!(
            "memprof diff: {} - red: more in B, blue: less in B",
            flame_name(kind)
        ),
        true => format!(
            "memprof diff: {} - nothing in B: widths from A, blue: gone in B",
            flame_name(kind)
        ),
    };
    if lines.is_empty() {
        return write!(
            out,
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"1200\" height=\"60\" \
             xmlns=\"http://www.w3.org/2000/svg\"><text x=\"600\" y=\"35\" text-anchor=\"middle\" \
             font-size=\"14\" font-family=\"Verdana\">{title}: nothing in either run.</text></svg>\n"
        );
    }
    let mut options = flamegraph::Options::default();
    options.title = title;
    options.count_name = match kind {
        FlameKind::AllocCount => "allocations",
        _ => "bytes",
    }
    .to_owned();
    options.deterministic = true;
    // A's figures were given as the "after" column: the change is first minus second.
    options.negate_differentials = nothing_in_b;
    flamegraph::from_lines(&mut options, lines, out)
}

fn flame_name(kind: FlameKind) -> &'static str {
    match kind {
        FlameKind::Leaks => "leaked bytes",
        FlameKind::LiveAtEnd => "bytes live at the end",
        FlameKind::Lost => "lost bytes",
        FlameKind::AllocBytes => "bytes allocated",
        FlameKind::AllocCount => "allocations",
        FlameKind::Peak => "bytes live at the peak",
    }
}

/// The comparison as a table: totals, then the `top` sites by size of change.
pub fn write_diff_table(
    report: &DiffReport,
    top: usize,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let t = &report.totals;
    writeln!(
        out,
        "A: {} ({})\nB: {} ({})",
        report.a.command.join(" "),
        report.a.recording.display(),
        report.b.command.join(" "),
        report.b.recording.display()
    )?;
    let line = |name: &str, change: Change, bytes: bool| {
        let show = |v: u64| if bytes { short_bytes(v) } else { thousands(v) };
        format!(
            "  {name:<20} {:>12} -> {:>12}  ({})",
            show(change.a),
            show(change.b),
            signed(change.delta)
        )
    };
    writeln!(out, "Totals:")?;
    writeln!(out, "{}", line("allocations", t.allocations, false))?;
    writeln!(out, "{}", line("bytes allocated", t.bytes_allocated, true))?;
    writeln!(
        out,
        "{}",
        line("live at the end", t.live_bytes_at_end, true)
    )?;
    let checked = t.lost_bytes_at_end.a + t.lost_bytes_at_end.b > 0;
    if checked {
        writeln!(
            out,
            "{}",
            line("lost at the end", t.lost_bytes_at_end, true)
        )?;
    }
    writeln!(out, "{}", line("peak live", t.peak_live_bytes, true))?;
    if t.lost_events.a + t.lost_events.b > 0 {
        writeln!(
            out,
            "{}\n  (events were lost: the figures above are uncertain)",
            line("lost events", t.lost_events, false)
        )?;
    }
    let changed: Vec<&SiteDiff> = report
        .sites
        .iter()
        .filter(|site| site.changes().iter().any(|c| c.delta != 0))
        .collect();
    writeln!(
        out,
        "\nSites that changed: {} of {} (B - A, largest change first)",
        changed.len(),
        report.sites.len()
    )?;
    if changed.is_empty() {
        return Ok(());
    }
    let lost_column = |text: &str| match checked {
        true => format!(" {text:>14}"),
        false => String::new(),
    };
    writeln!(
        out,
        "{:>12} {:>14} {:>14}{} {:>14}  site (innermost frame first)",
        "allocations",
        "bytes alloc",
        "live at end",
        lost_column("lost at end"),
        "peak live"
    )?;
    for site in changed.iter().take(top) {
        let frames: Vec<&str> = site
            .stack
            .iter()
            .rev()
            .take(3)
            .map(String::as_str)
            .collect();
        let more = if site.stack.len() > 3 { " < ..." } else { "" };
        writeln!(
            out,
            "{:>12} {:>14} {:>14}{} {:>14}  {}{more}",
            signed(site.allocations.delta),
            signed(site.bytes_allocated.delta),
            signed(site.live_bytes_at_end.delta),
            lost_column(&signed(site.lost_bytes_at_end.delta)),
            signed(site.live_bytes_at_peak.delta),
            frames.join(" < ")
        )?;
    }
    if changed.len() > top {
        writeln!(out, "... {} more in diff.json", changed.len() - top)?;
    }
    Ok(())
}

/// `+1,024`, `-3`, `0`: exact counts, bytes included (a diff is about exact figures).
fn signed(delta: i64) -> String {
    let sign = match delta.signum() {
        1 => "+",
        -1 => "-",
        _ => "",
    };
    format!("{sign}{}", thousands(delta.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// profiler-core's flame-graph fixture: four leak sites, four allocation sites.
    fn fixture() -> Report {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/report.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_same_run_twice_changes_nothing() {
        let report = fixture();
        let sites = site_diffs(&report, &report);
        assert_eq!(sites.len(), 4);
        for site in &sites {
            assert_eq!(site.changes().map(|c| c.delta), [0; 5], "{:?}", site.stack);
            assert!(site.allocations.a > 0);
        }
    }

    #[test]
    fn sites_match_by_symbolized_stack_not_address() {
        let a = fixture();
        let mut b = fixture();
        // Another ASLR base: every address moves, the names stay.
        for frame in b
            .leaks
            .iter_mut()
            .flat_map(|site| site.stack.iter_mut())
            .chain(b.sites.iter_mut().flat_map(|site| site.stack.iter_mut()))
        {
            frame.address = format!("{:#x}", 0x7f00_0000_0000u64 + frame.offset);
        }
        // push_node leaks 1,000 bytes more in B.
        let push_node = b
            .leaks
            .iter_mut()
            .find(|site| site.stack[0].function.as_deref() == Some("push_node"))
            .unwrap();
        push_node.bytes += 1000;
        b.summary.live_bytes += 1000;
        let sites = site_diffs(&a, &b);
        assert_eq!(sites.len(), 4);
        assert_eq!(
            sites[0].stack,
            [
                "main (leaky.c:40)",
                "make_list (leaky.c:12)",
                "push_node (list.h:7)"
            ]
        );
        assert_eq!(
            sites[0].live_bytes_at_end,
            Change {
                a: 3072,
                b: 4072,
                delta: 1000
            }
        );
        assert_eq!(sites[0].allocations.delta, 0);
        for site in &sites[1..] {
            assert_eq!(site.changes().map(|c| c.delta), [0; 5], "{:?}", site.stack);
        }
        assert_eq!(totals(&a, &b).live_bytes_at_end.delta, 1000);
    }

    #[test]
    fn the_differential_flame_graph_is_reproducible_and_coloured_by_change() {
        let a = fixture();
        let mut b = fixture();
        b.leaks[0].bytes *= 2;
        let render = || {
            let mut svg = Vec::new();
            write_diff_flamegraph(&a, &b, FlameKind::Leaks, &mut svg).unwrap();
            String::from_utf8(svg).unwrap()
        };
        let svg = render();
        assert_eq!(svg, render());
        assert!(svg.contains("memprof diff: leaked bytes"), "{svg}");
        // inferno's differential tooltips: B's weight, its share of B's 7,972 bytes and the
        // change (3,072 / 7,972).
        assert!(
            svg.contains("<title>push_node (list.h:7) (6,144 bytes, 77.07%; +38.53%)</title>"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>__strdup (strdup.c:42) (600 bytes, 7.53%; 0.00%)</title>"),
            "{svg}"
        );
    }

    #[test]
    fn a_run_with_nothing_to_draw_is_drawn_from_the_other() {
        let a = fixture();
        let mut b = fixture();
        b.leaks.clear();
        let render = |a: &Report, b: &Report| {
            let mut svg = Vec::new();
            write_diff_flamegraph(a, b, FlameKind::Leaks, &mut svg).unwrap();
            String::from_utf8(svg).unwrap()
        };
        // B fixed every leak: A's widths (4,900 bytes), every change negative.
        let svg = render(&a, &b);
        assert!(
            svg.contains("memprof diff: leaked bytes - nothing in B: widths from A"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>push_node (list.h:7) (3,072 bytes, 62.69%; -62.69%)</title>"),
            "{svg}"
        );
        // A had none: an ordinary differential graph, everything new in B.
        let svg = render(&b, &a);
        assert!(
            svg.contains("<title>push_node (list.h:7) (3,072 bytes, 62.69%; +62.69%)</title>"),
            "{svg}"
        );
        // Neither: a valid SVG that says so.
        let svg = render(&b, &b);
        assert!(
            svg.starts_with("<?xml") && svg.ends_with("</svg>\n"),
            "{svg}"
        );
        assert!(
            svg.contains("- red: more in B, blue: less in B: nothing in either run."),
            "{svg}"
        );
    }
}
