//! Fresh blocks go to threads in whole cache lines of their slab's state bytes (64 blocks)
//! where that at most doubles a refill, so that two threads' frees and allocations do not write
//! the same line. One test in this binary, so that it sees fresh classes.
use memprof_alloc::heap;

/// The first blocks two live threads get for `size`, one after the other.
fn first_blocks_of_two_threads(size: usize) -> (usize, usize) {
    let first_done = std::sync::Barrier::new(2);
    let second_done = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            let p = heap::malloc(size) as usize;
            first_done.wait();
            // Stays alive (its cache holding the rest of its refill) until the other allocated.
            second_done.wait();
            p
        });
        let b = s.spawn(|| {
            first_done.wait();
            let p = heap::malloc(size) as usize;
            second_done.wait();
            p
        });
        (a.join().unwrap(), b.join().unwrap())
    })
}

#[test]
fn threads_get_fresh_blocks_in_whole_state_lines() {
    // 512 bytes: refills of 32 blocks, rounded up to the 64 of a line.
    let (a, b) = first_blocks_of_two_threads(512);
    assert_eq!(b - a, 64 * 512);
    // 4096 bytes: refills of 4 blocks; a line would be 16 times that, so they stay 4.
    let (a, b) = first_blocks_of_two_threads(4096);
    assert_eq!(b - a, 4 * 4096);
}
