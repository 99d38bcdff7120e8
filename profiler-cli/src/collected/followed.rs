//! `run` following the process tree: one collector per process image the launched target
//! started (a pid from its fork or exec to its exit or next exec), each with its own heap,
//! analyses, recording and report in `DIR/processes/PID-N/`.
//!
//! Records reach the launched process's collector, which hands those of another pid here
//! ([`crate::collected::Collected::record_from`]). The tracer's [`ProcessEvent`]s start and end
//! images: a fork starts the child with a copy of its parent's live heap (synthetic
//! allocations flagged `FLAG_INHERITED_AT_FORK`, recorded like any event, so a replay of the
//! child's recording starts from the same heap); an exec ends the image's heap (its blocks are
//! released, not leaked) and starts a fresh one; an exit ends the image.
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};

use profiler_common::{EventHeader, EventKind, FLAG_INHERITED_AT_FORK, FLAG_STACK_TRUNCATED};
use profiler_core::{
    heap::Mode,
    output_dir::OutputDir,
    report::{
        Capture, ExitStatus, LostCounts, PROCESS_TOP_LEAKS, ProcessEnd, ProcessImage, ProcessLeak,
    },
    stacks::StackId,
};

use super::Collected;
use crate::{
    meta::{Meta, SessionStart},
    options::{RECORDING_FILE, SessionOptions},
    probe_site::ProbeSite,
    probes::Probes,
    process_events::ProcessEvent,
    report_writer,
    unseen::UnseenCheck,
};

/// Directory of the images' outputs, inside the session's.
const PROCESSES_DIR: &str = "processes";

/// The images of the tree other than the launched process's.
pub struct Followed {
    /// The launched process: its records stay with the session's own collector.
    pub root: u32,
    /// `run`, or `attach --children` (blocks from before the window are unknown).
    mode: Mode,
    options: SessionOptions,
    report_capture: Option<Capture>,
    live: HashMap<u32, Image>,
    /// Images started so far, by pid (a pid's images are numbered from 1).
    images_of: HashMap<u32, u32>,
    /// Writes the files of the images that ended, away from the collector (which a fork or
    /// exec waits for).
    writer: ImageWriter,
    /// Records of processes not followed (none expected: every process is known from its
    /// fork before it runs).
    unattributed: u64,
    /// Problems met (an output directory that could not be written), for the report.
    warnings: Vec<String>,
    /// The uprobes path: each child gets its own links, before it runs.
    probes: Option<Arc<Mutex<Probes>>>,
    /// The probed sites (uprobes) or the providers the library forwards to (preload).
    sites: Vec<ProbeSite>,
    /// The launched process's image now (it changes at each of its execs).
    root_image: RootImage,
    /// When the session started: the clock origin of the launched process's report and
    /// recording, whichever image they are of.
    session_start_ns: u64,
    /// Says which exec'd programs' calls the capture path cannot see.
    unseen: UnseenCheck,
}

/// What following the tree produced, for the launched process's report.
pub struct Tree {
    /// Every image but the launched process's last, in order of start.
    pub images: Vec<ProcessImage>,
    pub warnings: Vec<String>,
    /// The launched process's last image: the session's own report is its.
    pub root: RootImage,
}

/// One image of the launched process: the program it runs since its start or last exec.
#[derive(Clone, Debug)]
pub struct RootImage {
    /// Which image of the pid it is, from 1.
    pub index: u32,
    pub command: Vec<String>,
    pub executable: Option<String>,
    pub start_ns: u64,
}

/// One live process image.
struct Image {
    collected: Collected,
    pid: u32,
    parent: Option<u32>,
    index: u32,
    command: Vec<String>,
    executable: Option<String>,
    start_ns: u64,
    /// Its output directory, relative to the session's.
    output: String,
}

