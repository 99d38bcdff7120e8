//! The server workload of `cargo xtask bench capture`: redis-server under redis-benchmark
//! (SET, GET, LPUSH, LRANGE_100), bare, under `memprof run` on each capture path, under
//! heaptrack, and with `memprof attach` (probes) on the bare server, in interleaved rounds;
//! with `--baseline`, also that build's `memprof attach` in the same rounds. The figure is the
//! server's throughput: requests per second over the four tests. `attach --max-depth 0` runs
//! too: the probes without stacks, the floor that the stacks' cost sits on.
//!
//! Debian's redis-tools ships the server as `redis-check-rdb`, which serves when its argv[0]
//! says `redis-server`: the bench runs it through a symlink of that name.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, thread};

use anyhow::{Context, Result, bail};

use crate::bench::median;
use crate::exec;

const PORT: &str = "6399";
/// Requests per redis-benchmark test.
const REQUESTS: u32 = 50_000;
const TESTS: &str = "set,get,lpush,lrange_100";

/// How the server runs.
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Bare,
    Run(&'static str),
    Heaptrack,
    Attach,
    /// `memprof attach --max-depth 0`: the probes' traps and header records, no stacks.
    AttachNoStacks,
    /// `memprof attach` with the `--baseline` build.
    BaselineAttach,
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Bare => "bare".into(),
            Setup::Run(path) => format!("memprof run {path}"),
            Setup::Heaptrack => "heaptrack".into(),
            Setup::Attach => "memprof attach".into(),
            Setup::AttachNoStacks => "attach, no stacks".into(),
            Setup::BaselineAttach => "baseline attach".into(),
        }
    }
}

const SETUPS: [Setup; 6] = [
    Setup::Bare,
    Setup::Run("uprobes"),
    Setup::Run("preload"),
    Setup::Heaptrack,
    Setup::Attach,
    Setup::AttachNoStacks,
];

pub fn run(memprof: &Path, baseline: Option<&Path>, scratch: &Path, runs: u32) -> Result<()> {
    let server = server_link(scratch)?;
    let mut setups = SETUPS.to_vec();
    if baseline.is_some() {
        setups.push(Setup::BaselineAttach);
    }
    let mut rates = vec![Vec::new(); setups.len()];
    for round in 1..=runs {
        for s in crate::bench::round_order(round, setups.len()) {
            let setup = setups[s];
            let out = scratch.join(format!("redis-{s}"));
            let binary = match setup {
                Setup::BaselineAttach => baseline.unwrap_or(memprof),
                _ => memprof,
            };
            let rate = run_once(binary, &server, setup, &out)?;
            // What memprof lost (attach has no holds): a cheaper window that loses records
            // is not cheaper.
            let lost = match setup {
                Setup::Bare | Setup::Heaptrack => String::new(),
                _ => match crate::bench::lost_events(&out.join("report.json")) {
                    Some(lost) => format!("  lost {lost} events"),
                    None => "  lost events unknown (no report)".into(),
                },
            };
            println!(
                "  round {round}/{runs} redis    {:<20} {rate:>10.0} req/s{lost}",
                setup.label()
            );
            rates[s].push(rate);
        }
    }
    let bare = median(&rates[0]);
    println!();
    println!("redis-server under redis-benchmark ({TESTS}, {REQUESTS} requests each):");
    for (s, setup) in setups.iter().enumerate() {
        let rate = median(&rates[s]);
        println!(
            "  {:<20} {rate:>10.0} req/s  {:>5.2}x fewer than bare",
            setup.label(),
            bare / rate
        );
    }
    Ok(())
}

/// `scratch/redis-server`, a symlink to Debian's server binary.
fn server_link(scratch: &Path) -> Result<PathBuf> {
    let target = Path::new("/usr/bin/redis-check-rdb");
    if !target.exists() || exec::find_program("redis-benchmark").is_none() {
        bail!("redis-tools is not installed: run `cargo xtask setup`");
    }
    let link = scratch.join("redis-server");
    if fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(link)
}

