//! Integration tests of profiler-core's public API, one binary with topical modules.

mod elf_symbols;
mod golden;
mod hot_path;
mod html;
mod pipeline;
mod recorded;
mod separate_debug;
mod workloads;
