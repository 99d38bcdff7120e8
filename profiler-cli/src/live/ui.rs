//! The live view's terminal side: crossterm input and ratatui rendering, in its own thread.
//! [`render`] draws an [`App`] (what the user chose) over a [`Snapshot`]; it is tested on
//! ratatui's `TestBackend`.

use std::{borrow::Cow, io, sync::Arc, time::Duration};

use crossterm::{
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use profiler_core::live::{SiteRow, SiteSort, Snapshot, growth_rows, site_rows, thread_site_rows};
use ratatui::{
    Frame, Terminal,
    backend::CrosstermBackend,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Clear, Paragraph},
};

use super::{SessionInfo, Shared};

mod chrome;
mod views;

use chrome::{render_graph, render_header, render_tabs};
use views::{render_growing, render_lifetimes, render_sites, render_sizes, render_threads};

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
    /// `t`: Sites shows this thread's share of each site.
    pub thread: Option<u32>,
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
            KeyCode::Char('t') => {
                self.thread = self.next_thread();
                self.selected = 0;
            }
            KeyCode::Enter if self.view == View::Threads => {
                if let Some(snapshot) = &self.snapshot
                    && let Some(row) = snapshot
                        .threads
                        .get(self.selected.min(snapshot.threads.len().saturating_sub(1)))
                {
                    self.thread = Some(row.tid);
                    self.switch(View::Sites);
                }
            }
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

    /// The thread after the picked one, by tid; after the last, all threads again.
    fn next_thread(&self) -> Option<u32> {
        let mut tids: Vec<u32> = self
            .snapshot
            .as_ref()
            .map(|s| s.threads.iter().map(|t| t.tid).collect())
            .unwrap_or_default();
        tids.sort_unstable();
        match self.thread {
            None => tids.first().copied(),
            Some(picked) => tids.into_iter().find(|&tid| tid > picked),
        }
    }

    /// The rows Sites lists: every site, or the picked thread's share of each.
    pub fn site_source<'a>(&self, snapshot: &'a Snapshot) -> Cow<'a, [SiteRow]> {
        match self.thread {
            Some(tid) => Cow::Owned(thread_site_rows(snapshot, tid)),
            None => Cow::Borrowed(&snapshot.sites),
        }
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
                let source = self.site_source(snapshot);
                let rows = site_rows(&source, self.sort, &self.filter);
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
    shared.ui_done();
    drop(guard);
    if action == Action::Interrupt {
        // What the terminal does with Ctrl-C outside raw mode: SIGINT to the foreground group
        // (memprof, and in `run` the target).
        // SAFETY: kill has no memory arguments.
        unsafe { libc::kill(0, libc::SIGINT) };
    }
}

/// `memprof view`: the UI over a recording's snapshots, Left and Right move the time cursor
/// (PgUp and PgDn move the selection, Shift-Left and Shift-Right ten snapshots), `[` and `]`
/// go to the first and the last, `m` to the one holding the most live bytes.
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
            _ if app.editing_filter => None,
            KeyCode::Left => Some(at.saturating_sub(step)),
            KeyCode::Right => Some((at + step).min(count.saturating_sub(1))),
            KeyCode::Char('[') => Some(0),
            KeyCode::Char(']') => Some(count.saturating_sub(1)),
            KeyCode::Char('m') => Some(peak_snapshot(&snapshots)),
            _ => None,
        };
        let moved = match moved {
            Some(moved) => moved,
            None => {
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

/// The first snapshot holding the most live bytes (0 when there is none).
fn peak_snapshot(snapshots: &[Arc<Snapshot>]) -> usize {
    let mut peak = 0;
    for (index, snapshot) in snapshots.iter().enumerate() {
        if snapshot.live_bytes > snapshots[peak].live_bytes {
            peak = index;
        }
    }
    peak
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

pub(super) fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
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
        "q:leave ?:help Tab:view s:sort({}) /:filter t:thread p:pause Enter:stack",
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
            "           allocations, bytes allocated, growth)",
            "t          Sites of one thread, the next by tid (then all again);",
            "           Enter in Threads picks the selected one",
            "Enter      the full stack of the selected site",
            "/          filter sites by function name (Enter keeps, Esc clears)",
            "p          freeze the display / resume",
            "Ctrl-C     leave the view and interrupt (as without --live)",
        ];
        // `memprof view`: the time cursor's keys.
        let recording: &[&str] = if app.cursor.is_some() {
            &[
                "Left/Right step through the recording (Shift: ten at a time)",
                "[ ]        the first, the last snapshot",
                "m          the snapshot with the most live bytes",
            ]
        } else {
            &[]
        };
        frame.render_widget(
            Paragraph::new(
                help.iter()
                    .chain(recording)
                    .map(|&l| Line::from(l))
                    .collect::<Vec<_>>(),
            )
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

#[cfg(test)]
mod tests;
