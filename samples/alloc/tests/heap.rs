//! The heap's entry points, called directly (this binary's own allocator stays the system's,
//! so only what the tests do reaches memprof-alloc).
use std::collections::HashSet;

use memprof_alloc::{CLASSES, heap, size_class, stats};

#[test]
fn usable_size_is_the_class() {
    for size in [0, 1, 16, 17, 100, 128, 129, 1000, 4096, 20000, 32768] {
        let p = heap::malloc(size);
        assert!(!p.is_null());
        assert_eq!(
            heap::usable_size(p),
            size_class(size).unwrap(),
            "size {size}"
        );
        assert_eq!(p as usize % 16, 0);
        unsafe { heap::free(p) };
    }
    for size in [32769, 40000, 1 << 20] {
        let p = heap::malloc(size);
        assert_eq!(
            heap::usable_size(p),
            size.next_multiple_of(4096),
            "size {size}"
        );
        assert_eq!(p as usize % 4096, 0);
        unsafe { heap::free(p) };
    }
}

#[test]
fn malloc_zero_returns_unique_blocks() {
    let blocks: Vec<_> = (0..100).map(|_| heap::malloc(0)).collect();
    let unique: HashSet<_> = blocks.iter().collect();
    assert_eq!(unique.len(), 100);
    for p in blocks {
        assert_eq!(heap::usable_size(p), 16);
        unsafe { heap::free(p) };
    }
}

#[test]
fn every_class_is_writable_to_its_end() {
    for &class in CLASSES.iter() {
        let p = heap::malloc(class);
        unsafe {
            std::ptr::write_bytes(p, 0xAB, class);
            assert_eq!(*p.add(class - 1), 0xAB);
            heap::free(p);
        }
    }
}

#[test]
fn every_power_of_two_alignment_up_to_64k() {
    for shift in 0..=16 {
        let align = 1usize << shift;
        for size in [1, 100, 5000, 40000] {
            let p = heap::aligned(align, size);
            assert!(!p.is_null(), "align {align} size {size}");
            assert_eq!(p as usize % align, 0, "align {align} size {size}");
            assert!(heap::usable_size(p) >= size, "align {align} size {size}");
            unsafe {
                std::ptr::write_bytes(p, 1, size);
                heap::free(p);
            }
        }
    }
}

#[test]
fn realloc_preserves_contents_growing_and_shrinking() {
    let mut p = heap::malloc(10);
    let pattern = |i: usize| (i * 7 + 3) as u8;
    unsafe {
        for i in 0..10 {
            *p.add(i) = pattern(i);
        }
        let mut len = 10;
        for new in [12, 100, 3000, 40000, 200_000, 50_000, 600, 20, 5] {
            p = heap::realloc(p, new);
            assert!(!p.is_null());
            let kept = len.min(new);
            for i in 0..kept {
                assert_eq!(*p.add(i), pattern(i), "byte {i} after realloc to {new}");
            }
            for i in kept..new {
                *p.add(i) = pattern(i);
            }
            len = new;
        }
        // Same class: stays in place.
        let q = heap::realloc(p, 4);
        assert_eq!(q, p);
        // realloc(p, 0) frees and returns null.
        assert!(heap::realloc(q, 0).is_null());
        // realloc(null, n) allocates.
        let r = heap::realloc(std::ptr::null_mut(), 64);
        assert_eq!(heap::usable_size(r), 64);
        heap::free(r);
    }
}

#[test]
fn calloc_zeroes_reused_blocks_and_rejects_overflow() {
    let p = heap::malloc(512);
    unsafe {
        std::ptr::write_bytes(p, 0xFF, 512);
        heap::free(p);
    }
    // The same thread gets the block back from its cache.
    let q = heap::calloc(16, 32);
    assert_eq!(q, p);
    assert!((0..512).all(|i| unsafe { *q.add(i) } == 0));
    unsafe { heap::free(q) };
    assert!(heap::calloc(usize::MAX / 2, 3).is_null());
}

#[test]
fn double_free_is_counted_and_ignored() {
    let before = stats().invalid_frees;
    let small = heap::malloc(48);
    let large = heap::malloc(100_000);
    unsafe {
        heap::free(small);
        heap::free(small);
        heap::free(large);
        heap::free(large);
        // A pointer that was never ours.
        let mut local = 0u64;
        heap::free((&raw mut local).cast());
    }
    assert_eq!(stats().invalid_frees - before, 3);
    // The double free did not put the block in a free list twice: two allocations of the class
    // get two different blocks.
    let a = heap::malloc(48);
    let b = heap::malloc(48);
    assert_ne!(a, b);
    unsafe {
        heap::free(a);
        heap::free(b);
    }
}

