//! A slab: [`HEADER`] bytes of metadata, then blocks of one class. The header holds the block
//! size and one state byte per block (1 = allocated), which is what makes a double free
//! detectable: a block's byte is cleared by exactly one free.
//!
//! The header is half a page and a slab holds at most [`MAX_BLOCKS`] blocks (small classes
//! leave the rest of their slab's address space unused, never resident), so that a class's
//! first blocks share the header's page: a class in use costs one page, not two, before it
//! grows.
//!
//! A block's index is found by a multiply and a shift (the header keeps the reciprocal of the
//! block size), not a division: free and malloc both need it on their fast paths.
use core::sync::atomic::{AtomicU8, Ordering};

use crate::{
    classes::{CLASS_COUNT, CLASSES, in_range},
    region::{self, SLAB},
};

pub const HEADER: usize = 2048;
/// The fixed fields' part of the header: a cache line of its own, read by every free, which
/// the state bytes' stores (from whichever thread) must not keep invalidating.
const FIXED: usize = 64;
/// State bytes that fit in the header after its fixed fields.
const MAX_BLOCKS: usize = HEADER - FIXED;
/// Blocks whose state bytes share one cache line: the central lists hand out fresh blocks in
/// whole lines where they can, so that two threads do not write the same line.
pub const STATE_LINE: usize = 64;
/// `offset * magic >> SHIFT == offset / block` for every offset inside a slab (tested).
const SHIFT: u32 = 40;

#[repr(C)]
pub struct Slab {
    pub class: u32,
    pub block: u32,
    pub blocks: u32,
    /// Blocks handed out of this slab so far (carved); changed under the class's lock.
    pub carved: u32,
    /// `floor(2^SHIFT / block) + 1`; 0 in a released slab, so that nothing locates in it.
    magic: u64,
    /// Scratch count of this slab's blocks on the central list while it is trimmed (under the
    /// class's lock), and the link of released slabs (under the region's lock).
    pub scratch: usize,
    _fixed_end: [u8; FIXED - 32],
    state: [AtomicU8; MAX_BLOCKS],
}

const _: () = assert!(core::mem::size_of::<Slab>() <= HEADER);
const _: () = assert!(core::mem::offset_of!(Slab, state) == FIXED);

/// Blocks in a slab of `block`-byte blocks.
pub const fn block_count(block: usize) -> usize {
    let fit = (SLAB - HEADER) / block;
    if fit < MAX_BLOCKS { fit } else { MAX_BLOCKS }
}

/// The reciprocal used for blocks of `block` bytes.
pub const fn magic(block: usize) -> u64 {
    (1u64 << SHIFT) / block as u64 + 1
}

/// `offset / block` through the reciprocal (exact for offsets inside a slab).
#[inline]
pub const fn divide(offset: usize, magic: u64) -> usize {
    ((offset as u64 * magic) >> SHIFT) as usize
}

impl Slab {
    /// Writes the header of a fresh slab (its state bytes are zero).
    ///
    /// # Safety
    /// `slab` must be a committed slab nobody else uses yet.
    pub unsafe fn init(slab: *mut u8, class: usize, block: usize) {
        let header = slab.cast::<Slab>();
        // SAFETY: the caller hands us the slab; its state bytes are already zero.
        unsafe {
            (*header).class = class as u32;
            (*header).block = block as u32;
            (*header).blocks = block_count(block) as u32;
            (*header).carved = 0;
            (*header).magic = magic(block);
            (*header).scratch = 0;
        }
    }

    /// The first block of a slab and one past its last.
    pub fn blocks_of(slab: *mut u8, block: usize) -> (usize, usize) {
        let first = slab as usize + HEADER;
        (first, first + block_count(block) * block)
    }

    /// The slab holding block `p`.
    ///
    /// # Safety
    /// `p` must be a block (free or not) of a live slab.
    #[inline]
    pub unsafe fn of(p: usize) -> *mut Slab {
        region::slab_of(p as *const u8) as *mut Slab
    }
}

/// Where a pointer into the region lands.
pub struct Located {
    pub slab: &'static Slab,
    pub index: usize,
    /// Start of the block holding the pointer (differs for over-aligned allocations).
    pub start: usize,
}

/// The slab block holding `p` (which must satisfy `region::contains`), or `None` when `p` is
/// in a header or in a released slab.
#[inline]
pub fn locate(p: *const u8) -> Option<Located> {
    let base = region::slab_of(p);
    // SAFETY: contains(p) means the slab is committed and its header initialised.
    let slab = unsafe { &*(base as *const Slab) };
    let offset = (p as usize).checked_sub(base + HEADER)?;
    let index = divide(offset, slab.magic);
    if index >= slab.blocks as usize {
        return None;
    }
    Some(Located {
        slab,
        index,
        start: base + HEADER + index * slab.block as usize,
    })
}

impl Slab {
    /// Marks a block handed out.
    #[inline]
    pub fn mark_allocated(&self, index: usize) {
        self.state[index.min(MAX_BLOCKS - 1)].store(1, Ordering::Relaxed);
    }

    /// Marks a block free; false when it already was (a double free). A plain load and store,
    /// not a locked exchange: only frees of the same block can race here, and two concurrent
    /// frees of one block are a bug this cannot make worse than a sequential double free.
    #[inline]
    pub fn mark_free(&self, index: usize) -> bool {
        // Indices are below MAX_BLOCKS; the min only spares a panic path (see `in_range`).
        let state = &self.state[index.min(MAX_BLOCKS - 1)];
        if state.load(Ordering::Relaxed) != 1 {
            return false;
        }
        state.store(0, Ordering::Relaxed);
        true
    }
}

/// Reciprocals of every class's block size, so that the allocation path needs no header read.
const MAGICS: [u64; CLASS_COUNT] = {
    let mut table = [0; CLASS_COUNT];
    let mut i = 0;
    while i < CLASS_COUNT {
        table[i] = magic(CLASSES[i]);
        i += 1;
    }
    table
};

/// The slab block of `class` starting exactly at `p`: its slab and index.
///
/// # Safety
/// `p` must be a block of `class` handed out by [`crate::central`].
#[inline]
pub unsafe fn of_block(p: *mut u8, class: usize) -> (&'static Slab, usize) {
    let base = region::slab_of(p);
    // SAFETY: blocks only come from initialised slabs.
    let slab = unsafe { &*(base as *const Slab) };
    let index = divide(p as usize - base - HEADER, MAGICS[in_range(class)]);
    (slab, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fit_the_slab_and_the_header_state_bytes() {
        assert_eq!(core::mem::size_of::<Slab>(), HEADER);
        assert_eq!(block_count(16), 1984);
        assert_eq!(block_count(128), 1984);
        assert_eq!(block_count(160), 1625);
        assert_eq!(block_count(32768), 7);
        for &block in CLASSES.iter() {
            assert!(HEADER + block_count(block) * block <= SLAB, "block {block}");
        }
    }

    #[test]
    fn reciprocal_divides_exactly_across_a_slab() {
        for &block in CLASSES.iter() {
            let m = magic(block);
            for offset in 0..SLAB - HEADER {
                assert_eq!(
                    divide(offset, m),
                    offset / block,
                    "block {block} offset {offset}"
                );
            }
        }
    }
}