/// What every image of the tree shares with the session.
pub struct TreeSession {
    /// The launched (or attached) process.
    pub root: u32,
    pub mode: Mode,
    pub options: SessionOptions,
    pub report_capture: Option<Capture>,
    /// The probed sites (uprobes) or the providers the library forwards to (preload).
    pub sites: Vec<ProbeSite>,
    /// When the session started (monotonic ns).
    pub start_ns: u64,
    /// The uprobes path's probes, which each child gets its own links of.
    pub probes: Option<Arc<Mutex<Probes>>>,
    /// The launched process's command line and executable.
    pub command: Vec<String>,
    pub executable: Option<String>,
}

impl Followed {
    pub fn new(session: TreeSession) -> Followed {
        let path = session
            .report_capture
            .as_ref()
            .map_or_else(String::new, |capture| capture.path.clone());
        Followed {
            root: session.root,
            mode: session.mode,
            options: session.options,
            report_capture: session.report_capture,
            live: HashMap::new(),
            images_of: HashMap::new(),
            writer: ImageWriter::spawn(session.sites.clone(), session.start_ns, path, session.mode),
            unattributed: 0,
            warnings: Vec::new(),
            probes: session.probes,
            sites: session.sites,
            root_image: RootImage {
                index: 1,
                command: session.command,
                executable: session.executable,
                start_ns: session.start_ns,
            },
            session_start_ns: session.start_ns,
            unseen: UnseenCheck::default(),
        }
    }

    /// The launched process exec'd (`root`, its collector, has released the old program's
    /// blocks): its image so far becomes one of the tree, in `processes/PID-N/` with the
    /// recording made so far, and `root` goes on with the new program and a new recording.
    pub fn root_execd(&mut self, root: &mut Collected) {
        let pid = self.root;
        let ended = root.split_image();
        let now_ns = crate::clock::monotonic_ns();
        let new = RootImage {
            index: self.root_image.index + 1,
            command: read_cmdline(pid),
            executable: std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|exe| exe.display().to_string()),
            start_ns: now_ns,
        };
        let old = std::mem::replace(&mut self.root_image, new);
        let name = format!("{pid}-{}", old.index);
        let output = format!("{PROCESSES_DIR}/{name}");
        let mut image = Image {
            collected: ended,
            pid,
            parent: None,
            index: old.index,
            command: old.command,
            executable: old.executable,
            start_ns: old.start_ns,
            output: output.clone(),
        };
        // The recording so far is the old image's: moved into its directory, written on
        // there; the new program gets a new one.
        let session = OutputDir::open(&self.options.output);
        let moved = session.as_ref().map_err(|e| e.to_string()).and_then(|dir| {
            let target = dir
                .subdir(PROCESSES_DIR)
                .and_then(|processes| processes.subdir(&name))
                .map_err(|e| e.to_string())?;
            match &image.collected.recording {
                Some(_) => dir
                    .move_to(RECORDING_FILE, &target, RECORDING_FILE)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        });
        if let Err(error) = moved {
            self.warnings.push(format!(
                "pid {pid} image {}: no recording (it could not be moved into {output}): \
                 {error}",
                old.index
            ));
            image.collected.recording = None;
        }
        let start = SessionStart {
            command: self.root_image.command.clone(),
            executable: self.root_image.executable.clone(),
            pid,
            mode: self.mode,
            start_ns: self.session_start_ns,
            lineage: Some(profiler_core::recording::Lineage {
                parent_pid: None,
                image: self.root_image.index,
            }),
        };
        if self.options.recording.is_some()
            && let Err(error) = root.start_recording(&self.options, &start)
        {
            self.warnings.push(format!(
                "pid {pid}: no recording of its new program: {error:#}"
            ));
        }
        self.end_image(image, ProcessEnd::Exec, None);
        // In the session's warnings, which are this image's too.
        self.unseen_calls(pid, self.root_image.index);
    }

    /// Why image `index` of `pid`, a program just exec'd, will miss calls, if it will: said
    /// in the session's warnings (returned for the image's own).
    fn unseen_calls(&mut self, pid: u32, index: u32) -> Option<String> {
        let capture = self
            .report_capture
            .as_ref()
            .map_or("", |capture| capture.path.as_str());
        let why = self.unseen.why(pid, capture, &self.sites)?;
        let warning = format!("pid {pid} image {index}: {why}");
        self.warnings.push(warning.clone());
        Some(warning)
    }

