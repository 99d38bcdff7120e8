//! The explicit allocators: Pool, Arena, Bump.
use std::{alloc::Layout, collections::HashSet};

use memprof_alloc::{Arena, Bump, Pool};

#[test]
fn pool_reuses_freed_blocks_first() {
    let mut pool = Pool::new(24).unwrap();
    assert_eq!(pool.block_size(), 32);
    let blocks: Vec<_> = (0..5000).map(|_| pool.alloc().unwrap()).collect();
    let distinct: HashSet<_> = blocks.iter().map(|p| p.as_ptr() as usize).collect();
    assert_eq!(distinct.len(), 5000);
    assert!(distinct.iter().all(|p| p % 16 == 0));
    assert_eq!(pool.live(), 5000);
    unsafe {
        pool.free(blocks[10]);
        pool.free(blocks[20]);
    }
    assert_eq!(pool.live(), 4998);
    // Last freed, first reused.
    assert_eq!(pool.alloc(), Some(blocks[20]));
    assert_eq!(pool.alloc(), Some(blocks[10]));
    assert!(Pool::new(1 << 20).is_none());
}

#[test]
fn arena_allocates_aligned_and_reset_reuses_memory() {
    let mut arena = Arena::new();
    let first = arena
        .alloc(Layout::from_size_align(10, 8).unwrap())
        .unwrap();
    let second = arena
        .alloc(Layout::from_size_align(8, 64).unwrap())
        .unwrap();
    assert_eq!(second.as_ptr() as usize % 64, 0);
    assert!(second.as_ptr() as usize >= first.as_ptr() as usize + 10);
    // Bigger than a chunk: gets its own.
    let big = arena
        .alloc(Layout::from_size_align(200_000, 16).unwrap())
        .unwrap();
    unsafe { std::ptr::write_bytes(big.as_ptr(), 1, 200_000) };
    let value = arena.alloc_value(0xDEAD_BEEF_u64).unwrap();
    assert_eq!(*value, 0xDEAD_BEEF);
    assert_eq!(arena.allocated(), 10 + 8 + 200_000 + 8);
    arena.reset();
    assert_eq!(arena.allocated(), 0);
    // After a reset the newest chunk is reused from its start.
    let again = arena
        .alloc(Layout::from_size_align(16, 16).unwrap())
        .unwrap();
    assert_eq!(again.as_ptr() as usize, big.as_ptr() as usize);
}

#[test]
fn bump_fills_up_and_resets() {
    let mut bump = Bump::with_capacity(1024).unwrap();
    let a = bump
        .alloc(Layout::from_size_align(100, 1).unwrap())
        .unwrap();
    let b = bump
        .alloc(Layout::from_size_align(100, 32).unwrap())
        .unwrap();
    assert_eq!(b.as_ptr() as usize % 32, 0);
    assert!(b.as_ptr() > a.as_ptr());
    assert_eq!(
        bump.used(),
        (b.as_ptr() as usize - a.as_ptr() as usize) + 100
    );
    assert!(
        bump.alloc(Layout::from_size_align(1000, 1).unwrap())
            .is_none()
    );
    bump.reset();
    assert_eq!(bump.used(), 0);
    assert_eq!(
        bump.alloc(Layout::from_size_align(1000, 1).unwrap()),
        Some(a)
    );
}
