//! The collection loop: a capture path's records read into the collector until a stop
//! condition, with the status line, the maps refreshed and the live view fed on the way.
use std::{
    future::Future,
    io::{IsTerminal as _, Write as _},
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::MissedTickBehavior,
};

use crate::{
    collected::Collected,
    idle_drains::IdleDrains,
    preload_capture::{Drained, SharedRing},
};

/// How often the ring is drained when no record asked for a wakeup.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest drain of a collector that yields (see `EventSource::drain`).
const DRAIN_SLICE: Duration = Duration::from_millis(50);
/// How many records such a drain reads between looks at the clock.
const SLICE_CHECK_RECORDS: usize = 256;
/// How often the status line and the maps are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Why collection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    TargetExited,
    Interrupted,
    DurationElapsed,
}

/// Where the collector reads the target's records from.
pub enum EventSource {
    /// The probes' ring buffer, readable when a record asks for a wakeup (most do not: they
    /// are read on the drain timer).
    Kernel {
        ring: AsyncFd<RingBuf<MapData>>,
        /// The most records the ring can hold at once: one drain reads no more, so that a
        /// target writing as fast as memprof reads cannot keep it in the drain, deaf to its
        /// stop; being FIFO, those records include every one queued when the drain began
        /// (not so for the 50 ms slices of a collector that yields, during `collect`).
        max_queued: usize,
        /// Whether the drains yield the CPU to the target (`attach` without holds, where
        /// nothing makes the target wait for memprof).
        yields: bool,
        /// The drains at idle priority, during `collect` (boxed: the variant stays small).
        idle: Option<Box<IdleDrains>>,
    },
    /// The ring shared with the in-process capture library, polled.
    Shared(SharedRing),
}

impl EventSource {
    /// The probes' ring of `ring_bytes`, registered for readiness.
    pub fn kernel(ring: RingBuf<MapData>, ring_bytes: u32) -> Result<EventSource> {
        // SAFETY: the ring owns its descriptor and keeps it open for as long as the AsyncFd
        // holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("cannot poll the ring buffer")?;
        // The smallest record: the ring's 8-byte record header and an event header.
        let smallest_record = 8 + profiler_common::EVENT_HEADER_SIZE;
        Ok(EventSource::Kernel {
            ring,
            max_queued: ring_bytes as usize / smallest_record,
            yields: false,
            idle: None,
        })
    }

    /// The drains will yield the CPU to the target (see `idle_drains.rs`): for `attach`
    /// without holds or a followed tree.
    pub fn yield_to_target(&mut self) {
        if let EventSource::Kernel { yields, .. } = self {
            *yields = true;
        }
    }

    /// Collection starts: the drains of a source that yields go to idle priority. Without
    /// their watcher (no thread to be had) they stay at normal priority: the session goes on.
    fn start_yielding(&mut self) {
        if let EventSource::Kernel {
            yields: true, idle, ..
        } = self
        {
            *idle = match IdleDrains::start() {
                Ok(started) => started.map(Box::new),
                Err(error) => {
                    stderr_line!("memprof: draining at normal priority: {error:#}");
                    None
                }
            };
        }
    }

    /// Collection ended: the last drains and the report run at normal priority.
    fn stop_yielding(&mut self) {
        if let EventSource::Kernel { idle, .. } = self
            && let Some(ended) = idle.take()
            && crate::timings::enabled()
        {
            let stats = ended.stats();
            stderr_line!(
                "collector: {} drains at idle priority, {} raised starving, {} at normal \
                 priority after a raise",
                stats.idle_drains,
                stats.raised_drains,
                stats.normal_drains
            );
        }
    }

    /// Reads what is queued now into `collected`.
    pub fn drain(&mut self, collected: &mut Collected) {
        match self {
            EventSource::Kernel {
                ring,
                max_queued,
                idle,
                ..
            } => {
                // A drain at idle priority that starved comes back with a backlog, which a
                // target on the same CPU may keep full: it ends after a slice, so that the loop
                // sees the stop (`--duration`) on time. The drains after collection read all.
                let sliced = idle.is_some();
                let mut drain = || {
                    let started = Instant::now();
                    // Taken before the drain: every record written before them is applied
                    // first.
                    let events = collected.take_process_events();
                    let ring = ring.get_mut();
                    let requests = loop {
                        let requests = collected.drain_requests();
                        for read in 0..*max_queued {
                            if sliced
                                && read % SLICE_CHECK_RECORDS == SLICE_CHECK_RECORDS - 1
                                && started.elapsed() >= DRAIN_SLICE
                            {
                                break;
                            }
                            let Some(item) = ring.next() else { break };
                            collected.record_from_thread(&item);
                        }
                        // An exec or exit stop asked for meanwhile may follow records this
                        // pass did not read: the target is stopped now, one more pass reads
                        // them all.
                        if collected.drain_requests() == requests {
                            break requests;
                        }
                    };
                    // No lock to free: the kernel's ring has none.
                    collected.apply_process_events(events, |_| {});
                    collected.publish_stack_tops();
                    collected.ring_drained(requests, || {});
                };
                match idle {
                    Some(idle) => idle.drain(drain),
                    None => drain(),
                }
            }
            EventSource::Shared(ring) => {
                // Taken before the drain: every record written before them is applied first.
                let events = collected.take_process_events();
                let requests = loop {
                    let requests = collected.drain_requests();
                    let malformed = ring.drain(|drained| match drained {
                        Drained::Ahead {
                            pid,
                            addr,
                            old_addr,
                        } => collected.prefetch_for(pid, addr, old_addr),
                        Drained::Record { pid, record } => collected.record_from(pid, record),
                    });
                    collected.malformed += malformed;
                    // As above: one more pass after a request made during this one.
                    if collected.drain_requests() == requests {
                        break requests;
                    }
                };
                // A process that exec'd or died may have lost a thread inside a write, holding
                // the ring's lock: it is freed if that process holds it.
                collected.apply_process_events(events, |pid| ring.release_lock_of(pid));
                let root = collected.followed.as_ref().map(|followed| followed.root);
                collected.ring_drained(requests, || match root {
                    Some(pid) => ring.release_lock_of(pid),
                    None => ring.release_lock_of(0),
                });
            }
        }
    }

