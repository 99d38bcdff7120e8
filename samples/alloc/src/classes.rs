//! The size classes, fixed project-wide so that the allocator and memprof's analyses agree.
//!
//! 16, 32, ..., 128 in steps of 16, then four classes per doubling up to 32768. Requests above
//! the last class go to the page path and are rounded up to whole pages.

/// Largest size class; larger requests are rounded up to whole pages.
pub const MAX_SMALL: usize = 32768;

/// Largest class served from slabs. Every class above it (16384 to 32768) is a whole number of
/// pages, so those are served as page runs of exactly the class's size: freed, they merge with
/// their neighbours and serve any size, where slabs would keep them for their class alone (the
/// sample server's 16-32 KiB payloads left ~1.4 MiB idle in such slabs).
pub const SLAB_MAX: usize = 14336;

/// Granularity of the page path.
pub const PAGE: usize = 4096;

/// Every class, smallest first.
pub const CLASSES: [usize; CLASS_COUNT] = build_classes();

pub const CLASS_COUNT: usize = 8 + 4 * 8;

const fn build_classes() -> [usize; CLASS_COUNT] {
    let mut table = [0; CLASS_COUNT];
    let mut i = 0;
    while i < 8 {
        table[i] = 16 * (i + 1);
        i += 1;
    }
    // From 128: each doubling [2^k, 2^(k+1)] is split in four steps of 2^k / 4.
    let mut base = 128;
    while i < CLASS_COUNT {
        let mut step = 1;
        while step <= 4 {
            table[i] = base + step * (base / 4);
            i += 1;
            step += 1;
        }
        base *= 2;
    }
    table
}

/// The index in [`CLASSES`] of the class serving `size` bytes (0 counts as 1), or `None` for
/// the page path.
#[inline]
pub fn class_index(size: usize) -> Option<usize> {
    if size <= 128 {
        return Some(size.saturating_sub(1) / 16);
    }
    if size > MAX_SMALL {
        return None;
    }
    // size in (2^k, 2^(k+1)]: the class is 2^k + step * 2^k / 4 with step in 1..=4.
    let k = usize::BITS - 1 - (size - 1).leading_zeros();
    let base = 1usize << k;
    let step = ((size - 1 - base) >> (k - 2)) + 1;
    Some(8 + (k as usize - 7) * 4 + step - 1)
}

/// The index of the slab class serving `size` bytes, or `None` for the page path (which gives
/// the same usable size as the class up to [`MAX_SMALL`]).
#[inline]
pub fn slab_class(size: usize) -> Option<usize> {
    if size > SLAB_MAX {
        return None;
    }
    class_index(size)
}

/// `class` as a provably valid index into per-class tables. It always is one (classes come from
/// [`class_index`] or from slab headers written with one), but saying so lets the compiler drop
/// the bounds checks, whose panic path would link the standard library's panic and backtrace
/// machinery into the preloaded library, resident in every process it serves.
#[inline(always)]
pub fn in_range(class: usize) -> usize {
    class.min(CLASS_COUNT - 1)
}

/// The number of bytes a request of `size` really gets: its class, or for the page path
/// `size` rounded up to whole pages (`None` when that overflows).
pub fn size_class(size: usize) -> Option<usize> {
    match class_index(size) {
        Some(index) => Some(CLASSES[in_range(index)]),
        None => size.checked_add(PAGE - 1).map(|s| s & !(PAGE - 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_agreed_classes() {
        assert_eq!(&CLASSES[..8], &[16, 32, 48, 64, 80, 96, 112, 128]);
        assert_eq!(&CLASSES[8..16], &[160, 192, 224, 256, 320, 384, 448, 512]);
        assert_eq!(&CLASSES[16..20], &[640, 768, 896, 1024]);
        assert_eq!(&CLASSES[CLASS_COUNT - 4..], &[20480, 24576, 28672, 32768]);
    }

    #[test]
    fn every_size_maps_to_the_smallest_class_that_fits() {
        for size in 0..=MAX_SMALL {
            let expected = CLASSES.iter().position(|&c| c >= size.max(1)).unwrap();
            assert_eq!(class_index(size), Some(expected), "size {size}");
        }
    }

    #[test]
    fn classes_above_the_slab_limit_are_whole_pages() {
        assert_eq!(slab_class(SLAB_MAX), Some(CLASS_COUNT - 6));
        assert_eq!(slab_class(SLAB_MAX + 1), None);
        for size in SLAB_MAX + 1..=MAX_SMALL {
            let class = CLASSES[class_index(size).unwrap()];
            assert_eq!(class, size.next_multiple_of(PAGE), "size {size}");
        }
    }

    #[test]
    fn large_sizes_round_to_pages() {
        assert_eq!(class_index(MAX_SMALL + 1), None);
        assert_eq!(size_class(MAX_SMALL + 1), Some(36864));
        assert_eq!(size_class(40960), Some(40960));
        assert_eq!(size_class(0), Some(16));
        assert_eq!(size_class(usize::MAX), None);
    }
}
