//! The collector's state: profiler-core's recorder plus the target's memory maps, kept fresh
//! enough to symbolize every stack after the target is gone, and the target's modules for the
//! DWARF unwinder.
use profiler_common::{EventHeader, EventKind, FLAG_RELEASED_BY_EXEC};
use profiler_core::{
    allocator_code::{AllocatorCode, AllocatorModule},
    heap::Mode,
    maps::ProcessMaps,
    recorder::Recorder,
    report::LostCounts,
};

use std::sync::Arc;

use crate::{
    backpressure::Backpressure,
    build_ids::BuildIds,
    live::LiveFeed,
    meta::{Meta, SessionStart, probe_info},
    options::SessionOptions,
    preload_capture::RingCounters,
    probe_site::ProbeSite,
    probes::LossCounters,
    process_events::{ProcessEvent, ProcessEvents},
    recording_sink::{HeaderFacts, RecordingSink},
    target_modules::{SharedMaps, TargetModules},
};

pub mod followed;
use followed::Followed;

/// How often the target's resident set size is sampled.
const RSS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

pub struct Collected {
    pub recorder: Recorder,
    /// Union of the target's memory maps seen so far.
    pub maps: ProcessMaps,
    /// Records that did not decode (a format mismatch; never expected).
    pub malformed: u64,
    /// Number of interned stacks when the maps were last read.
    stacks_at_last_read: usize,
    /// Executable mappings for unwinding stack snapshots (`--unwind dwarf`).
    modules: TargetModules,
    /// Where the session is being recorded (`--recording`), if it is.
    pub recording: Option<RecordingSink>,
    /// Build-ids of the mapped files, by path (recorded, and written into profile.pb.gz).
    pub build_ids: BuildIds,
    /// Wall clock when collection started, ns since the Unix epoch.
    pub started_unix_ns: u64,
    /// When the target's RSS was last sampled.
    last_rss: Option<std::time::Instant>,
    /// The target's peak resident set size (VmHWM), read as it exited (run mode).
    pub peak_rss_bytes: Option<u64>,
    /// What the probes cannot see (targets.rs), copied into the report.
    pub warnings: Vec<String>,
    /// How much the target's threads were held (backpressure), once the session is over.
    pub held: Option<profiler_core::report::Held>,
    /// What the capture path could not deliver, once it is in place.
    loss_counters: Option<LossSource>,
    /// Told each time the ring has been read to its end (run: held threads may go on).
    backpressure: Option<Arc<Backpressure>>,
    /// The capture path and why, for the report.
    pub capture: Option<profiler_core::report::Capture>,
    /// The leak check's result, once it ran.
    pub leak_check: Option<profiler_core::leak_check::LeakCheck>,
    /// The process profiled (set with its unwinder).
    target_pid: u32,
    /// Files of the allocator serving the target (the leak check reads its static data
    /// apart).
    allocator_files: Vec<std::path::PathBuf>,
    /// `run` following the tree: the other processes' collectors, fed with the records
    /// written by other pids.
    pub followed: Option<Box<Followed>>,
    /// The probes' table of thread stack tops (the uprobes path), filled from the walks.
    pub stack_tops: Option<crate::stack_tops::StackTops>,
    /// Forks, execs and exits the tracer saw, applied after each drain.
    process_events: Option<Arc<ProcessEvents>>,
    /// Every process image of the tree, for the report (set at the end of the session).
    pub processes: Vec<profiler_core::report::ProcessImage>,
    /// `--live`: the view's feed, while the view is on.
    pub live: Option<LiveFeed>,
    /// The target's RSS when last sampled.
    pub last_rss_bytes: Option<u64>,
    /// Operations the target performed (`--ops`, `--ops-from-output`), if known.
    pub ops: Option<u64>,
}

impl Collected {
    pub fn new(mode: Mode) -> Collected {
        Collected {
            recorder: Recorder::new(mode),
            maps: ProcessMaps::default(),
            malformed: 0,
            stacks_at_last_read: usize::MAX,
            modules: TargetModules::new(0),
            recording: None,
            build_ids: BuildIds::new(),
            started_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            last_rss: None,
            peak_rss_bytes: None,
            warnings: Vec::new(),
            held: None,
            loss_counters: None,
            backpressure: None,
            capture: None,
            leak_check: None,
            target_pid: 0,
            allocator_files: Vec::new(),
            followed: None,
            stack_tops: None,
            process_events: None,
            processes: Vec::new(),
            live: None,
            last_rss_bytes: None,
            ops: None,
        }
    }

