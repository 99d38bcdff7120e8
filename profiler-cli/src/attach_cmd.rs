//! `memprof attach PID`: a running process's session; the target keeps running after it.
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use profiler_core::{
    heap::Mode,
    report::{ExitStatus, ProcessEnd},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    backpressure::{self, Backpressure},
    clock::monotonic_ns,
    collect::{self, Stop},
    meta::SessionStart,
    options::SessionOptions,
    privileges,
    process_events::ProcessEvents,
    seize,
    session::{Ending, Session, probe_capture},
    targets::LookupOrder,
};

/// What `memprof attach` is asked to do, besides the session's options.
pub struct AttachOptions {
    pub session: SessionOptions,
    pub pid: u32,
    /// How long the window lasts (until Ctrl-C when None).
    pub duration: Option<std::time::Duration>,
    /// Trace the threads so that none of their events is lost (seize.rs).
    pub hold: bool,
    /// Follow the processes it starts during the window.
    pub children: bool,
    /// Classify the window's blocks by reachability at its end.
    pub leak_check: bool,
}

/// `memprof attach PID`: probe a running process, collect, detach and leave it running.
pub async fn attach(attach: AttachOptions) -> Result<i32> {
    let AttachOptions {
        session: options,
        pid,
        duration,
        hold,
        children,
        leak_check,
    } = attach;
    if options.live {
        crate::live::check_terminal()?;
    }
    check_attachable(pid)?;
    privileges::check()?;
    // Refused before the target runs, not after: an unsafe output directory loses nothing.
    profiler_core::output_dir::OutputDir::open(&options.output)?;
    let backpressure = Backpressure::new();
    let _release_holds = backpressure::CloseOnDrop(backpressure.clone());
    // Seized before the probes exist, so that no hold request reaches an untraced thread;
    // dropped (every thread detached) after they are gone.
    let process_events = children.then(ProcessEvents::new);
    let seized = match hold || children {
        true => Some(seize::seize(
            pid,
            backpressure.clone(),
            process_events.clone(),
        )?),
        false => None,
    };
    let order = || LookupOrder::for_running_process(pid);
    let mut capture = match probe_capture(Mode::Attach, pid, &options, hold, order, &backpressure) {
        Ok(capture) => capture,
        Err(error) => {
            // Closed first: a child forked meanwhile must not wait for a collector.
            if let Some(events) = &process_events {
                events.close();
            }
            return Err(error);
        }
    };
    if !hold && !children {
        capture.source.yield_to_target();
    }
    capture.collected.capture = Some(profiler_core::report::Capture {
        path: "uprobes".into(),
        reason: "attach: eBPF uprobes, nothing is injected into a running process".into(),
    });
    // The file it runs, whatever its argv[0] says (a symlink's name, `exec -a`, a title).
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let start = SessionStart {
        command: cmdline(pid).unwrap_or_else(|| vec![exe.display().to_string()]),
        executable: Some(exe.display().to_string()).filter(|exe| !exe.is_empty()),
        pid,
        mode: Mode::Attach,
        start_ns: monotonic_ns(),
        lineage: None,
    };
    let throwing_new = crate::operators::throwing_new_note(&capture.sites);
    let mut session = Session::start(capture, start, options, backpressure, process_events)?;
    // Handlers first: whoever reads "attached" may send SIGINT at once.
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terminations = signal(SignalKind::terminate())?;
    stderr_line!(
        "memprof: attached to {pid} ({}); Ctrl-C to stop",
        exe.display()
    );
    if let Some(note) = throwing_new {
        stderr_line!("{note}");
    }
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
            _ = collect::process_exit(pid) => Stop::TargetExited,
        }
    };
    let collected = session.collect(stop).await;
    // The leak check stops the process before the window closes: every block it then holds
    // is one the heap knows the fate of.
    let paused = match (leak_check, &collected) {
        (true, Ok(Stop::Interrupted | Stop::DurationElapsed)) => match crate::pause::pause(pid) {
            Ok(paused) => Some(paused),
            Err(error) => {
                session
                    .collected
                    .warnings
                    .push(format!("leak check not done: {error:#}"));
                None
            }
        },
        (true, Ok(Stop::TargetExited)) => {
            session
                .collected
                .warnings
                .push("leak check not done: the process exited during the window".into());
            None
        }
        _ => None,
    };
    if let Some(paused) = &paused {
        session.drain();
        session.collected.check_leaks_paused(&paused.states);
    }
    session.detach();
    if let Some(paused) = paused {
        let since = paused.since;
        drop(paused); // lets every thread go
        session.collected.leak_check_resumed(since.elapsed());
    }
    let reason = match collected {
        Ok(reason) => reason,
        Err(error) => return Err(session.salvage(error)),
    };
    if reason == Stop::TargetExited {
        stderr_line!("memprof: process {pid} exited");
    }
    // It exited, but only its parent learns how.
    let exit = (reason == Stop::TargetExited).then_some(ExitStatus {
        code: None,
        signal: None,
    });
    let ending = Ending {
        exit,
        process_end: match exit {
            Some(_) => ProcessEnd::Exit,
            None => ProcessEnd::Running,
        },
        rss_at_exit: None,
        printed_ops: None,
    };
    // Every thread detached once none is held.
    session.finish(ending, move || drop(seized))?;
    Ok(0)
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
        Err(_) => Err(no_program(pid)),
    }
}

