//! `cargo xtask bench report`: how fast `memprof report` replays a recording, and that its
//! memory does not grow with the number of events.
//!
//! The recordings are synthetic, deterministic churn (`memprof synthesize-recording`: a
//! bounded live set from a few dozen stacks, written through the same recorder and writer a
//! session uses), so no root is needed and every run replays the same events.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{exec, samples};

/// Target from the brief: events replayed per second on one core.
const TARGET_EVENTS_PER_SEC: f64 = 10e6;
/// Replays per recording: the table shows the median time (and the highest peak RSS), so
/// that one run slowed by other work on the machine does not decide the figure.
const RUNS: usize = 3;

/// Replays recordings of `sizes` events; with `baseline` (another build's memprof), that one
/// replays each in the same rounds, interleaved, for a before/after of a change.
pub fn run(sizes: &[u64], baseline: Option<&std::path::Path>) -> Result<()> {
    println!("== build");
    let memprof = samples::build_memprof()?;
    let scratch = samples::target_dir()?.join("bench/report");
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let mut rows = Vec::new();
    for &events in sizes {
        let file = scratch.join(format!("churn-{events}.mprof"));
        println!("== {events} events");
        exec::run(
            exec::command(&memprof)
                .args(["synthesize-recording", "--events", &events.to_string()])
                .arg(&file),
        )?;
        let bytes = std::fs::metadata(&file)?.len();
        let builds: Vec<(&str, &std::path::Path)> = std::iter::once(("memprof", &*memprof))
            .chain(baseline.map(|path| ("baseline", path)))
            .collect();
        let mut times = vec![Vec::with_capacity(RUNS); builds.len()];
        let mut peaks = vec![0; builds.len()];
        for _ in 0..RUNS {
            for (index, (_, binary)) in builds.iter().enumerate() {
                let mut cmd = exec::command(binary);
                cmd.arg("report")
                    .arg(&file)
                    .args(["--format", "json", "--output"])
                    .arg(scratch.join("out"));
                let (secs, peak) = timed_with_peak_rss(&mut cmd)?;
                times[index].push(secs);
                peaks[index] = peaks[index].max(peak);
            }
        }
        for (index, (name, _)) in builds.iter().enumerate() {
            rows.push((
                *name,
                events,
                bytes,
                median(&mut times[index]),
                peaks[index],
            ));
        }
    }
    println!();
    println!("replay: median of {RUNS} runs; peak RSS: the highest of them");
    println!("| build | events | file | bytes/event | replay | events/s | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &(name, events, bytes, secs, peak_kib) in &rows {
        let rate = events as f64 / secs;
        println!(
            "| {name} | {events} | {:.1} MiB | {:.2} | {secs:.2} s | {:.1} M{} | {:.1} MiB |",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / events as f64,
            rate / 1e6,
            if rate < TARGET_EVENTS_PER_SEC {
                " (below 10 M)"
            } else {
                ""
            },
            peak_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// The median of `values` (the middle one; `values` is not empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `cmd` to completion; returns its wall time and its own peak RSS in KiB (wait4's
/// rusage of that one child, not of every child xtask ran).
fn timed_with_peak_rss(cmd: &mut Command) -> Result<(f64, i64)> {
    println!("$ {}", exec::shown(cmd));
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exec::shown(cmd)))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into `status` and `usage`, both valid for writes; it reaps the
    // child, which std's Child (dropped without wait) does not touch again.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    if waited != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("`{}` failed (wait status {status})", exec::shown(cmd));
    }
    Ok((secs, usage.ru_maxrss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_peak_of_its_own_child() {
        // A child that touches 64 MiB reports at least that as its peak.
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            "b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096])",
        ]);
        let (_, peak_kib) = timed_with_peak_rss(&mut cmd).unwrap();
        assert!(peak_kib >= 64 * 1024, "{peak_kib} KiB");
        let mut cmd = Command::new("true");
        let (_, small) = timed_with_peak_rss(&mut cmd).unwrap();
        assert!(
            small < 64 * 1024,
            "{small} KiB: the previous child's peak leaked in"
        );
    }

    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [0.9]), 0.9);
    }

    #[test]
    fn reports_a_failing_command() {
        let err = timed_with_peak_rss(&mut Command::new("false")).unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
    }
}
