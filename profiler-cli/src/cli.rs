//! Command-line arguments, turned into validated options for the session.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use profiler_common::MAX_STACK_DEPTH;

#[derive(Parser, Debug)]
#[command(
    name = "memprof",
    version,
    about = "Heap profiler for Linux processes, built on eBPF uprobes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Launch a program under the profiler; everything it allocates from its first
    /// instruction on is seen.
    Run {
        #[command(flatten)]
        capture: CaptureArgs,
        /// The program and its arguments.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Profile a running process without restarting it, then detach and leave it running.
    Attach {
        /// Process id of the target.
        pid: u32,
        /// Stop after this many seconds (otherwise on Ctrl-C or when the target exits).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        #[command(flatten)]
        capture: CaptureArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Directory for report.json and the flamegraphs.
    #[arg(long, short, default_value = "memprof-out", value_name = "DIR")]
    pub output: PathBuf,
    /// Deepest stack recorded per allocation, in frames (0 turns stacks off).
    #[arg(long, default_value_t = 64, value_name = "FRAMES",
          value_parser = clap::value_parser!(u32).range(0..=MAX_STACK_DEPTH as i64))]
    pub max_depth: u32,
    /// Ring buffer size in MiB (a power of two); larger rings lose fewer events under bursts.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub ring_mib: u32,
    /// Leak sites printed in the terminal summary.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
}

impl CaptureArgs {
    pub fn ring_bytes(&self) -> anyhow::Result<u32> {
        if !self.ring_mib.is_power_of_two() || self.ring_mib > 1024 {
            anyhow::bail!(
                "--ring-mib must be a power of two no larger than 1024, not {}",
                self.ring_mib
            );
        }
        Ok(self.ring_mib << 20)
    }
}

pub fn duration(seconds: Option<f64>) -> anyhow::Result<Option<Duration>> {
    seconds
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                anyhow::anyhow!("--duration must be a positive number of seconds, not {s}")
            })
        })
        .transpose()
}
