//! The size classes of the project's own allocator (samples/alloc), fixed project-wide: the
//! allocator serves them and profiler-core's size-class analysis maps requests onto them, from
//! this one table.
//!
//! 16, 32, ..., 128 in steps of 16, then four classes per doubling up to 32768. Requests above
//! the last class go to the page path and are rounded up to whole pages.

/// Largest size class; larger requests are rounded up to whole pages.
pub const MAX_SMALL: usize = 32768;

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
    fn every_size_gets_the_smallest_class_that_holds_it() {
        for size in 0..=MAX_SMALL {
            let index = class_index(size).unwrap();
            assert!(CLASSES[index] >= size.max(1), "{size}");
            assert!(index == 0 || CLASSES[index - 1] < size, "{size}");
        }
        assert_eq!(class_index(MAX_SMALL + 1), None);
    }
}
