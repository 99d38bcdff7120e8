//! A `Vec` grown by `push` in a loop, then leaked with `mem::forget`, for the symbolization
//! tests (profiler-cli/tests/e2e/stacks.rs).
//!
//! Growth of a `Vec<u64>` from empty by 100 pushes: capacities 4, 8, 16, 32, 64, 128, each a
//! fresh allocation (the first) or a realloc of the previous buffer (RawVec's grow_amortized
//! doubles, minimum 4 for 8-byte elements). Only the last buffer is live at exit: 128 * 8 =
//! 1024 bytes, allocated from inside `alloc::raw_vec` called by `fill_and_forget`.
//! Compiled with `-C opt-level=2 -g` by the tests, with and without frame pointers. Prints
//! nothing (stdout's buffer would be one more allocation) and exits 0 when the capacity is as
//! expected.

#[inline(never)]
fn fill_and_forget(n: u64) -> usize {
    let mut values: Vec<u64> = Vec::new();
    for i in 0..n {
        values.push(std::hint::black_box(i)); // @vec-push
    }
    let capacity = values.capacity();
    std::mem::forget(values);
    capacity
}

fn main() {
    let capacity = fill_and_forget(std::hint::black_box(100));
    std::process::exit(if capacity == 128 { 0 } else { 1 });
}
