//! `memprof diff`: two runs of samples/c/leakn.c whose leak differs by a known amount.
use std::process::Command;

use serde_json::Value;

use crate::support::{Build, compile_c, memprof, memprof_run, privileged, run_to_end};

/// DIR/diff.json.
fn diff_json(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("diff.json")).unwrap()).unwrap()
}

/// A change of diff.json as (a, b, delta).
fn change(value: &Value) -> (u64, u64, i64) {
    (
        value["a"].as_u64().unwrap(),
        value["b"].as_u64().unwrap(),
        value["delta"].as_i64().unwrap(),
    )
}

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

    let json = diff_json(&out);
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

/// Before and after a fix: B (`leakn 5 free`) leaks nothing, so its leak flame graph is empty.
/// The diff still says what went away, both ways round.
#[test]
fn diff_against_a_run_that_leaks_nothing() {
    let Some(guard) = privileged("diff_against_a_run_that_leaks_nothing") else {
        return;
    };
    let dir = guard.dir.path();
    let target = compile_c(dir, "leakn", Build::FramePointers);
    for (name, args) in [("leaky", &["5"][..]), ("fixed", &["5", "free"][..])] {
        let run = memprof_run(&dir.join(name), &target, args);
        assert!(run.status.success(), "leakn {args:?}: {}", run.stderr);
    }
    let diff = |a: &str, b: &str| {
        let out = dir.join(format!("diff-{a}-{b}"));
        let mut cmd = Command::new(memprof());
        cmd.arg("diff")
            .arg(dir.join(a))
            .arg(dir.join(b))
            .args(["--flame", "leaks", "--output"])
            .arg(&out);
        let finished = run_to_end(cmd);
        assert!(
            finished.status.success(),
            "diff {a} {b}: {}",
            finished.stderr
        );
        let json = diff_json(&out);
        let svg = std::fs::read_to_string(out.join("diff.svg")).unwrap();
        (finished.stdout, json, svg)
    };

    let (table, json, svg) = diff("leaky", "fixed");
    let totals = &json["totals"];
    assert_eq!(totals["live_bytes_at_end"]["a"], 540);
    assert_eq!(totals["live_bytes_at_end"]["b"], 0);
    assert_eq!(totals["live_bytes_at_end"]["delta"], -540);
    assert_eq!(totals["allocations"]["delta"], 0);
    assert!(table.contains("Sites that changed: 2 of 3"), "{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|line| line.contains("(leakn.c:"))
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        rows[0][..5],
        ["0", "0", "-300", "0", "leak_fixed"],
        "{table}"
    );
    assert_eq!(rows[1][..5], ["0", "0", "-240", "0", "leak_n"], "{table}");
    // A complete SVG whose widths come from A (B has nothing) and whose frames are all blue.
    assert!(svg.starts_with("<?xml"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert!(
        svg.contains("memprof diff: bytes live at the end - nothing in B:"),
        "{svg}"
    );
    assert_eq!(
        title_of(&svg, "leak_fixed"),
        format!(
            "{} (300 bytes, 55.56%; -55.56%)",
            frame_of(&svg, "leak_fixed")
        )
    );
    assert_eq!(
        title_of(&svg, "leak_n"),
        format!("{} (240 bytes, 44.44%; -44.44%)", frame_of(&svg, "leak_n"))
    );

    // The other way round (the leak appears in B) is an ordinary differential graph.
    let (table, json, svg) = diff("fixed", "leaky");
    assert_eq!(json["totals"]["live_bytes_at_end"]["delta"], 540);
    assert!(table.contains("Sites that changed: 2 of 3"), "{table}");
    assert_eq!(
        title_of(&svg, "leak_fixed"),
        format!(
            "{} (300 bytes, 55.56%; +55.56%)",
            frame_of(&svg, "leak_fixed")
        )
    );
}

/// The tooltip of FUNCTION's frame in a flame graph.
fn title_of(svg: &str, function: &str) -> String {
    svg.split("<title>")
        .skip(1)
        .map(|rest| rest.split("</title>").next().unwrap())
        .find(|title| title.starts_with(&format!("{function} (leakn.c:")))
        .unwrap_or_else(|| panic!("no frame {function} in {svg}"))
        .to_owned()
}

/// FUNCTION's frame name (`leak_n (leakn.c:37)`), from its tooltip.
fn frame_of(svg: &str, function: &str) -> String {
    let title = title_of(svg, function);
    let end = title.find(')').unwrap() + 1;
    title[..end].to_owned()
}

/// `--flame lost`: the same blocks live at the end in both runs, all still reachable in A
/// (`leakn 5`), none in B (`leakn 5 lose` drops the pointer to their chain). The live bytes do
/// not change; the lost bytes, from each run's leak check, do.
#[test]
fn diff_of_lost_bytes_shows_the_leaks_that_became_unreachable() {
    let Some(guard) = privileged("diff_of_lost_bytes_shows_the_leaks_that_became_unreachable")
    else {
        return;
    };
    let dir = guard.dir.path();
    let target = compile_c(dir, "leakn", Build::FramePointers);
    for (name, args) in [("kept", &["5"][..]), ("lost", &["5", "lose"][..])] {
        let run = memprof_run(&dir.join(name), &target, args);
        assert!(run.status.success(), "leakn {args:?}: {}", run.stderr);
    }
    let out = dir.join("diff");
    let mut cmd = Command::new(memprof());
    cmd.arg("diff")
        .arg(dir.join("kept"))
        .arg(dir.join("lost"))
        .args(["--flame", "lost", "--output"])
        .arg(&out);
    let diff = run_to_end(cmd);
    assert!(diff.status.success(), "{}", diff.stderr);
    let json = diff_json(&out);
    let totals = &json["totals"];
    assert_eq!(change(&totals["live_bytes_at_end"]), (540, 540, 0));
    // valgrind on `leakn 5 lose`: 48 bytes definitely and 492 indirectly lost (leakn.c).
    assert_eq!(change(&totals["lost_bytes_at_end"]), (0, 540, 540));
    let site = |function: &str| {
        json["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|site| {
                let stack = site["stack"].as_array().unwrap();
                let innermost = stack.last().unwrap().as_str().unwrap();
                innermost.starts_with(&format!("{function} (leakn.c:"))
            })
            .unwrap_or_else(|| panic!("no {function} in {json:#}"))
            .clone()
    };
    assert_eq!(change(&site("leak_n")["lost_bytes_at_end"]), (0, 240, 240));
    assert_eq!(
        change(&site("leak_fixed")["lost_bytes_at_end"]),
        (0, 300, 300)
    );
    assert_eq!(change(&site("churn")["lost_bytes_at_end"]), (0, 0, 0));
    for function in ["leak_n", "leak_fixed"] {
        assert_eq!(
            site(function)["live_bytes_at_end"]["delta"],
            0,
            "{function}"
        );
    }
    let table = &diff.stdout;
    let lost_line = table
        .lines()
        .find(|line| line.contains("lost at the end"))
        .unwrap_or_else(|| panic!("no lost line in\n{table}"));
    assert!(lost_line.contains("+540"), "{lost_line}");
    let svg = std::fs::read_to_string(out.join("diff.svg")).unwrap();
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert!(svg.contains("memprof diff: lost bytes"), "{svg}");
    assert_eq!(
        title_of(&svg, "leak_fixed"),
        format!(
            "{} (300 bytes, 55.56%; +55.56%)",
            frame_of(&svg, "leak_fixed")
        )
    );
    assert_eq!(
        title_of(&svg, "leak_n"),
        format!("{} (240 bytes, 44.44%; +44.44%)", frame_of(&svg, "leak_n"))
    );
}
