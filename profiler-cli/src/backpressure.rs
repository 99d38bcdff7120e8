//! Lossless `run`: backpressure from the ring to the target's threads.
//!
//! Once half the ring is queued, a probe sends its own thread [`HOLD_SIGNAL`] (SIGCHLD, from
//! `bpf_send_signal_thread`), which stops it in a signal-delivery stop as it returns to user
//! space. memprof traces every thread of a target it launched (launch.rs), so the tracer sees
//! the stop, holds the thread until the collector has drained the ring once more, and resumes
//! it with the signal suppressed: the program never sees it. A thread is held only while it
//! allocates faster than memprof keeps up, so no event is dropped for a full ring.
//!
//! A hold never waits longer than [`MAX_HOLD`]: a collector that cannot drain (stuck, or gone)
//! costs events, counted as lost, never a hung target.
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::{ptrace, signal::Signal};
use nix::unistd::Pid;
use profiler_core::report::Held;

pub use profiler_common::{HOLD_SIGNAL, HOLD_SIGNAL_BLOCKED};

/// Longest a thread is held waiting for one drain.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

/// What the collector and the tracer share.
#[derive(Default)]
pub struct Backpressure {
    state: Mutex<State>,
    drained: Condvar,
    /// Wakes the collector for a held thread: the ring may have been drained just before the
    /// hold began, and the next timer tick is up to 10 ms away.
    wanted: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Times the collector found the ring empty.
    drains: u64,
    /// Collection is over: nothing will drain any more.
    closed: bool,
    /// Holds so far, and the time threads spent held.
    holds: u64,
    held: Duration,
    /// The target exec'd: the collector is to end the old image's heap at its next drain.
    exec_pending: bool,
    /// The target is stopped at its exit: the collector is to run the leak check after its
    /// next drain, on these threads.
    exit_check: Option<Vec<crate::leak_scan::ThreadState>>,
    /// The leak check asked for at the exit is done.
    exit_checked: bool,
}

/// Longest the target waits at an exec for the collector to end the old image's heap.
const MAX_EXEC_WAIT: Duration = Duration::from_secs(10);

impl Backpressure {
    pub fn new() -> Arc<Backpressure> {
        Arc::new(Backpressure::default())
    }

    /// The tracer's pending requests (exec, exit stop), as they stand now: a drain during
    /// which they changed may have missed records written before the new one.
    pub fn requests(&self) -> (bool, bool) {
        self.state
            .lock()
            .map(|state| (state.exec_pending, state.exit_check.is_some()))
            .unwrap_or_default()
    }

