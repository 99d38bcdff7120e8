//! The figures of one profiled run, read back from its report.json.
use std::collections::{HashMap, HashSet};

use profiler_core::{
    analysis::allocator::Allocator,
    report::{AllocationSite, Report},
};

/// What the compare table shows for one run. Allocation figures are the workload's: the
/// allocations made from objects only the preloaded allocator brought in (its own start-up,
/// e.g. libstdc++'s constructor when jemalloc pulls libstdc++ into a C program) are counted
/// apart in `startup`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// The object whose malloc was probed.
    pub module: String,
    pub serving: Option<Allocator>,
    pub wall_secs: f64,
    pub allocations: u64,
    pub bytes_allocated: u64,
    pub leak_blocks: u64,
    pub leak_bytes: u64,
    pub startup: Counts,
    pub peak_live_bytes: u64,
    pub peak_rss_bytes: Option<u64>,
    pub internal_fragmentation: Option<f64>,
    /// Usable bytes handed out beyond the bytes requested (size-class rounding).
    pub size_class_waste_bytes: Option<u64>,
    pub lost_events: u64,
    pub failed_allocations: u64,
    pub warnings: Vec<String>,
}

/// Allocations of a group of sites, and what of them is live at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub allocations: u64,
    pub bytes: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    /// Live when the whole heap peaked.
    pub peak_live_bytes: u64,
}

impl Counts {
    fn add(&mut self, site: &AllocationSite) {
        self.allocations += site.allocations;
        self.bytes += site.allocated_bytes;
        self.live_blocks += site.live_blocks;
        self.live_bytes += site.live_bytes;
        self.peak_live_bytes += site.peak_live_bytes;
    }
}

impl Figures {
    /// `startup_objects`: file names of the objects only the preload brought in.
    pub fn from_report(report: &Report, startup_objects: &HashSet<String>) -> Figures {
        let module = report
            .probes
            .iter()
            .find(|probe| probe.function == "malloc")
            .map(|probe| probe.module.clone())
            .unwrap_or_default();
        let mut workload = Counts::default();
        let mut startup = Counts::default();
        let mut is_startup: HashMap<&str, bool> = HashMap::new();
        for site in &report.sites {
            // Frame 0 is the allocator's caller.
            let caller = site.stack.first().map(|frame| {
                *is_startup
                    .entry(frame.module.as_str())
                    .or_insert_with(|| startup_objects.contains(file_name(&frame.module)))
            });
            if caller == Some(true) {
                startup.add(site);
            } else {
                workload.add(site);
            }
        }
        // report.json lists only the largest sites (LISTED_SITES) and sums up the others:
        // those count as the workload's. The start-up makes a handful of sites, so one of
        // them is missed only when the workload has more than LISTED_SITES larger ones.
        if let Some(rest) = &report.unlisted_sites {
            workload.allocations += rest.allocations;
            workload.bytes += rest.allocated_bytes;
            workload.live_blocks += rest.live_blocks;
            workload.live_bytes += rest.live_bytes;
            workload.peak_live_bytes += rest.peak_live_bytes;
        }
        // The size-class analysis is used only when it saw every successful allocation.
        let successful = report
            .summary
            .allocations
            .saturating_sub(report.summary.failed_allocations);
        let sizes = report
            .analyses
            .as_ref()
            .map(|a| &a.size_classes)
            .filter(|sizes| sizes.allocations == successful);
        Figures {
            serving: (!module.is_empty()).then(|| Allocator::from_module(&module)),
            module,
            wall_secs: report.target.duration_secs,
            allocations: workload.allocations,
            bytes_allocated: workload.bytes,
            leak_blocks: workload.live_blocks,
            leak_bytes: workload.live_bytes,
            startup,
            // The start-up's blocks live at the peak are not the workload's.
            peak_live_bytes: report
                .summary
                .peak_live_bytes
                .saturating_sub(startup.peak_live_bytes),
            peak_rss_bytes: report.target.peak_rss_bytes,
            internal_fragmentation: sizes.and_then(|s| s.internal_fragmentation),
            size_class_waste_bytes: sizes
                .and_then(|s| Some(s.usable_bytes?.saturating_sub(s.requested_bytes))),
            lost_events: report.summary.lost_events,
            failed_allocations: report.summary.failed_allocations,
            warnings: report.warnings.clone(),
        }
    }
}

/// Frames name their module by file name (a full path in older reports).
fn file_name(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}
