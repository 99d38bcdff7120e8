//! One live session, whichever command started it. `run` launches its target and `attach`
//! finds one running; each sets up a capture path ([`probe_capture`], or the in-process
//! ring in `run_cmd.rs`) and then drives the same [`Session`]: start (followed tree,
//! recording, live view), collect until a stop, detach, and finish with how the target ended
//! (the last records, the tree's images, the report and the recording's trailer).
use std::{
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};
use profiler_core::{
    heap::Mode,
    report::{ExitStatus, ProcessEnd},
    symbolize::Symbolizer,
};

use crate::{
    backpressure::Backpressure,
    clock::monotonic_ns,
    collect::{self, EventSource, Stop},
    collected::{
        Collected, LossSource,
        followed::{self, Followed, TreeSession},
    },
    live::{LiveFeed, SessionInfo},
    meta::{Meta, SessionStart},
    ops_output,
    options::SessionOptions,
    probe_site::ProbeSite,
    probes::{ProbeConfig, Probes},
    process_events::ProcessEvents,
    report_writer,
    targets::LookupOrder,
};

/// What a capture path set up before the session starts.
pub struct Capture {
    pub collected: Collected,
    pub source: EventSource,
    /// The probed sites (uprobes) or the providers the library forwards to (preload).
    pub sites: Vec<ProbeSite>,
    /// The uprobes path's probes, shared with a followed tree's collectors (which probe each
    /// child as it is forked).
    pub probes: Option<Arc<Mutex<Probes>>>,
}

/// How the target ended, and what the command learned of it at its end.
pub struct Ending {
    pub exit: Option<ExitStatus>,
    /// How the target's line in a followed tree's list ends.
    pub process_end: ProcessEnd,
    /// The target's RSS as it exited (monotonic ns, bytes): the timeline's last point.
    pub rss_at_exit: Option<(u64, u64)>,
    /// `--ops-from-output`: the reader of the target's stdout.
    pub printed_ops: Option<JoinHandle<Option<u64>>>,
}

pub struct Session {
    pub collected: Collected,
    source: EventSource,
    start: SessionStart,
    options: SessionOptions,
    sites: Vec<ProbeSite>,
    probes: Option<Arc<Mutex<Probes>>>,
    backpressure: Arc<Backpressure>,
    process_events: Option<Arc<ProcessEvents>>,
    /// Where the target's output goes under the live view (`run`), said at the end.
    target_output: Option<PathBuf>,
    /// When collection ended.
    end_ns: Option<u64>,
}

impl Session {
    /// Starts the session `start` describes on what `capture` set up: the tree's collectors
    /// when `process_events` follows one, then the recording.
    pub fn start(
        capture: Capture,
        start: SessionStart,
        options: SessionOptions,
        backpressure: Arc<Backpressure>,
        process_events: Option<Arc<ProcessEvents>>,
    ) -> Result<Session> {
        let Capture {
            mut collected,
            source,
            sites,
            probes,
        } = capture;
        if let Some(events) = &process_events {
            let followed = Followed::new(TreeSession {
                root: start.pid,
                mode: start.mode,
                options: options.clone(),
                report_capture: collected.capture.clone(),
                sites: sites.clone(),
                start_ns: start.start_ns,
                probes: probes.clone(),
                command: start.command.clone(),
                executable: start.executable.clone(),
            });
            collected.follow(followed, events.clone());
        }
        collected.ops = options.ops;
        collected.start_recording(&options, &start)?;
        Ok(Session {
            collected,
            source,
            start,
            options,
            sites,
            probes,
            backpressure,
            process_events,
            target_output: None,
            end_ns: None,
        })
    }

    /// Says at the end that the target's output went to `path` (under the live view).
    pub fn target_output_in(&mut self, path: PathBuf) {
        self.target_output = Some(path);
    }

