//! Ingest workloads shared by the hot-path tests (tests/integration/hot_path.rs) and the ingest
//! benchmark (benches/ingest.rs): ring records as the probes write them, and a real stack
//! snapshot of the calling thread with the modules to unwind it.

use profiler_common::{EventHeader, EventKind, StackSnapshot};
use profiler_core::event::encode;
use profiler_core::maps::ProcessMaps;
use profiler_core::recorder::Recorder;
use profiler_core::unwind::ModuleImage;
use std::sync::Arc;

pub fn record(kind: EventKind, addr: u64, size: u64, old_addr: u64, frames: &[u64]) -> Vec<u8> {
    let header = EventHeader {
        kind: kind as u32,
        tid: 1,
        ts_ns: 1,
        addr,
        size,
        old_addr,
        aux: 0,
        stack_depth: frames.len() as u32,
        flags: 0,
    };
    let mut bytes = Vec::new();
    encode(&header, frames, &mut bytes);
    bytes
}

/// A workload cycling through 64 addresses and 8 stacks: malloc, realloc in place, free.
pub fn workload() -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for i in 0..64u64 {
        let addr = 0x5555_0000_0000 + i * 32;
        let stack: Vec<u64> = (0..20)
            .map(|depth| 0x40_0000 + (i % 8) * 0x100 + depth)
            .collect();
        records.push(record(EventKind::Malloc, addr, 24, 0, &stack));
        records.push(record(EventKind::Realloc, addr, 32, addr, &stack));
        records.push(record(EventKind::Free, addr, 0, 0, &[]));
    }
    records
}

/// A stack snapshot of this thread, as the DWARF-mode probe takes one: registers read in
/// `snapshot_here`, then the stack from sp to the end of its mapping (at most 16 KiB).
#[inline(never)]
pub fn snapshot_here(maps: &ProcessMaps) -> (StackSnapshot, Vec<u8>) {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers; touches no memory and not the stack.
    unsafe {
        std::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let len = (maps.find(sp).expect("sp is mapped").end - sp).min(16384);
    let mut stack = vec![0u8; len as usize];
    // SAFETY: [sp, sp + len) is inside this thread's mapped stack, above this frame's locals
    // that change from here on.
    unsafe { std::ptr::copy_nonoverlapping(sp as *const u8, stack.as_mut_ptr(), len as usize) };
    let snapshot = StackSnapshot {
        ip,
        sp,
        bp,
        stack_bytes: len as u32,
        flags: 0,
    };
    (snapshot, stack)
}

/// Every executable file mapping of this process, loaded into the recorder's unwinder.
pub fn load_own_modules(recorder: &mut Recorder, maps: &ProcessMaps) {
    for mapping in maps.iter().filter(|m| m.is_file() && m.perms.contains('x')) {
        let file = std::fs::File::open(&mapping.path).unwrap();
        let image = Arc::new(ModuleImage::read(file, mapping.path.display().to_string()).unwrap());
        let bias = image.bias(mapping.start, mapping.offset).unwrap();
        recorder
            .unwinder
            .modules
            .add(mapping.start..mapping.end, bias, &image);
    }
}
