//! A class in use costs as few pages as its blocks need: its first block shares a page with
//! its slab's header. Only tests of fresh classes in this binary, so that every class's first
//! slab is its own.
use memprof_alloc::{CLASSES, classes::SLAB_MAX, heap};

const PAGE: usize = 4096;
/// Slabs are 256 KiB, aligned to their size (README, "Slabs").
const SLAB: usize = 256 * 1024;

/// How many pages of `[start, start + len)` are resident.
fn resident_pages(start: usize, len: usize) -> usize {
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore({start:#x}, {len})");
    vec.iter().filter(|&&v| v & 1 == 1).count()
}

#[test]
fn a_class_in_use_costs_only_the_pages_its_blocks_touch() {
    for &class in CLASSES.iter().filter(|&&c| c <= SLAB_MAX) {
        let p = heap::malloc(class);
        assert!(!p.is_null());
        unsafe { p.write_bytes(0x5A, class) };
        let slab = p as usize & !(SLAB - 1);
        let end = p as usize + class;
        // The header's page, and only the further pages the written block covers.
        let expected = (end - slab).div_ceil(PAGE);
        assert_eq!(
            resident_pages(slab, SLAB),
            expected,
            "class {class}: block at slab offset {}",
            p as usize - slab
        );
        if class <= 2048 {
            assert_eq!(expected, 1, "class {class} needs a second page");
        }
        unsafe { heap::free(p) };
    }
}

#[test]
fn classes_above_the_slab_limit_are_page_runs_of_their_size() {
    for &class in CLASSES.iter().filter(|&&c| c > SLAB_MAX) {
        let p = heap::malloc(class - 100);
        assert!(!p.is_null());
        assert_eq!(p as usize % PAGE, 0, "class {class}");
        assert_eq!(heap::usable_size(p), class);
        unsafe { p.write_bytes(0x5A, class) };
        assert_eq!(resident_pages(p as usize, class), class / PAGE);
        unsafe { heap::free(p) };
    }
}
