//! The seeded operation mix: which request comes next on a connection slot, and how large
//! its payload is. The same seed and slot always give the same sequence.

use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;

/// Share of each operation, in percent: PUT 40, GET 35, DEL 5, PUSH 10, POP 10.
const PUT_BELOW: u32 = 40;
const GET_BELOW: u32 = 75;
const DEL_BELOW: u32 = 80;
const PUSH_BELOW: u32 = 90;

/// Payloads: 9 in 10 are small, the rest large.
const SMALL: std::ops::RangeInclusive<usize> = 16..=512;
const LARGE: std::ops::RangeInclusive<usize> = 4 << 10..=64 << 10;

/// The largest payload the mix produces.
pub const MAX_PAYLOAD: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: u32, size: usize },
    Get { key: u32 },
    Del { key: u32 },
    Push { queue: u32, size: usize },
    Pop { queue: u32 },
}

pub struct Workload {
    rng: XorShiftRng,
    keys: u32,
    queues: u32,
}

impl Workload {
    /// The sequence of connection slot `slot` for `seed`, over `keys` keys and `queues` queues
    /// (both at least 1).
    pub fn new(seed: u64, slot: u64, keys: u32, queues: u32) -> Workload {
        assert!(keys > 0 && queues > 0, "empty key or queue space");
        let slot_seed = seed ^ slot.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Workload {
            rng: XorShiftRng::seed_from_u64(slot_seed),
            keys,
            queues,
        }
    }

    pub fn next_op(&mut self) -> Op {
        let roll = self.rng.random_range(0..100);
        if roll < PUT_BELOW {
            Op::Put {
                key: self.key(),
                size: self.size(),
            }
        } else if roll < GET_BELOW {
            Op::Get { key: self.key() }
        } else if roll < DEL_BELOW {
            Op::Del { key: self.key() }
        } else if roll < PUSH_BELOW {
            Op::Push {
                queue: self.queue(),
                size: self.size(),
            }
        } else {
            Op::Pop {
                queue: self.queue(),
            }
        }
    }

    fn key(&mut self) -> u32 {
        self.rng.random_range(0..self.keys)
    }

    fn queue(&mut self) -> u32 {
        self.rng.random_range(0..self.queues)
    }

    fn size(&mut self) -> usize {
        if self.rng.random_range(0..10) == 0 {
            self.rng.random_range(LARGE)
        } else {
            self.rng.random_range(SMALL)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(seed: u64, slot: u64, n: usize) -> Vec<Op> {
        let mut workload = Workload::new(seed, slot, 1000, 8);
        (0..n).map(|_| workload.next_op()).collect()
    }

    #[test]
    fn a_seed_and_slot_always_give_the_same_operations() {
        assert_eq!(ops(7, 2, 500), ops(7, 2, 500));
        assert_ne!(ops(7, 2, 500), ops(7, 3, 500));
        assert_ne!(ops(7, 2, 500), ops(8, 2, 500));
    }

    #[test]
    fn the_mix_has_every_operation_and_both_size_classes() {
        let ops = ops(1, 0, 10_000);
        let count = |f: fn(&Op) -> bool| ops.iter().filter(|op| f(op)).count();
        let puts = count(|op| matches!(op, Op::Put { .. }));
        let gets = count(|op| matches!(op, Op::Get { .. }));
        let dels = count(|op| matches!(op, Op::Del { .. }));
        let pushes = count(|op| matches!(op, Op::Push { .. }));
        let pops = count(|op| matches!(op, Op::Pop { .. }));
        // Within 2 points of the intended shares over 10000 draws.
        for (name, seen, share) in [
            ("PUT", puts, 40),
            ("GET", gets, 35),
            ("DEL", dels, 5),
            ("PUSH", pushes, 10),
            ("POP", pops, 10),
        ] {
            assert!(seen.abs_diff(share * 100) <= 200, "{name}: {seen} of 10000");
        }
        let sizes: Vec<usize> = ops
            .iter()
            .filter_map(|op| match *op {
                Op::Put { size, .. } | Op::Push { size, .. } => Some(size),
                _ => None,
            })
            .collect();
        assert!(sizes.iter().all(|s| SMALL.contains(s) || LARGE.contains(s)));
        let large = sizes.iter().filter(|s| LARGE.contains(s)).count();
        assert!(
            large.abs_diff(sizes.len() / 10) <= sizes.len() / 50,
            "{large} large payloads of {}",
            sizes.len()
        );
    }
}
