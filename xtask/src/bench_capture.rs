//! `cargo xtask bench capture`: what `memprof run` costs a real program on each capture path,
//! side by side with heaptrack (Debian's package) in the same run.
//!
//! Workloads: samples/c/churn.c (1,000,000 malloc/free pairs, built without frame pointers),
//! sqlite3 running 200,000 INSERTs in one transaction and then an index, and python3 with
//! `PYTHONMALLOC=malloc` turning 300,000 dicts into JSON and back. Each workload runs bare,
//! under `memprof run --capture uprobes`, under `memprof run --capture preload` and under
//! heaptrack, in interleaved rounds so that noise hits all alike (each round starts one tool
//! later, so that no tool always holds the same place in a round: see
//! [`crate::bench::round_order`]); the table shows medians of wall time, the slowdown of each tool (its time / bare), the ratio of the preload path to
//! heaptrack, and the allocation calls each tool counted (memprof's `summary.allocations`,
//! heaptrack_print's "calls to allocation functions"). With `--baseline MEMPROF`, another
//! build's preload path runs in the same rounds, and its time is compared with this build's.
//! Footprint: the peak RSS of each tool's own processes (memprof's, which includes the ring it
//! shares with the target; heaptrack's heaptrack_interpret and its compressor), and the
//! offline report of each run (`memprof report` of the preload path's recording,
//! heaptrack_print of heaptrack's trace): peak RSS and time.
//! Then a server: redis-server's throughput under redis-benchmark (bench_redis.rs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench::median;
use crate::host::Identity;
use crate::{exec, footprint, samples, setup};

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
    // Each tool's own processes' peak RSS, and what the offline reports cost, per round.
    let mut footprints = vec![vec![Vec::new(); runners.len()]; workloads.len()];
    let mut reports = vec![vec![Vec::new(); runners.len()]; workloads.len()];
    for round in 1..=runs {
        for (w, workload) in workloads.iter().enumerate() {
            for r in crate::bench::round_order(round, runners.len()) {
                let runner = runners[r];
                let out = scratch.join(format!("{}-{}", workload.name, r));
                let binary = match runner {
                    Runner::BaselinePreload => baseline.unwrap_or(&memprof),
                    _ => &memprof,
                };
                let run = run_once(binary, workload, runner, &out)?;
                println!(
                    "  round {round}/{runs} {:<8} {:<16} {:>8.3} s{}{}{}",
                    workload.name,
                    runner.label(),
                    run.secs,
                    run.count
                        .map_or(String::new(), |n| format!("  {n} allocations")),
                    run.footprint.as_ref().map_or(String::new(), |f| format!(
                        "  peak RSS {} MiB",
                        f.total_mib()
                    )),
                    run.report.as_ref().map_or(String::new(), |r| format!(
                        "  (its report: {} MiB, {:.2} s)",
                        r.peak_mib, r.secs
                    ))
                );
                seconds[w][r].push(run.secs);
                counts[w][r] = run.count;
                footprints[w][r].extend(run.footprint);
                reports[w][r].extend(run.report);
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
    print_footprints(&workloads, &footprints, &reports, runs);
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

/// What one run measured.
struct Measured {
    secs: f64,
    /// Allocation calls the tool counted.
    count: Option<u64>,
    /// Peak RSS of the tool's own processes.
    footprint: Option<Footprint>,
    /// The offline report of the run.
    report: Option<OfflineReport>,
}

/// What reading a run's trace or recording into a report cost.
#[derive(Clone, Copy)]
struct OfflineReport {
    peak_mib: u64,
    secs: f64,
}

/// Peak RSS in KiB of a tool's processes, by process.
#[derive(Clone)]
struct Footprint {
    parts: Vec<(&'static str, u64)>,
}

impl Footprint {
    fn total_mib(&self) -> u64 {
        self.parts.iter().map(|(_, kib)| kib).sum::<u64>() / 1024
    }
}

/// heaptrack's own processes: the trace interpreter and whichever compressor it pipes into.
const HEAPTRACK_PROCESSES: [&str; 3] = ["heaptrack_interpret", "zstd", "gzip"];

/// Runs `workload` once under `runner`.
fn run_once(memprof: &Path, workload: &Workload, runner: Runner, out: &Path) -> Result<Measured> {
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
                .arg(&workload.program)
                .env("MEMPROF_TIMINGS", "1");
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
    // /proc is polled only while heaptrack runs: the others' times stay free of it.
    let (output, heaptrack_kib) = if runner == Runner::Heaptrack {
        footprint::watching(&HEAPTRACK_PROCESSES, || exec::output(&mut cmd))
    } else {
        (exec::output(&mut cmd), Vec::new())
    };
    let output = output?;
    let secs = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            exec::shown(&cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let memprof_footprint = || {
        let mib = footprint::memprof_peak_mib(&stderr)?;
        Some(Footprint {
            parts: vec![("memprof", mib * 1024)],
        })
    };
    Ok(match runner {
        Runner::Bare => Measured {
            secs,
            count: None,
            footprint: None,
            report: None,
        },
        Runner::Uprobes | Runner::BaselinePreload => Measured {
            secs,
            count: memprof_allocations(&out.join("report.json")),
            footprint: memprof_footprint(),
            report: None,
        },
        Runner::Preload => Measured {
            secs,
            count: memprof_allocations(&out.join("report.json")),
            footprint: memprof_footprint(),
            report: Some(memprof_report(memprof, out)?),
        },
        Runner::Heaptrack => {
            let parts = HEAPTRACK_PROCESSES.iter().copied().zip(heaptrack_kib);
            let (count, report) = heaptrack_allocations(out)?;
            Measured {
                secs,
                count,
                footprint: Some(Footprint {
                    parts: parts.filter(|&(_, kib)| kib > 0).collect(),
                }),
                report,
            }
        }
    })
}

/// `memprof report` of the run's recording: its peak RSS in MiB and its time.
fn memprof_report(memprof: &Path, out: &Path) -> Result<OfflineReport> {
    let replayed = out.join("replayed");
    let mut cmd = exec::command(memprof);
    cmd.arg("report")
        .arg(out.join("recording.mprof"))
        .arg("--output")
        .arg(&replayed)
        .env("MEMPROF_TIMINGS", "1");
    let start = Instant::now();
    let output = exec::output(&mut cmd)?;
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("`{}` failed: {}", exec::shown(&cmd), stderr.trim());
    }
    let mib = footprint::memprof_peak_mib(&stderr)
        .with_context(|| format!("`{}` printed no peak RSS", exec::shown(&cmd)))?;
    Ok(OfflineReport {
        peak_mib: mib,
        secs,
    })
}

fn print_footprints(
    workloads: &[Workload],
    footprints: &[Vec<Vec<Footprint>>],
    reports: &[Vec<Vec<OfflineReport>>],
    runs: u32,
) {
    let (uprobes, preload, heaptrack) = (1, 2, 3);
    let median_mib = |runs: &[Footprint]| {
        let mib: Vec<f64> = runs.iter().map(|f| f.total_mib() as f64).collect();
        median(&mib)
    };
    println!();
    println!(
        "footprint: peak RSS of each tool's own processes (memprof includes the ring it shares \
         with the target), medians of {runs}"
    );
    println!(
        "{:<8} {:>16} {:>16} {:>16} {:>18}   heaptrack's processes (last round)",
        "workload", "memprof uprobes", "memprof preload", "heaptrack", "preload/heaptrack"
    );
    for (w, workload) in workloads.iter().enumerate() {
        let (u, p, h) = (
            median_mib(&footprints[w][uprobes]),
            median_mib(&footprints[w][preload]),
            median_mib(&footprints[w][heaptrack]),
        );
        let parts = footprints[w][heaptrack].last().map_or(String::new(), |f| {
            let parts: Vec<String> = f
                .parts
                .iter()
                .map(|(name, kib)| format!("{name} {} MiB", kib / 1024))
                .collect();
            parts.join(" + ")
        });
        println!(
            "{:<8} {u:>12.0} MiB {p:>12.0} MiB {h:>12.0} MiB {:>17.2}x   {parts}",
            workload.name,
            p / h
        );
    }
    println!(
        "offline report of the same runs (memprof report of the preload recording, \
         heaptrack_print of heaptrack's trace): peak RSS, time"
    );
    for (w, workload) in workloads.iter().enumerate() {
        let medians = |runs: &[OfflineReport]| {
            let mib: Vec<f64> = runs.iter().map(|r| r.peak_mib as f64).collect();
            let secs: Vec<f64> = runs.iter().map(|r| r.secs).collect();
            (median(&mib), median(&secs))
        };
        let (mm, ms) = medians(&reports[w][preload]);
        let (hm, hs) = medians(&reports[w][heaptrack]);
        println!(
            "{:<8} memprof report {mm:>5.0} MiB {ms:>6.2} s   heaptrack_print {hm:>5.0} MiB \
             {hs:>6.2} s   memory {:.2}x, time {:.2}x",
            workload.name,
            mm / hm,
            ms / hs
        );
    }
}

fn memprof_allocations(report: &Path) -> Option<u64> {
    let text = fs::read_to_string(report).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["summary"]["allocations"].as_u64()
}

/// heaptrack_print's "calls to allocation functions: N" for the trace in `dir`, and
/// heaptrack_print's peak RSS in MiB and time.
fn heaptrack_allocations(dir: &Path) -> Result<(Option<u64>, Option<OfflineReport>)> {
    let Some(trace) = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.to_string_lossy().contains("trace"))
    else {
        return Ok((None, None));
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
    let start = Instant::now();
    let (output, kib) = footprint::watching(&["heaptrack_print"], || exec::output(&mut print));
    let secs = start.elapsed().as_secs_f64();
    let output = output?;
    let text = String::from_utf8_lossy(&output.stdout);
    let count = text.lines().find_map(|line| {
        let rest = line.split_once("calls to allocation functions:")?.1;
        rest.split_whitespace().next()?.parse().ok()
    });
    let report = OfflineReport {
        peak_mib: kib[0] / 1024,
        secs,
    };
    Ok((count, Some(report)))
}
