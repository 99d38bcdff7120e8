//! `libmemprof_capture.so`: the in-process capture path of `memprof run --capture preload`.
//!
//! memprof puts this library first in the target's `LD_PRELOAD`, so ld.so binds the program's
//! (and every library's) calls of the malloc family, `free`, `mmap`/`munmap`/`mremap` and the
//! C++ operators here. Each hook forwards the call to the next definition (libc's, or an allocator preloaded after
//! this library) and writes the same record an eBPF probe would write into a ring shared with
//! memprof (`profiler_common::shared_ring`): the collector, heap state, analyses and
//! recordings consume both paths alike. The cost is a function call, a clock read, a stack
//! walk over cached unwind rules and a lock, instead of two uprobe traps and a stack copy.
//!
//! - `hooks`: the exported functions. Each is a naked trampoline that passes the caller's
//!   stack pointer (and frame pointer) on to a Rust hook, so the stack walk starts exactly
//!   where the eBPF return probe's does: at the caller, after the return.
//! - `unwind`: the walk, with framehop over the loaded objects' `.eh_frame` (or the frame
//!   pointers with `--unwind fp`); `last_walk`: the walk before, which the next one joins
//!   where they share a frame; `walkers`: each thread's own walker (rule cache and walk
//!   before), pooled between threads; `fork_safe`: the lock its tables sit behind.
//! - `operators`: the C++ operators, passed on where they reach a hooked function and
//!   recorded where an allocator serves them with its own code; `plt`: where an operator's
//!   tail jumps lead, a PLT entry named by its relocation.
//! - `real`: the next definitions, found with `dlsym(RTLD_NEXT)` on first use; allocations
//!   `dlsym` itself makes meanwhile come from a small static arena.
//! - `thread`: per-thread state (a reentrancy guard, the thread id, the stack's bounds).
//! - `ring`: attaching to the shared ring and writing records into it, waiting (never
//!   dropping) while memprof drains a full ring.
//! - `stack_numbers`: the stacks already sent, so that a stack seen again goes into the ring
//!   as its number instead of its frames.
//!
//! - `arena`: the library's own allocator: its Rust code never allocates through the hooked
//!   functions, nor in the program's heap.
//!
//! Calls the C library makes on the library's behalf while a thread is inside a hook
//! (`dlsym`, `dl_iterate_phdr`) are forwarded unrecorded, as calls inside an allocator are on
//! the eBPF path.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod arena;
mod fork_safe;
mod hooks;
mod last_walk;
mod operators;
mod plt;
mod real;
mod ring;
mod stack_numbers;
mod thread;
mod unwind;
mod walkers;

/// The library's own allocations never go through the program's allocator (see `arena`).
#[global_allocator]
static ARENA: arena::Arena = arena::Arena;
