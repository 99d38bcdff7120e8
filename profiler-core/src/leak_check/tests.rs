use std::collections::BTreeMap;

use super::roots::{Root, RootInputs, root_ranges};
use super::*;
use crate::maps::ProcessMaps;

/// A process image: bytes at addresses; anything else is unmapped.
#[derive(Default)]
struct Image {
    regions: BTreeMap<u64, Vec<u8>>,
    reads: usize,
}

impl Image {
    fn put(&mut self, addr: u64, words: &[u64]) {
        let bytes = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.regions.insert(addr, bytes);
    }

    fn byte(&self, addr: u64) -> Option<u8> {
        let (start, bytes) = self.regions.range(..=addr).next_back()?;
        bytes.get((addr - start) as usize).copied()
    }
}

impl Memory for Image {
    fn read(&mut self, ranges: &[(u64, usize)], out: &mut [u8]) -> u64 {
        self.reads += 1;
        let mut unreadable = 0;
        let mut offset = 0;
        for &(addr, len) in ranges {
            for i in 0..len {
                out[offset + i] = self.byte(addr + i as u64).unwrap_or_else(|| {
                    unreadable += 1;
                    0
                });
            }
            offset += len;
        }
        unreadable
    }
}

const ROOT: u64 = 0x1000;

fn block(addr: u64, size: u64) -> LiveBlock {
    LiveBlock { addr, size }
}

/// Root ranges of the program's own memory.
fn roots(ranges: &[(u64, u64)]) -> Vec<Root> {
    ranges
        .iter()
        .map(|&(start, end)| Root {
            start,
            end,
            allocator_static: false,
        })
        .collect()
}

fn classes_of(
    blocks: &[LiveBlock],
    image: &mut Image,
    ranges: &[(u64, u64)],
    registers: &[u64],
) -> Vec<Reachability> {
    classify(blocks, &roots(ranges), registers, &[], image).classes
}

use Reachability::*;

#[test]
fn each_class_as_memcheck_defines_it() {
    let mut image = Image::default();
    let a = 0x10_000;
    let b = 0x10_100;
    let c = 0x10_200;
    let d = 0x10_300;
    let e = 0x10_400;
    let f = 0x10_500;
    // Root: A at its start, C in its interior (16 bytes in: no heuristic matches).
    image.put(ROOT, &[a, 7, c + 16, 0]);
    image.put(a, &[b, 0]); // A -> B
    image.put(b, &[0, 0]);
    image.put(c, &[d, 0, 0, 0]); // C -> D: from a possible block, so D is possible too
    image.put(d, &[0, 0]);
    image.put(e, &[f, 0]); // E (unreached) -> F
    image.put(f, &[0, 0]);
    let blocks = [
        block(a, 16),
        block(b, 16),
        block(c, 32),
        block(d, 16),
        block(e, 16),
        block(f, 16),
    ];
    let classes = classes_of(&blocks, &mut image, &[(ROOT, ROOT + 32)], &[]);
    assert_eq!(
        classes,
        [
            StillReachable,
            StillReachable,
            PossiblyLost,
            PossiblyLost,
            DefinitelyLost,
            IndirectlyLost
        ]
    );
}

#[test]
fn a_lost_list_has_one_definitely_lost_head() {
    let mut image = Image::default();
    // Nodes in reverse address order: the head is the highest, so the first clique
    // gathered (the lowest address) is merged into the head's later.
    let nodes = [0x20_300u64, 0x20_200, 0x20_100, 0x20_000];
    for pair in nodes.windows(2) {
        image.put(pair[0], &[pair[1], 0]);
    }
    image.put(0x20_000, &[0, 0]);
    let mut blocks: Vec<LiveBlock> = nodes.iter().map(|&addr| block(addr, 16)).collect();
    blocks.sort();
    let classes = classes_of(&blocks, &mut image, &[], &[]);
    // Sorted by address: the tail first, the head (0x20_300) last.
    assert_eq!(
        classes,
        [
            IndirectlyLost,
            IndirectlyLost,
            IndirectlyLost,
            DefinitelyLost
        ]
    );
}

