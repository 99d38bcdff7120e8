//! What `run` and `attach` share: the probe configuration, loading and attaching the probes,
//! saving what was collected when the collection loop fails, and the probes' clock.
use std::sync::Arc;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use profiler_core::heap::Mode;

use crate::{
    backpressure::Backpressure,
    cli::{self, CaptureArgs},
    probes::{ProbeConfig, Probes},
    recorder::{Collected, LossSource},
    recording, report,
    targets::{LookupOrder, ProbeSite},
};

pub fn probe_config(capture: &CaptureArgs) -> Result<ProbeConfig> {
    Ok(ProbeConfig {
        ring_bytes: capture.ring_bytes()?,
        stack_depth: capture.max_depth,
        unwind_mode: match capture.unwind {
            cli::Unwind::Fp => profiler_common::unwind_mode::FRAME_POINTERS,
            cli::Unwind::Dwarf => profiler_common::unwind_mode::DWARF,
        },
        stack_bytes: capture.stack_bytes()?,
        hold_threads: false,
    })
}

/// The collection loop failed: still write what was collected (report and recording) before
/// the error is reported.
pub fn salvage(
    collected: &mut Collected,
    session: &recording::SessionStart,
    end_ns: u64,
    sites: &[ProbeSite],
    capture: &CaptureArgs,
) {
    let counters = collected.lost().unwrap_or_default();
    let meta = report::Meta {
        mode: session.mode,
        command: session.command.clone(),
        executable: session.executable.clone(),
        pid: session.pid,
        exit: None,
        start_ns: session.start_ns,
        end_ns,
        sites,
        counters,
    };
    if let Err(error) = recording::finish_session(collected, &meta, capture) {
        eprintln!("memprof: error: {error:#}");
    }
}

/// The collector of a session on `pid`: the probes' ring and loss counters taken from
/// `probes`, the session's settings, and `backpressure` told of each drain.
pub fn collector(
    mode: Mode,
    pid: u32,
    capture: &CaptureArgs,
    probes: &mut Probes,
    sites: &[ProbeSite],
    warnings: Vec<String>,
    backpressure: &Arc<Backpressure>,
) -> Result<(RingBuf<MapData>, Collected)> {
    let ring = probes.take_ring()?;
    let mut collected = Collected::new(mode);
    collected.count_losses_with(LossSource::Probes(probes.take_loss_counters()?));
    collected.release_holds_with(backpressure.clone());
    collected.recorder.analyses.set_ops(capture.ops);
    collected.unwind_for(pid, capture.max_depth);
    collected.allocator_code(pid, sites);
    collected.warnings = warnings;
    // The maps now, before anyone is told collection started: a target that exits at once
    // (its maps are empty from then on) still has its files known for the report.
    collected.refresh_maps(pid);
    Ok((ring, collected))
}

/// Finds the probe sites, loads the programs and attaches them.
/// Also returns warnings about calls the probes cannot see.
pub fn prepare(
    pid: u32,
    config: ProbeConfig,
    order: impl FnOnce() -> Result<LookupOrder>,
) -> Result<(Probes, Vec<ProbeSite>, Vec<String>)> {
    let (sites, warnings) = order()?.probe_plan()?;
    let mut probes = Probes::load(pid, config)?;
    probes.attach(pid, &sites)?;
    Ok((probes, sites, warnings))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}
