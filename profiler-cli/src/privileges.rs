//! Checks that name a missing privilege or kernel feature before anything is loaded.
use std::{fs, path::Path};

use anyhow::{Result, bail};

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// memprof needs to load BPF programs and open uprobe perf events.
pub fn check() -> Result<()> {
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        bail!(
            "this kernel has no uprobe support (/sys/bus/event_source/devices/uprobe is missing)"
        );
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let effective = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !(has(CAP_BPF) && has(CAP_PERFMON)) {
        bail!("missing privileges: memprof needs root or CAP_BPF and CAP_PERFMON (try sudo)");
    }
    Ok(())
}

fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}
