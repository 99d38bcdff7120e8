//! Which allocator serves the target, and the usable size it hands out for a request.
//!
//! Each rule below was taken from the allocator's sources and then checked against
//! `malloc_usable_size` of the Debian 12 builds for every request from 0 to 300000 bytes and
//! every 4099th request up to 40 MB (glibc 2.36, libjemalloc2 5.3.0, libmimalloc2.0 2.0.9,
//! libtcmalloc-minimal4 from gperftools 2.10); the sample points in the tests come from that run.

use crate::report::ProbeInfo;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The allocator that provides `malloc` to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocator {
    Glibc,
    Jemalloc,
    Mimalloc,
    Tcmalloc,
    /// The project's own allocator (samples/alloc, `libmemprof_alloc.so`).
    Memprof,
    /// Not one of the above: only requested sizes are reported.
    Unknown,
}

/// glibc's initial mmap threshold (`DEFAULT_MMAP_THRESHOLD_MIN`, malloc/malloc.c).
pub const GLIBC_MMAP_THRESHOLD: u64 = 128 * 1024;
/// The dynamic threshold never rises above this (`DEFAULT_MMAP_THRESHOLD_MAX`, 64-bit).
const GLIBC_MMAP_THRESHOLD_MAX: u64 = 32 * 1024 * 1024;
const GLIBC_PAGE: u64 = 4096;

impl Allocator {
    /// The allocator a module file provides, by its file name.
    pub fn from_module(path: &str) -> Allocator {
        let name = path.rsplit('/').next().unwrap_or(path);
        let table = [
            ("libc.so", Allocator::Glibc),
            ("libjemalloc.so", Allocator::Jemalloc),
            ("libmimalloc.so", Allocator::Mimalloc),
            ("libtcmalloc", Allocator::Tcmalloc),
            ("libmemprof_alloc.so", Allocator::Memprof),
        ];
        table
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map_or(Allocator::Unknown, |(_, allocator)| *allocator)
    }

    /// The allocator of the module where `malloc` was probed.
    pub fn from_probes(probes: &[ProbeInfo]) -> Allocator {
        probes
            .iter()
            .find(|probe| probe.function == "malloc")
            .map_or(Allocator::Unknown, |probe| {
                Allocator::from_module(&probe.module)
            })
    }

    /// Bytes the allocator really reserves for a request of `requested` bytes (its
    /// `malloc_usable_size`), or None when the allocator is unknown. `glibc_mmapped` says
    /// whether glibc served the request with its own mapping (see [`GlibcMmap`]).
    pub fn usable_size(self, requested: u64, glibc_mmapped: bool) -> Option<u64> {
        Some(match self {
            Allocator::Glibc => glibc_usable(requested, glibc_mmapped),
            Allocator::Jemalloc => jemalloc_usable(requested),
            Allocator::Mimalloc => mimalloc_usable(requested),
            Allocator::Tcmalloc => tcmalloc_usable(requested),
            Allocator::Memprof => memprof_usable(requested),
            Allocator::Unknown => return None,
        })
    }

    /// The name used in report.json.
    pub fn name(self) -> &'static str {
        match self {
            Allocator::Glibc => "glibc",
            Allocator::Jemalloc => "jemalloc",
            Allocator::Mimalloc => "mimalloc",
            Allocator::Tcmalloc => "tcmalloc",
            Allocator::Memprof => "memprof",
            Allocator::Unknown => "unknown",
        }
    }

    /// Bytes of allocator metadata right before each block (glibc's size field): a block's
    /// footprint in the address space starts that far below the pointer.
    pub fn header_bytes(self) -> u64 {
        match self {
            Allocator::Glibc => 8,
            _ => 0,
        }
    }
}

fn round_up(value: u64, multiple: u64) -> u64 {
    value.div_ceil(multiple) * multiple
}

/// Four classes per doubling above 128 (jemalloc's and the memprof allocator's spacing):
/// between 2^k and 2^(k+1) the classes are 2^(k-2) apart.
fn quarter_doubling(size: u64) -> u64 {
    let lg = 63 - u64::from((size - 1).leading_zeros());
    round_up(size, 1 << (lg - 2))
}

/// glibc malloc/malloc.c: `request2size` pads the request with the 8-byte size field and
/// aligns it to 16, at least MINSIZE (32); an in-heap chunk's usable size is the chunk minus
/// the size field (the next chunk's prev_size is usable). An mmapped chunk is the padded
/// request plus 8, rounded to pages, and loses 16 bytes of header (`sysmalloc`, `musable`).
fn glibc_chunk(requested: u64) -> u64 {
    (requested.saturating_add(8 + 15) & !15).max(32)
}

fn glibc_usable(requested: u64, mmapped: bool) -> u64 {
    let chunk = glibc_chunk(requested);
    if mmapped {
        round_up(chunk + 8, GLIBC_PAGE) - 16
    } else {
        chunk - 8
    }
}

