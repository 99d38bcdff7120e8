//! The analyses' short sections of the terminal summary (report.json has everything).

use super::numbers::{percent, short_bytes, thousands};
use crate::analysis::AnalysesReport;
use crate::heap::Mode;
use crate::report::Report;
use std::io::{self, Write};

/// Rows printed per section.
const ROWS: usize = 3;

pub fn write_analyses(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let Some(analyses) = &report.analyses else {
        return Ok(());
    };
    write_peak(analyses, out)?;
    write_growth(report.mode, analyses, out)?;
    write_short_lived(analyses, out)?;
    write_size_classes(analyses, out)?;
    write_fragmentation(analyses, out)?;
    write_reallocs(analyses, out)?;
    write_per_operation(analyses, out)
}

/// The frame a stack's site is named after, for one-line rows.
fn where_from(analyses: &AnalysesReport, stack_id: u32) -> String {
    crate::report::site_frame(analyses.stack(stack_id))
        .map(|frame| {
            let mut name = frame.display_name();
            if let (Some(file), Some(line)) = (&frame.file, frame.line) {
                let file = file.rsplit('/').next().unwrap_or(file);
                name.push_str(&format!(" ({file}:{line})"));
            }
            name
        })
        .unwrap_or_else(|| "[no stack]".to_owned())
}

fn write_peak(analyses: &AnalysesReport, out: &mut impl Write) -> io::Result<()> {
    let Some(peak) = &analyses.timeline.peak else {
        return Ok(());
    };
    writeln!(
        out,
        "Peak: {} in {} blocks at {:.3} s; live then, by site:",
        short_bytes(peak.live_bytes),
        thousands(peak.live_blocks),
        peak.time_secs
    )?;
    for site in peak.sites.iter().take(ROWS) {
        writeln!(
            out,
            "  {:>10} in {:>6} blocks  {}",
            short_bytes(site.live_bytes),
            thousands(site.live_blocks),
            where_from(analyses, site.stack_id)
        )?;
    }
    writeln!(out)
}

