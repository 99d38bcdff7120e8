//! `memprof run` following the process tree (samples/c/tree.c): every process image gets its
//! own heap and report in DIR/processes/PID-N/, listed in DIR/report.json's `processes`, with
//! exact figures per image, on both capture paths: forked children (which start with their
//! parent's live blocks), a grandchild, a child that exits with a code and one killed, exec
//! chains, a shell running two programs, a pre-fork server under load, 200 short children, a
//! daemonized grandchild, `--no-follow`, and `attach --children`.
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::report::{Name, assert_nothing_lost, assert_num, assert_sites};
use crate::support::{
    Build, Capture, DEADLINE, Finished, compile_c, compile_c_static, line_channel, memprof,
    on_both_paths, privileged, rest_of, run_to_end, wait_deadline, wait_for_line,
};

/// `memprof run --capture PATH [FLAGS] --output DIR/out -- COMMAND...`, required to succeed.
fn run(capture: Capture, dir: &Path, flags: &[&str], command: &[&str]) -> (Finished, Value) {
    let output = dir.join("out");
    let mut cmd = Command::new(memprof());
    cmd.arg("run")
        .args(["--capture", capture.arg()])
        .args(flags)
        .arg("--output")
        .arg(&output)
        .arg("--")
        .args(command);
    let finished = run_to_end(cmd);
    assert!(
        finished.status.success(),
        "memprof run {command:?}: {}\n{}",
        finished.status,
        finished.stderr
    );
    let report = finished.report(&output);
    (finished, report)
}

fn processes(report: &Value) -> &Vec<Value> {
    report["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("report.json has no processes: {}", report["warnings"]))
}

/// The images whose command is `command`.
fn images_of<'a>(report: &'a Value, command: &[&str]) -> Vec<&'a Value> {
    processes(report)
        .iter()
        .filter(|image| image["command"] == serde_json::json!(command))
        .collect()
}

/// Asserts an image's figures: allocations, frees, leaked blocks and bytes, inherited blocks
/// and bytes.
fn assert_image(image: &Value, figures: [u64; 6]) {
    let seen = [
        "allocations",
        "frees",
        "leaked_blocks",
        "leaked_bytes",
        "inherited_blocks",
        "inherited_bytes",
    ]
    .map(|field| image[field].as_u64().unwrap_or(u64::MAX));
    assert_eq!(
        seen, figures,
        "(allocations, frees, leaked blocks/bytes, inherited blocks/bytes) of {image}"
    );
}

