//! `cargo xtask demo`: profile the sample server under load and say where the report and
//! flamegraph are.
//!
//! memprof launches `memprof-sample-server --leak-every 50`; once the server prints its
//! address, `memprof-loadgen` sends a fixed, seeded load and then SHUTDOWN; the server exits
//! cleanly (freeing its cache and queues), memprof writes memprof-out/, and the demo checks that
//! the top leak site is the leak the server injected.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::samples::{self, relative_to};
use crate::{exec, setup};

const OUTPUT_DIR: &str = "memprof-out";

/// The server's bug switch and the load: 40000 requests over 4 connections reconnecting every
/// 500 requests, seed 42; every 50th PUT/PUSH of a connection leaks its payload.
const SERVER_ARGS: &[&str] = &["--listen", "127.0.0.1:0", "--leak-every", "50"];
const LOAD_ARGS: &[&str] = &[
    "--seed",
    "42",
    "--connections",
    "4",
    "--requests",
    "40000",
    "--churn",
    "500",
    "--shutdown",
];

/// The function `--leak-every` leaks from, which the top leak site must name.
const LEAKING_FUNCTION: &str = "memprof_sample_server::connection::leak_payload";

/// Longest the server may take to start listening, and memprof to finish after the load.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
const FINISH_LIMIT: Duration = Duration::from_secs(60);

pub fn run() -> Result<()> {
    setup::ensure()?.require_all()?;
    println!("== build");
    let memprof = samples::build_memprof()?;
    let (server, loadgen) = build_server_and_loadgen()?;

    println!("== profile");
    let root = samples::root()?;
    profile_server(&ServerSession {
        memprof: &memprof,
        output: Path::new(OUTPUT_DIR),
        server: &server,
        server_args: SERVER_ARGS,
        loadgen: &loadgen,
        load_args: LOAD_ARGS,
    })?;

    let out = root.join(OUTPUT_DIR);
    let report = out.join("report.json");
    println!("== done");
    println!("{}", top_leak(&report)?);
    println!("report:     {}", report.display());
    println!(
        "flamegraph: {} (open it in a browser)",
        out.join("leaks.svg").display()
    );
    println!("folded:     {}", out.join("leaks.folded").display());
    Ok(())
}

/// The sample server profiled under a load: `memprof run --output OUTPUT -- SERVER ARGS`, then
/// the load generator against the address the server prints. Paths are relative to the
/// workspace root, where the commands run.
pub struct ServerSession<'a> {
    pub memprof: &'a Path,
    pub output: &'a Path,
    pub server: &'a Path,
    pub server_args: &'a [&'a str],
    pub loadgen: &'a Path,
    /// Must end the server (`--shutdown`) so that memprof finishes.
    pub load_args: &'a [&'a str],
}

/// Runs `session`: memprof writes its outputs, the server's output is printed as it comes.
pub fn profile_server(session: &ServerSession) -> Result<()> {
    let root = samples::root()?;
    let mut profile = exec::command(relative_to(session.memprof, &root));
    profile
        .current_dir(&root)
        .arg("run")
        .arg("--output")
        .arg(session.output)
        .arg("--")
        .arg(relative_to(session.server, &root))
        .args(session.server_args)
        .stdout(Stdio::piped());
    println!("$ {} &", exec::shown(&profile));
    let mut memprof_child = profile
        .spawn()
        .with_context(|| format!("could not start `{}`", exec::shown(&profile)))?;
    let stdout = memprof_child
        .stdout
        .take()
        .context("memprof's stdout is not piped")?;
    let (lines, forwarder) = forward_lines(stdout);
    let addr = match server_address(&lines) {
        Ok(addr) => addr,
        Err(err) => {
            let _ = memprof_child.kill();
            let _ = memprof_child.wait();
            return Err(err);
        }
    };
    // From here on the server's output (its exit summary) is printed as it comes.
    drop(lines);

    let mut load = exec::command(relative_to(session.loadgen, &root));
    load.current_dir(&root)
        .arg("--addr")
        .arg(addr.to_string())
        .args(session.load_args);
    // loadgen sends SHUTDOWN even when the load fails, so memprof finishes either way.
    let load_status = exec::status(&mut load)?;
    let status = wait_for(&mut memprof_child, FINISH_LIMIT)?;
    let _ = forwarder.join();
    ensure!(
        load_status.success(),
        "memprof-loadgen failed ({load_status})"
    );
    ensure!(status.success(), "memprof run failed ({status})");
    Ok(())
}

/// Builds the sample server and load generator in release mode (no frame pointers: memprof
/// unwinds with DWARF).
fn build_server_and_loadgen() -> Result<(PathBuf, PathBuf)> {
    exec::run(exec::cargo().current_dir(samples::root()?).args([
        "build",
        "--release",
        "--package",
        "memprof-sample-server",
        "--package",
        "memprof-loadgen",
    ]))?;
    let release = samples::target_dir()?.join("release");
    let binaries = (
        release.join("memprof-sample-server"),
        release.join("memprof-loadgen"),
    );
    for binary in [&binaries.0, &binaries.1] {
        ensure!(
            binary.is_file(),
            "cargo built the samples but {} does not exist",
            binary.display()
        );
    }
    Ok(binaries)
}

/// Waits for the server's `listening on ADDR` among memprof's stdout lines (the server's).
fn server_address(lines: &Receiver<String>) -> Result<SocketAddr> {
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).map_err(|_| {
            anyhow::anyhow!("the server did not print `listening on ADDR` within {STARTUP_LIMIT:?}")
        })?;
        if let Some(addr) = line.strip_prefix("listening on ") {
            println!("{line}");
            return addr
                .parse()
                .with_context(|| format!("the server printed a bad address: {line:?}"));
        }
        println!("{line}");
    }
}

/// Lines of `pipe`: sent through the channel while it is open, printed once it is dropped.
/// The thread ends at the pipe's end of file.
fn forward_lines(pipe: impl Read + Send + 'static) -> (Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let forwarder = thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Err(unsent) = tx.send(line) {
                println!("{}", unsent.0);
            }
        }
    });
    (rx, forwarder)
}

/// Waits for `child`, killing it after `limit`.
fn wait_for(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().context("waiting for memprof")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("memprof did not finish within {limit:?} after the load; killed it");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// "top leak site: N bytes in M blocks, allocated in FUNCTION (FILE:LINE)", read back from
/// report.json; an error unless that site's stack goes through the function that leaks.
fn top_leak(report: &Path) -> Result<String> {
    let text =
        fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))?;
    let top = json["leaks"]
        .get(0)
        .with_context(|| format!("{} lists no leak", report.display()))?;
    let frames = top["stack"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let function = |frame: &serde_json::Value| frame["function"].as_str().unwrap_or("?").to_owned();
    let summary = format!(
        "top leak site: {} bytes in {} blocks",
        top["bytes"], top["blocks"]
    );
    // The innermost frames may be std's allocation functions inlined into the caller.
    let Some(leaking) = frames
        .iter()
        .find(|frame| function(frame) == LEAKING_FUNCTION)
    else {
        let innermost = frames.first().map_or("no stack".to_owned(), function);
        bail!("{summary} at {innermost}, not the injected leak in {LEAKING_FUNCTION}");
    };
    let place = match (leaking["file"].as_str(), leaking["line"].as_u64()) {
        (Some(file), Some(line)) => format!(" ({file}:{line})"),
        _ => String::new(),
    };
    Ok(format!("{summary}, allocated in {LEAKING_FUNCTION}{place}"))
}
