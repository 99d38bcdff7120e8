use super::views::size_range;
use super::*;
use crossterm::event::KeyEvent;
use profiler_core::analysis::allocator::Allocator;
use profiler_core::live::{
    GrowthRow, HistoryPoint, LifetimeRow, SessionFacts, SiteNames, SiteRow, SizeRow, ThreadRow,
    ThreadSite,
};
use profiler_core::stacks::StackId;
use ratatui::backend::TestBackend;

fn site(id: u32, function: &str, live_bytes: u64, allocations: u64) -> SiteRow {
    SiteRow {
        stack: StackId(id),
        names: SiteNames {
            function: function.into(),
            stack: vec![
                format!("{function} (leak.c:12)"),
                "main (leak.c:30)".to_string(),
            ]
            .into(),
        },
        live_bytes,
        live_blocks: live_bytes / 1000,
        allocations,
        allocated_bytes: allocations * 1000,
        growth_bytes_per_sec: Some(if live_bytes > 0 { 19_500.0 } else { -12.0 }),
    }
}

fn snapshot() -> Snapshot {
    let sites = vec![
        site(1, "slow_leak_site", 100_000, 100),
        site(2, "churn_site", 0, 5000),
    ];
    Snapshot {
        elapsed_secs: 5.2,
        events: 5100,
        events_per_sec: 980.0,
        live_bytes: 100_000,
        live_blocks: 100,
        peak_bytes: 101_000,
        peak_secs: Some(4.9),
        facts: SessionFacts {
            rss_bytes: Some(3 << 20),
            lost_events: 7,
            held_threads: 0,
            ended: false,
            allocator: Some(Allocator::Glibc),
        },
        history: (0u32..20)
            .map(|i| HistoryPoint {
                secs: f64::from(i) * 0.25,
                live_bytes: u64::from(i) * 5000,
                rss_bytes: Some(3 << 20),
            })
            .collect(),
        sites: sites.clone(),
        growing: vec![GrowthRow {
            stack: StackId(1),
            names: sites[0].names.clone(),
            bytes_per_sec: 20_000.0,
            live_bytes: 100_000,
            r2: 0.97,
            monotonicity: 1.0,
            window_secs: 5.0,
        }],
        sizes: vec![
            SizeRow {
                low: 513,
                high: 1024,
                allocations: 5000,
                requested_bytes: 5_000_000,
                usable_bytes: Some(5_040_000),
                live_blocks: 0,
                live_bytes: 0,
            },
            SizeRow {
                low: 1025,
                high: 2048,
                allocations: 100,
                requested_bytes: 100_000,
                usable_bytes: Some(200_000),
                live_blocks: 100,
                live_bytes: 100_000,
            },
        ],
        lifetimes: vec![LifetimeRow {
            stack: StackId(2),
            names: sites[1].names.clone(),
            freed: 5000,
            short_lived: 4990,
            median_ns: 4096,
            pool_candidate: true,
        }],
        threads: vec![
            ThreadRow {
                tid: 4242,
                live_bytes: 100_000,
                live_blocks: 100,
                allocations: 100,
                allocations_per_sec: 20.0,
            },
            ThreadRow {
                tid: 4243,
                live_bytes: 0,
                live_blocks: 0,
                allocations: 5000,
                allocations_per_sec: 1234.4,
            },
        ],
        thread_sites: vec![
            ThreadSite {
                tid: 4242,
                stack: StackId(1),
                live_bytes: 100_000,
                live_blocks: 100,
                allocations: 100,
                allocated_bytes: 100_000,
            },
            ThreadSite {
                tid: 4243,
                stack: StackId(2),
                live_bytes: 0,
                live_blocks: 0,
                allocations: 5000,
                allocated_bytes: 5_000_000,
            },
        ],
    }
}

fn info() -> SessionInfo {
    SessionInfo {
        command: "slow_leak 100".into(),
        pid: 31337,
        capture: "preload".into(),
        output: "out".into(),
        target_output: Some("out/target-output.log".into()),
    }
}

/// The screen at 80x24, one string per line.
fn screen(app: &App) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|frame| render(frame, &info(), app)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..24)
        .map(|y| (0..80).map(|x| buffer[(x, y)].symbol()).collect::<String>())
        .collect()
}

