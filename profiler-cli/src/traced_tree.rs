//! The tracer's view of a followed process tree (launch.rs): which processes are followed,
//! new ones held until the collector knows them, what each left at its exit stop, and letting
//! go of those still running when the launched process exits.
//!
//! With `PTRACE_O_TRACEFORK | TRACEVFORK` the kernel attaches every new process to the tracer
//! and starts it with a SIGSTOP. Its parent's fork event and that first stop arrive in either
//! order; the child runs only once both are seen and the collector has applied the fork, so
//! none of its records comes before its image exists.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use nix::{
    sys::{
        ptrace,
        signal::Signal,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use profiler_core::maps::ProcessMaps;

use crate::{
    process_events::Exit,
    process_events::{ProcessEvent, ProcessEvents},
};

pub struct TracedTree {
    events: Arc<ProcessEvents>,
    /// Followed processes (thread-group leaders), the launched one excepted.
    processes: HashSet<Pid>,
    /// The launched process.
    root: Pid,
    /// New processes stopped before their parent's fork event: held until it comes.
    early: HashSet<Pid>,
    /// New processes whose parent's fork event came first: resumed at their first stop.
    announced: HashSet<Pid>,
    /// Maps and peak RSS read at a process's exit stop, while still mapped.
    at_exit: HashMap<Pid, (Option<ProcessMaps>, Option<u64>)>,
}

/// What to do with a thread at its first stop.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstStop {
    Resume,
    Hold,
}

impl TracedTree {
    pub fn new(root: Pid, events: Arc<ProcessEvents>) -> TracedTree {
        TracedTree {
            events,
            processes: HashSet::new(),
            root,
            early: HashSet::new(),
            announced: HashSet::new(),
            at_exit: HashMap::new(),
        }
    }

    /// The first stop of a thread or process not seen before.
    pub fn first_stop(&mut self, tid: Pid) -> FirstStop {
        if self.announced.remove(&tid) {
            return FirstStop::Resume;
        }
        let tgid = tgid_of(tid);
        let new_process =
            tid != self.root && !self.processes.contains(&tid) && tgid.is_some_and(|t| t == tid);
        if new_process {
            self.early.insert(tid);
            return FirstStop::Hold;
        }
        // A thread: named to the collector before it runs (the probes' records carry its id).
        if let Some(tgid) = tgid
            && tgid != tid
        {
            self.events
                .set_owner(tid.as_raw() as u32, tgid.as_raw() as u32);
        }
        FirstStop::Resume
    }

    /// `tid` stopped at a fork, vfork or clone event that made `child`: a new process is
    /// announced to the collector (which gives it its parent's heap) before it runs. Returns
    /// the child to resume now, if its first stop came first.
    pub fn forked(&mut self, tid: Pid, child: Pid) -> Option<Pid> {
        if tgid_of(child).is_some_and(|tgid| tgid != child) {
            // A thread: its own first stop resumes it.
            return None;
        }
        let parent = tgid_of(tid).unwrap_or(tid);
        self.processes.insert(child);
        self.events.post_and_wait(ProcessEvent::Forked {
            parent: parent.as_raw() as u32,
            child: child.as_raw() as u32,
        });
        if self.early.remove(&child) {
            Some(child)
        } else {
            self.announced.insert(child);
            None
        }
    }

    /// A followed process (not the launched one) stopped at its exec: its old image ends in
    /// the collector before the new program runs.
    pub fn exec_stop(&mut self, pid: Pid) {
        if self.processes.contains(&pid) {
            self.events.post_and_wait(ProcessEvent::Execd {
                pid: pid.as_raw() as u32,
            });
        }
    }

    /// A thread stopped at its exit: for a followed process's leader, its maps and peak RSS
    /// are read now (gone once it is reaped). The exit-stop hook of every process but the
    /// launched one, whose hook is launch.rs's `at_exit`.
    pub fn exit_stop(&mut self, tid: Pid) {
        if self.processes.contains(&tid) {
            let pid = tid.as_raw() as u32;
            let maps = ProcessMaps::read(pid).ok();
            self.at_exit.insert(tid, (maps, crate::rss::peak_rss(tid)));
        }
    }

    /// A thread was reaped: if it was a followed process's leader, the process is gone (all
    /// its threads are), and all its records are queued.
    pub fn gone(&mut self, tid: Pid, exit: Exit) {
        if !self.processes.remove(&tid) {
            return;
        }
        let (maps, peak_rss) = self.at_exit.remove(&tid).unwrap_or_default();
        self.events.post(ProcessEvent::Exited {
            pid: tid.as_raw() as u32,
            exit,
            maps,
            peak_rss,
        });
    }

    /// The new processes held at their first stop (`attach`: let go by the caller, which
    /// detaches every thread it seized).
    pub fn take_held(mut self) -> Vec<Pid> {
        self.early.drain().collect()
    }

    /// The launched process exited: processes still running are let go. Those stopped (or
    /// about to stop) at their first SIGSTOP are detached with it suppressed, or they would
    /// stay stopped; the rest are detached by the kernel when the tracing thread ends.
    pub fn release(mut self) {
        // Stops already queued: children forked at the last moment among them.
        for _ in 0..10_000 {
            let status = match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => status,
            };
            match status {
                WaitStatus::PtraceEvent(tid, _, event)
                    if [
                        libc::PTRACE_EVENT_FORK,
                        libc::PTRACE_EVENT_VFORK,
                        libc::PTRACE_EVENT_CLONE,
                    ]
                    .contains(&event) =>
                {
                    if let Ok(child) = ptrace::getevent(tid) {
                        let child = Pid::from_raw(child as i32);
                        if !self.early.remove(&child) {
                            self.announced.insert(child);
                        } else {
                            let _ = ptrace::detach(child, None);
                        }
                    }
                    let _ = ptrace::detach(tid, None);
                }
                WaitStatus::PtraceEvent(tid, _, _) => {
                    let _ = ptrace::detach(tid, None);
                }
                WaitStatus::Stopped(tid, Signal::SIGSTOP)
                    if self.announced.remove(&tid) || tgid_of(tid) == Some(tid) =>
                {
                    let _ = ptrace::detach(tid, None);
                }
                WaitStatus::Stopped(tid, signal) => {
                    let signal =
                        (!crate::backpressure::is_hold_request(tid, signal)).then_some(signal);
                    let _ = ptrace::detach(tid, signal);
                }
                _ => {}
            }
        }
        for pid in self.early.drain() {
            let _ = ptrace::detach(pid, None);
        }
        // Announced children stop at once (the kernel queued their SIGSTOP) unless killed.
        for pid in self.announced.drain() {
            loop {
                match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                    Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {
                        let _ = ptrace::detach(pid, None);
                        break;
                    }
                    Ok(WaitStatus::Stopped(_, signal)) => {
                        let _ = ptrace::detach(pid, signal);
                        break;
                    }
                    Ok(WaitStatus::PtraceEvent(..)) => {
                        let _ = ptrace::cont(pid, None);
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
    }
}

/// The thread group of `tid` (`Tgid` of /proc/TID/status); None once it is gone.
fn tgid_of(tid: Pid) -> Option<Pid> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Tgid:"))?;
    line.trim().parse().ok().map(Pid::from_raw)
}
