//! `memprof-loadgen --addr ADDR --requests N | --duration S [options]`: drives
//! memprof-sample-server with a seeded mix of PUT/GET/DEL/PUSH/POP over concurrent
//! connections, then prints exactly two lines on stdout, `ops: N` and `ops/s: X`.
//!
//! The requests are split evenly over the connections; connection slot `i` sends the
//! sequence `Workload::new(seed, i, ..)`, so the same seed and request count give the same
//! requests on every connection, whatever the timing (a `--duration` bound may cut it short).

mod worker;
mod workload;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::{ArgGroup, Parser};
use memprof_sample_server::client::Client;

use crate::worker::Slot;
use crate::workload::Workload;

#[derive(Parser)]
#[command(
    name = "memprof-loadgen",
    about = "Deterministic load for memprof-sample-server",
    group(ArgGroup::new("bound").args(["requests", "duration"]).required(true).multiple(true))
)]
struct Cli {
    /// The server's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Seed of the operation and payload-size mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent connections.
    #[arg(long, default_value = "4")]
    connections: NonZeroU32,
    /// Total requests, split evenly over the connections.
    #[arg(long)]
    requests: Option<NonZeroU64>,
    /// Stop after this many seconds, even if requests are left.
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Reconnect after every K requests on a connection.
    #[arg(long, value_name = "K")]
    churn: Option<NonZeroU64>,
    /// Distinct keys the requests use.
    #[arg(long, default_value = "4096")]
    keys: NonZeroU32,
    /// Distinct queues the requests use.
    #[arg(long, default_value = "8")]
    queues: NonZeroU32,
    /// Send SHUTDOWN to the server at the end (also after a failure).
    #[arg(long)]
    shutdown: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("memprof-loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let load = generate(cli);
    // Shut the server down even when the load failed, so that nothing waits on it forever.
    let shutdown = if cli.shutdown {
        Client::connect(cli.addr)
            .and_then(|mut client| client.shutdown())
            .with_context(|| format!("cannot shut down the server at {}", cli.addr))
    } else {
        Ok(())
    };
    let (ops, elapsed) = load?;
    shutdown?;
    println!("ops: {ops}");
    println!("ops/s: {:.1}", ops as f64 / elapsed.as_secs_f64());
    Ok(())
}

/// Runs every connection slot to the end; returns the requests answered and the time taken.
fn generate(cli: &Cli) -> Result<(u64, Duration)> {
    let connections = u64::from(cli.connections.get());
    let start = Instant::now();
    let deadline = cli.duration.map(|limit| start + limit);
    let results: Vec<Result<u64>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|index| {
                let slot = Slot {
                    addr: cli.addr,
                    requests: share(cli.requests, connections, index),
                    churn: cli.churn,
                    deadline,
                };
                let workload = Workload::new(cli.seed, index, cli.keys.get(), cli.queues.get());
                scope.spawn(move || {
                    worker::run(&slot, workload).with_context(|| format!("connection {index}"))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("a connection thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut ops = 0;
    for result in results {
        ops += result?;
    }
    Ok((ops, elapsed))
}

/// Slot `index`'s part of `requests`: an even split, the first slots taking the remainder.
fn share(requests: Option<NonZeroU64>, connections: u64, index: u64) -> u64 {
    let Some(requests) = requests else {
        return u64::MAX;
    };
    let requests = requests.get();
    requests / connections + u64::from(index < requests % connections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_split_evenly_and_add_up() {
        let total = NonZeroU64::new(10);
        let shares: Vec<u64> = (0..4).map(|i| share(total, 4, i)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!(share(None, 4, 0), u64::MAX);
    }

    #[test]
    fn durations_must_be_positive_seconds() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
