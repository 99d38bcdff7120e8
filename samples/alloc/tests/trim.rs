//! Slabs go back to the kernel once all their blocks are free, also when another thread freed
//! them: one test in this binary, so that its resident-set figures are its own.
use memprof_alloc::heap;

/// The process's resident set in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const BLOCK: usize = 1024;
const BLOCKS: usize = 64 * 1024; // 64 MiB

#[test]
fn freed_slabs_are_released_and_reused() {
    let before = rss_kib();
    let blocks: Vec<usize> = std::thread::spawn(|| {
        (0..BLOCKS)
            .map(|i| {
                let p = heap::malloc(BLOCK);
                unsafe { std::ptr::write_bytes(p, i as u8, BLOCK) };
                p as usize
            })
            .collect()
    })
    .join()
    .unwrap();
    let full = rss_kib();
    assert!(
        full >= before + 60 * 1024,
        "before {before} KiB, full {full} KiB"
    );

    // Freed by a thread that did not allocate them; its exit returns its cache.
    std::thread::spawn(move || {
        for (i, &p) in blocks.iter().enumerate() {
            let p = p as *mut u8;
            unsafe {
                assert_eq!(*p.add(BLOCK - 1), i as u8);
                heap::free(p);
            }
        }
    })
    .join()
    .unwrap();
    heap::trim();
    let trimmed = rss_kib();
    // 64 MiB is 256 slabs; all but the class's current one (and blocks of it another test
    // thread might hold: none here) are released.
    assert!(
        heap::released_slabs() >= 250,
        "released {}",
        heap::released_slabs()
    );
    assert!(
        trimmed + 56 * 1024 <= full,
        "full {full} KiB, after trim {trimmed} KiB"
    );

    // The released slabs are taken again (here by another class) and work like fresh ones.
    let again: Vec<*mut u8> = (0..BLOCKS / 2)
        .map(|i| {
            let p = heap::malloc(2 * BLOCK);
            unsafe { std::ptr::write_bytes(p, i as u8, 2 * BLOCK) };
            p
        })
        .collect();
    assert!(
        again
            .iter()
            .enumerate()
            .all(|(i, &p)| unsafe { *p.add(2 * BLOCK - 1) } == i as u8)
    );
    for p in again {
        unsafe { heap::free(p) };
    }
}
