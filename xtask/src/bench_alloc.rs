//! `cargo xtask bench alloc`: the project's allocator against glibc, jemalloc, mimalloc and
//! tcmalloc, on two workloads:
//!
//! - samples/c/allocbench.c: single- and two-thread malloc/free throughput, and resident
//!   memory after a fragmenting workload;
//! - the sample server (release build, the allocator LD_PRELOADed) under the release load
//!   generator with a fixed seed and request count: the loadgen's ops/s, the server's CPU time
//!   (user + system; steadier than ops/s on a busy machine, where scheduling moves throughput),
//!   its minor page faults (each a first touch of a page the allocator had not kept resident)
//!   and its peak RSS (VmHWM), read just before it is shut down;
//! - the same server's allocation calls, recorded once by memprof (glibc, the same seeded
//!   load) and replayed by samples/c/allocreplay.c under each allocator (server_trace.rs): the
//!   allocator's own speed on the server's exact requests, which the live server cannot show
//!   because loopback TCP takes most of its CPU time; and how far the replay raises the peak RSS.
//!
//! Runs are interleaved across allocators so that noise hits all alike; the table shows
//! medians, with ratios of ours to the others.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};

use anyhow::{Context, Result, bail, ensure};

use crate::host::Identity;
use crate::{bench::median, exec, samples, server_trace, setup};

struct Allocator {
    name: &'static str,
    /// None: glibc, nothing preloaded.
    preload: Option<PathBuf>,
}

/// The measurements, per run, in table order: single-thread and two-thread pairs per second,
/// VmRSS and VmHWM (KiB) after the fragmenting workload, the server's requests per second, CPU
/// time (ms), minor page faults and peak RSS (KiB), the replayed server trace's calls per second
/// and the peak RSS it added (KiB).
const COLUMNS: [&str; 10] = [
    "1 thread op/s",
    "2 threads op/s",
    "frag RSS KiB",
    "frag HWM KiB",
    "server op/s",
    "server CPU ms",
    "server faults",
    "server HWM KiB",
    "replay op/s",
    "replay peak KiB",
];

/// Calls replayed per replay run: the trace is replayed as many times as it takes.
const REPLAYED_CALLS: u64 = 25_000_000;

/// Requests per server run (2-5 s on a 2-core VM), split over the loadgen's connections.
const SERVER_REQUESTS: &str = "200000";
const SERVER_SEED: &str = "7";

const SYSTEM_LIBS: &str = "/usr/lib/x86_64-linux-gnu";

/// The binaries the benchmark runs.
struct Programs {
    bench: PathBuf,
    server: PathBuf,
    loadgen: PathBuf,
    replay: PathBuf,
}

pub fn run(ops: u64, runs: u32) -> Result<()> {
    if !Identity::current()?.is_root() {
        bail!(
            "bench alloc runs only as root (memprof records the server's allocations with eBPF \
             probes): rerun with sudo"
        );
    }
    setup::ensure()?.require_all()?;
    println!("== build");
    let memprof = samples::build_memprof()?;
    let root = samples::root()?;
    exec::run(exec::cargo().current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "memprof-alloc-preload",
        "--package",
        "memprof-sample-server",
        "--package",
        "memprof-loadgen",
    ]))?;
    let release = samples::target_dir()?.join("release");
    let programs = Programs {
        bench: samples::compile_c("allocbench", "allocbench", &["-O2", "-pthread"])?,
        server: release.join("memprof-sample-server"),
        loadgen: release.join("memprof-loadgen"),
        replay: samples::compile_c("allocreplay", "allocreplay", &["-O2"])?,
    };
    let allocators = allocators(release.join("libmemprof_alloc.so"))?;

    println!("== record the server's allocations (glibc, seed {SERVER_SEED})");
    let scratch = samples::target_dir()?.join("bench/alloc");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let trace = server_trace::record(
        &memprof,
        &programs.server,
        &programs.loadgen,
        SERVER_SEED,
        &scratch,
    )?;
    let repeat = REPLAYED_CALLS.div_ceil(trace.ops.max(1));
    println!(
        "{}: {} calls, replayed {repeat} times per run",
        trace.path.display(),
        trace.ops
    );

    println!(
        "== measure ({ops} pairs per thread; server: {SERVER_REQUESTS} requests, seed \
         {SERVER_SEED}; {runs} runs, medians)"
    );
    let mut results: Vec<Vec<Vec<f64>>> = allocators
        .iter()
        .map(|_| vec![Vec::new(); COLUMNS.len()])
        .collect();
    let replay = (trace.path.as_path(), repeat);
    for _ in 0..runs {
        for (allocator, runs) in allocators.iter().zip(&mut results) {
            let measured = measure(&programs, allocator, ops, replay)?;
            for (column, value) in measured.into_iter().enumerate() {
                runs[column].push(value);
            }
        }
    }

    let medians: Vec<Vec<f64>> = results
        .iter()
        .map(|runs| runs.iter().map(|values| median(values)).collect())
        .collect();
    print!("{:<10}", "allocator");
    COLUMNS.iter().for_each(|c| print!(" {c:>15}"));
    println!();
    for (allocator, m) in allocators.iter().zip(&medians) {
        print!("{:<10}", allocator.name);
        m.iter().for_each(|v| print!(" {v:>15.0}"));
        println!();
    }
    let ours = medians.last().context("no allocators")?;
    println!(
        "memprof's allocator relative to (throughput: >1 is faster; CPU time and memory: <1 is \
         less):"
    );
    for (allocator, m) in allocators.iter().zip(&medians).take(allocators.len() - 1) {
        print!("  vs {:<9}", allocator.name);
        for (column, (o, t)) in COLUMNS.iter().zip(ours.iter().zip(m)) {
            print!("  {} x{:.2}", short(column), o / t);
        }
        println!();
    }
    Ok(())
}

