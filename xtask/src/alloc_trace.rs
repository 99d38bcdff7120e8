//! Turns a memprof recording into the allocation trace samples/c/allocreplay.c replays: the
//! program's malloc-family calls in recording order, each block named by a slot instead of
//! its address, so that any allocator can serve the same sequence of requests.
//!
//! Calls the allocator made for itself (`FLAG_ALLOCATOR_INTERNAL`), mappings, and frees of
//! blocks the recording never saw allocated are left out: they are not the program's requests.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use profiler_common::{EventKind, FLAG_ALLOCATOR_INTERNAL};
use profiler_core::event::Event;
use profiler_core::recording::{Reader, Record};

const MAGIC: &[u8; 8] = b"MPTRACE1";

/// Record kinds, as allocreplay.c numbers them.
const OP_MALLOC: u32 = 1;
const OP_CALLOC: u32 = 2;
const OP_REALLOC: u32 = 3;
const OP_FREE: u32 = 4;
const OP_ALIGNED: u32 = 5;

/// One trace record (allocreplay.c's `struct op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: u32,
    pub slot: u32,
    pub old_slot: u32,
    pub align: u32,
    pub size: u64,
}

/// Live blocks by address, each in a slot; freed slots are reused so the replay's slot table
/// stays as small as the program's live set.
#[derive(Default)]
pub struct Slots {
    live: HashMap<u64, u32>,
    free: Vec<u32>,
    count: u32,
}

impl Slots {
    fn take(&mut self, addr: u64) -> u32 {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.count += 1;
            self.count - 1
        });
        self.live.insert(addr, slot);
        slot
    }

    fn release(&mut self, addr: u64) -> Option<u32> {
        let slot = self.live.remove(&addr)?;
        self.free.push(slot);
        Some(slot)
    }

    /// Slots the replay needs.
    pub fn count(&self) -> u32 {
        self.count
    }
}

/// The trace record for `event`, if it is a request of the program's.
pub fn op(event: &Event, slots: &mut Slots) -> Option<Op> {
    if event.flags & FLAG_ALLOCATOR_INTERNAL != 0 {
        return None;
    }
    let made = |kind, slots: &mut Slots, align| {
        (event.addr != 0).then(|| Op {
            kind,
            slot: slots.take(event.addr),
            old_slot: 0,
            align,
            size: event.size,
        })
    };
    match event.kind {
        EventKind::Malloc | EventKind::OperatorNew if event.aux == 0 => made(OP_MALLOC, slots, 0),
        EventKind::Calloc => made(OP_CALLOC, slots, 0),
        EventKind::Valloc => made(OP_ALIGNED, slots, 4096),
        EventKind::Pvalloc => {
            let size = event.size.div_ceil(4096).max(1) * 4096;
            made(OP_ALIGNED, slots, 4096).map(|op| Op { size, ..op })
        }
        EventKind::Malloc
        | EventKind::OperatorNew
        | EventKind::PosixMemalign
        | EventKind::AlignedAlloc
        | EventKind::Memalign => {
            // posix_memalign wants a power of two of at least a pointer's size.
            let align = event.aux.max(8).next_power_of_two();
            made(OP_ALIGNED, slots, u32::try_from(align).ok()?)
        }
        EventKind::Realloc | EventKind::Reallocarray => {
            let old = slots.live.get(&event.old_addr).copied();
            match old {
                // realloc(NULL, n), or of a block allocated before the recording: a malloc.
                None => made(OP_MALLOC, slots, 0),
                // A failed realloc leaves its block allocated.
                Some(_) if event.addr == 0 && event.size != 0 => None,
                Some(old) => {
                    slots.release(event.old_addr);
                    Some(if event.addr == 0 {
                        // realloc(p, 0) freed p.
                        Op {
                            kind: OP_FREE,
                            slot: old,
                            old_slot: 0,
                            align: 0,
                            size: 0,
                        }
                    } else {
                        Op {
                            kind: OP_REALLOC,
                            slot: slots.take(event.addr),
                            old_slot: old,
                            align: 0,
                            size: event.size,
                        }
                    })
                }
            }
        }
        EventKind::Free | EventKind::OperatorDelete => Some(Op {
            kind: OP_FREE,
            slot: slots.release(event.addr)?,
            old_slot: 0,
            align: 0,
            size: 0,
        }),
        EventKind::Mmap | EventKind::Munmap | EventKind::Mremap => None,
    }
}

/// Writes the trace of `recording` to `out`; returns the number of records.
pub fn export(recording: &Path, out: &Path) -> Result<u64> {
    let file = std::fs::File::open(recording)
        .with_context(|| format!("cannot open {}", recording.display()))?;
    let mut reader = Reader::new(std::io::BufReader::new(file))
        .with_context(|| format!("cannot read {}", recording.display()))?;
    let mut slots = Slots::default();
    let mut ops = Vec::new();
    while let Some(record) = reader
        .next()
        .with_context(|| format!("cannot read {}", recording.display()))?
    {
        if let Record::Event { event, .. } = record
            && let Some(op) = op(event, &mut slots)
        {
            ops.push(op);
        }
    }
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut writer = BufWriter::new(file);
    write(&mut writer, &ops, slots.count())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(ops.len() as u64)
}

