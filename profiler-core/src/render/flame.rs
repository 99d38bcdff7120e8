//! The report's four flame graphs, as folded stacks and as inferno SVGs: leaked bytes,
//! allocated bytes, allocation count, and bytes live at the peak.
//!
//! Folded lines are root first (`main (a.c:9);make_list (a.c:4) 4096`), one per distinct
//! symbolized stack, sorted, so the files diff cleanly between runs and the SVGs are
//! reproducible (inferno's colours are hashed from the names, not drawn at random).
//!
//! They come from every stack of the session ([`FlameStacks`]), not only from the sites
//! report.json lists, and they are what inferno draws ([`flame_lines`]): inferno leaves out
//! every frame narrower than its minimum width (0.01% of the total by default), so the files
//! keep a stack's frames as far as they are that wide and merge the rest into the last frame
//! kept, as weight of its own (which is how the graph shows it: a gap below that frame). Every
//! frame inferno draws keeps its width and the total stays exact, but a program allocating
//! from 200,000 distinct stacks no longer gets 130 MB folded files for a few thousand frames.
//! Stacks whose outermost frame is too narrow to draw are one [`SMALL_STACKS`] root frame.

use super::numbers::{short_bytes, thousands};
use crate::report::{FlameStacks, Report, StackWeights};
use inferno::flamegraph::{self, Options, color::BasicPalette, color::Palette};
use std::borrow::Cow;
use std::io::{self, Write};
use std::ops::Range;

/// The root frame of the stacks whose outermost frame is too narrow to draw.
pub const SMALL_STACKS: &str = "[small stacks]";

/// What a flame graph weighs its stacks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlameKind {
    /// Leaked bytes, from `leaks`: those the leak check found lost when one ran, else every
    /// byte live at exit (run) or at detach (attach).
    Leaks,
    /// Every byte live at the end, whatever the leak check found (`memprof diff`; no file).
    LiveAtEnd,
    /// The bytes the leak check found lost (`memprof diff`; no file).
    Lost,
    /// Bytes requested by successful allocations, from `sites`.
    AllocBytes,
    /// Number of successful allocations, from `sites`.
    AllocCount,
    /// Bytes live at the moment of the global peak, from `sites`.
    Peak,
}

impl FlameKind {
    pub const ALL: [FlameKind; 4] = [
        FlameKind::Leaks,
        FlameKind::AllocBytes,
        FlameKind::AllocCount,
        FlameKind::Peak,
    ];