#[test]
fn a_cycle_nobody_points_to_is_lost_once() {
    let mut image = Image::default();
    image.put(0x30_000, &[0x30_100]);
    image.put(0x30_100, &[0x30_000]);
    let blocks = [block(0x30_000, 8), block(0x30_100, 8)];
    let classes = classes_of(&blocks, &mut image, &[], &[]);
    assert_eq!(classes, [DefinitelyLost, IndirectlyLost]);
}

#[test]
fn registers_are_roots_and_a_possible_block_becomes_reachable_from_its_start() {
    let mut image = Image::default();
    image.put(ROOT, &[0x40_000 + 8 * 5]);
    image.put(0x40_000, &[0; 8]);
    let blocks = [block(0x40_000, 64)];
    assert_eq!(
        classes_of(&blocks, &mut image, &[(ROOT, ROOT + 8)], &[]),
        [PossiblyLost]
    );
    assert_eq!(
        classes_of(&blocks, &mut image, &[(ROOT, ROOT + 8)], &[0x40_000]),
        [StillReachable]
    );
}

#[test]
fn zero_sized_blocks_are_reached_at_their_address_only() {
    let mut image = Image::default();
    image.put(ROOT, &[0x50_000, 0x50_011]);
    let blocks = [block(0x50_000, 0), block(0x50_010, 0)];
    assert_eq!(
        classes_of(&blocks, &mut image, &[(ROOT, ROOT + 16)], &[]),
        [StillReachable, DefinitelyLost]
    );
}

#[test]
fn interior_pointers_memcheck_recognises_count_as_reaching_the_start() {
    let mut image = Image::default();
    // new[] of 4 elements of 6 bytes: the count, then the array; the program holds +8.
    image.put(0x60_000, &[4, 0, 0, 0]);
    // length64: the length of the rest (24), then the data.
    image.put(0x61_000, &[24, 0, 0, 0]);
    // pre-C++11 std::string: length 3, capacity 8, refcount, then 8+1 bytes.
    image.put(0x62_000, &[3, 8, 0, 0, 0]);
    // An interior pointer no heuristic explains.
    image.put(0x63_000, &[5, 0, 0, 0]);
    image.put(
        ROOT,
        &[0x60_000 + 8, 0x61_000 + 8, 0x62_000 + 24, 0x63_000 + 8],
    );
    let blocks = [
        block(0x60_000, 32),
        block(0x61_000, 32),
        block(0x62_000, 24 + 8 + 1),
        block(0x63_000, 32),
    ];
    let classes = classes_of(&blocks, &mut image, &[(ROOT, ROOT + 32)], &[]);
    assert_eq!(
        classes,
        [StillReachable, StillReachable, StillReachable, PossiblyLost]
    );
}

#[test]
fn a_base_class_pointer_reaches_an_object_with_two_vtables() {
    let mut image = Image::default();
    let (text, vtables, object) = (0x7000u64, 0x8000u64, 0x70_000u64);
    image.put(text, &[0x90; 8]);
    image.put(vtables, &[text, text + 8, 0, text + 16, text + 24]);
    image.put(object, &[vtables, 1, vtables + 24, 2]);
    image.put(ROOT, &[object + 16]);
    let segments = [
        Segment {
            start: text,
            end: text + 0x1000,
            readable: true,
            executable: true,
            file_backed: true,
        },
        Segment {
            start: vtables,
            end: vtables + 0x1000,
            readable: true,
            executable: false,
            file_backed: true,
        },
    ];
    let blocks = [block(object, 32)];
    let result = classify(
        &blocks,
        &roots(&[(ROOT, ROOT + 8)]),
        &[],
        &segments,
        &mut image,
    );
    assert_eq!(result.classes, [StillReachable]);
    // The same object when the vtables are not in a file mapping: a plain interior pointer.
    let anonymous: Vec<Segment> = segments
        .iter()
        .map(|s| Segment {
            file_backed: false,
            ..*s
        })
        .collect();
    let result = classify(
        &blocks,
        &roots(&[(ROOT, ROOT + 8)]),
        &[],
        &anonymous,
        &mut image,
    );
    assert_eq!(result.classes, [PossiblyLost]);
}