fn write(out: &mut impl Write, ops: &[Op], slots: u32) -> std::io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&slots.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(ops.len() as u64).to_le_bytes())?;
    for op in ops {
        for word in [op.kind, op.slot, op.old_slot, op.align] {
            out.write_all(&word.to_le_bytes())?;
        }
        out.write_all(&op.size.to_le_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, addr: u64, size: u64) -> Event {
        Event {
            kind,
            tid: 1,
            ts_ns: 0,
            addr,
            size,
            old_addr: 0,
            aux: 0,
            flags: 0,
        }
    }

    fn realloc(old_addr: u64, addr: u64, size: u64) -> Event {
        Event {
            old_addr,
            ..event(EventKind::Realloc, addr, size)
        }
    }

    #[test]
    fn blocks_become_reused_slots_and_unknown_frees_vanish() {
        let mut slots = Slots::default();
        let mut ops = |e: Event| op(&e, &mut slots).map(|o| (o.kind, o.slot, o.old_slot, o.size));
        assert_eq!(
            ops(event(EventKind::Malloc, 0x10, 24)),
            Some((OP_MALLOC, 0, 0, 24))
        );
        assert_eq!(
            ops(event(EventKind::Calloc, 0x20, 64)),
            Some((OP_CALLOC, 1, 0, 64))
        );
        assert_eq!(
            ops(event(EventKind::Free, 0x10, 0)),
            Some((OP_FREE, 0, 0, 0))
        );
        assert_eq!(ops(event(EventKind::Free, 0x10, 0)), None, "double free");
        assert_eq!(
            ops(event(EventKind::Free, 0x99, 0)),
            None,
            "never allocated"
        );
        // The realloc's result takes the slot its input frees; slot 0 is free for the next.
        assert_eq!(ops(realloc(0x20, 0x30, 128)), Some((OP_REALLOC, 1, 1, 128)));
        assert_eq!(ops(realloc(0, 0x40, 8)), Some((OP_MALLOC, 0, 0, 8)));
        assert_eq!(ops(realloc(0x40, 0, 0)), Some((OP_FREE, 0, 0, 0)));
        assert_eq!(ops(event(EventKind::Malloc, 0, 1 << 50)), None, "failed");
        let mut internal = event(EventKind::Free, 0x30, 0);
        internal.flags = FLAG_ALLOCATOR_INTERNAL;
        assert_eq!(ops(internal), None);
        assert_eq!(
            ops(event(EventKind::Free, 0x30, 0)),
            Some((OP_FREE, 1, 0, 0))
        );
        assert_eq!(slots.count(), 2);
    }

    #[test]
    fn a_failed_realloc_keeps_its_block() {
        let mut slots = Slots::default();
        op(&event(EventKind::Malloc, 0x10, 24), &mut slots).unwrap();
        assert_eq!(op(&realloc(0x10, 0, 1 << 50), &mut slots), None);
        let free = op(&event(EventKind::Free, 0x10, 0), &mut slots).unwrap();
        assert_eq!((free.kind, free.slot), (OP_FREE, 0));
    }

    /// leaks.c's recording (1006 allocations, 1000 frees, no realloc) becomes 2006 calls that
    /// allocreplay.c replays whole, pass after pass.
    #[test]
    fn a_recorded_program_replays_call_for_call() {
        let root = crate::samples::root().unwrap();
        let dir = std::env::temp_dir().join(format!("memprof-trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let trace = dir.join("leaks.trace");
        let calls = export(&root.join("profiler-core/tests/data/leaks.mprof"), &trace).unwrap();
        assert_eq!(calls, 2006);
        let replay = dir.join("allocreplay");
        let gcc = std::process::Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&replay)
            .arg(root.join("samples/c/allocreplay.c"))
            .status()
            .unwrap();
        assert!(gcc.success());
        let out = std::process::Command::new(&replay)
            .arg(&trace)
            .arg("3")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("ops 6018 ops_per_sec "), "{stdout}");
        // A damaged trace is refused, not replayed.
        let mut bytes = std::fs::read(&trace).unwrap();
        bytes[24] = 9; // the first record's kind
        std::fs::write(&trace, &bytes).unwrap();
        let out = std::process::Command::new(&replay)
            .arg(&trace)
            .arg("1")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("record 0 is invalid"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn aligned_requests_keep_a_valid_alignment() {
        let mut slots = Slots::default();
        let mut aligned = event(EventKind::PosixMemalign, 0x1000, 100);
        aligned.aux = 64;
        assert_eq!(op(&aligned, &mut slots).unwrap().align, 64);
        let mut small = event(EventKind::AlignedAlloc, 0x2000, 100);
        small.aux = 2;
        assert_eq!(op(&small, &mut slots).unwrap().align, 8);
        let pvalloc = op(&event(EventKind::Pvalloc, 0x3000, 5000), &mut slots).unwrap();
        assert_eq!(
            (pvalloc.kind, pvalloc.align, pvalloc.size),
            (OP_ALIGNED, 4096, 8192)
        );
    }
}
