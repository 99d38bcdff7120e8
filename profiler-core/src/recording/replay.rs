//! Replays a recording through a [`Recorder`]: the offline twin of a live session.

use super::read_thread::each_record;
use super::reader::{ReadError, ReadErrorKind, Reader, Record};
use super::{Header, LostRecord, MappingRecord, Trailer};
use crate::analysis::FragmentationSnapshot;
use crate::event::Event;
use crate::heap::{Block, HeapState, RecordedLookups};
use crate::recorder::Recorder;
use crate::stacks::StackId;
use std::collections::VecDeque;
use std::io::Read;

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
/// not an error: [`Replay::early_end`] says where. Corruption is. The file is read and
/// decoded on a thread of its own (`read_thread.rs`). The heap keeps a table of every
/// address; see [`replay_answered`] for a replay without one.
pub fn replay<R: Read + Send>(
    reader: Reader<R>,
    recorder: &mut Recorder,
) -> Result<Replay, ReadError> {
    // The table answers every lookup: the recorded answers are not needed.
    let none = RecordedLookups::default();
    let mut ahead = ReadAhead::default();
    let (replay, _) = replay_with(reader, recorder, |recorder, replay, step| match step {
        Step::Event(event, stack, _) => {
            ahead.push(*event, stack, recorder, |r, e, s| {
                apply(r, replay, e, s, &none)
            });
        }
        Step::Flush => ahead.apply_all(recorder, |r, e, s| apply(r, replay, e, s, &none)),
    })?;
    Ok(replay)
}

/// [`replay`] with a heap that answers its lookups from the recording
/// ([`HeapState::answered`]), and the fragmentation at the peak as the session's report gave
/// it: memory for the blocks live at the end, not for every address the program used nor
/// for those live at the peak. `None` when the recording cannot be replayed so (an older
/// memprof's, or one that stops before the end of its heap): replay it with [`replay`] then.
pub fn replay_answered<R: Read + Send>(
    reader: Reader<R>,
    recorder: &mut Recorder,
) -> Result<Option<Replay>, ReadError> {
    if reader.version() < 4 {
        return Ok(None);
    }
    recorder.heap = HeapState::answered(reader.header().mode);
    recorder.analyses.expect_recorded_peak();
    let (replay, end) = replay_with(reader, recorder, |recorder, replay, step| {
        if let Step::Event(event, stack, lookups) = step {
            apply(recorder, replay, event, stack, lookups);
        }
    })?;
    let complete = replay.trailer.is_some() && replay.early_end.is_none();
    match end {
        HeapEnd {
            live: Some(live),
            at_peak: Some(at_peak),
        } if complete && recorder.heap.end_recorded(&live).is_ok() => {
            recorder.analyses.take_recorded_peak(at_peak);
            Ok(Some(replay))
        }
        _ => Ok(None),
    }
}

/// The end of the heap, as a recording gives it (format 4).
#[derive(Default)]
struct HeapEnd {
    /// The blocks live at the end, by address.
    live: Option<Vec<(u64, Block)>>,
    /// The fragmentation at the peak the session's report gave.
    at_peak: Option<Option<FragmentationSnapshot>>,
}

/// What [`replay_with`] hands its caller.
enum Step<'a> {
    /// An event, its stack and its recorded lookup answers.
    Event(&'a Event, Option<StackId>, &'a RecordedLookups),
    /// Every event handed over must take effect now (another record follows).
    Flush,
}

/// Reads `reader` through: events go to `step` (with the replay so far), every other record
/// takes effect here once `step` has applied the events before it ([`Step::Flush`]). Returns
/// the replay and the blocks live at the end, if the recording has them.
fn replay_with<R: Read + Send>(
    reader: Reader<R>,
    recorder: &mut Recorder,
    mut step: impl FnMut(&mut Recorder, &mut Replay, Step<'_>),
) -> Result<(Replay, HeapEnd), ReadError> {
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
    let mut end = HeapEnd::default();
    let ended = each_record(reader, |record, offset| {
        if let Record::Event {
            event: recorded,
            stack,
            lookups,
        } = record
        {
            step(recorder, &mut replay, Step::Event(recorded, stack, lookups));
            return Ok(());
        }
        // Everything else takes effect in order, after the events before it.
        step(recorder, &mut replay, Step::Flush);
        match record {
            Record::Event { .. } => unreachable!("handled above"),
            Record::Stack { frames, truncated } => {
                intern_recorded_stack(recorder, frames, truncated, offset)?;
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
            Record::LiveBlocks(blocks) => end.live.get_or_insert_with(Vec::new).extend(blocks),
            Record::PeakFragmentation(at_peak) => end.at_peak = Some(*at_peak),
            Record::Trailer(trailer) => replay.trailer = Some(*trailer),
        }
        Ok(())
    })?;
    step(recorder, &mut replay, Step::Flush);
    replay.skipped = ended.skipped;
    match ended.read {
        Ok(()) => {}
        Err(error) if error.is_early_end() => replay.early_end = Some(error),
        Err(error) => return Err(error),
    }
    Ok((replay, end))
}

/// Events read but not applied yet: each event's heap entry is prefetched as it is read and
/// the event applied [`READ_AHEAD`] events later, when the entry is in the cache (as the live
/// collector does with its ring). On python3's recording (21.8 million events, 4.7 million
/// addresses) nearly every lookup otherwise waited on memory.
#[derive(Default)]
pub(crate) struct ReadAhead {
    events: VecDeque<(Event, Option<StackId>)>,
}

/// How many events are read before the first is applied.
const READ_AHEAD: usize = 16;

impl ReadAhead {
    /// Takes `event`, prefetching its heap entry, and hands the event taken
    /// [`READ_AHEAD`] events before it to `apply`.
    #[inline]
    pub(crate) fn push(
        &mut self,
        event: Event,
        stack: Option<StackId>,
        recorder: &mut Recorder,
        mut apply: impl FnMut(&mut Recorder, &Event, Option<StackId>),
    ) {
        recorder.prefetch(event.addr, event.old_addr);
        if self.events.len() == READ_AHEAD
            && let Some((event, stack)) = self.events.pop_front()
        {
            apply(recorder, &event, stack);
        }
        self.events.push_back((event, stack));
    }

    /// Hands every event taken and not applied yet to `apply`, in order.
    pub(crate) fn apply_all(
        &mut self,
        recorder: &mut Recorder,
        mut apply: impl FnMut(&mut Recorder, &Event, Option<StackId>),
    ) {
        for (event, stack) in self.events.drain(..) {
            apply(recorder, &event, stack);
        }
    }
}

#[inline]
fn apply(
    recorder: &mut Recorder,
    replay: &mut Replay,
    event: &Event,
    stack: Option<StackId>,
    lookups: &RecordedLookups,
) {
    recorder.apply_recorded(event, stack, lookups);
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