fn app() -> App {
    App {
        snapshot: Some(Arc::new(snapshot())),
        ..App::default()
    }
}

fn press(app: &mut App, code: KeyCode) -> Action {
    app.key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn contains(lines: &[String], text: &str) -> bool {
    lines.iter().any(|line| line.contains(text))
}

#[test]
fn header_graph_and_sites_fit_80x24() {
    let lines = screen(&app());
    let text = lines.join("\n");
    assert!(lines[0].contains("pid 31337"), "{text}");
    assert!(lines[0].contains("slow_leak 100"), "{text}");
    assert!(lines[0].contains("[preload]"), "{text}");
    assert!(lines[0].contains("5.2s"), "{text}");
    assert!(lines[1].contains("980 ev/s"), "{text}");
    assert!(lines[1].contains("live 97.7 KiB in 100 blocks"), "{text}");
    assert!(lines[1].contains("RSS 3.0 MiB"), "{text}");
    assert!(lines[1].contains("peak 98.6 KiB at 4.9s"), "{text}");
    // Lost events marked by more than colour; no hold.
    assert!(lines[2].contains("LOST! 7"), "{text}");
    assert!(lines[2].contains("held 0"), "{text}");
    assert!(
        lines[2].contains("target output: out/target-output.log"),
        "{text}"
    );
    assert!(contains(&lines, "peak \u{2588} 98.6 KiB at 4.9s"), "{text}");
    assert!(contains(&lines, " RSS "), "{text}");
    assert!(contains(&lines, "[1 Sites]"), "{text}");
    // Largest live bytes first, selected.
    let first = lines
        .iter()
        .position(|l| l.contains("slow_leak_site"))
        .unwrap();
    let second = lines.iter().position(|l| l.contains("churn_site")).unwrap();
    assert!(first < second, "{text}");
    assert!(lines[first].starts_with('>'), "{text}");
    assert!(lines[23].contains("q:leave ?:help"), "{text}");
}

#[test]
fn sort_filter_views_and_stack() {
    let mut app = app();
    press(&mut app, KeyCode::Char('s'));
    press(&mut app, KeyCode::Char('s'));
    assert_eq!(app.sort, SiteSort::Allocations);
    let lines = screen(&app);
    let churn = lines.iter().position(|l| l.contains("churn_site")).unwrap();
    let leak = lines
        .iter()
        .position(|l| l.contains("slow_leak_site"))
        .unwrap();
    assert!(churn < leak, "{}", lines.join("\n"));

    press(&mut app, KeyCode::Char('/'));
    for c in "LEAK".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    let lines = screen(&app);
    assert!(contains(&lines, "filter: LEAK"));
    assert!(contains(&lines, "slow_leak_site"));
    assert!(!contains(&lines, "churn_site"));
    press(&mut app, KeyCode::Char('/'));
    press(&mut app, KeyCode::Char('z'));
    assert!(contains(
        &screen(&app),
        "no site's function matches the filter"
    ));
    press(&mut app, KeyCode::Esc);
    assert!(app.filter.is_empty());
    press(&mut app, KeyCode::Char('/'));
    for c in "LEAK".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);

    press(&mut app, KeyCode::Enter);
    let lines = screen(&app);
    assert!(contains(&lines, "stack of slow_leak_site"));
    assert!(contains(&lines, "main (leak.c:30)"));
    press(&mut app, KeyCode::Esc);
    assert!(!app.stack_open);

    press(&mut app, KeyCode::Tab);
    let lines = screen(&app);
    assert!(contains(&lines, "[2 Growing]"));
    assert!(contains(&lines, "+19.5 KiB/s"), "{}", lines.join("\n"));
    press(&mut app, KeyCode::Char('3'));
    let lines = screen(&app);
    assert!(contains(&lines, "513 B-1.0 KiB"), "{}", lines.join("\n"));
    press(&mut app, KeyCode::Char('4'));
    let lines = screen(&app);
    assert!(contains(&lines, "4242"), "{}", lines.join("\n"));

    press(&mut app, KeyCode::Char('5'));
    let lines = screen(&app);
    let row = lines.iter().find(|l| l.contains("churn_site")).unwrap();
    assert!(row.contains("4,990"), "{row}");
    assert!(row.contains("~4 us"), "{row}");
    assert!(row.contains("pool? churn_site"), "{row}");
    press(&mut app, KeyCode::Enter);
    assert!(contains(&screen(&app), "stack of churn_site"));
    press(&mut app, KeyCode::Esc);

    press(&mut app, KeyCode::Char('?'));
    assert!(contains(&screen(&app), "freeze the display"));
    press(&mut app, KeyCode::Char('x'));
    assert!(!app.help);
    assert_eq!(press(&mut app, KeyCode::Char('q')), Action::Quit);
}

