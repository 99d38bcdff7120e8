//! The live view over a recording (`memprof view`): the recording replayed through a
//! [`Recorder`] as `memprof report` does, with a [`Snapshot`] taken every
//! [`RECORDED_INTERVAL_NS`] of the target's time, for a time cursor.

use std::io::Read;

use super::{Allocator, LiveModel, SessionFacts, Snapshot, SymbolNamer};
use crate::event::Event;
use crate::offline::checked_maps;
use crate::recorder::Recorder;
use crate::recording::{
    Header, MappingRecord, ReadAhead, ReadError, Reader, Record, build_id, each_record,
    every_file_untrusted, intern_recorded_stack, process_maps,
};
use crate::stacks::StackId;
use crate::symbolize::RecordedSymbols;

/// Time between two snapshots of a recording, until there are too many.
pub const RECORDED_INTERVAL_NS: u64 = 250_000_000;
/// Snapshots kept: past this, every other one is dropped and the interval doubles.
pub const MAX_RECORDED_SNAPSHOTS: usize = 480;

/// A recording's snapshots, oldest first (the last one is the state at its end).
#[derive(Debug)]
pub struct Recorded {
    pub header: Header,
    pub snapshots: Vec<Snapshot>,
    /// Why the recording stopped before its trailer, if it did.
    pub early_end: Option<ReadError>,
}

/// Replays `reader`, taking a snapshot at each multiple of the interval from the start (of
/// the state before the first event past it); idle stretches take no snapshot. Sites are
/// named with the frames the recording closes with (`symbols`,
/// [`Reader::closing_symbols`]) where it has them.
pub fn recorded_snapshots<R: Read + Send>(
    reader: Reader<R>,
    symbols: Option<RecordedSymbols>,
) -> Result<Recorded, ReadError> {
    let header = reader.header().clone();
    let start = header.start_monotonic_ns;
    let mut recorder = Recorder::new(header.mode);
    let mut maps = header.maps.clone();
    // A recording that names its frames is shown without reading a file of this machine;
    // one that does not, from the files that still have their recorded build-ids (as
    // `memprof report` does).
    let named = symbols.is_some();
    let namer_maps = |maps: &[MappingRecord]| match named {
        true => process_maps(&every_file_untrusted(maps)),
        false => process_maps(&checked_maps(maps, build_id).0),
    };
    let mut namer = SymbolNamer::offline(&namer_maps(&maps), symbols);
    let mut facts = SessionFacts {
        allocator: header.allocator,
        ..SessionFacts::default()
    };
    let mut timeline = Timeline {
        model: LiveModel::new(start),
        snapshots: Vec::new(),
        interval: RECORDED_INTERVAL_NS,
        next: start + RECORDED_INTERVAL_NS,
        last_ts: start,
    };
    let mut ahead = ReadAhead::default();
    let ended = each_record(reader, |record, offset| {
        if let Record::Event { event, stack, .. } = record {
            ahead.push(*event, stack, &mut recorder, |recorder, event, stack| {
                timeline.event(recorder, &mut namer, &facts, event, stack);
            });
            return Ok(());
        }
        // Everything else takes effect in order, after the events before it.
        ahead.apply_all(&mut recorder, |recorder, event, stack| {
            timeline.event(recorder, &mut namer, &facts, event, stack);
        });
        match record {
            Record::Event { .. } => unreachable!("handled above"),
            Record::Stack { frames, truncated } => {
                intern_recorded_stack(&mut recorder, frames, truncated, offset)?;
            }
            Record::Maps(more) => {
                maps.extend(more);
                if namer.update(&namer_maps(&maps)) {
                    timeline.model.forget_names();
                }
            }
            Record::Rss { ts_ns, bytes } => {
                facts.rss_bytes = Some(bytes);
                timeline.last_ts = timeline.last_ts.max(ts_ns);
            }
            Record::Lost(lost) => {
                facts.lost_events = lost.by_kind.iter().sum::<u64>() + lost.inflight_full;
            }
            // The namer has the recorded frames from the start; the view keeps a table of the
            // blocks.
            Record::LeakCheck(_)
            | Record::Symbols(_)
            | Record::LiveBlocks(_)
            | Record::PeakFragmentation(_) => {}
            Record::Trailer(trailer) => {
                timeline.last_ts = timeline.last_ts.max(trailer.end_monotonic_ns);
                let lost = &trailer.lost;
                facts.lost_events = lost.by_kind.iter().sum::<u64>() + lost.inflight_full;
                facts.ended = true;
                let probed = Allocator::from_probes(&trailer.probes);
                if probed != Allocator::Unknown {
                    facts.allocator = Some(probed);
                }
            }
        }
        Ok(())
    })?;
    ahead.apply_all(&mut recorder, |recorder, event, stack| {
        timeline.event(recorder, &mut namer, &facts, event, stack);
    });
    let early_end = match ended.read {
        Ok(()) => None,
        Err(error) if error.is_early_end() => Some(error),
        Err(error) => return Err(error),
    };
    let Timeline {
        mut model,
        mut snapshots,
        last_ts,
        ..
    } = timeline;
    snapshots.push(model.snapshot(&recorder, &mut namer, last_ts, facts));
    Ok(Recorded {
        header,
        snapshots,
        early_end,
    })
}

/// The snapshots taken so far and when the next is due.
struct Timeline {
    model: LiveModel,
    snapshots: Vec<Snapshot>,
    interval: u64,
    /// The next grid point: the state before the first event past it is a snapshot.
    next: u64,
    last_ts: u64,
}

impl Timeline {
    /// Applies `event` to `recorder`, after the snapshot it completes, if it does.
    fn event(
        &mut self,
        recorder: &mut Recorder,
        namer: &mut SymbolNamer,
        facts: &SessionFacts,
        event: &Event,
        stack: Option<StackId>,
    ) {
        if event.ts_ns >= self.next {
            let snapshot = self
                .model
                .snapshot(recorder, namer, self.next, facts.clone());
            self.snapshots.push(snapshot);
            // The first grid point after this event.
            self.next += (event.ts_ns - self.next) / self.interval * self.interval + self.interval;
            if self.snapshots.len() > MAX_RECORDED_SNAPSHOTS {
                let mut index = 0;
                self.snapshots.retain(|_| {
                    index += 1;
                    index % 2 == 0
                });
                self.interval *= 2;
            }
        }
        let effect = recorder.apply(event, stack);
        self.model.observe(&effect);
        self.last_ts = self.last_ts.max(event.ts_ns);
    }
}
