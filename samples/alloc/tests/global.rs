//! memprof-alloc as this test binary's global allocator: std collections, strings and threads
//! on top of it.
use std::collections::{BTreeMap, HashMap};

use memprof_alloc::{MemprofAlloc, stats};

#[global_allocator]
static GLOBAL: MemprofAlloc = MemprofAlloc;

#[test]
fn collections_work_and_are_counted() {
    let before = stats().allocations;
    let mut map = HashMap::new();
    let mut tree = BTreeMap::new();
    for i in 0..100_000u64 {
        map.insert(i, i.to_string());
        tree.insert(i.to_string(), vec![i; (i % 17) as usize]);
    }
    assert_eq!(map[&77_777], "77777");
    assert_eq!(tree["4242"], vec![4242; 4242 % 17]);
    let total: usize = tree.values().map(Vec::len).sum();
    assert_eq!(total, (0..100_000).map(|i| i % 17).sum::<usize>());
    assert!(stats().allocations - before >= 200_000);
}

#[test]
fn threads_exchange_boxes() {
    let handles: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                (0..50_000)
                    .map(|i| [t as u8; 48].repeat(1 + i % 5))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // The main thread frees what the others allocated.
    for (t, handle) in handles.into_iter().enumerate() {
        let blocks = handle.join().unwrap();
        assert_eq!(blocks.len(), 50_000);
        assert!(blocks.iter().all(|b| b.iter().all(|&x| x == t as u8)));
    }
}

#[test]
fn over_aligned_types() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    #[repr(align(64))]
    struct Line([u8; 64]);
    let pages: Vec<Box<Page>> = (0..20).map(|_| Box::new(Page([7; 4096]))).collect();
    let lines: Vec<Box<Line>> = (0..1000).map(|_| Box::new(Line([9; 64]))).collect();
    assert!(
        pages
            .iter()
            .all(|p| ((&raw const **p) as usize).is_multiple_of(4096) && p.0[4095] == 7)
    );
    assert!(
        lines
            .iter()
            .all(|l| ((&raw const **l) as usize).is_multiple_of(64) && l.0[63] == 9)
    );
}
