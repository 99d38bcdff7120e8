//! The server binary, started on port 0 and driven over TCP: protocol, each bug switch,
//! shutdown and bad input, with exact figures from STATS and the exit summary.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};

use memprof_sample_server::BASE_BUFFER;
use memprof_sample_server::client::Client;
use memprof_sample_server::reply::Reply;
use memprof_sample_server::stats::Stats;

/// A running server; killed if a test fails before shutting it down.
struct Server {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_memprof-sample-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the first line");
        let addr = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line is {line:?}"))
            .parse()
            .expect("an address");
        Server {
            child,
            stdout,
            addr,
        }
    }

    fn client(&self) -> Client {
        Client::connect(self.addr).expect("connect")
    }

    /// Sends SHUTDOWN, waits for a clean exit, and returns the exit summary.
    fn shut_down(mut self) -> Stats {
        self.client().shutdown().expect("SHUTDOWN");
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("read stdout");
        let status = self.child.wait().expect("wait for the server");
        assert!(status.success(), "server exited with {status}");
        let summary = rest
            .trim_end()
            .strip_prefix("summary: ")
            .unwrap_or_else(|| panic!("last output is {rest:?}"));
        summary.parse().expect("summary fields")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether ERR is what a client sees on a connection the server closed.
fn is_closed(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    matches!(err.kind(), UnexpectedEof | ConnectionReset | BrokenPipe)
}

#[test]
fn every_request_does_what_the_protocol_says() {
    let server = Server::start(&[]);
    let mut client = server.client();
    client.put("a", b"alpha").unwrap();
    client.put("b", b"").unwrap();
    assert_eq!(client.get("a").unwrap().as_deref(), Some(&b"alpha"[..]));
    assert_eq!(client.get("b").unwrap().as_deref(), Some(&b""[..]));
    assert_eq!(client.get("zz").unwrap(), None);
    assert!(client.del("b").unwrap());
    assert!(!client.del("b").unwrap());
    client.push("q", b"first").unwrap();
    client.push("q", b"second\n").unwrap();
    client.push("r", b"x").unwrap();
    assert_eq!(client.pop("q").unwrap().as_deref(), Some(&b"first"[..]));
    let stats = client.stats().unwrap();
    assert_eq!(
        stats,
        Stats {
            requests: 12,
            connections: 1,
            cache_entries: 1,
            cache_bytes: 5,
            evictions: 0,
            queued: 2,
            queued_bytes: 8,
            leaked: 0,
            leaked_bytes: 0,
            buffer_bytes: 2 * BASE_BUFFER as u64,
        }
    );
    assert_eq!(client.pop("q").unwrap().as_deref(), Some(&b"second\n"[..]));
    assert_eq!(client.pop("q").unwrap(), None);
    drop(client);
    let summary = server.shut_down();
    // 14 requests above, SHUTDOWN the 15th; "a" and the message in "r" are still held.
    assert_eq!(
        (
            summary.requests,
            summary.connections,
            summary.cache_entries,
            summary.queued
        ),
        (15, 0, 1, 1)
    );
    assert_eq!(summary.buffer_bytes, 0, "every connection closed");
}

#[test]
fn the_cache_evicts_least_recently_used_entries_to_stay_in_budget() {
    let server = Server::start(&["--cache-bytes", "1000"]);
    let mut client = server.client();
    for i in 0..10 {
        client.put(&format!("k{i}"), &[b'v'; 300]).unwrap();
    }
    let stats = client.stats().unwrap();
    assert_eq!(
        (stats.cache_entries, stats.cache_bytes, stats.evictions),
        (3, 900, 7)
    );
    assert_eq!(client.get("k6").unwrap(), None);
    assert!(client.get("k7").unwrap().is_some());
    server.shut_down();
}

#[test]
fn unbounded_cache_never_evicts() {
    let server = Server::start(&["--cache-bytes", "1000", "--unbounded-cache"]);
    let mut client = server.client();
    for i in 0..10 {
        client.put(&format!("k{i}"), &[b'v'; 300]).unwrap();
    }
    let stats = client.stats().unwrap();
    assert_eq!(
        (stats.cache_entries, stats.cache_bytes, stats.evictions),
        (10, 3000, 0)
    );
    let summary = server.shut_down();
    assert_eq!((summary.cache_entries, summary.cache_bytes), (10, 3000));
}

#[test]
fn leak_every_10_leaks_exactly_10_of_100_payloads() {
    let server = Server::start(&["--leak-every", "10"]);
    let mut client = server.client();
    for i in 0..100_usize {
        // Payloads of 100..=199 bytes, so the leaked bytes tell which requests leaked.
        let payload = vec![b'p'; 100 + i];
        if i % 2 == 0 {
            client.put(&format!("k{i}"), &payload).unwrap();
        } else {
            client.push("q", &payload).unwrap();
        }
    }
    // Requests 10, 20, ..., 100 (i = 9, 19, ..., 99): 10 x 100 + (9 + 19 + ... + 99) bytes.
    let stats = client.stats().unwrap();
    assert_eq!((stats.leaked, stats.leaked_bytes), (10, 1540));
    // GET, DEL, POP and STATS carry no payload and do not count.
    for _ in 0..20 {
        client.get("k0").unwrap();
        client.pop("q").unwrap();
    }
    let summary = server.shut_down();
    assert_eq!((summary.leaked, summary.leaked_bytes), (10, 1540));
}

#[test]
fn leak_every_counts_each_connection_apart() {
    let server = Server::start(&["--leak-every", "10"]);
    let mut busy = server.client();
    let mut quiet = server.client();
    for i in 0..15 {
        busy.put("busy", &[b'b'; 50]).unwrap();
        if i < 9 {
            quiet.put("quiet", &[b'q'; 70]).unwrap();
        }
    }
    // 24 payloads in all, but only the busy connection reached its 10th.
    let summary = {
        drop((busy, quiet));
        server.shut_down()
    };
    assert_eq!((summary.leaked, summary.leaked_bytes), (1, 50));
}

/// Buffer bytes after one 64 KiB PUT and the GET of it, on one connection.
fn buffers_after_a_large_message(args: &[&str]) -> u64 {
    let server = Server::start(args);
    let mut client = server.client();
    client.put("big", &[b'x'; 65536]).unwrap();
    assert_eq!(client.get("big").unwrap().map(|v| v.len()), Some(65536));
    let stats = client.stats().unwrap();
    drop(client);
    server.shut_down();
    stats.buffer_bytes
}

#[test]
fn buffers_shrink_back_after_a_large_message() {
    assert_eq!(buffers_after_a_large_message(&[]), 2 * BASE_BUFFER as u64);
}

#[test]
fn grow_buffers_keeps_them_at_the_largest_message() {
    // Input: "PUT big 65536\n" + payload; output: "VALUE 65536\n" + value.
    assert_eq!(
        buffers_after_a_large_message(&["--grow-buffers"]),
        (14 + 65536) + (12 + 65536)
    );
}

#[test]
fn a_bad_request_gets_err_and_the_connection_closes() {
    let server = Server::start(&[]);
    let mut bad = server.client();
    match bad.raw(b"FROB x\n").unwrap() {
        Reply::Err(why) => assert_eq!(why, "unknown command \"FROB\""),
        other => panic!("FROB: {other:?}"),
    }
    // Closed: end-of-file, or a reset when the server's side saw this request arrive.
    let closed = bad.raw(b"STATS\n").unwrap_err();
    assert!(is_closed(&closed), "{closed}");
    match server.client().raw(b"PUT k nope\n").unwrap() {
        Reply::Err(why) => assert_eq!(why, "bad payload length \"nope\""),
        other => panic!("PUT with a bad length: {other:?}"),
    }
    // The server goes on serving.
    let mut good = server.client();
    good.put("k", b"v").unwrap();
    assert_eq!(good.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(good);
    server.shut_down();
}

#[test]
fn shutdown_closes_idle_connections_and_exits() {
    let server = Server::start(&[]);
    let mut idle = server.client();
    idle.put("k", b"v").unwrap();
    // `idle` stays open: the server must not wait for it.
    let summary = server.shut_down();
    assert_eq!((summary.requests, summary.connections), (2, 0));
    let closed = idle.get("k").unwrap_err();
    assert!(is_closed(&closed), "{closed}");
}

#[test]
fn bad_options_and_unusable_addresses_are_errors_not_panics() {
    // clap's usage errors exit 2; a failure to listen exits 1 with one line.
    for (args, code, first_line) in [
        (
            &["--listen", "nowhere"][..],
            2,
            "error: invalid value 'nowhere'",
        ),
        (&["--leak-every", "0"], 2, "error: invalid value '0'"),
        (
            &["--listen", "192.0.2.1:1"],
            1,
            "memprof-sample-server: cannot listen on 192.0.2.1:1: ",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_memprof-sample-server"))
            .args(args)
            .output()
            .expect("run the server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", out.stdout);
        assert!(stderr.starts_with(first_line), "{args:?}: {stderr}");
        if code == 1 {
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
}
