//! Peak resident memory of the processes a benchmark compares: memprof's own (it prints its
//! getrusage peak with `MEMPROF_TIMINGS=1`) and a reference tool's helper processes, whose
//! VmHWM (the same high-water mark) is read from /proc while the command runs.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often /proc is read. VmHWM only grows, so a process is missed only if it starts and
/// ends between two reads, and one read before its exit misses at most this much growth.
const POLL: Duration = Duration::from_millis(10);

/// Runs `run` while watching every process whose name is one of `names` (as /proc shows it,
/// cut to 15 bytes); returns its result and each name's largest VmHWM in KiB (0: never seen).
pub fn watching<R>(names: &[&str], run: impl FnOnce() -> R) -> (R, Vec<u64>) {
    let shown: Vec<String> = names.iter().map(|name| comm_of(name)).collect();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peaks_kib: HashMap<String, u64> = HashMap::new();
            loop {
                let last = done.load(Ordering::Acquire);
                for (comm, kib) in high_water_marks(&shown) {
                    let peak = peaks_kib.entry(comm).or_default();
                    *peak = (*peak).max(kib);
                }
                if last {
                    break shown
                        .iter()
                        .map(|comm| peaks_kib.get(comm).copied().unwrap_or(0))
                        .collect::<Vec<u64>>();
                }
                std::thread::sleep(POLL);
            }
        })
    };
    let result = run();
    done.store(true, Ordering::Release);
    let peaks = poller.join().expect("the poller does not panic");
    (result, peaks)
}

/// The kernel keeps the first 15 bytes of a program's name.
fn comm_of(name: &str) -> String {
    name.chars().take(15).collect()
}

/// (name, VmHWM in KiB) of each live process named in `names`.
fn high_water_marks(names: &[String]) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(comm) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        if !names.iter().any(|name| name == comm) {
            continue;
        }
        let Ok(status) = fs::read_to_string(path.join("status")) else {
            continue;
        };
        if let Some(kib) = vm_hwm_kib(&status) {
            found.push((comm.to_owned(), kib));
        }
    }
    found
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// memprof's own peak from its `MEMPROF_TIMINGS=1` line "memprof itself: ... peak RSS N MiB".
pub fn memprof_peak_mib(stderr: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("memprof itself:"))?;
    let rest = line.split_once("peak RSS ")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memprofs_line_and_vm_hwm() {
        let stderr = "report written in 1 s\nmemprof itself: 5.998 s user, 1.556 s system, \
                      peak RSS 481 MiB\n";
        assert_eq!(memprof_peak_mib(stderr), Some(481));
        assert_eq!(memprof_peak_mib("nothing"), None);
        assert_eq!(vm_hwm_kib("Name:\tx\nVmHWM:\t  2048 kB\n"), Some(2048));
        assert_eq!(comm_of("heaptrack_interpret"), "heaptrack_inter");
    }

    #[test]
    fn watches_a_real_process() {
        let ((), peaks) = watching(&["sleep"], || {
            std::process::Command::new("sleep")
                .arg("0.3")
                .status()
                .expect("sleep runs");
        });
        assert!(
            peaks[0] > 0 && peaks[0] < 64 << 10,
            "sleep's peak: {} KiB",
            peaks[0]
        );
        let child = std::process::Command::new("sleep").arg("0.3").spawn();
        let mut child = child.expect("sleep runs");
        let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        assert!(vm_hwm_kib(&status).is_some_and(|kib| kib > 0));
        child.wait().unwrap();
    }
}