#[test]
fn unreadable_memory_counts_as_no_pointer_and_is_counted() {
    let mut image = Image::default();
    image.put(ROOT, &[0x80_000]);
    let blocks = [block(0x80_000, 8)];
    // The root range runs 24 bytes past what is mapped.
    let result = classify(&blocks, &roots(&[(ROOT, ROOT + 32)]), &[], &[], &mut image);
    assert_eq!(result.classes, [StillReachable]);
    assert_eq!(result.bytes_unreadable, 24 + 8);
    assert_eq!(result.bytes_scanned, 32 + 8);
}

#[test]
fn many_small_blocks_are_read_in_batches() {
    let mut image = Image::default();
    // A chain of 5000 blocks, each pointing to the next, the head held by a root.
    let count = 5000u64;
    for i in 0..count {
        let next = if i + 1 < count {
            0x100_000 + (i + 1) * 32
        } else {
            0
        };
        image.put(0x100_000 + i * 32, &[next, 0]);
    }
    image.put(ROOT, &[0x100_000]);
    let blocks: Vec<LiveBlock> = (0..count).map(|i| block(0x100_000 + i * 32, 16)).collect();
    let classes = classes_of(&blocks, &mut image, &[(ROOT, ROOT + 8)], &[]);
    assert!(classes.iter().all(|&class| class == StillReachable));
    // A chain is discovered one block at a time, so this is one read per block; a fan-out
    // is what batches (below).
    let mut fan = Image::default();
    let pointers: Vec<u64> = (0..count).map(|i| 0x100_000 + i * 32).collect();
    fan.put(ROOT, &pointers);
    for &addr in &pointers {
        fan.put(addr, &[0, 0]);
    }
    let classes = classes_of(&blocks, &mut fan, &[(ROOT, ROOT + 8 * count)], &[]);
    assert!(classes.iter().all(|&class| class == StillReachable));
    assert!(
        fan.reads <= 1 + (count as usize).div_ceil(1024),
        "{} reads",
        fan.reads
    );
}

#[test]
fn the_heuristics_words_are_read_in_batches() {
    // 5000 new[] arrays (count 2, then two 8-byte elements), each held only 8 bytes in, and
    // 5000 more blocks held 16 bytes in (no heuristic: possibly lost).
    let count = 5000u64;
    let mut image = Image::default();
    let arrays: Vec<u64> = (0..count).map(|i| 0x100_000 + i * 64).collect();
    let others: Vec<u64> = (0..count).map(|i| 0x800_000 + i * 64).collect();
    for &addr in &arrays {
        image.put(addr, &[2, 0, 0]);
    }
    for &addr in &others {
        image.put(addr, &[7, 0, 0, 0]);
    }
    let held: Vec<u64> = arrays
        .iter()
        .map(|a| a + 8)
        .chain(others.iter().map(|o| o + 16))
        .collect();
    image.put(ROOT, &held);
    let mut blocks: Vec<LiveBlock> = arrays.iter().map(|&a| block(a, 24)).collect();
    blocks.extend(others.iter().map(|&o| block(o, 32)));
    let root_end = ROOT + 8 * held.len() as u64;
    let classes = classes_of(&blocks, &mut image, &[(ROOT, root_end)], &[]);
    let reachable = classes.iter().filter(|&&c| c == StillReachable).count();
    let possible = classes.iter().filter(|&&c| c == PossiblyLost).count();
    assert_eq!((reachable, possible), (5000, 5000));
    // Word by word this took two reads per interior pointer (20,000); batched, the roots'
    // words and the heuristics' are read a thousand ranges at a time, and the blocks too.
    assert!(image.reads <= 40, "{} reads", image.reads);
}

