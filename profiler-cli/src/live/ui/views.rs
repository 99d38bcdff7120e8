//! The live view's five views, each a table over the snapshot: Sites, Growing, Sizes,
//! Threads, Lifetimes.
use profiler_core::analysis::allocator::Allocator;
use profiler_core::live::{SiteRow, SiteSort, Snapshot, growth_rows, site_rows};
use profiler_core::render::{short_bytes, thousands};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use super::{App, bold, chrome::secs};

pub(super) fn table<'a>(
    frame: &mut Frame,
    area: Rect,
    selected: usize,
    header: Vec<String>,
    widths: Vec<Constraint>,
    rows: Vec<Row<'a>>,
    empty: &str,
) {
    if rows.is_empty() {
        frame.render_widget(Paragraph::new(empty.to_string()), area);
        return;
    }
    let count = rows.len();
    let mut state = TableState::default().with_selected(Some(selected.min(count - 1)));
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(bold().add_modifier(Modifier::UNDERLINED)))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol(">");
    frame.render_stateful_widget(table, area, &mut state);
}

/// A column of counts (`count` of each row, written with thousands separators) `width` wide,
/// or as wide as its widest count: a table must not cut the digits off a count of millions.
fn count_column<'a, T: 'a>(
    rows: impl IntoIterator<Item = &'a T>,
    count: impl Fn(&T) -> u64,
    width: u16,
) -> Constraint {
    let widest = rows
        .into_iter()
        .map(|row| thousands(count(row)).len())
        .max()
        .unwrap_or(0);
    Constraint::Length(width.max(u16::try_from(widest).unwrap_or(u16::MAX)))
}

pub(super) fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

/// A signed rate of bytes: `+1.2 KiB/s`, `-300 B/s`, `0 B/s`; `-` when unknown.
pub(super) fn byte_rate(bytes_per_sec: Option<f64>) -> String {
    match bytes_per_sec {
        None => "-".to_string(),
        Some(rate) if rate >= 0.5 => format!("+{}/s", short_bytes(rate.round() as u64)),
        Some(rate) if rate <= -0.5 => format!("-{}/s", short_bytes((-rate).round() as u64)),
        Some(_) => "0 B/s".to_string(),
    }
}

pub(super) fn render_sites(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
    let source = app.site_source(s);
    let rows = site_rows(&source, app.sort, &app.filter);
    let mark = |sort: SiteSort, name: &str| {
        if sort == app.sort {
            format!("{name}▼")
        } else {
            name.to_string()
        }
    };
    let header = vec![
        mark(SiteSort::LiveBytes, "live"),
        mark(SiteSort::LiveBlocks, "blocks"),
        mark(SiteSort::Allocations, "allocs"),
        mark(SiteSort::AllocatedBytes, "allocated"),
        mark(SiteSort::Growth, "growth"),
        "function".to_string(),
    ];
    let blocks_width = count_column(rows.iter().copied(), |row| row.live_blocks, 9);
    let allocs_width = count_column(rows.iter().copied(), |row| row.allocations, 9);
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|row: &SiteRow| {
            Row::new(vec![
                right(short_bytes(row.live_bytes)),
                right(thousands(row.live_blocks)),
                right(thousands(row.allocations)),
                right(short_bytes(row.allocated_bytes)),
                right(byte_rate(row.growth_bytes_per_sec)),
                Cell::from(row.names.function.to_string()),
            ])
        })
        .collect();
    let widths = vec![
        Constraint::Length(10),
        blocks_width,
        allocs_width,
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Min(10),
    ];
    let empty = match (app.filter.is_empty(), app.thread) {
        (false, _) => "no site's function matches the filter".to_string(),
        (true, Some(tid)) => format!("thread {tid} holds and made no allocation (t: next thread)"),
        (true, None) => "no allocation site yet".to_string(),
    };
    table(frame, area, app.selected, header, widths, rows, &empty);
}

pub(super) fn render_growing(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
    let rows: Vec<Row> = growth_rows(&s.growing, &app.filter)
        .into_iter()
        .map(|row| {
            Row::new(vec![
                right(byte_rate(Some(row.bytes_per_sec))),
                right(short_bytes(row.live_bytes)),
                right(format!("{:.2}", row.r2)),
                right(format!("{:.0}%", row.monotonicity * 100.0)),
                right(secs(row.window_secs)),
                Cell::from(row.names.function.to_string()),
            ])
        })
        .collect();
    let header = ["slope▼", "live", "r2", "rises", "over", "function"]
        .map(String::from)
        .to_vec();
    let widths = vec![
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Min(10),
    ];
    table(
        frame,
        area,
        app.selected,
        header,
        widths,
        rows,
        "no site grows steadily yet (a line through its live bytes with r2 >= 0.8, \
         and 90% of its changes increases)",
    );
}

