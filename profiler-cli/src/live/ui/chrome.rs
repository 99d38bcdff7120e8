//! The live view's frame around the views: the header of session figures, the graph of the
//! live heap and RSS, the view tabs.
use profiler_core::live::Snapshot;
use profiler_core::render::{short_bytes, thousands};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    symbols::Marker,
    text::{Line, Span},
    widgets::{Axis, Block, Borders, Chart, Dataset, GraphType, Paragraph},
};

use super::{App, View, bold};
use crate::live::SessionInfo;

pub(super) fn secs(secs: f64) -> String {
    if secs < 600.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", secs as u64 / 60, secs as u64 % 60)
    }
}

/// A count that must catch the eye when non-zero: upper case and `!`, not colour alone.
pub(super) fn alarm(label: &str, count: u64) -> Span<'static> {
    if count == 0 {
        Span::raw(format!("{label} 0"))
    } else {
        Span::styled(
            format!("{}! {}", label.to_uppercase(), thousands(count)),
            bold().fg(Color::Red),
        )
    }
}

pub(super) fn render_header(
    frame: &mut Frame,
    area: Rect,
    info: &SessionInfo,
    app: &App,
    s: &Snapshot,
) {
    let mut first = vec![
        Span::styled("memprof ", bold()),
        Span::raw(format!(
            "pid {} [{}] {} | {} | out {}",
            info.pid,
            info.capture,
            secs(s.elapsed_secs),
            info.command,
            info.output.display()
        )),
    ];
    if app.paused {
        first.insert(1, Span::styled("[PAUSED] ", bold().fg(Color::Yellow)));
    }
    if let Some((at, count)) = app.cursor {
        let end = if s.facts.ended && at + 1 == count {
            " end"
        } else {
            ""
        };
        first.insert(
            1,
            Span::styled(format!("[<- {}/{count}{end} ->] ", at + 1), bold()),
        );
    }
    let rss = s.facts.rss_bytes.map_or("-".into(), short_bytes);
    let peak = match s.peak_secs {
        Some(at) => format!("{} at {}", short_bytes(s.peak_bytes), secs(at)),
        None => "-".into(),
    };
    let second = Line::from(format!(
        "{:.0} ev/s | live {} in {} blocks | RSS {} | peak {}",
        s.events_per_sec,
        short_bytes(s.live_bytes),
        thousands(s.live_blocks),
        rss,
        peak
    ));
    let mut third = vec![
        alarm("lost", s.facts.lost_events),
        Span::raw(" | "),
        alarm("held", s.facts.held_threads),
        Span::raw(format!(" | {} events", thousands(s.events))),
    ];
    if let Some(path) = &info.target_output {
        third.push(Span::raw(format!(" | target output: {}", path.display())));
    }
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), second, Line::from(third)]),
        area,
    );
}

pub(super) fn render_graph(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let live: Vec<(f64, f64)> = s
        .history
        .iter()
        .map(|p| (p.secs, p.live_bytes as f64))
        .collect();
    let rss: Vec<(f64, f64)> = s
        .history
        .iter()
        .filter_map(|p| Some((p.secs, p.rss_bytes? as f64)))
        .collect();
    let peak: Vec<(f64, f64)> = s
        .peak_secs
        .map(|at| (at, s.peak_bytes as f64))
        .into_iter()
        .collect();
    let min_x = s.history.first().map_or(0.0, |p| p.secs);
    let max_x = s.elapsed_secs.max(min_x + 1.0);
    // Side by side, each on its own scale: the heap is often a small part of the RSS.
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
            .spacing(2)
            .areas(area);
    let peak_title = match s.peak_secs {
        Some(at) => format!(
            " live heap, peak \u{2588} {} at {} ",
            short_bytes(s.peak_bytes),
            secs(at)
        ),
        None => " live heap ".to_string(),
    };
    let heap = vec![
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Green))
            .data(&live),
        Dataset::default()
            .marker(Marker::Block)
            .graph_type(GraphType::Scatter)
            .style(Style::default().fg(Color::Red))
            .data(&peak),
    ];
    frame.render_widget(chart(heap, peak_title, &live, [min_x, max_x]), left);
    let resident = vec![
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Blue))
            .data(&rss),
    ];
    frame.render_widget(
        chart(resident, " RSS ".to_string(), &rss, [min_x, max_x]),
        right,
    );
}

pub(super) fn chart<'a>(
    datasets: Vec<Dataset<'a>>,
    title: String,
    points: &[(f64, f64)],
    x: [f64; 2],
) -> Chart<'a> {
    let max_y = points.iter().map(|&(_, y)| y).fold(1.0, f64::max) * 1.05;
    Chart::new(datasets)
        .block(Block::default().borders(Borders::TOP).title(title))
        .legend_position(None)
        .x_axis(Axis::default().bounds(x).labels([secs(x[0]), secs(x[1])]))
        .y_axis(
            Axis::default()
                .bounds([0.0, max_y])
                .labels(["0".to_string(), short_bytes(max_y as u64)]),
        )
}

pub(super) fn render_tabs(frame: &mut Frame, area: Rect, app: &App) {
    let mut spans = Vec::new();
    for (i, view) in View::ALL.iter().enumerate() {
        let label = format!("{} {}", i + 1, view.title());
        if *view == app.view {
            spans.push(Span::styled(
                format!("[{label}]"),
                bold().add_modifier(Modifier::REVERSED),
            ));
        } else {
            spans.push(Span::raw(format!(" {label} ")));
        }
        spans.push(Span::raw(" "));
    }
    if let Some(tid) = app.thread {
        spans.push(Span::styled(format!("thread {tid} "), bold()));
    }
    if app.editing_filter || !app.filter.is_empty() {
        let cursor = if app.editing_filter { "_" } else { "" };
        spans.push(Span::styled(
            format!("filter: {}{cursor}", app.filter),
            bold(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
