//! Uprobes on the allocation functions of one target process.
//!
//! Every allocation function gets an entry probe that remembers its arguments per thread, and
//! the shared return probe `memprof_return` that reports the call with its result and the user
//! stack. `free` and `munmap` need no result and report from their entry probe.
//!
//! Nested calls (glibc's realloc(NULL, n) calls malloc, free inside realloc(p, 0), mmap inside
//! malloc) are reported once, as the outer call: the in-flight record counts the depth, and
//! entry-only probes stay silent while their thread is inside a reported call.
//!
//! Records are copied to the ring buffer without waking the collector, which drains on a timer;
//! only when the ring is filling past `WAKEUP_BYTES` does a record wake it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!("profiler-ebpf is built for the bpfel-unknown-none target by profiler-cli's build.rs");
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that can reach a panic, so none is ever reached.
    unsafe { core::hint::unreachable_unchecked() }
}
