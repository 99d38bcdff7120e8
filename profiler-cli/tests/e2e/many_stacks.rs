//! A target leaking one block from each of 20,000 distinct stacks (samples/c/many_stacks.c):
//! the totals stay exact, report.json lists the first `LISTED_SITES` sites in full and sums up
//! the others exactly, and its size stays bounded by the listed sites, not by the stacks.
use crate::report::{assert_function, assert_nothing_lost, assert_num, num};
use crate::support::{Build, compile_c, memprof, privileged, run_to_end};
use profiler_core::report::LISTED_SITES;
use serde_json::Value;
use std::collections::HashSet;
use std::process::Command;

/// Stacks, and blocks: one each (the sample's argv[1]).
const STACKS: u64 = 20_000;
/// Its header comment: block i is malloc(8 + 8 * (i % 8)), all leaked; 288 * 2500 bytes.
const BYTES: u64 = 720_000;
/// The largest blocks are the 2,500 of 64 bytes (i % 8 == 7): the listed sites are theirs.
const LARGEST: u64 = 64;
/// report.json's size limit. Measured: 10.8 MB, of which nearly all is the 2 x 1,000 listed
/// sites (leaks and sites) of 20 frames each, ~270 bytes of pretty-printed JSON per frame
/// with the source path of this checkout (each character more in that path adds 40 KB).
/// Listing every site took 214 MB. 16 MiB leaves room for a longer checkout path and stays
/// far below what one more listed site per stack would need.
const JSON_LIMIT: u64 = 16 << 20;

#[test]
fn many_distinct_stacks() {
    let Some(env) = privileged("many_distinct_stacks") else {
        return;
    };
    let target = compile_c(env.dir.path(), "many_stacks", Build::NoFramePointers);
    let output = env.dir.path().join("out");
    let stacks = STACKS.to_string();
    // Without the leak check: the listing under test is by bytes, while the leak check lists
    // lost sites before reachable ones (leak_check.rs covers that order).
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--no-leak-check", "--output"])
        .arg(&output)
        .arg("--")
        .arg(&target)
        .arg(&stacks);
    let finished = run_to_end(cmd);
    assert!(
        finished.status.success(),
        "memprof run failed: {}\nstderr:\n{}",
        finished.status,
        finished.stderr
    );
    let report = finished.report(&output);
    assert_nothing_lost(&report);

    assert_function(&report, "malloc", STACKS, BYTES);
    assert_num(&report, "summary.allocations", STACKS);
    assert_num(&report, "summary.frees", 0);
    assert_num(&report, "summary.live_blocks", STACKS);
    assert_num(&report, "summary.live_bytes", BYTES);
    assert_num(&report, "summary.peak_live_bytes", BYTES);
    assert_num(&report, "analyses.leaks.live_at_end.sites", STACKS);

    let listed = LISTED_SITES as u64;
    let rest = STACKS - listed;
    let rest_bytes = BYTES - listed * LARGEST;
    let leaks = check_listed(&report, "leaks", "bytes");
    assert_num(&report, "unlisted_leaks.sites", rest);
    assert_num(&report, "unlisted_leaks.blocks", rest);
    assert_num(&report, "unlisted_leaks.bytes", rest_bytes);
    let sites = check_listed(&report, "sites", "allocated_bytes");
    for field in ["allocations", "live_blocks", "peak_live_blocks"] {
        assert_num(&report, &format!("unlisted_sites.{field}"), rest);
    }
    for field in ["allocated_bytes", "live_bytes", "peak_live_bytes"] {
        assert_num(&report, &format!("unlisted_sites.{field}"), rest_bytes);
    }
    assert_num(&report, "unlisted_sites.sites", rest);
    // The same sites head both lists.
    assert_eq!(leaks, sites);
    assert!(report.get("unlisted_mappings").is_none());

    let json_bytes = std::fs::metadata(output.join("report.json")).unwrap().len();
    assert!(
        json_bytes < JSON_LIMIT,
        "report.json has {json_bytes} bytes, limit {JSON_LIMIT}"
    );

    // The flame graphs have every stack's bytes: 720,000 in all, in far fewer lines than
    // stacks (the frames inferno would not draw are merged into their parents).
    for stem in ["leaks", "alloc-bytes", "peak"] {
        let folded = std::fs::read_to_string(output.join(format!("{stem}.folded"))).unwrap();
        let total: u64 = folded
            .lines()
            .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, BYTES, "{stem}.folded");
        let lines = folded.lines().count() as u64;
        assert!(lines < STACKS / 2, "{stem}.folded has {lines} lines");
    }

    // The recording still holds every site: replayed, the summary counts them all.
    let mut cmd = Command::new(memprof());
    cmd.arg("report")
        .arg("--format")
        .arg("text")
        .arg(output.join("recording.mprof"));
    let replayed = run_to_end(cmd);
    assert!(replayed.status.success(), "{}", replayed.stderr);
    assert!(
        replayed
            .stdout
            .contains("720,000 bytes) in 20,000 blocks from 20,000 sites"),
        "{}",
        replayed.stdout
    );
}

/// Checks that `section` lists exactly LISTED_SITES sites of one 64-byte block each (the
/// largest), each with its own stack through step_zero/step_one, descend and main; returns
/// their stacks (return addresses).
fn check_listed(report: &Value, section: &str, bytes: &str) -> HashSet<Vec<String>> {
    let sites = report[section].as_array().unwrap();
    assert_eq!(sites.len(), LISTED_SITES, "{section}");
    let mut stacks = HashSet::new();
    for site in sites {
        assert_eq!(num(site, bytes), LARGEST, "{section}: {site}");
        let frames = site["stack"].as_array().unwrap();
        let functions: Vec<&str> = frames
            .iter()
            .map(|frame| frame["function"].as_str().unwrap_or(""))
            .collect();
        // 15 levels for 20,000 blocks (2^15 >= 20,000), then descend and main.
        assert!(
            functions[..15]
                .iter()
                .all(|name| *name == "step_zero" || *name == "step_one"),
            "{section}: {functions:?}"
        );
        assert_eq!(functions[15..17], ["descend", "main"], "{section}");
        let addresses = frames
            .iter()
            .map(|frame| frame["address"].as_str().unwrap().to_owned())
            .collect();
        assert!(stacks.insert(addresses), "{section}: a stack listed twice");
    }
    stacks
}
