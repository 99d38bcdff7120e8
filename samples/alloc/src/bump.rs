//! A bump allocator over one fixed buffer: the cheapest allocation there is, no individual
//! frees, no growth (it says `None` when full), `reset` to start over.
use core::{alloc::Layout, ptr::NonNull};

use crate::heap;

pub struct Bump {
    base: NonNull<u8>,
    capacity: usize,
    used: usize,
}

// SAFETY: the bump allocator owns its buffer.
unsafe impl Send for Bump {}

impl Bump {
    /// A bump allocator over `capacity` bytes (16-aligned) from the heap.
    pub fn with_capacity(capacity: usize) -> Option<Bump> {
        let base = NonNull::new(heap::malloc(capacity))?;
        Some(Bump {
            base,
            capacity,
            used: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes used, alignment padding included.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Memory for `layout` until the next `reset` or the drop; `None` when it does not fit.
    pub fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let base = self.base.as_ptr() as usize;
        let start = (base + self.used).checked_add(layout.align() - 1)? & !(layout.align() - 1);
        let end = start.checked_add(layout.size())?;
        if end > base + self.capacity {
            return None;
        }
        self.used = end - base;
        NonNull::new(start as *mut u8)
    }

    /// Forgets every allocation.
    pub fn reset(&mut self) {
        self.used = 0;
    }
}

impl Drop for Bump {
    fn drop(&mut self) {
        // SAFETY: the buffer came from the heap and nothing uses it any more.
        unsafe { heap::free(self.base.as_ptr()) };
    }
}
