//! Renderers: each takes a [`Report`] and writes to any `io::Write`, so tests render to memory.

use crate::report::Report;
use std::io::{self, Write};

mod flame;
mod numbers;
mod text;

pub use flame::{folded_lines, write_leak_flamegraph, write_leak_folded};
pub use numbers::{human_bytes, thousands};
pub use text::write_text;

/// The report as pretty-printed JSON (the schema is [`Report`]'s serde form), newline-ended.
pub fn write_json(report: &Report, out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests;
