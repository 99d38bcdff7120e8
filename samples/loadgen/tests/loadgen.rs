//! The load generator binary against an in-process server: output format, request count,
//! churn, shutdown, determinism of what the server sees, and bad input.

use std::net::{SocketAddr, TcpListener};
use std::num::NonZeroU64;
use std::process::{Command, Output};
use std::thread::{self, JoinHandle};

use memprof_sample_server::server::{Config, Server};
use memprof_sample_server::stats::Stats;

/// A server on a free port, serving until SHUTDOWN; joining it gives its final figures.
fn server(leak_every: Option<u64>) -> (SocketAddr, JoinHandle<Stats>) {
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cache_budget: Some(1 << 20),
        leak_every: leak_every.and_then(NonZeroU64::new),
        grow_buffers: false,
    })
    .expect("bind");
    let addr = server.local_addr();
    (addr, thread::spawn(move || server.run().expect("serve")))
}

fn loadgen(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memprof-loadgen"))
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .output()
        .expect("run loadgen")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "loadgen failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn it_sends_exactly_the_requests_asked_then_shuts_the_server_down() {
    let (addr, server) = server(None);
    let out = loadgen(
        addr,
        &[
            "--requests",
            "200",
            "--connections",
            "3",
            "--churn",
            "7",
            "--shutdown",
        ],
    );
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "ops: 200");
    let rate: f64 = lines[1]
        .strip_prefix("ops/s: ")
        .and_then(|rate| rate.parse().ok())
        .unwrap_or_else(|| panic!("second line: {:?}", lines[1]));
    assert!(rate > 0.0, "{rate}");
    let stats = server.join().expect("server thread");
    // 200 requests, then SHUTDOWN.
    assert_eq!(stats.requests, 201);
}

/// What the server leaked under `--leak-every 3` from one run of the given seed.
fn leaked(seed: &str) -> (u64, u64) {
    let (addr, server) = server(Some(3));
    let out = loadgen(
        addr,
        &[
            "--seed",
            seed,
            "--requests",
            "300",
            "--connections",
            "3",
            "--churn",
            "20",
            "--shutdown",
        ],
    );
    assert_eq!(stdout_lines(&out)[0], "ops: 300");
    let stats = server.join().expect("server thread");
    (stats.leaked, stats.leaked_bytes)
}

#[test]
fn the_same_seed_gives_the_same_requests_on_every_connection() {
    // Leaks are counted per connection, so they depend only on each connection's sequence,
    // not on how the three connections interleave.
    let first = leaked("5");
    assert!(first.0 > 0, "nothing leaked: {first:?}");
    assert_eq!(leaked("5"), first);
    assert_ne!(leaked("6"), first);
}

#[test]
fn duration_alone_bounds_the_run() {
    let (addr, server) = server(None);
    let out = loadgen(
        addr,
        &["--duration", "0.3", "--connections", "2", "--shutdown"],
    );
    let lines = stdout_lines(&out);
    let ops: u64 = lines[0]
        .strip_prefix("ops: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("first line: {:?}", lines[0]));
    assert!(ops > 0);
    assert_eq!(server.join().expect("server thread").requests, ops + 1);
}

#[test]
fn missing_bounds_and_unreachable_servers_are_errors() {
    let (addr, server) = server(None);
    let out = loadgen(addr, &[]);
    assert_eq!(out.status.code(), Some(2), "no --requests nor --duration");
    let shut = loadgen(addr, &["--requests", "1", "--shutdown"]);
    assert!(shut.status.success());
    server.join().expect("server thread");

    // A port nobody listens on any more.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = loadgen(closed, &["--requests", "10"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("memprof-loadgen: connection 0: cannot connect to ")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
