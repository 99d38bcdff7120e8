//! Streams a recording back, one record at a time: memory holds one chunk, never the file.
//!
//! Anything wrong with the file is an error naming its byte offset; the reader never panics
//! on bad input (the fuzz test in `tests.rs` holds it to that).

use super::codec::{
    Cursor, DeltaState, FIRST_SKIPPABLE_TAG, TAG_LIVE_BLOCKS, TAG_LOST, TAG_MAPS,
    TAG_PEAK_FRAGMENTATION, TAG_RSS, TAG_STACK, TAG_SYMBOLS, TAG_TRAILER,
};
use super::{
    FIRST_FORMAT_VERSION, FORMAT_VERSION, Header, LostRecord, MAGIC, MAX_CHUNK_BYTES,
    MappingRecord, Trailer,
};
use crate::event::Event;
use crate::heap::{Block, RecordedLookups};
use crate::stacks::StackId;
use profiler_common::EventKind;
use std::io::{self, Read, Seek, SeekFrom};

/// One record of a recording.
#[derive(Clone, Debug, PartialEq)]
pub enum Record<'a> {
    /// A probed call; its stack (if any) was defined by an earlier [`Record::Stack`].
    Event {
        event: &'a Event,
        stack: Option<StackId>,
        /// The answers of the heap's lookups for it that the recording carries (version 4).
        lookups: &'a RecordedLookups,
    },
    /// The definition of the next stack id, before its first use.
    Stack { frames: &'a [u64], truncated: bool },
    /// Mappings seen after the header's snapshot.
    Maps(Vec<MappingRecord>),
    /// The target's resident set size.
    Rss { ts_ns: u64, bytes: u64 },
    /// The loss counters so far (each record supersedes the previous one).
    Lost(LostRecord),
    /// The leak check the live session ran on the target.
    LeakCheck(Box<crate::leak_check::LeakCheck>),
    /// The frames the live session's report named.
    Symbols(Box<crate::symbolize::RecordedSymbols>),
    /// Some of the blocks live at the end, by address (version 4; the records of them come
    /// one after another, before the trailer).
    LiveBlocks(Vec<(u64, Block)>),
    /// The fragmentation at the peak as the session's report gave it (version 4, before the
    /// live blocks).
    PeakFragmentation(Box<Option<crate::analysis::FragmentationSnapshot>>),
    /// The end of the session; always the last record.
    Trailer(Box<Trailer>),
}

/// Where a recording is unreadable, and why.
#[derive(Debug, thiserror::Error)]
#[error("{kind} (at byte {offset})")]
pub struct ReadError {
    /// Offset in the file of the header or chunk that is wrong.
    pub offset: u64,
    pub kind: ReadErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadErrorKind {
    #[error("cannot read the recording: {0}")]
    Io(#[from] io::Error),
    #[error("not a memprof recording (bad magic)")]
    BadMagic,
    #[error(
        "recording format version {0} is not supported (this memprof reads versions \
         {FIRST_FORMAT_VERSION} to {FORMAT_VERSION})"
    )]
    Version(u32),
    #[error("corrupt header: {0}")]
    Header(String),
    /// The file stops inside a chunk: the writer was killed while writing it, or the file
    /// was cut.
    #[error("the recording ends early: {what} cut after {available} of {needed} bytes")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    /// The file stops after a complete chunk but before the trailer.
    #[error(
        "the recording ends early: no trailer after the last complete chunk (memprof was killed or crashed)"
    )]
    NoTrailer,
    #[error("corrupt chunk: {0}")]
    Chunk(String),
    #[error("corrupt record {index} of the chunk: {reason}")]
    Record { index: u64, reason: String },
    #[error("data after the trailer")]
    AfterTrailer,
}

impl ReadError {
    /// The file could not be opened.
    pub fn opening(error: io::Error) -> ReadError {
        ReadError {
            offset: 0,
            kind: ReadErrorKind::Io(error),
        }
    }

    /// The file is fine up to where it stops: everything before `offset` was read and can
    /// be reported, with a warning.
    pub fn is_early_end(&self) -> bool {
        matches!(
            self.kind,
            ReadErrorKind::Truncated { .. } | ReadErrorKind::NoTrailer
        )
    }
}

