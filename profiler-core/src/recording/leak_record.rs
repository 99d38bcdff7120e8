//! The leak check's record (`0x50`): the summary, then each checked block's class, so that
//! `memprof report` shows what the live session found (the target's memory is gone by then).
//!
//! Body: length + JSON [`LeakCheckSummary`], block count, then per block (by ascending
//! address) the address delta from the previous one and the class byte.

use super::codec::{self, Cursor, DecodeResult, put_varint};
use crate::leak_check::{LeakCheck, LeakCheckSummary, Reachability};

pub const TAG_LEAK_CHECK: u8 = 0x50;

/// The record's body.
pub fn encode(check: &LeakCheck) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + check.classes.len() * 4);
    let summary = serde_json::to_vec(&check.summary).expect("a summary serializes");
    put_varint(&mut body, summary.len() as u64);
    body.extend_from_slice(&summary);
    let mut blocks: Vec<(u64, Reachability)> = check
        .classes
        .iter()
        .map(|(&addr, &class)| (addr, class))
        .collect();
    blocks.sort_unstable();
    put_varint(&mut body, blocks.len() as u64);
    let mut previous = 0;
    for (addr, class) in blocks {
        put_varint(&mut body, addr - previous);
        body.push(class.code());
        previous = addr;
    }
    body
}

/// Reads a body written by [`encode`].
pub fn decode(body: &[u8]) -> DecodeResult<LeakCheck> {
    let mut cursor = Cursor {
        bytes: body,
        pos: 0,
    };
    let summary: LeakCheckSummary =
        serde_json::from_slice(cursor.blob()?).map_err(|_| "leak check summary is not valid")?;
    let count = cursor.varint()?;
    // Each block takes at least two bytes: a corrupt count cannot make us allocate much.
    if count > (body.len() - cursor.pos) as u64 / 2 {
        return Err("leak check lists more blocks than it holds");
    }
    let mut check = LeakCheck {
        classes: Default::default(),
        summary,
    };
    let mut addr = 0u64;
    for _ in 0..count {
        addr = addr
            .checked_add(cursor.varint()?)
            .ok_or("leak check address overflows")?;
        let class = Reachability::from_code(cursor.byte()?).ok_or("unknown leak class")?;
        check.classes.insert(addr, class);
    }
    if cursor.pos != body.len() {
        return Err("bytes after the leak check's blocks");
    }
    Ok(check)
}

/// Appends the whole record.
pub fn put(out: &mut Vec<u8>, check: &LeakCheck) {
    codec::put_blob(out, TAG_LEAK_CHECK, &encode(check));
}
