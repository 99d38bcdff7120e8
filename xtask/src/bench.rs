//! `cargo xtask bench overhead`: what memprof adds to a program that only mallocs and frees.
//!
//! samples/c/churn.c does N malloc/free pairs. Three set-ups are timed: (a) a frame-pointer
//! build under `--unwind fp` (kernel frame-pointer walk), (b) the same build under
//! `--unwind dwarf` (stack copy unwound by memprof), (c) a build without frame pointers under
//! `--unwind dwarf`. Each is timed bare and under `memprof run`, runs interleaved so that noise
//! from other work on the machine hits both alike. The added cost per pair is the difference
//! of the medians (profiled minus bare) divided by N. memprof's fixed cost (attach, probe setup, detach, report) is measured
//! apart with N = 0, and the time memprof spends on the report (symbolization included) is
//! read from its `MEMPROF_TIMINGS` output.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::host::Identity;
use crate::samples::{self, relative_to};
use crate::{exec, setup};

struct Variant {
    label: &'static str,
    binary: PathBuf,
    /// memprof's `--unwind` mode.
    unwind: &'static str,
}

struct Measured {
    bare: Vec<f64>,
    profiled: Vec<f64>,
    lost: Vec<Option<u64>>,
    /// Seconds memprof spent writing the report, per profiled run (None if not printed).
    report: Vec<Option<f64>>,
}

pub fn overhead(pairs: u64, runs: u32) -> Result<()> {
    if !Identity::current()?.is_root() {
        bail!("bench overhead runs only as root (memprof loads eBPF probes): rerun with sudo");
    }
    setup::ensure()?.require_all()?;
    println!("== build");
    let memprof = samples::build_memprof()?;
    let mut builds = Vec::new();
    for (output, fp_flag) in [
        ("churn-fp", "-fno-omit-frame-pointer"),
        ("churn-nofp", "-fomit-frame-pointer"),
    ] {
        let flags = ["-O2", "-g", "-fno-builtin", fp_flag];
        builds.push(samples::compile_c("churn", output, &flags)?);
    }
    let variants = [
        Variant {
            label: "(a) fp build, fp",
            binary: builds[0].clone(),
            unwind: "fp",
        },
        Variant {
            label: "(b) fp build, dwarf",
            binary: builds[0].clone(),
            unwind: "dwarf",
        },
        Variant {
            label: "(c) nofp, dwarf",
            binary: builds[1].clone(),
            unwind: "dwarf",
        },
    ];
    let scratch = samples::target_dir()?.join("bench/overhead");

    let mut results = Vec::new();
    for variant in &variants {
        println!("== {} ({pairs} pairs, {runs} runs)", variant.label);
        let measured = measure(&memprof, variant, pairs, runs, &scratch)?;
        results.push((variant, measured));
    }
    println!(
        "== fixed cost ({}, 0 pairs, {runs} runs)",
        variants[2].label
    );
    let fixed = measure(&memprof, &variants[2], 0, runs, &scratch)?;

    println!();
    println!(
        "{:<20} {:>10} {:>12} {:>12} {:>16} {:>10}  lost events per profiled run",
        "churn build, unwind", "pairs", "bare", "profiled", "added per pair", "report"
    );
    let mut per_pair = Vec::new();
    for (variant, m) in &results {
        let (bare, profiled) = (median(&m.bare), median(&m.profiled));
        let cost = (profiled - bare) / pairs.max(1) as f64 * 1e6;
        per_pair.push(cost);
        let shown = if pairs == 0 {
            "-".to_owned()
        } else {
            format!("{cost:.3} us")
        };
        let lost: Vec<String> = m
            .lost
            .iter()
            .map(|lost| lost.map_or("?".to_owned(), |n| n.to_string()))
            .collect();
        let report: Vec<f64> = m.report.iter().flatten().copied().collect();
        println!(
            "{:<20} {:>10} {:>10.3} s {:>10.3} s {:>16} {:>8.3} s  {}",
            variant.label,
            pairs,
            bare,
            profiled,
            shown,
            median(&report),
            lost.join(" ")
        );
    }
    if pairs > 0 && per_pair[0] > 0.0 {
        println!(
            "(c) / (a): {:.2}x (target: at most 2x); (b) / (a): {:.2}x",
            per_pair[2] / per_pair[0],
            per_pair[1] / per_pair[0]
        );
    }
    let (bare, profiled) = (median(&fixed.bare), median(&fixed.profiled));
    println!(
        "memprof fixed cost (start+stop, churn 0): {:.3} s (profiled {profiled:.3} s - bare {bare:.3} s)",
        profiled - bare
    );
    Ok(())
}

