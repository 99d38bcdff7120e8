//! `memprof run --live` and `memprof attach --live` in a real terminal (tmux): the view shows
//! the leak as it happens, `q` leaves it while profiling goes on, and the files are those of a
//! session without `--live`.
use crate::attach::{Waiter, assert_waiter_window};
use crate::report::{Name, assert_sites};
use crate::support::{Build, compile_c, memprof, privileged, run_to_end};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// A tmux session, killed when the test ends, passed or not.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: String, width: u16, height: u16, command: &str) -> Tmux {
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(command)
            .status()
            .expect("tmux is needed for the live view's test (cargo xtask setup installs it)");
        assert!(status.success(), "tmux new-session failed: {status}");
        Tmux { name }
    }

    fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn send(&self, keys: &str) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.name, keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success(), "tmux send-keys {keys} failed");
    }

    /// Polls the screen until `done` accepts it; panics with the last screen after `limit`.
    fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < limit,
                "{what} not seen within {limit:?}; the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn wait_for_file(path: &Path, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "{} not written within {limit:?}: memprof did not end",
            path.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn live_view_shows_the_leak_and_q_leaves_it() {
    let Some(p) = privileged("live_view_shows_the_leak_and_q_leaves_it") else {
        return;
    };
    let target = compile_c(p.dir.path(), "slow_leak", Build::FramePointers);
    let output = p.dir.path().join("out");
    let status = p.dir.path().join("status");
    let command = format!(
        "{} run --live --output {} -- {} 100; echo $? > {}",
        memprof().display(),
        output.display(),
        target.display(),
        status.display()
    );
    let tmux = Tmux::start(
        format!("memprof-live-{}", std::process::id()),
        100,
        30,
        &command,
    );
    let screen = tmux.wait_for(Duration::from_secs(60), "slow_leak_site", |screen| {
        screen.contains("slow_leak_site")
    });
    assert!(screen.contains("slow_leak.fp 100"), "no command:\n{screen}");
    assert!(screen.contains("q:leave ?:help"), "no key line:\n{screen}");
    assert!(
        screen.contains("target output: "),
        "no output path:\n{screen}"
    );
    tmux.send("q");
    // The view is gone while the target still runs (100 x 50 ms): profiling goes on.
    tmux.wait_for(Duration::from_secs(3), "the view's end", |screen| {
        !screen.contains("q:leave ?:help")
    });
    assert!(
        !status.exists(),
        "memprof had ended before q was handled: the test proves nothing"
    );
    let code = wait_for_file(&status, Duration::from_secs(60));
    assert_eq!(code.trim(), "0", "memprof exited {code}");
    let text = std::fs::read_to_string(output.join("report.json")).expect("report.json");
    let report: serde_json::Value = serde_json::from_str(&text).expect("report.json is JSON");
    assert_sites(
        &report,
        "leaks",
        Name::Exact("slow_leak_site"),
        100,
        100_000,
    );
    let pid = report["target"]["pid"].as_u64().expect("target.pid");
    assert!(
        screen.contains(&format!("pid {pid} ")),
        "the header did not show pid {pid}:\n{screen}"
    );
    let printed = std::fs::read_to_string(output.join("target-output.log"))
        .expect("the program's output file");
    assert_eq!(printed, "slow_leak: start\nslow_leak: done\n");
    drop(tmux);

    // `memprof view` over the recording: the end first, then back in time. The program is
    // gone: its sites are named from the recording.
    std::fs::remove_file(&target).unwrap();
    let tmux = Tmux::start(
        format!("memprof-view-{}", std::process::id()),
        80,
        24,
        &format!(
            "{} view {}; sleep 30",
            memprof().display(),
            output.display()
        ),
    );
    let end = tmux.wait_for(Duration::from_secs(60), "the recording's end", |screen| {
        screen.contains("slow_leak_site") && screen.contains(" end ->]")
    });
    assert!(end.contains("live 97.7 KiB in 100 blocks"), "{end}");
    tmux.send("Left");
    let before = tmux.wait_for(Duration::from_secs(5), "an earlier moment", |screen| {
        !screen.contains(" end ->]")
    });
    assert!(!before.contains("live 97.7 KiB in 100 blocks"), "{before}");
    tmux.send("q");
    tmux.wait_for(Duration::from_secs(5), "the view's end", |screen| {
        !screen.contains("q:leave ?:help")
    });
}

