//! What the tracer tells the collector about the processes of a followed tree (`run`): a fork,
//! an exec, an exit, in the order the tracer saw them.
//!
//! The collector applies an event after reading the ring to its end, so every record a
//! process wrote before the event is applied first. A fork and an exec are told while the
//! process is held at its ptrace stop and the tracer waits until the collector has applied
//! them: the child has not run yet (it starts with its parent's heap), the new image has not
//! run yet (the old one's heap ends first). An exit is told when the process is reaped: its
//! records are all queued by then, and nothing waits.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use profiler_core::maps::ProcessMaps;

/// One change in the tree.
#[derive(Debug)]
pub enum ProcessEvent {
    /// `parent` forked `child` (held at its first stop).
    Forked { parent: u32, child: u32 },
    /// `pid` exec'd: held before the new program's first instruction.
    Execd { pid: u32 },
    /// `pid` is gone; `maps` were read at its exit stop, while still mapped.
    Exited {
        pid: u32,
        exit: Exit,
        maps: Option<ProcessMaps>,
        peak_rss: Option<u64>,
    },
}

/// Longest the tracer holds a process waiting for the collector.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// The queue between the tracer and the collector.
#[derive(Default)]
pub struct ProcessEvents {
    state: Mutex<Queue>,
    /// The process of each thread that is not its process's main thread, told by the tracer
    /// before the thread runs: the probes' records name a thread only (the in-process path's
    /// frames name the process).
    owners: Mutex<HashMap<u32, u32>>,
    applied: Condvar,
    /// Wakes the collector: the next drain timer tick is up to 10 ms away.
    wanted: tokio::sync::Notify,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<(u64, ProcessEvent)>,
    /// Sequence number of the last event posted, and of the last one applied.
    posted: u64,
    applied: u64,
    /// Collection is over: nothing will apply events any more.
    closed: bool,
}

impl ProcessEvents {
    pub fn new() -> Arc<ProcessEvents> {
        Arc::new(ProcessEvents::default())
    }

    /// Queues `event` for the collector.
    pub fn post(&self, event: ProcessEvent) {
        self.post_seq(event);
    }

    /// Queues `event` and returns once the collector applied it (or after [`MAX_WAIT`], or at
    /// once when collection is over).
    pub fn post_and_wait(&self, event: ProcessEvent) {
        let Some(seq) = self.post_seq(event) else {
            return;
        };
        let start = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        while !state.closed && state.applied < seq {
            let left = MAX_WAIT.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            state = match self.applied.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(_) => return,
            };
        }
    }

    fn post_seq(&self, event: ProcessEvent) -> Option<u64> {
        let seq = {
            let mut state = self.state.lock().ok()?;
            if state.closed {
                return None;
            }
            state.posted += 1;
            let seq = state.posted;
            state.events.push_back((seq, event));
            seq
        };
        self.wanted.notify_one();
        Some(seq)
    }

    /// The events posted so far, to apply after the next drain, and the sequence number to
    /// pass to [`ProcessEvents::applied`] then.
    pub fn take(&self) -> (Vec<ProcessEvent>, u64) {
        let Ok(mut state) = self.state.lock() else {
            return (Vec::new(), 0);
        };
        let last = state.events.back().map_or(state.applied, |(seq, _)| *seq);
        let events = state.events.drain(..).map(|(_, event)| event).collect();
        (events, last)
    }

    /// The collector applied every event up to `seq`.
    pub fn applied(&self, seq: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.applied = state.applied.max(seq);
        }
        self.applied.notify_all();
    }

    /// Collection is over: no process waits any more.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
        self.applied.notify_all();
    }

    /// Thread `tid` belongs to process `pid`.
    pub fn set_owner(&self, tid: u32, pid: u32) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.insert(tid, pid);
        }
    }

    /// The process of thread `tid` (a main thread's id is its process's).
    pub fn owner(&self, tid: u32) -> u32 {
        self.owners
            .lock()
            .ok()
            .and_then(|owners| owners.get(&tid).copied())
            .unwrap_or(tid)
    }

    /// Process `pid` is gone and its records applied: its threads are forgotten.
    pub fn forget_threads_of(&self, pid: u32) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.retain(|_, owner| *owner != pid);
        }
    }

    /// Resolves when an event was posted.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }
}

/// How a target ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// The report's form of it.
impl From<Exit> for profiler_core::report::ExitStatus {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Code(code) => Self {
                code: Some(code),
                signal: None,
            },
            Exit::Signal(signal) => Self {
                code: None,
                signal: Some(signal),
            },
        }
    }
}

impl Exit {
    /// The status memprof itself exits with: the child's, or 128+signal as a shell reports it.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_waits_until_the_collector_applied_it() {
        let events = ProcessEvents::new();
        let tracer = {
            let events = events.clone();
            std::thread::spawn(move || {
                events.post_and_wait(ProcessEvent::Forked {
                    parent: 1,
                    child: 2,
                })
            })
        };
        let (taken, seq) = loop {
            let (taken, seq) = events.take();
            if !taken.is_empty() {
                break (taken, seq);
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(matches!(
            taken[..],
            [ProcessEvent::Forked {
                parent: 1,
                child: 2
            }]
        ));
        assert!(!tracer.is_finished());
        events.applied(seq);
        tracer.join().unwrap();
    }

    #[test]
    fn nothing_waits_once_collection_is_over() {
        let events = ProcessEvents::new();
        events.close();
        let start = Instant::now();
        events.post_and_wait(ProcessEvent::Execd { pid: 3 });
        assert!(start.elapsed() < MAX_WAIT / 2);
        assert!(events.take().0.is_empty());
    }
}
