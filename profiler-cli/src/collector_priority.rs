//! `attach` without holds: the collector yields the CPU to the target. Its thread runs at idle
//! priority (`SCHED_IDLE`: on a CPU no runnable thread of normal priority wants), so the
//! program profiled, a server under load, does not share its CPUs with memprof's unwinding.
//! Nothing holds the target there, so a collector that fell behind would lose records once
//! the ring is full: a watcher thread of normal priority waits on the ring's wakeups, which
//! the probes force only once more than a quarter of it is queued, and raises the collector
//! back to normal priority. It does the same when no drain ended for [`STARVED_AFTER_NS`]
//! (CPUs kept busy by the target). A raise lasts [`RAISED_FOR_NS`] at least, and until a
//! drain finds the ring empty: the loop around the drains (the stop, `--duration`, the status
//! line, the live view) then runs at normal priority too, where a thread lowered again at
//! once crawled through it on a busy CPU (`attach --duration 1` beside a CPU-bound target
//! ran past two minutes).
use std::{
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};

use crate::clock::monotonic_ns;

/// How long the watcher waits for a wakeup before it looks whether the session ended or the
/// collector starves.
const WATCH_TIMEOUT_MS: i32 = 20;
/// A collector that ended no drain for this long is raised: it starves.
pub const STARVED_AFTER_NS: u64 = 100_000_000;
/// The shortest raise.
pub const RAISED_FOR_NS: u64 = 1_000_000_000;

/// What the collector's priority did over a session (`MEMPROF_TIMINGS=1` prints it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PriorityStats {
    /// Drains that began at idle priority.
    pub idle_drains: u64,
    /// Raises for a ring a quarter full.
    pub raised_filling: u64,
    /// Raises of a starving collector.
    pub raised_starving: u64,
}

/// The collector thread's priority while it collects.
pub struct CollectorPriority {
    /// The collector thread's id.
    collector: libc::pid_t,
    /// Shared with the watcher: held while a policy is set, so that a raise and a drop back
    /// cannot cross.
    state: Arc<Mutex<State>>,
    /// When the last drain ended (monotonic ns).
    drained_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    /// When the watcher raised the collector (monotonic ns), while it is raised.
    raised_at: Option<u64>,
    stats: PriorityStats,
}

impl CollectorPriority {
    /// Puts the calling thread, the collector, at idle priority and starts watching `ring`
    /// (the probes' ring, whose forced wakeups say it is filling). `None` where the policy
    /// cannot be set both ways (the collector would stay idle as the ring fills).
    pub fn yield_to_target(ring: BorrowedFd<'_>) -> Result<Option<CollectorPriority>> {
        // SAFETY: gettid has no arguments and cannot fail.
        let collector = unsafe { libc::gettid() };
        if set_policy(collector, libc::SCHED_IDLE).is_err()
            || set_policy(collector, libc::SCHED_OTHER).is_err()
        {
            return Ok(None);
        }
        let wakeups = Wakeups::on(ring)?;
        let state = Arc::new(Mutex::new(State::default()));
        let drained_ns = Arc::new(AtomicU64::new(monotonic_ns()));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::Builder::new()
            .name("memprof-ring-watch".into())
            .spawn({
                let (state, drained_ns, stop) = (state.clone(), drained_ns.clone(), stop.clone());
                move || watch(&wakeups, collector, &state, &drained_ns, &stop)
            })
            .context("cannot start the ring's watcher")?;
        let priority = CollectorPriority {
            collector,
            state,
            drained_ns,
            stop,
            watcher: Some(watcher),
        };
        // After the watcher started: a thread inherits its creator's policy. Dropped (the
        // watcher stopped) if this fails.
        Ok(set_policy(collector, libc::SCHED_IDLE)
            .is_ok()
            .then_some(priority))
    }

    /// A drain starts.
    pub fn drain_starts(&self) {
        let mut state = self.lock();
        if state.raised_at.is_none() {
            state.stats.idle_drains += 1;
        }
    }

    /// A drain ended; one that found the ring `emptied` caught up, and the collector yields
    /// again once its raise is [`RAISED_FOR_NS`] old.
    pub fn drain_ended(&self, emptied: bool) {
        let now = monotonic_ns();
        self.drained_ns.store(now, Ordering::Relaxed);
        if !emptied {
            return;
        }
        let mut state = self.lock();
        let Some(raised_at) = state.raised_at else {
            return;
        };
        if now.saturating_sub(raised_at) >= RAISED_FOR_NS
            && set_policy(self.collector, libc::SCHED_IDLE).is_ok()
        {
            state.raised_at = None;
        }
    }

    /// What the priority did so far.
    pub fn stats(&self) -> PriorityStats {
        self.lock().stats
    }

