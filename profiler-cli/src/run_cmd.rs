//! `memprof run -- CMD`: the launched target's session.

use std::io::IsTerminal as _;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use nix::sys::signal::{Signal, kill};
use profiler_common::EventKind;
use profiler_common::shared_ring::{STACKS_EH_FRAME, STACKS_FRAME_POINTERS, STACKS_NONE};
use profiler_core::{
    heap::Mode,
    maps::ProcessMaps,
    report::{Capture, ProcessEnd},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    backpressure::{self, Backpressure},
    capture_path,
    clock::monotonic_ns,
    collect::{EventSource, Stop},
    collected::{Collected, LossSource},
    launch,
    meta::SessionStart,
    ops_output,
    options::{CapturePath, SessionOptions, Unwind},
    preload_capture::{self, SharedRing},
    privileges,
    process_events::ProcessEvents,
    session::{self, Ending, Session, probe_capture},
    target_modules,
    targets::LookupOrder,
};

/// Where the program's output goes under `--live`, in the output directory.
const TARGET_OUTPUT: &str = "target-output.log";

/// What `memprof run` is asked to do, besides the session's options.
pub struct RunOptions {
    pub session: SessionOptions,
    pub target: launch::Target,
    pub path: CapturePath,
    /// Follow the processes the target starts.
    pub follow: bool,
    /// Classify the blocks left at exit by reachability.
    pub leak_check: bool,
}

/// `memprof run -- CMD`: launch stopped at exec, probe (or preload the capture library),
/// resume, collect until it exits.
pub async fn run_command(run: RunOptions) -> Result<i32> {
    let RunOptions {
        session: options,
        mut target,
        path,
        follow,
        leak_check,
    } = run;
    if options.live {
        crate::live::check_terminal()?;
    }
    let command = target.command.clone();
    let child_env = target.env.clone();
    privileges::check()?;
    // Refused before the target runs, not after: an unsafe output directory loses nothing.
    let output_dir = profiler_core::output_dir::OutputDir::open(&options.output)?;
    // Under the live view the program's output would break the screen: it goes to a file
    // (stderr only when it is the terminal: a redirected stderr stays where it was sent).
    let target_output = match options.live {
        true => {
            target.output = Some(output_dir.create_new(TARGET_OUTPUT)?);
            target.errors_to_output = std::io::stderr().is_terminal();
            Some(output_dir.join(TARGET_OUTPUT))
        }
        false => None,
    };
    let passed_output: Option<std::fs::File> = match &target.output {
        Some(file) => Some(file.try_clone()?),
        None => None,
    };
    // The child's environment: ours with --env applied (an LD_PRELOAD there changes which
    // library provides malloc).
    let mut child_environment: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| !child_env.iter().any(|(k, _)| k == key))
        .collect();
    child_environment.extend(child_env.iter().cloned());
    let program = capture_path::program(&target.command)?;
    let choice = capture_path::choose(path, &program, &child_environment, target.user.as_ref())?;
    let report_capture = Capture {
        path: choice.path.name().into(),
        reason: choice.reason,
    };
    // The in-process path's ring exists before the target, which inherits it: with `follow`,
    // every process of the tree records into it.
    let shared_ring = match choice.path {
        CapturePath::Preload => Some(preload(&options, &mut target, follow)?),
        CapturePath::Uprobes | CapturePath::Auto => None,
    };
    let process_events = follow.then(ProcessEvents::new);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // While it exits: its maps (for symbolization), its peak RSS and its RSS then (a target
    // shorter than the sampling interval would otherwise end the timeline with the RSS it had
    // at exec).
    // The maps also go straight to the unwinder: records drained after the target died may
    // come from libraries mapped since the collector last read the maps.
    // And, unless --no-leak-check, the leak check: the collector drains the ring and scans
    // the target's memory while it waits in its exit stop.
    let exit_maps = target_modules::SharedMaps::default();
    let backpressure = Backpressure::new();
    let read_maps = {
        let exit_maps = exit_maps.clone();
        let backpressure = backpressure.clone();
        move |tid: nix::unistd::Pid| {
            // The last thread's tid: /proc/TID has the process's maps and memory even after
            // the main thread ended.
            let maps = ProcessMaps::read(tid.as_raw() as u32).ok();
            if let Ok(mut shared) = exit_maps.lock() {
                shared.clone_from(&maps);
            }
            if leak_check {
                // The last thread's registers: the others have ended (their stacks are
                // scanned whole), or are being killed by an exit_group, which the kernel
                // never stops at their exit.
                let threads = crate::leak_scan::thread_state(tid).into_iter().collect();
                backpressure.exit_stop(threads);
            }
            let rss = crate::rss::read_rss(tid.as_raw() as u32)
                .map(|bytes| (crate::clock::monotonic_ns(), bytes));
            Some((maps, crate::rss::peak_rss(tid), rss))
        }
    };
    // Threads the probes signal when the ring is half full wait for the collector to drain it.
    let _release_holds = backpressure::CloseOnDrop(backpressure.clone());
    let mut child = launch::launch(
        target,
        read_maps,
        done_tx,
        backpressure.clone(),
        process_events.clone(),
    )?;
    // `--ops-from-output`: the target's stdout, passed through, holds its operation count.
    let printed_ops = child.stdout.take().map(|stdout| match passed_output {
        Some(file) => {
            ops_output::pass_through(stdout, Box::new(file) as Box<dyn std::io::Write + Send>)
        }
        None => ops_output::pass_through(stdout, Box::new(std::io::stdout())),
    });
    let pid = child.pid.as_raw() as u32;
    let capture = match shared_ring {
        Some(ring) => preload_capture(pid, &options, ring, &backpressure, &child_environment),
        None => {
            let order = || LookupOrder::for_new_process(pid, &child_environment);
            match probe_capture(Mode::Run, pid, &options, true, order, &backpressure) {
                Ok(capture) => capture,
                Err(error) => {
                    // Never leave a stopped child behind.
                    child.abandon();
                    return Err(error);
                }
            }
        }
    };
    let mut capture = capture;
    if capture.probes.is_some()
        && let Some(note) = crate::operators::throwing_new_note(&capture.sites)
    {
        stderr_line!("{note}");
    }
    capture.collected.capture = Some(report_capture);
    capture.collected.watch_exit_maps(exit_maps);
    let start = SessionStart {
        command: command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        // Stopped at its exec: the file it runs, whatever argv[0] says (a symlink, `exec -a`).
        executable: std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|exe| exe.display().to_string()),
        pid,
        mode: Mode::Run,
        start_ns: monotonic_ns(),
        lineage: None,
    };
    let mut session = match Session::start(capture, start, options, backpressure, process_events) {
        Ok(session) => session,
        Err(error) => {
            child.abandon();
            return Err(error);
        }
    };
    if let Some(path) = target_output {
        session.target_output_in(path);
    }

    // The terminal sends Ctrl-C to the whole foreground group, so the child gets it directly;
    // memprof keeps collecting until the child is gone. SIGTERM sent to memprof is passed on.
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terminations = signal(SignalKind::terminate())?;
    let child_pid = child.pid;
    child.resume();
    let mut ended = None;
    let stop = async {
        tokio::pin!(done_rx);
        loop {
            tokio::select! {
                outcome = &mut done_rx => {
                    ended = outcome.ok();
                    return Stop::TargetExited;
                }
                _ = interrupts.recv() => {}
                _ = terminations.recv() => { let _ = kill(child_pid, Signal::SIGTERM); }
            }
        }
    };
    let collected = session.collect(stop).await;
    session.detach();
    if let Err(error) = collected {
        return Err(session.salvage(error));
    }
    let (exit, at_exit) = ended.context("lost track of the target")?;
    let (maps_at_exit, peak_rss, rss_at_exit) = at_exit.unwrap_or_default();
    session.collected.peak_rss_bytes = peak_rss;
    // The exit maps first: what is still queued may have been allocated from libraries
    // mapped since the last read, and the target is gone now.
    if let Some(maps) = maps_at_exit {
        session.collected.merge_maps(maps);
    }
    let exit = exit?;
    let ending = Ending {
        exit: Some(exit.into()),
        process_end: ProcessEnd::Exit,
        rss_at_exit,
        printed_ops,
    };
    session.finish(ending, || {})?;
    Ok(exit.status())
}