/// Why process `pid` has no executable to read: its /proc/PID/stat says which of a kernel
/// thread, a zombie, or a process whose main thread exited while others run. In that last case
/// the leader is a zombie: /proc/PID's exe, maps, root and environ, which attach reads, went
/// with its memory (only /proc/PID/task/TID of the others has them), and the uprobe_multi pid
/// filter has compared the leader's memory (`link->task->mm`), which it no longer has.
fn no_program(pid: u32) -> anyhow::Error {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let others = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| task.ok())
                .any(|task| task.file_name() != pid.to_string().as_str())
        })
        .unwrap_or(false);
    match LeaderState::parse(&stat) {
        Some(LeaderState::KernelThread) => {
            anyhow!("process {pid} is a kernel thread: there is no user-space program to profile")
        }
        Some(LeaderState::Exited) if others => anyhow!(
            "the main thread of process {pid} has exited (its other threads still run): memprof \
             can only attach to a process whose main thread is alive"
        ),
        Some(LeaderState::Exited) => anyhow!("process {pid} has exited (zombie)"),
        _ => anyhow!("process {pid} has no user-space program to profile"),
    }
}

/// What /proc/PID/stat says of a thread group leader whose executable cannot be read.
#[derive(Debug, PartialEq, Eq)]
enum LeaderState {
    KernelThread,
    /// Exited (state Z or X); the process may live on in other threads.
    Exited,
    Other,
}

impl LeaderState {
    fn parse(stat: &str) -> Option<LeaderState> {
        /// `PF_KTHREAD` in the flags field (include/linux/sched.h).
        const PF_KTHREAD: u64 = 0x0020_0000;
        // `pid (comm) state ppid pgrp session tty_nr tpgid flags ...`; comm may hold anything.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?;
        let flags: u64 = fields.nth(5)?.parse().ok()?;
        Some(if flags & PF_KTHREAD != 0 {
            LeaderState::KernelThread
        } else if state == "Z" || state == "X" {
            LeaderState::Exited
        } else {
            LeaderState::Other
        })
    }
}

/// The target's argv as /proc/PID/cmdline has it now.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    parse_cmdline(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)
}

/// NUL-terminated arguments, empty ones included; a process that rewrote its argv in place
/// (a process title) leaves NULs after it, which are not arguments.
fn parse_cmdline(raw: &[u8]) -> Option<Vec<String>> {
    let raw = &raw[..raw.iter().rposition(|b| *b != 0)? + 1];
    Some(
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keeps_empty_arguments_and_drops_padding() {
        let args = |raw: &[u8]| parse_cmdline(raw).unwrap();
        assert_eq!(args(b"fakename\0\0last\0"), ["fakename", "", "last"]);
        assert_eq!(
            args(b"redis-server *:6379\0\0\0\0"),
            ["redis-server *:6379"]
        );
        assert_eq!(args(b"a\0b"), ["a", "b"]);
        assert_eq!(parse_cmdline(b""), None);
        assert_eq!(parse_cmdline(b"\0\0"), None);
    }

    #[test]
    fn leader_state_from_proc_stat() {
        // kthreadd, a zombie leader (from a live system), a running process whose name has
        // a ") " in it.
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 2";
        let zombie = "19699 (mainexit) Z 19698 19689 30967 0 -1 4227084 129 0 1 0 0 0 0 0 20";
        let running = "42 (a) Z (b) S 1 42 42 34816 42 4194560 100 0 0 0 1 0 0 0 20 0";
        assert_eq!(
            LeaderState::parse(kthreadd),
            Some(LeaderState::KernelThread)
        );
        assert_eq!(LeaderState::parse(zombie), Some(LeaderState::Exited));
        assert_eq!(LeaderState::parse(running), Some(LeaderState::Other));
        assert_eq!(LeaderState::parse(""), None);
    }
}
