//! The live view's terminal side: crossterm input and ratatui rendering, in its own thread.
//! [`render`] draws an [`App`] (what the user chose) over a [`Snapshot`]; it is tested on
//! ratatui's `TestBackend`.

use std::{io, sync::Arc, time::Duration};

use crossterm::{
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use profiler_core::live::{SiteRow, SiteSort, Snapshot, growth_rows, site_rows};
use profiler_core::render::{short_bytes, thousands};
use ratatui::{
    Frame, Terminal,
    backend::CrosstermBackend,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    symbols::Marker,
    text::{Line, Span},
    widgets::{
        Axis, Block, Borders, Cell, Chart, Clear, Dataset, GraphType, Paragraph, Row, Table,
        TableState,
    },
};

use super::{SessionInfo, Shared};

/// How long the UI waits for a key before looking for a new snapshot.
const POLL: Duration = Duration::from_millis(100);

/// The views, in Tab order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    #[default]
    Sites,
    Growing,
    Sizes,
    Threads,
    Lifetimes,
}

impl View {
    const ALL: [View; 5] = [
        View::Sites,
        View::Growing,
        View::Sizes,
        View::Threads,
        View::Lifetimes,
    ];

    fn title(self) -> &'static str {
        match self {
            View::Sites => "Sites",
            View::Growing => "Growing",
            View::Sizes => "Sizes",
            View::Threads => "Threads",
            View::Lifetimes => "Lifetimes",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|&v| v == self).unwrap_or(0)
    }
}

/// What the user chose, and the snapshot on screen.
#[derive(Debug, Default)]
pub struct App {
    pub view: View,
    pub sort: SiteSort,
    pub filter: String,
    pub editing_filter: bool,
    /// `p`: the snapshot on screen stays.
    pub paused: bool,
    pub help: bool,
    /// Enter: the full stack of the selected site.
    pub stack_open: bool,
    pub stack_scroll: u16,
    pub selected: usize,
    pub snapshot: Option<Arc<Snapshot>>,
    /// `memprof view`: the snapshot shown (Left and Right move it) and how many there are.
    pub cursor: Option<(usize, usize)>,
}

/// What a key asks of the UI thread.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// `q`: leave the view; profiling goes on.
    Quit,
    /// Ctrl-C (raw mode turns it into a key): leave, then interrupt as the terminal would.
    Interrupt,
}

impl App {
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Interrupt;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Char(c) => self.filter.push(c),
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                KeyCode::Enter => self.editing_filter = false,
                _ => {}
            }
            self.selected = 0;
            return Action::Continue;
        }
        if self.help {
            self.help = false;
            return match key.code {
                KeyCode::Char('q') => Action::Quit,
                _ => Action::Continue,
            };
        }
        if self.stack_open {
            match key.code {
                KeyCode::Char('q') => return Action::Quit,
                KeyCode::Down => self.stack_scroll = self.stack_scroll.saturating_add(1),
                KeyCode::Up => self.stack_scroll = self.stack_scroll.saturating_sub(1),
                KeyCode::PageDown => self.stack_scroll = self.stack_scroll.saturating_add(10),
                KeyCode::PageUp => self.stack_scroll = self.stack_scroll.saturating_sub(10),
                _ => self.stack_open = false,
            }
            return Action::Continue;
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => self.switch(View::ALL[(self.view.index() + 1) % View::ALL.len()]),
            KeyCode::BackTab => {
                self.switch(View::ALL[(self.view.index() + View::ALL.len() - 1) % View::ALL.len()])
            }
            KeyCode::Char(c @ '1'..='5') => self.switch(View::ALL[c as usize - '1' as usize]),
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.selected = 0;
            }
            KeyCode::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Down => self.selected = self.selected.saturating_add(1),
            KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::PageDown => self.selected = self.selected.saturating_add(10),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(10),
            KeyCode::Home => self.selected = 0,
            KeyCode::End => self.selected = usize::MAX,
            KeyCode::Enter
                if matches!(self.view, View::Sites | View::Growing | View::Lifetimes) =>
            {
                self.stack_open = true;
                self.stack_scroll = 0;
            }
            _ => {}
        }
        Action::Continue
    }

    fn switch(&mut self, view: View) {
        self.view = view;
        self.selected = 0;
    }

    /// Takes `latest` unless paused.
    pub fn update(&mut self, latest: Option<Arc<Snapshot>>) -> bool {
        if self.paused || latest.is_none() {
            return false;
        }
        let changed = match (&self.snapshot, &latest) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            _ => true,
        };
        self.snapshot = latest;
        changed
    }

    /// The stack shown by Enter: the selected site of Sites or Growing.
    fn selected_stack(&self, snapshot: &Snapshot) -> Option<(String, Vec<String>)> {
        let names = match self.view {
            View::Sites => {
                let rows = site_rows(&snapshot.sites, self.sort, &self.filter);
                rows.get(self.selected.min(rows.len().saturating_sub(1)))
                    .map(|row| row.names.clone())
            }
            View::Growing => {
                let rows = growth_rows(&snapshot.growing, &self.filter);
                rows.get(self.selected.min(rows.len().saturating_sub(1)))
                    .map(|row| row.names.clone())
            }
            View::Lifetimes => {
                let rows = &snapshot.lifetimes;
                rows.get(self.selected.min(rows.len().saturating_sub(1)))
                    .map(|row| row.names.clone())
            }
            View::Sizes | View::Threads => None,
        }?;
        Some((names.function.to_string(), names.stack.to_vec()))
    }
}

