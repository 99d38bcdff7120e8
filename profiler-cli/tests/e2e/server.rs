//! The demo's flow (`cargo xtask demo`) at a small scale: `memprof run` on the sample server
//! with `--leak-every`, load from memprof-loadgen with a fixed seed, SHUTDOWN, then the report.
//!
//! The leak is exact: the server counts PUT/PUSH requests per connection and loadgen's
//! requests on each connection depend only on the seed, so which payloads leak does not depend
//! on how the connections interleave. memprof must find exactly those blocks, in one site whose
//! stack names `leak_payload`, and it must be the largest leak.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::report::{Name, assert_nothing_lost, describe, sites_with};
use crate::support::{
    DEADLINE, line_channel, memprof, privileged, rest_of, run_to_end, wait_deadline, wait_for_line,
};

/// The load: 3 connections, 600 requests, a reconnection every 50, seed 7; every 10th
/// PUT/PUSH of a connection leaks.
const LOAD: &[&str] = &[
    "--seed",
    "7",
    "--connections",
    "3",
    "--requests",
    "600",
    "--churn",
    "50",
    "--shutdown",
];
const LEAK_EVERY: &str = "10";
/// What that leaks, from the server's own count (its exit summary) for this seed.
const LEAKED_BLOCKS: u64 = 24;
const LEAKED_BYTES: u64 = 195_339;

/// Builds the sample server and loadgen with the cargo running this test, in its profile and
/// target directory (next to memprof), and returns their paths.
fn build_samples() -> (PathBuf, PathBuf) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["build", "--package", "memprof-sample-server"])
        .args(["--package", "memprof-loadgen"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let out = build.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "building the sample server failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sibling = |name: &str| {
        let path = memprof().with_file_name(name);
        assert!(path.is_file(), "cargo built {name} but {path:?} is missing");
        path
    };
    (sibling("memprof-sample-server"), sibling("memprof-loadgen"))
}

/// `name=value` of the server's `summary:` line.
fn summary_field(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {summary:?}"))
}

#[test]
fn the_injected_server_leak_is_the_top_leak_site_with_exact_figures() {
    let test = "the_injected_server_leak_is_the_top_leak_site_with_exact_figures";
    let Some(env) = privileged(test) else { return };
    let (server, loadgen) = build_samples();
    let output = env.dir.path().join("out");

    let mut profiled = Command::new(memprof())
        .arg("run")
        .arg("--output")
        .arg(&output)
        .arg("--")
        .arg(&server)
        .args(["--listen", "127.0.0.1:0", "--leak-every", LEAK_EVERY])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start memprof run");
    let stdout = line_channel(profiled.stdout.take().expect("piped stdout"));
    let stderr = line_channel(profiled.stderr.take().expect("piped stderr"));
    let seen = wait_for_line(&stdout, "listening on ", "the profiled server");
    let addr = seen
        .last()
        .and_then(|line| line.strip_prefix("listening on "))
        .expect("the address line")
        .to_owned();

    let mut load = Command::new(&loadgen);
    load.arg("--addr").arg(&addr).args(LOAD);
    let loaded = run_to_end(load);
    let status = wait_deadline(&mut profiled, DEADLINE, "memprof run of the server");
    let server_out = rest_of(&stdout);
    assert!(
        loaded.status.success(),
        "loadgen failed: {loaded:?}\nserver:\n{server_out}"
    );
    assert_eq!(loaded.stdout.lines().next(), Some("ops: 600"), "{loaded:?}");
    assert!(
        status.success(),
        "memprof run failed ({status}):\n{}",
        rest_of(&stderr)
    );

    // The server's own count of what it leaked.
    let summary = server_out
        .lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line from the server:\n{server_out}"));
    assert_eq!(
        (
            summary_field(summary, "leaked"),
            summary_field(summary, "leaked_bytes"),
            summary_field(summary, "requests"),
        ),
        (LEAKED_BLOCKS, LEAKED_BYTES, 601),
        "{summary}"
    );

    let text = std::fs::read_to_string(output.join("report.json")).expect("report.json");
    let report: Value = serde_json::from_str(&text).expect("report.json is JSON");
    assert_nothing_lost(&report);
    // One entry per leak class: a conservative scan can find a stale copy of a leaked
    // pointer (in a reused buffer, on a stack), as memcheck would, so some of the blocks may
    // count as reachable; together they are exactly what the server leaked.
    let leaking = sites_with(&report, "leaks", Name::Contains("::leak_payload"));
    let total = |field: &str| {
        leaking
            .iter()
            .map(|site| site[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (total("blocks"), total("bytes")),
        (LEAKED_BLOCKS, LEAKED_BYTES),
        "leaks:{}",
        describe(&report, "leaks")
    );
    let site = &report["leaks"][0];
    assert!(
        leaking.contains(&site) && site["reachability"] == "definitely_lost",
        "the injected leak is not the top site; leaks:{}",
        describe(&report, "leaks")
    );
    // The frame below leak_payload is the request handler that called it.
    let functions: Vec<&str> = site["stack"]
        .as_array()
        .expect("stack")
        .iter()
        .map(|frame| frame["function"].as_str().unwrap_or("?"))
        .collect();
    let at = functions
        .iter()
        .position(|f| f.ends_with("::leak_payload"))
        .expect("leak_payload frame");
    assert!(
        functions[at + 1..]
            .first()
            .is_some_and(|f| f.ends_with("connection::handle")),
        "stack: {functions:?}"
    );
}
