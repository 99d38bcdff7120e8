//! `--live`: the full-screen terminal UI. The collector builds a [`Snapshot`] (profiler-core's
//! `live` model) at most every [`SNAPSHOT_INTERVAL`] and leaves it in a slot; the UI thread
//! ([`ui`]) reads keys, takes the latest snapshot and draws it. Leaving the view (`q`) ends
//! the thread and the snapshots; collection goes on to its normal end. When collection ends,
//! the view closes by itself and memprof writes its report as without `--live`.

pub mod ui;

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use profiler_core::live::{LiveModel, Namer, SessionFacts, Snapshot, SymbolNamer};

/// How often the collector builds a snapshot (at most).
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

/// Refuses `--live` before anything starts when stdout is not a terminal.
pub fn check_terminal() -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "--live needs a terminal: stdout is not a TTY (drop --live to profile without the view)"
        );
    }
    Ok(())
}

/// `memprof view RECORDING`: the recording's snapshots in the view, with a time cursor.
pub fn view(file: &std::path::Path) -> Result<i32> {
    check_terminal()?;
    let file = match file.is_dir() {
        true => crate::options::recording_of(file),
        false => file.to_path_buf(),
    };
    let context = || format!("cannot read {}", file.display());
    stderr_line!("memprof: replaying {}", file.display());
    let open = || -> Result<_> {
        let source = std::fs::File::open(&file).with_context(context)?;
        profiler_core::recording::Reader::new(source).with_context(context)
    };
    // Sites are named as the live session named them, when the recording says.
    let symbols = open()?.closing_symbols();
    let recorded =
        profiler_core::live::recorded_snapshots(open()?, symbols).with_context(context)?;
    let info = SessionInfo {
        command: recorded.header.command.join(" "),
        pid: recorded.header.pid,
        capture: "recording".into(),
        output: file.clone(),
        target_output: None,
    };
    let snapshots = recorded.snapshots.into_iter().map(Arc::new).collect();
    ui::browse(&info, snapshots);
    if let Some(end) = recorded.early_end {
        stderr_line!(
            "memprof: warning: {}: {end}; the view stops there",
            file.display()
        );
    }
    Ok(0)
}

/// What the header shows that does not change.
#[derive(Clone, Debug, Default)]
pub struct SessionInfo {
    pub command: String,
    pub pid: u32,
    /// The capture path (`preload`, `uprobes`).
    pub capture: String,
    pub output: PathBuf,
    /// Where the target's stdout and stderr go (`run`), if memprof redirected them.
    pub target_output: Option<PathBuf>,
}

/// What the collector and the UI thread share.
#[derive(Default)]
pub struct Shared {
    latest: Mutex<Option<Arc<Snapshot>>>,
    /// The UI thread has left (`q`), or is to leave (collection ended).
    closed: AtomicBool,
    /// CPU time the UI thread used, in ns, once it has left.
    ui_cpu_ns: AtomicU64,
}

impl Shared {
    pub fn publish(&self, snapshot: Snapshot) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(Arc::new(snapshot));
        }
    }

    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest.lock().ok()?.clone()
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The UI thread records its CPU time as it leaves.
    pub fn ui_done(&self) {
        self.ui_cpu_ns.store(thread_cpu_ns(), Ordering::Release);
    }
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The collector's side of the live view.
pub struct LiveFeed {
    model: LiveModel,
    /// When the session started (the graph's origin).
    start_ns: u64,
    namer: Option<SymbolNamer>,
    last: Option<Instant>,
    shared: Arc<Shared>,
    ui: Option<JoinHandle<()>>,
    /// Snapshots built, and the collector's CPU time building and publishing them; of which
    /// naming stacks (symbols and DWARF read, frames symbolized: the report takes the
    /// symbolizer over, see [`LiveFeed::take_symbolizer`], so that time moves, it is not
    /// added).
    snapshots: u64,
    building: Duration,
    naming: Duration,
}