    /// Follows the tree: records of other pids go to `followed`, and `events` starts and ends
    /// their images.
    pub fn follow(&mut self, followed: Followed, events: Arc<ProcessEvents>) {
        self.followed = Some(Box::new(followed));
        self.process_events = Some(events);
    }

    /// A record written by process `pid`: ours, or that of a process of the followed tree.
    pub fn record_from(&mut self, pid: u32, bytes: &[u8]) {
        match &mut self.followed {
            Some(followed) if pid != followed.root => followed.record(pid, bytes),
            _ => self.record(bytes),
        }
    }

    /// A hint from the ring's reader: process `pid` has a record about `addr` (and `old_addr`)
    /// a few records ahead. Changes nothing; its heap entries are brought into the cache.
    pub fn prefetch_for(&self, pid: u32, addr: u64, old_addr: u64) {
        match &self.followed {
            Some(followed) if pid != followed.root => followed.prefetch(pid, addr, old_addr),
            _ => self.recorder.prefetch(addr, old_addr),
        }
    }

    /// A probes' record: its thread names its process (which may be another of the tree).
    pub fn record_from_thread(&mut self, bytes: &[u8]) {
        match (&self.followed, &self.process_events) {
            (Some(_), Some(events)) if bytes.len() >= 8 => {
                let tid = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                let pid = events.owner(tid);
                self.record_from(pid, bytes);
            }
            _ => self.record(bytes),
        }
    }

    /// The tracer's events so far, to apply once the ring is read to its end (so every record
    /// written before them is applied first). Exit maps go to the unwinders at once.
    pub fn take_process_events(&mut self) -> Option<(Vec<ProcessEvent>, u64)> {
        let events = self.process_events.as_ref()?.take();
        if let Some(followed) = &mut self.followed {
            followed.prepare(&events.0);
        }
        Some(events)
    }

    /// Applies events taken before the last drain; `released` is called with each process
    /// gone (or exec'd) whose thread may have died holding the ring's lock.
    pub fn apply_process_events(
        &mut self,
        taken: Option<(Vec<ProcessEvent>, u64)>,
        mut released: impl FnMut(u32),
    ) {
        let Some((events, seq)) = taken else {
            return;
        };
        if let Some(mut followed) = self.followed.take() {
            for event in events {
                match event {
                    ProcessEvent::Execd { pid } => released(pid),
                    ProcessEvent::Exited { pid, .. } => {
                        released(pid);
                        if let Some(events) = &self.process_events {
                            events.forget_threads_of(pid);
                        }
                    }
                    ProcessEvent::Forked { .. } => {}
                }
                followed.apply(event, self);
            }
            self.followed = Some(followed);
        }
        if let Some(process_events) = &self.process_events {
            process_events.applied(seq);
        }
    }

    /// Holds of the target's threads so far (backpressure), 0 without any.
    pub fn holds(&self) -> u64 {
        self.backpressure
            .as_ref()
            .and_then(|backpressure| backpressure.held())
            .map_or(0, |held| held.times)
    }

    /// Where to say that the ring was drained (threads held by the tracer wait for it).
    pub fn release_holds_with(&mut self, backpressure: Arc<Backpressure>) {
        self.backpressure = Some(backpressure);
    }

