//! Medium blocks (above 32 KiB up to 256 KiB) are runs of pages: reused, split and merged
//! with free neighbours, resized in place. One test in this binary, so that the addresses it
//! expects are not disturbed by other tests' blocks.
use memprof_alloc::{heap, stats};

const PAGE: usize = 4096;

fn filled(p: *mut u8, len: usize, byte: u8) -> *mut u8 {
    unsafe { p.write_bytes(byte, len) };
    p
}

fn all(p: *const u8, len: usize, byte: u8) -> bool {
    unsafe { std::slice::from_raw_parts(p, len) }
        .iter()
        .all(|&b| b == byte)
}

#[test]
fn runs_are_reused_merged_zeroed_and_resized_in_place() {
    // Fresh runs are carved one after the other.
    let a = filled(heap::malloc(40_000), 40_960, 0xA);
    let b = filled(heap::malloc(40_000), 40_960, 0xB);
    let c = filled(heap::malloc(100_000), 102_400, 0xC);
    assert_eq!(b as usize, a as usize + 10 * PAGE);
    assert_eq!(c as usize, b as usize + 10 * PAGE);
    assert_eq!(heap::usable_size(c), 25 * PAGE);
    assert_eq!(heap::free_medium_dirty_bytes(), 0);

    // A freed run serves the next request that fits, split; its rest stays free.
    unsafe { heap::free(a) };
    assert_eq!(heap::free_medium_dirty_bytes(), 10 * PAGE);
    let d = heap::malloc(36_000);
    assert_eq!(d, a);
    assert_eq!(heap::usable_size(d), 9 * PAGE);
    assert_eq!(heap::free_medium_dirty_bytes(), PAGE);

    // Freed neighbours merge: a (with its split-off page) and b make one 20-page run.
    unsafe {
        heap::free(d);
        heap::free(b);
    }
    assert_eq!(heap::free_medium_dirty_bytes(), 20 * PAGE);
    let e = filled(heap::malloc(80_000), 20 * PAGE, 0xE);
    assert_eq!(e, a);
    assert!(all(c, 102_400, 0xC), "the neighbour was overwritten");

    // calloc clears a reused run.
    unsafe { heap::free(e) };
    let f = heap::calloc(8, 10_000);
    assert_eq!(f, a);
    assert!(all(f, 20 * PAGE, 0), "calloc returned old bytes");

    // realloc: the same page count stays, a shrink frees the tail in place, a growth takes the
    // free run after it back; a growth past the allocated c moves, keeping the bytes.
    filled(f, 20 * PAGE, 0xF);
    assert_eq!(unsafe { heap::realloc(f, 78_000) }, f);
    assert_eq!(unsafe { heap::realloc(f, 50_000) }, f);
    assert_eq!(heap::usable_size(f), 13 * PAGE);
    assert_eq!(heap::free_medium_dirty_bytes(), 7 * PAGE);
    assert_eq!(unsafe { heap::realloc(f, 20 * PAGE) }, f);
    assert_eq!(heap::usable_size(f), 20 * PAGE);
    assert_eq!(heap::free_medium_dirty_bytes(), 0);
    assert!(all(f, 13 * PAGE, 0xF));
    let g = unsafe { heap::realloc(f, 90_000) };
    assert_ne!(g, f);
    assert_eq!(heap::usable_size(g), 22 * PAGE);
    assert!(all(g, 13 * PAGE, 0xF));

    // Double and interior frees are counted and change nothing.
    let before = stats().invalid_frees;
    unsafe {
        heap::free(c.add(PAGE));
        heap::free(c.add(16));
        heap::free(c);
        heap::free(c);
    }
    assert_eq!(stats().invalid_frees - before, 3);
    // f's 20 pages and c's 25 merged: one 45-page run, served to one request.
    let h = heap::malloc(45 * PAGE);
    assert_eq!(h, a);
    let i = heap::malloc(45 * PAGE);
    assert_ne!(i, h, "the run was handed out twice");
    for p in [g, h, i] {
        unsafe { heap::free(p) };
    }
}
