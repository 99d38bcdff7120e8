//! The sample server's allocation trace for `bench alloc`: memprof records the server (glibc)
//! under the benchmark's seeded load, and the recording becomes a trace that
//! samples/c/allocreplay.c replays under each allocator. Every allocator then serves exactly the
//! server's requests, timed without the loopback TCP work that dominates the live server's
//! CPU time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::demo::{forward_lines, server_address, wait_for};
use crate::{alloc_trace, exec};

/// Requests of the recorded load (the live benchmark's seed; fewer requests, since memprof
/// slows the server down).
const RECORDED_REQUESTS: &str = "50000";
const FINISH_LIMIT: Duration = Duration::from_secs(120);

pub struct ServerTrace {
    pub path: PathBuf,
    /// Records in the trace (allocation calls and frees).
    pub ops: u64,
}

/// Records `server` under `loadgen --seed SEED` with `memprof` into `scratch` and writes the
/// trace next to the recording.
pub fn record(
    memprof: &Path,
    server: &Path,
    loadgen: &Path,
    seed: &str,
    scratch: &Path,
) -> Result<ServerTrace> {
    let output = scratch.join("server-recording");
    let mut profile = exec::command(memprof);
    profile
        .arg("run")
        .arg("--output")
        .arg(&output)
        .args(["--", &server.to_string_lossy(), "--listen", "127.0.0.1:0"])
        .env_remove("LD_PRELOAD")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    println!("$ {} &", exec::shown(&profile));
    let mut child = profile
        .spawn()
        .with_context(|| format!("could not start `{}`", exec::shown(&profile)))?;
    let stdout = child
        .stdout
        .take()
        .context("memprof's stdout is not piped")?;
    let (lines, forwarder) = forward_lines(stdout);
    let addr = match server_address(&lines) {
        Ok(addr) => addr,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
    };
    drop(lines);
    let load = exec::output(exec::command(loadgen).args([
        "--addr",
        &addr.to_string(),
        "--requests",
        RECORDED_REQUESTS,
        "--seed",
        seed,
        "--shutdown",
    ]));
    let status = wait_for(&mut child, FINISH_LIMIT)?;
    let _ = forwarder.join();
    let load = load?;
    ensure!(
        load.status.success(),
        "memprof-loadgen failed: {}",
        String::from_utf8_lossy(&load.stderr).trim()
    );
    ensure!(
        status.success(),
        "memprof run of the server failed ({status})"
    );
    let recording = output.join("recording.mprof");
    let lost = lost_events(&output.join("report.json"))?;
    ensure!(
        lost == 0,
        "memprof lost {lost} events recording the server: the trace would not be the server's"
    );
    let path = scratch.join("server.trace");
    let ops = alloc_trace::export(&recording, &path)?;
    Ok(ServerTrace { path, ops })
}

fn lost_events(report: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))?;
    json["summary"]["lost_events"]
        .as_u64()
        .with_context(|| format!("no summary.lost_events in {}", report.display()))
}