    /// Resolves when a thread held by the tracer waits for a drain (never without one).
    pub fn drain_wanted(&self) -> impl std::future::Future<Output = ()> + use<> {
        let backpressure = self.backpressure.clone();
        let process_events = self.process_events.clone();
        async move {
            let held = async {
                match backpressure {
                    Some(backpressure) => backpressure.drain_wanted().await,
                    None => std::future::pending().await,
                }
            };
            // A fork or exec waits for the collector too.
            let tree = async {
                match process_events {
                    Some(events) => events.wanted().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = held => {}
                () = tree => {}
            }
        }
    }

    /// The tracer's pending requests ([`Backpressure::requests`]), none without a tracer.
    pub fn drain_requests(&self) -> (bool, bool) {
        self.backpressure
            .as_ref()
            .map(|backpressure| backpressure.requests())
            .unwrap_or_default()
    }

    /// The collector read the ring to its end, in a last pass that started with the tracer's
    /// requests `answered` ([`Collected::drain_requests`]). If the target exec'd before that
    /// pass, every record of the old image has now been applied: its heap ends here, and
    /// `after_exec` runs before the target is let go; likewise the exit's leak check. A
    /// request made since waits for the next drain: the records the target wrote between the
    /// pass and its stop were not read (bash's last ones before it exec'd landed in the new
    /// program's heap, one `run` in 14).
    pub fn ring_drained(&mut self, answered: (bool, bool), after_exec: impl FnOnce()) {
        let Some(backpressure) = self.backpressure.clone() else {
            return;
        };
        let (exec, exit_check) = answered;
        if exec && backpressure.take_exec() {
            self.end_image();
            // Following the tree, the image that ended gets its own files.
            if let Some(mut followed) = self.followed.take() {
                followed.root_execd(self);
                self.followed = Some(followed);
            }
            after_exec();
        }
        if exit_check && let Some(threads) = backpressure.take_exit_check() {
            self.check_leaks(&threads);
        }
        backpressure.ring_drained();
    }

    /// Runs the leak check on the target, stopped (at its exit, or by `attach --leak-check`)
    /// with every record applied. A failure is a warning: the rest of the session stands.
    pub fn check_leaks(&mut self, threads: &[crate::leak_scan::ThreadState]) {
        self.check_leaks_paused(threads);
        self.record_leak_check();
    }

    /// [`Collected::check_leaks`] on a process memprof paused for it (`attach --leak-check`):
    /// recorded by [`Collected::leak_check_resumed`] once the process goes on, with the
    /// whole pause.
    pub fn check_leaks_paused(&mut self, threads: &[crate::leak_scan::ThreadState]) {
        let check = crate::leak_scan::check(
            self.target_pid,
            &self.recorder.heap,
            threads,
            &self.allocator_files,
        );
        match check {
            Ok(check) => self.leak_check = Some(check),
            Err(error) => self
                .warnings
                .push(format!("leak check not done: {error:#}")),
        }
    }

    /// The process paused for the leak check runs again after `paused` (the scan, the probes'
    /// detach and the threads' release included): the check is recorded with it.
    pub fn leak_check_resumed(&mut self, paused: std::time::Duration) {
        if let Some(check) = &mut self.leak_check {
            check.summary.scan.paused_secs = paused.as_secs_f64();
        }
        self.record_leak_check();
    }

    fn record_leak_check(&mut self) {
        if let (Some(check), Some(sink)) = (&self.leak_check, &mut self.recording) {
            sink.leak_check(check);
        }
    }

    /// Releases every block and mapping still live: the target exec'd another program, which
    /// starts with an empty heap. Each release is a free or munmap flagged
    /// `FLAG_RELEASED_BY_EXEC`, applied and recorded like any event, so a replay does the same.
    pub fn end_image(&mut self) {
        let heap = &self.recorder.heap;
        let blocks: Vec<u64> = heap.blocks().map(|(addr, _)| addr).collect();
        let regions: Vec<(u64, u64)> = heap
            .regions()
            .map(|(start, region)| (start, region.end - start))
            .collect();
        let ts_ns = crate::clock::monotonic_ns();
        let release = |kind: EventKind, addr: u64, size: u64| EventHeader {
            kind: kind as u32,
            ts_ns,
            addr,
            size,
            flags: FLAG_RELEASED_BY_EXEC,
            ..EventHeader::default()
        };
        let mut record = Vec::with_capacity(profiler_common::EVENT_HEADER_SIZE);
        let headers = blocks
            .into_iter()
            .map(|addr| release(EventKind::Free, addr, 0))
            .chain(
                regions
                    .into_iter()
                    .map(|(start, len)| release(EventKind::Munmap, start, len)),
            );
        for header in headers {
            record.clear();
            profiler_core::event::encode(&header, &[], &mut record);
            self.record(&record);
        }
    }

    /// The launched process exec'd while its tree is followed: hands over the image that ended
    /// (heap, analyses, maps, recording) as a collector of its own, and goes on afresh for the
    /// new program, with the same capture settings. Its blocks must be released first
    /// ([`Collected::end_image`]).
    pub fn split_image(&mut self) -> Collected {
        let mode = self.recorder.heap.mode();
        let mut fresh = Recorder::new(mode);
        fresh
            .unwinder
            .set_max_depth(self.recorder.unwinder.max_depth());
        fresh.allocator = self.recorder.allocator.renewed();
        let mut ended = Collected::new(mode);
        ended.recorder = std::mem::replace(&mut self.recorder, fresh);
        ended.maps = std::mem::take(&mut self.maps);
        ended.recording = self.recording.take();
        ended.build_ids = self.build_ids.clone();
        ended.target_pid = self.target_pid;
        ended.allocator_files = self.allocator_files.clone();
        ended.capture = self.capture.clone();
        ended.peak_rss_bytes = self.peak_rss_bytes.take();
        ended.modules = std::mem::replace(&mut self.modules, TargetModules::new(self.target_pid));
        self.stacks_at_last_read = usize::MAX;
        if let Some(live) = &mut self.live {
            live.new_image();
        }
        ended
    }

    /// Starts recording the session into the options' recording path, if it is recorded.
    pub fn start_recording(
        &mut self,
        options: &SessionOptions,
        start: &SessionStart,
    ) -> anyhow::Result<()> {
        let Some(path) = &options.recording else {
            return Ok(());
        };
        let sink = RecordingSink::start(
            path,
            start,
            options.stacks,
            HeaderFacts {
                ops: options.ops,
                capture: self.capture.clone(),
                allocator: self.allocator_kind(),
            },
            self.started_unix_ns,
            &mut self.build_ids,
        )?;
        self.recording = Some(sink);
        Ok(())
    }

    /// Records the end of the heap once no event follows: the report's fragmentation at the
    /// peak (`report`, when one was written) and the live blocks, before the symbols, which
    /// close the file. `memprof report` then replays the recording without a table of every
    /// address (`Writer::heap_end`).
    pub fn record_heap_end(&mut self, report: Option<&profiler_core::report::Report>) {
        let at_peak = report
            .and_then(|report| report.analyses.as_ref())
            .map(|analyses| &analyses.fragmentation.at_peak);
        if let Some(sink) = self.recording.as_mut() {
            sink.heap_end(&self.recorder.heap, at_peak);
        }
    }

    /// Records the frames `symbolizer` named for the report, so that a replay of the
    /// recording names them the same way without the target's files.
    pub fn record_symbols(&mut self, symbolizer: &profiler_core::symbolize::Symbolizer) {
        if let Some(sink) = self.recording.as_mut() {
            sink.symbols(&symbolizer.recorded());
        }
    }

    /// Writes the recording's trailer; `announce` prints where the recording is.
    pub fn finish_recording(&mut self, meta: &Meta<'_>, announce: bool) {
        if let Some(mut sink) = self.recording.take() {
            // Written already when a report was (`record_heap_end`).
            sink.heap_end(&self.recorder.heap, None);
            let trailer = profiler_core::recording::Trailer {
                end_monotonic_ns: meta.end_ns,
                exit: meta.exit,
                lost: (&meta.counters).into(),
                malformed: self.malformed,
                probes: meta.sites.iter().map(probe_info).collect(),
                peak_rss_bytes: self.peak_rss_bytes,
                warnings: self.warnings.clone(),
                ops: self.ops,
                held: self.held,
            };
            sink.close(&trailer, announce);
        }
    }

    /// Builds and publishes the live view's snapshot if one is due; `held` counts the holds
    /// so far.
    pub fn live_tick(&mut self, pid: u32, held: u64) {
        if !self.live.as_ref().is_some_and(LiveFeed::due) {
            return;
        }
        let facts = profiler_core::live::SessionFacts {
            rss_bytes: self.last_rss_bytes,
            lost_events: self.lost().map_or(0, |lost| lost.total()),
            held_threads: held,
            ended: false,
            allocator: self.allocator_kind(),
        };
        if let Some(live) = self.live.as_mut() {
            live.tick(&self.recorder, &self.maps, pid, facts);
        }
    }

    /// Where the capture path counts what it could not deliver.
    pub fn count_losses_with(&mut self, counters: LossSource) {
        self.loss_counters = Some(counters);
    }

    /// What was lost so far: the probes' counters (None if they cannot be read) plus the
    /// stacks the DWARF unwinder could not take to their root or a limit.
    pub fn lost(&self) -> Option<LostCounts> {
        losses(&self.loss_counters, self.unwind_errors())
    }

    /// What the report needs of the session (profiler-core's session module).
    pub fn view(&self) -> profiler_core::session_end::SessionView<'_> {
        profiler_core::session_end::SessionView {
            recorder: &self.recorder,
            maps: &self.maps,
            started_unix_ns: self.started_unix_ns,
            peak_rss_bytes: self.peak_rss_bytes,
            held: self.held,
            warnings: &self.warnings,
            capture: self.capture.as_ref(),
            leak_check: self.leak_check.as_ref(),
            processes: &self.processes,
            ops: self.ops,
        }
    }

