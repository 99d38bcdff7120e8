//! The target's resident set size, sampled for the timeline.

/// The target's resident set size: `/proc/PID/statm`'s second field, in pages.
pub fn read_rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory arguments.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).unwrap_or(4096))
}

/// The peak resident set size of a process (`VmHWM` of /proc/PID/status), in bytes. Read in
/// the exit hook: once the process is reaped the figure is gone.
pub fn peak_rss(pid: nix::unistd::Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tleaks\nVmPeak:\t    2680 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tkthread\n"), None);
        // Our own process has one.
        assert!(peak_rss(nix::unistd::Pid::this()).is_some_and(|bytes| bytes > 0));
    }
}
