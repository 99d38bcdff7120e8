//! The `analyses` section of report.json on samples/c/analyses.c, whose header derives every
//! expected figure (checked with valgrind: peak 13 allocs / 10 frees, mix 360 / 360).
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{
    Build, Capture, DEADLINE, KilledOnDrop, compile_c, line_channel, memprof, on_both_paths,
    privileged, profile_output_on, rest_of, run_to_end, wait_deadline, wait_for_line,
};

const MIB: u64 = 1 << 20;

/// `memprof run --output DIR/out [EXTRA...] -- analyses MODE`, required to succeed.
fn run(dir: &std::path::Path, mode: &str, extra: &[&str]) -> (Value, String) {
    let target = compile_c(dir, "analyses", Build::FramePointers);
    let output = dir.join("out");
    let mut cmd = Command::new(memprof());
    cmd.arg("run")
        .arg("--output")
        .arg(&output)
        .args(extra)
        .arg("--")
        .arg(&target)
        .arg(mode);
    let finished = run_to_end(cmd);
    assert!(
        finished.status.success(),
        "memprof run analyses {mode}: {}\n{}",
        finished.status,
        finished.stderr
    );
    (finished.report(&output), finished.stderr)
}

/// The innermost function of analyses stack `id`.
fn function(report: &Value, id: &Value) -> String {
    let key = id.as_u64().expect("stack id").to_string();
    report["analyses"]["stacks"][&key][0]["function"]
        .as_str()
        .unwrap_or("[none]")
        .to_owned()
}

