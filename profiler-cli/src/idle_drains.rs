//! `attach` without holds: the collector drains the probes' ring at idle priority
//! (`SCHED_IDLE`: it runs on a CPU no thread of normal priority wants), so that a server under
//! load does not share its CPUs with memprof's unwinding. Only the drains are lowered: the
//! loop around them (the stop, `--duration`, the status line, the live view) and everything
//! after collection run at normal priority, and nothing a drain calls starts a thread (a new
//! thread would inherit the policy).
//!
//! Nothing holds the target in `attach`, so a drain starved of CPU would let the ring fill and
//! lose records: a watcher thread of normal priority raises a drain that has been running
//! at idle priority for [`STARVED_AFTER_NS`], and the drains of the next [`RAISED_FOR_NS`]
//! run at normal priority. The two threads share atomics only: a lock held by the lowered
//! collector would make the watcher wait on the thread it is there to raise.
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::clock::monotonic_ns;

/// A drain at idle priority running this long is raised: it starves.
pub const STARVED_AFTER_NS: u64 = 100_000_000;
/// After a raise, drains run at normal priority this long.
pub const RAISED_FOR_NS: u64 = 1_000_000_000;
/// How often the watcher looks at the drain in progress.
const WATCH_INTERVAL: Duration = Duration::from_millis(5);

/// What the drains' priority did over a session (`MEMPROF_TIMINGS=1` prints it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleStats {
    /// Drains that ran at idle priority to their end.
    pub idle_drains: u64,
    /// Drains the watcher raised.
    pub raised_drains: u64,
    /// Drains run at normal priority after a raise.
    pub normal_drains: u64,
}

/// What the collector and the watcher share.
#[derive(Default)]
struct Shared {
    /// When the drain in progress went to idle priority (monotonic ns); 0 outside such a drain.
    idle_since_ns: AtomicU64,
    /// Drains the watcher raised so far.
    raises: AtomicU64,
    stop: AtomicBool,
}

/// The collector thread's drains at idle priority, and their watcher.
pub struct IdleDrains {
    /// The collector thread's id.
    collector: libc::pid_t,
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
    /// Until when (monotonic ns) drains run at normal priority, after a raise.
    normal_until_ns: u64,
    stats: IdleStats,
}

impl IdleDrains {
    /// Drains of the calling thread, the collector, will run at idle priority. `None` where the
    /// policy cannot be set both ways (a drain lowered could not be raised).
    pub fn start() -> Result<Option<IdleDrains>> {
        if !can_leave_idle_priority() {
            return Ok(None);
        }
        // SAFETY: gettid has no arguments and cannot fail.
        let collector = unsafe { libc::gettid() };
        let shared = Arc::new(Shared::default());
        // Started at normal priority, which it keeps.
        let watcher = std::thread::Builder::new()
            .name("memprof-drain-watch".into())
            .spawn({
                let shared = shared.clone();
                move || watch(collector, &shared)
            })
            .context("cannot start the drains' watcher")?;
        Ok(Some(IdleDrains {
            collector,
            shared,
            watcher: Some(watcher),
            normal_until_ns: 0,
            stats: IdleStats::default(),
        }))
    }

    /// Runs `drain` at idle priority, unless a drain was raised less than [`RAISED_FOR_NS`]
    /// ago; the collector is at normal priority again when this returns.
    pub fn drain<T>(&mut self, drain: impl FnOnce() -> T) -> T {
        let now = monotonic_ns();
        if now < self.normal_until_ns {
            self.stats.normal_drains += 1;
            return drain();
        }
        let raises = self.shared.raises.load(Ordering::SeqCst);
        // Announced before lowering: a collector preempted between the two would otherwise
        // be lowered where the watcher cannot see it. A watcher that raises before the lower
        // raises again at its next look.
        self.shared
            .idle_since_ns
            .store(now.max(1), Ordering::SeqCst);
        if set_policy(self.collector, libc::SCHED_IDLE).is_err() {
            self.shared.idle_since_ns.store(0, Ordering::SeqCst);
            self.stats.normal_drains += 1;
            return drain();
        }
        let drained = drain();
        self.shared.idle_since_ns.store(0, Ordering::SeqCst);
        // At normal priority for what follows, whatever the watcher did meanwhile.
        let _ = set_policy(self.collector, libc::SCHED_OTHER);
        if self.shared.raises.load(Ordering::SeqCst) != raises {
            self.stats.raised_drains += 1;
            self.normal_until_ns = monotonic_ns() + RAISED_FOR_NS;
        } else {
            self.stats.idle_drains += 1;
        }
        drained
    }

    /// What the drains' priority did so far.
    pub fn stats(&self) -> IdleStats {
        self.stats
    }
}