    /// Sets the process whose modules stack snapshots are unwound with, and the deepest stack
    /// kept (`--max-depth`).
    pub fn unwind_for(&mut self, pid: u32, max_depth: u32) {
        self.target_pid = pid;
        self.modules = TargetModules::new(pid);
        self.recorder.unwinder.set_max_depth(max_depth as usize);
    }

    /// Tells the probes where the stacks of the threads walked since the last call end, for
    /// this process and every followed one.
    pub fn publish_stack_tops(&mut self) {
        let Some(tops) = &mut self.stack_tops else {
            return;
        };
        let learned = self.recorder.unwinder.take_new_stack_tops();
        if !learned.is_empty() {
            tops.publish(self.target_pid, &learned);
        }
        if let Some(followed) = &mut self.followed {
            for (pid, learned) in followed.take_new_stack_tops() {
                tops.publish(pid, &learned);
            }
        }
    }

    /// Tells the recorder which files hold the allocator, to flag the calls it makes for
    /// itself (its frees at thread exit, the arenas it maps inside free).
    pub fn allocator_code(&mut self, pid: u32, sites: &[ProbeSite]) {
        self.serving_allocator(sites);
        self.recorder.allocator = AllocatorCode::new(allocator_modules(pid, sites));
        self.recorder.allocator.update(&self.maps);
    }

