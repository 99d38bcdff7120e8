//! `attach --hold`: backpressure for a process memprof did not start. A tracer thread seizes
//! every thread of the target (`PTRACE_SEIZE`, which does not stop them, with
//! `PTRACE_O_TRACECLONE` for threads started later), holds a thread the probes signal until the
//! collector has drained the ring (backpressure.rs), passes every other signal on, keeps
//! job-control stops as they are (`PTRACE_LISTEN`), and at the end interrupts and detaches
//! every thread, handing back any signal it was about to receive. If memprof dies instead, the
//! kernel detaches the threads itself.
//!
//! `attach --children` seizes the same way with `PTRACE_O_TRACEFORK | TRACEVFORK | TRACEEXEC |
//! TRACEEXIT`: every process the target starts during the window is seized with it (its first
//! stop is a `PTRACE_EVENT_STOP`) and followed as in `run` (traced_tree.rs), and released
//! with the rest at the end.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Result, anyhow};
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::backpressure::{Backpressure, is_hold_request};
use crate::process_events::Exit;
use crate::process_events::ProcessEvents;
use crate::traced_tree::{FirstStop, TracedTree};

/// Longest the tracer sleeps between looks for ptrace stops when none is pending.
const POLL: Duration = Duration::from_millis(1);
/// After a stop, the tracer keeps looking (yielding, not sleeping) this long, then sleeps from
/// [`MIN_POLL`] doubling up to [`POLL`]: a thread stopped for a signal waits for the tracer's
/// next look, so a target taking thousands of signals a second must not wait a whole `POLL`
/// each time, while an idle tracer costs almost nothing.
const BUSY_AFTER_STOP: Duration = Duration::from_micros(500);
const MIN_POLL: Duration = Duration::from_micros(20);

/// The tracer thread; dropping it detaches every thread (held ones are let go first).
pub struct Seized {
    stop: Arc<AtomicBool>,
    tracer: Option<JoinHandle<()>>,
}

/// Seizes every thread of `pid`; an error (another tracer, no permission) leaves it untouched.
/// With `follow`, the processes it starts are followed too.
pub fn seize(
    pid: u32,
    backpressure: Arc<Backpressure>,
    follow: Option<Arc<ProcessEvents>>,
) -> Result<Seized> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut options = ptrace::Options::PTRACE_O_TRACECLONE;
    if follow.is_some() {
        options |= ptrace::Options::PTRACE_O_TRACEFORK
            | ptrace::Options::PTRACE_O_TRACEVFORK
            | ptrace::Options::PTRACE_O_TRACEEXEC
            | ptrace::Options::PTRACE_O_TRACEEXIT;
    }
    let tracer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut threads = match seize_all(Pid::from_raw(pid as i32), options) {
                Ok(threads) => {
                    let _ = ready_tx.send(Ok(()));
                    threads
                }
                Err((error, seized)) => {
                    release(seized);
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let root = Pid::from_raw(pid as i32);
            let mut tree = follow.map(|events| TracedTree::new(root, events));
            trace(root, &mut threads, &backpressure, tree.as_mut(), &stop);
            if let Some(tree) = tree {
                // Children held at their first stop report nothing more: let go now.
                for held in tree.take_held() {
                    threads.remove(&held);
                    let _ = ptrace::detach(held, None);
                }
            }
            release(threads);
        })
    };
    ready_rx
        .recv()
        .map_err(|_| anyhow!("the tracer thread died"))??;
    Ok(Seized {
        stop,
        tracer: Some(tracer),
    })
}

impl Drop for Seized {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.join();
        }
    }
}

/// Seizes the threads listed in /proc/PID/task until a pass finds no new one (a thread not
/// yet seized may start another; seized ones bring theirs along). On error, also returns the
/// threads already seized, to be released.
fn seize_all(
    pid: Pid,
    options: ptrace::Options,
) -> std::result::Result<HashSet<Pid>, (anyhow::Error, HashSet<Pid>)> {
    let mut seized = HashSet::new();
    loop {
        let tasks = match list_threads(pid) {
            Ok(tasks) => tasks,
            Err(error) => return Err((error, seized)),
        };
        let fresh: Vec<Pid> = tasks.into_iter().filter(|t| !seized.contains(t)).collect();
        if fresh.is_empty() {
            return Ok(seized);
        }
        for tid in fresh {
            match ptrace::seize(tid, options) {
                Ok(()) => {
                    seized.insert(tid);
                }
                // The thread exited in between.
                Err(Errno::ESRCH) => {}
                Err(Errno::EPERM) => {
                    let error = anyhow!(
                        "--hold: cannot trace process {pid} (is a debugger or strace attached?)"
                    );
                    return Err((error, seized));
                }
                Err(error) => {
                    return Err((
                        anyhow!("--hold: cannot trace thread {tid}: {error}"),
                        seized,
                    ));
                }
            }
        }
    }
}

pub fn list_threads(pid: Pid) -> Result<Vec<Pid>> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|error| anyhow!("cannot read {dir}: {error}"))?;
    Ok(entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .map(Pid::from_raw)
        .collect())
}

