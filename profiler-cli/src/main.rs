//! memprof: an out-of-process heap profiler for Linux built on eBPF uprobes.
//!
//! The pipeline: `targets` finds which object provides each allocation function to the target
//! and `prologue` places each probe; `probes` loads the eBPF programs and attaches them;
//! `launch` starts a program stopped at exec (run mode); `session` drains the ring buffer into
//! a `recorder` (profiler-core's heap state) until the target exits, the user interrupts or the
//! duration ends; `report` turns the result into the terminal summary and the files.
mod cli;
mod compare;
mod diff;
mod elf;
mod launch;
mod multi_link;
mod offline;
mod operators;
mod privileges;
mod probes;
mod prologue;
mod recorder;
mod recording;
mod report;
mod session;
mod target_modules;
mod targets;

use std::{ffi::OsString, io::Write as _, path::Path, process::ExitCode};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser as _;
use nix::sys::signal::{Signal, kill};
use profiler_core::{heap::Mode, maps::ProcessMaps};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{CaptureArgs, Cli, Command},
    probes::{ProbeConfig, Probes},
    recorder::Collected,
    session::Stop,
    targets::{LookupOrder, ProbeSite},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(error) => {
            // One line: the chain of causes, outermost first.
            let message = error
                .chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            let _ = writeln!(std::io::stderr(), "memprof: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    match cli.command {
        Command::Report {
            file,
            format,
            output,
            top,
            ops,
        } => offline::report(&file, format, &output, top, ops),
        Command::Diff(args) => diff::diff(&args),
        Command::Compare(args) => compare::compare(&compare::CompareOptions {
            allocators: args.allocators,
            libraries: args.allocator_libs,
            output: args.output,
            runs: args.runs,
            load: args.load,
            ops: args.ops,
            command: args.command,
        }),
        Command::SynthesizeRecording { events, file } => offline::synthesize(&file, events),
        Command::Run {
            capture,
            env,
            command,
        } => runtime.block_on(run_command(&capture, &command, &env)),
        Command::Attach {
            pid,
            duration,
            capture,
        } => {
            let duration = cli::duration(duration)?;
            runtime.block_on(attach(&capture, pid, duration))
        }
    }
}

fn probe_config(capture: &CaptureArgs) -> Result<ProbeConfig> {
    Ok(ProbeConfig {
        ring_bytes: capture.ring_bytes()?,
        stack_depth: capture.max_depth,
        unwind_mode: match capture.unwind {
            cli::Unwind::Fp => profiler_common::unwind_mode::FRAME_POINTERS,
            cli::Unwind::Dwarf => profiler_common::unwind_mode::DWARF,
        },
        stack_bytes: capture.stack_bytes()?,
    })
}

/// `memprof run -- CMD`: launch stopped at exec, probe, resume, collect until it exits.
async fn run_command(
    capture: &CaptureArgs,
    command: &[OsString],
    child_env: &[(String, String)],
) -> Result<i32> {
    privileges::check()?;
    let config = probe_config(capture)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // While it exits: its maps (for symbolization) and its peak RSS.
    // The maps also go straight to the unwinder: records drained after the target died may
    // come from libraries mapped since the collector last read the maps.
    let exit_maps = target_modules::SharedMaps::default();
    let read_maps = {
        let exit_maps = exit_maps.clone();
        move |pid: nix::unistd::Pid| {
            let maps = ProcessMaps::read(pid.as_raw() as u32).ok();
            if let Ok(mut shared) = exit_maps.lock() {
                shared.clone_from(&maps);
            }
            Some((maps, launch::peak_rss(pid)))
        }
    };
    let child = launch::launch(command.to_vec(), child_env.to_vec(), read_maps, done_tx)?;
    let pid = child.pid.as_raw() as u32;
    let prepared = prepare(pid, config, || {
        // The child's environment: ours with --env applied (an LD_PRELOAD there changes
        // which library provides malloc).
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(key, _)| !child_env.iter().any(|(k, _)| k == key))
            .collect();
        env.extend(child_env.iter().cloned());
        LookupOrder::for_new_process(pid, &env)
    });
    let (mut probes, sites, warnings) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            // Never leave a stopped child behind.
            child.abandon();
            return Err(error);
        }
    };
    let ring = probes.take_ring()?;
    let mut collected = Collected::new(Mode::Run);
    collected.recorder.analyses.set_ops(capture.ops);
    collected.unwind_for(pid, capture.max_depth);
    collected.allocator_code(pid, &sites);
    collected.watch_exit_maps(exit_maps);
    collected.warnings = warnings;
    let start_ns = monotonic_ns();
    let command_line: Vec<String> = command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let session = recording::SessionStart {
        command: command_line.clone(),
        pid,
        mode: Mode::Run,
        start_ns,
    };
    if let Err(error) = recording::start(&mut collected, capture, session) {
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
    let collect_result = session::collect(ring, &mut collected, &probes, pid, stop).await;
    let end_ns = monotonic_ns();
    probes.detach();
    let mut ring = match collect_result {
        Ok((_, ring)) => ring,
        Err(error) => {
            let span = (start_ns, end_ns);
            salvage(
                &mut collected,
                &probes,
                Mode::Run,
                command_line,
                pid,
                span,
                &sites,
                capture,
            );
            return Err(error);
        }
    };
    let (exit, at_exit) = ended.context("lost track of the target")?;
    let (maps_at_exit, peak_rss) = at_exit.unwrap_or_default();
    collected.peak_rss_bytes = peak_rss;
    // The exit maps first: what is still queued may have been allocated from libraries
    // mapped since the last read, and the target is gone now.
    if let Some(maps) = maps_at_exit {
        collected.merge_maps(maps);
    }
    session::drain(&mut ring, &mut collected);
    let mut counters = probes.counters()?;
    counters.stack_errors += collected.unwind_errors();
    let exit = exit?;
    let meta = report::Meta {
        mode: Mode::Run,
        command: command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        pid,
        exit: Some(exit),
        start_ns,
        end_ns,
        sites: &sites,
        counters,
    };
    recording::finish_session(&mut collected, &meta, capture)?;
    Ok(exit.status())
}