    /// File name without extension: `leaks.svg`, `alloc-bytes.folded`, ...
    pub fn file_stem(self) -> &'static str {
        match self {
            FlameKind::Leaks => "leaks",
            FlameKind::LiveAtEnd => "live-at-end",
            FlameKind::Lost => "lost",
            FlameKind::AllocBytes => "alloc-bytes",
            FlameKind::AllocCount => "alloc-count",
            FlameKind::Peak => "peak",
        }
    }

    fn count_name(self) -> &'static str {
        match self {
            FlameKind::AllocCount => "allocations",
            _ => "bytes",
        }
    }

    /// `memprof: leaked bytes of ./leaks - 4.8 KiB in 6 blocks`.
    pub fn title(self, report: &Report) -> String {
        let command = report.target.command.join(" ");
        let s = &report.summary;
        let successful = s.allocations - s.failed_allocations;
        match self {
            // With a leak check, the graph weighs what the program can no longer reach.
            FlameKind::Leaks => match &s.leak_check {
                Some(check) => {
                    let lost_blocks = check.definitely_lost.blocks
                        + check.indirectly_lost.blocks
                        + check.possibly_lost.blocks;
                    format!(
                        "memprof: lost bytes of {command} - {} in {} blocks (definitely {}, \
                         indirectly {}, possibly {}); {} still reachable, not shown",
                        short_bytes(check.lost_bytes()),
                        thousands(lost_blocks),
                        short_bytes(check.definitely_lost.bytes),
                        short_bytes(check.indirectly_lost.bytes),
                        short_bytes(check.possibly_lost.bytes),
                        short_bytes(check.still_reachable.bytes)
                    )
                }
                None => format!(
                    "memprof: leaked bytes of {command} - {} in {} blocks",
                    short_bytes(s.live_bytes),
                    thousands(s.live_blocks)
                ),
            },
            FlameKind::LiveAtEnd => format!(
                "memprof: bytes live at the end of {command} - {} in {} blocks",
                short_bytes(s.live_bytes),
                thousands(s.live_blocks)
            ),
            FlameKind::Lost => format!(
                "memprof: lost bytes of {command} - {}",
                short_bytes(s.leak_check.as_ref().map_or(0, |c| c.lost_bytes()))
            ),
            FlameKind::AllocBytes => format!(
                "memprof: allocated bytes of {command} - {} in {} allocations",
                short_bytes(s.bytes_allocated),
                thousands(successful)
            ),
            FlameKind::AllocCount => format!(
                "memprof: allocations of {command} - {} allocations of {} in all",
                thousands(successful),
                short_bytes(s.bytes_allocated)
            ),
            FlameKind::Peak => format!(
                "memprof: live bytes at the peak of {command} - {} in {} blocks at {:.3} s",
                short_bytes(s.peak_live_bytes),
                thousands(s.peak_live_blocks),
                s.peak_time_secs.unwrap_or(0.0)
            ),
        }
    }

    fn empty_message(self) -> &'static str {
        match self {
            FlameKind::Leaks | FlameKind::LiveAtEnd | FlameKind::Lost => "No leaked bytes.",
            FlameKind::AllocBytes | FlameKind::AllocCount => "No allocations.",
            FlameKind::Peak => "Nothing was ever live.",
        }
    }

    /// One stack's weight in this graph; `checked`: the report has a leak check.
    fn weight(self, weights: &StackWeights, checked: bool) -> u64 {
        match self {
            FlameKind::Leaks if checked => weights.lost_bytes,
            FlameKind::Leaks | FlameKind::LiveAtEnd => weights.leaked_bytes,
            FlameKind::Lost => weights.lost_bytes,
            FlameKind::AllocBytes => weights.allocated_bytes,
            FlameKind::AllocCount => weights.allocations,
            FlameKind::Peak => weights.peak_bytes,
        }
    }
}

/// One folded line per distinct stack with a nonzero weight, sorted, none left out (what
/// `memprof diff` matches runs by). Sites whose frames symbolize to the same names are merged
/// (different return addresses on the same lines).
pub fn folded_lines_of(report: &Report, kind: FlameKind) -> Vec<String> {
    let stacks = flame_stacks(report);
    let mut lines: Vec<String> = weighted(&stacks, kind, report)
        .into_iter()
        .map(|(path, weight)| folded_line(&stacks, path, weight))
        .collect();
    lines.sort_unstable();
    lines
}

/// The leaked-bytes folded lines ([`FlameKind::Leaks`]).
pub fn folded_lines(report: &Report) -> Vec<String> {
    folded_lines_of(report, FlameKind::Leaks)
}

/// The folded lines of `kind` as inferno draws them, sorted: [`folded_lines_of`] with the
/// frames narrower than inferno's minimum width merged into their parent (see the module
/// doc). The same lines as [`folded_lines_of`] when no frame is that narrow.
pub fn flame_lines(report: &Report, kind: FlameKind) -> Vec<String> {
    let stacks = flame_stacks(report);
    let weighted = weighted(&stacks, kind, report);
    // Weight of the stacks before each index: the weight of a run of stacks is a difference.
    let mut before = Vec::with_capacity(weighted.len() + 1);
    let mut total = 0u64;
    before.push(0);
    for (_, weight) in &weighted {
        total += weight;
        before.push(total);
    }
    // inferno's test, in its terms: a frame is drawn unless its samples are fewer than
    // `min_width` percent of the total.
    let min_width = Options::default().min_width;
    let pruner = Pruner {
        stacks: &stacks,
        weighted: &weighted,
        before: &before,
        minwidth_time: min_width / (100.0 / total as f64),
    };
    let mut lines = Vec::new();
    pruner.frame(0..weighted.len(), 0, &mut lines);
    lines.sort_unstable();
    lines
}

/// The report's stacks: the session's own, else rebuilt from the sites the report lists.
fn flame_stacks(report: &Report) -> Cow<'_, FlameStacks> {
    match &report.flame_stacks {
        Some(stacks) => Cow::Borrowed(&**stacks),
        None => Cow::Owned(FlameStacks::from_listed_sites(report)),
    }
}

