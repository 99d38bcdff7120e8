//! A pool of fixed-size blocks: O(1) alloc and free from chunks taken from the heap, all
//! returned when the pool is dropped.
use core::ptr::{self, NonNull};

use crate::heap;

/// Bytes per chunk the pool takes from the heap (the page path: one mapping each).
const CHUNK: usize = 64 * 1024;
/// The chunk's first bytes link the pool's chunks together.
const CHUNK_HEADER: usize = 16;

pub struct Pool {
    block: usize,
    chunks: *mut u8,
    free: *mut u8,
    carve: usize,
    carve_end: usize,
    live: usize,
}

// SAFETY: the pool owns its chunks; moving it to another thread moves that ownership.
unsafe impl Send for Pool {}

impl Pool {
    /// A pool of blocks of `block_size` bytes (rounded up to 16; at most 64 KiB - 16).
    pub fn new(block_size: usize) -> Option<Pool> {
        let block = block_size.max(1).checked_add(15)? & !15;
        (block <= CHUNK - CHUNK_HEADER).then_some(Pool {
            block,
            chunks: ptr::null_mut(),
            free: ptr::null_mut(),
            carve: 0,
            carve_end: 0,
            live: 0,
        })
    }

    /// The size of every block.
    pub fn block_size(&self) -> usize {
        self.block
    }

    /// Blocks handed out and not freed.
    pub fn live(&self) -> usize {
        self.live
    }

    /// A block of `block_size` bytes, 16-aligned; `None` when memory is exhausted.
    pub fn alloc(&mut self) -> Option<NonNull<u8>> {
        let p = if !self.free.is_null() {
            let p = self.free;
            // SAFETY: free blocks store the next free block in their first word.
            self.free = unsafe { p.cast::<*mut u8>().read() };
            p
        } else {
            if self.carve + self.block > self.carve_end {
                let chunk = heap::malloc(CHUNK);
                let chunk = NonNull::new(chunk)?.as_ptr();
                // SAFETY: the chunk is ours; its header links the previous chunks.
                unsafe { chunk.cast::<*mut u8>().write(self.chunks) };
                self.chunks = chunk;
                self.carve = chunk as usize + CHUNK_HEADER;
                self.carve_end = chunk as usize + CHUNK;
            }
            let p = self.carve as *mut u8;
            self.carve += self.block;
            p
        };
        self.live += 1;
        NonNull::new(p)
    }

    /// Returns a block to the pool.
    ///
    /// # Safety
    /// `p` must come from this pool's `alloc` and not have been freed since.
    pub unsafe fn free(&mut self, p: NonNull<u8>) {
        // SAFETY: the caller hands the block back; it is at least 16 bytes.
        unsafe { p.as_ptr().cast::<*mut u8>().write(self.free) };
        self.free = p.as_ptr();
        self.live -= 1;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let mut chunk = self.chunks;
        while !chunk.is_null() {
            // SAFETY: each chunk's header holds the previous one; all came from the heap.
            unsafe {
                let next = chunk.cast::<*mut u8>().read();
                heap::free(chunk);
                chunk = next;
            }
        }
    }
}
