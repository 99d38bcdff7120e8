//! The sample server's allocation trace for `bench alloc`: memprof records the server (glibc)
//! under the benchmark's seeded load, and the recording becomes a trace that
//! samples/c/allocreplay.c replays under each allocator. Every allocator then serves exactly the
//! server's requests, timed without the loopback TCP work that dominates the live server's
//! CPU time.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::alloc_trace;
use crate::demo::{ServerSession, profile_server};

/// Requests of the recorded load (the live benchmark's seed; fewer requests, since memprof
/// slows the server down).
const RECORDED_REQUESTS: &str = "50000";

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
    profile_server(&ServerSession {
        memprof,
        output: &output,
        server,
        server_args: &["--listen", "127.0.0.1:0"],
        loadgen,
        load_args: &[
            "--requests",
            RECORDED_REQUESTS,
            "--seed",
            seed,
            "--shutdown",
        ],
    })?;
    let lost = lost_events(&output.join("report.json"))?;
    ensure!(
        lost == 0,
        "memprof lost {lost} events recording the server: the trace would not be the server's"
    );
    let path = scratch.join("server.trace");
    let ops = alloc_trace::export(&output.join("recording.mprof"), &path)?;
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
