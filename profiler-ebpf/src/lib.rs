//! The eBPF programs live in `main.rs` (a `bin` target for `bpfel-unknown-none`). This empty
//! library exists so that `profiler-cli` can name the crate as a build-dependency, which makes
//! cargo rebuild the CLI when the programs change.
#![no_std]
