//! memprof's developer tasks, run as `cargo xtask TASK`.
//!
//! - `setup` installs what building and testing needs (Debian packages, bpf-linker built on
//!   LLVM 22, the nightly toolchain's rust-src) and checks the kernel and privileges.
//! - `test` runs setup, then the build, clippy, the format check and every test.
//! - `demo` runs setup, builds memprof and profiles the sample server under load into
//!   memprof-out/.
//! - `bench overhead` measures what memprof adds per malloc/free pair and its fixed cost.
//! - `bench report` times `memprof report` on synthetic recordings (events/s, peak RSS).
//! - `bench alloc` compares memprof's own allocator with glibc, jemalloc, mimalloc, tcmalloc.
//! - `bench capture` times both capture paths of `memprof run` against heaptrack.
//! - `bench leak-check` measures the leak check's scan speed and `attach --leak-check`'s pause.
//!
//! Every command xtask runs is echoed first (`$ cargo build --workspace`), and every thing setup
//! finds or does is one line, so a CI log says what happened without reading this code.

mod alloc_trace;
mod bench;
mod bench_alloc;
mod bench_capture;
mod bench_leak_check;
mod bench_live;
mod bench_redis;
mod bench_report;
mod demo;
mod exec;
mod footprint;
mod host;
mod samples;
mod server_trace;
mod setup;
mod suite;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "memprof's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (packages, bpf-linker, rust-src) and check kernel and privileges.
    Setup,
    /// Set up if needed, then build, clippy, format check and every test.
    Test,
    /// Set up if needed, build memprof, profile the sample server under load into memprof-out/.
    Demo,
    /// Measure memprof's cost.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Added wall time per malloc/free pair and fixed start+stop cost (root only).
    Overhead(OverheadArgs),
    /// memprof's own allocator against glibc, jemalloc, mimalloc and tcmalloc.
    Alloc(AllocArgs),
    /// `memprof report` replay speed and peak memory on synthetic recordings (no root).
    Report(ReportArgs),
    /// Both capture paths of `memprof run` side by side with heaptrack on real programs (root).
    Capture(CaptureArgs),
    /// The leak check's scan speed at exit and the pause of `attach --leak-check` (root).
    LeakCheck(LeakCheckArgs),
    /// The live view's cost to the collector: CPU per event with and without `--live` (root).
    Live(LiveArgs),
}

#[derive(Args)]
struct LiveArgs {
    /// Interleaved rounds; the table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// malloc/free pairs the target makes during each session.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pairs: u64,
}

#[derive(Args)]
struct LeakCheckArgs {
    /// Size of the live heap, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    mib: u64,
    /// Rounds; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

#[derive(Args)]
struct CaptureArgs {
    /// Interleaved rounds; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Another build's memprof (with its libmemprof_capture.so beside it), run with
    /// `--capture preload` and as `attach` on redis in the same rounds: a change's before and
    /// after, side by side.
    #[arg(long, value_name = "MEMPROF")]
    baseline: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// Events per synthetic recording, one run each (memory must not grow with them).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000_000u64, 50_000_000])]
    events: Vec<u64>,
    /// Another build's memprof, replaying the same recordings in the same rounds: a change's
    /// before and after, side by side.
    #[arg(long, value_name = "MEMPROF")]
    baseline: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct AllocArgs {
    /// malloc/free pairs per thread per throughput run.
    #[arg(long, default_value_t = 5_000_000)]
    ops: u64,
    /// Runs per allocator; the table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

#[derive(Args)]
struct OverheadArgs {
    /// malloc/free pairs per run of the churn sample.
    #[arg(long, default_value_t = 1_000_000)]
    pairs: u64,
    /// Runs of each measurement; the table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::ensure()?.require_all(),
        Task::Test => suite::run(),
        Task::Demo => demo::run(),
        Task::Bench {
            bench: Bench::Overhead(args),
        } => bench::overhead(args.pairs, args.runs),
        Task::Bench {
            bench: Bench::Alloc(args),
        } => bench_alloc::run(args.ops, args.runs),
        Task::Bench {
            bench: Bench::Report(args),
        } => bench_report::run(&args.events, args.baseline.as_deref()),
        Task::Bench {
            bench: Bench::Capture(args),
        } => bench_capture::run(args.runs, args.baseline.as_deref()),
        Task::Bench {
            bench: Bench::LeakCheck(args),
        } => bench_leak_check::run(args.mib, args.runs),
        Task::Bench {
            bench: Bench::Live(args),
        } => bench_live::run(args.runs, args.pairs),
    }
}