#[test]
fn the_allocators_mappings_are_no_roots_but_the_programs_regions_in_them_are() {
    let maps = ProcessMaps::parse(
        "1000-2000 rw-p 00000000 00:00 0 \n\
         2000-3000 r--p 00000000 08:01 12 /usr/lib/libc.so.6\n\
         3000-4000 rw-p 00001000 08:01 12 /usr/lib/libc.so.6\n\
         10000-20000 rw-p 00000000 00:00 0 [heap]\n\
         30000-40000 rw-p 00000000 00:00 0 \n\
         50000-60000 rw-p 00000000 00:00 0 \n\
         70000-71000 rw-s 00000000 00:01 99 /memfd:memprof-ring (deleted)\n\
         7ff00-80000 rw-p 00000000 00:00 0 [stack]\n",
    )
    .expect("maps");
    let inputs = RootInputs {
        maps: &maps,
        // The brk heap and the anonymous mapping at 0x30000 held blocks.
        allocator_addresses: &[0x10010, 0x30020],
        program_regions: &[(0x38000, 0x39000)],
        blocks: &[block(0x1100, 0x10)],
        freed: &[],
        stack_pointers: &[0x7ff88],
        allocator_files: &["/usr/lib/libc.so.6".into()],
    };
    let ranges: Vec<(u64, u64, bool)> = root_ranges(&inputs)
        .iter()
        .map(|root| (root.start, root.end, root.allocator_static))
        .collect();
    assert_eq!(
        ranges,
        [
            (0x1000, 0x1100, false),
            (0x1110, 0x2000, false),
            (0x3000, 0x4000, true),
            (0x38000, 0x39000, false),
            (0x50000, 0x60000, false),
            (0x7ff88, 0x80000, false),
        ]
    );
}

#[test]
fn blocks_freed_in_an_attach_window_are_no_roots_even_where_they_overlap() {
    // attach: no allocator addresses, so the heap mapping is a root but for the window's
    // blocks, live or freed. 0x10100 was freed (0x40 bytes), merged with its neighbour, handed
    // out again at 0x10120 and freed again (0x60 bytes): the two overlap.
    let maps = ProcessMaps::parse("10000-11000 rw-p 00000000 00:00 0 [heap]\n").expect("maps");
    let inputs = RootInputs {
        maps: &maps,
        allocator_addresses: &[],
        program_regions: &[],
        blocks: &[block(0x10400, 0x10)],
        freed: &[
            block(0x10100, 0x40),
            block(0x10120, 0x60),
            block(0x10200, 0x8),
        ],
        stack_pointers: &[],
        allocator_files: &[],
    };
    let ranges: Vec<(u64, u64)> = root_ranges(&inputs)
        .iter()
        .map(|root| (root.start, root.end))
        .collect();
    assert_eq!(
        ranges,
        [
            (0x10000, 0x10100),
            (0x10180, 0x10200),
            (0x10208, 0x10400),
            (0x10410, 0x11000),
        ]
    );
}

#[test]
fn the_allocators_pointer_to_the_chunk_header_a_block_overlaps_is_not_the_programs() {
    let mut image = Image::default();
    // A 65-byte block at 0x90_010: the next chunk's header is at 0x90_050 (its last byte).
    // glibc's main_arena.top points there; so might a program, anywhere but its own data.
    image.put(ROOT, &[0x90_050]);
    let blocks = [block(0x90_010, 65)];
    let static_root = [Root {
        start: ROOT,
        end: ROOT + 8,
        allocator_static: true,
    }];
    let result = classify(&blocks, &static_root, &[], &[], &mut image);
    assert_eq!(result.classes, [DefinitelyLost]);
    assert_eq!(
        classes_of(&blocks, &mut image, &[(ROOT, ROOT + 8)], &[]),
        [PossiblyLost]
    );
    // The allocator's pointer to a block's start is still a pointer to it.
    image.put(ROOT, &[0x90_010]);
    let result = classify(&blocks, &static_root, &[], &[], &mut image);
    assert_eq!(result.classes, [StillReachable]);
}

#[test]
fn a_summary_counts_blocks_and_bytes_per_class() {
    let blocks = [block(0x10, 5), block(0x20, 7), block(0x30, 11)];
    let check = LeakCheck::new(
        &blocks,
        &[DefinitelyLost, StillReachable, DefinitelyLost],
        ScanStats::default(),
    );
    assert_eq!(
        check.summary.definitely_lost,
        ClassTotal {
            blocks: 2,
            bytes: 16
        }
    );
    assert_eq!(check.summary.still_reachable.bytes, 7);
    assert_eq!(check.summary.lost_bytes(), 16);
    assert_eq!(check.class_of(0x20), StillReachable);
    assert_eq!(check.class_of(0x30), DefinitelyLost);
    for class in Reachability::ALL {
        assert_eq!(Reachability::from_code(class.code()), Some(class));
    }
}