/// glibc (nothing preloaded), the system's other allocators, and ours last.
fn allocators(ours: PathBuf) -> Result<Vec<Allocator>> {
    let mut allocators = vec![Allocator {
        name: "glibc",
        preload: None,
    }];
    for (name, file) in [
        ("jemalloc", "libjemalloc.so.2"),
        ("mimalloc", "libmimalloc.so.2"),
        ("tcmalloc", "libtcmalloc_minimal.so.4"),
    ] {
        let path = PathBuf::from(SYSTEM_LIBS).join(file);
        if !path.is_file() {
            bail!("{} is missing: run `cargo xtask setup`", path.display());
        }
        allocators.push(Allocator {
            name,
            preload: Some(path),
        });
    }
    ensure!(ours.is_file(), "{} was not built", ours.display());
    allocators.push(Allocator {
        name: "memprof",
        preload: Some(ours),
    });
    Ok(allocators)
}

/// A column's name without its unit, for the ratio lines.
fn short(column: &str) -> &str {
    column.trim_end_matches(" op/s").trim_end_matches(" KiB")
}

/// One run of every measurement under `allocator`, in [`COLUMNS`] order.
fn measure(
    programs: &Programs,
    allocator: &Allocator,
    ops: u64,
    (trace, repeat): (&Path, u64),
) -> Result<Vec<f64>> {
    let ops = ops.to_string();
    let bench = &programs.bench;
    let frag = one(bench, allocator, &["frag"])?;
    let server = server_once(programs, allocator)?;
    let trace = trace.to_string_lossy();
    let replayed = one(
        &programs.replay,
        allocator,
        &[trace.as_ref(), &repeat.to_string()],
    )?;
    Ok(vec![
        field(&one(bench, allocator, &["st", &ops])?, "ops_per_sec")?,
        field(&one(bench, allocator, &["mt", &ops])?, "ops_per_sec")?,
        field(&frag, "rss_kib")?,
        field(&frag, "hwm_kib")?,
        server.ops,
        server.cpu_ms,
        server.faults,
        server.hwm_kib,
        field(&replayed, "ops_per_sec")?,
        field(&replayed, "peak_kib")?,
    ])
}

/// What one server run measured.
struct ServerRun {
    ops: f64,
    cpu_ms: f64,
    faults: f64,
    hwm_kib: f64,
}

/// One server run under `allocator`.
fn server_once(programs: &Programs, allocator: &Allocator) -> Result<ServerRun> {
    let mut cmd = exec::command(&programs.server);
    cmd.args(["--listen", "127.0.0.1:0"])
        .env_remove("LD_PRELOAD")
        .stdout(Stdio::piped());
    if let Some(preload) = &allocator.preload {
        cmd.env("LD_PRELOAD", preload);
    }
    let mut server = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", exec::shown(&cmd)))?;
    let (addr, mut rest) = match listening_address(&mut server) {
        Ok(found) => found,
        Err(err) => {
            let _ = server.kill();
            let _ = server.wait();
            return Err(err.context(format!("the server under {}", allocator.name)));
        }
    };
    let measured = load(programs, &addr, allocator).and_then(|ops| {
        let stat = read_stat(server.id())?;
        Ok(ServerRun {
            ops,
            cpu_ms: cpu_ms(&stat)?,
            faults: stat_field(&stat, MINFLT).with_context(|| format!("no minflt in {stat:?}"))?
                as f64,
            hwm_kib: status_kib(server.id(), "VmHWM:")?,
        })
    });
    let shutdown = exec::output(exec::command(&programs.loadgen).args([
        "--addr",
        &addr,
        "--requests",
        "1",
        "--shutdown",
    ]));
    if !shutdown.is_ok_and(|out| out.status.success()) {
        let _ = server.kill();
    }
    let _ = std::io::copy(&mut rest, &mut std::io::sink());
    let status = server.wait().context("waiting for the server")?;
    let measured = measured?;
    ensure!(
        status.success(),
        "the server under {} failed ({status})",
        allocator.name
    );
    Ok(measured)
}