/// A [`Namer`] that counts the CPU time its names take.
struct TimedNamer<'a> {
    namer: &'a mut SymbolNamer,
    spent: Duration,
}

impl Namer for TimedNamer<'_> {
    fn name(&mut self, frames: &[u64]) -> profiler_core::live::SiteNames {
        let started = thread_cpu_ns();
        let names = self.namer.name(frames);
        self.spent += Duration::from_nanos(thread_cpu_ns().saturating_sub(started));
        names
    }
}

impl LiveFeed {
    /// Starts the UI thread (alternate screen, raw mode) for a session started at `start_ns`.
    pub fn start(info: SessionInfo, start_ns: u64) -> LiveFeed {
        let shared = Arc::new(Shared::default());
        let ui = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("memprof-live".into())
                .spawn(move || ui::run(&info, &shared))
                .ok()
        };
        LiveFeed {
            model: LiveModel::new(start_ns),
            start_ns,
            namer: None,
            last: None,
            shared,
            ui,
            snapshots: 0,
            building: Duration::ZERO,
            naming: Duration::ZERO,
        }
    }

    /// The launched process exec'd: the view follows the new program's heap from here.
    pub fn new_image(&mut self) {
        self.model = LiveModel::new(self.start_ns);
    }

    /// The view is on screen (the status line stays off meanwhile).
    pub fn active(&self) -> bool {
        !self.shared.is_closed()
    }

    /// Follows one applied record.
    pub fn observe(&mut self, effect: &profiler_core::heap::Effect) {
        self.model.observe(effect);
    }

    /// Whether a snapshot is due.
    pub fn due(&self) -> bool {
        self.active()
            && self
                .last
                .is_none_or(|last| last.elapsed() >= SNAPSHOT_INTERVAL)
    }

    /// Builds and publishes a snapshot of the session now.
    pub fn tick(
        &mut self,
        recorder: &profiler_core::recorder::Recorder,
        maps: &profiler_core::maps::ProcessMaps,
        pid: u32,
        facts: SessionFacts,
    ) {
        self.last = Some(Instant::now());
        let started = thread_cpu_ns();
        let spent = || Duration::from_nanos(thread_cpu_ns().saturating_sub(started));
        let namer = self
            .namer
            .get_or_insert_with(|| SymbolNamer::new(maps, pid));
        if namer.update(maps) {
            self.model.forget_names();
        }
        let now_ns = crate::clock::monotonic_ns();
        let mut timed = TimedNamer {
            namer,
            spent: Duration::ZERO,
        };
        let snapshot = self.model.snapshot(recorder, &mut timed, now_ns, facts);
        self.naming += timed.spent;
        self.shared.publish(snapshot);
        self.snapshots += 1;
        self.building += spent();
    }

    /// The symbolizer the view named sites with, if it named any, for the report to reuse.
    pub fn take_symbolizer(&mut self) -> Option<profiler_core::symbolize::Symbolizer> {
        self.namer.take().map(SymbolNamer::into_symbolizer)
    }

    /// Leaves the view (collection ended) and waits for the terminal to be restored.
    pub fn finish(&mut self) {
        self.shared.close();
        if let Some(ui) = self.ui.take() {
            let _ = ui.join();
            // What the view itself cost (`cargo xtask bench live` reads it).
            if crate::timings::enabled() {
                let ui_secs = self.shared.ui_cpu_ns.load(Ordering::Acquire) as f64 / 1e9;
                let building = self.building.saturating_sub(self.naming);
                stderr_line!(
                    "memprof: live view: {} snapshots built in {:.3} s (and {:.3} s naming \
                     stacks, which the report reuses); its thread used {:.3} s of CPU",
                    self.snapshots,
                    building.as_secs_f64(),
                    self.naming.as_secs_f64(),
                    ui_secs
                );
            }
        }
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.finish();
    }
}