    /// Remembers the files of the allocator that serves the target: those defining the
    /// malloc family among `sites` (the probes, or the in-process path's providers).
    pub fn serving_allocator(&mut self, sites: &[ProbeSite]) {
        for site in sites.iter().filter(|s| s.kind.is_malloc_family()) {
            for path in [
                Some(site.module.clone()),
                std::fs::canonicalize(&site.path).ok(),
            ]
            .into_iter()
            .flatten()
            {
                if !self.allocator_files.contains(&path) {
                    self.allocator_files.push(path);
                }
            }
        }
    }

    /// Which allocator serves the target, from the files of its malloc family (None before
    /// they are known or when none is one memprof knows).
    pub fn allocator_kind(&self) -> Option<profiler_core::analysis::allocator::Allocator> {
        use profiler_core::analysis::allocator::Allocator;
        self.allocator_files
            .iter()
            .map(|path| Allocator::from_module(&path.to_string_lossy()))
            .find(|allocator| *allocator != Allocator::Unknown)
    }

    /// Where the launcher leaves the maps it reads as the target exits (`run`).
    pub fn watch_exit_maps(&mut self, maps: SharedMaps) {
        self.modules.watch_exit_maps(maps);
    }

    pub fn record(&mut self, bytes: &[u8]) {
        match self.recorder.ingest_with(bytes, &mut self.modules) {
            Ok(ingested) => {
                if let Some(live) = &mut self.live {
                    live.observe(&ingested.effect);
                }
                if let Some(sink) = &mut self.recording {
                    let unwind_errors = self.recorder.unwinder.stats.errors;
                    let counters = &self.loss_counters;
                    sink.ingested(&ingested, &self.recorder, || {
                        losses(counters, unwind_errors)
                    });
                }
            }
            Err(_) => self.malformed += 1,
        }
        // Maps the unwinder read for an unknown address (dlopen): recorded too, or an offline
        // report could not symbolize a library unloaded before the next periodic read.
        if let Some(maps) = self.modules.take_fresh_maps() {
            if let Some(sink) = &mut self.recording {
                sink.maps(&maps, &mut self.build_ids);
            }
            self.maps.merge(maps);
            self.recorder.allocator.update(&self.maps);
        }
    }