/// Handles the threads' ptrace stops until `stop` is set or the process is gone. With `tree`,
/// the processes it starts are followed: their forks, execs and exits go to the collector.
fn trace(
    pid: Pid,
    threads: &mut HashSet<Pid>,
    backpressure: &Backpressure,
    mut tree: Option<&mut TracedTree>,
    stop: &AtomicBool,
) {
    // Threads seized at the start never report a first stop; new ones do (PTRACE_EVENT_STOP).
    let mut started = threads.clone();
    // Sleeps as short as asked: the default timer slack (50 us) would stretch each one.
    // SAFETY: PR_SET_TIMERSLACK takes a number and affects this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64) };
    let mut last_stop = std::time::Instant::now();
    let mut pause = MIN_POLL;
    while !stop.load(Ordering::Acquire) && !threads.is_empty() {
        let status = match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if last_stop.elapsed() < BUSY_AFTER_STOP {
                    thread::yield_now();
                } else {
                    thread::sleep(pause);
                    pause = (pause * 2).min(POLL);
                }
                continue;
            }
            Ok(status) => {
                last_stop = std::time::Instant::now();
                pause = MIN_POLL;
                status
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        match status {
            WaitStatus::Exited(tid, _) | WaitStatus::Signaled(tid, _, _) => {
                threads.remove(&tid);
                started.remove(&tid);
                if let Some(tree) = tree.as_deref_mut() {
                    tree.gone(tid, exit_of(status));
                } else if tid == pid {
                    threads.clear();
                }
            }
            WaitStatus::Stopped(tid, signal) => backpressure.resume(tid, signal),
            WaitStatus::PtraceEvent(tid, signal, event) => {
                threads.insert(tid);
                let mut resume_child = None;
                let new_task = [
                    libc::PTRACE_EVENT_CLONE,
                    libc::PTRACE_EVENT_FORK,
                    libc::PTRACE_EVENT_VFORK,
                ];
                if new_task.contains(&event)
                    && let Ok(new) = ptrace::getevent(tid)
                {
                    let new = Pid::from_raw(new as i32);
                    threads.insert(new);
                    if let Some(tree) = tree.as_deref_mut() {
                        resume_child = tree.forked(tid, new);
                    }
                }
                if let Some(tree) = tree.as_deref_mut() {
                    match event {
                        // A new thread's or process's first stop: a new process waits for
                        // its parent's fork event to be applied.
                        libc::PTRACE_EVENT_STOP
                            if started.insert(tid) && tree.first_stop(tid) == FirstStop::Hold =>
                        {
                            continue;
                        }
                        libc::PTRACE_EVENT_EXEC if tid == pid => backpressure.exec_stop(),
                        libc::PTRACE_EVENT_EXEC => tree.exec_stop(tid),
                        libc::PTRACE_EVENT_EXIT if tid != pid => tree.exit_stop(tid),
                        _ => {}
                    }
                }
                event_stop(tid, signal, event);
                if let Some(child) = resume_child {
                    let _ = ptrace::cont(child, None);
                }
            }
            _ => {}
        }
    }
}

/// How a reaped thread ended.
fn exit_of(status: WaitStatus) -> Exit {
    match status {
        WaitStatus::Signaled(_, signal, _) => Exit::Signal(signal as i32),
        WaitStatus::Exited(_, code) => Exit::Code(code),
        _ => Exit::Code(0),
    }
}

/// A group stop (SIGSTOP and co.) stays a stop until SIGCONT (`PTRACE_LISTEN`); other event
/// stops (a new thread, a clone) just go on.
fn event_stop(tid: Pid, signal: Signal, event: i32) {
    let group_stop = event == libc::PTRACE_EVENT_STOP
        && matches!(
            signal,
            Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
        );
    if group_stop {
        // SAFETY: PTRACE_LISTEN takes no memory arguments.
        unsafe { libc::ptrace(libc::PTRACE_LISTEN, tid.as_raw(), 0, 0) };
    } else {
        let _ = ptrace::cont(tid, None);
    }
}

/// Interrupts every thread, waits for each to stop, and detaches it with the signal it was
/// about to receive (none for a probe's hold request or an event stop).
fn release(mut threads: HashSet<Pid>) {
    for &tid in &threads {
        if ptrace::interrupt(tid) == Err(Errno::ESRCH) {
            // Gone, or already stopped in a way that only waitpid reports: collected below.
        }
    }
    let mut waited = 0;
    while !threads.is_empty() && waited < 2000 {
        let status = match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                thread::sleep(POLL);
                waited += 1;
                continue;
            }
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        };
        let (tid, signal) = match status {
            WaitStatus::Exited(tid, _) | WaitStatus::Signaled(tid, _, _) => {
                threads.remove(&tid);
                continue;
            }
            WaitStatus::Stopped(tid, signal) if !is_hold_request(tid, signal) => {
                (tid, Some(signal))
            }
            WaitStatus::Stopped(tid, _) => (tid, None),
            WaitStatus::PtraceEvent(tid, _, _) => (tid, None),
            _ => continue,
        };
        let _ = ptrace::detach(tid, signal);
        threads.remove(&tid);
    }
    // Threads that never reported a stop (they died unreaped): detaching is all that is left.
    for tid in threads {
        let _ = ptrace::detach(tid, None);
    }
}