/// jemalloc 5.3 size classes (include/jemalloc/internal/sc.h with LG_QUANTUM 4, LG_PAGE 12):
/// 8, then multiples of 16 up to 128, then four classes per doubling; large classes follow the
/// same spacing, so one rule covers every size.
fn jemalloc_usable(requested: u64) -> u64 {
    match requested {
        0..=8 => 8,
        9..=128 => round_up(requested, 16),
        _ => quarter_doubling(requested),
    }
}

/// mimalloc 2.0 (src/page-queue.c `mi_bin` with MI_ALIGN2W: 8, then even word counts up to
/// 8 words, then four bins per doubling up to MI_MEDIUM_OBJ_SIZE_MAX = 128 KiB). Larger
/// blocks get their own page of 64 KiB slices up to 512 KiB, and are then rounded as the
/// measured Debian build does: to 512 KiB up to 8 MiB, 1 MiB up to 32 MiB, 4 MiB beyond.
fn mimalloc_usable(requested: u64) -> u64 {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    match requested {
        0..=8 => 8,
        9..=64 => round_up(requested, 16),
        65..=131072 => quarter_doubling(requested),
        _ if requested <= 512 * KIB => round_up(requested, 64 * KIB),
        _ if requested <= 8 * MIB => round_up(requested, 512 * KIB),
        _ if requested <= 32 * MIB => round_up(requested, MIB),
        _ => round_up(requested, 4 * MIB),
    }
}

/// gperftools 2.10 (src/common.cc `SizeMap::Init`, src/common.h): kAlignment 8, kMinAlign
/// 16, 8 KiB pages, kMaxSize 256 KiB, TCMALLOC_TRANSFER_NUM_OBJ default 32. Classes are spaced
/// by `AlignmentForSize` and merged when they would use the same pages for the same object
/// count. Larger requests are whole 8 KiB pages.
fn tcmalloc_usable(requested: u64) -> u64 {
    const MAX_SIZE: u64 = 256 * 1024;
    if requested > MAX_SIZE {
        return round_up(requested, 8192);
    }
    let classes = tcmalloc_classes();
    let index = classes.partition_point(|&class| class < requested.max(1));
    classes[index]
}

fn tcmalloc_classes() -> &'static [u64] {
    static CLASSES: OnceLock<Vec<u64>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        const PAGE_SHIFT: u64 = 13;
        const PAGE: u64 = 1 << PAGE_SHIFT;
        const MAX_SIZE: u64 = 256 * 1024;
        const TRANSFER_NUM_OBJECTS: u64 = 32;
        let alignment_for = |size: u64| -> u64 {
            let alignment = if size >= 128 {
                (1u64 << (63 - size.leading_zeros())) / 8
            } else if size >= 16 {
                16
            } else {
                8
            };
            alignment.min(PAGE)
        };
        let move_size = |size: u64| ((64 * 1024) / size).clamp(2, TRANSFER_NUM_OBJECTS);
        let mut sizes: Vec<u64> = Vec::new();
        let mut pages: Vec<u64> = Vec::new();
        let mut size = 8;
        while size <= MAX_SIZE {
            let alignment = alignment_for(size);
            let blocks_to_move = move_size(size) / 4;
            let mut span = 0;
            loop {
                span += PAGE;
                while span % size > span >> 3 {
                    span += PAGE;
                }
                if span / size >= blocks_to_move {
                    break;
                }
            }
            let my_pages = span >> PAGE_SHIFT;
            let merges = match (sizes.last(), pages.last()) {
                (Some(&prev_size), Some(&prev_pages)) if prev_pages == my_pages => {
                    (my_pages << PAGE_SHIFT) / size == (prev_pages << PAGE_SHIFT) / prev_size
                }
                _ => false,
            };
            if merges {
                *sizes.last_mut().expect("checked") = size;
            } else {
                sizes.push(size);
                pages.push(my_pages);
            }
            size += alignment;
        }
        sizes
    })
}

/// The memprof allocator (samples/alloc): its class from the project-wide table
/// (profiler-common's `size_classes`, which the allocator itself serves), whole pages beyond.
fn memprof_usable(requested: u64) -> u64 {
    use profiler_common::size_classes::{CLASSES, PAGE, class_index};
    match usize::try_from(requested).ok().and_then(class_index) {
        Some(index) => CLASSES[index] as u64,
        None => round_up(requested, PAGE as u64),
    }
}

/// glibc's dynamic mmap threshold (malloc/malloc.c `__libc_free`): it starts at 128 KiB, and
/// freeing an mmapped chunk larger than the threshold raises the threshold to that chunk's
/// size (up to 32 MiB), so later requests of that size come from the heap. Followed whatever
/// the allocator is (the allocator may only be known at the end).
///
/// Not modelled: glibc serves a request above the threshold from the top of the heap when
/// the top chunk is already big enough, and M_MMAP_THRESHOLD set by mallopt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlibcMmap {
    threshold: u64,
}

