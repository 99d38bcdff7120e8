//! `cargo xtask bench live`: what the live view costs the collector. The same session, `memprof
//! attach PID` on samples/c/churn.c, which starts PAIRS malloc/free pairs once memprof says it
//! is attached and then exits (ending the session), with and without `--live` (the view drawn
//! on a pseudo-terminal of 80x24 that this bench reads and throws away), in interleaved rounds.
//! Measured: memprof's CPU time, user + system, from wait4 (the attached target is not its
//! child, so nothing else is counted), for the same events in both.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::median;
use crate::host::Identity;
use crate::{samples, setup};

pub fn run(runs: u32, pairs: u64) -> Result<()> {
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
    let mut own = Vec::new();
    for round in 1..=runs {
        // Alternate which goes first, so that neither always runs on a warmer machine.
        let order = match round % 2 {
            1 => [false, true],
            _ => [true, false],
        };
        for with_view in order {
            let session = session(&memprof, &churn, &scratch, pairs, with_view)?;
            let view = match session.view_secs {
                Some(secs) => format!(", the view's own {secs:.3} s"),
                None => String::new(),
            };
            println!(
                "  round {round}/{runs}, {}: {:.3} s CPU for {} events{view}",
                if with_view { "--live" } else { "plain " },
                session.cpu_secs,
                session.events,
            );
            match with_view {
                true => live.push(session.cpu_secs),
                false => plain.push(session.cpu_secs),
            }
            if let Some(secs) = session.view_secs {
                own.push(secs / session.cpu_secs);
            }
        }
    }
    let (plain_all, live_all) = (plain.clone(), live.clone());
    let (plain, live) = (median(&plain), median(&live));
    println!();
    println!("memprof CPU for an attach session over {pairs} malloc/free pairs of churn:");
    println!("  without the live view: {plain:.3} s");
    println!("  with --live:           {live:.3} s");
    println!(
        "  live view's cost:      {:+.1}%   (goal: at most +5%)",
        (live / plain - 1.0) * 100.0
    );
    println!(
        "  the view's own share:  {:.1}%   (snapshots built by the collector + the view's \
         thread, of a --live session's CPU, as memprof measures them)",
        median(&own) * 100.0
    );
    let spread = |values: &[f64]| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(0.0, f64::max);
        format!("{low:.3}-{high:.3} s")
    };
    println!(
        "  single sessions:       {} plain, {} --live",
        spread(&plain_all),
        spread(&live_all)
    );
    println!("(medians of {runs} rounds)");
    Ok(())
}

/// One session's cost.
struct Measured {
    cpu_secs: f64,
    events: u64,
    /// With `--live`: the collector's time building snapshots plus the view thread's CPU,
    /// as memprof reports them (`MEMPROF_TIMINGS`).
    view_secs: Option<f64>,
}

/// Attaches to a fresh churn of `pairs` pairs, with the live view or without, and lets it run
/// to its end.
fn session(
    memprof: &Path,
    churn: &Path,
    scratch: &Path,
    pairs: u64,
    live: bool,
) -> Result<Measured> {
    let mut target = Command::new(churn)
        .args([&pairs.to_string(), "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", churn.display()))?;
    let out = scratch.join(if live { "live" } else { "plain" });
    let measured = attach(memprof, &mut target, &out, live);
    let _ = target.kill();
    let _ = target.wait();
    let (cpu_secs, view_secs) = measured?;
    let report = read_json(&out.join("report.json"))?;
    let summary = &report["summary"];
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    let events = count("allocations") + count("frees") + count("unknown_frees");
    if count("allocations") != pairs {
        bail!(
            "the session saw {} of {pairs} allocations: {}",
            count("allocations"),
            out.display()
        );
    }
    Ok(Measured {
        cpu_secs,
        events,
        view_secs,
    })
}

/// Runs `memprof attach` on `target`, starts the target's work once memprof says it is
/// attached, and returns memprof's CPU seconds and, with the view, the view's own.
fn attach(
    memprof: &Path,
    target: &mut Child,
    out: &Path,
    live: bool,
) -> Result<(f64, Option<f64>)> {
    let mut command = Command::new(memprof);
    command
        .args([
            "attach",
            &target.id().to_string(),
            "--no-recording",
            "--output",
        ])
        .arg(out);
    let terminal = match live {
        true => {
            let terminal = Terminal::open()?;
            command
                .arg("--live")
                .env("TERM", "xterm-256color")
                .env("MEMPROF_TIMINGS", "1")
                .stdin(terminal.slave()?)
                .stdout(terminal.slave()?)
                .stderr(terminal.slave()?);
            Some(terminal)
        }
        false => {
            command.stdout(Stdio::null()).stderr(Stdio::piped());
            None
        }
    };
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", memprof.display()))?;
    // The command holds copies of the terminal's slave: memprof must be its last holder.
    drop(command);
    // memprof's output, the view's included, read until it exits; "attached" starts the work.
    let (attached_tx, attached) = mpsc::channel();
    let output: Box<dyn Read + Send> = match terminal {
        Some(terminal) => Box::new(terminal.into_reader()),
        None => Box::new(child.stderr.take().context("memprof's stderr")?),
    };
    let reader = std::thread::spawn(move || watch(output, attached_tx));
    if attached.recv_timeout(ATTACH_TIMEOUT).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("memprof did not attach within {ATTACH_TIMEOUT:?}");
    }
    target
        .stdin
        .take()
        .context("the target's stdin")?
        .write_all(b"g")
        .context("starting the target")?;
    let (status, usage) = wait_with_usage(&child)?;
    let printed = reader.join().unwrap_or_default();
    if status != 0 {
        bail!("memprof attach exited with status {status}");
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let view_secs = match live {
        true => Some(view_cost(&printed).context("memprof did not say what the view cost")?),
        false => None,
    };
    Ok((seconds(usage.ru_utime) + seconds(usage.ru_stime), view_secs))
}

/// From "memprof: live view: N snapshots built in X s (and Z s naming stacks, which the
/// report reuses); its thread used Y s of CPU": X + Y (Z moves work the report would do).
fn view_cost(printed: &str) -> Option<f64> {
    let line = printed.lines().find(|line| line.contains("live view: "))?;
    let number_before = |unit: &str| -> Option<f64> {
        let (before, _) = line.split_once(unit)?;
        before.split_whitespace().last()?.parse().ok()
    };
    Some(number_before(" s (and")? + number_before(" s of CPU")?)
}

/// How long memprof may take to attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads `output` to its end, telling `attached` when memprof says it is attached; returns
/// the lines printed after the view closed (those after its last escape sequence).
fn watch(mut output: impl Read, attached: mpsc::Sender<()>) -> String {
    const SAID: &[u8] = b"memprof: attached to";
    let mut seen: Vec<u8> = Vec::new();
    let mut told = false;
    let mut buffer = [0u8; 65536];
    while let Ok(n @ 1..) = output.read(&mut buffer) {
        seen.extend_from_slice(&buffer[..n]);
        if !told && seen.windows(SAID.len()).any(|window| window == SAID) {
            told = true;
            let _ = attached.send(());
        }
        // Only the end matters once attached: keep the last 64 KiB.
        if told && seen.len() > 1 << 20 {
            seen.drain(..seen.len() - (64 << 10));
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
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

    /// The terminal's output side. Our end of the slave is closed: reading fails (EIO) once
    /// memprof, its last holder, exits.
    fn into_reader(self) -> File {
        let Terminal { master, slave } = self;
        drop(slave);
        File::from(master)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
