//! What a session knows of its target beyond the events: who it is, when collection started
//! and ended, how the target ended, where the probes were and what they lost.
use std::time::Duration;

use profiler_core::{
    heap::Mode,
    report::{ExitStatus, LostCounts, ProbeInfo, ReportMeta},
};

use crate::probe_site::ProbeSite;

/// The target and the start of collection: the recording's header, and the report's target.
#[derive(Clone, Debug)]
pub struct SessionStart {
    pub command: Vec<String>,
    /// /proc/PID/exe, when it could be read.
    pub executable: Option<String>,
    pub pid: u32,
    pub mode: Mode,
    pub start_ns: u64,
    /// Its place in the tree `run` follows (None: the launched or attached process).
    pub lineage: Option<profiler_core::recording::Lineage>,
}

impl SessionStart {
    /// The session's metadata once it ended at `end_ns`.
    pub fn ended<'a>(
        &self,
        exit: Option<ExitStatus>,
        end_ns: u64,
        sites: &'a [ProbeSite],
        counters: LostCounts,
    ) -> Meta<'a> {
        Meta {
            mode: self.mode,
            command: self.command.clone(),
            executable: self.executable.clone(),
            pid: self.pid,
            exit,
            start_ns: self.start_ns,
            end_ns,
            sites,
            counters,
        }
    }
}

/// What the session knows beyond the events when it ends.
pub struct Meta<'a> {
    pub mode: Mode,
    pub command: Vec<String>,
    /// /proc/PID/exe, when it could be read.
    pub executable: Option<String>,
    pub pid: u32,
    /// How the target ended: None while it runs; code and signal unknown when an attached
    /// process exited (memprof is not its parent).
    pub exit: Option<ExitStatus>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub sites: &'a [ProbeSite],
    pub counters: LostCounts,
}

impl Meta<'_> {
    /// The report's form of it.
    pub fn report_meta(&self) -> ReportMeta {
        ReportMeta {
            command: self.command.clone(),
            executable: self.executable.clone(),
            pid: self.pid,
            mode: self.mode,
            exit: self.exit,
            start_ns: self.start_ns,
            duration: Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns)),
            probes: self.sites.iter().map(probe_info).collect(),
            lost: self.counters,
        }
    }
}

/// A probe site as the report and the recording list it.
pub fn probe_info(site: &ProbeSite) -> ProbeInfo {
    ProbeInfo {
        function: site.symbol.to_owned(),
        module: site.module.display().to_string(),
        offset: site.file_offset,
        single_step: site.placement.single_step,
        aliases: site
            .aliases
            .iter()
            .map(|kind| kind.symbol().to_owned())
            .collect(),
    }
}
