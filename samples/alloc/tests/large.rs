//! Requests above 256 KiB (or aligned beyond a page) get a mapping of their own, unmapped on
//! free; up to 256 KiB they are page runs, which stay mapped when freed. One test in this
//! binary, so that the medium area holds only its blocks.
use memprof_alloc::heap;

const PAGE: usize = 4096;

/// Whether the page at `p` is mapped (mincore fails with ENOMEM on unmapped memory).
fn mapped(p: *const u8) -> bool {
    let mut vec = [0u8; 1];
    unsafe { libc::mincore(p as *mut libc::c_void, PAGE, vec.as_mut_ptr()) == 0 }
}

#[test]
fn only_blocks_beyond_the_medium_limit_are_unmapped() {
    assert_eq!(heap::MEDIUM_MAX, 256 * 1024);
    let medium = heap::malloc(heap::MEDIUM_MAX);
    let large = heap::malloc(heap::MEDIUM_MAX + 1);
    assert_eq!(heap::usable_size(medium), 256 * 1024);
    assert_eq!(heap::usable_size(large), 260 * 1024);
    unsafe {
        medium.write_bytes(1, heap::MEDIUM_MAX);
        large.write_bytes(2, heap::MEDIUM_MAX + 1);
        heap::free(medium);
        heap::free(large);
    }
    assert!(mapped(medium), "a freed medium run stays mapped");
    assert!(!mapped(large), "a freed large block is unmapped");

    // Aligned beyond a page: its own mapping, whatever its size.
    for align in [8192, 65536, 1 << 20] {
        let p = heap::aligned(align, 50_000);
        assert_eq!(p as usize % align, 0, "align {align}");
        assert_eq!(heap::usable_size(p), 53248, "align {align}");
        unsafe {
            p.write_bytes(3, 50_000);
            heap::free(p);
        }
        assert!(!mapped(p), "align {align}: still mapped");
    }

    // A large block shrunk by realloc stays a mapping of its own, resized in place or moved.
    let p = heap::malloc(1 << 20);
    unsafe { p.write_bytes(4, 1 << 20) };
    let q = unsafe { heap::realloc(p, 100_000) };
    assert_eq!(heap::usable_size(q), 102_400);
    assert!((0..100_000).all(|i| unsafe { *q.add(i) } == 4));
    unsafe { heap::free(q) };
    assert!(!mapped(q));
}
