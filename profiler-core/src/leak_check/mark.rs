//! The classification itself, as memcheck does it (`mc_leakcheck.c`): mark from the roots,
//! then gather what is left into cliques.
//!
//! 1. Every aligned word of the roots and every register value that points into a block
//!    marks it: at its start (or through a heuristic's interior pointer), from definite
//!    memory, *reachable*; otherwise, if unmarked, *possible*. A block whose mark changes is
//!    scanned in turn, its words definite when it is reachable. Marks only rise, so the
//!    order blocks are scanned in does not change the outcome.
//! 2. Each block still unmarked, in address order, leads a clique: every unmarked block it
//!    leads to (by any pointer into it) is *indirectly lost*; the leaders are *definitely
//!    lost*.
//!
//! Blocks are read in batches of up to 1024 ranges and 512 KiB, so a
//! heap of small blocks costs one read per thousand blocks, not one per block; the words the
//! heuristics need for a batch are read ahead of it the same way (`Words`).

use super::words::Words;
use super::{LiveBlock, Memory, Reachability, Segment, roots::Root};

/// Most ranges read at once (`process_vm_readv` takes at most 1024 remote iovecs).
const BATCH_RANGES: usize = 1024;
/// Most bytes read at once: large enough to amortise the call, small enough that the words
/// are still in the cache when they are scanned.
const BATCH_BYTES: usize = 512 << 10;
const WORD: u64 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Unreached,
    Possible,
    Reachable,
    Indirect,
}

/// Every block's class (in the order of the sorted blocks given) and what was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub classes: Vec<Reachability>,
    pub bytes_scanned: u64,
    pub bytes_unreadable: u64,
}

/// Classifies `blocks` (sorted by address, not overlapping). `roots` are the ranges of root
/// memory, `registers` the register values of the stopped threads, and `segments` the
/// target's mappings (for the vtable heuristic).
pub fn classify(
    blocks: &[LiveBlock],
    roots: &[Root],
    registers: &[u64],
    segments: &[Segment],
    memory: &mut dyn Memory,
) -> Classification {
    debug_assert!(blocks.windows(2).all(|pair| pair[0].addr < pair[1].addr));
    let mut marker = Marker {
        blocks,
        segments,
        marks: vec![Mark::Unreached; blocks.len()],
        pending: vec![false; blocks.len()],
        stack: Vec::new(),
        low: blocks.first().map_or(u64::MAX, |block| block.addr),
        high: blocks
            .last()
            .map_or(0, |block| block.addr + block.size.max(1)),
        buffer: Vec::new(),
        words: Words::default(),
        wanted: Vec::new(),
        bytes_scanned: 0,
        bytes_unreadable: 0,
    };
    if !blocks.is_empty() {
        marker.scan_roots(roots, memory);
        for &value in registers {
            marker.reach(value, Origin::Definite, None, memory);
        }
        marker.process(None, memory);
        for leader in 0..blocks.len() {
            if marker.marks[leader] == Mark::Unreached {
                marker.push(leader);
                marker.process(Some(leader), memory);
            }
        }
    }
    Classification {
        classes: marker
            .marks
            .iter()
            .map(|mark| match mark {
                Mark::Reachable => Reachability::StillReachable,
                Mark::Possible => Reachability::PossiblyLost,
                Mark::Indirect => Reachability::IndirectlyLost,
                Mark::Unreached => Reachability::DefinitelyLost,
            })
            .collect(),
        bytes_scanned: marker.bytes_scanned,
        bytes_unreadable: marker.bytes_unreadable,
    }
}

struct Marker<'a> {
    blocks: &'a [LiveBlock],
    segments: &'a [Segment],
    marks: Vec<Mark>,
    /// On the mark stack (memcheck's `pending`): pushed once until popped.
    pending: Vec<bool>,
    stack: Vec<usize>,
    /// No block starts below `low` or ends at or above `high`: most words are rejected by
    /// these two comparisons.
    low: u64,
    high: u64,
    buffer: Vec<u8>,
    words: Words,
    /// The words a batch's heuristics will need, gathered before they are read.
    wanted: Vec<u64>,
    bytes_scanned: u64,
    bytes_unreadable: u64,
}

/// What the words of scanned memory are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A root or a reachable block: a pointer to a block's start makes it reachable.
    Definite,
    /// A possibly lost block: what it points to is possibly lost at best.
    Possible,
    /// The allocator's static data (see [`Root::allocator_static`]).
    AllocatorStatic,
}

/// One stretch of memory to scan, and what its words are.
#[derive(Clone, Copy)]
struct Stretch {
    start: u64,
    len: usize,
    origin: Origin,
}