#[test]
fn pause_keeps_the_snapshot_on_screen() {
    let mut app = app();
    press(&mut app, KeyCode::Char('p'));
    assert!(!app.update(Some(Arc::new(Snapshot::default()))));
    assert_eq!(app.snapshot.as_ref().unwrap().events, 5100);
    assert!(contains(&screen(&app), "[PAUSED]"));
    press(&mut app, KeyCode::Char('p'));
    assert!(app.update(Some(Arc::new(Snapshot::default()))));
    assert_eq!(app.snapshot.as_ref().unwrap().events, 0);
}

#[test]
fn size_ranges_read_as_ranges() {
    assert_eq!(size_range(2, 2), "2 B");
    assert_eq!(size_range(0, 1), "0-1 B");
    assert_eq!(size_range(513, 1024), "513 B-1.0 KiB");
}

#[test]
fn ctrl_c_interrupts() {
    let mut app = app();
    let key = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(app.key(key), Action::Interrupt);
}

#[test]
fn the_peak_snapshot_is_the_first_holding_the_most_live_bytes() {
    let with_live = |live_bytes| {
        Arc::new(Snapshot {
            live_bytes,
            ..snapshot()
        })
    };
    let snapshots: Vec<Arc<Snapshot>> = [10, 70, 30, 70, 5].into_iter().map(with_live).collect();
    assert_eq!(peak_snapshot(&snapshots), 1);
    assert_eq!(peak_snapshot(&[]), 0);
}

#[test]
fn the_help_of_a_recording_lists_the_time_cursors_keys() {
    let mut app = app();
    press(&mut app, KeyCode::Char('?'));
    assert!(!contains(&screen(&app), "Left/Right"));
    app.cursor = Some((3, 10));
    let lines = screen(&app);
    for key in [
        "Left/Right step through the recording",
        "[ ]        the first, the last snapshot",
        "m          the snapshot with the most live bytes",
    ] {
        assert!(contains(&lines, key), "{key}: {lines:#?}");
    }
}

/// Prints the screen, for a failing comparison.
fn show(lines: &[String]) -> String {
    lines.join("\n")
}

/// The body of a view: the lines between the tab bar and the footer, without trailing
/// blanks and blank lines.
fn body(app: &App) -> Vec<String> {
    let lines = screen(app);
    let tabs = lines.iter().position(|l| l.contains("1 Sites")).unwrap();
    let mut body: Vec<String> = lines[tabs + 1..23]
        .iter()
        .map(|l| l.trim_end().to_string())
        .collect();
    while body.last().is_some_and(String::is_empty) {
        body.pop();
    }
    body
}

#[test]
fn the_whole_sites_screen_at_80x24() {
    let lines: Vec<String> = screen(&app())
        .into_iter()
        .map(|l| l.trim_end().to_string())
        .collect();
    let expected = [
        "memprof pid 31337 [preload] 5.2s | slow_leak 100 | out out",
        "980 ev/s | live 97.7 KiB in 100 blocks | RSS 3.0 MiB | peak 98.6 KiB at 4.9s",
        "LOST! 7 | held 0 | 5,100 events | target output: out/target-output.log",
        " live heap, peak █ 98.6 KiB at 4.9s ──────   RSS ───────────────────────────────",
        "97.4 KiB│                      ⢀⣀⡠⠤⠤⠔⠒⠉     3.1 MiB│⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠉⠁",
        "        │               ⣀⡠⠤⠒⠒⠒⠉⠁                   │",
        "        │     ⢀⣀⣀⡠⠤⠒⠒⠉⠉⠉                           │",
        "0       │⣀⠤⠔⠒⠉⠁                             0      │",
        "        └─────────────────────────────────         └────────────────────────────",
        "     0.0s                             5.2s      0.0s                        5.2s",
        "[1 Sites]  2 Growing   3 Sizes   4 Threads   5 Lifetimes",
        " live▼      blocks    allocs    allocated  growth       function",
        ">  97.7 KiB       100       100   97.7 KiB  +19.0 KiB/s slow_leak_site",
        "        0 B         0     5,000    4.8 MiB      -12 B/s churn_site",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "q:leave ?:help Tab:view s:sort(live bytes) /:filter t:thread p:pause Enter:stack",
    ];
    assert_eq!(lines, expected, "{}", show(&lines));
}