/// The UI thread: owns the terminal until `q`, Ctrl-C or the end of collection.
pub fn run(info: &SessionInfo, shared: &Shared) {
    let mut guard = match TerminalGuard::enter() {
        Ok(guard) => guard,
        Err(_) => {
            shared.close();
            return;
        }
    };
    let mut app = App::default();
    let mut dirty = true;
    let mut action = Action::Continue;
    while !shared.is_closed() {
        dirty |= app.update(shared.latest());
        if dirty {
            if guard
                .terminal
                .draw(|frame| render(frame, info, &app))
                .is_err()
            {
                break;
            }
            dirty = false;
        }
        match event::poll(POLL) {
            Ok(true) => match event::read() {
                Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                    action = app.key(key);
                    if action != Action::Continue {
                        break;
                    }
                    dirty = true;
                }
                Ok(Event::Resize(..)) => dirty = true,
                Ok(_) => {}
                Err(_) => break,
            },
            Ok(false) => {}
            Err(_) => break,
        }
    }
    shared.close();
    drop(guard);
    if action == Action::Interrupt {
        // What the terminal does with Ctrl-C outside raw mode: SIGINT to the foreground group
        // (memprof, and in `run` the target).
        // SAFETY: kill has no memory arguments.
        unsafe { libc::kill(0, libc::SIGINT) };
    }
}

/// `memprof view`: the UI over a recording's snapshots, Left and Right move the time cursor
/// (PgUp and PgDn move the selection, Shift-Left and Shift-Right ten snapshots).
pub fn browse(info: &SessionInfo, snapshots: Vec<Arc<Snapshot>>) {
    let Ok(mut guard) = TerminalGuard::enter() else {
        return;
    };
    let count = snapshots.len();
    let mut app = App {
        snapshot: snapshots.last().cloned(),
        cursor: Some((count.saturating_sub(1), count)),
        ..App::default()
    };
    loop {
        if guard
            .terminal
            .draw(|frame| render(frame, info, &app))
            .is_err()
        {
            break;
        }
        let key = match event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => key,
            Ok(_) => continue,
            Err(_) => break,
        };
        let Some((at, count)) = app.cursor else { break };
        let step = if key.modifiers.contains(KeyModifiers::SHIFT) {
            10
        } else {
            1
        };
        let moved = match key.code {
            KeyCode::Left if !app.editing_filter => at.saturating_sub(step),
            KeyCode::Right if !app.editing_filter => (at + step).min(count.saturating_sub(1)),
            _ => {
                if app.key(key) != Action::Continue {
                    break;
                }
                continue;
            }
        };
        app.cursor = Some((moved, count));
        app.snapshot = snapshots.get(moved).cloned();
    }
}

/// The terminal in raw mode on the alternate screen, restored on drop.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<io::Stdout>>,
}