    /// The collector read the ring to its end.
    pub fn ring_drained(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.drains += 1;
        }
        self.drained.notify_all();
    }

    /// Collection ended: threads are not held any more.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
        self.drained.notify_all();
    }

    /// Called by the tracer with a thread stopped by [`HOLD_SIGNAL`]: returns once the
    /// collector has drained the ring after this call, or after [`MAX_HOLD`], or at once
    /// when collection is over.
    pub fn hold(&self) {
        let start = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let seen = state.drains;
        self.wanted.notify_one();
        while !state.closed && state.drains == seen {
            let left = MAX_HOLD.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            state = match self.drained.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(_) => return,
            };
        }
        state.holds += 1;
        state.held += start.elapsed();
    }

    /// Called by the tracer with the target stopped at an exec, before the new program runs:
    /// every record of the old image is queued by now. Returns once the collector has drained
    /// them and ended the old image's heap ([`Backpressure::take_exec`]), or after
    /// [`MAX_EXEC_WAIT`], or at once when collection is over.
    pub fn exec_stop(&self) {
        let start = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.exec_pending = true;
        self.wanted.notify_one();
        while !state.closed && state.exec_pending {
            let left = MAX_EXEC_WAIT.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            state = match self.drained.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(_) => return,
            };
        }
    }

    /// Called by the tracer with the target stopped at its exit (memory still mapped):
    /// returns once the collector has drained the ring and run the leak check on `threads`
    /// ([`Backpressure::take_exit_check`]), or after [`crate::leak_scan::MAX_CHECK_WAIT`], or
    /// at once when collection is over.
    pub fn exit_stop(&self, threads: Vec<crate::leak_scan::ThreadState>) {
        let start = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.exit_check = Some(threads);
        self.wanted.notify_one();
        while !state.closed && !state.exit_checked {
            let left = crate::leak_scan::MAX_CHECK_WAIT.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            state = match self.drained.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(_) => return,
            };
        }
    }

    /// The threads to run the exit's leak check on, if the tracer asked for it since the
    /// last call; the next [`Backpressure::ring_drained`] tells the tracer it is done.
    pub fn take_exit_check(&self) -> Option<Vec<crate::leak_scan::ThreadState>> {
        let mut state = self.state.lock().ok()?;
        let threads = state.exit_check.take()?;
        state.exit_checked = true;
        Some(threads)
    }

    /// Whether the target exec'd since the last call (the collector ends the old image's heap
    /// then, before saying the ring is drained).
    pub fn take_exec(&self) -> bool {
        self.state
            .lock()
            .is_ok_and(|mut state| std::mem::take(&mut state.exec_pending))
    }

    /// Resolves when a held thread waits for a drain.
    pub async fn drain_wanted(&self) {
        self.wanted.notified().await;
    }

    /// Resumes a traced thread in a signal-delivery stop: after a hold, the signal suppressed,
    /// if a probe sent it; else with its signal delivered.
    pub fn resume(&self, tid: Pid, signal: Signal) {
        if is_hold_request(tid, signal) {
            self.hold();
            let _ = ptrace::cont(tid, None);
        } else {
            let _ = ptrace::cont(tid, signal);
        }
    }

    /// How much threads were held, if they ever were (the report's `target.held`).
    pub fn held(&self) -> Option<Held> {
        let state = self.state.lock().ok()?;
        (state.holds > 0).then_some(Held {
            times: state.holds,
            secs: state.held.as_secs_f64(),
        })
    }
}

/// Whether a thread in a ptrace signal-delivery stop by `signal` was signalled by a probe:
/// `bpf_send_signal_thread` sends with `SI_KERNEL`; the kernel's own SIGCHLDs carry `CLD_*`.
pub fn is_hold_request(tid: Pid, signal: Signal) -> bool {
    let signal = signal as i32;
    (signal == HOLD_SIGNAL as i32 || signal == HOLD_SIGNAL_BLOCKED as i32)
        && ptrace::getsiginfo(tid).is_ok_and(|info| info.si_code == libc::SI_KERNEL)
}

/// Closes `Backpressure` when the session ends, whichever way it ends.
pub struct CloseOnDrop(pub Arc<Backpressure>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_ends_at_the_next_drain() {
        let backpressure = Backpressure::new();
        let tracer = {
            let backpressure = backpressure.clone();
            std::thread::spawn(move || backpressure.hold())
        };
        // The hold waits for a drain that happens after it began.
        while !tracer.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
            backpressure.ring_drained();
        }
        tracer.join().unwrap();
        let held = backpressure.held().unwrap();
        assert_eq!(held.times, 1);
        assert!(held.secs < MAX_HOLD.as_secs_f64(), "{held:?}");
    }

    #[test]
    fn nothing_is_held_once_collection_is_over() {
        let backpressure = Backpressure::new();
        backpressure.close();
        let start = Instant::now();
        backpressure.hold();
        assert!(start.elapsed() < MAX_HOLD / 2);
    }

    #[test]
    fn a_hold_gives_up_without_a_drain() {
        let backpressure = Backpressure::new();
        let start = Instant::now();
        backpressure.hold();
        assert!(start.elapsed() >= MAX_HOLD);
        assert_eq!(backpressure.held().map(|held| held.times), Some(1));
    }
}
