//! Freed large mappings are kept for reuse, within their cap, and unmapped beyond it or by a
//! trim: one test in this binary, so that the set of spare mappings is its own.
use memprof_alloc::heap;

const PAGE: usize = 4096;

/// Whether the page at `p` is mapped (mincore fails with ENOMEM on unmapped memory).
fn mapped(p: *const u8) -> bool {
    let mut vec = [0u8; 1];
    unsafe { libc::mincore(p as *mut libc::c_void, PAGE, vec.as_mut_ptr()) == 0 }
}

#[test]
fn spare_mappings_are_reused_capped_and_trimmed() {
    // Same length: the very mapping comes back, zeroed for calloc.
    let p = heap::malloc(40000);
    unsafe { p.write_bytes(0xAB, 40960) };
    unsafe { heap::free(p) };
    assert_eq!(heap::spare_large_bytes(), 40960);
    let q = heap::calloc(1, 40000);
    assert_eq!(q, p);
    assert_eq!(heap::spare_large_bytes(), 0);
    let bytes = unsafe { std::slice::from_raw_parts(q, 40960) };
    assert!(bytes.iter().all(|&b| b == 0), "calloc returned old bytes");

    // Shorter: the same mapping, its tail unmapped, the usable size exact.
    unsafe { heap::free(q) };
    let s = heap::malloc(36000);
    assert_eq!(s, p);
    assert_eq!(heap::usable_size(s), 36864);
    assert!(!mapped(unsafe { p.add(36864) }), "tail still mapped");

    // Longer: extended (maybe moved), the old bytes kept, the usable size exact.
    unsafe { s.write_bytes(7, 36864) };
    unsafe { heap::free(s) };
    let t = heap::malloc(50000);
    assert_eq!(heap::usable_size(t), 53248);
    assert_eq!(unsafe { *t.add(36863) }, 7);
    assert_eq!(heap::spare_large_bytes(), 0);

    // A trim unmaps the spares.
    unsafe { heap::free(t) };
    assert_eq!(heap::spare_large_bytes(), 53248);
    heap::trim();
    assert_eq!(heap::spare_large_bytes(), 0);
    assert!(!mapped(t), "trimmed spare still mapped");

    // The byte cap (1 MiB): five 200 KiB mappings are kept, the next three unmapped.
    let blocks: Vec<*mut u8> = (0..8).map(|_| heap::malloc(200 * 1024)).collect();
    for &b in &blocks {
        unsafe { heap::free(b) };
    }
    assert_eq!(heap::spare_large_bytes(), 5 * 200 * 1024);
    for (i, &b) in blocks.iter().enumerate() {
        assert_eq!(mapped(b), i < 5, "block {i}");
    }

    // Longer than a quarter of the cap: never kept.
    heap::trim();
    let big = heap::malloc(300 * 1024);
    unsafe { heap::free(big) };
    assert_eq!(heap::spare_large_bytes(), 0);
    assert!(!mapped(big));
}
