//! Statistics for a known sequence: this binary holds one test, so nothing else allocates
//! from memprof-alloc while it runs (the harness uses the system allocator).
use memprof_alloc::{Stats, heap, stats};

#[test]
fn exact_for_a_known_sequence() {
    assert_eq!(stats(), Stats::default());
    let a = heap::malloc(100); // class 112
    let b = heap::malloc(1000); // class 1024
    let c = heap::malloc(40000); // 10 pages: 40960
    let peak = 112 + 1024 + 40960;
    unsafe {
        heap::free(b);
        let d = heap::calloc(4, 8); // 32
        heap::free(c);
        heap::free(c); // invalid: already freed
        heap::free(a);
        heap::free(d);
    }
    assert!(heap::malloc(usize::MAX - 10).is_null());
    assert_eq!(
        stats(),
        Stats {
            allocations: 4,
            frees: 4,
            bytes_allocated: peak + 32,
            bytes_freed: peak + 32,
            live_blocks: 0,
            live_bytes: 0,
            peak_live_bytes: peak,
            failures: 1,
            invalid_frees: 1,
        }
    );
}