    /// Collects until `stop` resolves (showing the live view if asked), and returns why it
    /// ended.
    pub async fn collect(&mut self, stop: impl Future<Output = Stop>) -> Result<Stop> {
        if self.options.live {
            let info = SessionInfo {
                command: self.start.command.join(" "),
                pid: self.start.pid,
                capture: self
                    .collected
                    .capture
                    .as_ref()
                    .map_or(String::new(), |capture| capture.path.clone()),
                output: self.options.output.clone(),
                target_output: self.target_output.clone(),
            };
            self.collected.live = Some(LiveFeed::start(info, self.start.start_ns));
        }
        let pid = self.start.pid;
        let stopped = collect::collect(&mut self.source, &mut self.collected, pid, stop).await;
        if let Some(path) = &self.target_output {
            stderr_line!("memprof: the program's output is in {}", path.display());
        }
        self.end_ns = Some(monotonic_ns());
        stopped
    }

    /// Reads what is queued now.
    pub fn drain(&mut self) {
        self.source.drain(&mut self.collected);
    }

    /// Takes the probes out of the target (the in-process path has none).
    pub fn detach(&mut self) {
        if let Some(probes) = &self.probes
            && let Ok(mut probes) = probes.lock()
        {
            probes.detach();
        }
    }

    /// The collection failed: still writes what was collected (report and recording), and
    /// returns `error` to report.
    pub fn salvage(mut self, error: anyhow::Error) -> anyhow::Error {
        let counters = self.collected.lost().unwrap_or_default();
        let end_ns = self.end_ns.unwrap_or_else(monotonic_ns);
        // The followed images are written too (how the launched process ends is unknown).
        finish_tree(
            &mut self.collected,
            &mut self.start,
            (ProcessEnd::Running, None),
            end_ns,
        );
        let meta = self.start.ended(None, end_ns, &self.sites, counters);
        if let Err(error) = finish_session(&mut self.collected, &meta, &self.options) {
            stderr_line!("memprof: error: {error:#}");
        }
        error
    }

    /// Ends the session: the records still queued, the followed tree's images, the report and
    /// the recording's trailer. `release` runs once no thread is held any more (the attach
    /// tracer lets the threads go then).
    pub fn finish(mut self, ending: Ending, release: impl FnOnce()) -> Result<()> {
        let end_ns = self.end_ns.unwrap_or_else(monotonic_ns);
        let collected = &mut self.collected;
        self.source.drain(collected);
        if let Some(events) = &self.process_events {
            events.close();
        }
        if let EventSource::Shared(ring) = &self.source {
            // Processes left running stop recording: nothing reads the ring any more.
            ring.close();
        }
        // After the last events: the timeline's last point then has the RSS at exit.
        if let Some((ts_ns, bytes)) = ending.rss_at_exit {
            collected.sample_rss(ts_ns, bytes);
        }
        self.backpressure.close();
        release();
        collected.held = match &self.source {
            EventSource::Shared(ring) => ring.held(),
            EventSource::Kernel { .. } => self.backpressure.held(),
        };
        if let Some(watcher) = ending.printed_ops {
            match ops_output::printed_count(watcher) {
                Ok(ops) => collected.ops = Some(ops),
                Err(warning) => collected.warnings.push(warning),
            }
        }
        let counters = collected
            .lost()
            .context("cannot read the probes' loss counters")?;
        let end = (ending.process_end, ending.exit);
        finish_tree(collected, &mut self.start, end, end_ns);
        let meta = self.start.ended(ending.exit, end_ns, &self.sites, counters);
        finish_session(collected, &meta, &self.options)
    }
}

/// Writes the followed tree's images and lists them, with the launched process's line (how it
/// ended in `end`), in `collected.processes`. The session's own report is the launched
/// process's last image: `start` takes its command line if it exec'd.
fn finish_tree(
    collected: &mut Collected,
    start: &mut SessionStart,
    end: (ProcessEnd, Option<ExitStatus>),
    end_ns: u64,
) {
    let Some(followed) = collected.followed.take() else {
        return;
    };
    let mut tree = followed.finish();
    if tree.root.index > 1 {
        start.command = tree.root.command.clone();
        start.executable = tree.root.executable.clone();
    }
    // Listed only when the target started a process or another program: a lone process's
    // report is unchanged.
    if !tree.images.is_empty() {
        let root = followed::root_image(collected, start, &tree.root, end, end_ns);
        let mut images: Vec<_> = std::iter::once(root).chain(tree.images).collect();
        images.sort_by(|a, b| a.start_secs.total_cmp(&b.start_secs));
        collected.processes = images;
    }
    collected.warnings.append(&mut tree.warnings);
}