impl Default for GlibcMmap {
    fn default() -> Self {
        Self {
            threshold: GLIBC_MMAP_THRESHOLD,
        }
    }
}

impl GlibcMmap {
    /// Whether glibc would serve this request with its own mapping now.
    pub fn is_mmapped(&self, requested: u64) -> bool {
        glibc_chunk(requested) >= self.threshold
    }

    /// Follows a free of a block of `requested` bytes.
    pub fn freed(&mut self, requested: u64) {
        if self.is_mmapped(requested) {
            let chunk = round_up(glibc_chunk(requested) + 8, GLIBC_PAGE);
            if chunk > self.threshold && chunk <= GLIBC_MMAP_THRESHOLD_MAX {
                self.threshold = chunk;
            }
        }
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (requested, malloc_usable_size) measured on Debian 12 (see the module doc).
    const GLIBC_HEAP: &[(u64, u64)] = &[
        (0, 24),
        (24, 24),
        (25, 40),
        (100, 104),
        (1000, 1000),
        (12009, 12024),
        (139977, 139992),
    ];
    const GLIBC_MMAPPED: &[(u64, u64)] = &[(1 << 20, 1052656), (2 << 20, 2101232)];
    const JEMALLOC: &[(u64, u64)] = &[
        (0, 8),
        (9, 16),
        (17, 32),
        (129, 160),
        (12289, 14336),
        (14337, 16384),
        (32769, 40960),
        (131073, 163840),
        (262145, 327680),
        (4094901, 4194304),
        (36886901, 41943040),
    ];
    const MIMALLOC: &[(u64, u64)] = &[
        (0, 8),
        (9, 16),
        (17, 32),
        (65, 80),
        (12289, 14336),
        (131072, 131072),
        (131073, 196608),
        (524288, 524288),
        (524289, 1048576),
        (8388609, 9437184),
        (33554433, 37748736),
    ];
    const TCMALLOC: &[(u64, u64)] = &[
        (0, 8),
        (9, 16),
        (129, 144),
        (769, 896),
        (12289, 13312),
        (24577, 26624),
        (65537, 73728),
        (262145, 270336),
        (4094901, 4096000),
    ];

    fn check(allocator: Allocator, points: &[(u64, u64)], mmapped: bool) {
        for &(requested, usable) in points {
            assert_eq!(
                allocator.usable_size(requested, mmapped),
                Some(usable),
                "{allocator:?} malloc({requested})"
            );
        }
    }

    #[test]
    fn usable_sizes_match_the_measured_allocators() {
        check(Allocator::Glibc, GLIBC_HEAP, false);
        check(Allocator::Glibc, GLIBC_MMAPPED, true);
        check(Allocator::Jemalloc, JEMALLOC, false);
        check(Allocator::Mimalloc, MIMALLOC, false);
        check(Allocator::Tcmalloc, TCMALLOC, false);
        // gperftools 2.10 builds 85 classes (kNumClasses 86 with class 0).
        assert_eq!(tcmalloc_classes().len(), 85);
    }

    #[test]
    fn memprof_classes_follow_the_project_rule() {
        let expected = [
            (0, 16),
            (1, 16),
            (17, 32),
            (128, 128),
            (129, 160),
            (257, 320),
            (1025, 1280),
            (20000, 20480),
            (32768, 32768),
            (32769, 36864),
        ];
        check(Allocator::Memprof, &expected, false);
        assert_eq!(Allocator::Unknown.usable_size(10, false), None);
    }

    #[test]
    fn glibc_threshold_rises_after_an_mmapped_free() {
        // samples/c: 10 x 1 MiB mmapped, freed, then 1 MiB comes from the heap (measured).
        let mut glibc = GlibcMmap::default();
        assert!(glibc.is_mmapped(1 << 20));
        glibc.freed(1 << 20);
        assert_eq!(glibc.threshold(), 1052672);
        assert!(!glibc.is_mmapped(1 << 20));
        assert_eq!(
            Allocator::Glibc.usable_size(1 << 20, glibc.is_mmapped(1 << 20)),
            Some(1048584)
        );
        assert!(glibc.is_mmapped(2 << 20));
        glibc.freed(64 << 20); // above the 32 MiB cap: unchanged
        assert_eq!(glibc.threshold(), 1052672);
    }

    #[test]
    fn allocator_from_module_names() {
        let cases = [
            ("/lib/x86_64-linux-gnu/libc.so.6", Allocator::Glibc),
            (
                "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                Allocator::Jemalloc,
            ),
            (
                "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
                Allocator::Mimalloc,
            ),
            (
                "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                Allocator::Tcmalloc,
            ),
            (
                "/work/target/samples/libmemprof_alloc.so",
                Allocator::Memprof,
            ),
            ("/usr/bin/static-app", Allocator::Unknown),
        ];
        for (path, allocator) in cases {
            assert_eq!(Allocator::from_module(path), allocator, "{path}");
        }
    }
}
