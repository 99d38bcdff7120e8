//! Where a recording writer's chunks go: compressed, framed and written on the writer's own
//! thread, or handed to a thread of their own (a live session's recording), so that zstd does
//! not run on the collector's thread, which the target waits on when memprof falls behind.
//! Either way a chunk reaches the file with one `write_all`, in order.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// zstd level 1: on these chunks it compresses as well as level 3 (zstd's default; python3
/// and sqlite3 recordings came out a few percent smaller) and costs less CPU.
const ZSTD_LEVEL: i32 = 1;
/// Chunks handed over and not yet written: one being compressed, one waiting. A writer that
/// gets ahead of that waits (the records stay bounded).
const CHUNKS_IN_FLIGHT: usize = 2;

/// The chunks' way to the file.
pub(crate) enum ChunkOut<W: Write> {
    /// On the writer's thread.
    Here(Compressor<W>),
    /// On a thread of their own.
    Apart(Apart<W>),
}

impl<W: Write> ChunkOut<W> {
    /// Chunks compressed on the caller's thread into `out`, after `written` bytes.
    pub fn here(out: W, written: u64) -> io::Result<ChunkOut<W>> {
        Ok(ChunkOut::Here(Compressor::new(out, written)?))
    }

    /// Chunks compressed and written into `out` (after `written` bytes) by a thread of
    /// their own.
    pub fn apart(out: W, written: u64) -> io::Result<ChunkOut<W>>
    where
        W: Send + 'static,
    {
        let compressor = Compressor::new(out, written)?;
        let bytes_written = compressor.bytes_written.clone();
        let (full, chunks) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT - 1);
        let (emptied, recycled) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("memprof-compress".into())
            .spawn(move || compress_each(compressor, &chunks, &emptied))?;
        Ok(ChunkOut::Apart(Apart {
            full: Some(full),
            recycled,
            thread: Some(thread),
            bytes_written,
        }))
    }

    /// Writes `records` as one chunk, and leaves it empty for the next.
    pub fn put(&mut self, records: &mut Vec<u8>) -> io::Result<()> {
        match self {
            ChunkOut::Here(compressor) => {
                compressor.write(records)?;
                records.clear();
                Ok(())
            }
            ChunkOut::Apart(apart) => apart.put(records),
        }
    }

    /// Bytes in the file (header and chunks written so far).
    pub fn bytes_written(&self) -> u64 {
        match self {
            ChunkOut::Here(compressor) => compressor.bytes_written.load(Ordering::Relaxed),
            ChunkOut::Apart(apart) => apart.bytes_written.load(Ordering::Relaxed),
        }
    }

    /// Every chunk written: the output back.
    pub fn finish(self) -> io::Result<W> {
        match self {
            ChunkOut::Here(compressor) => Ok(compressor.out),
            ChunkOut::Apart(mut apart) => apart.join().map(|compressor| compressor.out),
        }
    }
}

/// Compresses records into framed chunks and writes them.
pub(crate) struct Compressor<W: Write> {
    out: W,
    zstd: zstd::bulk::Compressor<'static>,
    /// The framed chunk being written, reused between chunks.
    chunk: Vec<u8>,
    bytes_written: Arc<AtomicU64>,
}

impl<W: Write> Compressor<W> {
    fn new(out: W, written: u64) -> io::Result<Compressor<W>> {
        Ok(Compressor {
            out,
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
            chunk: Vec::new(),
            bytes_written: Arc::new(AtomicU64::new(written)),
        })
    }

    /// Compresses `records` and writes them as one chunk with one `write_all` (one `write()`
    /// on a file), so a kill leaves either the whole chunk or a cut one that the reader
    /// recognizes: compressed length, raw length, CRC of the compressed bytes, then them.
    fn write(&mut self, records: &[u8]) -> io::Result<()> {
        let bound = zstd::zstd_safe::compress_bound(records.len());
        self.chunk.clear();
        self.chunk.resize(12 + bound, 0);
        let compressed = self
            .zstd
            .compress_to_buffer(records, &mut self.chunk[12..])?;
        self.chunk.truncate(12 + compressed);
        let crc = crc32fast::hash(&self.chunk[12..]);
        self.chunk[0..4].copy_from_slice(&(compressed as u32).to_le_bytes());
        self.chunk[4..8].copy_from_slice(&(records.len() as u32).to_le_bytes());
        self.chunk[8..12].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.chunk)?;
        self.bytes_written
            .fetch_add(self.chunk.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The writer's end of a compressing thread.
pub(crate) struct Apart<W: Write> {
    /// Full record buffers to the thread (`None` once closed).
    full: Option<SyncSender<Vec<u8>>>,
    /// Buffers the thread has written, back for reuse.
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<Compressor<W>>>>,
    bytes_written: Arc<AtomicU64>,
}

impl<W: Write> Apart<W> {
    fn put(&mut self, records: &mut Vec<u8>) -> io::Result<()> {
        let spare = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(records.capacity()));
        let chunk = std::mem::replace(records, spare);
        let sent = match &self.full {
            Some(full) => full.send(chunk).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread stopped on a write error: that error.
        match self.join() {
            Ok(_) => Err(io::Error::other("the recording's writer thread ended")),
            Err(error) => Err(error),
        }
    }

    /// Closes the queue and waits for the thread to write what it holds.
    fn join(&mut self) -> io::Result<Compressor<W>> {
        self.full = None;
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("the recording's writer thread panicked"))?,
            None => Err(io::Error::other("the recording's writer thread ended")),
        }
    }
}

impl<W: Write> Drop for Apart<W> {
    /// A writer dropped unfinished (its session failed) still leaves every chunk it handed
    /// over in the file.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

/// The thread: writes each chunk as it comes, hands its buffer back, and returns the
/// compressor once the writer closes the queue; stops at the first error.
fn compress_each<W: Write>(
    mut compressor: Compressor<W>,
    chunks: &Receiver<Vec<u8>>,
    emptied: &mpsc::Sender<Vec<u8>>,
) -> io::Result<Compressor<W>> {
    for mut records in chunks {
        compressor.write(&records)?;
        records.clear();
        // The writer may be gone already.
        let _ = emptied.send(records);
    }
    Ok(compressor)
}