#[test]
fn each_views_table_at_80x24() {
    let mut app = app();
    let expected: [(char, &[&str]); 4] = [
        (
            '2',
            &[
                " slope▼       live       r2    rises over    function",
                "> +19.5 KiB/s   97.7 KiB  0.97  100%    5.0s slow_leak_site",
            ],
        ),
        (
            '3',
            &[
                "glibc: 5.0 MiB usable for 4.9 MiB requested, internal fragmentation 2.7%",
                " size              allocs     live     live bytes unused allocations",
                ">    513 B-1.0 KiB      5,000        0        0 B   0.8% #######################",
                "   1.0 KiB-2.0 KiB        100      100   97.7 KiB  50.0% #",
            ],
        ),
        (
            '4',
            &[
                " tid       live▼       blocks     allocs       allocs/s",
                ">     4242    97.7 KiB        100          100         20/s",
                "      4243         0 B          0        5,000      1,234/s",
            ],
        ),
        (
            '5',
            &[
                " short-lived▼ freed      short  median    function",
                ">       4,990      5,000   100%     ~4 us pool? churn_site",
            ],
        ),
    ];
    for (key, view) in expected {
        press(&mut app, KeyCode::Char(key));
        let lines = body(&app);
        assert_eq!(lines, view, "view {key}:\n{}", show(&lines));
    }
}

#[test]
fn t_shows_one_threads_sites_then_the_next_then_all() {
    let mut app = app();
    press(&mut app, KeyCode::Char('t'));
    assert_eq!(app.thread, Some(4242));
    press(&mut app, KeyCode::Char('t'));
    assert_eq!(app.thread, Some(4243));
    let lines = body(&app);
    let expected = [
        " live▼      blocks    allocs    allocated  growth       function",
        ">       0 B         0     5,000    4.8 MiB            - churn_site",
    ];
    assert_eq!(lines, expected, "{}", show(&lines));
    assert!(contains(&screen(&app), "thread 4243"));
    press(&mut app, KeyCode::Char('t'));
    assert_eq!(app.thread, None);
    assert!(!contains(&screen(&app), "thread 42"));
    // Enter in Threads picks the selected thread and shows its sites.
    press(&mut app, KeyCode::Char('4'));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Enter);
    assert_eq!((app.thread, app.view), (Some(4243), View::Sites));
    press(&mut app, KeyCode::Char('4'));
    assert!(contains(&body(&app), "*4243"));
}

/// Counts of millions and billions keep every digit: their columns widen (python3's
/// 1,030,355 live blocks of 17-32 B read ",030,355" in a column of 8).
#[test]
fn counts_too_wide_for_their_column_widen_it() {
    let mut many = snapshot();
    many.sizes[0].live_blocks = 1_030_355;
    many.sizes[0].allocations = 3_133_757_000;
    many.sites[0].live_blocks = 12_345_678;
    many.sites[0].allocations = 1_234_567_890;
    many.threads[0].live_blocks = 98_765_432_100;
    let mut app = App {
        snapshot: Some(Arc::new(many)),
        ..App::default()
    };
    for (key, numbers) in [
        ('1', ["12,345,678", "1,234,567,890"]),
        ('3', ["1,030,355", "3,133,757,000"]),
        ('4', ["98,765,432,100", "100"]),
    ] {
        press(&mut app, KeyCode::Char(key));
        let lines = body(&app);
        for number in numbers {
            let whole = lines.iter().any(|line| {
                line.split_whitespace()
                    .any(|word| word.trim_start_matches('>') == number)
            });
            assert!(whole, "view {key} lacks {number}:\n{}", show(&lines));
        }
    }
}