/// `attach --live` on the waiter: the view is up once the probes are, shows what the waiter
/// allocates when told to, `q` leaves it while the window stays open, and the report is the
/// window's, exactly as without `--live`.
#[test]
fn attach_live_shows_the_window_and_q_leaves_it() {
    let Some(p) = privileged("attach_live_shows_the_window_and_q_leaves_it") else {
        return;
    };
    let mut waiter = Waiter::start(p.dir.path(), Build::FramePointers);
    let pid = waiter.child.id();
    let output = p.dir.path().join("out");
    let status = p.dir.path().join("status");
    let command = format!(
        "{} attach {pid} --live --output {}; echo $? > {}",
        memprof().display(),
        output.display(),
        status.display()
    );
    let tmux = Tmux::start(
        format!("memprof-attach-live-{}", std::process::id()),
        80,
        24,
        &command,
    );
    let header = format!("pid {pid} [uprobes]");
    tmux.wait_for(Duration::from_secs(60), "the attached view", |screen| {
        screen.contains(&header) && screen.contains("q:leave ?:help")
    });
    waiter.allocate();
    // attach_leak's 5 blocks of 4 KiB, live, and attach_churn's 100 allocations, all freed.
    let screen = tmux.wait_for(Duration::from_secs(10), "attach_leak's blocks", |screen| {
        screen.contains("attach_leak") && screen.contains("attach_churn")
    });
    let leak = screen
        .lines()
        .find(|line| line.contains("attach_leak"))
        .unwrap();
    assert!(
        leak.contains("20.0 KiB") && leak.contains(" 5 "),
        "attach_leak's row: {leak}\n{screen}"
    );
    let churn = screen
        .lines()
        .find(|line| line.contains("attach_churn"))
        .unwrap();
    assert!(
        churn.contains("0 B") && churn.contains(" 100 "),
        "attach_churn's row: {churn}\n{screen}"
    );
    tmux.send("q");
    tmux.wait_for(Duration::from_secs(3), "the view's end", |screen| {
        !screen.contains("q:leave ?:help")
    });
    thread::sleep(Duration::from_millis(500));
    assert!(
        !status.exists(),
        "memprof attach ended with the view: the window should stay open until the target exits"
    );
    // EOF: the waiter exits 0, which ends the window.
    drop(waiter.stdin.take());
    let code = wait_for_file(&status, Duration::from_secs(60));
    assert_eq!(code.trim(), "0", "memprof attach exited {code}");
    let text = std::fs::read_to_string(output.join("report.json")).expect("report.json");
    let report: serde_json::Value = serde_json::from_str(&text).expect("report.json is JSON");
    assert_waiter_window(&report);
    assert_eq!(report["target"]["pid"].as_u64(), Some(u64::from(pid)));
}

#[test]
fn live_without_a_terminal_fails_before_starting_anything() {
    // No root needed: the refusal comes first. Serialised like the others all the same.
    let Some(p) = privileged("live_without_a_terminal_fails_before_starting_anything") else {
        return;
    };
    let output = p.dir.path().join("out");
    let touched = p.dir.path().join("touched");
    let mut run = Command::new(memprof());
    run.args(["run", "--live", "--output"])
        .arg(&output)
        .arg("--")
        .arg("touch")
        .arg(&touched);
    let mut attach = Command::new(memprof());
    attach
        .args(["attach", "1", "--live", "--output"])
        .arg(&output);
    for command in [run, attach] {
        let what = format!("{command:?}");
        // Piped stdout: not a terminal.
        let finished = run_to_end(command);
        assert_eq!(finished.status.code(), Some(1), "{what}: {finished:?}");
        assert_eq!(
            finished.stderr,
            "memprof: error: --live needs a terminal: stdout is not a TTY (drop --live to \
             profile without the view)\n",
            "{what}"
        );
        assert!(finished.stdout.is_empty(), "{what}: {}", finished.stdout);
        assert!(!output.exists(), "{what} created {}", output.display());
        assert!(!touched.exists(), "{what} ran the program");
    }
}