impl Marker<'_> {
    /// The block `value` points into: at its start or inside it (a zero-sized block only at
    /// its start).
    fn block_at(&self, value: u64) -> Option<usize> {
        if value < self.low || value >= self.high {
            return None;
        }
        let index = self.blocks.partition_point(|block| block.addr <= value) - 1;
        let block = self.blocks[index];
        (value < block.addr + block.size || value == block.addr).then_some(index)
    }

    fn push(&mut self, index: usize) {
        if !self.pending[index] {
            self.pending[index] = true;
            self.stack.push(index);
        }
    }

    /// A word found in scanned memory of `origin`; `clique` is the leader being gathered, in
    /// the second phase.
    fn reach(
        &mut self,
        value: u64,
        origin: Origin,
        clique: Option<usize>,
        memory: &mut dyn Memory,
    ) {
        let Some(index) = self.block_at(value) else {
            return;
        };
        let block = self.blocks[index];
        // The allocator's pointer to the chunk header that a block's last bytes overlap.
        if origin == Origin::AllocatorStatic
            && value.is_multiple_of(16)
            && value != block.addr
            && value + WORD >= block.addr + block.size
        {
            return;
        }
        let definite = origin != Origin::Possible;
        if let Some(leader) = clique {
            if self.marks[index] == Mark::Unreached && index != leader {
                self.marks[index] = Mark::Indirect;
                self.push(index);
            }
            return;
        }
        let mark = self.marks[index];
        if mark == Mark::Reachable {
            return;
        }
        let at_start =
            value == block.addr || heuristic(value, block, self.segments, &mut self.words, memory);
        if at_start && definite {
            self.marks[index] = Mark::Reachable;
            self.push(index);
        } else if mark == Mark::Unreached {
            self.marks[index] = Mark::Possible;
            self.push(index);
        }
    }

    /// Scans the root ranges, in batches.
    fn scan_roots(&mut self, roots: &[Root], memory: &mut dyn Memory) {
        let stretches: Vec<Stretch> = roots
            .iter()
            .filter(|root| root.end > root.start)
            .map(|root| Stretch {
                start: root.start,
                len: (root.end - root.start) as usize,
                origin: if root.allocator_static {
                    Origin::AllocatorStatic
                } else {
                    Origin::Definite
                },
            })
            .collect();
        self.scan(&stretches, None, memory);
    }

    /// Scans the blocks on the mark stack until it is empty.
    fn process(&mut self, clique: Option<usize>, memory: &mut dyn Memory) {
        let mut batch = Vec::new();
        while !self.stack.is_empty() {
            batch.clear();
            let mut bytes = 0;
            while let Some(&index) = self.stack.last() {
                let size = self.blocks[index].size as usize;
                if !batch.is_empty() && (batch.len() == BATCH_RANGES || bytes + size > BATCH_BYTES)
                {
                    break;
                }
                self.stack.pop();
                self.pending[index] = false;
                let block = self.blocks[index];
                batch.push(Stretch {
                    start: block.addr,
                    len: block.size as usize,
                    origin: match self.marks[index] {
                        Mark::Possible => Origin::Possible,
                        _ => Origin::Definite,
                    },
                });
                bytes += size;
            }
            self.scan(&batch, clique, memory);
        }
    }

    /// Reads `stretches` (in pieces no larger than a batch) and marks what their words
    /// point to.
    fn scan(&mut self, stretches: &[Stretch], clique: Option<usize>, memory: &mut dyn Memory) {
        let mut pieces: Vec<Stretch> = Vec::new();
        let mut ranges: Vec<(u64, usize)> = Vec::new();
        let mut bytes = 0;
        for stretch in stretches {
            // Words are aligned: skip a misaligned head and tail, as memcheck does.
            let start = stretch.start.next_multiple_of(WORD);
            let end = (stretch.start + stretch.len as u64) & !(WORD - 1);
            let mut at = start;
            while at < end {
                let len = (end - at).min(BATCH_BYTES as u64) as usize;
                if !ranges.is_empty() && (ranges.len() == BATCH_RANGES || bytes + len > BATCH_BYTES)
                {
                    self.scan_batch(&pieces, &ranges, bytes, clique, memory);
                    pieces.clear();
                    ranges.clear();
                    bytes = 0;
                }
                pieces.push(Stretch {
                    start: at,
                    len,
                    origin: stretch.origin,
                });
                ranges.push((at, len));
                bytes += len;
                at += len as u64;
            }
        }
        if !ranges.is_empty() {
            self.scan_batch(&pieces, &ranges, bytes, clique, memory);
        }
    }

    fn scan_batch(
        &mut self,
        pieces: &[Stretch],
        ranges: &[(u64, usize)],
        bytes: usize,
        clique: Option<usize>,
        memory: &mut dyn Memory,
    ) {
        let mut buffer = std::mem::take(&mut self.buffer);
        // Reused, not cleared: `read` writes every byte (zeros where it cannot read).
        if buffer.len() < bytes {
            buffer.resize(bytes, 0);
        }
        self.bytes_unreadable += memory.read(ranges, &mut buffer[..bytes]);
        self.bytes_scanned += bytes as u64;
        if clique.is_none() {
            self.read_ahead(pieces, &buffer[..bytes], memory);
        }
        for (origin, value) in words_of(pieces, &buffer[..bytes]) {
            // The cheap filter first: most words are small numbers or point elsewhere.
            if value.wrapping_sub(self.low) < self.high - self.low {
                self.reach(value, origin, clique, memory);
            }
        }
        self.buffer = buffer;
        self.words.forget();
    }

    /// Reads in one go the words [`heuristic`] may look at for the interior pointers of
    /// `bytes` (the batch just read) into blocks not yet reachable.
    fn read_ahead(&mut self, pieces: &[Stretch], bytes: &[u8], memory: &mut dyn Memory) {
        let mut wanted = std::mem::take(&mut self.wanted);
        wanted.clear();
        for (_, value) in words_of(pieces, bytes) {
            if value.wrapping_sub(self.low) >= self.high - self.low {
                continue;
            }
            let Some(index) = self.block_at(value) else {
                continue;
            };
            let block = self.blocks[index];
            if value == block.addr || self.marks[index] == Mark::Reachable {
                continue;
            }
            // The block's length, capacity or count, or its vtable pointer.
            wanted.push(block.addr);
            if value - block.addr == 3 * WORD {
                wanted.push(block.addr + WORD);
            }
            if value.is_multiple_of(WORD) {
                wanted.push(value);
            }
        }
        self.words.prefetch(&mut wanted, memory);
        self.wanted = wanted;
    }
}

