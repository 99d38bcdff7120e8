//! memprof runs as root: another user must not be able to turn what it writes against a file
//! of root's choosing, nor read the target's data it writes. The other user here is `nobody`
//! (through util-linux's setpriv), planting names where it may.
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;

use crate::support::{
    Build, Capture, compile_c, memprof, memprof_run, on_both_paths, privileged, run_to_end,
};

const NOBODY: u32 = 65534;

/// Runs `args` as user and group `nobody`, and requires success.
fn as_nobody(args: &[&str]) {
    let status = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .status()
        .expect("run setpriv (util-linux)");
    assert!(status.success(), "as nobody: {args:?}: {status}");
}

/// A directory anyone may add names to, like /tmp: root's, sticky, mode 1777; inside a
/// directory nobody can traverse.
fn shared_directory(root: &Path) -> std::path::PathBuf {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = root.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    shared
}

#[test]
fn names_another_user_planted_in_the_output_directory_are_replaced_not_followed() {
    let Some(env) = privileged("names_another_user_planted_in_the_output_directory") else {
        return;
    };
    let target = compile_c(env.dir.path(), "exit_status", Build::FramePointers);
    let shared = shared_directory(env.dir.path());
    let victim = env.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let planted = [
        "recording.mprof",
        "report.json",
        "report.html",
        "leaks.svg",
        "profile.pb.gz",
    ];
    for name in planted {
        as_nobody(&[
            "ln",
            "-s",
            victim.to_str().unwrap(),
            shared.join(name).to_str().unwrap(),
        ]);
    }

    let finished = memprof_run(&shared, &target, &["0"]);
    assert!(
        finished.status.success(),
        "memprof run into a sticky directory of its own: {}\n{}",
        finished.status,
        finished.stderr
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    for name in planted {
        let metadata = std::fs::symlink_metadata(shared.join(name)).unwrap();
        assert!(metadata.file_type().is_file(), "{name} is still a symlink");
        assert_eq!(metadata.uid(), 0, "{name}");
        assert_eq!(
            metadata.mode() & 0o777,
            0o600,
            "{name}: the target's data is readable by root only"
        );
    }
    assert_eq!(finished.report(&shared)["target"]["exit"]["code"], 0);
}

#[test]
fn an_output_directory_another_user_controls_is_refused_before_the_target_runs() {
    let Some(env) = privileged("an_output_directory_another_user_controls") else {
        return;
    };
    let shared = shared_directory(env.dir.path());
    let theirs = shared.join("theirs");
    as_nobody(&["mkdir", theirs.to_str().unwrap()]);
    let ran = env.dir.path().join("ran");

    let mut cmd = Command::new(memprof());
    cmd.arg("run")
        .arg("--output")
        .arg(&theirs)
        .args(["--", "touch"])
        .arg(&ran);
    let finished = crate::support::run_to_end(cmd);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert_eq!(
        finished.stderr,
        format!(
            "memprof: error: output directory {} can be written by other users (it belongs to user \
             {NOBODY}); use a directory only you can write\n",
            theirs.display()
        )
    );
    assert!(!ran.exists(), "the target must not run");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);

    // A symlink standing for the output directory is refused the same way.
    let link = shared.join("link");
    as_nobody(&[
        "ln",
        "-s",
        env.dir.path().to_str().unwrap(),
        link.to_str().unwrap(),
    ]);
    let mut cmd = Command::new(memprof());
    cmd.arg("run")
        .arg("--output")
        .arg(&link)
        .args(["--", "touch"])
        .arg(&ran);
    let finished = crate::support::run_to_end(cmd);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("is a symbolic link"),
        "{}",
        finished.stderr
    );
    assert!(!ran.exists(), "the target must not run");
}

on_both_paths!(
    check_run_as_user(),
    run_user_runs_the_target_without_roots_privileges,
    run_user_runs_the_target_without_roots_privileges_preload
);

/// `run --user nobody`: the target runs as nobody (its ids and groups), memprof still
/// profiles it, and the files it writes are root's own, readable by root only.
fn check_run_as_user(test: &str, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let output = p.dir.path().join("out");
    let mut cmd = Command::new(memprof());
    cmd.args([
        "run",
        "--user",
        "nobody",
        "--capture",
        capture.arg(),
        "--output",
    ])
    .arg(&output)
    .args(["--", "/usr/bin/id"]);
    let finished = run_to_end(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert!(
        finished
            .stdout
            .starts_with(&format!("uid={}(nobody) gid={}", nobody.uid, nobody.gid)),
        "{}",
        finished.stdout
    );
    let report = finished.report(&output);
    assert_eq!(report["target"]["capture"]["path"], capture.arg());
    assert!(crate::report::num(&report, "summary.allocations") > 0);
    let file = std::fs::metadata(output.join("report.json")).unwrap();
    assert_eq!((file.uid(), file.mode() & 0o777), (0, 0o600));

    // A user that does not exist: one line, before anything runs.
    let mut cmd = Command::new(memprof());
    cmd.args(["run", "--user", "no-such-user-here", "--output"])
        .arg(p.dir.path().join("none"))
        .args(["--", "/usr/bin/id"]);
    let finished = run_to_end(cmd);
    assert_eq!(finished.status.code(), Some(1));
    assert_eq!(
        finished.stderr.trim(),
        "memprof: error: no user named no-such-user-here"
    );
    assert!(finished.stdout.is_empty());
}