/// Times `churn pairs` bare and under memprof, `runs` times each, alternating.
fn measure(
    memprof: &Path,
    variant: &Variant,
    pairs: u64,
    runs: u32,
    scratch: &Path,
) -> Result<Measured> {
    let root = samples::root()?;
    let churn_shown = relative_to(&variant.binary, &root);
    let mut measured = Measured {
        bare: Vec::new(),
        profiled: Vec::new(),
        lost: Vec::new(),
        report: Vec::new(),
    };
    for run in 1..=runs {
        let out_dir = scratch.join(format!("run-{run}"));
        if out_dir.exists() {
            fs::remove_dir_all(&out_dir)
                .with_context(|| format!("removing {}", out_dir.display()))?;
        }
        let mut bare = exec::command(churn_shown);
        bare.current_dir(&root).arg(pairs.to_string());
        let mut profiled = exec::command(relative_to(memprof, &root));
        profiled
            .current_dir(&root)
            .env("MEMPROF_TIMINGS", "1")
            .arg("run")
            // The probe path's costs per unwinding mode (bench capture compares the paths).
            .args(["--capture", "uprobes"])
            .arg("--unwind")
            .arg(variant.unwind)
            .arg("--output")
            .arg(&out_dir)
            .arg("--")
            .arg(churn_shown)
            .arg(pairs.to_string());
        let (bare_secs, _) = timed(&mut bare)?;
        let (profiled_secs, stderr) = timed(&mut profiled)?;
        let lost = lost_events(&out_dir.join("report.json"));
        let report = report_secs(&stderr);
        println!(
            "  run {run}/{runs}: bare {bare_secs:.3} s, profiled {profiled_secs:.3} s, report {}, lost events {}",
            report.map_or("?".to_owned(), |s| format!("{s:.3} s")),
            lost.map_or("?".to_owned(), |n| n.to_string())
        );
        measured.bare.push(bare_secs);
        measured.profiled.push(profiled_secs);
        measured.lost.push(lost);
        measured.report.push(report);
    }
    Ok(measured)
}

/// Wall time of `cmd` in seconds and its stderr; its output is kept out of the table unless
/// it fails.
fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    cmd.stdin(Stdio::null());
    let start = Instant::now();
    let out = exec::output(cmd)?;
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            exec::shown(cmd),
            out.status,
            stderr.trim()
        );
    }
    Ok((secs, stderr))
}

/// The seconds of memprof's "report written in 12.3ms" line (a Rust Duration's Debug form).
fn report_secs(stderr: &str) -> Option<f64> {
    let text = stderr
        .lines()
        .find_map(|line| line.strip_prefix("report written in "))?
        .trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let per_second = match unit {
        "s" => 1.0,
        "ms" => 1e3,
        "µs" | "us" => 1e6,
        "ns" => 1e9,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? / per_second)
}

/// summary.lost_events of a report, None when it cannot be read.
pub fn lost_events(report: &Path) -> Option<u64> {
    let text = fs::read_to_string(report).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["summary"]["lost_events"].as_u64()
}

/// The order of `count` setups in round `round` (from 1): each round starts one later. Where
/// a run sits in the round shows in its time: python3 on the preload path under two builds,
/// alternately first in 6 pairs of runs, was faster in whichever run came second all 6 times
/// (by 0.2-1.0 s of 5-7 s), so a fixed order charged the same tools every round.
pub fn round_order(round: u32, count: usize) -> impl Iterator<Item = usize> {
    let first = (round as usize - 1) % count.max(1);
    (0..count).map(move |k| (first + k) % count)
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::{median, report_secs, round_order};

    #[test]
    fn each_round_runs_every_setup_once_starting_one_later() {
        let rounds: Vec<Vec<usize>> = (1..=6)
            .map(|round| round_order(round, 5).collect())
            .collect();
        assert_eq!(rounds[0], [0, 1, 2, 3, 4]);
        assert_eq!(rounds[1], [1, 2, 3, 4, 0]);
        assert_eq!(rounds[5], [0, 1, 2, 3, 4]);
        for order in &rounds {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3, 4]);
        }
    }

    #[test]
    fn report_time_from_duration_debug_output() {
        assert_eq!(report_secs("x\nreport written in 1.5s\n"), Some(1.5));
        assert_eq!(report_secs("report written in 250ms"), Some(0.25));
        assert_eq!(report_secs("report written in 20µs"), Some(20e-6));
        assert_eq!(report_secs("report written in soon"), None);
        assert_eq!(report_secs("nothing"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
