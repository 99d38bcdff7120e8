use std::time::{Duration, Instant};

use anyhow::Result;
use profiler_core::heap::Mode;

use crate::{cli::CaptureArgs, launch::Exit, probes::KernelCounters, recorder::Recorder, targets::ProbeSite};

pub struct Meta<'a> {
    pub mode: Mode,
    pub command: Vec<String>,
    pub pid: u32,
    pub exit: Option<Exit>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub sites: &'a [ProbeSite],
    pub counters: KernelCounters,
    pub setup: Duration,
}

pub fn finish(recorder: &Recorder, meta: &Meta<'_>, _capture: &CaptureArgs, stopping: Instant) -> Result<()> {
    eprintln!("{:#?}", recorder.heap.stats());
    for s in meta.sites { eprintln!("{:?} {:?} {} {:#x} {:?}", s.kind, s.aliases, s.module.display(), s.file_offset, s.placement); }
    eprintln!("events {} malformed {} stacks {} counters {:?} setup {:?} stop {:?}", recorder.events, recorder.malformed, recorder.stacks.len(), meta.counters, meta.setup, stopping.elapsed());
    Ok(())
}
