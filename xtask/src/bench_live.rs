//! `cargo xtask bench live`: what the live view costs the collector. The same `memprof attach
//! PID --duration SECS` window over an endless churn (samples/c/churn.c), with and without
//! `--live` (the view drawn on a pseudo-terminal of 80x24 that this bench reads and throws
//! away), in interleaved rounds. memprof's CPU time (user + system, from wait4: the attached
//! target is not its child, so nothing else is counted) is divided by the events the window
//! collected, since a window's event count varies with the target's pace.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::median;
use crate::host::Identity;
use crate::{samples, setup};

/// More pairs than any window sees: the target churns until it is killed.
const ENDLESS_PAIRS: &str = "1000000000000";

pub fn run(runs: u32, secs: u32) -> Result<()> {
    if !Identity::current()?.is_root() {
        bail!("bench live runs only as root (memprof loads eBPF probes): rerun with sudo");
    }
    setup::ensure()?.require_all()?;
    println!("== build");
    let memprof = samples::build_memprof()?;
    let churn = samples::compile_c("churn", "churn", &["-O2", "-g", "-fno-builtin"])?;
    let scratch = samples::target_dir()?.join("bench/live");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;

    let mut plain = Vec::new();
    let mut live = Vec::new();
    for round in 1..=runs {
        // Alternate which goes first, so that neither always runs on a warmer machine.
        let order = match round % 2 {
            1 => [false, true],
            _ => [true, false],
        };
        for with_view in order {
            let window = window(&memprof, &churn, &scratch, secs, with_view)?;
            println!(
                "  round {round}/{runs}, {}: {:.3} s CPU for {} events ({:.3} s CPU per million)",
                if with_view { "--live" } else { "plain " },
                window.cpu_secs,
                window.events,
                window.per_million()
            );
            match with_view {
                true => live.push(window.per_million()),
                false => plain.push(window.per_million()),
            }
        }
    }
    let (plain, live) = (median(&plain), median(&live));
    println!();
    println!("memprof CPU per million events, attach window of {secs} s on churn:");
    println!("  without the live view: {plain:.3} s");
    println!("  with --live:           {live:.3} s");
    println!(
        "  live view's cost:      {:+.1}%   (goal: at most +5%)",
        (live / plain - 1.0) * 100.0
    );
    println!("(medians of {runs} rounds)");
    Ok(())
}

/// One attach window's cost.
struct Window {
    cpu_secs: f64,
    events: u64,
}

impl Window {
    fn per_million(&self) -> f64 {
        self.cpu_secs / self.events.max(1) as f64 * 1e6
    }
}

/// Attaches to a fresh churn for `secs` seconds, with the live view or without.
fn window(memprof: &Path, churn: &Path, scratch: &Path, secs: u32, live: bool) -> Result<Window> {
    let mut target = Command::new(churn)
        .arg(ENDLESS_PAIRS)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", churn.display()))?;
    // Let it reach its loop (and map its libraries) first.
    std::thread::sleep(Duration::from_millis(200));
    let out = scratch.join(if live { "live" } else { "plain" });
    let measured = attach(memprof, target.id(), &out, secs, live);
    stop(&mut target);
    let cpu_secs = measured?;
    let report = read_json(&out.join("report.json"))?;
    let summary = &report["summary"];
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    let events = count("allocations") + count("frees") + count("unknown_frees");
    if events == 0 {
        bail!("the window collected no events: {}", out.display());
    }
    Ok(Window { cpu_secs, events })
}

/// Runs `memprof attach` and returns its CPU seconds.
fn attach(memprof: &Path, pid: u32, out: &Path, secs: u32, live: bool) -> Result<f64> {
    let mut command = Command::new(memprof);
    command
        .args(["attach", &pid.to_string(), "--duration", &secs.to_string()])
        .args(["--no-recording", "--output"])
        .arg(out);
    let terminal = match live {
        true => {
            let terminal = Terminal::open()?;
            command
                .arg("--live")
                .env("TERM", "xterm-256color")
                .stdin(terminal.slave()?)
                .stdout(terminal.slave()?)
                .stderr(terminal.slave()?);
            Some(terminal)
        }
        false => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
            None
        }
    };
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", memprof.display()))?;
    // The view writes to the terminal until memprof exits: read and dropped meanwhile.
    let reader = terminal.map(Terminal::drain);
    let (status, usage) = wait_with_usage(&child)?;
    drop(reader);
    if status != 0 {
        bail!("memprof attach exited with status {status}");
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Waits for `child` and returns its exit status and resource usage (its own, and that of
/// children it reaped: memprof attach has none).
fn wait_with_usage(child: &Child) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; the pid is our unreaped child.
    let reaped = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if reaped < 0 {
        return Err(std::io::Error::last_os_error()).context("wait4");
    }
    let code = match libc::WIFEXITED(status) {
        true => libc::WEXITSTATUS(status),
        false => 128 + libc::WTERMSIG(status),
    };
    Ok((code, usage))
}

fn stop(target: &mut Child) {
    let _ = target.kill();
    let _ = target.wait();
}

/// A pseudo-terminal of 80x24 for the live view.
struct Terminal {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Terminal {
    fn open() -> Result<Terminal> {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the out-pointers are live locals; name and termios may be null.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        if opened != 0 {
            return Err(std::io::Error::last_os_error()).context("openpty");
        }
        // SAFETY: openpty returned two new descriptors that nothing else owns.
        Ok(unsafe {
            Terminal {
                master: OwnedFd::from_raw_fd(master),
                slave: OwnedFd::from_raw_fd(slave),
            }
        })
    }

    fn slave(&self) -> Result<Stdio> {
        Ok(Stdio::from(self.slave.try_clone().context("dup")?))
    }

    /// Reads the terminal until its last writer is gone, on a thread of its own.
    fn drain(self) -> std::thread::JoinHandle<()> {
        let Terminal { master, slave } = self;
        // Ours closed: the read fails (EIO) once memprof, the last holder, exits.
        drop(slave);
        std::thread::spawn(move || {
            let mut master = File::from(master);
            let mut buffer = [0u8; 65536];
            while matches!(master.read(&mut buffer), Ok(n) if n > 0) {}
        })
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
