//! `cargo xtask bench capture`: what `memprof run` costs a real program on each capture path,
//! side by side with heaptrack (Debian's package) in the same run.
//!
//! Workloads: samples/c/churn.c (1,000,000 malloc/free pairs, built without frame pointers),
//! sqlite3 running 200,000 INSERTs in one transaction and then an index, and python3 with
//! `PYTHONMALLOC=malloc` turning 300,000 dicts into JSON and back. Each workload runs bare,
//! under `memprof run --capture uprobes`, under `memprof run --capture preload` and under
//! heaptrack, in interleaved rounds so that noise hits all alike; the table shows medians of
//! wall time, the slowdown of each tool (its time / bare), the ratio of the preload path to
//! heaptrack, and the allocation calls each tool counted (memprof's `summary.allocations`,
//! heaptrack_print's "calls to allocation functions"). With `--baseline MEMPROF`, another
//! build's preload path runs in the same rounds, and its time is compared with this build's.
//! Then a server: redis-server's throughput under redis-benchmark (bench_redis.rs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench::median;
use crate::host::Identity;
use crate::{exec, samples, setup};

/// One program to profile.
struct Workload {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

/// What runs the workload: bare or under a tool.
#[derive(Clone, Copy, PartialEq)]
enum Runner {
    Bare,
    Uprobes,
    Preload,
    Heaptrack,
    /// `--baseline`'s memprof, preload path.
    BaselinePreload,
}

impl Runner {
    fn label(self) -> &'static str {
        match self {
            Runner::Bare => "bare",
            Runner::Uprobes => "memprof uprobes",
            Runner::Preload => "memprof preload",
            Runner::Heaptrack => "heaptrack",
            Runner::BaselinePreload => "baseline preload",
        }
    }
}

pub fn run(runs: u32, baseline: Option<&Path>) -> Result<()> {
    if !Identity::current()?.is_root() {
        bail!("bench capture runs only as root (memprof loads eBPF probes): rerun with sudo");
    }
    setup::ensure()?.require_all()?;
    println!("== build");
    let memprof = samples::build_memprof()?;
    exec::run(exec::cargo().current_dir(samples::root()?).args([
        "build",
        "--release",
        "--package",
        "memprof-capture",
    ]))?;
    let scratch = samples::target_dir()?.join("bench/capture");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let workloads = workloads(&scratch)?;
    let mut runners = vec![
        Runner::Bare,
        Runner::Uprobes,
        Runner::Preload,
        Runner::Heaptrack,
    ];
    if let Some(baseline) = baseline {
        if !baseline.is_file() {
            bail!("--baseline {}: no such memprof", baseline.display());
        }
        runners.push(Runner::BaselinePreload);
    }

    // seconds[workload][runner] over the rounds; counts from the last round.
    let mut seconds = vec![vec![Vec::new(); runners.len()]; workloads.len()];
    let mut counts = vec![vec![None; runners.len()]; workloads.len()];
    for round in 1..=runs {
        for (w, workload) in workloads.iter().enumerate() {
            for (r, &runner) in runners.iter().enumerate() {
                let out = scratch.join(format!("{}-{}", workload.name, r));
                let binary = match runner {
                    Runner::BaselinePreload => baseline.unwrap_or(&memprof),
                    _ => &memprof,
                };
                let (secs, count) = run_once(binary, workload, runner, &out)?;
                println!(
                    "  round {round}/{runs} {:<8} {:<16} {secs:>8.3} s{}",
                    workload.name,
                    runner.label(),
                    count.map_or(String::new(), |n| format!("  {n} allocations"))
                );
                seconds[w][r].push(secs);
                counts[w][r] = count;
            }
        }
    }

    println!();
    println!(
        "{:<8} {:>9} {:>18} {:>18} {:>18} {:>16}",
        "workload", "bare", "memprof uprobes", "memprof preload", "heaptrack", "preload/heaptrack"
    );
    for (w, workload) in workloads.iter().enumerate() {
        let times: Vec<f64> = seconds[w].iter().map(|s| median(s)).collect();
        let bare = times[0];
        let cell = |r: usize| format!("{:.3} s {:>5.1}x", times[r], times[r] / bare);
        println!(
            "{:<8} {:>7.3} s {:>18} {:>18} {:>18} {:>15.2}x",
            workload.name,
            bare,
            cell(1),
            cell(2),
            cell(3),
            (times[2] - bare) / (times[3] - bare)
        );
        let shown = |count: Option<u64>| count.map_or("?".to_owned(), |n| n.to_string());
        println!(
            "{:<8} allocation calls: uprobes {}, preload {}, heaptrack {}",
            "",
            shown(counts[w][1]),
            shown(counts[w][2]),
            shown(counts[w][3])
        );
        if runners.len() > 4 {
            println!(
                "{:<8} baseline preload {}, {} allocations: this build adds {:.2}x the \
                 baseline's time",
                "",
                cell(4),
                shown(counts[w][4]),
                (times[2] - bare) / (times[4] - bare)
            );
        }
    }
    println!(
        "(slowdown = median wall time / bare; preload/heaptrack = the time each adds to the \
         bare run, medians of {runs})"
    );
    println!();
    println!("== redis");
    crate::bench_redis::run(&memprof, baseline, &scratch, runs)
}

