//! Writes a recording as the session goes: records are encoded into a buffer, and each full
//! (or old enough) buffer is compressed and written as one chunk with a single `write()`.

use super::codec::{
    self, DeltaState, InfoNumbers, TAG_LIVE_BLOCKS, TAG_LOST, TAG_MAPS, TAG_PEAK_FRAGMENTATION,
    TAG_SYMBOLS, TAG_TRAILER,
};
use super::{
    CHUNK_EVENTS, CHUNK_INTERVAL, FORMAT_VERSION, Header, LostRecord, MAGIC, MappingRecord, Trailer,
};
use crate::analysis::FragmentationSnapshot;
use crate::event::Event;
use crate::heap::HeapState;
use crate::heap::block_ring::BlockRing;
use crate::heap::block_store::recorded_answers;
use crate::recorder::{Ingested, Recorder};
use crate::stacks::StackId;
use std::io::{self, Write};
use std::time::Instant;

/// zstd level 1: on these chunks it compresses as well as level 3 (zstd's default; python3
/// and sqlite3 recordings came out a few percent smaller) and costs the collector less CPU,
/// which the target waits on when memprof falls behind.
const ZSTD_LEVEL: i32 = 1;
/// A chunk is also written once its records take this many bytes (large maps updates).
const CHUNK_BYTES: usize = 4 << 20;
/// Addresses per symbols record: a few hundred KiB of JSON (an address with its frames takes
/// 20-200 bytes), so no record comes near [`MAX_CHUNK_BYTES`](super::MAX_CHUNK_BYTES).
pub const SYMBOLS_PER_RECORD: usize = 4096;
/// Live blocks per record of the blocks live at the end: a few hundred KiB at most (a block
/// takes 3-30 bytes).
pub const LIVE_BLOCKS_PER_RECORD: usize = 1 << 14;

pub struct Writer<W: Write> {
    out: W,
    /// Encoded records of the chunk being built.
    records: Vec<u8>,
    /// Compressed chunk, with its 12-byte prefix, reused between chunks.
    chunk: Vec<u8>,
    compressor: zstd::bulk::Compressor<'static>,
    state: DeltaState,
    events_in_chunk: u32,
    /// When the first record of the pending chunk was added.
    pending_since: Option<Instant>,
    bytes_written: u64,
    events: u64,
    /// The loss counters last recorded (none yet: all zero).
    lost: LostRecord,
    /// The last blocks created, as a replay's ring will hold them when it reads the next
    /// event (`heap/block_store.rs`).
    ring: BlockRing,
    infos: InfoNumbers,
    /// The encoded lookup answers of the event being added.
    lookups: Vec<u8>,
    /// Every event so far came with its heap's lookups ([`Writer::ingested`]): only then are
    /// the live blocks recorded at the end, which tells a replay it may trust the answers.
    answered: bool,
    /// The heap's end is recorded (once).
    heap_end_written: bool,
}