    /// Whether the watcher raised the collector and it has not yielded again since.
    #[cfg(test)]
    fn raised(&self) -> bool {
        self.lock().raised_at.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for CollectorPriority {
    /// Collection ended: the last drains and the report run at normal priority.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        let _ = set_policy(self.collector, libc::SCHED_OTHER);
    }
}

/// Raises `collector` at each of the ring's wakeups, and when it ended no drain for
/// [`STARVED_AFTER_NS`] (`drained_ns`), until `stop`.
fn watch(
    wakeups: &Wakeups,
    collector: libc::pid_t,
    state: &Mutex<State>,
    drained_ns: &AtomicU64,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let woken = wakeups.wait(WATCH_TIMEOUT_MS);
        let now = monotonic_ns();
        let starved = now.saturating_sub(drained_ns.load(Ordering::Relaxed)) > STARVED_AFTER_NS;
        if !woken && !starved {
            continue;
        }
        let mut state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.raised_at.is_some() || set_policy(collector, libc::SCHED_OTHER).is_err() {
            continue;
        }
        state.raised_at = Some(now);
        match woken {
            true => state.stats.raised_filling += 1,
            false => state.stats.raised_starving += 1,
        }
    }
}

/// An edge-triggered epoll on a duplicate of the ring's descriptor: it reports the wakeups the
/// producers ask for, not that records are queued (they always are, under load).
struct Wakeups {
    epoll: OwnedFd,
    _ring: OwnedFd,
}

impl Wakeups {
    fn on(ring: BorrowedFd<'_>) -> Result<Wakeups> {
        let ring = ring
            .try_clone_to_owned()
            .context("cannot duplicate the ring's descriptor")?;
        // SAFETY: epoll_create1 has no memory arguments; a non-negative result is ours.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: just returned by the kernel and owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event for the call.
        let added = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring.as_raw_fd(),
                &mut event,
            )
        };
        if added < 0 {
            return Err(io::Error::last_os_error()).context("cannot watch the ring");
        }
        Ok(Wakeups { epoll, _ring: ring })
    }

    /// Whether a wakeup came within `timeout_ms`.
    fn wait(&self, timeout_ms: i32) -> bool {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: the epoll descriptor is open and `event` has room for the one event asked.
        let ready =
            unsafe { libc::epoll_wait(self.epoll.as_fd().as_raw_fd(), &mut event, 1, timeout_ms) };
        ready > 0
    }
}

/// Sets `thread`'s scheduling policy (priority 0, the only one of these two policies).
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

    /// The policy of this process's thread named `name` (as `/proc` shortens it).
    fn thread_policy(name: &str) -> Option<libc::c_int> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            // The fields after the name start at the 3rd; the policy is the 41st.
            (comm == name).then(|| rest.split(' ').nth(41 - 3)?.parse().ok())?
        })
    }

    /// A pipe stands for the ring: writing to it is a wakeup.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both were just returned by the kernel and are owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn wait_until(what: impl Fn() -> bool) -> bool {
        (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            what()
        })
    }

    #[test]
    fn the_collector_idles_until_a_wakeup_or_a_drought_raises_it_for_a_while() {
        // On a thread of its own: the policy is the thread's, and the test harness's other
        // threads keep theirs.
        std::thread::spawn(|| {
            let (ring, writer) = pipe();
            let priority = CollectorPriority::yield_to_target(ring.as_fd())
                .unwrap()
                .expect("a thread may lower itself and, as root or within RLIMIT_NICE, back");
            assert_eq!(policy(), libc::SCHED_IDLE);
            // The watcher names itself once it runs.
            assert!(wait_until(|| thread_policy("memprof-ring-wa").is_some()));
            assert_eq!(
                thread_policy("memprof-ring-wa"),
                Some(libc::SCHED_OTHER),
                "the watcher keeps normal priority"
            );
            priority.drain_starts();
            priority.drain_ended(true);
            assert!(!priority.raised());
            // SAFETY: writes one byte from a valid buffer to an open pipe.
            assert_eq!(
                unsafe { libc::write(writer.as_raw_fd(), [1u8].as_ptr().cast(), 1) },
                1
            );
            let raised = std::time::Instant::now();
            assert!(
                wait_until(|| priority.raised()),
                "the wakeup raised the collector"
            );
            assert_eq!(policy(), libc::SCHED_OTHER);
            // Raised drains, emptying the ring or not, keep it raised for the shortest raise.
            priority.drain_starts();
            priority.drain_ended(false);
            priority.drain_starts();
            priority.drain_ended(true);
            assert!(priority.raised());
            assert_eq!(policy(), libc::SCHED_OTHER);
            // Then a drain that empties the ring lowers it; one that did not, not. Drains go
            // on meanwhile (no drought), and the pipe stays readable without a new wakeup
            // (edge-triggered).
            while (raised.elapsed().as_nanos() as u64) < RAISED_FOR_NS + 50_000_000 {
                std::thread::sleep(std::time::Duration::from_millis(10));
                priority.drain_ended(false);
            }
            assert!(priority.raised());
            priority.drain_ended(true);
            assert!(!priority.raised());
            assert_eq!(policy(), libc::SCHED_IDLE);
            // No drain ends for longer than the bound: it starves, and is raised.
            let quiet = std::time::Instant::now();
            priority.drain_ended(true);
            assert!(
                wait_until(|| priority.raised()),
                "a starving collector was raised"
            );
            assert!(quiet.elapsed().as_nanos() as u64 > STARVED_AFTER_NS);
            assert_eq!(policy(), libc::SCHED_OTHER);
            assert_eq!(
                priority.stats(),
                PriorityStats {
                    idle_drains: 1,
                    raised_filling: 1,
                    raised_starving: 1,
                }
            );
            drop(priority);
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
