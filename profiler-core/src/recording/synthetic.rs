//! A deterministic churn workload written as a recording, for tests and `bench report`:
//! malloc/free traffic over a bounded live set from a few dozen stacks, pushed through a live
//! [`Recorder`] and the [`Writer`] exactly as a session would.

use super::{Header, Trailer, Writer};
use crate::analysis::allocator::Allocator;
use crate::event::encode;
use crate::heap::Mode;
use crate::recorder::Recorder;
use profiler_common::{EventHeader, EventKind};
use std::io::{self, Write};

/// Blocks kept live at once: the heap (and so a replay's memory) does not grow with events.
const LIVE_SET: usize = 1024;
const STACKS: u64 = 48;
const SIZES: [u64; 8] = [16, 24, 32, 64, 128, 256, 480, 1024];
const START_NS: u64 = 1_000_000_000;

/// xorshift64*: deterministic, good enough to vary sizes, timings and sites.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The header the synthetic recordings carry.
pub fn synthetic_header() -> Header {
    Header {
        memprof_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: "synthetic".to_owned(),
        command: vec!["synthetic-churn".to_owned()],
        executable: None,
        pid: 1,
        mode: Mode::Run,
        start_unix_ns: 0,
        start_monotonic_ns: START_NS,
        maps: Vec::new(),
        unwinding: None,
        ops: None,
        capture: None,
        allocator: None,
        lineage: None,
    }
}

/// Writes `events` events (half mallocs, half frees, after a warm-up that fills the live
/// set) and a trailer into `out`; returns the recorder that produced them, for comparison.
pub fn write_synthetic_churn<W: Write>(out: W, events: u64) -> io::Result<(W, Recorder)> {
    let mut writer = Writer::create(out, &synthetic_header())?;
    let mut recorder = Recorder::new(Mode::Run);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut live: Vec<u64> = Vec::with_capacity(LIVE_SET);
    let mut free_addrs: Vec<u64> = Vec::new();
    let mut next_addr = 0x5555_5555_0000u64;
    let mut ts = START_NS;
    let mut record = Vec::with_capacity(56 + 8 * 8);
    for _ in 0..events {
        let roll = rng.next();
        ts += 300 + (roll >> 54); // 0.3-1.3 us between calls
        let allocate = live.len() < LIVE_SET / 2 || (live.len() < LIVE_SET && roll & 1 == 0);
        let (header, depth) = if allocate {
            let addr = free_addrs.pop().unwrap_or_else(|| {
                next_addr += 2048;
                next_addr
            });
            live.push(addr);
            let site = (roll >> 8) % STACKS;
            let header = EventHeader {
                kind: EventKind::Malloc as u32,
                tid: 4242 + (site % 3) as u32,
                ts_ns: ts,
                addr,
                size: SIZES[((roll >> 16) % 8) as usize],
                stack_depth: 4 + (site % 4) as u32,
                ..EventHeader::default()
            };
            (header, site)
        } else {
            let index = ((roll >> 8) % live.len() as u64) as usize;
            let addr = live.swap_remove(index);
            free_addrs.push(addr);
            let header = EventHeader {
                kind: EventKind::Free as u32,
                tid: 4242,
                ts_ns: ts,
                addr,
                ..EventHeader::default()
            };
            (header, 0)
        };
        let frames: Vec<u64> = (0..u64::from(header.stack_depth))
            .map(|level| 0x40_1000 + depth * 0x40 + level * 0x1000)
            .collect();
        record.clear();
        encode(&header, &frames, &mut record);
        let ingested = recorder
            .ingest(&record)
            .expect("synthetic records are well formed");
        writer.ingested(&ingested, &recorder)?;
    }
    let at_peak = crate::analysis::fragmentation_at_peak(&recorder, Allocator::Unknown);
    writer.heap_end(&recorder.heap, Some(&at_peak))?;
    let trailer = Trailer::ended_at(ts);
    Ok((writer.finish(&trailer)?, recorder))
}
