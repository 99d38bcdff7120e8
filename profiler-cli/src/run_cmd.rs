//! `memprof run -- CMD`: the launched target's session.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use nix::sys::signal::{Signal, kill};
use profiler_common::shared_ring::{STACKS_EH_FRAME, STACKS_FRAME_POINTERS, STACKS_NONE};
use profiler_core::{
    heap::Mode,
    maps::ProcessMaps,
    report::{Capture, ProcessEnd},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    backpressure::{self, Backpressure},
    capture::{collector, monotonic_ns, prepare, probe_config, salvage},
    capture_path,
    cli::{CaptureArgs, CapturePath, Unwind},
    followed::{self, Followed, TreeSession},
    launch, ops_output,
    preload_capture::{self, SharedRing},
    privileges,
    probes::ProbeConfig,
    process_events::ProcessEvents,
    recorder::{Collected, LossSource},
    recording, report, session,
    session::{EventSource, Stop},
    target_modules,
    targets::LookupOrder,
};

/// Where the program's output goes under `--live`, in the output directory.
const TARGET_OUTPUT: &str = "target-output.log";

/// `memprof run -- CMD`: launch stopped at exec, probe (or preload the capture library),
/// resume, collect until it exits.
pub async fn run_command(
    capture: &CaptureArgs,
    leak_check: bool,
    mut target: launch::Target,
    path: CapturePath,
    follow: bool,
) -> Result<i32> {
    if capture.live {
        crate::live::check_terminal()?;
    }
    let command = target.command.clone();
    let child_env = target.env.clone();
    privileges::check()?;
    // Refused before the target runs, not after: an unsafe output directory loses nothing.
    let output_dir = profiler_core::output_dir::OutputDir::open(&capture.output)?;
    // Under the live view the program's output would break the screen: it goes to a file
    // (stderr only when it is the terminal: a redirected stderr stays where it was sent).
    let target_output = match capture.live {
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
    let config = ProbeConfig {
        hold_threads: true,
        ..probe_config(capture)?
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
        CapturePath::Preload => Some(preload(capture, &mut target, follow)?),
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
        move |pid: nix::unistd::Pid| {
            let maps = ProcessMaps::read(pid.as_raw() as u32).ok();
            if let Ok(mut shared) = exit_maps.lock() {
                shared.clone_from(&maps);
            }
            if leak_check {
                // The exiting thread's registers; the others are on their way out too, and
                // their stacks are scanned whole.
                let threads = crate::leak_scan::thread_state(pid).into_iter().collect();
                backpressure.exit_stop(threads);
            }
            let rss = crate::recording::read_rss(pid.as_raw() as u32)
                .map(|bytes| (crate::capture::monotonic_ns(), bytes));
            Some((maps, launch::peak_rss(pid), rss))
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
    let (mut source, probes, sites, mut collected) = match shared_ring {
        Some(ring) => {
            let mut collected = preload_collector(pid, capture, &ring);
            // No thread is ever held on this path, but an exec waits for a drain.
            collected.release_holds_with(backpressure.clone());
            collected.capture = Some(report_capture);
            // Where the library's calls go: the definitions the probes would have been put
            // on, named in the report as the functions' providers (the size-class analysis and
            // `compare` read the allocator from them).
            let providers: Vec<_> = LookupOrder::for_new_process(pid, &child_environment)
                .and_then(|order| order.probe_plan())
                .map(|(sites, _)| {
                    sites
                        .into_iter()
                        .filter(|site| site.kind.symbol() == site.symbol)
                        .collect()
                })
                .unwrap_or_default();
            collected.serving_allocator(&providers);
            (EventSource::Shared(ring), None, providers, collected)
        }
        None => {
            let prepared = prepare(pid, config, || {
                LookupOrder::for_new_process(pid, &child_environment)
            });
            let (mut probes, sites, warnings) = match prepared {
                Ok(prepared) => prepared,
                Err(error) => {
                    // Never leave a stopped child behind.
                    child.abandon();
                    return Err(error);
                }
            };
            let (ring, mut collected) = collector(
                Mode::Run,
                pid,
                capture,
                &mut probes,
                &sites,
                warnings,
                &backpressure,
            )?;
            collected.capture = Some(report_capture);
            // Shared with the tree's collectors, which probe each child as it is forked.
            let probes = Arc::new(Mutex::new(probes));
            (
                EventSource::kernel(ring, capture.ring_bytes()?)?,
                Some(probes),
                sites,
                collected,
            )
        }
    };
    collected.watch_exit_maps(exit_maps);
    let start_ns = monotonic_ns();
    if let Some(events) = &process_events {
        let followed = Followed::new(TreeSession {
            root: pid,
            mode: Mode::Run,
            capture: capture.clone(),
            report_capture: collected.capture.clone(),
            sites: sites.clone(),
            start_ns,
            probes: probes.clone(),
        });
        collected.follow(followed, events.clone());
    }
    let command_line: Vec<String> = command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let session = recording::SessionStart {
        command: command_line,
        // Stopped at its exec: the file it runs, whatever argv[0] says (a symlink, `exec -a`).
        executable: std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|exe| exe.display().to_string()),
        pid,
        mode: Mode::Run,
        start_ns,
    };
    if let Err(error) = recording::start(&mut collected, capture, &session) {
        child.abandon();
        return Err(error);
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
    if capture.live {
        let info = crate::live::SessionInfo {
            command: session.command.join(" "),
            pid,
            capture: collected
                .capture
                .as_ref()
                .map_or(String::new(), |capture| capture.path.clone()),
            output: capture.output.clone(),
            target_output: target_output.clone(),
        };
        collected.live = Some(crate::live::LiveFeed::start(info, start_ns));
    }
    let collect_result = session::collect(&mut source, &mut collected, pid, stop).await;
    if let Some(path) = &target_output {
        eprintln!("memprof: the program's output is in {}", path.display());
    }
    let end_ns = monotonic_ns();
    if let Some(probes) = &probes
        && let Ok(mut probes) = probes.lock()
    {
        probes.detach();
    }
    match collect_result {
        Ok(_) => {}
        Err(error) => {
            salvage(&mut collected, &session, end_ns, &sites, capture);
            return Err(error);
        }
    };
    let (exit, at_exit) = ended.context("lost track of the target")?;
    let (maps_at_exit, peak_rss, rss_at_exit) = at_exit.unwrap_or_default();
    collected.peak_rss_bytes = peak_rss;
    // The exit maps first: what is still queued may have been allocated from libraries
    // mapped since the last read, and the target is gone now.
    if let Some(maps) = maps_at_exit {
        collected.merge_maps(maps);
    }
    source.drain(&mut collected);
    if let Some(events) = &process_events {
        events.close();
    }
    if let EventSource::Shared(ring) = &source {
        // Processes left running stop recording: nothing reads the ring any more.
        ring.close();
    }
    // After the last events: the timeline's last point then has the RSS at exit.
    if let Some((ts_ns, bytes)) = rss_at_exit {
        collected.sample_rss(ts_ns, bytes);
    }
    backpressure.close();
    collected.held = match &source {
        EventSource::Shared(ring) => ring.held(),
        EventSource::Kernel { .. } => backpressure.held(),
    };
    if let Some(watcher) = printed_ops {
        match ops_output::printed_count(watcher) {
            Ok(ops) => collected.recorder.analyses.set_ops(Some(ops)),
            Err(warning) => {
                collected.warnings.push(warning);
            }
        }
    }
    let counters = collected
        .lost()
        .context("cannot read the probes' loss counters")?;
    let exit = exit?;
    if let Some(followed) = collected.followed.take() {
        let mut tree = followed.finish();
        // Listed only when the target started a process: a lone process's report is unchanged.
        if !tree.images.is_empty() {
            let root = followed::root_image(
                &collected,
                &session,
                (ProcessEnd::Exit, Some(exit.into())),
                end_ns,
            );
            collected.processes = std::iter::once(root).chain(tree.images).collect();
        }
        collected.warnings.append(&mut tree.warnings);
    }
    let meta = report::Meta {
        mode: Mode::Run,
        command: session.command,
        executable: session.executable,
        pid,
        exit: Some(exit.into()),
        start_ns,
        end_ns,
        sites: &sites,
        counters,
    };
    recording::finish_session(&mut collected, &meta, capture)?;
    Ok(exit.status())
}

/// Sets up the in-process path: creates the ring and gives the target the library and the
/// ring's descriptor; with `follow`, every process of the tree records into it.
fn preload(capture: &CaptureArgs, target: &mut launch::Target, follow: bool) -> Result<SharedRing> {
    let library = preload_capture::library()?;
    // The library unwinds each stack itself (profiler-capture's unwind module).
    let stack_mode = match (capture.max_depth, capture.unwind) {
        (0, _) => STACKS_NONE,
        (_, Unwind::Dwarf) => STACKS_EH_FRAME,
        (_, Unwind::Fp) => STACKS_FRAME_POINTERS,
    };
    let stacks = (stack_mode, capture.max_depth);
    let ring = SharedRing::create(u64::from(capture.ring_bytes()?), stacks, follow)?;
    target.env = preload_capture::target_env(&library, &ring, std::mem::take(&mut target.env));
    target.inherit_fd = Some(ring.fd());
    Ok(ring)
}

/// The collector of a `--capture preload` session: no probes, the ring's own loss counters.
fn preload_collector(pid: u32, capture: &CaptureArgs, ring: &SharedRing) -> Collected {
    let mut collected = Collected::new(Mode::Run);
    collected.count_losses_with(LossSource::SharedRing(ring.counters()));
    collected.recorder.analyses.set_ops(capture.ops);
    collected.unwind_for(pid, capture.max_depth);
    collected
}