    /// The stack tops each live image's walks learned since the last call, by pid.
    pub fn take_new_stack_tops(
        &mut self,
    ) -> impl Iterator<Item = (u32, Vec<profiler_core::unwind::LearnedTop>)> + '_ {
        self.live.iter_mut().filter_map(|(&pid, image)| {
            let learned = image.collected.recorder.unwinder.take_new_stack_tops();
            (!learned.is_empty()).then_some((pid, learned))
        })
    }

    /// A record written by process `pid` (not the launched one).
    pub fn record(&mut self, pid: u32, bytes: &[u8]) {
        match self.live.get_mut(&pid) {
            Some(image) => image.collected.record(bytes),
            None => self.unattributed += 1,
        }
    }

    /// [`Collected::prefetch_for`] for a followed process.
    pub fn prefetch(&self, pid: u32, addr: u64, old_addr: u64) {
        if let Some(image) = self.live.get(&pid) {
            image.collected.recorder.prefetch(addr, old_addr);
        }
    }

    /// Before a drain: maps read as processes exited go to their unwinders first (what is
    /// still queued may point into libraries the periodic reads never saw).
    pub fn prepare(&mut self, events: &[ProcessEvent]) {
        for event in events {
            if let ProcessEvent::Exited {
                pid,
                maps: Some(maps),
                ..
            } = event
                && let Some(image) = self.live.get_mut(pid)
            {
                image.collected.merge_maps(maps.clone());
            }
        }
    }

    /// Applies one event, after the ring was read to its end. `root` is the launched
    /// process's collector (a parent to fork from).
    pub fn apply(&mut self, event: ProcessEvent, root: &Collected) {
        match event {
            ProcessEvent::Forked { parent, child } => {
                // Probed before its first instruction: the tracer holds it until this returns.
                if let Some(probes) = &self.probes
                    && let Ok(mut probes) = probes.lock()
                    && let Err(error) = probes.follow(child, &self.sites)
                {
                    self.warnings
                        .push(format!("pid {child}: not probed: {error:#}"));
                }
                let mut image = self.start_image(child, Some(parent));
                let parent = if parent == self.root {
                    Some(root)
                } else {
                    self.live.get(&parent).map(|image| &image.collected)
                };
                if let Some(parent) = parent {
                    inherit(&mut image.collected, parent);
                }
                if let Some(replaced) = self.live.insert(child, image) {
                    // The pid's previous image was never told to end: end it now.
                    self.end_image(replaced, ProcessEnd::Exit, None);
                }
            }
            ProcessEvent::Execd { pid } => {
                let Some(mut old) = self.live.remove(&pid) else {
                    return;
                };
                old.collected.end_image();
                let parent = old.parent;
                self.end_image(old, ProcessEnd::Exec, None);
                let mut image = self.start_image(pid, parent);
                if let Some(warning) = self.unseen_calls(pid, image.index) {
                    image.collected.warnings.push(warning);
                }
                self.live.insert(pid, image);
            }
            ProcessEvent::Exited {
                pid,
                exit,
                peak_rss,
                ..
            } => {
                if let Some(probes) = &self.probes
                    && let Ok(mut probes) = probes.lock()
                {
                    probes.forget(pid);
                }
                if let Some(mut image) = self.live.remove(&pid) {
                    image.collected.peak_rss_bytes = peak_rss;
                    self.end_image(image, ProcessEnd::Exit, Some(exit.into()));
                }
            }
        }
    }

    /// The session is over: images still live belong to processes left running. Returns
    /// every image once its files are written.
    pub fn finish(mut self) -> Tree {
        let mut running: Vec<Image> = self.live.drain().map(|(_, image)| image).collect();
        running.sort_by_key(|image| image.start_ns);
        for image in running {
            self.end_image(image, ProcessEnd::Running, None);
        }
        let (mut images, mut warnings) = self.writer.finish();
        images.sort_by(|a, b| a.start_secs.total_cmp(&b.start_secs));
        warnings.append(&mut self.warnings);
        if self.unattributed > 0 {
            warnings.push(format!(
                "{} records came from processes that were not followed",
                self.unattributed
            ));
        }
        Tree {
            images,
            warnings,
            root: self.root_image,
        }
    }

    fn start_image(&mut self, pid: u32, parent: Option<u32>) -> Image {
        let count = self.images_of.entry(pid).or_default();
        *count += 1;
        let index = *count;
        let name = format!("{pid}-{index}");
        let output = format!("{PROCESSES_DIR}/{name}");
        // Created through the session's directory: the same checks as every output.
        let created = OutputDir::open(&self.options.output)
            .and_then(|dir| dir.subdir(PROCESSES_DIR))
            .and_then(|dir| dir.subdir(&name));
        let options = self.image_options(&output);
        let mut collected = Collected::new(self.mode);
        collected.unwind_for(pid, options.stacks.max_depth);
        if self.probes.is_some() {
            // The probes see the allocator's calls to itself: flagged as on the launched process.
            collected.allocator_code(pid, &self.sites);
        }
        collected.capture = self.report_capture.clone();
        let command = read_cmdline(pid);
        let executable = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|exe| exe.display().to_string());
        let start_ns = crate::clock::monotonic_ns();
        match created {
            Ok(_) => {
                let session = SessionStart {
                    command: command.clone(),
                    executable: executable.clone(),
                    pid,
                    mode: self.mode,
                    start_ns,
                    lineage: Some(profiler_core::recording::Lineage {
                        parent_pid: parent,
                        image: index,
                    }),
                };
                if let Err(error) = collected.start_recording(&options, &session) {
                    self.warnings
                        .push(format!("pid {pid}: no recording: {error:#}"));
                }
            }
            Err(error) => self.warnings.push(format!("pid {pid}: {error}")),
        }
        collected.refresh_maps(pid);
        Image {
            collected,
            pid,
            parent,
            index,
            command,
            executable,
            start_ns,
            output,
        }
    }

    /// The session's options with the image's directory as output (and its recording there).
    fn image_options(&self, output: &str) -> SessionOptions {
        self.options.for_image(self.options.output.join(output))
    }

    /// Hands the image to the writer.
    fn end_image(&mut self, image: Image, end: ProcessEnd, exit: Option<ExitStatus>) {
        let options = self.image_options(&image.output);
        self.writer.write(Ended {
            image,
            end,
            exit,
            end_ns: crate::clock::monotonic_ns(),
            options,
        });
    }
}