fn workloads(scratch: &Path) -> Result<Vec<Workload>> {
    let churn = samples::compile_c(
        "churn",
        "churn-nofp",
        &["-O2", "-g", "-fno-builtin", "-fomit-frame-pointer"],
    )?;
    // 200,000 separate INSERT statements in one transaction, then an index over the text.
    let script = scratch.join("inserts.sql");
    let mut sql = String::from("BEGIN;\nCREATE TABLE t(id INTEGER, name TEXT);\n");
    for i in 0..200_000 {
        sql.push_str(&format!("INSERT INTO t VALUES({i}, 'row number {i}');\n"));
    }
    sql.push_str("CREATE INDEX t_name ON t(name);\nCOMMIT;\n");
    fs::write(&script, sql).with_context(|| format!("writing {}", script.display()))?;
    Ok(vec![
        Workload {
            name: "churn",
            program: churn,
            args: vec!["1000000".into()],
            env: vec![],
        },
        Workload {
            name: "sqlite3",
            program: "/usr/bin/sqlite3".into(),
            args: vec![":memory:".into(), format!(".read {}", script.display())],
            env: vec![],
        },
        Workload {
            name: "python3",
            program: "/usr/bin/python3".into(),
            args: vec![
                "-c".into(),
                "import json\nd = [{'id': i, 'name': str(i), 'tags': [i, i + 1]} for i in \
                 range(300000)]\nassert len(json.loads(json.dumps(d))) == 300000"
                    .into(),
            ],
            env: vec![("PYTHONMALLOC", "malloc")],
        },
    ])
}

/// Runs `workload` once under `runner`; its wall time and the allocation calls counted.
fn run_once(
    memprof: &Path,
    workload: &Workload,
    runner: Runner,
    out: &Path,
) -> Result<(f64, Option<u64>)> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    let mut cmd = match runner {
        Runner::Bare => exec::command(&workload.program),
        Runner::Uprobes | Runner::Preload | Runner::BaselinePreload => {
            let mut cmd = exec::command(memprof);
            let path = if runner == Runner::Uprobes {
                "uprobes"
            } else {
                "preload"
            };
            cmd.args(["run", "--capture", path, "--output"])
                .arg(out)
                .arg("--")
                .arg(&workload.program);
            cmd
        }
        Runner::Heaptrack => {
            fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            let mut cmd = exec::command("heaptrack");
            cmd.arg("-o").arg(out.join("trace")).arg(&workload.program);
            cmd
        }
    };
    cmd.args(&workload.args)
        .envs(workload.env.iter().copied())
        .stdin(Stdio::null());
    let start = Instant::now();
    let output = exec::output(&mut cmd)?;
    let secs = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            exec::shown(&cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let count = match runner {
        Runner::Bare => None,
        Runner::Uprobes | Runner::Preload | Runner::BaselinePreload => {
            memprof_allocations(&out.join("report.json"))
        }
        Runner::Heaptrack => heaptrack_allocations(out)?,
    };
    Ok((secs, count))
}

fn memprof_allocations(report: &Path) -> Option<u64> {
    let text = fs::read_to_string(report).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["summary"]["allocations"].as_u64()
}

/// heaptrack_print's "calls to allocation functions: N" for the trace in `dir`.
fn heaptrack_allocations(dir: &Path) -> Result<Option<u64>> {
    let Some(trace) = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.to_string_lossy().contains("trace"))
    else {
        return Ok(None);
    };
    let mut print = Command::new("heaptrack_print");
    print
        .args([
            "--print-peaks",
            "0",
            "--print-allocators",
            "0",
            "--print-leaks",
            "0",
        ])
        .args(["--print-temporary", "0"])
        .arg(&trace);
    let output = exec::output(&mut print)?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().find_map(|line| {
        let rest = line.split_once("calls to allocation functions:")?.1;
        rest.split_whitespace().next()?.parse().ok()
    }))
}
