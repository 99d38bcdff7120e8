//! Reading a recording on a thread of its own: the file is read, decompressed and decoded a
//! few batches ahead of whatever applies its records (`memprof report`'s replay, `memprof
//! view`'s snapshots). Decoding was a third of a replay, and the recorder, waiting on memory
//! for most events, left the second core idle.

use super::reader::{ReadError, ReadErrorKind, Reader, Record};
use crate::event::Event;
use crate::heap::RecordedLookups;
use crate::stacks::StackId;
use std::io::Read;
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender};

/// Batches decoded ahead of the consumer: enough to cover a slow chunk, few enough to stay
/// in the caches.
const BATCHES_IN_FLIGHT: usize = 4;
/// Records per batch.
const BATCH_RECORDS: usize = 2048;

/// How the reading of a recording ended.
pub(crate) struct Ended {
    /// At the end of the file, or why not (the recording stops early, or is corrupt there);
    /// every record before it was handed over.
    pub read: Result<(), ReadError>,
    /// Records of a newer memprof, skipped.
    pub skipped: u64,
}

/// Calls `each` with every record of `reader` in order, and with the file offset of the
/// chunk it was read from, while another thread reads ahead. An error from `each` stops the
/// reading and is returned.
pub(crate) fn each_record<R: Read + Send>(
    reader: Reader<R>,
    mut each: impl FnMut(Record<'_>, u64) -> Result<(), ReadError>,
) -> Result<Ended, ReadError> {
    std::thread::scope(|scope| {
        let (full, batches) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
        let (emptied, returned) = mpsc::channel();
        std::thread::Builder::new()
            .name("memprof-read".into())
            .spawn_scoped(scope, move || read_batches(reader, &full, &returned))
            .map_err(|error| ReadError {
                offset: 0,
                kind: ReadErrorKind::Io(error),
            })?;
        // Returning drops `batches`: the reading thread's next send fails, and it ends.
        for message in batches {
            let mut batch = match message {
                Message::Batch(batch) => batch,
                Message::End(ended) => return Ok(ended),
            };
            for item in batch.items.drain(..) {
                match item {
                    Item::Event(event, stack, lookups, offset) => {
                        each(
                            Record::Event {
                                event: &event,
                                stack,
                                lookups: &lookups,
                            },
                            offset,
                        )?;
                    }
                    Item::Stack {
                        frames,
                        truncated,
                        offset,
                    } => {
                        let frames = &batch.frames[frames];
                        each(Record::Stack { frames, truncated }, offset)?;
                    }
                    Item::Other(record, offset) => each(record, offset)?,
                }
            }
            batch.frames.clear();
            // The reading thread may have ended already.
            let _ = emptied.send(batch);
        }
        // Only a reading thread that panicked ends without saying how; the scope passes
        // its panic on.
        Ok(Ended {
            read: Ok(()),
            skipped: 0,
        })
    })
}

/// What the reading thread hands over, in recording order.
enum Message {
    Batch(Batch),
    /// The last message.
    End(Ended),
}

/// Decoded records, owned (the reader's records borrow its buffers).
#[derive(Default)]
struct Batch {
    items: Vec<Item>,
    /// The frames of the batch's stack definitions, one after another.
    frames: Vec<u64>,
}

/// A record and the offset of its chunk in the file.
enum Item {
    Event(Event, Option<StackId>, RecordedLookups, u64),
    Stack {
        /// Where its frames are in [`Batch::frames`].
        frames: Range<usize>,
        truncated: bool,
        offset: u64,
    },
    /// Any other record (none of these borrows).
    Other(Record<'static>, u64),
}

/// The reading thread: decodes `reader` into batches sent to `full`, reusing the batches the
/// consumer emptied (`returned`), until the end of the recording, an error, or a consumer
/// that stopped listening.
fn read_batches<R: Read>(
    mut reader: Reader<R>,
    full: &SyncSender<Message>,
    returned: &Receiver<Batch>,
) {
    let mut batch = Batch::default();
    let read = loop {
        let offset = reader.offset();
        let record = match reader.next() {
            Ok(Some(record)) => record,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        let item = match record {
            Record::Event {
                event,
                stack,
                lookups,
            } => Item::Event(*event, stack, *lookups, offset),
            Record::Stack { frames, truncated } => {
                let start = batch.frames.len();
                batch.frames.extend_from_slice(frames);
                Item::Stack {
                    frames: start..batch.frames.len(),
                    truncated,
                    offset,
                }
            }
            Record::Maps(maps) => Item::Other(Record::Maps(maps), offset),
            Record::Rss { ts_ns, bytes } => Item::Other(Record::Rss { ts_ns, bytes }, offset),
            Record::Lost(lost) => Item::Other(Record::Lost(lost), offset),
            Record::LeakCheck(check) => Item::Other(Record::LeakCheck(check), offset),
            Record::Symbols(part) => Item::Other(Record::Symbols(part), offset),
            Record::Trailer(trailer) => Item::Other(Record::Trailer(trailer), offset),
            Record::LiveBlocks(blocks) => Item::Other(Record::LiveBlocks(blocks), offset),
            Record::PeakFragmentation(at_peak) => {
                Item::Other(Record::PeakFragmentation(at_peak), offset)
            }
        };
        batch.items.push(item);
        if batch.items.len() == BATCH_RECORDS {
            let next = returned.try_recv().unwrap_or_default();
            if full
                .send(Message::Batch(std::mem::replace(&mut batch, next)))
                .is_err()
            {
                return;
            }
        }
    };
    if !batch.items.is_empty() && full.send(Message::Batch(batch)).is_err() {
        return;
    }
    let skipped = reader.skipped_records();
    let _ = full.send(Message::End(Ended { read, skipped }));
}