/// An image that ended, on its way to the writer.
struct Ended {
    image: Image,
    end: ProcessEnd,
    exit: Option<ExitStatus>,
    end_ns: u64,
    options: SessionOptions,
}

/// The thread that writes ended images' files, one after the other.
struct ImageWriter {
    queue: Option<std::sync::mpsc::Sender<Ended>>,
    thread: Option<std::thread::JoinHandle<(Vec<ProcessImage>, Vec<String>)>>,
}

impl ImageWriter {
    fn spawn(
        sites: Vec<ProbeSite>,
        session_start_ns: u64,
        path: String,
        mode: Mode,
    ) -> ImageWriter {
        let (queue, ended) = std::sync::mpsc::channel::<Ended>();
        let thread = std::thread::spawn(move || {
            let mut images = Vec::new();
            let mut warnings = Vec::new();
            let mut symbolizer = None;
            while let Some(next) = next_ended(&ended, &mut symbolizer) {
                let (image, warning, used) = write_ended(
                    next,
                    (&sites, session_start_ns, &path, mode),
                    symbolizer.take(),
                );
                images.push(image);
                warnings.extend(warning);
                symbolizer = Some(used);
            }
            (images, warnings)
        });
        ImageWriter {
            queue: Some(queue),
            thread: Some(thread),
        }
    }

