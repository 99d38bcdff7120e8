//! Replays a recording through a [`Recorder`]: the offline twin of a live session.

use super::reader::{ReadError, ReadErrorKind, Reader, Record};
use super::{Header, LostRecord, MappingRecord, Trailer};
use crate::event::Event;
use crate::recorder::Recorder;
use crate::stacks::StackId;
use std::collections::VecDeque;
use std::io::Read;
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender};

/// What a replay found besides the heap (which is in the recorder).
#[derive(Debug)]
pub struct Replay {
    pub header: Header,
    /// The header's maps, then every later update, in recording order.
    pub maps: Vec<MappingRecord>,
    /// RSS samples replayed (into `recorder.analyses`).
    pub rss_samples: u64,
    pub trailer: Option<Trailer>,
    /// The last loss counters recorded before the trailer (the trailer's are final).
    pub lost: Option<LostRecord>,
    /// Why the recording stopped before its trailer (memprof was killed, or the file was
    /// cut); everything before it was replayed.
    pub early_end: Option<ReadError>,
    /// Time of the last event or sample: the end of an unfinished recording.
    pub last_ts_ns: u64,
    pub events: u64,
    /// Records of kinds or types a newer memprof added, left out (see the format's notes).
    pub skipped: u64,
    /// The leak check the live session ran, if it did.
    pub leak_check: Option<crate::leak_check::LeakCheck>,
    /// The frames the live session's report named, if it recorded them.
    pub symbols: Option<crate::symbolize::RecordedSymbols>,
}

/// Applies every event of `reader` to `recorder` (a fresh one), interning each stack definition as it comes
/// (in recording order, so the ids match the recorded ones). A recording that stops early is
/// not an error: [`Replay::early_end`] says where. Corruption is.
///
/// The recording is read and decoded on a thread of its own, a few batches ahead of the
/// recorder ([`read_batches`]): decompressing and decoding were a third of `memprof report`'s
/// time, and the recorder, waiting on memory for most events, leaves the other core idle.
pub fn replay<R: Read + Send>(
    reader: Reader<R>,
    recorder: &mut Recorder,
) -> Result<Replay, ReadError> {
    let header = reader.header().clone();
    let mut replay = Replay {
        maps: header.maps.clone(),
        last_ts_ns: header.start_monotonic_ns,
        header,
        rss_samples: 0,
        trailer: None,
        lost: None,
        early_end: None,
        events: 0,
        skipped: 0,
        leak_check: None,
        symbols: None,
    };
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
        let mut ahead = ReadAhead::default();
        // Dropping `batches` on any return below ends the reading thread's next send.
        for message in batches {
            let mut batch = match message {
                Message::Batch(batch) => batch,
                Message::End { read, skipped } => {
                    ahead.apply_all(recorder, &mut replay);
                    replay.skipped = skipped;
                    match read {
                        Ok(()) => {}
                        Err(error) if error.is_early_end() => replay.early_end = Some(error),
                        Err(error) => return Err(error),
                    }
                    break;
                }
            };
            for item in batch.items.drain(..) {
                let record = match item {
                    Item::Event(event, stack) => {
                        ahead.push(event, stack, recorder, &mut replay);
                        continue;
                    }
                    Item::Stack {
                        frames,
                        truncated,
                        offset,
                    } => {
                        ahead.apply_all(recorder, &mut replay);
                        intern_recorded_stack(recorder, &batch.frames[frames], truncated, offset)?;
                        continue;
                    }
                    Item::Other(record) => record,
                };
                // Everything else takes effect in order, after the events before it.
                ahead.apply_all(recorder, &mut replay);
                match record {
                    Record::Event { .. } | Record::Stack { .. } => {
                        unreachable!("events and stacks are items of their own")
                    }
                    Record::Maps(maps) => replay.maps.extend(maps),
                    Record::Rss { ts_ns, bytes } => {
                        recorder.analyses.observe_rss(ts_ns, bytes);
                        replay.rss_samples += 1;
                        replay.last_ts_ns = replay.last_ts_ns.max(ts_ns);
                    }
                    Record::Lost(lost) => replay.lost = Some(lost),
                    Record::LeakCheck(check) => replay.leak_check = Some(*check),
                    Record::Symbols(part) => replay
                        .symbols
                        .get_or_insert_with(Default::default)
                        .merge(*part),
                    Record::Trailer(trailer) => replay.trailer = Some(*trailer),
                }
            }
            batch.frames.clear();
            // The reading thread may be gone already (it sent its end).
            let _ = emptied.send(batch);
        }
        ahead.apply_all(recorder, &mut replay);
        Ok(replay)
    })
}

