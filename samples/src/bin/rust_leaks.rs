//! A Rust target with known leaks, for memprof's end-to-end tests.
//!
//! Build as the tests do: `rustc --edition 2024 -C opt-level=2 -g -C force-frame-pointers=yes`.
//! The std runtime allocates a little at startup on its own, so the tests assert per leak site
//! (and on realloc, which the runtime does not call), never on global totals.
//!
//! Expected, exact (every size is requested from glibc by std's System allocator as is, since
//! all alignments are at most 16):
//! - `rust_leak_boxes`: 4 x malloc(1000) through `Box::new` + `Box::leak`: 4 blocks, 4000 bytes.
//! - `rust_leak_raw`: 1 x malloc(2048) through `std::alloc::alloc`, never freed: 1 block.
//! - `rust_forget_vec`: `Vec::<u8>::with_capacity(3000)` then `mem::forget`: 1 block, 3000 bytes.
//! - `rust_vec_growth`: 100 pushes of u64 into `Vec::new()`: capacity 4, 8, 16, 32, 64, 128, so
//!   1 x malloc(32) then 5 x realloc (64, 128, 256, 512, 1024 bytes), then `mem::forget`:
//!   1 block, 1024 bytes, allocated by the last realloc.
//! - `rust_freed`: 10 x `Box<[u8; 500]>` allocated and dropped: 10 mallocs of 500, 10 frees.
//!
//! Checked with samples/c/count_calls.py (gdb breakpoints on glibc's entry points).
//!
//! Stacks: the first four functions call malloc from their own body (Box, alloc and Vec's first
//! allocation are inlined), so a frame-pointer walk names them in any build. The Vec grows in
//! std's `RawVecInner::finish_grow` (monomorphised into this crate): without frame pointers the
//! walk stops there and `rust_vec_growth` is only named in a frame-pointer build.
use std::alloc::{Layout, alloc};
use std::hint::black_box;

/// Not a zero fill: `Box::new([0; N])` may be turned into a calloc by LLVM.
fn fill() -> u8 {
    black_box(0xAB)
}

#[inline(never)]
fn rust_leak_boxes() {
    for _ in 0..4 {
        let leaked: &'static mut [u8; 1000] = Box::leak(Box::new([fill(); 1000]));
        black_box(leaked);
    }
}

#[inline(never)]
fn rust_leak_raw() {
    let layout = Layout::from_size_align(2048, 8).expect("valid layout");
    // SAFETY: the layout has a non-zero size.
    let block = unsafe { alloc(layout) };
    assert!(!block.is_null(), "allocation of 2048 bytes failed");
    black_box(block);
}

#[inline(never)]
fn rust_forget_vec() {
    let vec: Vec<u8> = black_box(Vec::with_capacity(3000));
    std::mem::forget(vec);
}

#[inline(never)]
fn rust_vec_growth() {
    let mut vec: Vec<u64> = Vec::new();
    for i in 0..100 {
        vec.push(black_box(i));
    }
    assert_eq!(vec.capacity(), 128, "std's growth policy changed");
    std::mem::forget(black_box(vec));
}

#[inline(never)]
fn rust_freed() {
    for _ in 0..10 {
        drop(black_box(Box::new([fill(); 500])));
    }
}

fn main() {
    rust_leak_boxes();
    rust_leak_raw();
    rust_forget_vec();
    rust_vec_growth();
    rust_freed();
}
