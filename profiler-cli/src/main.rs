//! memprof: an out-of-process heap profiler for Linux built on eBPF uprobes.
//!
//! The pipeline: `targets` finds which object provides each allocation function to the target
//! and `prologue` places each probe; `probes` loads the eBPF programs and attaches them;
//! `launch` starts a program stopped at exec (run mode); `session` drains the ring buffer into
//! a `recorder` (profiler-core's heap state) until the target exits, the user interrupts or the
//! duration ends; `report` turns the result into the terminal summary and the files.
mod cli;
mod elf;
mod launch;
mod multi_link;
mod privileges;
mod probes;
mod prologue;
mod recorder;
mod report;
mod session;
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
        Command::Run { capture, command } => runtime.block_on(run_command(&capture, &command)),
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
    })
}

/// `memprof run -- CMD`: launch stopped at exec, probe, resume, collect until it exits.
async fn run_command(capture: &CaptureArgs, command: &[OsString]) -> Result<i32> {
    privileges::check()?;
    let config = probe_config(capture)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let read_maps = |pid: nix::unistd::Pid| ProcessMaps::read(pid.as_raw() as u32).ok();
    let child = launch::launch(command.to_vec(), read_maps, done_tx)?;
    let pid = child.pid.as_raw() as u32;
    let prepared = prepare(pid, config, || {
        let env: Vec<(String, String)> = std::env::vars().collect();
        LookupOrder::for_new_process(pid, &env)
    });
    let (mut probes, sites) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            // Never leave a stopped child behind.
            child.abandon();
            return Err(error);
        }
    };
    let ring = probes.take_ring()?;
    let mut collected = Collected::new(Mode::Run);
    let start_ns = monotonic_ns();

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
    let (_, mut ring) = session::collect(ring, &mut collected, &probes, pid, stop).await?;
    let end_ns = monotonic_ns();
    probes.detach();
    session::drain(&mut ring, &mut collected);
    let counters = probes.counters()?;
    let (exit, maps_at_exit) = ended.context("lost track of the target")?;
    let exit = exit?;
    if let Some(maps) = maps_at_exit {
        collected.maps.merge(maps);
    }
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
    report::finish(&collected, &meta, capture)?;
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
    let (mut probes, sites) = prepare(pid, config, || LookupOrder::for_running_process(pid))?;
    let ring = probes.take_ring()?;
    let mut collected = Collected::new(Mode::Attach);
    let start_ns = monotonic_ns();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    eprintln!(
        "memprof: attached to {pid} ({}); Ctrl-C to stop",
        exe.display()
    );

    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terminations = signal(SignalKind::terminate())?;
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
    let (reason, mut ring) = session::collect(ring, &mut collected, &probes, pid, stop).await?;
    let end_ns = monotonic_ns();
    probes.detach();
    session::drain(&mut ring, &mut collected);
    let counters = probes.counters()?;
    if reason == Stop::TargetExited {
        eprintln!("memprof: process {pid} exited");
    }
    let meta = report::Meta {
        mode: Mode::Attach,
        command: cmdline(pid).unwrap_or_else(|| vec![exe.display().to_string()]),
        pid,
        exit: None,
        start_ns,
        end_ns,
        sites: &sites,
        counters,
    };
    report::finish(&collected, &meta, capture)?;
    Ok(0)
}

/// Finds the probe sites, loads the programs and attaches them.
fn prepare(
    pid: u32,
    config: ProbeConfig,
    order: impl FnOnce() -> Result<LookupOrder>,
) -> Result<(Probes, Vec<ProbeSite>)> {
    let sites = order()?.probe_sites()?;
    let mut probes = Probes::load(pid, config)?;
    probes.attach(pid, &sites)?;
    Ok((probes, sites))
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