impl TerminalGuard {
    fn enter() -> io::Result<TerminalGuard> {
        enable_raw_mode()?;
        let mut stdout = io::stdout();
        if let Err(error) = execute!(stdout, EnterAlternateScreen) {
            let _ = disable_raw_mode();
            return Err(error);
        }
        let mut terminal = Terminal::new(CrosstermBackend::new(stdout))?;
        let _ = terminal.hide_cursor();
        let _ = terminal.clear();
        Ok(TerminalGuard { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(self.terminal.backend_mut(), LeaveAlternateScreen);
        let _ = self.terminal.show_cursor();
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn secs(secs: f64) -> String {
    if secs < 600.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", secs as u64 / 60, secs as u64 % 60)
    }
}

/// A count that must catch the eye when non-zero: upper case and `!`, not colour alone.
fn alarm(label: &str, count: u64) -> Span<'static> {
    if count == 0 {
        Span::raw(format!("{label} 0"))
    } else {
        Span::styled(
            format!("{}! {}", label.to_uppercase(), thousands(count)),
            bold().fg(Color::Red),
        )
    }
}

/// Draws the whole screen.
pub fn render(frame: &mut Frame, info: &SessionInfo, app: &App) {
    let area = frame.area();
    let graph_height = (area.height * 3 / 10).max(6);
    let [header, graph, tabs, body, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(graph_height),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    let empty = Snapshot::default();
    let snapshot = app.snapshot.as_deref().unwrap_or(&empty);
    render_header(frame, header, info, app, snapshot);
    render_graph(frame, graph, snapshot);
    render_tabs(frame, tabs, app);
    match app.view {
        View::Sites => render_sites(frame, body, app, snapshot),
        View::Growing => render_growing(frame, body, app, snapshot),
        View::Sizes => render_sizes(frame, body, app, snapshot),
        View::Threads => render_threads(frame, body, app, snapshot),
        View::Lifetimes => render_lifetimes(frame, body, app, snapshot),
    }
    let keys = format!(
        "q:leave view ?:help Tab/1-5:view s:sort({}) /:filter p:pause Enter:stack",
        app.sort.label()
    );
    frame.render_widget(
        Paragraph::new(keys).style(Style::default().add_modifier(Modifier::REVERSED)),
        footer,
    );
    if app.stack_open
        && let Some((function, stack)) = app.selected_stack(snapshot)
    {
        let popup = inset(area, 2, 1);
        frame.render_widget(Clear, popup);
        let lines: Vec<Line> = stack.into_iter().map(Line::from).collect();
        frame.render_widget(
            Paragraph::new(lines)
                .scroll((app.stack_scroll, 0))
                .block(Block::bordered().title(format!(" stack of {function} (Esc closes) "))),
            popup,
        );
    }
    if app.help {
        let popup = inset(area, 4, 2);
        frame.render_widget(Clear, popup);
        let help = [
            "q          leave the view (profiling goes on to its end)",
            "?          this help (any key closes it)",
            "Tab, 1-5   views: Sites, Growing, Sizes, Threads, Lifetimes",
            "Up/Down, PgUp/PgDn, Home/End   move the selection",
            "s          Sites: cycle the sort (live bytes, live blocks,",
            "           allocations, bytes allocated)",
            "Enter      the full stack of the selected site",
            "/          filter sites by function name (Enter keeps, Esc clears)",
            "p          freeze the display / resume",
            "Ctrl-C     leave the view and interrupt (as without --live)",
        ];
        frame.render_widget(
            Paragraph::new(help.iter().map(|&l| Line::from(l)).collect::<Vec<_>>())
                .block(Block::bordered().title(" keys ")),
            popup,
        );
    }
}

fn inset(area: Rect, x: u16, y: u16) -> Rect {
    Rect {
        x: area.x + x.min(area.width / 4),
        y: area.y + y.min(area.height / 4),
        width: area.width.saturating_sub(2 * x.min(area.width / 4)),
        height: area.height.saturating_sub(2 * y.min(area.height / 4)),
    }
}

fn render_header(frame: &mut Frame, area: Rect, info: &SessionInfo, app: &App, s: &Snapshot) {
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

fn render_graph(frame: &mut Frame, area: Rect, s: &Snapshot) {
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

fn chart<'a>(
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

fn render_tabs(frame: &mut Frame, area: Rect, app: &App) {
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
    if app.editing_filter || !app.filter.is_empty() {
        let cursor = if app.editing_filter { "_" } else { "" };
        spans.push(Span::styled(
            format!("filter: {}{cursor}", app.filter),
            bold(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn table<'a>(
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

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

fn render_sites(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
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

fn render_growing(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
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

fn render_sizes(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
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
fn size_range(low: u64, high: u64) -> String {
    if low == high {
        short_bytes(high)
    } else if high < 1024 {
        format!("{low}-{high} B")
    } else {
        format!("{}-{}", short_bytes(low), short_bytes(high))
    }
}

fn render_threads(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
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
fn lifetime(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{} us", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{} ms", ns / 1_000_000),
        _ => secs(ns as f64 / 1e9),
    }
}

fn render_lifetimes(frame: &mut Frame, area: Rect, app: &App, s: &Snapshot) {
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

#[cfg(test)]
mod tests;
