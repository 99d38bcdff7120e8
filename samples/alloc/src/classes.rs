//! The size classes: the project-wide table (profiler-common's `size_classes`, which
//! memprof's analyses use too) and what this allocator adds to it: which classes come from
//! slabs, and the usable size of a request.

pub use profiler_common::size_classes::{CLASS_COUNT, CLASSES, MAX_SMALL, PAGE, class_index};

/// Largest class served from slabs. Every class above it (16384 to 32768) is a whole number of
/// pages, so those are served as page runs of exactly the class's size: freed, they merge with
/// their neighbours and serve any size, where slabs would keep them for their class alone (the
/// sample server's 16-32 KiB payloads left ~1.4 MiB idle in such slabs).
pub const SLAB_MAX: usize = 14336;

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
