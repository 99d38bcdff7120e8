//! Rust's ways of keeping and losing memory, for the leak check
//! (profiler-cli/tests/e2e/leak_check.rs), held to `valgrind --leak-check=full
//! --show-leak-kinds=all` on the same binary.
//!
//! At exit:
//! - definitely lost: `forget_list`'s Vec buffer (3 pointers, 24 B), given up by
//!   `mem::forget`; `leak_box`'s 200-byte slice, whose `Box::leak` reference was dropped
//! - indirectly lost: the 3 boxes of 64 bytes the forgotten Vec held
//! - still reachable: `KEPT`'s buffer (4 Vecs, 96 B) and the 300-byte Vec in it, held by a
//!   `static`; plus what the Rust runtime keeps for the main thread (valgrind sees the same
//!   blocks: the test compares the totals)
//!
//! Nothing is printed: stdout's buffer would be one more block of the runtime's.
use std::hint::black_box;
use std::sync::Mutex;

static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[inline(never)]
fn keep() {
    let mut kept = KEPT.lock().unwrap();
    kept.reserve_exact(4);
    kept.push(vec![1u8; 300]);
}

#[inline(never)]
fn leak_box() {
    let leaked: &'static mut [u8] = Box::leak(vec![7u8; 200].into_boxed_slice());
    black_box(leaked.as_ptr());
}

#[inline(never)]
fn forget_list() {
    let list: Vec<Box<[u8; 64]>> = (0..3).map(|_| Box::new([0u8; 64])).collect();
    let list = black_box(list);
    std::mem::forget(list);
}

/// Overwrites the stack below main's frame, where the calls above left their pointers.
#[inline(never)]
fn scrub_stack() {
    let mut scratch = [0u8; 16384];
    black_box(&mut scratch);
}

fn main() {
    keep();
    leak_box();
    forget_list();
    scrub_stack();
}