impl<W: Write> Writer<W> {
    /// Writes the header; the file is a valid (empty, unfinished) recording from here on.
    pub fn create(mut out: W, header: &Header) -> io::Result<Writer<W>> {
        let json = serde_json::to_vec(header)?;
        let mut prefix = Vec::with_capacity(20 + json.len());
        prefix.extend_from_slice(&MAGIC);
        prefix.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        prefix.extend_from_slice(&(json.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        prefix.extend_from_slice(&json);
        out.write_all(&prefix)?;
        Ok(Writer {
            out,
            records: Vec::with_capacity(1 << 20),
            chunk: Vec::new(),
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
            state: DeltaState::new(FORMAT_VERSION, header.start_monotonic_ns),
            events_in_chunk: 0,
            pending_since: None,
            bytes_written: prefix.len() as u64,
            events: 0,
            lost: LostRecord::default(),
            ring: BlockRing::default(),
            infos: InfoNumbers::default(),
            lookups: Vec::new(),
            answered: true,
            heap_end_written: false,
        })
    }

    /// Adds one event without the answers of its heap lookups (tests, synthetic recordings):
    /// a replay of the file then keeps a table of every address. `new_stack` holds the
    /// frames and truncation of `stack` when this event is its first use.
    pub fn event(
        &mut self,
        event: &Event,
        stack: Option<StackId>,
        new_stack: Option<(&[u64], bool)>,
    ) -> io::Result<()> {
        self.answered = false;
        self.lookups.clear();
        self.add_event(event, stack, new_stack)
    }

    fn add_event(
        &mut self,
        event: &Event,
        stack: Option<StackId>,
        new_stack: Option<(&[u64], bool)>,
    ) -> io::Result<()> {
        self.started();
        if let Some((frames, truncated)) = new_stack {
            codec::put_stack(&mut self.records, frames, truncated);
        }
        codec::put_answered_event(
            &mut self.records,
            &mut self.state,
            event,
            stack,
            &self.lookups,
        );
        self.events += 1;
        self.events_in_chunk += 1;
        if self.events_in_chunk >= CHUNK_EVENTS || self.records.len() >= CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Adds what `recorder` just ingested (with the stack's definition when the recorder
    /// interned it for this record), and the answers of the heap's lookups for it that a
    /// replay's ring will not infer.
    pub fn ingested(&mut self, ingested: &Ingested, recorder: &Recorder) -> io::Result<()> {
        let stacks = &recorder.stacks;
        let new_stack = match ingested.stack {
            Some(id) if ingested.new_stack => Some((stacks.get(id), stacks.is_truncated(id))),
            _ => None,
        };
        self.lookups.clear();
        match recorder.heap.tape() {
            Some(tape) => {
                let answers = recorded_answers(&mut self.ring, tape);
                codec::put_lookups(
                    &mut self.lookups,
                    &mut self.infos,
                    &answers,
                    ingested.event.ts_ns,
                );
            }
            None => self.answered = false,
        }
        self.add_event(&ingested.event, ingested.stack, new_stack)
    }

    /// Adds the end of the heap after the session's last event, if every event came with its
    /// lookups: the fragmentation at the peak as the session's report gave it (`at_peak`;
    /// `None` when there was no report), then the blocks `heap` holds live. A replay that
    /// trusted the answers takes both from here. The live blocks come in records of at most
    /// `LIVE_BLOCKS_PER_RECORD` (at least one): count, then by address: address delta, block.
    /// Only the first call writes: the session writes this before its symbols (which must
    /// close the file, see `Reader::closing_symbols`), or at its end when it has none.
    pub fn heap_end(
        &mut self,
        heap: &HeapState,
        at_peak: Option<&Option<FragmentationSnapshot>>,
    ) -> io::Result<()> {
        if !self.answered || self.heap_end_written {
            return Ok(());
        }
        self.heap_end_written = true;
        self.started();
        if let Some(at_peak) = at_peak {
            let json = serde_json::to_vec(at_peak)?;
            codec::put_blob(&mut self.records, TAG_PEAK_FRAGMENTATION, &json);
        }
        let mut blocks: Vec<_> = heap.blocks().collect();
        blocks.sort_unstable_by_key(|(addr, _)| *addr);
        let base_ns = self.state.nanoseconds(self.state.ts_ticks);
        let mut body = Vec::new();
        let mut start = 0;
        loop {
            let part = &blocks[start..(start + LIVE_BLOCKS_PER_RECORD).min(blocks.len())];
            body.clear();
            codec::put_varint(&mut body, part.len() as u64);
            let mut previous = 0;
            for (addr, block) in part {
                codec::put_delta(&mut body, *addr, previous);
                codec::put_block(&mut body, &mut self.infos, block, base_ns);
                previous = *addr;
            }
            codec::put_blob(&mut self.records, TAG_LIVE_BLOCKS, &body);
            if self.records.len() >= CHUNK_BYTES {
                self.flush_chunk()?;
            }
            start += part.len();
            if start == blocks.len() {
                return Ok(());
            }
        }
    }

    /// Adds mappings seen after the header's snapshot.
    pub fn maps(&mut self, mappings: &[MappingRecord]) -> io::Result<()> {
        if mappings.is_empty() {
            return Ok(());
        }
        self.started();
        let json = serde_json::to_vec(mappings)?;
        codec::put_blob(&mut self.records, TAG_MAPS, &json);
        Ok(())
    }

    /// Adds a sample of the target's resident set size.
    pub fn rss(&mut self, ts_ns: u64, bytes: u64) {
        self.started();
        codec::put_rss(&mut self.records, &mut self.state, ts_ns, bytes);
    }

    /// Adds the loss counters as they are now, if they changed since last recorded: a file
    /// that ends without its trailer still says what was lost up to there.
    pub fn lost(&mut self, lost: &LostRecord) -> io::Result<()> {
        if *lost == self.lost || (lost.is_zero() && self.lost.is_zero()) {
            return Ok(());
        }
        self.started();
        let json = serde_json::to_vec(lost)?;
        codec::put_blob(&mut self.records, TAG_LOST, &json);
        self.lost = lost.clone();
        Ok(())
    }

    /// Adds the leak check's result (once, after the session's last event).
    pub fn leak_check(&mut self, check: &crate::leak_check::LeakCheck) {
        self.started();
        super::leak_record::put(&mut self.records, check);
    }

    /// Adds the frames the session's report named (once, after the session's last event), so
    /// that a replay names them the same way without the target's files: in records of
    /// `SYMBOLS_PER_RECORD` addresses, in chunks that hold nothing else.
    pub fn symbols(&mut self, symbols: &crate::symbolize::RecordedSymbols) -> io::Result<()> {
        // In chunks of their own, which a view finds without decoding the events
        // (`Reader::closing_symbols`).
        self.flush_chunk()?;
        self.started();
        for part in symbols.parts(SYMBOLS_PER_RECORD) {
            let json = serde_json::to_vec(&part)?;
            codec::put_blob(&mut self.records, TAG_SYMBOLS, &json);
            if self.records.len() >= CHUNK_BYTES {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    /// Whether the next event fills the pending chunk (it is written after that event).
    pub fn next_event_ends_chunk(&self) -> bool {
        self.events_in_chunk + 1 >= CHUNK_EVENTS
    }

    /// Whether the pending chunk's first record is older than [`CHUNK_INTERVAL`].
    pub fn flush_due(&self) -> bool {
        self.pending_since
            .is_some_and(|since| since.elapsed() >= CHUNK_INTERVAL)
    }

    /// Writes the pending chunk if it is due ([`Writer::flush_due`]); the collector calls
    /// this from its timer so an idle target's records still reach the disk.
    pub fn flush_if_due(&mut self) -> io::Result<()> {
        if self.flush_due() {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Writes the trailer (in a chunk of its own, after the pending one) and returns the
    /// output.
    pub fn finish(mut self, trailer: &Trailer) -> io::Result<W> {
        self.flush_chunk()?;
        let json = serde_json::to_vec(trailer)?;
        codec::put_blob(&mut self.records, TAG_TRAILER, &json);
        self.flush_chunk()?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Bytes written so far (header and complete chunks).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Events added so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    fn started(&mut self) {
        if self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
    }

    /// Compresses the pending records and writes them as one chunk with one `write_all`
    /// (one `write()` on a file), so a kill leaves either the whole chunk or a cut one that
    /// the reader recognizes.
    pub fn flush_chunk(&mut self) -> io::Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let bound = zstd::zstd_safe::compress_bound(self.records.len());
        self.chunk.clear();
        self.chunk.resize(12 + bound, 0);
        let compressed = self
            .compressor
            .compress_to_buffer(&self.records, &mut self.chunk[12..])?;
        self.chunk.truncate(12 + compressed);
        let crc = crc32fast::hash(&self.chunk[12..]);
        self.chunk[0..4].copy_from_slice(&(compressed as u32).to_le_bytes());
        self.chunk[4..8].copy_from_slice(&(self.records.len() as u32).to_le_bytes());
        self.chunk[8..12].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.chunk)?;
        self.bytes_written += self.chunk.len() as u64;
        self.records.clear();
        self.events_in_chunk = 0;
        self.pending_since = None;
        Ok(())
    }
}