/// A decoded record that does not borrow the reader (an event is in `event`, a stack's
/// frames in `frames`).
enum Decoded {
    Event {
        stack: Option<StackId>,
    },
    Stack {
        truncated: bool,
    },
    Other(Record<'static>),
    /// A record of a kind or type added by a newer memprof, skipped.
    Skipped,
}

pub struct Reader<R: Read> {
    source: R,
    header: Header,
    /// The file's format version.
    version: u32,
    /// Records of kinds or types this reader does not know, skipped so far.
    skipped: u64,
    /// File offset of the next unread byte of `source`.
    offset: u64,
    /// File offset of the chunk in `records`.
    chunk_offset: u64,
    compressed: Vec<u8>,
    records: Vec<u8>,
    pos: usize,
    records_in_chunk: u64,
    decompressor: zstd::bulk::Decompressor<'static>,
    state: DeltaState,
    stacks: u32,
    /// The last event decoded, and its recorded lookup answers: records borrow them rather
    /// than carry a copy.
    event: Event,
    lookups: RecordedLookups,
    frames: Vec<u64>,
    done: bool,
    trailer_seen: bool,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut source: R) -> Result<Reader<R>, ReadError> {
        let at = |offset: u64| move |kind: ReadErrorKind| ReadError { offset, kind };
        let mut prefix = [0u8; 20];
        let got = read_full(&mut source, &mut prefix).map_err(|e| at(0)(e.into()))?;
        if got < MAGIC.len() || prefix[..8] != MAGIC {
            if got < MAGIC.len() && MAGIC.starts_with(&prefix[..got]) {
                return Err(at(0)(truncated("header", 20, got)));
            }
            return Err(at(0)(ReadErrorKind::BadMagic));
        }
        if got < prefix.len() {
            return Err(at(0)(truncated("header", 20, got)));
        }
        let version = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes"));
        if !(FIRST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(at(8)(ReadErrorKind::Version(version)));
        }
        let len = u32::from_le_bytes(prefix[12..16].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(prefix[16..20].try_into().expect("4 bytes"));
        if len > MAX_CHUNK_BYTES {
            return Err(at(12)(ReadErrorKind::Header(format!(
                "header length {len} is implausible"
            ))));
        }
        let mut json = Vec::new();
        let got = (&mut source)
            .take(u64::from(len))
            .read_to_end(&mut json)
            .map_err(|e| at(20)(e.into()))?;
        if got < json.len() {
            return Err(at(20)(truncated("header", u64::from(len), got)));
        }
        if crc32fast::hash(&json) != crc {
            return Err(at(20)(ReadErrorKind::Header("checksum mismatch".into())));
        }
        let header: Header = serde_json::from_slice(&json)
            .map_err(|e| at(20)(ReadErrorKind::Header(e.to_string())))?;
        let decompressor = zstd::bulk::Decompressor::new().map_err(|e| at(20)(e.into()))?;
        Ok(Reader {
            source,
            offset: 20 + u64::from(len),
            chunk_offset: 20 + u64::from(len),
            state: DeltaState::new(version, header.start_monotonic_ns),
            header,
            version,
            skipped: 0,
            compressed: Vec::new(),
            records: Vec::new(),
            pos: 0,
            records_in_chunk: 0,
            decompressor,
            stacks: 0,
            event: Event {
                kind: EventKind::Malloc,
                tid: 0,
                ts_ns: 0,
                addr: 0,
                size: 0,
                old_addr: 0,
                aux: 0,
                flags: 0,
            },
            lookups: RecordedLookups::default(),
            frames: Vec::new(),
            done: false,
            trailer_seen: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Records skipped so far because a newer memprof wrote kinds or types this one does not
    /// know (their events are not in the replay).
    pub fn skipped_records(&self) -> u64 {
        self.skipped
    }

    /// Bytes of the file consumed so far (header and whole chunks).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record; `Ok(None)` after the trailer, at the end of a complete file.
    #[expect(
        clippy::should_implement_trait,
        reason = "records borrow the reader's buffers, which Iterator cannot express"
    )]
    #[inline]
    pub fn next(&mut self) -> Result<Option<Record<'_>>, ReadError> {
        loop {
            if self.done {
                return Ok(None);
            }
            while self.pos >= self.records.len() {
                if !self.next_chunk()? {
                    self.done = true;
                    return Ok(None);
                }
            }
            return match self.decode() {
                Ok(Decoded::Event { stack }) => Ok(Some(Record::Event {
                    event: &self.event,
                    stack,
                    lookups: &self.lookups,
                })),
                Ok(Decoded::Stack { truncated }) => Ok(Some(Record::Stack {
                    frames: &self.frames,
                    truncated,
                })),
                Ok(Decoded::Other(record)) => Ok(Some(record)),
                Ok(Decoded::Skipped) => {
                    self.skipped += 1;
                    continue;
                }
                Err(reason) => Err(self.corrupt(reason)),
            };
        }
    }

    /// The error for a record of the current chunk that does not decode; reading stops.
    #[cold]
    fn corrupt(&mut self, reason: &'static str) -> ReadError {
        self.done = true;
        ReadError {
            offset: self.chunk_offset,
            kind: ReadErrorKind::Record {
                index: self.records_in_chunk,
                reason: reason.to_owned(),
            },
        }
    }

    /// Decodes the record at `pos`: events inline (nearly every record is one), the others
    /// in [`Reader::decode_other`].
    #[inline]
    fn decode(&mut self) -> Result<Decoded, &'static str> {
        let mut cursor = Cursor {
            bytes: &self.records,
            pos: self.pos,
        };
        let tag = cursor.byte()?;
        if tag & 0x0f == 0 {
            return self.decode_other(tag);
        }
        let raw_kind = cursor.event_kind(tag, self.version)?;
        let known = u32::try_from(raw_kind).ok().and_then(EventKind::from_u32);
        let kind = match known {
            Some(kind) => kind,
            // Every event has the same layout, so one of a newer kind is read past (keeping
            // the deltas in step) and left out.
            None if self.version >= 2 => EventKind::Malloc,
            None => return Err("unknown event kind"),
        };
        self.lookups = RecordedLookups::default();
        let stack = cursor.event(
            tag,
            kind,
            &mut self.state,
            self.stacks,
            &mut self.event,
            &mut self.lookups,
        )?;
        self.pos = cursor.pos;
        self.records_in_chunk += 1;
        Ok(match known {
            Some(_) => Decoded::Event { stack },
            None => Decoded::Skipped,
        })
    }

