//! One profiling session: probes in, events collected until a stop condition, probes out.
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

use crate::recorder::Collected;

/// How often the ring is drained when no record asked for a wakeup.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// How often the status line and the maps are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Why collection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    TargetExited,
    Interrupted,
    DurationElapsed,
}

/// Drains the ring into `collected` until `stop` resolves. What is left in the ring is for the
/// caller to drain (after merging the maps read as the target exited).
pub async fn collect(
    ring: RingBuf<MapData>,
    collected: &mut Collected,
    pid: u32,
    stop: impl Future<Output = Stop>,
) -> Result<(Stop, RingBuf<MapData>)> {
    // SAFETY: the ring owns its descriptor and keeps it open for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("cannot poll the ring buffer")?;
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut status = StatusLine::new();
    collected.refresh_maps(pid);
    tokio::pin!(stop);
    let drain_wanted = collected.drain_wanted();
    tokio::pin!(drain_wanted);
    let reason = loop {
        tokio::select! {
            biased;
            reason = &mut stop => break reason,
            () = &mut drain_wanted => {
                drain(ring.get_mut(), collected);
                drain_wanted.set(collected.drain_wanted());
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), collected);
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), collected);
                collected.tick(pid);
                if status.due() {
                    collected.refresh_maps(pid);
                    let lost = collected.lost().map_or(0, |c| c.total());
                    status.show(collected, lost);
                }
            }
        }
    };
    let ring = ring.into_inner();
    status.clear();
    Ok((reason, ring))
}

/// Reads what is queued in the ring now.
pub fn drain(ring: &mut RingBuf<MapData>, collected: &mut Collected) {
    while let Some(item) = ring.next() {
        collected.record(&item);
    }
    collected.ring_drained();
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
        if !self.enabled {
            return;
        }
        let stats = collected.recorder.heap.stats();
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[Kmemprof: {:.0} events/s | live {} in {} blocks | lost {}",
            rate,
            profiler_core::render::human_bytes(stats.live_bytes),
            stats.live_blocks,
            lost,
        );
        let _ = stderr.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}