fn run_once(memprof: &Path, server: &Path, setup: Setup, out: &Path) -> Result<f64> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let server_args = [
        "--port",
        PORT,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ];
    let mut cmd = match setup {
        Setup::Bare | Setup::Attach | Setup::AttachNoStacks | Setup::BaselineAttach => {
            exec::command(server)
        }
        Setup::Run(path) => {
            let mut cmd = exec::command(memprof);
            cmd.args(["run", "--capture", path, "--output"])
                .arg(out)
                .arg("--")
                .arg(server);
            cmd
        }
        Setup::Heaptrack => {
            let mut cmd = exec::command("heaptrack");
            cmd.arg("-o").arg(out.join("trace")).arg(server);
            cmd
        }
    };
    cmd.args(server_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut running = cmd
        .spawn()
        .with_context(|| format!("starting {}", exec::shown(&cmd)))?;
    let result = measure(memprof, setup, out, &mut running);
    // Ends the server (and the tool around it) whatever happened.
    let _ = Command::new("redis-cli")
        .args(["-p", PORT, "shutdown", "nosave"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let status = running.wait()?;
    let rate = result?;
    if !status.success() && setup != Setup::Heaptrack {
        bail!("{} ended with {status}", setup.label());
    }
    Ok(rate)
}

fn measure(memprof: &Path, setup: Setup, out: &Path, server: &mut Child) -> Result<f64> {
    wait_until_serving(server)?;
    let attached = match setup {
        Setup::Attach | Setup::BaselineAttach => Some(attach(memprof, server.id(), out, &[])?),
        Setup::AttachNoStacks => Some(attach(memprof, server.id(), out, &["--max-depth", "0"])?),
        _ => None,
    };
    let rate = benchmark();
    if let Some(mut profiler) = attached {
        // SAFETY: kill with a pid we started.
        unsafe { libc::kill(profiler.id() as i32, libc::SIGINT) };
        let status = profiler.wait()?;
        if !status.success() {
            bail!("memprof attach ended with {status}");
        }
    }
    rate
}

/// Waits for PONG from the server (30 s at most).
fn wait_until_serving(server: &mut Child) -> Result<()> {
    let start = Instant::now();
    loop {
        let pong = Command::new("redis-cli")
            .args(["-p", PORT, "ping"])
            .stderr(Stdio::null())
            .output()?;
        if String::from_utf8_lossy(&pong.stdout).trim() == "PONG" {
            return Ok(());
        }
        if let Some(status) = server.try_wait()? {
            bail!("redis-server ended before serving ({status})");
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("redis-server did not answer PING within 30 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `memprof attach PID [EXTRA...]`, returned once it says it is attached.
fn attach(memprof: &Path, pid: u32, out: &Path, extra: &[&str]) -> Result<Child> {
    let mut cmd = exec::command(memprof);
    cmd.arg("attach")
        .arg(pid.to_string())
        .arg("--output")
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting memprof attach")?;
    let stderr = child.stderr.take().context("memprof's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(line) => {
                if line?.contains("attached") {
                    break;
                }
            }
            None => bail!("memprof attach ended before attaching"),
        }
    }
    // The rest of its stderr is drained so that it never blocks on a full pipe.
    thread::spawn(move || lines.for_each(drop));
    Ok(child)
}

/// Requests per second over the tests: all requests / the time they took in all.
fn benchmark() -> Result<f64> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-p", PORT, "-q", "--csv", "-t", TESTS, "-n"])
        .arg(REQUESTS.to_string());
    let output = exec::output(&mut cmd)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rates: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(|f| f.trim_matches('"'));
            let _test = fields.next()?;
            fields.next()?.parse().ok()
        })
        .collect();
    // One row per test, and one for the LPUSH that fills the list LRANGE reads.
    if rates.len() < 4 {
        bail!("redis-benchmark printed {} rates: {text}", rates.len());
    }
    let seconds: f64 = rates.iter().map(|rate| f64::from(REQUESTS) / rate).sum();
    Ok(f64::from(REQUESTS) * rates.len() as f64 / seconds)
}