/// Batches decoded ahead of the recorder: enough to cover a slow chunk, few enough to stay in
/// the caches.
const BATCHES_IN_FLIGHT: usize = 4;
/// Records per batch.
const BATCH_RECORDS: usize = 2048;

/// What the reading thread hands the recorder, in recording order.
enum Message {
    Batch(Batch),
    /// The last message: how reading ended (at the end of the file, or why not) and how many
    /// records of a newer memprof were skipped.
    End {
        read: Result<(), ReadError>,
        skipped: u64,
    },
}

/// Decoded records, owned (the reader's records borrow its buffers).
#[derive(Default)]
struct Batch {
    items: Vec<Item>,
    /// The frames of the batch's stack definitions, one after another.
    frames: Vec<u64>,
}

enum Item {
    Event(Event, Option<StackId>),
    Stack {
        /// Where its frames are in [`Batch::frames`].
        frames: Range<usize>,
        truncated: bool,
        /// Where in the file it was read, for an error about it.
        offset: u64,
    },
    /// Any other record (none of these borrows).
    Other(Record<'static>),
}

/// The reading thread: decodes `reader` into batches sent to `full`, reusing the batches the
/// recorder has emptied (`returned`), until the end of the recording, an error, or a recorder
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
            Record::Event { event, stack } => Item::Event(*event, stack),
            Record::Stack { frames, truncated } => {
                let start = batch.frames.len();
                batch.frames.extend_from_slice(frames);
                Item::Stack {
                    frames: start..batch.frames.len(),
                    truncated,
                    offset,
                }
            }
            Record::Maps(maps) => Item::Other(Record::Maps(maps)),
            Record::Rss { ts_ns, bytes } => Item::Other(Record::Rss { ts_ns, bytes }),
            Record::Lost(lost) => Item::Other(Record::Lost(lost)),
            Record::LeakCheck(check) => Item::Other(Record::LeakCheck(check)),
            Record::Symbols(part) => Item::Other(Record::Symbols(part)),
            Record::Trailer(trailer) => Item::Other(Record::Trailer(trailer)),
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
    let _ = full.send(Message::End { read, skipped });
}

/// Events read but not applied yet: each event's heap entry is prefetched as it is read and
/// the event applied [`READ_AHEAD`] events later, when the entry is in the cache (as the live
/// collector does with its ring). On python3's recording (21.8 million events, 4.7 million
/// addresses) nearly every lookup otherwise waited on memory.
#[derive(Default)]
struct ReadAhead {
    events: VecDeque<(Event, Option<StackId>)>,
}

/// How many events are read before the first is applied.
const READ_AHEAD: usize = 16;

impl ReadAhead {
    #[inline]
    fn push(
        &mut self,
        event: Event,
        stack: Option<StackId>,
        recorder: &mut Recorder,
        replay: &mut Replay,
    ) {
        recorder.prefetch(event.addr, event.old_addr);
        if self.events.len() == READ_AHEAD
            && let Some((event, stack)) = self.events.pop_front()
        {
            apply(recorder, replay, &event, stack);
        }
        self.events.push_back((event, stack));
    }

    fn apply_all(&mut self, recorder: &mut Recorder, replay: &mut Replay) {
        for (event, stack) in self.events.drain(..) {
            apply(recorder, replay, &event, stack);
        }
    }
}

#[inline]
fn apply(recorder: &mut Recorder, replay: &mut Replay, event: &Event, stack: Option<StackId>) {
    recorder.apply(event, stack);
    replay.last_ts_ns = replay.last_ts_ns.max(event.ts_ns);
    replay.events += 1;
}

/// Interns a stack record: a recording lists each stack once, in id order, so the id it gets
/// must be the next one.
pub(crate) fn intern_recorded_stack(
    recorder: &mut Recorder,
    frames: &[u64],
    truncated: bool,
    offset: u64,
) -> Result<(), ReadError> {
    let expected = recorder.stacks.len();
    let id = recorder.stacks.intern(frames, truncated);
    if id.0 as usize != expected {
        return Err(ReadError {
            offset,
            kind: ReadErrorKind::Chunk(format!("stack {expected} repeats stack {}", id.0)),
        });
    }
    Ok(())
}