#[test]
fn blocks_freed_by_other_threads() {
    const THREADS: usize = 8;
    const BLOCKS: usize = 20_000;
    // Each thread allocates, hands its blocks to the next thread, which checks and frees them.
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| std::sync::mpsc::channel::<Vec<usize>>())
        .unzip();
    let mut handles = Vec::new();
    for (t, rx) in receivers.into_iter().enumerate() {
        let tx = senders[(t + 1) % THREADS].clone();
        handles.push(std::thread::spawn(move || {
            let blocks: Vec<usize> = (0..BLOCKS)
                .map(|i| {
                    let size = 1 + (i * 131 + t * 17) % 3000;
                    let p = heap::malloc(size);
                    assert!(!p.is_null());
                    unsafe { std::ptr::write_bytes(p, t as u8, size) };
                    p as usize
                })
                .collect();
            tx.send(blocks).unwrap();
            let theirs = rx.recv().unwrap();
            let owner = (t + THREADS - 1) % THREADS;
            for (i, p) in theirs.into_iter().enumerate() {
                let size = 1 + (i * 131 + owner * 17) % 3000;
                let p = p as *mut u8;
                unsafe {
                    assert_eq!(*p, owner as u8);
                    assert_eq!(*p.add(size - 1), owner as u8);
                    heap::free(p);
                }
            }
        }));
    }
    drop(senders);
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn live_blocks_never_overlap() {
    let mut blocks: Vec<(usize, usize)> = (0..5000)
        .map(|i| {
            let size = 1 + (i * 977) % 40000;
            (heap::malloc(size) as usize, size)
        })
        .collect();
    blocks.sort();
    for pair in blocks.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:?}");
    }
}

#[test]
fn medium_blocks_honour_page_and_smaller_alignments() {
    for align in [32, 256, 4096] {
        for size in [33_000, 100_000, 262_144] {
            let p = heap::aligned(align, size);
            assert_eq!(p as usize % align, 0, "align {align} size {size}");
            assert_eq!(heap::usable_size(p), size.next_multiple_of(4096));
            unsafe {
                std::ptr::write_bytes(p, 9, size);
                heap::free(p);
            }
        }
    }
}

#[test]
fn medium_blocks_across_threads() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 3000;
    let size = |t: usize, i: usize| 32_769 + (i * 7919 + t * 104_729) % (256 * 1024 - 32_768);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| std::sync::mpsc::channel::<(usize, usize, u8)>())
        .unzip();
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let tx = senders[(t + 1) % THREADS].clone();
            std::thread::spawn(move || {
                let mut live: Vec<(usize, usize, u8)> = Vec::new();
                for i in 0..ROUNDS {
                    let len = size(t, i);
                    let byte = (i % 251) as u8 + 1;
                    let p = if i % 5 == 0 {
                        heap::calloc(1, len)
                    } else {
                        heap::malloc(len)
                    };
                    assert!(!p.is_null());
                    unsafe {
                        if i % 5 == 0 {
                            assert_eq!(*p.add(len - 1), 0, "calloc block not zero");
                        }
                        std::ptr::write_bytes(p, byte, len);
                    }
                    live.push((p as usize, len, byte));
                    if i % 3 == 0 {
                        // Some blocks are resized, in place or moved.
                        let (p, len, byte) = live.swap_remove(i % live.len());
                        let new = size(t, i + 1);
                        let q = unsafe { heap::realloc(p as *mut u8, new) };
                        unsafe {
                            assert_eq!(*q.add(len.min(new) - 1), byte);
                            std::ptr::write_bytes(q, byte, new);
                        }
                        live.push((q as usize, new, byte));
                    }
                    if live.len() > 16 {
                        // Some are freed here, some by the next thread.
                        let block = live.swap_remove(i % live.len());
                        if i % 2 == 0 {
                            tx.send(block).unwrap();
                        } else {
                            let (p, len, byte) = block;
                            unsafe {
                                assert_eq!(*(p as *const u8), byte);
                                assert_eq!(*((p + len - 1) as *const u8), byte);
                                heap::free(p as *mut u8);
                            }
                        }
                    }
                    while let Ok((p, len, byte)) = rx.try_recv() {
                        unsafe {
                            assert_eq!(*((p + len - 1) as *const u8), byte);
                            heap::free(p as *mut u8);
                        }
                    }
                }
                drop(tx);
                for (p, _, _) in live {
                    unsafe { heap::free(p as *mut u8) };
                }
                rx
            })
        })
        .collect();
    drop(senders);
    // Every receiver stays open until all threads are done sending.
    let receivers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for rx in receivers {
        for (p, len, byte) in rx.try_iter() {
            unsafe {
                assert_eq!(*((p + len - 1) as *const u8), byte);
                heap::free(p as *mut u8);
            }
        }
    }
}