fn write_growth(mode: Mode, analyses: &AnalysesReport, out: &mut impl Write) -> io::Result<()> {
    let growing = &analyses.leaks.growing;
    if growing.is_empty() {
        // In attach mode, saying that nothing grows is an answer.
        if mode == Mode::Attach {
            writeln!(out, "Growing sites: none grew steadily during the window")?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(out, "Growing sites (live bytes rising steadily):")?;
    for site in growing.iter().take(ROWS) {
        writeln!(
            out,
            "  +{}/s (fit r2 {:.2}), {} live in {} blocks  {}",
            short_bytes(site.slope_bytes_per_sec.max(0.0) as u64),
            site.r2,
            short_bytes(site.live_bytes),
            thousands(site.live_blocks),
            where_from(analyses, site.stack_id)
        )?;
    }
    writeln!(out)
}

fn write_short_lived(analyses: &AnalysesReport, out: &mut impl Write) -> io::Result<()> {
    let candidates = &analyses.lifetimes.pool_candidates;
    if candidates.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "Short-lived sites (pool or arena candidates: most blocks freed within 1 ms):"
    )?;
    for site in candidates.iter().take(ROWS) {
        let sizes: Vec<String> = site
            .sizes
            .iter()
            .map(|s| format!("{} B x{}", s.size, thousands(s.count)))
            .collect();
        let others = if site.other_sizes > 0 {
            format!(" +{} others", thousands(site.other_sizes))
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {} of {} freed within 1 ms, sizes {}{others}  {}",
            thousands(site.short_lived),
            thousands(site.freed),
            sizes.join(", "),
            where_from(analyses, site.stack_id)
        )?;
    }
    writeln!(out)
}

fn write_size_classes(analyses: &AnalysesReport, out: &mut impl Write) -> io::Result<()> {
    let sizes = &analyses.size_classes;
    if sizes.allocations == 0 {
        return Ok(());
    }
    let (Some(usable), Some(fragmentation)) = (sizes.usable_bytes, sizes.internal_fragmentation)
    else {
        return writeln!(
            out,
            "Size classes: allocator unknown; {} requested in {} allocations (see report.json)\n",
            short_bytes(sizes.requested_bytes),
            thousands(sizes.allocations)
        );
    };
    writeln!(
        out,
        "Size classes ({}): internal fragmentation {} ({} usable for {} requested)",
        sizes.allocator.name(),
        percent(fragmentation),
        short_bytes(usable),
        short_bytes(sizes.requested_bytes)
    )?;
    let mut wasteful: Vec<_> = sizes.classes.iter().collect();
    wasteful.sort_by_key(|c| std::cmp::Reverse(c.usable_bytes - c.requested_bytes));
    for class in wasteful.iter().take(ROWS) {
        writeln!(
            out,
            "  class {:>8} B: {:>8} blocks, {} wasted ({})",
            class.usable,
            thousands(class.count),
            short_bytes(class.usable_bytes - class.requested_bytes),
            percent(class.fragmentation)
        )?;
    }
    writeln!(out)
}

fn write_fragmentation(analyses: &AnalysesReport, out: &mut impl Write) -> io::Result<()> {
    let fragmentation = &analyses.fragmentation;
    let snapshots = [
        ("at the peak", fragmentation.at_peak.as_ref()),
        ("at the end", Some(&fragmentation.at_end)),
    ];
    let mut lines = Vec::new();
    for (when, snapshot) in snapshots {
        let Some(snapshot) = snapshot else { continue };
        let Some(largest) = snapshot.largest_ranges.first() else {
            continue;
        };
        let ranges = match snapshot.ranges {
            1 => "1 range".to_string(),
            n => format!("{n} ranges"),
        };
        lines.push(format!(
            "  {when}: {} free in gaps between {} of live blocks in {ranges}; largest range {}..{} fragmentation {}",
            short_bytes(snapshot.free_bytes),
            short_bytes(snapshot.used_bytes),
            largest.start,
            largest.end,
            percent(largest.fragmentation)
        ));
    }
    if let Some(point) = fragmentation
        .overhead
        .iter()
        .rev()
        .find(|p| p.rss_per_live_byte.is_some())
    {
        lines.push(format!(
            "  RSS {} for {} live at {:.3} s: {:.2} bytes of RSS per live byte",
            short_bytes(point.rss_bytes),
            short_bytes(point.live_bytes),
            point.time_secs,
            point.rss_per_live_byte.unwrap_or_default()
        ));
    }
    if lines.is_empty() {
        return Ok(());
    }
    writeln!(out, "Fragmentation:")?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    writeln!(out)
}

fn write_reallocs(analyses: &AnalysesReport, out: &mut impl Write) -> io::Result<()> {
    let chains = &analyses.reallocs.longest_chains;
    if chains.is_empty() {
        return Ok(());
    }
    writeln!(out, "Realloc chains (blocks reallocated repeatedly):")?;
    for chain in chains.iter().take(ROWS) {
        writeln!(
            out,
            "  {} reallocs, {} -> {}{}  {}",
            chain.reallocs,
            short_bytes(chain.first_size),
            short_bytes(chain.final_size),
            if chain.live { " (live)" } else { "" },
            chain
                .stack_id
                .map_or_else(|| "[no stack]".to_owned(), |id| where_from(analyses, id))
        )?;
    }
    writeln!(out)
}

fn write_per_operation(analyses: &AnalysesReport, out: &mut impl Write) -> io::Result<()> {
    let Some(per_op) = &analyses.per_operation else {
        return Ok(());
    };
    writeln!(
        out,
        "Per operation ({} ops): {:.2} allocations, {:.1} bytes allocated, {:.2} frees",
        thousands(per_op.ops),
        per_op.allocations_per_op,
        per_op.bytes_per_op,
        per_op.frees_per_op
    )?;
    writeln!(out)
}
