//! The live view's five views, each a table over the snapshot: Sites, Growing, Sizes,
//! Threads, Lifetimes.
use profiler_core::live::{SiteRow, SiteSort, Snapshot, growth_rows, site_rows};
use profiler_core::render::{short_bytes, thousands};
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
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

pub(super) fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

pub(super) fn render_sites(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
    let rows = site_rows(&s.sites, app.sort, &app.filter);
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
        "function".to_string(),
    ];
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|row: &SiteRow| {
            Row::new(vec![
                right(short_bytes(row.live_bytes)),
                right(thousands(row.live_blocks)),
                right(thousands(row.allocations)),
                right(short_bytes(row.allocated_bytes)),
                Cell::from(row.names.function.to_string()),
            ])
        })
        .collect();
    let widths = vec![
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Min(10),
    ];
    table(
        frame,
        area,
        app.selected,
        header,
        widths,
        rows,
        match app.filter.is_empty() {
            true => "no allocation site yet",
            false => "no site's function matches the filter",
        },
    );
}

pub(super) fn render_growing(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
    let rows: Vec<Row> = growth_rows(&s.growing, &app.filter)
        .into_iter()
        .map(|row| {
            Row::new(vec![
                right(format!("{}/s", short_bytes(row.bytes_per_sec as u64))),
                right(short_bytes(row.live_bytes)),
                right(secs(row.window_secs)),
                Cell::from(row.names.function.to_string()),
            ])
        })
        .collect();
    let header = ["growth▼", "live", "over", "function"]
        .map(String::from)
        .to_vec();
    let widths = vec![
        Constraint::Length(13),
        Constraint::Length(10),
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
        "no site's live bytes rose in the last 10 s",
    );
}

pub(super) fn render_sizes(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
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
                Cell::from(bar),
            ])
        })
        .collect();
    let header = ["size", "allocs", "live", "live bytes", "allocations"]
        .map(String::from)
        .to_vec();
    let widths = vec![
        Constraint::Length(19),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(10),
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
            Row::new(vec![
                right(row.tid.to_string()),
                right(short_bytes(row.live_bytes)),
                right(thousands(row.live_blocks)),
                right(thousands(row.allocations)),
            ])
        })
        .collect();
    let header = ["tid", "live▼", "blocks", "allocs"]
        .map(String::from)
        .to_vec();
    let widths = vec![
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Length(10),
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