    fn write(&self, ended: Ended) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(ended);
        }
    }

    /// Waits for every image to be written.
    fn finish(&mut self) -> (Vec<ProcessImage>, Vec<String>) {
        self.queue = None;
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}

/// How long the writer keeps the last report's modules for an image that has not ended yet.
const KEEP_MODULES_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// The next image to write. The modules the last report read (libc's debug info alone is
/// ~40 MiB inflated) are kept for it while images end in quick succession (a shell's
/// children: read again for each, they cost seconds), and dropped once none has ended for
/// [`KEEP_MODULES_FOR`]: a program that a script exec'd runs for the rest of the session, and
/// holding them meanwhile raised memprof's RSS by that much for as long (python3 run
/// through a `bash` script's `exec`: 242-244 MiB in 4 of 6 runs, 203-206 MiB after).
fn next_ended<T, S>(queue: &Receiver<T>, symbolizer: &mut Option<S>) -> Option<T> {
    match queue.recv_timeout(KEEP_MODULES_FOR) {
        Ok(next) => return Some(next),
        Err(RecvTimeoutError::Disconnected) => return None,
        Err(RecvTimeoutError::Timeout) => {}
    }
    if symbolizer.take().is_some() {
        crate::release_memory::to_the_system();
    }
    queue.recv().ok()
}

/// Writes one ended image's report and recording; returns its figures, the problem met if
/// any, and the symbolizer for the next image.
fn write_ended(
    ended: Ended,
    (sites, session_start_ns, path, mode): (&[ProbeSite], u64, &str, Mode),
    symbolizer: Option<profiler_core::symbolize::Symbolizer>,
) -> (
    ProcessImage,
    Option<String>,
    profiler_core::symbolize::Symbolizer,
) {
    let Ended {
        mut image,
        end,
        exit,
        end_ns,
        options,
    } = ended;
    let meta = Meta {
        mode,
        command: image.command.clone(),
        executable: image.executable.clone(),
        pid: image.pid,
        exit,
        start_ns: image.start_ns,
        end_ns,
        sites,
        // The ring's losses are the whole tree's: counted in the launched process's report.
        counters: LostCounts::default(),
    };
    let (written, symbolizer) = report_writer::write_image(
        &image.collected.view(),
        image.collected.build_ids.clone(),
        &meta,
        &options.output,
        symbolizer,
    );
    let (top_leaks, warning) = match &written {
        Ok(report) => (ProcessLeak::top(&report.leaks, PROCESS_TOP_LEAKS), None),
        Err(error) => (Vec::new(), Some(format!("pid {}: {error:#}", image.pid))),
    };
    image.collected.record_heap_end(written.as_ref().ok());
    image.collected.record_symbols(&symbolizer);
    image.collected.finish_recording(&meta, false);
    let stats = image.collected.recorder.heap.stats();
    let secs = |ns: u64| ns.saturating_sub(session_start_ns) as f64 / 1e9;
    let figures = ProcessImage {
        pid: image.pid,
        parent_pid: image.parent,
        image: image.index,
        command: image.command,
        executable: image.executable,
        start_secs: secs(image.start_ns),
        end_secs: (end != ProcessEnd::Running).then(|| secs(end_ns)),
        end,
        exit,
        capture: path.to_owned(),
        output: image.output,
        allocations: stats.allocations,
        frees: stats.frees,
        peak_live_bytes: stats.peak_live_bytes,
        leaked_blocks: stats.live_blocks,
        leaked_bytes: stats.live_bytes,
        inherited_blocks: stats.inherited_blocks,
        inherited_bytes: stats.inherited_bytes,
        top_leaks,
    };
    (figures, warning, symbolizer)
}

