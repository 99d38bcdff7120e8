//! `memprof diff`: two runs of samples/c/leakn.c whose leak differs by a known amount.
use std::process::Command;

use serde_json::Value;

use crate::support::{Build, compile_c, memprof, memprof_run, privileged, run_to_end};

#[test]
fn diff_finds_exactly_the_leak_that_grew() {
    let Some(guard) = privileged("diff_finds_exactly_the_leak_that_grew") else {
        return;
    };
    let dir = guard.dir.path();
    let target = compile_c(dir, "leakn", Build::FramePointers);
    for n in ["5", "12"] {
        let run = memprof_run(&dir.join(format!("run{n}")), &target, &[n]);
        assert!(run.status.success(), "leakn {n}: {}", run.stderr);
    }
    // A as an output directory, B as the recording file: both are accepted.
    let out = dir.join("diff");
    let mut cmd = Command::new(memprof());
    cmd.arg("diff")
        .arg(dir.join("run5"))
        .arg(dir.join("run12/recording.mprof"))
        .arg("--output")
        .arg(&out);
    let diff = run_to_end(cmd);
    assert!(diff.status.success(), "{}", diff.stderr);

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("diff.json")).unwrap()).unwrap();
    let change = |value: &Value| {
        (
            value["a"].as_u64().unwrap(),
            value["b"].as_u64().unwrap(),
            value["delta"].as_i64().unwrap(),
        )
    };
    // leakn.c's header: 108 / 115 allocations, 540 / 876 bytes live at the end.
    assert_eq!(change(&json["totals"]["allocations"]), (108, 115, 7));
    assert_eq!(
        change(&json["totals"]["live_bytes_at_end"]),
        (540, 876, 336)
    );
    let sites = json["sites"].as_array().unwrap();
    let innermost = |site: &Value| {
        let stack = site["stack"].as_array().unwrap();
        stack.last().unwrap().as_str().unwrap().to_owned()
    };
    let names: Vec<String> = sites.iter().map(innermost).collect();
    assert_eq!(sites.len(), 3, "{names:?}");
    // Sorted by the size of the change: leak_n first, with exactly 7 x 48 bytes more.
    assert!(names[0].starts_with("leak_n (leakn.c:"), "{names:?}");
    assert_eq!(change(&sites[0]["allocations"]), (5, 12, 7));
    for figure in ["bytes_allocated", "live_bytes_at_end", "live_bytes_at_peak"] {
        assert_eq!(change(&sites[0][figure]), (240, 576, 336), "{figure}");
    }
    // The other sites did not change at all.
    for site in &sites[1..] {
        for figure in [
            "allocations",
            "bytes_allocated",
            "live_bytes_at_end",
            "live_bytes_at_peak",
        ] {
            assert_eq!(site[figure]["delta"], 0, "{} {figure}", innermost(site));
        }
    }
    let fixed = sites
        .iter()
        .find(|s| innermost(s).starts_with("leak_fixed"))
        .unwrap();
    assert_eq!(change(&fixed["live_bytes_at_end"]), (300, 300, 0));
    let churn = sites
        .iter()
        .find(|s| innermost(s).starts_with("churn"))
        .unwrap();
    assert_eq!(change(&churn["allocations"]), (100, 100, 0));

    // The table names the site; the differential flame graph colours it.
    assert!(
        diff.stdout.contains("Sites that changed: 1 of 3"),
        "{}",
        diff.stdout
    );
    let row = diff
        .stdout
        .lines()
        .find(|line| line.contains("leak_n (leakn.c:"))
        .unwrap();
    assert_eq!(
        row.split_whitespace().take(4).collect::<Vec<_>>(),
        ["+7", "+336", "+336", "+336"]
    );
    let svg = std::fs::read_to_string(out.join("diff.svg")).unwrap();
    assert!(svg.contains("memprof diff: bytes allocated"), "{svg}");
    assert!(svg.contains("<title>leak_n (leakn.c:"), "{svg}");

    // A directory without a recording: one line, exit 1.
    let mut cmd = Command::new(memprof());
    cmd.arg("diff")
        .arg(dir)
        .arg(dir.join("run5"))
        .arg("--output")
        .arg(&out);
    let bad = run_to_end(cmd);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        bad.stderr,
        format!(
            "memprof: error: {} holds no recording.mprof\n",
            dir.display()
        )
    );
}
