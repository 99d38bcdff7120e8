//! A random sequence of malloc/realloc/free checked against a model: every live block keeps
//! its contents, has at least its size usable, and never overlaps another.
use std::collections::BTreeMap;

use memprof_alloc::{heap, size_class};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Malloc(usize),
    Aligned(u32, usize),
    Realloc(usize, usize),
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![0usize..200, 200usize..5000, 30000usize..70000];
    prop_oneof![
        size.clone().prop_map(Op::Malloc),
        (4u32..14, 0usize..3000).prop_map(|(s, n)| Op::Aligned(s, n)),
        (any::<usize>(), size).prop_map(|(i, n)| Op::Realloc(i, n)),
        any::<usize>().prop_map(Op::Free),
    ]
}

/// Whether the `len` bytes at `p` all hold `byte`.
fn filled(p: *const u8, len: usize, byte: u8) -> bool {
    (0..len).all(|k| unsafe { *p.add(k) } == byte)
}

proptest! {
    #[test]
    fn behaves_like_a_model(ops in prop::collection::vec(op(), 1..200)) {
        // Model: address -> (size, fill byte).
        let mut live: BTreeMap<usize, (usize, u8)> = BTreeMap::new();
        for (n, op) in ops.into_iter().enumerate() {
            let fill = n as u8;
            let pick = |live: &BTreeMap<usize, (usize, u8)>, i: usize| {
                (!live.is_empty()).then(|| *live.keys().nth(i % live.len()).unwrap())
            };
            match op {
                Op::Malloc(size) | Op::Aligned(_, size) => {
                    let p = match op {
                        Op::Aligned(shift, _) => heap::aligned(1 << shift, size),
                        _ => heap::malloc(size),
                    };
                    prop_assert!(!p.is_null());
                    if let Op::Aligned(shift, _) = op {
                        prop_assert_eq!(p as usize % (1 << shift), 0);
                    } else {
                        prop_assert_eq!(heap::usable_size(p), size_class(size).unwrap());
                    }
                    unsafe { std::ptr::write_bytes(p, fill, size) };
                    live.insert(p as usize, (size, fill));
                }
                Op::Realloc(i, size) => {
                    let Some(addr) = pick(&live, i) else { continue };
                    let (old, byte) = live.remove(&addr).unwrap();
                    let q = unsafe { heap::realloc(addr as *mut u8, size) };
                    if size == 0 {
                        prop_assert!(q.is_null());
                        continue;
                    }
                    let kept = old.min(size);
                    prop_assert!(filled(q, kept, byte));
                    unsafe { std::ptr::write_bytes(q, byte, size) };
                    live.insert(q as usize, (size, byte));
                }
                Op::Free(i) => {
                    let Some(addr) = pick(&live, i) else { continue };
                    let (size, byte) = live.remove(&addr).unwrap();
                    prop_assert!(filled(addr as *const u8, size, byte));
                    unsafe { heap::free(addr as *mut u8) };
                }
            }
            let mut end = 0;
            for (&addr, &(size, _)) in &live {
                prop_assert!(addr >= end, "overlap at {:#x}", addr);
                end = addr + size;
            }
        }
        for (&addr, &(size, byte)) in &live {
            prop_assert!(filled(addr as *const u8, size, byte));
            unsafe { heap::free(addr as *mut u8) };
        }
    }
}
