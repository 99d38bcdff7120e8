//! memprof: an out-of-process heap profiler for Linux built on eBPF uprobes.
//!
//! The commands: `run_cmd` and `attach_cmd` (live sessions, both driving a `session::Session`
//! with the options `cli` validated into `options`), `report_cmd` and `report_tree` (`memprof
//! report FILE|DIR`), `diff`, `compare` and `live::view`.
//!
//! A live session's pipeline: `targets` finds which object provides each allocation function to
//! the target (`operators` adds C++ operators an allocator serves itself) and `prologue` places
//! each probe; `probes` loads the eBPF programs and attaches them (`multi_link`); `launch`
//! starts a program stopped at exec (run mode); `collect` drains the ring buffer into the
//! `collected` state (profiler-core's engine, unwinding through `target_modules`, writing the
//! recording through `recording_sink`); with `run --capture preload`, `preload_capture`
//! replaces the probes: the target's preloaded library writes the same records into a shared
//! ring. `report_writer` turns the result into the terminal summary and the files. With
//! `--live`, `live` shows the session on a full-screen terminal view fed by `collect`'s loop
//! (and `memprof view` shows a recording there).

/// `eprintln!` that cannot panic: a stderr whose reader is gone (`memprof attach PID 2>&1 |
/// head`) loses the line; `eprintln!` would panic and lose the session's report with it.
macro_rules! stderr_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod attach_cmd;
mod backpressure;
mod build_ids;
mod capture_path;
mod cli;
mod clock;
mod collect;
mod collected;
mod compare;
mod diff;
mod elf;
mod idle_drains;
mod kernel_btf;
mod launch;
mod leak_scan;
mod live;
mod meta;
mod multi_link;
mod operators;
mod ops_output;
mod options;
mod pause;
mod preload_capture;
mod privileges;
mod probe_site;
mod probes;
mod process_events;
mod prologue;
mod recording_sink;
mod release_memory;
mod report_cmd;
mod report_tree;
mod report_writer;
mod rss;
mod run_cmd;
mod seize;
mod session;
mod stack_tops;
mod target_modules;
mod targets;
mod thread_group;
mod timings;
mod traced_tree;
mod unseen;

use std::{io::Write as _, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(error) => {
            // One line: the chain of causes, outermost first.
            let message = error
                .chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            let _ = writeln!(std::io::stderr(), "memprof: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    match cli.command {
        Command::Report {
            file,
            format,
            output,
            top,
            ops,
        } => match (file.is_dir(), report_cmd::Format::from(format)) {
            // A session's directory: all of a followed tree, or its one recording.
            (true, report_cmd::Format::All) if ops.is_none() => {
                report_tree::report(&file, &output, top)
            }
            (true, format) => {
                report_cmd::report(&options::recording_of(&file), format, &output, top, ops)
            }
            (false, format) => report_cmd::report(&file, format, &output, top, ops),
        },
        Command::Diff(args) => diff::diff(&args.into_options()),
        Command::Compare(args) => compare::compare(&args.into_options()),
        Command::SynthesizeRecording { events, file } => report_cmd::synthesize(&file, events),
        Command::View { file } => live::view(&file),
        Command::Run {
            capture,
            env,
            ops_from_output,
            capture_path,
            no_follow,
            user,
            no_leak_check,
            command,
        } => {
            let run = run_cmd::RunOptions {
                session: capture.into_options()?,
                target: launch::Target {
                    command,
                    env,
                    capture_stdout: ops_from_output,
                    inherit_fd: None,
                    output: None,
                    errors_to_output: false,
                    user: user.as_deref().map(launch::RunAs::lookup).transpose()?,
                },
                path: capture_path.into(),
                follow: !no_follow,
                leak_check: !no_leak_check,
            };
            runtime.block_on(run_cmd::run_command(run))
        }
        Command::Attach {
            pid,
            duration,
            hold,
            children,
            leak_check,
            capture,
        } => {
            let attach = attach_cmd::AttachOptions {
                session: capture.into_options()?,
                pid,
                duration: cli::duration(duration)?,
                hold,
                children,
                leak_check,
            };
            runtime.block_on(attach_cmd::attach(attach))
        }
    }
}