/// The Sizes summary: how much of what the allocator gave went unused.
pub(super) fn fragmentation_line(s: &Snapshot) -> String {
    let requested: u64 = s.sizes.iter().map(|r| r.requested_bytes).sum();
    let usable: Option<u64> = s.sizes.iter().map(|r| r.usable_bytes).sum();
    let allocator = s.facts.allocator.unwrap_or(Allocator::Unknown);
    match usable {
        Some(usable) if allocator != Allocator::Unknown => format!(
            "{}: {} usable for {} requested, internal fragmentation {}",
            allocator.name(),
            short_bytes(usable),
            short_bytes(requested),
            percent(usable - requested.min(usable), usable)
        ),
        _ => format!(
            "allocator unknown: {} requested, usable sizes not known",
            short_bytes(requested)
        ),
    }
}

fn percent(part: u64, whole: u64) -> String {
    match whole {
        0 => "-".to_string(),
        _ => format!("{:.1}%", part as f64 * 100.0 / whole as f64),
    }
}

pub(super) fn render_sizes(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
    let [summary, area] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    frame.render_widget(Paragraph::new(fragmentation_line(s)), summary);
    let most = s
        .sizes
        .iter()
        .map(|r| r.allocations)
        .max()
        .unwrap_or(1)
        .max(1);
    let rows: Vec<Row> = s
        .sizes
        .iter()
        .map(|row| {
            let bar = "#".repeat(((row.allocations * 24).div_ceil(most)) as usize);
            Row::new(vec![
                right(size_range(row.low, row.high)),
                right(thousands(row.allocations)),
                right(thousands(row.live_blocks)),
                right(short_bytes(row.live_bytes)),
                right(row.usable_bytes.map_or("-".to_string(), |usable| {
                    percent(usable - row.requested_bytes.min(usable), usable)
                })),
                Cell::from(bar),
            ])
        })
        .collect();
    let header = [
        "size",
        "allocs",
        "live",
        "live bytes",
        "unused",
        "allocations",
    ]
    .map(String::from)
    .to_vec();
    let widths = vec![
        Constraint::Length(17),
        count_column(&s.sizes, |row| row.allocations, 10),
        count_column(&s.sizes, |row| row.live_blocks, 8),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Min(10),
    ];
    table(
        frame,
        area,
        app.selected,
        header,
        widths,
        rows,
        "no allocation yet",
    );
}

/// `2 B`, `3-4 B`, `513 B-1.0 KiB`.
pub(super) fn size_range(low: u64, high: u64) -> String {
    if low == high {
        short_bytes(high)
    } else if high < 1024 {
        format!("{low}-{high} B")
    } else {
        format!("{}-{}", short_bytes(low), short_bytes(high))
    }
}

pub(super) fn render_threads(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
    let rows: Vec<Row> = s
        .threads
        .iter()
        .map(|row| {
            let picked = if app.thread == Some(row.tid) { "*" } else { "" };
            Row::new(vec![
                right(format!("{picked}{}", row.tid)),
                right(short_bytes(row.live_bytes)),
                right(thousands(row.live_blocks)),
                right(thousands(row.allocations)),
                right(format!(
                    "{}/s",
                    thousands(row.allocations_per_sec.round() as u64)
                )),
            ])
        })
        .collect();
    let header = ["tid", "live▼", "blocks", "allocs", "allocs/s"]
        .map(String::from)
        .to_vec();
    let widths = vec![
        Constraint::Length(9),
        Constraint::Length(11),
        count_column(&s.threads, |row| row.live_blocks, 10),
        count_column(&s.threads, |row| row.allocations, 12),
        Constraint::Length(12),
    ];
    table(
        frame,
        area,
        app.selected,
        header,
        widths,
        rows,
        "no allocation yet",
    );
}

/// A lifetime in ns, to the power of two it is known to.
pub(super) fn lifetime(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{} us", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{} ms", ns / 1_000_000),
        _ => secs(ns as f64 / 1e9),
    }
}

pub(super) fn render_lifetimes(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
    let rows: Vec<Row> = s
        .lifetimes
        .iter()
        .map(|row| {
            let share = row.short_lived as f64 * 100.0 / row.freed.max(1) as f64;
            let pool = if row.pool_candidate { "pool? " } else { "" };
            Row::new(vec![
                right(thousands(row.short_lived)),
                right(thousands(row.freed)),
                right(format!("{share:.0}%")),
                right(format!("~{}", lifetime(row.median_ns))),
                Cell::from(format!("{pool}{}", row.names.function)),
            ])
        })
        .collect();
    let header = ["short-lived▼", "freed", "short", "median", "function"]
        .map(String::from)
        .to_vec();
    let widths = vec![
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Min(10),
    ];
    table(
        frame,
        area,
        app.selected,
        header,
        widths,
        rows,
        "no block freed within 1 ms of its allocation yet",
    );
}