    /// Holds of the target's threads so far.
    fn holds(&self, collected: &Collected) -> u64 {
        match self {
            EventSource::Shared(ring) => ring.held().map_or(0, |held| held.times),
            EventSource::Kernel { .. } => collected.holds(),
        }
    }

    /// Resolves when records may be waiting beyond the drain timer's pace.
    async fn ready(&mut self) -> Result<()> {
        match self {
            EventSource::Kernel { ring, .. } => {
                ring.readable_mut().await?.clear_ready();
            }
            // Producers write without waking memprof: a short poll keeps a fast target from
            // waiting on a full ring for long.
            EventSource::Shared(_) => tokio::time::sleep(SHARED_POLL_INTERVAL).await,
        }
        Ok(())
    }
}

/// How often the shared ring is read.
const SHARED_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Drains `source` into `collected` until `stop` resolves. What is left queued is for the
/// caller to drain (after merging the maps read as the target exited).
pub async fn collect(
    source: &mut EventSource,
    collected: &mut Collected,
    pid: u32,
    stop: impl Future<Output = Stop>,
) -> Result<Stop> {
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut status = StatusLine::new();
    collected.refresh_maps(pid);
    source.start_yielding();
    tokio::pin!(stop);
    let drain_wanted = collected.drain_wanted();
    tokio::pin!(drain_wanted);
    let reason = loop {
        tokio::select! {
            biased;
            reason = &mut stop => break reason,
            () = &mut drain_wanted => {
                source.drain(collected);
                drain_wanted.set(collected.drain_wanted());
            }
            ready = source.ready() => {
                if let Err(error) = ready {
                    source.stop_yielding();
                    return Err(error);
                }
                source.drain(collected);
            }
            _ = drain_tick.tick() => {
                source.drain(collected);
                collected.tick(pid);
                let holds = source.holds(collected);
                collected.live_tick(pid, holds);
                if status.due() {
                    collected.refresh_maps(pid);
                    let lost = collected.lost().map_or(0, |c| c.total());
                    status.show(collected, lost);
                }
            }
        }
    };
    source.stop_yielding();
    status.clear();
    // The view closes as collection ends: the report is written as without it.
    if let Some(live) = &mut collected.live {
        live.finish();
    }
    Ok(reason)
}

/// Resolves when the process exits (pidfd readability), for targets that are not our child.
pub async fn process_exit(pid: u32) -> Result<()> {
    // SAFETY: pidfd_open has no memory arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd keeps the pidfd open for as long as the AsyncFd holds it.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// A one-line progress display on stderr, only when stderr is a terminal.
struct StatusLine {
    enabled: bool,
    last: Instant,
    last_events: u64,
    shown: bool,
}

impl StatusLine {
    fn new() -> StatusLine {
        StatusLine {
            enabled: std::io::stderr().is_terminal(),
            last: Instant::now(),
            last_events: 0,
            shown: false,
        }
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= STATUS_INTERVAL
    }

    fn show(&mut self, collected: &Collected, lost: u64) {
        let elapsed = self.last.elapsed().as_secs_f64();
        let rate = (collected.recorder.events() - self.last_events) as f64 / elapsed.max(1e-9);
        self.last = Instant::now();
        self.last_events = collected.recorder.events();
        // Not under the live view, which owns the screen.
        if !self.enabled || collected.live.as_ref().is_some_and(|live| live.active()) {
            return;
        }
        let stats = collected.recorder.heap.stats();
        let mut stderr = std::io::stderr().lock();
        let path = collected
            .capture
            .as_ref()
            .map_or(String::new(), |capture| format!(" [{}]", capture.path));
        let line = format!(
            "memprof{path}: {:.0} events/s | live {} in {} blocks | lost {}",
            rate,
            profiler_core::render::human_bytes(stats.live_bytes),
            stats.live_blocks,
            lost,
        );
        // One screen line: a wrapped one would leave a copy behind at each refresh.
        let width = crossterm::terminal::size().map_or(usize::MAX, |(columns, _)| columns as usize);
        let shown: String = line.chars().take(width.saturating_sub(1)).collect();
        let _ = write!(stderr, "\r\x1b[K{shown}");
        let _ = stderr.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}