/// The report.json of an image, from its `output` directory.
fn image_report(out: &Path, image: &Value) -> Value {
    let dir = out.join(image["output"].as_str().expect("output"));
    let text = std::fs::read_to_string(dir.join("report.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    serde_json::from_str(&text).expect("report.json")
}

fn exit_code(image: &Value) -> Value {
    image["exit"]["code"].clone()
}

on_both_paths!(
    tree_of_processes(),
    every_process_of_a_tree_has_its_own_heap,
    every_process_of_a_tree_has_its_own_heap_preload
);

fn tree_of_processes(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let tree = tree.to_str().unwrap();
    let (finished, report) = run(capture, env.dir.path(), &[], &[tree, "tree"]);
    let out = env.dir.path().join("out");
    assert_nothing_lost(&report);
    // The launched process's figures stay at the top: its own 3 blocks only.
    assert_num(&report, "summary.allocations", 3);
    assert_num(&report, "summary.live_bytes", 1200);
    let all = processes(&report);
    assert_eq!(all.len(), 5, "{all:#?}");
    let root = &all[0];
    let root_pid = root["pid"].as_u64().unwrap();
    assert_eq!(root["output"], ".");
    assert_image(root, [3, 0, 3, 1200, 0, 0]);
    // Lost sites come first (the leak check runs on the launched process).
    let frames: Vec<_> = root["top_leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["frame"])
        .collect();
    assert_eq!(
        frames,
        ["before_fork", "parent_after", "before_fork"],
        "{root}"
    );
    assert_num(&report, "summary.leak_check.definitely_lost.bytes", 100);
    // The children, in order of start: A, B, C (B's child), D.
    let (a, b, c, d) = (&all[1], &all[2], &all[3], &all[4]);
    for child in [a, b, d] {
        assert_eq!(child["parent_pid"], root_pid, "{child}");
    }
    assert_eq!(c["parent_pid"], b["pid"], "{c}");
    // A frees one of the two blocks it inherited.
    assert_image(a, [3, 1, 4, 700, 2, 200]);
    assert_eq!(exit_code(a), 0);
    assert_image(b, [4, 0, 6, 400, 2, 200]);
    assert_eq!(exit_code(b), 3);
    assert_image(c, [1, 0, 3, 500, 2, 200]);
    assert_image(d, [2, 0, 4, 354, 2, 200]);
    assert_eq!(d["exit"]["signal"], 9, "{d}");
    for image in &all[1..] {
        assert_eq!(image["end"], "exit");
        assert_eq!(image["capture"], capture.arg());
        let pid = image["pid"].as_u64().unwrap();
        assert_eq!(image["output"], format!("processes/{pid}-1"));
    }
    // Each image's own report: A's heap is its own, its inherited blocks said apart.
    let a_report = image_report(&out, a);
    assert_num(&a_report, "target.pid", a["pid"].as_u64().unwrap());
    assert_num(&a_report, "summary.allocations", 3);
    assert_num(&a_report, "summary.frees", 1);
    assert_num(&a_report, "summary.unknown_frees", 0);
    assert_eq!(
        a_report["summary"]["inherited_at_fork"],
        serde_json::json!({"blocks": 2, "bytes": 200})
    );
    assert_sites(&a_report, "leaks", Name::Exact("child_a_leak"), 3, 600);
    assert_sites(&a_report, "leaks", Name::Exact("parent_after"), 0, 0);
    let c_report = image_report(&out, c);
    assert_sites(&c_report, "leaks", Name::Exact("grandchild_leak"), 1, 300);
    // A's recording replays to the same heap: the inheritance is recorded.
    let mut cmd = Command::new(memprof());
    cmd.args(["report", "--format", "json", "--output"])
        .arg(env.dir.path().join("replayed"))
        .arg(
            out.join(a["output"].as_str().unwrap())
                .join("recording.mprof"),
        );
    let replay = run_to_end(cmd);
    assert!(replay.status.success(), "{replay:?}");
    let replayed = replay.report(&env.dir.path().join("replayed"));
    assert_eq!(replayed["summary"], a_report["summary"]);
    // `memprof report DIR` replays the whole tree: the same images, the same figures.
    let tree_dir = env.dir.path().join("replayed-tree");
    let mut cmd = Command::new(memprof());
    cmd.arg("report").arg(&out).arg("--output").arg(&tree_dir);
    let replay = run_to_end(cmd);
    assert!(replay.status.success(), "{replay:?}");
    let replayed_tree = replay.report(&tree_dir);
    assert_eq!(replayed_tree["processes"], report["processes"]);
    assert_eq!(
        image_report(&tree_dir, a)["summary"],
        a_report["summary"],
        "A replayed from the tree"
    );
    // Without report.json (memprof killed before it wrote it), the tree comes from the
    // recordings' headers and replays: the same images, parents, figures and ends.
    let bare = env.dir.path().join("bare");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&out)
        .arg(&bare)
        .status()
        .expect("cp");
    assert!(copied.success());
    std::fs::remove_file(bare.join("report.json")).unwrap();
    let bare_replayed = env.dir.path().join("bare-replayed");
    let mut cmd = Command::new(memprof());
    cmd.arg("report")
        .arg(&bare)
        .arg("--output")
        .arg(&bare_replayed);
    let replay = run_to_end(cmd);
    assert!(replay.status.success(), "{replay:?}");
    let rebuilt = replay.report(&bare_replayed);
    let essentials = |report: &Value| -> Vec<Vec<Value>> {
        processes(report)
            .iter()
            .map(|image| {
                [
                    "pid",
                    "image",
                    "parent_pid",
                    "command",
                    "output",
                    "allocations",
                    "frees",
                    "leaked_bytes",
                    "end",
                    "exit",
                ]
                .iter()
                .map(|field| image[*field].clone())
                .collect()
            })
            .collect()
    };
    assert_eq!(essentials(&rebuilt), essentials(&report));
    // A directory without a recording: one line, no panic.
    let mut cmd = Command::new(memprof());
    cmd.arg("report")
        .arg(env.dir.path().join("replayed"))
        .arg("--output")
        .arg(env.dir.path().join("nothing"));
    let refused = run_to_end(cmd);
    assert!(!refused.status.success());
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("holds no recording.mprof"),
        "{}",
        refused.stderr
    );
    // report.html links every image's page.
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    for image in &all[1..] {
        let link = format!("href=\"{}/report.html\"", image["output"].as_str().unwrap());
        assert!(html.contains(&link), "no {link} in report.html");
    }
    // The summary has one line per image, and the leak sites across them.
    assert!(
        finished.stderr.contains("Processes: 5 images"),
        "{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("Top leak sites across the processes (merged by function):"),
        "{}",
        finished.stderr
    );
}

on_both_paths!(
    exec_chain(),
    an_exec_chain_ends_each_image,
    an_exec_chain_ends_each_image_preload
);

fn exec_chain(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let tree = tree.to_str().unwrap();
    // sh forks (the command is not its last), the child execs env, which execs the chain.
    let script = format!("env {tree} chain 2; true");
    let (_, report) = run(capture, env.dir.path(), &[], &["sh", "-c", &script]);
    let out = env.dir.path().join("out");
    assert_nothing_lost(&report);
    let env_image = images_of(&report, &["env", tree, "chain", "2"]);
    assert_eq!(env_image.len(), 1, "{:#?}", processes(&report));
    let pid = env_image[0]["pid"].clone();
    let steps: Vec<&Value> = (0..3)
        .rev()
        .map(|k| {
            let k = k.to_string();
            let found = images_of(&report, &[tree, "chain", &k]);
            assert_eq!(found.len(), 1, "chain {k}: {:#?}", processes(&report));
            found[0]
        })
        .collect();
    let first = env_image[0]["image"].as_u64().unwrap();
    assert!(first >= 2, "sh's image of the child comes first");
    for (n, step) in steps.iter().enumerate() {
        assert_eq!(step["pid"], pid, "one pid through the chain");
        assert_eq!(step["image"].as_u64(), Some(first + 1 + n as u64));
        // Its recording says where it stands in the tree.
        let file = out
            .join(step["output"].as_str().unwrap())
            .join("recording.mprof");
        let reader = profiler_core::recording::Reader::new(std::fs::File::open(&file).unwrap())
            .expect("the image's recording");
        let header = reader.header();
        assert_eq!(Some(u64::from(header.pid)), pid.as_u64());
        let lineage = header.lineage.expect("a followed image's lineage");
        assert_eq!(
            lineage.parent_pid.map(u64::from),
            step["parent_pid"].as_u64()
        );
        assert_eq!(u64::from(lineage.image), first + 1 + n as u64);
    }
    // Each step's blocks are released by its exec, neither freed nor leaked.
    for (step, k) in steps[..2].iter().zip([2u64, 1]) {
        assert_eq!(step["end"], "exec");
        assert_image(step, [k + 1, 0, 0, 0, 0, 0]);
        let own = image_report(&out, step);
        assert_eq!(
            own["summary"]["released_by_exec"],
            serde_json::json!({"blocks": k + 1, "bytes": 64 * (k + 1)})
        );
    }
    assert_eq!(steps[2]["end"], "exit");
    assert_eq!(exit_code(steps[2]), 0);
    assert_image(steps[2], [6, 0, 6, 224, 0, 0]);
}

on_both_paths!(
    shell_sequence(),
    a_shell_running_two_programs_profiles_both,
    a_shell_running_two_programs_profiles_both_preload
);

fn shell_sequence(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let tree = tree.to_str().unwrap();
    // `; true`: any shell forks for both (bash would exec a last command itself).
    let script = format!("{tree} seq 1; {tree} seq 2; true");
    let (_, report) = run(capture, env.dir.path(), &[], &["sh", "-c", &script]);
    assert_nothing_lost(&report);
    for (n, bytes) in [(1, 128), (2, 256)] {
        let n_arg = n.to_string();
        let found = images_of(&report, &[tree, "seq", &n_arg]);
        assert_eq!(found.len(), 1, "{:#?}", processes(&report));
        assert_image(found[0], [n, 0, n, bytes, 0, 0]);
        assert_eq!(found[0]["parent_pid"], report["processes"][0]["pid"]);
    }
    // `memprof diff` compares two images by their directories.
    let out = env.dir.path().join("out");
    let dir_of = |n: &str| {
        out.join(
            images_of(&report, &[tree, "seq", n])[0]["output"]
                .as_str()
                .unwrap(),
        )
    };
    let diffed = env.dir.path().join("diffed");
    let mut cmd = Command::new(memprof());
    cmd.arg("diff")
        .arg(dir_of("1"))
        .arg(dir_of("2"))
        .arg("--output")
        .arg(&diffed);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{finished:?}");
    let diff: Value =
        serde_json::from_str(&std::fs::read_to_string(diffed.join("diff.json")).unwrap()).unwrap();
    assert_eq!(
        diff["totals"]["allocations"]["delta"], 1,
        "{}",
        diff["totals"]
    );
    assert_eq!(diff["totals"]["live_bytes_at_end"]["delta"], 128);
}

on_both_paths!(
    launched_execs(),
    each_program_the_launched_process_execs_is_an_image,
    each_program_the_launched_process_execs_is_an_image_preload
);

/// The launched process itself execs: `bash -c "A; B"` forks for A and execs B; `env` execs
/// a chain of three. Each program it runs is an image; the session's own report is the last
/// one's, and the ones before have their own directories and recordings.
fn launched_execs(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let tree = tree.to_str().unwrap();
    let script = format!("{tree} seq 1; {tree} seq 2");
    let (_, report) = run(capture, env.dir.path(), &[], &["bash", "-c", &script]);
    let out = env.dir.path().join("out");
    assert_nothing_lost(&report);
    // The top is bash's last program, B, alone: 2 blocks of 128 bytes.
    assert_eq!(
        report["target"]["command"],
        serde_json::json!([tree, "seq", "2"])
    );
    assert_num(&report, "summary.allocations", 2);
    assert_num(&report, "summary.live_bytes", 256);
    let root_pid = report["target"]["pid"].clone();
    let launched: Vec<&Value> = processes(&report)
        .iter()
        .filter(|image| image["pid"] == root_pid)
        .collect();
    assert_eq!(launched.len(), 2, "{:#?}", processes(&report));
    let (bash, last) = (launched[0], launched[1]);
    assert_eq!(bash["command"], serde_json::json!(["bash", "-c", script]));
    assert_eq!(
        (bash["image"].as_u64(), last["image"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(bash["end"], "exec");
    assert_eq!(bash["output"], format!("processes/{root_pid}-1"));
    assert_eq!(
        bash["leaked_bytes"], 0,
        "bash's blocks are released by the exec"
    );
    assert_eq!(last["output"], ".");
    assert_image(last, [2, 0, 2, 256, 0, 0]);
    assert_eq!(exit_code(last), 0);
    let bash_report = image_report(&out, bash);
    assert_eq!(bash_report["summary"]["live_bytes"], 0);
    assert!(
        bash_report["summary"]["released_by_exec"]["blocks"].as_u64() > Some(0),
        "{}",
        bash_report["summary"]
    );
    // A: bash's child, its own images (the fork's copy of bash, then A).
    let a = images_of(&report, &[tree, "seq", "1"]);
    assert_eq!(a.len(), 1, "{:#?}", processes(&report));
    assert_image(a[0], [1, 0, 1, 128, 0, 0]);
    // bash's image replays alone from its own recording, and the tree from DIR.
    let replayed = env.dir.path().join("bash-replayed");
    let mut cmd = Command::new(memprof());
    cmd.args(["report", "--format", "json", "--output"])
        .arg(&replayed)
        .arg(
            out.join(bash["output"].as_str().unwrap())
                .join("recording.mprof"),
        );
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{finished:?}");
    assert_eq!(
        finished.report(&replayed)["summary"],
        bash_report["summary"]
    );
    let tree_dir = env.dir.path().join("tree-replayed");
    let mut cmd = Command::new(memprof());
    cmd.arg("report").arg(&out).arg("--output").arg(&tree_dir);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{finished:?}");
    let whole = finished.report(&tree_dir);
    assert_eq!(whole["processes"], report["processes"]);
    assert_eq!(whole["summary"], report["summary"]);

    // An exec chain of the launched process: env, then chain 2, 1 and 0, one pid.
    let chain_dir = env.dir.path().join("chain");
    std::fs::create_dir(&chain_dir).unwrap();
    let (_, report) = run(capture, &chain_dir, &[], &["env", tree, "chain", "2"]);
    assert_nothing_lost(&report);
    let images = processes(&report);
    let commands: Vec<&Value> = images.iter().map(|image| &image["command"]).collect();
    assert_eq!(
        commands,
        [
            &serde_json::json!(["env", tree, "chain", "2"]),
            &serde_json::json!([tree, "chain", "2"]),
            &serde_json::json!([tree, "chain", "1"]),
            &serde_json::json!([tree, "chain", "0"]),
        ]
    );
    for (n, image) in images.iter().enumerate() {
        assert_eq!(image["pid"], images[0]["pid"]);
        assert_eq!(image["image"].as_u64(), Some(n as u64 + 1));
    }
    // Each step's blocks are released by its exec; the last is the session's own.
    assert_image(&images[1], [3, 0, 0, 0, 0, 0]);
    assert_image(&images[2], [2, 0, 0, 0, 0, 0]);
    assert_image(&images[3], [6, 0, 6, 224, 0, 0]);
    assert_eq!(images[3]["output"], ".");
    assert_num(&report, "summary.allocations", 6);
}

on_both_paths!(
    unseen_programs(),
    programs_whose_calls_cannot_be_seen_are_named,
    programs_whose_calls_cannot_be_seen_are_named_preload
);

/// Children that exec programs neither capture path reaches are named in the warnings, not
/// left as images with no calls: a statically linked program (both paths); one served by
/// another allocator than the probed files (uprobes); one whose environment dropped the
/// capture library (preload).
fn unseen_programs(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let tree = tree.to_str().unwrap();
    let fixed = compile_c_static(env.dir.path(), "leakn");
    let fixed = fixed.to_str().unwrap();
    let jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    let script = format!(
        "{fixed} 3; LD_PRELOAD={jemalloc} {tree} seq 1; env -u LD_PRELOAD {tree} seq 2; true"
    );
    let (_, report) = run(capture, env.dir.path(), &[], &["sh", "-c", &script]);
    let warnings: Vec<String> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_owned())
        .collect();
    let about = |command: &[&str]| -> Vec<String> {
        let found = images_of(&report, command);
        assert_eq!(found.len(), 1, "{command:?}: {:#?}", processes(&report));
        let prefix = format!("pid {} image {}: ", found[0]["pid"], found[0]["image"]);
        warnings
            .iter()
            .filter_map(|w| w.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    };
    assert_eq!(
        about(&[fixed, "3"]),
        [format!(
            "{fixed} is statically linked: its allocator is part of it, which no capture path \
             reaches; its calls are not seen"
        )]
    );
    assert_image(images_of(&report, &[fixed, "3"])[0], [0, 0, 0, 0, 0, 0]);
    let preloaded = about(&[tree, "seq", "1"]);
    let dropped = about(&[tree, "seq", "2"]);
    match capture {
        Capture::Uprobes => {
            assert_eq!(
                preloaded,
                [
                    "its malloc comes from libjemalloc.so.2, which the probes (on the launched \
                  process's allocator) do not cover: its calls are not seen"
                ]
            );
            // The probes do not need LD_PRELOAD: seen, no warning.
            assert!(dropped.is_empty(), "{dropped:?}");
            assert_image(
                images_of(&report, &[tree, "seq", "2"])[0],
                [2, 0, 2, 256, 0, 0],
            );
        }
        Capture::Preload => {
            let gone = "its environment no longer preloads libmemprof_capture.so: its calls \
                        are not seen";
            assert_eq!(preloaded, [gone]);
            assert_eq!(dropped, [gone]);
        }
    }
    // The image's own report says it too.
    let out = env.dir.path().join("out");
    let own = image_report(&out, images_of(&report, &[fixed, "3"])[0]);
    assert!(
        own["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("is statically linked")),
        "{}",
        own["warnings"]
    );
}

on_both_paths!(
    closed_descriptors(),
    a_child_that_closes_its_descriptors_before_exec_is_profiled,
    a_child_that_closes_its_descriptors_before_exec_is_profiled_preload
);

fn closed_descriptors(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let tree = tree.to_str().unwrap();
    let (_, report) = run(capture, env.dir.path(), &[], &[tree, "closefds"]);
    assert_nothing_lost(&report);
    let found = images_of(&report, &[tree, "seq", "3"]);
    assert_eq!(found.len(), 1, "{:#?}", processes(&report));
    assert_image(found[0], [3, 0, 3, 384, 0, 0]);
}

on_both_paths!(
    no_follow(),
    no_follow_profiles_the_launched_process_alone,
    no_follow_profiles_the_launched_process_alone_preload
);

fn no_follow(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let (_, report) = run(
        capture,
        env.dir.path(),
        &["--no-follow"],
        &[tree.to_str().unwrap(), "tree"],
    );
    assert_nothing_lost(&report);
    assert!(report.get("processes").is_none(), "{}", report["processes"]);
    assert!(!env.dir.path().join("out/processes").exists());
    assert_num(&report, "summary.allocations", 3);
    assert_num(&report, "summary.live_bytes", 1200);
    assert_sites(&report, "leaks", Name::Exact("child_a_leak"), 0, 0);
}

on_both_paths!(
    fork_bomb(),
    two_hundred_short_children_are_all_profiled,
    two_hundred_short_children_are_all_profiled_preload
);

fn fork_bomb(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let (_, report) = run(
        capture,
        env.dir.path(),
        &[],
        &[tree.to_str().unwrap(), "bomb", "200"],
    );
    assert_nothing_lost(&report);
    assert!(report.get("warnings").is_none(), "{}", report["warnings"]);
    let all = processes(&report);
    assert_eq!(all.len(), 201);
    assert_image(&all[0], [0, 0, 0, 0, 0, 0]);
    let mut sizes: Vec<u64> = all[1..]
        .iter()
        .map(|child| {
            assert_eq!(child["allocations"], 1, "{child}");
            assert_eq!(child["leaked_blocks"], 1, "{child}");
            assert_eq!(exit_code(child), 0, "{child}");
            child["leaked_bytes"].as_u64().unwrap()
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, (1000..1200).collect::<Vec<u64>>());
}

on_both_paths!(
    daemon(),
    a_daemonized_grandchild_is_let_go_running,
    a_daemonized_grandchild_is_let_go_running_preload
);

fn daemon(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let (_, report) = run(
        capture,
        env.dir.path(),
        &[],
        &[tree.to_str().unwrap(), "daemon"],
    );
    let all = processes(&report);
    assert_eq!(all.len(), 3, "{all:#?}");
    let daemon = &all[2];
    assert_eq!(daemon["parent_pid"], all[1]["pid"]);
    assert_eq!(daemon["end"], "running");
    assert!(daemon["end_secs"].is_null());
    assert_image(daemon, [1, 0, 1, 42, 0, 0]);
    // Left running: neither traced nor stopped, and it ends on its own.
    let status_path = format!("/proc/{}/status", daemon["pid"]);
    let status = std::fs::read_to_string(&status_path).expect("the daemon still runs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("TracerPid:"), "0", "{status}");
    assert!(field("State:").starts_with('S'), "{status}");
    let start = Instant::now();
    while std::fs::read_to_string(&status_path).is_ok_and(|status| !status.contains("State:\tZ")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

on_both_paths!(
    pre_fork_server(),
    a_pre_fork_server_under_load_loses_nothing,
    a_pre_fork_server_under_load_loses_nothing_preload
);

fn pre_fork_server(test: &str, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    // A 1 MiB ring: four workers writing at once fill it, and wait for memprof to drain.
    let (_, report) = run(
        capture,
        env.dir.path(),
        &["--ring-mib", "1"],
        &[tree.to_str().unwrap(), "prefork", "4", "20000"],
    );
    assert_nothing_lost(&report);
    assert!(report.get("warnings").is_none(), "{}", report["warnings"]);
    let all = processes(&report);
    assert_eq!(all.len(), 5, "{all:#?}");
    assert_image(&all[0], [1, 1, 0, 0, 0, 0]);
    // Workers in any order of start: told apart by what they leak.
    let mut workers: Vec<&Value> = all[1..].iter().collect();
    workers.sort_by_key(|worker| worker["leaked_blocks"].as_u64());
    for (i, worker) in workers.iter().enumerate() {
        let i = i as u64;
        assert_image(
            worker,
            [20_000 + i + 1, 20_000, i + 2, 256 * (i + 1) + 4096, 1, 4096],
        );
        assert_eq!(exit_code(worker), 0);
    }
}

#[test]
fn attach_children_follows_what_the_target_starts_in_the_window() {
    let Some(env) = privileged("attach_children_follows_what_the_target_starts_in_the_window")
    else {
        return;
    };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let mut target = Command::new(&tree)
        .arg("attach")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tree attach");
    let mut to_target = target.stdin.take().expect("piped stdin");
    let from_target = line_channel(target.stdout.take().expect("piped stdout"));
    wait_for_line(&from_target, "ready", "tree attach");
    let output = env.dir.path().join("out");
    let mut profiler = Command::new(memprof())
        .arg("attach")
        .arg(target.id().to_string())
        .arg("--children")
        .arg("--output")
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start memprof attach");
    let stderr = line_channel(profiler.stderr.take().expect("piped stderr"));
    wait_for_line(&stderr, "attached", "memprof attach");
    to_target.write_all(b"go\n").expect("write to the target");
    wait_for_line(&from_target, "done", "tree attach");
    kill(Pid::from_raw(profiler.id() as i32), Signal::SIGINT).expect("SIGINT memprof");
    let status = wait_deadline(&mut profiler, DEADLINE, "memprof attach");
    assert!(
        status.success(),
        "memprof attach: {status}\n{}",
        rest_of(&stderr)
    );
    // The target runs on, untraced.
    let target_status =
        std::fs::read_to_string(format!("/proc/{}/status", target.id())).expect("target runs");
    assert!(target_status.contains("TracerPid:\t0\n"), "{target_status}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(output.join("report.json")).expect("report.json"),
    )
    .expect("JSON");
    assert_nothing_lost(&report);
    assert_eq!(report["mode"], "attach");
    let all = processes(&report);
    assert_eq!(all.len(), 5, "{all:#?}");
    assert_eq!(all[0]["end"], "running");
    assert_image(&all[0], [3, 0, 3, 1200, 0, 0]);
    let (a, b, c, d) = (&all[1], &all[2], &all[3], &all[4]);
    assert_image(a, [3, 1, 4, 700, 2, 200]);
    assert_image(b, [4, 0, 6, 400, 2, 200]);
    assert_eq!(exit_code(b), 3);
    assert_eq!(c["parent_pid"], b["pid"]);
    assert_image(c, [1, 0, 3, 500, 2, 200]);
    assert_image(d, [2, 0, 4, 354, 2, 200]);
    assert_eq!(d["exit"]["signal"], 9);
    assert_eq!(image_report(&output, a)["mode"], "attach");
    drop(to_target);
    let status = wait_deadline(&mut target, DEADLINE, "tree attach after EOF");
    assert_eq!(status.code(), Some(0));
}

/// samples/c/fork_threads.c: forks land while other threads are inside the library's hooks
/// (holding its unwinder's locks); every child still allocates, is recorded when followed, and
/// exits. Preload only: the probes' path takes no lock in the target.
#[test]
fn children_forked_while_threads_allocate_can_allocate() {
    let Some(env) = privileged("children_forked_while_threads_allocate_can_allocate") else {
        return;
    };
    let target = compile_c(env.dir.path(), "fork_threads", Build::NoFramePointers);
    let target = target.to_str().unwrap();
    for flags in [&[][..], &["--no-follow"][..]] {
        let (finished, report) = run(Capture::Preload, env.dir.path(), flags, &[target, "100"]);
        assert!(
            finished.stdout.contains("forks: all"),
            "{flags:?}: {finished:?}"
        );
        assert_nothing_lost(&report);
        assert_sites(&report, "leaks", Name::Exact("leak_after_forks"), 1, 4096);
        if flags.is_empty() {
            let children = &processes(&report)[1..];
            assert_eq!(children.len(), 100);
            for child in children {
                assert_eq!(child["allocations"], 1, "{child}");
                assert_eq!(exit_code(child), 0, "{child}");
            }
        } else {
            assert!(report.get("processes").is_none(), "{}", report["processes"]);
        }
    }
}

/// The probes copy a main thread's stack only up to its `argc`, above which lie the
/// arguments and the environment, never a frame; an exec'd program is bounded by its own
/// `argc` (the kernel's `mm->start_stack`, which each exec sets), not copied `--stack-bytes`
/// deep into a 12 KB environment.
#[test]
fn an_execd_programs_stack_copies_stop_at_its_argc() {
    let Some(env) = privileged("an_execd_programs_stack_copies_stop_at_its_argc") else {
        return;
    };
    let tree = compile_c(env.dir.path(), "tree", Build::NoFramePointers);
    let output = env.dir.path().join("out");
    let padding = "x".repeat(12_000);
    let finished = crate::support::memprof_run_with(
        Capture::Uprobes,
        &[("MEMPROF_TIMINGS", "1"), ("TEST_PADDING", &padding)],
        &output,
        &tree,
        &["chain", "1"],
    );
    assert!(finished.status.success(), "{}", finished.stderr);
    // The collector's figures are the last image's (its 6 allocations).
    let (stacks, per_snapshot) = crate::support::unwinding_line(&finished.stderr);
    assert_eq!(stacks, 6, "{}", finished.stderr);
    // main's frames and the loader's start: a few hundred bytes; unbounded, 8 KiB each.
    assert!(per_snapshot < 1024.0, "{per_snapshot} bytes per snapshot");
}
