//! Large blocks: requests above [`crate::medium::MAX`] (or with an alignment above a page, or
//! when the medium area is full) get their own mapping, page-rounded, unmapped on free. A
//! table of live mappings (open addressing, itself mmap'd) gives their sizes and tells a double
//! or foreign free of a large block from a valid one, without a header page in front of each
//! block.
use core::ptr;

use crate::{classes::PAGE, lock::SpinLock, os};

struct Table {
    /// (address, length) pairs; address 0 is empty, TOMBSTONE a removed entry.
    slots: *mut (usize, usize),
    capacity: usize,
    /// Entries plus tombstones.
    used: usize,
}

const TOMBSTONE: usize = 1;
const INITIAL_CAPACITY: usize = 1024;

pub static LOCK: SpinLock = SpinLock::new();
static mut TABLE: Table = Table {
    slots: ptr::null_mut(),
    capacity: 0,
    used: 0,
};

fn table() -> &'static mut Table {
    // SAFETY: only called under LOCK.
    unsafe { &mut *ptr::addr_of_mut!(TABLE) }
}

#[inline]
fn hash(addr: usize) -> usize {
    (addr >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Table {
    fn slot(&self, i: usize) -> (usize, usize) {
        // SAFETY: i < capacity, inside the table's mapping.
        unsafe { *self.slots.add(i) }
    }

    fn set(&mut self, i: usize, entry: (usize, usize)) {
        // SAFETY: i < capacity, inside the table's mapping.
        unsafe { *self.slots.add(i) = entry }
    }

    fn find(&self, addr: usize) -> Option<usize> {
        if self.capacity == 0 {
            return None;
        }
        let mask = self.capacity - 1;
        let mut i = hash(addr) & mask;
        loop {
            match self.slot(i).0 {
                0 => return None,
                a if a == addr => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn insert(&mut self, addr: usize, len: usize) -> bool {
        if (self.used + 1) * 2 > self.capacity && !self.grow() {
            return false;
        }
        let mask = self.capacity - 1;
        let mut i = hash(addr) & mask;
        while self.slot(i).0 > TOMBSTONE {
            i = (i + 1) & mask;
        }
        if self.slot(i).0 == 0 {
            self.used += 1;
        }
        self.set(i, (addr, len));
        true
    }

    /// Rehashes into a table twice as large (or as large, when tombstones fill it).
    fn grow(&mut self) -> bool {
        let live = (0..self.capacity)
            .filter(|&i| self.slot(i).0 > TOMBSTONE)
            .count();
        let mut capacity = INITIAL_CAPACITY.max(self.capacity);
        while (live + 1) * 4 > capacity {
            capacity *= 2;
        }
        let bytes = capacity * core::mem::size_of::<(usize, usize)>();
        let slots = os::map(bytes).cast::<(usize, usize)>();
        if slots.is_null() {
            return false;
        }
        let old = core::mem::replace(
            self,
            Table {
                slots,
                capacity,
                used: 0,
            },
        );
        for i in 0..old.capacity {
            let (addr, len) = old.slot(i);
            if addr > TOMBSTONE {
                self.insert(addr, len);
            }
        }
        if old.capacity > 0 {
            // SAFETY: the old table is no longer referenced.
            unsafe {
                os::unmap(
                    old.slots.cast(),
                    old.capacity * core::mem::size_of::<(usize, usize)>(),
                )
            };
        }
        true
    }
}

/// Maps `len` bytes (a multiple of PAGE, zeroed as every fresh mapping) aligned to `align` (a
/// power of two); null on failure.
pub fn alloc(len: usize, align: usize) -> *mut u8 {
    let p = if align <= PAGE {
        os::map(len)
    } else {
        let Some(padded) = len.checked_add(align) else {
            return ptr::null_mut();
        };
        let raw = os::map(padded);
        if raw.is_null() {
            return raw;
        }
        // Keep the aligned part, unmap the slack on both sides.
        let start = (raw as usize + align - 1) & !(align - 1);
        let head = start - raw as usize;
        let tail = padded - head - len;
        // SAFETY: both pieces are parts of the fresh mapping nobody uses.
        unsafe {
            if head > 0 {
                os::unmap(raw, head);
            }
            if tail > 0 {
                os::unmap((start + len) as *mut u8, tail);
            }
        }
        start as *mut u8
    };
    if p.is_null() {
        return p;
    }
    if !LOCK.with(|| table().insert(p as usize, len)) {
        // SAFETY: just mapped, never handed out.
        unsafe { os::unmap(p, len) };
        return ptr::null_mut();
    }
    p
}

/// The length of the large block at `p`, if there is one.
pub fn size(p: *const u8) -> Option<usize> {
    LOCK.with(|| {
        let table = table();
        table.find(p as usize).map(|i| table.slot(i).1)
    })
}

/// Unmaps the large block at `p` and returns its length; `None` when `p` is not one.
pub fn free(p: *mut u8) -> Option<usize> {
    let len = LOCK.with(|| {
        let table = table();
        let i = table.find(p as usize)?;
        let len = table.slot(i).1;
        table.set(i, (TOMBSTONE, 0));
        Some(len)
    })?;
    // SAFETY: the block was ours and is no longer in the table.
    unsafe { os::unmap(p, len) };
    Some(len)
}

/// Resizes the large block at `p` (of `old` bytes) to `new` bytes (a multiple of PAGE), moving
/// it if needed; null on failure, when the old block stays.
pub fn resize(p: *mut u8, old: usize, new: usize) -> *mut u8 {
    LOCK.with(|| {
        let table = table();
        // Make room first, so that recording the new address cannot fail after the move.
        if (table.used + 1) * 2 > table.capacity && !table.grow() {
            return ptr::null_mut();
        }
        let Some(i) = table.find(p as usize) else {
            return ptr::null_mut();
        };
        // SAFETY: the table says [p, p + old) is one of our mappings.
        let q = unsafe { os::remap(p, old, new) };
        if q.is_null() {
            return q;
        }
        table.set(i, (TOMBSTONE, 0));
        // Room was made above, so this insert cannot fail.
        table.insert(q as usize, new);
        q
    })
}
