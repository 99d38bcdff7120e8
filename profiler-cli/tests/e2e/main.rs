//! End-to-end tests: the real `memprof` binary, as root, on the deterministic targets in
//! samples/ (compiled here at test time), asserting exact figures from report.json.
//!
//! Every expectation is derived in the header comment of its sample and was checked there
//! with valgrind and with samples/c/count_calls.py (gdb breakpoints on the same addresses the
//! probes use).
//!
//! These tests need root (eBPF and uprobes). Without it they fail, saying so, unless
//! MEMPROF_SKIP_PRIVILEGED=1 is set; then each prints why it does nothing and passes.

mod analyses;
mod attach;
mod backpressure;
mod c_targets;
mod compare;
mod cxx_alloc;
mod diff;
mod failures;
mod leak_check;
mod live;
mod many_stacks;
mod own_alloc;
mod preload;
mod process_tree;
mod recording;
mod report;
mod rust_target;
mod security;
mod server;
mod stacks;
mod support;
mod threads_exit;
