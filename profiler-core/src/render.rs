//! Renderers: each takes a [`Report`] and writes to any `io::Write`, so tests render to memory.

use crate::report::Report;
use std::io::{self, Write};

mod charts;
mod flame;
mod html;
mod markup;
mod numbers;
pub mod pprof;
mod printable;
mod text;
mod text_analyses;

pub use charts::{sizes_svg, timeline_svg, write_sizes_svg, write_timeline_svg};
pub use flame::{
    FlameKind, SMALL_STACKS, flame_lines, folded_lines, folded_lines_of, write_flamegraph,
    write_folded,
};
pub use html::write_html;
pub use markup::escape;
pub use numbers::{human_bytes, percent, short_bytes, thousands};
pub use printable::Printable;
pub use text::write_text;

/// The report as pretty-printed JSON (the schema is [`Report`]'s serde form), newline-ended.
pub fn write_json(report: &Report, out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests;
