//! Dirty free page runs go back to the kernel past the limit, and all of them on trim: one
//! test in this binary, so that its resident-set figures are its own.
use memprof_alloc::heap;

const PAGE: usize = 4096;
const BLOCK: usize = 200 * 1024;
const BLOCKS: usize = 64; // 12.5 MiB

/// The process's resident set in KiB.
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// How many pages of `[start, start + len)` are resident.
fn resident_pages(start: usize, len: usize) -> usize {
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore({start:#x}, {len})");
    vec.iter().filter(|&&v| v & 1 == 1).count()
}

#[test]
fn dirty_free_runs_are_given_back_past_the_limit_and_on_trim() {
    let blocks: Vec<usize> = (0..BLOCKS)
        .map(|i| {
            let p = heap::malloc(BLOCK);
            unsafe { p.write_bytes(i as u8 + 1, BLOCK) };
            p as usize
        })
        .collect();
    // Carved one after the other from the medium area.
    let start = blocks[0];
    assert!(blocks.windows(2).all(|w| w[1] == w[0] + BLOCK));
    let span = BLOCKS * BLOCK;
    assert_eq!(resident_pages(start, span), span / PAGE);
    let full = rss_kib();

    for &p in &blocks {
        unsafe { heap::free(p as *mut u8) };
        assert!(heap::free_medium_dirty_bytes() <= heap::MEDIUM_DIRTY_LIMIT);
    }
    // The freed blocks merge into one free run. Every 11th free crosses the 2 MiB limit and
    // gives back the longest runs, here that one whole: 9 blocks stay dirty.
    assert_eq!(heap::free_medium_dirty_bytes(), 9 * BLOCK);
    assert_eq!(resident_pages(start, span), 9 * BLOCK / PAGE);
    let freed = rss_kib();
    assert!(
        freed + 10 * 1024 <= full,
        "full {full} KiB, freed {freed} KiB"
    );

    heap::trim();
    assert_eq!(heap::free_medium_dirty_bytes(), 0);
    assert_eq!(resident_pages(start, span), 0);

    // Given-back pages come back zero, without calloc clearing them (they stay untouched).
    let p = heap::calloc(1, BLOCK);
    assert_eq!(p as usize, start);
    assert_eq!(
        resident_pages(start, BLOCK),
        0,
        "calloc touched clean pages"
    );
    assert!(
        unsafe { std::slice::from_raw_parts(p, BLOCK) }
            .iter()
            .all(|&b| b == 0)
    );
    unsafe { heap::free(p) };
}
