//! Where the program keeps its pointers: the root memory of the scan, picked from the
//! target's mappings as memcheck picks its root segments (readable and writable, no device),
//! less the allocator's own memory.
//!
//! The allocator's memory is no root: its free chunks keep stale pointers, which would make
//! lost blocks look reachable. memcheck knows its heap segments because it is the allocator;
//! memprof knows every address a block was ever handed out at (in `run`, the heap keeps the
//! freed ones too), so any mapping holding such an address is the allocator's, as is the brk
//! heap. The program's own mmap regions stay roots even when the kernel merged them into an
//! allocator mapping.
//!
//! One more piece of the allocator lives in root memory: its static state in its own data
//! segment (glibc's `main_arena`, whose `top` and bins point at chunk headers). A chunk header
//! is 16 bytes before the next block and the requested size of a block may run into it (a
//! 65-byte block uses the next chunk's `prev_size`), so such a word points into the last
//! 8 bytes of a live block. Those words, 16-byte aligned and in the allocator's own writable
//! file mappings, are the allocator's ([`Root::allocator_static`]).
//!
//! In `attach`, blocks from before the window are unknown: the allocator's mappings are
//! roots then, all but the blocks the window saw, so nothing the window did not see can make
//! one of its blocks look lost.

use crate::maps::{Mapping, ProcessMaps};

use super::{LiveBlock, Segment};

/// What the root set is built from.
pub struct RootInputs<'a> {
    /// The target's mappings now (read while it is stopped).
    pub maps: &'a ProcessMaps,
    /// Sorted addresses blocks were ever allocated at (`run`); mappings holding one are the
    /// allocator's. Empty in `attach`.
    pub allocator_addresses: &'a [u64],
    /// The program's own mmap regions, `(start, end)`: roots wherever they lie.
    pub program_regions: &'a [(u64, u64)],
    /// Live blocks (sorted): never roots themselves, scanned only once reached.
    pub blocks: &'a [LiveBlock],
    /// Blocks freed while memprof watched, sorted (`attach`, where the allocator's memory is
    /// otherwise a root): what they still hold are stale pointers, not the program's.
    pub freed: &'a [LiveBlock],
    /// Stack pointers of the stopped threads: their stacks are scanned from there up.
    pub stack_pointers: &'a [u64],
    /// Files of the allocator serving the target (the module defining `malloc`): their
    /// writable mappings hold its static state.
    pub allocator_files: &'a [std::path::PathBuf],
}

/// A stretch of root memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Root {
    pub start: u64,
    pub end: u64,
    /// The allocator's own static data: its words that point at a chunk header inside a
    /// block's last 8 bytes are not the program's pointers.
    pub allocator_static: bool,
}

/// The root ranges, sorted and not overlapping.
pub fn root_ranges(inputs: &RootInputs) -> Vec<Root> {
    let mut ranges: Vec<Root> = Vec::new();
    for mapping in inputs.maps.iter() {
        if !is_scanned(mapping) {
            continue;
        }
        if is_allocator_heap(mapping, inputs.allocator_addresses) {
            // Only the program's regions inside it.
            for &(start, end) in inputs.program_regions {
                let (start, end) = (start.max(mapping.start), end.min(mapping.end));
                if start < end {
                    ranges.push(Root {
                        start,
                        end,
                        allocator_static: false,
                    });
                }
            }
            continue;
        }
        let allocator_static = mapping.is_file() && inputs.allocator_files.contains(&mapping.path);
        // A stack is live from its stack pointer up.
        let start = inputs
            .stack_pointers
            .iter()
            .copied()
            .filter(|sp| (mapping.start..mapping.end).contains(sp))
            .min()
            .map_or(mapping.start, |sp| sp & !7);
        ranges.push(Root {
            start,
            end: mapping.end,
            allocator_static,
        });
    }
    ranges.sort_unstable();
    ranges.dedup();
    let ranges = subtract_blocks(&ranges, inputs.blocks);
    subtract_blocks(&ranges, &merge_overlapping(inputs.freed))
}

/// Sorted `blocks` as stretches that do not overlap: freed blocks can (the allocator merged a
/// freed chunk with its neighbour, handed part of it out and that was freed too).
fn merge_overlapping(blocks: &[LiveBlock]) -> Vec<LiveBlock> {
    let mut merged: Vec<LiveBlock> = Vec::with_capacity(blocks.len());
    for &block in blocks {
        match merged.last_mut() {
            Some(last) if block.addr <= last.addr + last.size => {
                last.size = last.size.max(block.addr + block.size - last.addr);
            }
            _ => merged.push(block),
        }
    }
    merged
}

/// Readable and writable, and not a device (memcheck's rule), nor memprof's own ring.
fn is_scanned(mapping: &Mapping) -> bool {
    let perms = mapping.perms.as_bytes();
    if perms.first() != Some(&b'r') || perms.get(1) != Some(&b'w') {
        return false;
    }
    let path = mapping.path.to_string_lossy();
    if path.starts_with("/dev/") && path != "/dev/zero" {
        return false;
    }
    // The in-process capture ring holds records of every call, block addresses included; the
    // capture library's own memory (its unwind tables) is not the program's either.
    let arena = profiler_common::shared_ring::ARENA_NAME.to_string_lossy();
    !path.starts_with("/memfd:memprof-ring")
        && !path
            .strip_prefix("/memfd:")
            .is_some_and(|name| name.starts_with(&*arena))
}

fn is_allocator_heap(mapping: &Mapping, allocator_addresses: &[u64]) -> bool {
    if mapping.path.as_os_str() == "[heap]" && !allocator_addresses.is_empty() {
        return true;
    }
    let first = allocator_addresses.partition_point(|&addr| addr < mapping.start);
    allocator_addresses
        .get(first)
        .is_some_and(|&addr| addr < mapping.end)
}

/// `ranges` with the bytes of `blocks` cut out.
fn subtract_blocks(ranges: &[Root], blocks: &[LiveBlock]) -> Vec<Root> {
    let mut out = Vec::with_capacity(ranges.len());
    for &root in ranges {
        let Root { start, end, .. } = root;
        let piece = |start, end| Root { start, end, ..root };
        let mut at = start;
        let first = blocks.partition_point(|block| block.addr + block.size <= start);
        for block in &blocks[first..] {
            if block.addr >= end {
                break;
            }
            if block.addr > at {
                out.push(piece(at, block.addr));
            }
            at = at.max(block.addr + block.size);
        }
        if at < end {
            out.push(piece(at, end));
        }
    }
    out
}

/// The mappings as the heuristics see them, sorted by start.
pub fn segments(maps: &ProcessMaps) -> Vec<Segment> {
    maps.iter()
        .map(|mapping| {
            let perms = mapping.perms.as_bytes();
            Segment {
                start: mapping.start,
                end: mapping.end,
                readable: perms.first() == Some(&b'r'),
                executable: perms.get(2) == Some(&b'x'),
                file_backed: mapping.is_file(),
            }
        })
        .collect()
}