/// The launched (or attached) process's line in `Report::processes`, of its last image
/// (`image`): its figures are the session's own, its report the session's (`.`); `end` and
/// `exit` say how it ended.
pub fn root_image(
    collected: &Collected,
    session: &SessionStart,
    image: &RootImage,
    (end, exit): (ProcessEnd, Option<ExitStatus>),
    end_ns: u64,
) -> ProcessImage {
    let stats = collected.recorder.heap.stats();
    ProcessImage {
        pid: session.pid,
        parent_pid: None,
        image: image.index,
        command: image.command.clone(),
        executable: image.executable.clone(),
        start_secs: image.start_ns.saturating_sub(session.start_ns) as f64 / 1e9,
        end_secs: (end != ProcessEnd::Running)
            .then(|| end_ns.saturating_sub(session.start_ns) as f64 / 1e9),
        end,
        exit,
        capture: collected
            .capture
            .as_ref()
            .map_or_else(String::new, |capture| capture.path.clone()),
        output: ".".into(),
        allocations: stats.allocations,
        frees: stats.frees,
        peak_live_bytes: stats.peak_live_bytes,
        leaked_blocks: stats.live_blocks,
        leaked_bytes: stats.live_bytes,
        inherited_blocks: 0,
        inherited_bytes: 0,
        // Filled from the report's own leaks when it is built.
        top_leaks: Vec::new(),
    }
}

/// Gives `child` its parent's live blocks and mappings, as the fork copied them: synthetic
/// allocations with the parent's stacks, applied and recorded like any event.
fn inherit(child: &mut Collected, parent: &Collected) {
    let ts_ns = crate::clock::monotonic_ns();
    let heap = &parent.recorder.heap;
    let stacks = &parent.recorder.stacks;
    let mut record = Vec::new();
    let mut give = |kind: EventKind, tid: u32, addr: u64, size: u64, stack: Option<StackId>| {
        let frames: &[u64] = stack.map_or(&[], |id| stacks.get(id));
        let truncated = stack.is_some_and(|id| stacks.is_truncated(id));
        let header = EventHeader {
            kind: kind as u32,
            tid,
            ts_ns,
            addr,
            size,
            stack_depth: frames.len() as u32,
            flags: FLAG_INHERITED_AT_FORK | if truncated { FLAG_STACK_TRUNCATED } else { 0 },
            ..EventHeader::default()
        };
        record.clear();
        profiler_core::event::encode(&header, frames, &mut record);
        child.record(&record);
    };
    let mut blocks: Vec<(u64, _)> = heap.blocks().collect();
    // In address order: the child's recording does not depend on hash order.
    blocks.sort_by_key(|(addr, _)| *addr);
    for (addr, block) in blocks {
        give(block.kind, block.tid, addr, block.size, block.stack);
    }
    for (start, region) in heap.regions() {
        // As one mmap, whatever made it: the child made no call.
        give(
            EventKind::Mmap,
            region.tid,
            start,
            region.end - start,
            region.stack,
        );
    }
}

/// `/proc/PID/cmdline` as arguments (empty if it cannot be read).
fn read_cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::next_ended;
    use std::sync::mpsc::{Sender, channel};

    /// Modules that queue the next image as they are dropped: the writer then finds it only if
    /// it dropped them, which it does once no image has ended for a while.
    struct Modules(Sender<u32>);

    impl Drop for Modules {
        fn drop(&mut self) {
            let _ = self.0.send(2);
        }
    }

    #[test]
    fn the_last_reports_modules_are_kept_while_images_end_and_dropped_when_none_does() {
        let (queue, ended) = channel();
        queue.send(1).unwrap();
        let mut modules = Some(Modules(queue.clone()));
        assert_eq!(next_ended(&ended, &mut modules), Some(1));
        assert!(
            modules.is_some(),
            "the next image was waiting: its report reuses them"
        );
        drop(queue);
        // On a thread of its own: modules kept for good would leave it waiting for good.
        let (result, waited) = channel();
        std::thread::spawn(move || {
            let next = next_ended(&ended, &mut modules);
            let _ = result.send((next, modules.is_none(), next_ended(&ended, &mut modules)));
        });
        let (next, dropped, after) = waited
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the writer kept the modules while no image ended");
        assert_eq!(next, Some(2));
        assert!(dropped, "dropped while no image ended");
        assert_eq!(after, None, "the session ended");
    }
}
