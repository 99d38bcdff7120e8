//! An arena: allocation by bumping a pointer through chunks taken from the heap, no individual
//! frees, and `reset` to reuse the memory for a new generation of objects.
use core::{
    alloc::Layout,
    ptr::{self, NonNull},
};

use crate::heap;

const MIN_CHUNK: usize = 64 * 1024;
/// The chunk's first bytes: the previous chunk and this chunk's size.
const CHUNK_HEADER: usize = 16;

pub struct Arena {
    /// The newest chunk; older ones are linked from its header.
    chunks: *mut u8,
    cursor: usize,
    end: usize,
    allocated: usize,
}

// SAFETY: the arena owns its chunks.
unsafe impl Send for Arena {}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

impl Arena {
    pub const fn new() -> Arena {
        Arena {
            chunks: ptr::null_mut(),
            cursor: 0,
            end: 0,
            allocated: 0,
        }
    }

    /// Bytes handed out since creation or the last reset.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// Memory for `layout`, valid until the next `reset` or the drop; `None` when memory is
    /// exhausted.
    pub fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let start = match self.fit(layout) {
            Some(start) => start,
            None => {
                self.grow(layout)?;
                self.fit(layout)?
            }
        };
        self.cursor = start + layout.size();
        self.allocated += layout.size();
        NonNull::new(start as *mut u8)
    }

    /// Moves `value` into the arena.
    pub fn alloc_value<T: Copy>(&mut self, value: T) -> Option<&mut T> {
        let p = self.alloc(Layout::new::<T>())?.cast::<T>();
        // SAFETY: fresh, aligned memory for one T that lives as long as this borrow.
        unsafe {
            p.as_ptr().write(value);
            Some(&mut *p.as_ptr())
        }
    }

    fn fit(&self, layout: Layout) -> Option<usize> {
        if self.chunks.is_null() {
            return None;
        }
        let start = self.cursor.checked_add(layout.align() - 1)? & !(layout.align() - 1);
        (start.checked_add(layout.size())? <= self.end).then_some(start)
    }

    fn grow(&mut self, layout: Layout) -> Option<()> {
        let need = layout
            .size()
            .checked_add(layout.align())?
            .checked_add(CHUNK_HEADER)?;
        let size = need.max(MIN_CHUNK);
        let chunk = NonNull::new(heap::malloc(size))?.as_ptr();
        // SAFETY: the chunk is ours; its header records the previous chunk and its size.
        unsafe {
            chunk.cast::<*mut u8>().write(self.chunks);
            chunk.add(8).cast::<usize>().write(size);
        }
        self.chunks = chunk;
        self.cursor = chunk as usize + CHUNK_HEADER;
        self.end = chunk as usize + size;
        Some(())
    }

    /// Forgets every allocation: keeps the newest chunk for reuse and frees the others.
    pub fn reset(&mut self) {
        if self.chunks.is_null() {
            return;
        }
        // SAFETY: the chunk list only holds chunks of ours.
        unsafe {
            let older = self.chunks.cast::<*mut u8>().read();
            free_chain(older);
            self.chunks.cast::<*mut u8>().write(ptr::null_mut());
            let size = self.chunks.add(8).cast::<usize>().read();
            self.cursor = self.chunks as usize + CHUNK_HEADER;
            self.end = self.chunks as usize + size;
        }
        self.allocated = 0;
    }
}

/// # Safety
/// `chunk` starts a chain of arena chunks nobody uses any more.
unsafe fn free_chain(mut chunk: *mut u8) {
    while !chunk.is_null() {
        // SAFETY: per the caller.
        unsafe {
            let next = chunk.cast::<*mut u8>().read();
            heap::free(chunk);
            chunk = next;
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the arena is going away with everything allocated in it.
        unsafe { free_chain(self.chunks) };
    }
}
