//! Integration tests of profiler-core's public API, one binary with topical modules.

mod elf_symbols;
mod hot_path;
mod pipeline;
