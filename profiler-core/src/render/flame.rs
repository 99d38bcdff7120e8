//! The report's four flame graphs, as folded stacks and as inferno SVGs: leaked bytes,
//! allocated bytes, allocation count, and bytes live at the peak.
//!
//! Folded lines are root first (`main (a.c:9);make_list (a.c:4) 4096`), one per distinct
//! symbolized stack, sorted, so the files diff cleanly between runs and the SVGs are
//! reproducible (inferno's colours are hashed from the names, not drawn at random).

use super::numbers::{short_bytes, thousands};
use crate::report::{Report, StackFrame};
use inferno::flamegraph::{self, Options, color::BasicPalette, color::Palette};
use std::collections::BTreeMap;
use std::io::{self, Write};

/// Marks the root of a stack whose outermost frames the probe cut off.
const TRUNCATED_ROOT: &str = "[truncated]";
/// The whole stack of blocks recorded without one.
const NO_STACK: &str = "[no stack]";

/// One stack's weight: its frames, whether the probe cut it, and the weight.
type Weighted<'a> = (&'a [StackFrame], bool, u64);

/// What a flame graph weighs its stacks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlameKind {
    /// Bytes live at exit (run) or at detach (attach), from `leaks`.
    Leaks,
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
            FlameKind::Leaks => format!(
                "memprof: leaked bytes of {command} - {} in {} blocks",
                short_bytes(s.live_bytes),
                thousands(s.live_blocks)
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
            FlameKind::Leaks => "No leaked bytes.",
            FlameKind::AllocBytes | FlameKind::AllocCount => "No allocations.",
            FlameKind::Peak => "Nothing was ever live.",
        }
    }

    /// (stack, truncated, weight) of every site, plus the weight recorded without a stack.
    fn weights(self, report: &Report) -> (Vec<Weighted<'_>>, u64) {
        if self == FlameKind::Leaks {
            let sites = report
                .leaks
                .iter()
                .map(|site| (site.stack.as_slice(), site.truncated, site.bytes))
                .collect();
            // Blocks without a stack are a leak site with an empty stack already.
            return (sites, 0);
        }
        let weight = |site: &crate::report::AllocationSite| match self {
            FlameKind::AllocBytes => site.allocated_bytes,
            FlameKind::AllocCount => site.allocations,
            _ => site.peak_live_bytes,
        };
        let sites: Vec<Weighted<'_>> = report
            .sites
            .iter()
            .map(|site| (site.stack.as_slice(), site.truncated, weight(site)))
            .collect();
        let s = &report.summary;
        let total = match self {
            FlameKind::AllocBytes => s.bytes_allocated,
            FlameKind::AllocCount => s.allocations - s.failed_allocations,
            _ => s.peak_live_bytes,
        };
        let attributed: u64 = sites.iter().map(|(_, _, weight)| weight).sum();
        (sites, total.saturating_sub(attributed))
    }
}

/// One folded line per distinct stack with a nonzero weight, sorted. Sites whose frames
/// symbolize to the same names are merged (different return addresses on the same lines).
pub fn folded_lines_of(report: &Report, kind: FlameKind) -> Vec<String> {
    let (sites, unattributed) = kind.weights(report);
    let mut by_stack: BTreeMap<String, u64> = BTreeMap::new();
    for (stack, truncated, weight) in sites {
        if weight > 0 {
            *by_stack.entry(folded_stack(stack, truncated)).or_default() += weight;
        }
    }
    if unattributed > 0 {
        *by_stack.entry(NO_STACK.to_owned()).or_default() += unattributed;
    }
    by_stack
        .into_iter()
        .map(|(stack, weight)| format!("{stack} {weight}"))
        .collect()
}

/// The leaked-bytes folded lines ([`FlameKind::Leaks`]).
pub fn folded_lines(report: &Report) -> Vec<String> {
    folded_lines_of(report, FlameKind::Leaks)
}

fn folded_stack(stack: &[StackFrame], truncated: bool) -> String {
    if stack.is_empty() {
        return NO_STACK.to_owned();
    }
    let mut names: Vec<String> = Vec::with_capacity(stack.len() + 1);
    if truncated {
        names.push(TRUNCATED_ROOT.to_owned());
    }
    // ';' separates frames and a newline ends the line: neither may appear inside a name
    // (Rust array types such as `[u8; 4]` do contain ';').
    names.extend(
        stack
            .iter()
            .rev()
            .map(|frame| frame.located_name().replace(';', ",").replace('\n', " ")),
    );
    names.join(";")
}

/// Writes [`folded_lines_of`], one per line.
pub fn write_folded(report: &Report, kind: FlameKind, out: &mut impl Write) -> io::Result<()> {
    for line in folded_lines_of(report, kind) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Writes the SVG flame graph of `kind`, titled with [`FlameKind::title`]. With nothing to
/// draw inferno refuses, so a small SVG saying so is written instead: the file always exists.
pub fn write_flamegraph(report: &Report, kind: FlameKind, out: &mut impl Write) -> io::Result<()> {
    let title = kind.title(report);
    let lines = folded_lines_of(report, kind);
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
