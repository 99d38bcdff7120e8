//! Stopping a running process for a moment (`attach --leak-check`) and letting it go as it
//! was: every thread is seized (`PTRACE_SEIZE`) and interrupted, its registers read, and at
//! the end detached with any signal it was about to receive.
use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::leak_scan::ThreadState;

/// A stopped process; dropping it lets every thread go.
pub struct Paused {
    /// When the first thread was stopped.
    pub since: Instant,
    /// Each stopped thread, and the signal to hand back when it is let go.
    threads: HashMap<Pid, Option<Signal>>,
    /// Their registers and stack pointers, read while stopped.
    pub states: Vec<ThreadState>,
}

/// Stops every thread of `pid`. Fails, leaving the process as it was, if it is traced
/// already (a debugger, strace) or gone.
pub fn pause(pid: u32) -> Result<Paused> {
    let since = Instant::now();
    let mut paused = Paused {
        since,
        threads: HashMap::new(),
        states: Vec::new(),
    };
    let process = Pid::from_raw(pid as i32);
    // Until no thread appears that is not stopped (a running thread may start one).
    loop {
        let fresh: Vec<Pid> = crate::seize::list_threads(process)?
            .into_iter()
            .filter(|tid| !paused.threads.contains_key(tid))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for tid in fresh {
            match ptrace::seize(tid, ptrace::Options::empty()) {
                Ok(()) => {}
                Err(Errno::ESRCH) => continue,
                Err(Errno::EPERM) => {
                    bail!("cannot stop process {pid} (is a debugger or strace attached?)")
                }
                Err(error) => bail!("cannot stop thread {tid} of process {pid}: {error}"),
            }
            paused.threads.insert(tid, None);
            if ptrace::interrupt(tid).is_err() {
                continue;
            }
            if let Some(signal) = wait_stopped(tid)? {
                paused.threads.insert(tid, signal);
            } else {
                paused.threads.remove(&tid);
            }
        }
    }
    if paused.threads.is_empty() {
        bail!("process {pid} exited");
    }
    for &tid in paused.threads.keys() {
        if let Ok(state) = crate::leak_scan::thread_state(tid) {
            paused.states.push(state);
        }
    }
    Ok(paused)
}

/// Waits for a seized thread's stop. Some(signal to hand back) once it is stopped; None if
/// it exited.
fn wait_stopped(tid: Pid) -> Result<Option<Option<Signal>>> {
    loop {
        match waitpid(tid, Some(WaitPidFlag::__WALL)) {
            // The interrupt, or a group stop.
            Ok(WaitStatus::PtraceEvent(_, _, _)) => return Ok(Some(None)),
            // A signal was on its way: it is handed back at the end.
            Ok(WaitStatus::Stopped(_, signal)) => return Ok(Some(Some(signal))),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD | Errno::ESRCH) => return Ok(None),
            Err(error) => return Err(anyhow!("cannot wait for thread {tid}: {error}")),
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for (&tid, &signal) in &self.threads {
            let _ = ptrace::detach(tid, signal);
        }
    }
}