    /// Re-reads the target's maps when new stacks appeared since the last read: they may
    /// point into libraries loaded since.
    pub fn refresh_maps(&mut self, pid: u32) {
        let stacks = self.recorder.stacks.len();
        if stacks == self.stacks_at_last_read {
            return;
        }
        if let Ok(maps) = ProcessMaps::read(pid) {
            self.merge_maps(maps);
            self.stacks_at_last_read = stacks;
        }
    }

    /// Adds a maps snapshot (periodic, or read as the target exited) for symbolization and
    /// for unwinding what is still queued.
    pub fn merge_maps(&mut self, maps: ProcessMaps) {
        if let Some(sink) = &mut self.recording {
            sink.maps(&maps, &mut self.build_ids);
        }
        self.modules.merge(maps.clone());
        self.maps.merge(maps);
        self.recorder.allocator.update(&self.maps);
    }

    /// Called from the collector's timer: samples the target's RSS every 100 ms (for the
    /// timeline and the recording) and writes the recording's pending chunk once a second.
    pub fn tick(&mut self, pid: u32) {
        let due = self
            .last_rss
            .is_none_or(|last| last.elapsed() >= RSS_INTERVAL);
        if due {
            self.last_rss = Some(std::time::Instant::now());
            if let Some(bytes) = crate::rss::read_rss(pid) {
                self.sample_rss(crate::clock::monotonic_ns(), bytes);
            }
        }
        let unwind_errors = self.unwind_errors();
        if let Some(sink) = &mut self.recording {
            let counters = &self.loss_counters;
            sink.flush_if_due(|| losses(counters, unwind_errors));
        }
    }

    /// An RSS sample taken at `ts_ns` (monotonic): into the timeline and the recording.
    pub fn sample_rss(&mut self, ts_ns: u64, bytes: u64) {
        let ts_ns = profiler_core::event::to_clock_tick(ts_ns);
        self.last_rss_bytes = Some(bytes);
        self.recorder.analyses.observe_rss(ts_ns, bytes);
        if let Some(sink) = &mut self.recording {
            sink.rss(ts_ns, bytes);
        }
    }

    /// Stacks the DWARF unwinder could not take to their root or a limit (counted with the
    /// kernel's stack errors in the report).
    fn unwind_errors(&self) -> u64 {
        self.recorder.unwinder.stats.errors
    }
}

/// Where each capture path counts what it could not deliver.
pub enum LossSource {
    /// The probes' per-CPU counters.
    Probes(LossCounters),
    /// The in-process ring's counters.
    SharedRing(RingCounters),
}

impl LossSource {
    fn read(&self) -> anyhow::Result<LostCounts> {
        match self {
            LossSource::Probes(counters) => counters.read(),
            LossSource::SharedRing(counters) => counters.read(),
        }
    }
}

/// The capture path's counters with the unwinder's errors added to the stack errors.
fn losses(counters: &Option<LossSource>, unwind_errors: u64) -> Option<LostCounts> {
    let mut lost = counters.as_ref()?.read().ok()?;
    lost.stack_errors += unwind_errors;
    Some(lost)
}

/// The files that provide the probed allocation functions, named as the target's maps may
/// name them, with the extent of `free` where they define it.
fn allocator_modules(pid: u32, sites: &[ProbeSite]) -> Vec<AllocatorModule> {
    let exe = std::fs::canonicalize(format!("/proc/{pid}/exe")).ok();
    let mut modules: Vec<AllocatorModule> = Vec::new();
    for site in sites
        .iter()
        .filter(|s| s.kind.is_malloc_family() || s.kind.is_free())
    {
        let canonical = std::fs::canonicalize(&site.path).ok();
        let mut paths = vec![site.module.clone()];
        paths.extend(canonical.clone());
        let index = match modules.iter().position(|m| m.paths == paths) {
            Some(index) => index,
            None => {
                modules.push(AllocatorModule {
                    callers_are_internal: canonical.is_none() || canonical != exe,
                    paths,
                    free: None,
                });
                modules.len() - 1
            }
        };
        if site.kind == EventKind::Free {
            let entry = site.file_offset - site.placement.offset;
            modules[index].free = Some(entry..entry + site.function_len);
        }
    }
    modules
}