/// The end of a session: writes the report, then the recording's trailer (even when the
/// report could not be written), and says where the recording is.
fn finish_session(
    collected: &mut Collected,
    meta: &Meta<'_>,
    options: &SessionOptions,
) -> Result<()> {
    // Through /proc/PID/ while the target lives (attach): its namespace, its deleted files.
    let mut symbolizer = Symbolizer::for_process(&collected.maps, meta.pid);
    // The live view's modules are read already.
    if let Some(named) = collected.live.as_mut().and_then(LiveFeed::take_symbolizer) {
        symbolizer = symbolizer.with_modules_of(named);
    }
    let mut build_ids = collected.build_ids.clone();
    // Nothing is applied to the heap any more, and the leak check has run.
    collected.recorder.heap.forget_freed();
    let maps = &collected.maps;
    let reported = report_writer::finish_report(
        &collected.view(),
        collected.malformed,
        &mut symbolizer,
        &meta.report_meta(),
        |path| crate::build_ids::build_id_of_path(&mut build_ids, maps, path, meta.pid),
        &options.output,
        options.top,
    );
    collected.record_heap_end(reported.as_ref().ok());
    collected.record_symbols(&symbolizer);
    collected.finish_recording(meta, true);
    let unwound = collected.recorder.unwinder.stats;
    if crate::timings::enabled() && unwound.stacks > 0 {
        stderr_line!(
            "unwinding: {} stacks, {} joined their thread's last walk, {} frames unwound \
             ({:.1} per stack), {:.0} bytes of stack per snapshot",
            unwound.stacks,
            unwound.joined,
            unwound.frames_unwound,
            unwound.frames_unwound as f64 / unwound.stacks as f64,
            unwound.snapshot_bytes as f64 / unwound.stacks as f64
        );
    }
    reported.map(|_| ())
}

/// The uprobes capture path on `pid`: finds where each allocation function is served
/// (`order`), loads and attaches the probes, and makes the collector of their ring.
pub fn probe_capture(
    mode: Mode,
    pid: u32,
    options: &SessionOptions,
    hold_threads: bool,
    order: impl FnOnce() -> Result<LookupOrder>,
    backpressure: &Arc<Backpressure>,
) -> Result<Capture> {
    let order = order()?;
    let (sites, warnings) = order.probe_plan()?;
    let config = ProbeConfig::for_session(options, mode, hold_threads);
    let ring_bytes = config.ring_bytes;
    let mut probes = Probes::load(pid, config)?;
    probes.attach(pid, &sites)?;
    if hold_threads && let Some((object, offset)) = order.dlclose_entry() {
        probes.hold_at_dlclose(pid, object, offset)?;
    }
    let ring = probes.take_ring()?;
    let mut collected = Collected::new(mode);
    collected.count_losses_with(LossSource::Probes(probes.take_loss_counters()?));
    collected.stack_tops = Some(probes.take_stack_tops()?);
    collected.release_holds_with(backpressure.clone());
    collected.unwind_for(pid, options.stacks.max_depth);
    collected.allocator_code(pid, &sites);
    collected.warnings = warnings;
    // The maps now, before anyone is told collection started: a target that exits at once
    // (its maps are empty from then on) still has its files known for the report.
    collected.refresh_maps(pid);
    Ok(Capture {
        collected,
        source: EventSource::kernel(ring, ring_bytes)?,
        sites,
        probes: Some(Arc::new(Mutex::new(probes))),
    })
}