/// Every stack with a nonzero weight in `kind` (root-first name ids) and that weight, in
/// [`FlameStacks::stacks`] order.
fn weighted<'s>(
    stacks: &'s FlameStacks,
    kind: FlameKind,
    report: &Report,
) -> Vec<(&'s [u32], u64)> {
    let checked = report.summary.leak_check.is_some();
    stacks
        .stacks()
        .map(|(path, weights)| (path, kind.weight(weights, checked)))
        .filter(|&(_, weight)| weight > 0)
        .collect()
}

/// `a;b;c 42`.
fn folded_line(stacks: &FlameStacks, path: &[u32], weight: u64) -> String {
    let names: Vec<&str> = path.iter().map(|&id| stacks.name(id)).collect();
    format!("{} {weight}", names.join(";"))
}

/// Walks the frames of sorted stacks (a frame is a run of stacks with the same first names)
/// and keeps those inferno draws.
struct Pruner<'a> {
    stacks: &'a FlameStacks,
    /// Sorted by name ids, so a frame's stacks are one run, its own (ending there) first.
    weighted: &'a [(&'a [u32], u64)],
    before: &'a [u64],
    /// inferno's threshold: narrower frames are not drawn.
    minwidth_time: f64,
}

impl Pruner<'_> {
    /// Writes the lines of the frame made of the stacks in `run`, which share their first
    /// `depth` names and are drawn that far: the frame's own weight, with that of its child
    /// frames too narrow to draw, and the lines of the others. At depth 0 (the root, which
    /// has no line of its own) the narrow ones are the [`SMALL_STACKS`] line.
    fn frame(&self, run: Range<usize>, depth: usize, lines: &mut Vec<String>) {
        let Some(&(first, _)) = self.weighted.get(run.start) else {
            return;
        };
        let prefix = &first[..depth];
        let mut index = run.start;
        let mut own = 0;
        while index < run.end && self.weighted[index].0.len() == depth {
            own += self.weighted[index].1;
            index += 1;
        }
        while index < run.end {
            let name = self.weighted[index].0[depth];
            let mut end = index + 1;
            while end < run.end && self.weighted[end].0[depth] == name {
                end += 1;
            }
            let width = self.before[end] - self.before[index];
            if (width as f64) < self.minwidth_time {
                own += width;
            } else {
                self.frame(index..end, depth + 1, lines);
            }
            index = end;
        }
        if own > 0 {
            lines.push(match depth {
                0 => format!("{SMALL_STACKS} {own}"),
                _ => folded_line(self.stacks, prefix, own),
            });
        }
    }
}

/// Writes [`flame_lines`], one per line.
pub fn write_folded(report: &Report, kind: FlameKind, out: &mut impl Write) -> io::Result<()> {
    for line in flame_lines(report, kind) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
/// Writes the SVG flame graph of `kind`, titled with [`FlameKind::title`]. With nothing to
/// draw inferno refuses, so a small SVG saying so is written instead: the file always exists.
pub fn write_flamegraph(report: &Report, kind: FlameKind, out: &mut impl Write) -> io::Result<()> {
    let title = kind.title(report);
    let lines = flame_lines(report, kind);
    if lines.is_empty() {
        return write_empty_svg(&title, kind.empty_message(), out);
    }
    let mut options = Options::default();
    options.title = title;
    options.count_name = kind.count_name().to_owned();
    options.colors = Palette::Basic(BasicPalette::Mem);
    // Colours from a hash of the name instead of a random generator: same input, same file.
    options.deterministic = true;
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}

fn write_empty_svg(title: &str, message: &str, out: &mut impl Write) -> io::Result<()> {
    write!(
        out,
        concat!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n",
            "<svg version=\"1.1\" width=\"1200\" height=\"90\" xmlns=\"http://www.w3.org/2000/svg\">\n",
            "<text x=\"600\" y=\"30\" text-anchor=\"middle\" font-size=\"17\" font-family=\"Verdana\">{title}</text>\n",
            "<text x=\"600\" y=\"60\" text-anchor=\"middle\" font-size=\"12\" font-family=\"Verdana\">{message}</text>\n",
            "</svg>\n"
        ),
        title = super::markup::escape(title),
        message = message,
    )
}
