//! `cargo xtask bench overhead`: what memprof adds to a program that only mallocs and frees.
//!
//! samples/c/churn.c does N malloc/free pairs. It is built with and without frame pointers (the
//! stack walk differs in cost), and each build is timed bare and under `memprof run`, runs
//! interleaved so that noise from other work on the machine hits both alike. The added cost per
//! pair is (median profiled - median bare) / N. memprof's fixed cost (attach, probe setup,
//! detach, report) is measured apart with N = 0.

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
}

struct Measured {
    bare: Vec<f64>,
    profiled: Vec<f64>,
    lost: Vec<Option<u64>>,
}

pub fn overhead(pairs: u64, runs: u32) -> Result<()> {
    if !Identity::current()?.is_root() {
        bail!("bench overhead runs only as root (memprof loads eBPF probes): rerun with sudo");
    }
    setup::ensure()?.require_all()?;
    println!("== build");
    let memprof = samples::build_memprof()?;
    let mut variants = Vec::new();
    for (label, output, fp_flag) in [
        ("frame pointers", "churn-fp", "-fno-omit-frame-pointer"),
        ("no frame pointers", "churn-nofp", "-fomit-frame-pointer"),
    ] {
        let flags = ["-O2", "-g", "-fno-builtin", fp_flag];
        let binary = samples::compile_c("churn", output, &flags)?;
        variants.push(Variant { label, binary });
    }
    let scratch = samples::target_dir()?.join("bench/overhead");

    let mut results = Vec::new();
    for variant in &variants {
        println!("== {} ({pairs} pairs, {runs} runs)", variant.label);
        let measured = measure(&memprof, &variant.binary, pairs, runs, &scratch)?;
        results.push((variant, measured));
    }
    println!(
        "== fixed cost ({}, 0 pairs, {runs} runs)",
        variants[0].label
    );
    let fixed = measure(&memprof, &variants[0].binary, 0, runs, &scratch)?;

    println!();
    println!(
        "{:<18} {:>10} {:>12} {:>12} {:>16}  lost events per profiled run",
        "churn build", "pairs", "bare", "profiled", "added per pair"
    );
    for (variant, m) in &results {
        let (bare, profiled) = (median(&m.bare), median(&m.profiled));
        let per_pair = if pairs == 0 {
            "-".to_owned()
        } else {
            format!("{:.3} us", (profiled - bare) / pairs as f64 * 1e6)
        };
        let lost: Vec<String> = m
            .lost
            .iter()
            .map(|lost| lost.map_or("?".to_owned(), |n| n.to_string()))
            .collect();
        println!(
            "{:<18} {:>10} {:>10.3} s {:>10.3} s {:>16}  {}",
            variant.label,
            pairs,
            bare,
            profiled,
            per_pair,
            lost.join(" ")
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
    churn: &Path,
    pairs: u64,
    runs: u32,
    scratch: &Path,
) -> Result<Measured> {
    let root = samples::root()?;
    let churn_shown = relative_to(churn, &root);
    let mut measured = Measured {
        bare: Vec::new(),
        profiled: Vec::new(),
        lost: Vec::new(),
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
            .arg("run")
            .arg("--output")
            .arg(&out_dir)
            .arg("--")
            .arg(churn_shown)
            .arg(pairs.to_string());
        let bare_secs = timed(&mut bare)?;
        let profiled_secs = timed(&mut profiled)?;
        let lost = lost_events(&out_dir.join("report.json"));
        println!(
            "  run {run}/{runs}: bare {bare_secs:.3} s, profiled {profiled_secs:.3} s, lost events {}",
            lost.map_or("?".to_owned(), |n| n.to_string())
        );
        measured.bare.push(bare_secs);
        measured.profiled.push(profiled_secs);
        measured.lost.push(lost);
    }
    Ok(measured)
}

/// Wall time of `cmd` in seconds; its output is kept out of the table unless it fails.
fn timed(cmd: &mut Command) -> Result<f64> {
    cmd.stdin(Stdio::null());
    let start = Instant::now();
    let out = exec::output(cmd)?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            exec::shown(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(secs)
}

/// summary.lost_events of a report, None when it cannot be read.
fn lost_events(report: &Path) -> Option<u64> {
    let text = fs::read_to_string(report).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["summary"]["lost_events"].as_u64()
}

fn median(values: &[f64]) -> f64 {
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
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