    /// Decodes a record that is not an event (its tag byte is `tag`).
    fn decode_other(&mut self, tag: u8) -> Result<Decoded, &'static str> {
        let mut cursor = Cursor {
            bytes: &self.records,
            pos: self.pos + 1,
        };
        let record = match tag {
            TAG_STACK => {
                let truncated = cursor.stack(&mut self.frames)?;
                self.stacks = self.stacks.checked_add(1).ok_or("too many stacks")?;
                self.pos = cursor.pos;
                self.records_in_chunk += 1;
                return Ok(Decoded::Stack { truncated });
            }
            TAG_MAPS => {
                let maps = serde_json::from_slice(cursor.blob()?)
                    .map_err(|_| "maps record is not a list of mappings")?;
                Record::Maps(maps)
            }
            TAG_RSS => {
                let (ts_ns, bytes) = cursor.rss(&mut self.state)?;
                Record::Rss { ts_ns, bytes }
            }
            TAG_LOST => {
                let lost = serde_json::from_slice(cursor.blob()?)
                    .map_err(|_| "loss counters record is not valid")?;
                Record::Lost(lost)
            }
            TAG_TRAILER => {
                let trailer =
                    serde_json::from_slice(cursor.blob()?).map_err(|_| "trailer is not valid")?;
                if cursor.pos != self.records.len() {
                    return Err("records after the trailer");
                }
                self.trailer_seen = true;
                Record::Trailer(Box::new(trailer))
            }
            super::leak_record::TAG_LEAK_CHECK if self.version >= 2 => {
                Record::LeakCheck(Box::new(super::leak_record::decode(cursor.blob()?)?))
            }
            TAG_SYMBOLS if self.version >= 2 => {
                let symbols: crate::symbolize::RecordedSymbols =
                    serde_json::from_slice(cursor.blob()?)
                        .map_err(|_| "symbols record is not valid")?;
                symbols
                    .check()
                    .map_err(|_| "symbols record names a string or frame it does not hold")?;
                Record::Symbols(Box::new(symbols))
            }
            TAG_PEAK_FRAGMENTATION if self.version >= 4 => {
                let at_peak = serde_json::from_slice(cursor.blob()?)
                    .map_err(|_| "peak fragmentation record is not valid")?;
                Record::PeakFragmentation(Box::new(at_peak))
            }
            TAG_LIVE_BLOCKS if self.version >= 4 => {
                let mut body = Cursor {
                    bytes: cursor.blob()?,
                    pos: 0,
                };
                let base_ns = self.state.nanoseconds(self.state.ts_ticks);
                let count = body.varint()?;
                // Each block takes at least three bytes: a corrupt count cannot make this
                // allocate much.
                if count > body.bytes.len() as u64 / 3 {
                    return Err("live blocks record holds fewer blocks than it says");
                }
                let mut blocks = Vec::with_capacity(count as usize);
                let mut addr = 0;
                for _ in 0..count {
                    addr = body.delta(addr)?;
                    blocks.push((addr, body.block(&mut self.state, base_ns)?));
                }
                if body.pos != body.bytes.len() {
                    return Err("live blocks record longer than its blocks");
                }
                Record::LiveBlocks(blocks)
            }
            FIRST_SKIPPABLE_TAG.. if self.version >= 2 => {
                cursor.blob()?;
                self.pos = cursor.pos;
                self.records_in_chunk += 1;
                return Ok(Decoded::Skipped);
            }
            _ => return Err("unknown record tag"),
        };
        self.pos = cursor.pos;
        self.records_in_chunk += 1;
        Ok(Decoded::Other(record))
    }

    /// Loads the next chunk; false at a clean end of file after the trailer.
    fn next_chunk(&mut self) -> Result<bool, ReadError> {
        let offset = self.offset;
        let fail = |kind| ReadError { offset, kind };
        let mut prefix = [0u8; 12];
        let got = read_full(&mut self.source, &mut prefix).map_err(|e| fail(e.into()))?;
        if got == 0 {
            if self.trailer_seen {
                return Ok(false);
            }
            return Err(fail(ReadErrorKind::NoTrailer));
        }
        if self.trailer_seen {
            return Err(fail(ReadErrorKind::AfterTrailer));
        }
        if got < prefix.len() {
            return Err(fail(truncated("chunk header", 12, got)));
        }
        let compressed_len = u32::from_le_bytes(prefix[0..4].try_into().expect("4 bytes"));
        let raw_len = u32::from_le_bytes(prefix[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes"));
        if compressed_len > MAX_CHUNK_BYTES || raw_len > MAX_CHUNK_BYTES || raw_len == 0 {
            return Err(fail(ReadErrorKind::Chunk(format!(
                "implausible lengths: {compressed_len} compressed, {raw_len} raw"
            ))));
        }
        // Grows the buffer only as far as the bytes actually present: a corrupt length in a
        // short file costs no more memory than the file.
        self.compressed.clear();
        let got = (&mut self.source)
            .take(u64::from(compressed_len))
            .read_to_end(&mut self.compressed)
            .map_err(|e| fail(e.into()))?;
        if got < compressed_len as usize {
            return Err(fail(truncated("chunk", u64::from(compressed_len), got)));
        }
        if crc32fast::hash(&self.compressed) != crc {
            return Err(fail(ReadErrorKind::Chunk("checksum mismatch".into())));
        }
        self.records.clear();
        self.records.reserve(raw_len as usize);
        let written = self
            .decompressor
            .decompress_to_buffer(&self.compressed, &mut self.records)
            .map_err(|e| fail(ReadErrorKind::Chunk(format!("cannot decompress: {e}"))))?;
        if written != raw_len as usize {
            return Err(fail(ReadErrorKind::Chunk(format!(
                "decompressed to {written} bytes, the chunk header says {raw_len}"
            ))));
        }
        self.chunk_offset = offset;
        self.offset += 12 + u64::from(compressed_len);
        self.pos = 0;
        self.records_in_chunk = 0;
        Ok(true)
    }
}

fn truncated(what: &'static str, needed: u64, available: usize) -> ReadErrorKind {
    ReadErrorKind::Truncated {
        what,
        needed,
        available: available as u64,
    }
}

impl<R: Read + Seek> Reader<R> {
    /// The symbols records that close a complete recording, read without decoding the events
    /// before them: the chunks are walked by their lengths, and only the last ones, which the
    /// writer gives to the symbols alone, are decompressed. For a view that names sites as its
    /// replay goes, before the replay reaches them. None when the file has none, or its
    /// chunks cannot be walked (the replay says why).
    pub fn closing_symbols(mut self) -> Option<crate::symbolize::RecordedSymbols> {
        let mut chunks = Vec::new();
        let mut offset = self.offset;
        loop {
            self.source.seek(SeekFrom::Start(offset)).ok()?;
            let mut prefix = [0u8; 12];
            match read_full(&mut self.source, &mut prefix).ok()? {
                0 => break,
                12 => {}
                _ => return None,
            }
            chunks.push(offset);
            let compressed_len = u32::from_le_bytes(prefix[0..4].try_into().expect("4 bytes"));
            offset += 12 + u64::from(compressed_len);
        }
        let mut parts = Vec::new();
        for (from_end, &chunk) in chunks.iter().rev().enumerate() {
            self.source.seek(SeekFrom::Start(chunk)).ok()?;
            self.offset = chunk;
            self.trailer_seen = false;
            if !self.next_chunk().ok()? {
                return None;
            }
            let first = self.records.first().copied();
            if from_end == 0 && first == Some(TAG_TRAILER) {
                continue;
            }
            if first != Some(TAG_SYMBOLS) {
                break;
            }
            let mut in_chunk = Vec::new();
            while self.pos < self.records.len() {
                match self.decode().ok()? {
                    Decoded::Other(Record::Symbols(part)) => in_chunk.push(*part),
                    _ => return None,
                }
            }
            parts.push(in_chunk);
        }
        // Chunks were read from the end: put the parts back in file order.
        let mut symbols: Option<crate::symbolize::RecordedSymbols> = None;
        for part in parts.into_iter().rev().flatten() {
            symbols.get_or_insert_with(Default::default).merge(part);
        }
        symbols
    }
}

/// Reads until `buf` is full or the source ends; returns how much was read.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