/// The address in the server's first line, `listening on ADDR`, and the rest of its stdout,
/// which must stay open until it exits (it prints a summary then).
fn listening_address(server: &mut Child) -> Result<(String, BufReader<ChildStdout>)> {
    let stdout = server
        .stdout
        .take()
        .context("the server's stdout is not piped")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("reading the server's first line")?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .map(str::to_owned)
        .with_context(|| format!("the server printed {line:?}, not its address"))?;
    Ok((addr, reader))
}

/// Runs the fixed load against `addr`; returns the loadgen's ops/s.
fn load(programs: &Programs, addr: &str, allocator: &Allocator) -> Result<f64> {
    let out = exec::output(exec::command(&programs.loadgen).args([
        "--addr",
        addr,
        "--requests",
        SERVER_REQUESTS,
        "--seed",
        SERVER_SEED,
    ]))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "memprof-loadgen against the server under {} failed: {}",
        allocator.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    field(&stdout, "ops/s:")
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, name: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    field(&text, name).with_context(|| format!("in {path}"))
}

/// `/proc/PID/stat` of process `pid`.
fn read_stat(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/stat");
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// The user and system CPU time in a `/proc/PID/stat` line, in milliseconds.
fn cpu_ms(stat: &str) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
    stat_ticks(stat)
        .map(|t| t as f64 * 1000.0 / ticks as f64)
        .with_context(|| format!("no utime/stime in {stat:?}"))
}

/// `/proc/PID/stat` fields (1-based, as in proc(5)): minor faults, user and system time.
const MINFLT: usize = 10;
const UTIME: usize = 14;
const STIME: usize = 15;

/// Field `n` (1-based) of a `/proc/PID/stat` line, counted after the command name (field 2),
/// which is in parentheses and may hold spaces.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after_name = stat.rsplit_once(')')?.1;
    after_name
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// utime + stime (clock ticks) from a `/proc/PID/stat` line.
fn stat_ticks(stat: &str) -> Option<u64> {
    Some(stat_field(stat, UTIME)? + stat_field(stat, STIME)?)
}

/// Runs the benchmark once under `allocator` and returns its output line.
fn one(bench: &Path, allocator: &Allocator, args: &[&str]) -> Result<String> {
    let mut cmd = exec::command(bench);
    cmd.args(args).env_remove("LD_PRELOAD");
    if let Some(preload) = &allocator.preload {
        cmd.env("LD_PRELOAD", preload);
    }
    let output = exec::output(&mut cmd)?;
    if !output.status.success() {
        bail!(
            "{} {} under {} failed: {}",
            bench.display(),
            args.join(" "),
            allocator.name,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The number after the word `name` in `text`.
fn field(text: &str, name: &str) -> Result<f64> {
    let mut words = text.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == name)
        .and_then(|_| words.next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::{MINFLT, field, stat_field, stat_ticks};

    #[test]
    fn reads_cpu_ticks_and_faults_after_a_command_with_spaces() {
        let stat = "4242 (memprof (x) y) S 1 4242 4242 0 -1 4194560 812 0 0 0 137 59 0 0 20 0 3";
        assert_eq!(stat_ticks(stat), Some(196));
        assert_eq!(stat_field(stat, MINFLT), Some(812));
        assert_eq!(stat_ticks("4242 (short) S 1"), None);
        assert_eq!(stat_field("4242 (short) S 1", MINFLT), None);
    }

    #[test]
    fn reads_fields_of_the_output_line() {
        let line = "rss_kib 1234 hwm_kib 5678\n";
        assert_eq!(field(line, "rss_kib").unwrap(), 1234.0);
        assert_eq!(field(line, "hwm_kib").unwrap(), 5678.0);
        assert!(field(line, "ops_per_sec").is_err());
    }

    #[test]
    fn reads_loadgen_and_proc_status_fields() {
        assert_eq!(
            field("ops: 200000\nops/s: 41234.5\n", "ops/s:").unwrap(),
            41234.5
        );
        let status = "VmPeak:\t  10000 kB\nVmHWM:\t    8488 kB\nVmRSS:\t    8400 kB\n";
        assert_eq!(field(status, "VmHWM:").unwrap(), 8488.0);
    }
}