/// Every word of a read batch (`bytes`, the `pieces` back to back) with what its memory is.
fn words_of<'a>(
    pieces: &'a [Stretch],
    bytes: &'a [u8],
) -> impl Iterator<Item = (Origin, u64)> + 'a {
    let mut offset = 0;
    pieces.iter().flat_map(move |piece| {
        let words = &bytes[offset..offset + piece.len];
        offset += piece.len;
        words.chunks_exact(WORD as usize).map(move |word| {
            let value = u64::from_ne_bytes(word.try_into().expect("8-byte chunk"));
            (piece.origin, value)
        })
    })
}

/// memcheck's interior-pointer heuristics (all on by default there): an interior pointer
/// `value` into `block` that one of them recognises counts as a pointer to its start.
/// - stdstring: the character array of a pre-C++11 `std::string` (length, capacity,
///   refcount, then the characters and a NUL).
/// - length64: 8 bytes in, after a 64-bit length of the rest (sqlite's allocations).
/// - newarray: 8 bytes in, after the element count `new[]` stores for destructors.
/// - multipleinheritance: a pointer to a base-class sub-object: both it and the block's
///   first word hold vtable pointers.
fn heuristic(
    value: u64,
    block: LiveBlock,
    segments: &[Segment],
    words: &mut Words,
    memory: &mut dyn Memory,
) -> bool {
    let offset = value - block.addr;
    if offset == 3 * WORD
        && let Some(capacity) = words.get(block.addr + WORD, memory)
        && (3 * WORD)
            .checked_add(capacity)
            .and_then(|n| n.checked_add(1))
            == Some(block.size)
        && words
            .get(block.addr, memory)
            .is_some_and(|length| length <= capacity)
    {
        return true;
    }
    if offset == WORD
        && let Some(first) = words.get(block.addr, memory)
        && first > 0
    {
        let rest = block.size - WORD;
        // length64, then newarray (which length64's blocks also satisfy).
        if rest == first || rest.is_multiple_of(first) {
            return true;
        }
    }
    if value.is_multiple_of(WORD)
        && let Some(inner) = words.get(value, memory)
        && inner.is_multiple_of(WORD)
        && inner >= 4096
        && let Some(first) = words.get(block.addr, memory)
        && first.is_multiple_of(WORD)
        && first >= 4096
    {
        return words.is_vtable(inner, |words| is_vtable(inner, segments, words, memory))
            && words.is_vtable(first, |words| is_vtable(first, segments, words, memory));
    }
    false
}

/// memcheck's test: `addr` is in a readable file mapping and, of its next 20 words, two
/// non-null ones point into executable file mappings before any points elsewhere.
fn is_vtable(addr: u64, segments: &[Segment], words: &mut Words, memory: &mut dyn Memory) -> bool {
    const MAX_CHECK: u64 = 20;
    let segment_of = |addr: u64| {
        let index = segments.partition_point(|segment| segment.start <= addr);
        index
            .checked_sub(1)
            .map(|index| segments[index])
            .filter(|segment| addr < segment.end)
    };
    let Some(table) = segment_of(addr).filter(|s| s.file_backed && s.readable) else {
        return false;
    };
    let last = (addr + MAX_CHECK * WORD).min(table.end - WORD);
    if last < addr {
        return false;
    }
    // The entries in one read; word by word if some cannot be read (the first such one
    // ends the test).
    let count = (last - addr) / WORD + 1;
    let entries = words.run(addr, count, memory);
    let mut functions = 0;
    for index in 0..count {
        let entry = match &entries {
            Some(entries) => entries[index as usize],
            None => match words.get(addr + index * WORD, memory) {
                Some(entry) => entry,
                None => return false,
            },
        };
        if entry == 0 {
            continue;
        }
        if !segment_of(entry).is_some_and(|s| s.file_backed && s.executable) {
            return false;
        }
        functions += 1;
        if functions == 2 {
            return true;
        }
    }
    false
}
