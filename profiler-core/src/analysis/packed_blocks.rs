//! A list of (address, size) pairs packed as varints: each address as its distance from the
//! previous one, then the size. The blocks released after the peak are millions on a program
//! that frees its heap at exit (python3: 4.5 million, 72 MiB as pairs of words); consecutive
//! frees are mostly close in the address space, so most pairs take a few bytes.

use crate::recording::codec::{Cursor, put_delta, put_varint};

#[derive(Debug, Default)]
pub struct PackedBlocks {
    bytes: Vec<u8>,
    len: usize,
    last_addr: u64,
}

impl PackedBlocks {
    #[inline]
    pub fn push(&mut self, addr: u64, size: u64) {
        put_delta(&mut self.bytes, addr, self.last_addr);
        put_varint(&mut self.bytes, size);
        self.last_addr = addr;
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.len = 0;
        self.last_addr = 0;
    }

    /// The pairs, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut cursor = Cursor {
            bytes: &self.bytes,
            pos: 0,
        };
        let mut last_addr = 0;
        std::iter::from_fn(move || {
            if cursor.pos == cursor.bytes.len() {
                return None;
            }
            let addr = cursor.delta(last_addr).expect("written by push");
            let size = cursor.varint().expect("written by push");
            last_addr = addr;
            Some((addr, size))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_come_back_in_order_at_the_edges() {
        let pairs = [
            (0x5555_0000_1000, 24),
            (0x5555_0000_0fd0, 0),
            (u64::MAX, u64::MAX),
            (0, 1),
            (0x7fff_ffff_f000, 1 << 40),
        ];
        let mut packed = PackedBlocks::default();
        for (addr, size) in pairs {
            packed.push(addr, size);
        }
        assert_eq!(packed.len(), pairs.len());
        assert_eq!(packed.iter().collect::<Vec<_>>(), pairs);
        packed.clear();
        assert_eq!(packed.len(), 0);
        assert_eq!(packed.iter().count(), 0);
        packed.push(0x40, 8);
        assert_eq!(packed.iter().collect::<Vec<_>>(), [(0x40, 8)]);
    }

    #[test]
    fn near_addresses_take_a_few_bytes() {
        let mut packed = PackedBlocks::default();
        for i in 0..1000u64 {
            packed.push(0x5555_0000_0000 + i * 48, 40);
        }
        // The first address is far from 0; every other one is 48 bytes on: 2 + 1 bytes.
        assert!(
            packed.bytes.len() <= 10 + 999 * 3,
            "{} bytes",
            packed.bytes.len()
        );
    }
}