/// Sets up the in-process path: creates the ring and gives the target the library and the
/// ring's descriptor; with `follow`, every process of the tree records into it.
fn preload(
    options: &SessionOptions,
    target: &mut launch::Target,
    follow: bool,
) -> Result<SharedRing> {
    let library = preload_capture::library()?;
    // The library unwinds each stack itself (profiler-capture's unwind module).
    let stack_mode = match (options.stacks.max_depth, options.stacks.unwind) {
        (0, _) => STACKS_NONE,
        (_, Unwind::Dwarf) => STACKS_EH_FRAME,
        (_, Unwind::FramePointers) => STACKS_FRAME_POINTERS,
    };
    let stacks = (stack_mode, options.stacks.max_depth);
    let ring = SharedRing::create(u64::from(options.shared_ring_bytes()), stacks, follow)?;
    target.env = preload_capture::target_env(&library, &ring, std::mem::take(&mut target.env));
    target.inherit_fd = Some(ring.fd());
    Ok(ring)
}

/// The in-process capture path on `pid`, launched with the library and `ring`: no probes,
/// the ring's own loss counters.
fn preload_capture(
    pid: u32,
    options: &SessionOptions,
    ring: SharedRing,
    backpressure: &Arc<Backpressure>,
    child_environment: &[(String, String)],
) -> session::Capture {
    let mut collected = Collected::new(Mode::Run);
    collected.count_losses_with(LossSource::SharedRing(ring.counters()));
    collected.unwind_for(pid, options.stacks.max_depth);
    // No thread is ever held on this path, but an exec waits for a drain.
    collected.release_holds_with(backpressure.clone());
    // Where the library's calls go: the definitions the probes would have been put on, named
    // in the report as the functions' providers (the size-class analysis and `compare` read
    // the allocator from them), with the C++ operators the library records itself (those an
    // allocator serves with its own code: the same the probes would watch).
    let providers: Vec<_> = LookupOrder::for_new_process(pid, child_environment)
        .and_then(|order| order.probe_plan())
        .map(|(sites, _)| {
            sites
                .into_iter()
                .filter(|site| {
                    site.kind.symbol() == site.symbol
                        || matches!(
                            site.kind,
                            EventKind::OperatorNew | EventKind::OperatorDelete
                        )
                })
                .collect()
        })
        .unwrap_or_default();
    collected.serving_allocator(&providers);
    session::Capture {
        collected,
        source: EventSource::Shared(ring),
        sites: providers,
        probes: None,
    }
}
