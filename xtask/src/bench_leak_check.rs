//! `cargo xtask bench leak-check`: how fast the leak check scans, and how long `attach
//! --leak-check` stops a process, on samples/c/bigheap.c (MIB MiB of live 4 KiB blocks full
//! of pseudo-random words and pointers).
//!
//! - `run`: the scan at exit, from the report's `summary.leak_check.scan` (bytes scanned and
//!   seconds, hence GB/s), and the wall time `run` takes with and without the check.
//! - `attach --leak-check`: the heap is built during the window; the pause the report gives
//!   (`paused_secs`: from stopping the first thread to the end of the scan).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::host::Identity;
use crate::{samples, setup};

pub fn run(mib: u64, runs: u32) -> Result<()> {
    if !Identity::current()?.is_root() {
        bail!("bench leak-check runs only as root (memprof loads eBPF probes): rerun with sudo");
    }
    setup::ensure()?.require_all()?;
    println!("== build");
    let memprof = samples::build_memprof()?;
    let bigheap = samples::compile_c("bigheap", "bigheap", &["-O2", "-g", "-fno-builtin"])?;
    let scratch = samples::target_dir()?.join("bench/leak-check");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    println!("== machine: {}", machine());

    let mut with_check = Vec::new();
    let mut without_check = Vec::new();
    let mut throughput = Vec::new();
    let mut scanned = 0;
    let mut pauses = Vec::new();
    for round in 1..=runs {
        let out = scratch.join("run");
        let (wall, report) = run_once(&memprof, &bigheap, mib, &out, &[])?;
        let scan = &report["summary"]["leak_check"]["scan"];
        let bytes = scan["bytes_scanned"].as_u64().context("no scan figures")?;
        let secs = scan["secs"].as_f64().context("no scan time")?;
        scanned = bytes;
        throughput.push(bytes as f64 / secs / 1e9);
        with_check.push(wall);
        let (wall_without, _) = run_once(&memprof, &bigheap, mib, &out, &["--no-leak-check"])?;
        without_check.push(wall_without);
        let paused = attach_once(&memprof, &bigheap, mib, &scratch.join("attach"))?;
        pauses.push(paused);
        println!(
            "  round {round}/{runs}: run {wall:.3} s (without the check {wall_without:.3} s), \
             scan {:.2} GB/s; attach pause {paused:.3} s",
            bytes as f64 / secs / 1e9
        );
    }
    println!();
    println!(
        "heap {mib} MiB in 4 KiB blocks; {:.2} GB scanned at exit",
        scanned as f64 / 1e9
    );
    println!(
        "scan speed (run, at exit):        {:.2} GB/s   (goal: at least 1 GB/s)",
        median(&throughput)
    );
    println!(
        "run wall time:                    {:.3} s with the check, {:.3} s without",
        median(&with_check),
        median(&without_check)
    );
    println!(
        "attach --leak-check pause:        {:.3} s      (goal: under 2 s for 1 GiB)",
        median(&pauses)
    );
    println!("(medians of {runs} rounds)");
    Ok(())
}

/// `memprof run [EXTRA] -- bigheap MIB`: wall seconds and the report.
fn run_once(
    memprof: &Path,
    bigheap: &Path,
    mib: u64,
    out: &Path,
    extra: &[&str],
) -> Result<(f64, Value)> {
    let _ = fs::remove_dir_all(out);
    let started = Instant::now();
    let status = Command::new(memprof)
        .arg("run")
        .args(extra)
        .arg("--output")
        .arg(out)
        .arg("--")
        .arg(bigheap)
        .arg(mib.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running memprof")?;
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("memprof run failed: {status}");
    }
    Ok((wall, read_report(out)?))
}

/// `memprof attach --leak-check` over the window in which bigheap builds its heap: the pause.
fn attach_once(memprof: &Path, bigheap: &Path, mib: u64, out: &Path) -> Result<f64> {
    let _ = fs::remove_dir_all(out);
    let mut target = Command::new(bigheap)
        .arg(mib.to_string())
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting bigheap")?;
    let result = attach_window(memprof, &mut target, out);
    drop(target.stdin.take());
    let _ = target.kill();
    let _ = target.wait();
    result?;
    let report = read_report(out)?;
    report["summary"]["leak_check"]["scan"]["paused_secs"]
        .as_f64()
        .with_context(|| format!("no leak check in the report: {}", report["warnings"]))
}

fn attach_window(memprof: &Path, target: &mut Child, out: &Path) -> Result<()> {
    let lines = line_channel(target.stdout.take().context("bigheap stdout")?);
    wait_for(&lines, "ready")?;
    let mut profiler = Command::new(memprof)
        .arg("attach")
        .arg(target.id().to_string())
        .arg("--leak-check")
        .arg("--output")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting memprof attach")?;
    let messages = line_channel(profiler.stderr.take().context("memprof stderr")?);
    wait_for(&messages, "attached")?;
    target
        .stdin
        .as_mut()
        .context("bigheap stdin")?
        .write_all(b"go\n")?;
    wait_for(&lines, "done")?;
    // SAFETY: kill(2) takes no memory arguments.
    if unsafe { libc::kill(profiler.id() as libc::pid_t, libc::SIGINT) } != 0 {
        bail!(
            "cannot interrupt memprof: {}",
            std::io::Error::last_os_error()
        );
    }
    let status = profiler.wait()?;
    // Keep draining memprof's output so that it never blocks on a full pipe.
    while messages.try_recv().is_ok() {}
    if !status.success() {
        bail!("memprof attach failed: {status}");
    }
    Ok(())
}

fn line_channel(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .with_context(|| format!("no line containing {needle:?}"))?;
        if line.contains(needle) {
            return Ok(());
        }
    }
}

fn read_report(out: &Path) -> Result<Value> {
    let path: PathBuf = out.join("report.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// CPU model and count, for the record.
fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cpus} CPUs")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