/// `memprof attach PID`: probe a running process, collect, detach and leave it running.
async fn attach(
    capture: &CaptureArgs,
    pid: u32,
    duration: Option<std::time::Duration>,
) -> Result<i32> {
    check_attachable(pid)?;
    privileges::check()?;
    let config = probe_config(capture)?;
    let (mut probes, sites, warnings) =
        prepare(pid, config, || LookupOrder::for_running_process(pid))?;
    let ring = probes.take_ring()?;
    let mut collected = Collected::new(Mode::Attach);
    collected.recorder.analyses.set_ops(capture.ops);
    collected.unwind_for(pid, capture.max_depth);
    collected.allocator_code(pid, &sites);
    collected.warnings = warnings;
    let start_ns = monotonic_ns();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let command_line = cmdline(pid).unwrap_or_else(|| vec![exe.display().to_string()]);
    let session = recording::SessionStart {
        command: command_line.clone(),
        pid,
        mode: Mode::Attach,
        start_ns,
    };
    recording::start(&mut collected, capture, session)?;
    // Handlers first: whoever reads "attached" may send SIGINT at once.
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terminations = signal(SignalKind::terminate())?;
    eprintln!(
        "memprof: attached to {pid} ({}); Ctrl-C to stop",
        exe.display()
    );
    let stop = async move {
        let elapsed = async {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupts.recv() => Stop::Interrupted,
            _ = terminations.recv() => Stop::Interrupted,
            _ = elapsed => Stop::DurationElapsed,
            _ = session::process_exit(pid) => Stop::TargetExited,
        }
    };
    let collect_result = session::collect(ring, &mut collected, &probes, pid, stop).await;
    let end_ns = monotonic_ns();
    probes.detach();
    let (reason, mut ring) = match collect_result {
        Ok(collected_ring) => collected_ring,
        Err(error) => {
            let span = (start_ns, end_ns);
            salvage(
                &mut collected,
                &probes,
                Mode::Attach,
                command_line,
                pid,
                span,
                &sites,
                capture,
            );
            return Err(error);
        }
    };
    session::drain(&mut ring, &mut collected);
    let mut counters = probes.counters()?;
    counters.stack_errors += collected.unwind_errors();
    if reason == Stop::TargetExited {
        eprintln!("memprof: process {pid} exited");
    }
    let meta = report::Meta {
        mode: Mode::Attach,
        command: command_line,
        pid,
        exit: None,
        start_ns,
        end_ns,
        sites: &sites,
        counters,
    };
    recording::finish_session(&mut collected, &meta, capture)?;
    Ok(0)
}

/// The collection loop failed: still write what was collected (report and recording) before
/// the error is reported.
#[expect(clippy::too_many_arguments, reason = "the pieces of a session's Meta")]
fn salvage(
    collected: &mut Collected,
    probes: &Probes,
    mode: Mode,
    command: Vec<String>,
    pid: u32,
    (start_ns, end_ns): (u64, u64),
    sites: &[ProbeSite],
    capture: &CaptureArgs,
) {
    let mut counters = probes.counters().unwrap_or_default();
    counters.stack_errors += collected.unwind_errors();
    let meta = report::Meta {
        mode,
        command,
        pid,
        exit: None,
        start_ns,
        end_ns,
        sites,
        counters,
    };
    if let Err(error) = recording::finish_session(collected, &meta, capture) {
        eprintln!("memprof: error: {error:#}");
    }
}

/// Finds the probe sites, loads the programs and attaches them.
/// Also returns warnings about calls the probes cannot see.
fn prepare(
    pid: u32,
    config: ProbeConfig,
    order: impl FnOnce() -> Result<LookupOrder>,
) -> Result<(Probes, Vec<ProbeSite>, Vec<String>)> {
    let (sites, warnings) = order()?.probe_plan()?;
    let mut probes = Probes::load(pid, config)?;
    probes.attach(pid, &sites)?;
    Ok((probes, sites, warnings))
}

fn check_attachable(pid: u32) -> Result<()> {
    let proc_dir = format!("/proc/{pid}");
    if pid == 0 || !Path::new(&proc_dir).exists() {
        bail!("no process with pid {pid}");
    }
    if pid == std::process::id() {
        bail!("memprof cannot profile itself");
    }
    match std::fs::read_link(format!("{proc_dir}/exe")) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(anyhow!("not permitted to trace process {pid} (try sudo)"))
        }
        Err(_) => bail!("process {pid} has no user-space program to profile (a kernel thread?)"),
    }
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then_some(args)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}
