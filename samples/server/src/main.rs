//! `memprof-sample-server --listen ADDR [--leak-every N] [--unbounded-cache] [--grow-buffers]`
//!
//! Prints `listening on ADDR` once it accepts connections, serves until a client sends
//! SHUTDOWN, then prints `summary: requests=N ...` (the STATS fields) and exits 0.

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use memprof_sample_server::server::{Config, Server};

#[derive(Parser)]
#[command(
    name = "memprof-sample-server",
    about = "A cache and message-queue server with injectable heap bugs, for memprof"
)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Payload bytes the cache may hold before it evicts the least recently used entries.
    #[arg(long, default_value_t = 1 << 20)]
    cache_bytes: u64,
    /// Bug: never evict, whatever --cache-bytes says.
    #[arg(long)]
    unbounded_cache: bool,
    /// Bug: leak the payload of every N-th PUT or PUSH on each connection.
    #[arg(long, value_name = "N")]
    leak_every: Option<NonZeroU64>,
    /// Bug: connection buffers grow to the largest message and never shrink.
    #[arg(long)]
    grow_buffers: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("memprof-sample-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = Config {
        listen: cli.listen,
        cache_budget: (!cli.unbounded_cache).then_some(cli.cache_bytes),
        leak_every: cli.leak_every,
        grow_buffers: cli.grow_buffers,
    };
    let server =
        Server::bind(config).with_context(|| format!("cannot listen on {}", cli.listen))?;
    let mut stdout = std::io::stdout();
    // Whoever started the server waits for this line (and may have piped stdout).
    writeln!(stdout, "listening on {}", server.local_addr())?;
    stdout.flush()?;
    let stats = server.run().context("serving")?;
    writeln!(stdout, "summary: {stats}")?;
    stdout.flush()?;
    Ok(())
}