impl Drop for IdleDrains {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        let _ = set_policy(self.collector, libc::SCHED_OTHER);
    }
}

/// The watcher's loop: raises the collector while its drain at idle priority is older than
/// [`STARVED_AFTER_NS`] (again at each look: a raise may have come just before the lower),
/// counting one raise per drain.
fn watch(collector: libc::pid_t, shared: &Shared) {
    let mut counted_for = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(WATCH_INTERVAL);
        let since = shared.idle_since_ns.load(Ordering::SeqCst);
        if since == 0 || monotonic_ns().saturating_sub(since) < STARVED_AFTER_NS {
            continue;
        }
        let _ = set_policy(collector, libc::SCHED_OTHER);
        if since != counted_for {
            counted_for = since;
            shared.raises.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Whether a thread of this process may go back from `SCHED_IDLE` to `SCHED_OTHER`: root or
/// `CAP_SYS_NICE` may, a thread limited by an `RLIMIT_NICE` below 20 may not (memprof may run
/// with `CAP_BPF` and `CAP_PERFMON` only). Tried on a thread of its own, which ends either
/// way: tried on the collector, a refusal would leave it idle for the whole session.
fn can_leave_idle_priority() -> bool {
    std::thread::spawn(|| {
        // SAFETY: gettid has no arguments and cannot fail.
        let thread = unsafe { libc::gettid() };
        set_policy(thread, libc::SCHED_IDLE).is_ok()
            && set_policy(thread, libc::SCHED_OTHER).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// Sets `thread`'s scheduling policy (priority 0, the only one of both policies).
fn set_policy(thread: libc::pid_t, policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call.
    match unsafe { libc::sched_setscheduler(thread, policy, &param) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's policy.
    fn policy() -> libc::c_int {
        // SAFETY: sched_getscheduler has no memory arguments; 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// Runs `test` on a thread of its own (the policies set are the thread's), with
    /// `IdleDrains` started there; as root only, where raising a lowered thread is allowed.
    fn on_own_thread(name: &str, test: impl FnOnce(IdleDrains) + Send + 'static) {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("{name}: needs root (raising a thread from SCHED_IDLE); not run");
            return;
        }
        std::thread::spawn(move || {
            let drains = IdleDrains::start()
                .expect("start the watcher")
                .expect("root can set both policies");
            test(drains);
        })
        .join()
        .expect("the test's thread");
    }

    /// Root may leave idle priority; an unprivileged process (`RLIMIT_NICE` 0, no
    /// `CAP_SYS_NICE`) may not, and then drains stay at normal priority.
    #[test]
    fn leaving_idle_priority_is_tried_on_a_thread_of_its_own() {
        // SAFETY: geteuid has no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) }, 0);
        if root || limit.rlim_cur >= 20 {
            assert!(can_leave_idle_priority());
        } else {
            assert!(!can_leave_idle_priority());
            assert!(IdleDrains::start().expect("no watcher to start").is_none());
        }
        // The calling thread is untouched either way.
        assert_eq!(policy(), libc::SCHED_OTHER);
    }

    #[test]
    fn a_drain_runs_at_idle_priority_and_the_collector_returns_to_normal() {
        on_own_thread(
            "a_drain_runs_at_idle_priority_and_the_collector_returns_to_normal",
            |mut drains| {
                assert_eq!(policy(), libc::SCHED_OTHER);
                assert_eq!(drains.drain(policy), libc::SCHED_IDLE);
                assert_eq!(policy(), libc::SCHED_OTHER);
                assert_eq!(
                    drains.stats(),
                    IdleStats {
                        idle_drains: 1,
                        ..IdleStats::default()
                    }
                );
                drop(drains);
                assert_eq!(policy(), libc::SCHED_OTHER);
            },
        );
    }

    #[test]
    fn a_starving_drain_is_raised_and_the_next_drains_run_at_normal_priority() {
        on_own_thread(
            "a_starving_drain_is_raised_and_the_next_drains_run_at_normal_priority",
            |mut drains| {
                // A drain that takes longer than STARVED_AFTER_NS (sleeping: the watcher
                // cannot tell a drain that waits for the CPU from one that works long).
                let raised = drains.drain(|| {
                    let deadline = monotonic_ns() + 10 * STARVED_AFTER_NS;
                    while policy() == libc::SCHED_IDLE && monotonic_ns() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    policy()
                });
                assert_eq!(raised, libc::SCHED_OTHER, "the watcher raised the drain");
                assert_eq!(drains.drain(policy), libc::SCHED_OTHER);
                assert_eq!(
                    drains.stats(),
                    IdleStats {
                        idle_drains: 0,
                        raised_drains: 1,
                        normal_drains: 1,
                    }
                );
            },
        );
    }
}
