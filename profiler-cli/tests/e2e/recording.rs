//! Recordings: `memprof run` writes one as it goes, `memprof report` replays it into the same
//! files, and a recording cut short by SIGKILL is still readable up to its last chunk.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::report::{assert_nothing_lost, num};
use crate::support::{
    Build, compile_c, memprof, memprof_run, privileged, run_to_end, wait_deadline,
};

fn report_json(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `DIR/synthetic.mprof`: memprof's deterministic churn recording of 100,000 events (no root
/// needed).
fn synthetic_recording(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("synthetic.mprof");
    let status = Command::new(memprof())
        .args(["synthesize-recording", "--events", "100000"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    file
}

fn memprof_report(args: &[&str], file: &Path, output: &Path) -> crate::support::Finished {
    let mut cmd = Command::new(memprof());
    cmd.arg("report")
        .arg(file)
        .arg("--output")
        .arg(output)
        .args(args);
    run_to_end(cmd)
}

#[test]
fn offline_report_equals_the_live_one() {
    let Some(guard) = privileged("offline_report_equals_the_live_one") else {
        return;
    };
    let dir = guard.dir.path();
    let target = compile_c(dir, "leaks", Build::FramePointers);
    // A copy that is gone by the time the recording is reported.
    let removed = dir.join("leaks-removed");
    std::fs::copy(&target, &removed).unwrap();
    let live_dir = dir.join("live");
    let live = memprof_run(&live_dir, &removed, &[]);
    assert!(live.status.success(), "{}", live.stderr);
    assert!(live.stderr.contains("recording:"), "{}", live.stderr);
    let recording = live_dir.join("recording.mprof");
    // The recording names the frames itself: the report needs no file of the target's.
    std::fs::remove_file(&removed).unwrap();
    let offline_dir = dir.join("offline");
    let offline = memprof_report(&[], &recording, &offline_dir);
    assert!(offline.status.success(), "{}", offline.stderr);
    assert!(!offline.stderr.contains("ends early"), "{}", offline.stderr);
    assert!(!offline.stderr.contains("warning"), "{}", offline.stderr);
    let live_report = report_json(&live_dir);
    assert_nothing_lost(&live_report);
    let functions: Vec<&str> = live_report["analyses"]["stacks"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|frames| frames.as_array().unwrap())
        .filter_map(|frame| frame["function"].as_str())
        .collect();
    assert!(functions.contains(&"main"), "{functions:?}");
    // Everything, times and symbols included, is rebuilt from the recording alone.
    assert_eq!(report_json(&offline_dir), live_report);
    for file in ["leaks.folded", "alloc-bytes.folded", "peak.folded"] {
        assert_eq!(
            std::fs::read_to_string(live_dir.join(file)).unwrap(),
            std::fs::read_to_string(offline_dir.join(file)).unwrap(),
            "{file}"
        );
    }
    assert_eq!(
        std::fs::read(offline_dir.join("profile.pb.gz")).unwrap(),
        std::fs::read(live_dir.join("profile.pb.gz")).unwrap()
    );

    // --no-recording writes none; --recording puts it elsewhere.
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--no-recording", "--output"])
        .arg(dir.join("none"))
        .arg("--")
        .arg(&target);
    assert!(run_to_end(cmd).status.success());
    assert!(!dir.join("none/recording.mprof").exists());
    let elsewhere = dir.join("elsewhere.mprof");
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--recording"])
        .arg(&elsewhere)
        .arg("--output")
        .arg(dir.join("some"))
        .arg("--")
        .arg(&target);
    assert!(run_to_end(cmd).status.success());
    assert!(elsewhere.exists());
}

#[test]
fn a_killed_memprof_leaves_a_readable_recording() {
    let Some(guard) = privileged("a_killed_memprof_leaves_a_readable_recording") else {
        return;
    };
    let dir = guard.dir.path();
    let target = compile_c(dir, "churn", Build::FramePointers);
    let output = dir.join("out");
    let recording = output.join("recording.mprof");
    let mut child = Command::new(memprof())
        .args(["run", "--output"])
        .arg(&output)
        .arg("--")
        .arg(&target)
        .arg("1000000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a few complete chunks (a chunk is written each 64 Ki events or second).
    let start = Instant::now();
    while std::fs::metadata(&recording).map_or(0, |m| m.len()) < 200_000 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the recording did not grow"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The target is the child of memprof's launcher thread, not of its main thread.
    let target_pid: String = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .collect();
    assert!(!target_pid.trim().is_empty(), "no child of memprof found");
    child.kill().unwrap(); // SIGKILL
    wait_deadline(&mut child, Duration::from_secs(10), "killed memprof");
    for pid in target_pid.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let offline_dir = dir.join("offline");
    let offline = memprof_report(&[], &recording, &offline_dir);
    assert!(offline.status.success(), "{}", offline.stderr);
    assert!(
        offline.stderr.contains("the recording ends early"),
        "{}",
        offline.stderr
    );
    let report = report_json(&offline_dir);
    let allocations = num(&report, "summary.allocations");
    assert!(allocations >= 10_000, "{allocations} allocations replayed");
    // churn frees each block right after allocating it: at most the last one is live, unless
    // the ring overflowed (a busy machine); the file's last chunk says how many were lost.
    let frees = num(&report, "summary.frees");
    let lost = num(&report, "summary.lost_events");
    assert!(
        frees <= allocations && allocations <= frees + 1 + lost,
        "{allocations} allocations, {frees} frees, {lost} lost: {}",
        report["lost"]
    );
    assert!(report["target"]["exit"].is_null());
}

#[test]
fn report_formats_and_bad_files() {
    // No probes here: a synthetic recording, so no root needed.
    let dir = tempfile::tempdir().unwrap();
    let file = synthetic_recording(dir.path());
    let out = dir.path().join("pprof");
    let finished = memprof_report(&["--format", "pprof"], &file, &out);
    assert!(finished.status.success(), "{}", finished.stderr);
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["profile.pb.gz"]);
    let finished = memprof_report(&["--format", "text"], &file, &dir.path().join("text"));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(finished.stdout.contains("malloc"), "{}", finished.stdout);
    assert!(!dir.path().join("text").exists(), "text writes no files");

    let garbage = dir.path().join("garbage.mprof");
    std::fs::write(&garbage, b"this is not a recording").unwrap();
    let finished = memprof_report(&[], &garbage, &dir.path().join("g"));
    assert_eq!(finished.status.code(), Some(1));
    assert_eq!(
        finished.stderr,
        format!(
            "memprof: error: cannot read {}: not a memprof recording (bad magic) (at byte 0)\n",
            garbage.display()
        )
    );
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    let corrupt = dir.path().join("corrupt.mprof");
    std::fs::write(&corrupt, bytes).unwrap();
    let finished = memprof_report(&[], &corrupt, &dir.path().join("c"));
    assert_eq!(finished.status.code(), Some(1));
    assert!(
        finished
            .stderr
            .contains("corrupt chunk: checksum mismatch (at byte "),
        "{}",
        finished.stderr
    );
    assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
}

/// `memprof report --format text FILE | head -1`: a reader that closes the pipe early is no
/// error (it was "memprof: error: Broken pipe (os error 32)" and exit 1).
#[test]
fn a_text_report_whose_reader_is_gone_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = synthetic_recording(dir.path());
    let mut child = Command::new(memprof())
        .args(["report", "--format", "text"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The read end closes before memprof has replayed anything: its first write meets a
    // pipe with no reader.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "{stderr}");
}