fn u(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// (usable, count) of every size class.
fn classes(report: &Value) -> Vec<(u64, u64)> {
    report["analyses"]["size_classes"]["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|class| (u(&class["usable"]), u(&class["count"])))
        .collect()
}

#[test]
fn analyses_known_peak() {
    let Some(env) = privileged("analyses_known_peak") else {
        return;
    };
    let (report, stderr) = run(env.dir.path(), "peak", &[]);
    let analyses = &report["analyses"];
    let peak = &analyses["timeline"]["peak"];
    assert_eq!(
        (u(&peak["live_bytes"]), u(&peak["live_blocks"])),
        (10 * MIB, 10),
        "{peak}"
    );
    let sites = peak["sites"].as_array().expect("sites at the peak");
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(function(&report, &sites[0]["stack_id"]), "peak_big");
    assert_eq!(
        (u(&sites[0]["live_bytes"]), u(&sites[0]["live_blocks"])),
        (10 * MIB, 10)
    );
    let points = analyses["timeline"]["points"].as_array().expect("points");
    let sum = |field: &str| points.iter().map(|p| u(&p[field])).sum::<u64>();
    assert_eq!((sum("allocations"), sum("frees")), (13, 10));
    assert_eq!(u(&points.last().unwrap()["live_bytes"]), 3 * MIB);
    // glibc mmaps the first ten; free() raises its threshold, so the last three are in the heap.
    assert_eq!(analyses["size_classes"]["allocator"], "glibc");
    assert_eq!(classes(&report), vec![(1048584, 3), (1052656, 10)]);
    assert_eq!(
        u(&analyses["fragmentation"]["at_peak"]["mmapped_blocks"]),
        10
    );
    let live = &analyses["leaks"]["live_at_end"];
    assert_eq!((u(&live["blocks"]), u(&live["bytes"])), (3, 3 * MIB));
    assert!(
        stderr.contains("Peak: 10.0 MiB in 10 blocks"),
        "summary:\n{stderr}"
    );
}

/// `analyses peak` lives ~25 ms, less than the 100 ms between RSS samples: the timeline's last
/// point must still have the RSS at exit, which holds the three touched MiB live then.
#[test]
fn rss_at_exit_is_the_timelines_last_point() {
    let Some(env) = privileged("rss_at_exit_is_the_timelines_last_point") else {
        return;
    };
    let (report, _) = run(env.dir.path(), "peak", &[]);
    let points = report["analyses"]["timeline"]["points"]
        .as_array()
        .expect("points");
    let last = points.last().expect("a point");
    assert_eq!(u(&last["live_bytes"]), 3 * MIB);
    let rss = u(&last["rss_bytes"]);
    let peak_rss = u(&report["target"]["peak_rss_bytes"]);
    assert!(
        rss >= 3 * MIB && rss <= peak_rss,
        "RSS at exit {rss}, peak RSS {peak_rss}"
    );
    // The recording has that sample too.
    let replayed = env.dir.path().join("replayed");
    let mut cmd = Command::new(memprof());
    cmd.arg("report")
        .arg(env.dir.path().join("out/recording.mprof"))
        .args(["--format", "json", "--output"])
        .arg(&replayed);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    let replayed = finished.report(&replayed);
    let points = replayed["analyses"]["timeline"]["points"]
        .as_array()
        .expect("points");
    assert_eq!(u(&points.last().expect("a point")["rss_bytes"]), rss);
}

#[test]
fn analyses_short_lived_and_size_mix() {
    let Some(env) = privileged("analyses_short_lived_and_size_mix") else {
        return;
    };
    let (report, stderr) = run(env.dir.path(), "mix", &["--ops", "20"]);
    let analyses = &report["analyses"];
    let candidates = analyses["lifetimes"]["pool_candidates"]
        .as_array()
        .expect("pool candidates");
    assert_eq!(candidates.len(), 1, "{candidates:?}");
    let pool = &candidates[0];
    assert_eq!(function(&report, &pool["stack_id"]), "short_lived");
    assert_eq!(u(&pool["freed"]), 200);
    // Each block lives a malloc-to-free apart, well under 1 ms, unless the scheduler takes the
    // CPU from the target between the two: then that block did live longer, and the clock that
    // stamped both calls says so. On a loaded 2-CPU CI machine that happens to a block or two.
    let short_lived = u(&pool["short_lived"]);
    assert!(
        (190..=200).contains(&short_lived),
        "{short_lived} of 200 short-lived"
    );
    // The sizes are those of the short-lived blocks only.
    assert_eq!(
        pool["sizes"],
        serde_json::json!([{"size": 64, "count": short_lived}])
    );
    let lifetimes: u64 = analyses["lifetimes"]["histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|b| u(&b["count"]))
        .sum();
    assert_eq!(lifetimes, 360);
    assert_eq!(
        classes(&report),
        vec![(24, 100), (72, 200), (104, 50), (1000, 10)]
    );
    let sizes = &analyses["size_classes"];
    assert_eq!(
        (u(&sizes["requested_bytes"]), u(&sizes["usable_bytes"])),
        (30200, 2400 + 14400 + 5200 + 10000)
    );
    // 360 allocations and 30200 bytes over 20 operations.
    let per_op = &analyses["per_operation"];
    assert_eq!(per_op["allocations_per_op"].as_f64(), Some(18.0));
    assert_eq!(per_op["bytes_per_op"].as_f64(), Some(1510.0));
    assert!(stderr.contains("Short-lived sites"), "summary:\n{stderr}");
    assert!(
        stderr.contains("Per operation (20 ops): 18.00 allocations"),
        "summary:\n{stderr}"
    );
}

/// The operation count can come from the target's own `ops: N` line, live and in the
/// recording.
#[test]
fn per_operation_cost_from_the_count_the_target_prints() {
    let Some(env) = privileged("per_operation_cost_from_the_count_the_target_prints") else {
        return;
    };
    let (report, stderr) = run(env.dir.path(), "mix", &["--ops-from-output"]);
    let per_op = &report["analyses"]["per_operation"];
    assert_eq!(u(&per_op["ops"]), 20);
    assert_eq!(per_op["allocations_per_op"].as_f64(), Some(18.0));
    assert_eq!(per_op["bytes_per_op"].as_f64(), Some(1510.0));
    assert!(
        stderr.contains("Per operation (20 ops): 18.00 allocations"),
        "summary:\n{stderr}"
    );
    let offline = env.dir.path().join("offline");
    let replayed = run_to_end({
        let mut cmd = Command::new(memprof());
        cmd.arg("report")
            .arg(env.dir.path().join("out/recording.mprof"))
            .args(["--format", "json", "--output"])
            .arg(&offline);
        cmd
    });
    assert!(replayed.status.success(), "{}", replayed.stderr);
    let replayed = replayed.report(&offline);
    assert_eq!(replayed["analyses"]["per_operation"], *per_op);
}

#[test]
fn analyses_attach_finds_the_growing_cache() {
    let Some(env) = privileged("analyses_attach_finds_the_growing_cache") else {
        return;
    };
    let target = compile_c(env.dir.path(), "analyses", Build::FramePointers);
    let mut cache = KilledOnDrop(
        Command::new(&target)
            .arg("cache")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the cache"),
    );
    let stdout = line_channel(cache.stdout.take().expect("piped stdout"));
    wait_for_line(&stdout, "ready", "analyses cache");
    let output = env.dir.path().join("out");
    let mut profiler = Command::new(memprof())
        .arg("attach")
        .arg(cache.id().to_string())
        .arg("--output")
        .arg(&output)
        .args(["--duration", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start memprof attach");
    let stderr = line_channel(profiler.stderr.take().expect("piped stderr"));
    let status = wait_deadline(&mut profiler, DEADLINE, "memprof attach --duration 2");
    let _ = cache.kill();
    let _ = cache.wait();
    let summary = rest_of(&stderr);
    assert!(status.success(), "memprof attach: {status}\n{summary}");
    let text = std::fs::read_to_string(output.join("report.json")).expect("report.json");
    let report: Value = serde_json::from_str(&text).expect("JSON report");
    let growing = report["analyses"]["leaks"]["growing"]
        .as_array()
        .expect("growing sites");
    assert_eq!(growing.len(), 1, "{growing:?}");
    let site = &growing[0];
    assert_eq!(function(&report, &site["stack_id"]), "cache_put");
    let blocks = u(&site["live_blocks"]);
    // One block per 20 ms over a 2 s window, less the time nanosleep oversleeps, plus the few
    // ms memprof takes to stop once the duration expires (more on a loaded machine).
    assert!((70..=110).contains(&blocks), "{site}");
    assert_eq!(u(&site["live_bytes"]), blocks * 4096);
    assert_eq!(site["monotonicity"].as_f64(), Some(1.0));
    // The rate the cache really grew at: its blocks over the time between the first and last.
    let span = site["last_seen_secs"].as_f64().unwrap() - site["first_seen_secs"].as_f64().unwrap();
    let rate = (blocks - 1) as f64 * 4096.0 / span;
    let slope = site["slope_bytes_per_sec"].as_f64().unwrap();
    assert!(
        (slope - rate).abs() < 0.1 * rate,
        "slope {slope} B/s, measured rate {rate} B/s"
    );
    assert!(site["r2"].as_f64().unwrap() > 0.95, "{site}");
    assert!(summary.contains("Growing sites"), "summary:\n{summary}");
}

on_both_paths!(
    event_times(),
    event_times_span_what_the_program_measured,
    event_times_span_what_the_program_measured_preload
);

/// The recorded times of two calls 390 ms apart are as far apart as the program's own clock
/// reads around them say: on the preload path the first is stamped by `clock_gettime`, before
/// memprof has measured the TSC's rate, and the last from the TSC (see `TscAnchor`), so a
/// converted time off by more than the program's window around a call (tens of
/// microseconds) shows: checked with the TSC times set 200 us late.
fn event_times(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_c(env.dir.path(), "analyses", Build::FramePointers);
    let (report, finished) = profile_output_on(capture, env.dir.path(), &target, &["clock"]);
    let bounds: Vec<u64> = finished
        .printed("clock: ")
        .split(' ')
        .map(|n| n.parse().expect("nanoseconds"))
        .collect();
    let (inner, outer) = (bounds[0], bounds[1]);
    let growing = report["analyses"]["leaks"]["growing"]
        .as_array()
        .expect("growing sites");
    let site = growing
        .iter()
        .find(|site| function(&report, &site["stack_id"]) == "cache_put")
        .unwrap_or_else(|| panic!("no growing cache_put site: {growing:?}"));
    assert_eq!(u(&site["allocations"]), 40);
    let secs = |key: &str| site[key].as_f64().expect(key);
    let span_ns = ((secs("last_seen_secs") - secs("first_seen_secs")) * 1e9).round() as u64;
    // Times are kept in whole microseconds: each end may round down by up to one.
    assert!(
        inner.saturating_sub(1_000) <= span_ns && span_ns <= outer + 1_000,
        "recorded span {span_ns} ns, the program measured {inner}..{outer} ns"
    );
}
