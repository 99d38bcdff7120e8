//! Requested sizes, kept so that they can be mapped onto any allocator's size classes at the
//! end (the allocator may only be known then): exact counts per size, dense below 4 KiB, in a
//! map above. The map holds at most [`MAX_LARGE_SIZES`] distinct sizes; after that, new large
//! sizes are rounded up to 4 KiB (and the result says so), which keeps memory bounded.

use super::allocator::{Allocator, GlibcMmap};
use super::{Analysis, Observed, SessionEnd};
use crate::fasthash::FastHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const DENSE_SIZES: usize = 4096;
pub const MAX_LARGE_SIZES: usize = 1 << 16;

#[derive(Debug)]
pub struct Sizes {
    small: Vec<u64>,
    /// (requested size, glibc served it with mmap) -> count.
    large: FastHashMap<(u64, bool), u64>,
    coarsened: bool,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            small: vec![0; DENSE_SIZES],
            large: FastHashMap::default(),
            coarsened: false,
        }
    }
}

/// Requests of one class of the serving allocator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SizeClass {
    /// The class: the usable size of its blocks.
    pub usable: u64,
    pub count: u64,
    pub requested_bytes: u64,
    pub usable_bytes: u64,
    /// (usable - requested) / usable over the class.
    pub fragmentation: f64,
}

/// A power-of-two bucket of requested sizes: [min, max].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeBucket {
    pub min: u64,
    pub max: u64,
    pub count: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SizeClassesReport {
    pub allocator: Allocator,
    /// Successful malloc-family calls and the bytes they requested.
    pub allocations: u64,
    pub requested_bytes: u64,
    /// Null when the allocator is unknown.
    pub usable_bytes: Option<u64>,
    /// (usable - requested) / usable over every allocation; null when the allocator is unknown.
    pub internal_fragmentation: Option<f64>,
    /// Requested sizes in power-of-two buckets: 0, 1, 2-3, 4-7, ...
    pub requested: Vec<SizeBucket>,
    /// Every class used, by usable size; empty when the allocator is unknown.
    pub classes: Vec<SizeClass>,
    /// More than 65536 distinct sizes above 4 KiB were seen: later ones were rounded up to
    /// 4 KiB before being counted.
    pub coarsened: bool,
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Analysis for Sizes {
    type Report = SizeClassesReport;

    #[inline]
    fn observe(&mut self, seen: &Observed<'_>) {
        if let Some((_, block)) = &seen.effect.created {
            self.allocated(block.size, seen.glibc);
        }
    }

    fn report(&self, input: &SessionEnd<'_>) -> SizeClassesReport {
        self.classes(input.allocator)
    }
}

impl Sizes {
    /// A block of `size` requested bytes was allocated (`glibc` tells whether glibc would
    /// mmap it).
    fn allocated(&mut self, size: u64, glibc: &GlibcMmap) {
        if let Some(count) = self.small.get_mut(size as usize) {
            *count += 1;
            return;
        }
        let mut key = (size, glibc.is_mmapped(size));
        if !self.large.contains_key(&key) && self.large.len() >= MAX_LARGE_SIZES {
            self.coarsened = true;
            key.0 = size.div_ceil(4096) * 4096;
        }
        *self.large.entry(key).or_insert(0) += 1;
    }

    /// Every (requested size, glibc mmapped, count) so far, sizes ascending (the live view
    /// buckets them).
    pub fn counts(&self) -> Vec<(u64, bool, u64)> {
        let mut counts: Vec<(u64, bool, u64)> = self
            .small
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(size, count)| (size as u64, false, *count))
            .collect();
        let mut large: Vec<(u64, bool, u64)> = self
            .large
            .iter()
            .map(|(&(size, mmapped), &count)| (size, mmapped, count))
            .collect();
        large.sort_unstable();
        counts.extend(large);
        counts
    }

    /// The requests mapped onto `allocator`'s size classes.
    fn classes(&self, allocator: Allocator) -> SizeClassesReport {
        let counts = self.counts();
        let mut requested: BTreeMap<u32, SizeBucket> = BTreeMap::new();
        let mut classes: BTreeMap<u64, SizeClass> = BTreeMap::new();
        let (mut allocations, mut requested_bytes, mut usable_bytes) = (0, 0, 0);
        for (size, mmapped, count) in counts {
            allocations += count;
            requested_bytes += size * count;
            let bucket = if size == 0 {
                0
            } else {
                64 - size.leading_zeros()
            };
            let entry = requested.entry(bucket).or_insert_with(|| SizeBucket {
                min: if bucket == 0 { 0 } else { 1 << (bucket - 1) },
                max: if bucket == 0 {
                    0
                } else {
                    (1u64 << (bucket - 1)).saturating_mul(2) - 1
                },
                count: 0,
                bytes: 0,
            });
            entry.count += count;
            entry.bytes += size * count;
            if let Some(usable) = allocator.usable_size(size, mmapped) {
                usable_bytes += usable * count;
                let class = classes.entry(usable).or_insert_with(|| SizeClass {
                    usable,
                    count: 0,
                    requested_bytes: 0,
                    usable_bytes: 0,
                    fragmentation: 0.0,
                });
                class.count += count;
                class.requested_bytes += size * count;
                class.usable_bytes += usable * count;
            }
        }
        let known = allocator != Allocator::Unknown;
        SizeClassesReport {
            allocator,
            allocations,
            requested_bytes,
            usable_bytes: known.then_some(usable_bytes),
            internal_fragmentation: known
                .then(|| ratio(usable_bytes - requested_bytes, usable_bytes)),
            requested: requested.into_values().collect(),
            classes: classes
                .into_values()
                .map(|mut class| {
                    class.fragmentation = ratio(
                        class.usable_bytes - class.requested_bytes,
                        class.usable_bytes,
                    );
                    class
                })
                .collect(),
            coarsened: self.coarsened,
        }
    }
}
