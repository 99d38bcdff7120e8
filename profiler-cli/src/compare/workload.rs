//! One profiled run of the workload: `memprof run` (this executable) in a child process, the
//! target's stdout read back for `listening on ADDR` and the `ops:`/`ops/s:` lines, and the
//! optional load command driven against it.
use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use profiler_core::output_dir::OutputDir;

/// How long a server may take to print `listening on ADDR`.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the profiled command may keep running once the load command has ended.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// What to run and where its memprof output goes.
pub struct RunSpec<'a> {
    /// Prefixes the echoed output lines, e.g. `glibc`.
    pub label: &'a str,
    pub library: Option<&'a Path>,
    pub output: &'a OutputDir,
    pub command: &'a [OsString],
    /// Run once the command listens; `{addr}` is replaced by the address it printed.
    pub load: Option<&'a str>,
    pub ops: Option<u64>,
}

/// How the run went, beyond its report.
#[derive(Debug)]
pub struct Outcome {
    /// memprof's exit status (the target's, when memprof itself did not fail).
    pub status: ExitStatus,
    /// From the workload's (or the load command's) `ops:` and `ops/s:` lines.
    pub ops: Option<u64>,
    pub ops_per_sec: Option<f64>,
    /// memprof's stderr.
    pub log: PathBuf,
    pub notes: Vec<String>,
}

pub fn run(spec: &RunSpec<'_>) -> Result<Outcome> {
    // A report left by an earlier comparison must not pass for this run's.
    spec.output.remove("report.json")?;
    let log = spec.output.join("memprof.log");
    let log_file = spec.output.create_new("memprof.log")?;
    let exe = std::env::current_exe().context("cannot find the memprof executable")?;
    let mut memprof = Command::new(exe);
    memprof.arg("run").arg("--output").arg(spec.output.path());
    if let Some(library) = spec.library {
        memprof
            .arg("--env")
            .arg(format!("LD_PRELOAD={}", library.display()));
    }
    if let Some(ops) = spec.ops {
        memprof.arg("--ops").arg(ops.to_string());
    }
    memprof
        .arg("--")
        .args(spec.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    let mut child = memprof.spawn().context("cannot start memprof run")?;
    let lines = echo_lines(child.stdout.take().expect("piped"), spec.label.to_owned());

    let mut notes = Vec::new();
    let mut target_lines = Vec::new();
    let load_lines = match spec.load {
        None => None,
        Some(load) => match drive_load(spec, load, &mut child, &lines, &mut target_lines) {
            Ok((load_lines, note)) => {
                notes.extend(note);
                Some(load_lines)
            }
            Err(error) => {
                // Never leave the profiled command behind.
                stop(&mut child);
                return Err(error);
            }
        },
    };
    let status = child.wait().context("cannot wait for memprof run")?;
    target_lines.extend(lines.iter());
    let (ops, ops_per_sec) = parse_ops(load_lines.as_deref().unwrap_or(&target_lines));
    Ok(Outcome {
        status,
        ops,
        ops_per_sec,
        log,
        notes,
    })
}

/// Waits for `listening on ADDR`, runs the load command against ADDR, then gives the profiled
/// command EXIT_GRACE to exit before sending it SIGTERM. Returns the load's stdout lines.
fn drive_load(
    spec: &RunSpec<'_>,
    load: &str,
    child: &mut Child,
    lines: &Receiver<String>,
    seen: &mut Vec<String>,
) -> Result<(Vec<String>, Option<String>)> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let addr = line.trim().strip_prefix("listening on ").map(str::to_owned);
                seen.push(line);
                if let Some(addr) = addr {
                    break addr;
                }
            }
            Err(RecvTimeoutError::Timeout) => bail!(
                "{}: the command printed no `listening on ADDR` line within {}s",
                spec.label,
                LISTEN_TIMEOUT.as_secs()
            ),
            Err(RecvTimeoutError::Disconnected) => bail!(
                "{}: the command ended without printing `listening on ADDR` (see {})",
                spec.label,
                spec.output.join("memprof.log").display()
            ),
        }
    };
    let command = load.replace("{addr}", &addr);
    let mut load_child = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start the load command {command:?}"))?;
    let load_lines = echo_lines(
        load_child.stdout.take().expect("piped"),
        format!("{} load", spec.label),
    );
    let load_status = load_child
        .wait()
        .context("cannot wait for the load command")?;
    let output: Vec<String> = load_lines.iter().collect();
    let mut note =
        (!load_status.success()).then(|| format!("the load command failed ({load_status})"));
    if wait_for(child, EXIT_GRACE)?.is_none() {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)
            .context("cannot stop the profiled command")?;
        note = Some(format!(
            "the command was still running {}s after the load ended: sent SIGTERM",
            EXIT_GRACE.as_secs()
        ));
    }
    Ok((output, note))
}

/// Waits up to `limit` for `child`; None if it is still running.
fn wait_for(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to memprof (which passes it on to its target), then waits for it.
fn stop(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
}

/// Echoes each line of `pipe` on our stdout as `[label] line` and passes it on.
fn echo_lines(pipe: impl Read + Send + 'static, label: String) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            // Echoed while the line is still read for the ops count, even when stdout's
            // reader is gone.
            let _ = writeln!(std::io::stdout(), "[{label}] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The last `ops: N` and `ops/s: X` lines of a workload's output.
pub fn parse_ops(lines: &[String]) -> (Option<u64>, Option<f64>) {
    let last = |prefix: &str| {
        lines.iter().rev().find_map(|line| {
            line.trim()
                .strip_prefix(prefix)
                .map(|v| v.trim().to_owned())
        })
    };
    let ops = lines
        .iter()
        .rev()
        .find_map(|line| crate::ops_output::ops_in(line));
    let per_sec = last("ops/s:")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite());
    (ops, per_sec)
}

/// The last line of memprof's log, for a one-line failure note.
pub fn last_log_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match text.lines().rev().find(|line| !line.trim().is_empty()) {
        Some(line) => line.to_owned(),
        None => format!("memprof wrote nothing (see {})", log.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_lines_are_parsed_last_wins() {
        let lines: Vec<String> = ["noise", "ops: 10", "ops: 1200", "ops/s: 345.5", "x ops: 9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse_ops(&lines), (Some(1200), Some(345.5)));
        assert_eq!(parse_ops(&["ops: lots".to_owned()]), (None, None));
        assert_eq!(parse_ops(&[]), (None, None));
    }
}
