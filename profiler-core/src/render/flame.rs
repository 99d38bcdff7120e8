//! Leaked bytes as folded stacks and as an inferno flame graph.
//!
//! Folded lines are root first (`main;make_list;xmalloc 4096`), one per distinct symbolized
//! stack, sorted, so the file diffs cleanly between runs and the SVG is reproducible.

use crate::report::{Report, StackFrame};
use inferno::flamegraph::{self, Options, color::BasicPalette, color::Palette};
use std::collections::BTreeMap;
use std::io::{self, Write};

/// Marks the root of a stack whose outermost frames the probe cut off.
const TRUNCATED_ROOT: &str = "[truncated]";
/// The whole stack of blocks recorded without one.
const NO_STACK: &str = "[no stack]";

/// One folded line per distinct leak stack with a nonzero byte count, sorted. Sites whose
/// frames symbolize to the same names are merged (different return addresses in the same
/// functions).
pub fn folded_lines(report: &Report) -> Vec<String> {
    let mut bytes_by_stack: BTreeMap<String, u64> = BTreeMap::new();
    for site in report.leaks.iter().filter(|site| site.bytes > 0) {
        *bytes_by_stack
            .entry(folded_stack(&site.stack, site.truncated))
            .or_default() += site.bytes;
    }
    bytes_by_stack
        .into_iter()
        .map(|(stack, bytes)| format!("{stack} {bytes}"))
        .collect()
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
            .map(|frame| frame.display_name().replace(';', ",").replace('\n', " ")),
    );
    names.join(";")
}

/// Writes [`folded_lines`], one per line.
pub fn write_leak_folded(report: &Report, out: &mut impl Write) -> io::Result<()> {
    for line in folded_lines(report) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Writes an SVG flame graph of leaked bytes. With no leaked bytes, inferno refuses to draw,
/// so a small SVG saying so is written instead: the file always exists and opens.
pub fn write_leak_flamegraph(report: &Report, title: &str, out: &mut impl Write) -> io::Result<()> {
    let lines = folded_lines(report);
    if lines.is_empty() {
        return write_empty_svg(title, out);
    }
    let mut options = Options::default();
    options.title = title.to_owned();
    options.count_name = "bytes".to_owned();
    options.colors = Palette::Basic(BasicPalette::Mem);
    // Colours from a hash of the name instead of a random generator: same input, same file.
    options.deterministic = true;
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}

fn write_empty_svg(title: &str, out: &mut impl Write) -> io::Result<()> {
    let title = xml_escape(title);
    write!(
        out,
        concat!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n",
            "<svg version=\"1.1\" width=\"1200\" height=\"90\" xmlns=\"http://www.w3.org/2000/svg\">\n",
            "<text x=\"600\" y=\"30\" text-anchor=\"middle\" font-size=\"17\" font-family=\"Verdana\">{title}</text>\n",
            "<text x=\"600\" y=\"60\" text-anchor=\"middle\" font-size=\"12\" font-family=\"Verdana\">No leaked bytes.</text>\n",
            "</svg>\n"
        ),
        title = title
    )
}

fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    escaped
}
