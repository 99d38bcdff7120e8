use super::*;
use crate::event::Event;
use crate::recorder::Recorder;
use crate::stacks::StackId;
use profiler_common::{EventKind, FLAG_STACK_TRUNCATED};
use proptest::prelude::*;

/// Events written without their lookups carry no answers.
const NO_ANSWERS: crate::heap::RecordedLookups = [None, None];

fn header() -> Header {
    Header {
        memprof_version: "0.1.0".into(),
        kernel: "6.18.0".into(),
        command: vec!["./prog".into(), "arg".into()],
        executable: Some("/usr/bin/my prog".into()),
        pid: 77,
        mode: Mode::Run,
        start_unix_ns: 1_700_000_000_000_000_000,
        start_monotonic_ns: 5_000_000,
        maps: vec![MappingRecord {
            start: 0x40_0000,
            end: 0x40_2000,
            perms: "r-xp".into(),
            offset: 0x1000,
            path: "/usr/bin/my prog".into(),
            deleted: false,
            build_id: Some("abcd".into()),
        }],
        unwinding: Some(Unwinding {
            mode: "frame-pointers".into(),
            max_depth: 64,
        }),
        ops: Some(1_000),
        capture: None,
        allocator: Some(crate::analysis::allocator::Allocator::Jemalloc),
        lineage: Some(Lineage {
            parent_pid: Some(76),
            image: 2,
        }),
    }
}

fn trailer() -> Trailer {
    Trailer {
        end_monotonic_ns: 9_000,
        exit: Some(ExitStatus {
            code: Some(3),
            signal: None,
        }),
        lost: LostRecord {
            by_kind: vec![0, 2, 0],
            stack_errors: 1,
            inflight_full: 0,
        },
        malformed: 0,
        probes: vec![],
        peak_rss_bytes: Some(4096),
        warnings: vec!["a warning".into()],
        ops: None,
        held: None,
    }
}

/// Every record kind and every optional field, including values at the edges of their types.
fn write_sample() -> Vec<u8> {
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    writer
        .event(
            &Event::of(EventKind::Malloc)
                .tid(1)
                .at(6_000_000)
                .addr(0x1000)
                .size(32),
            Some(StackId(0)),
            Some((&[0x40_1000, 0x40_0100], false)),
        )
        .unwrap();
    writer.rss(6_500_000, 1 << 20);
    let mut realloc = Event::of(EventKind::Realloc)
        .tid(u32::MAX)
        .at(5_900_000)
        .addr(0x2000)
        .size(64);
    realloc.old_addr = 0x1000;
    realloc.flags = FLAG_STACK_TRUNCATED;
    writer
        .event(&realloc, Some(StackId(1)), Some((&[u64::MAX, 0, 1], true)))
        .unwrap();
    writer.flush_chunk().unwrap();
    writer
        .maps(&[MappingRecord {
            path: "".into(),
            build_id: None,
            ..header().maps[0].clone()
        }])
        .unwrap();
    // Zero losses are not recorded, nor a repeat of the last counters.
    writer.lost(&LostRecord::default()).unwrap();
    writer.lost(&lost_so_far()).unwrap();
    writer.lost(&lost_so_far()).unwrap();
    let mut memalign = Event::of(EventKind::Memalign)
        .tid(1)
        .at(7_000_000)
        .addr(u64::MAX)
        .size(u64::MAX);
    memalign.aux = 4096;
    writer.event(&memalign, Some(StackId(0)), None).unwrap();
    writer
        .event(
            &Event::of(EventKind::Free).tid(1).at(7_001_000).addr(0x2000),
            None,
            None,
        )
        .unwrap();
    writer.finish(&trailer()).unwrap()
}

fn lost_so_far() -> LostRecord {
    LostRecord {
        by_kind: vec![0, 1],
        stack_errors: 0,
        inflight_full: 2,
    }
}

fn read_all(bytes: &[u8]) -> (Vec<String>, Option<ReadError>) {
    let mut reader = match Reader::new(bytes) {
        Ok(reader) => reader,
        Err(error) => return (vec![], Some(error)),
    };
    let mut records = Vec::new();
    loop {
        match reader.next() {
            Ok(Some(record)) => records.push(format!("{record:?}")),
            Ok(None) => return (records, None),
            Err(error) => return (records, Some(error)),
        }
    }
}

#[test]
fn round_trips_every_record_and_field() {
    let bytes = write_sample();
    let mut reader = Reader::new(&bytes[..]).unwrap();
    assert_eq!(*reader.header(), header());
    let mut expect = |want: Record<'_>| assert_eq!(reader.next().unwrap().unwrap(), want);
    expect(Record::Stack {
        frames: &[0x40_1000, 0x40_0100],
        truncated: false,
    });
    expect(Record::Event {
        event: &Event::of(EventKind::Malloc)
            .tid(1)
            .at(6_000_000)
            .addr(0x1000)
            .size(32),
        stack: Some(StackId(0)),
        lookups: &NO_ANSWERS,
    });
    expect(Record::Rss {
        ts_ns: 6_500_000,
        bytes: 1 << 20,
    });
    expect(Record::Stack {
        frames: &[u64::MAX, 0, 1],
        truncated: true,
    });
    let mut realloc = Event::of(EventKind::Realloc)
        .tid(u32::MAX)
        .at(5_900_000)
        .addr(0x2000)
        .size(64);
    realloc.old_addr = 0x1000;
    realloc.flags = FLAG_STACK_TRUNCATED;
    expect(Record::Event {
        event: &realloc,
        stack: Some(StackId(1)),
        lookups: &NO_ANSWERS,
    });
    let Some(Record::Maps(maps)) = reader.next().unwrap() else {
        panic!("maps record expected")
    };
    assert_eq!(maps[0].path, std::path::Path::new(""));
    assert_eq!(reader.next().unwrap().unwrap(), Record::Lost(lost_so_far()));
    let mut memalign = Event::of(EventKind::Memalign)
        .tid(1)
        .at(7_000_000)
        .addr(u64::MAX)
        .size(u64::MAX);
    memalign.aux = 4096;
    let mut expect = |want: Record<'_>| assert_eq!(reader.next().unwrap().unwrap(), want);
    expect(Record::Event {
        event: &memalign,
        stack: Some(StackId(0)),
        lookups: &NO_ANSWERS,
    });
    expect(Record::Event {
        event: &Event::of(EventKind::Free).tid(1).at(7_001_000).addr(0x2000),
        stack: None,
        lookups: &NO_ANSWERS,
    });
    expect(Record::Trailer(Box::new(trailer())));
    assert!(reader.next().unwrap().is_none());
    assert_eq!(reader.offset(), bytes.len() as u64);
}

#[test]
fn replay_rebuilds_the_live_recorder_exactly() {
    let (bytes, live) = write_synthetic_churn(Vec::new(), 200_000).unwrap();
    let mut offline = Recorder::new(Mode::Run);
    let replayed = replay(Reader::new(&bytes[..]).unwrap(), &mut offline).unwrap();
    assert!(replayed.early_end.is_none());
    assert!(replayed.trailer.is_some());
    assert_eq!(replayed.events, 200_000);
    assert_eq!(offline.events(), live.events());
    assert_eq!(offline.stacks.len(), live.stacks.len());
    assert_eq!(offline.heap.stats(), live.heap.stats());
    let blocks = |r: &Recorder| r.heap.blocks().collect::<Vec<_>>();
    let mut offline_blocks = blocks(&offline);
    let mut live_blocks = blocks(&live);
    offline_blocks.sort_by_key(|(a, _)| *a);
    live_blocks.sort_by_key(|(a, _)| *a);
    assert_eq!(offline_blocks, live_blocks);
    let sites = |r: &Recorder| r.sites.iter().collect::<Vec<_>>();
    assert_eq!(sites(&offline), sites(&live));
    for id in 0..live.stacks.len() as u32 {
        assert_eq!(
            offline.stacks.get(StackId(id)),
            live.stacks.get(StackId(id))
        );
    }
}

/// The brief's budget is 10 bytes per event on churn; this synthetic churn (random sizes,
/// sites, timings, a 1024-block live set) is harder to compress than samples/c/churn.c.
#[test]
fn churn_costs_under_ten_bytes_per_event() {
    let events = 1_000_000;
    let (bytes, _) = write_synthetic_churn(Vec::new(), events).unwrap();
    let per_event = bytes.len() as f64 / events as f64;
    assert!(per_event < 10.0, "{per_event:.2} bytes per event");
}

#[test]
fn a_recording_cut_between_chunks_ends_early_without_a_trailer() {
    let (bytes, _) = write_synthetic_churn(Vec::new(), 3 * u64::from(CHUNK_EVENTS)).unwrap();
    let boundaries = chunk_boundaries(&bytes);
    assert_eq!(
        boundaries.len(),
        5 + 1,
        "header end + 3 event chunks + the live blocks' chunk + trailer chunk"
    );
    // Cut right after the second event chunk: two chunks replay, then "no trailer".
    let cut = &bytes[..boundaries[2] as usize];
    let mut recorder = Recorder::new(Mode::Run);
    let replayed = replay(Reader::new(cut).unwrap(), &mut recorder).unwrap();
    assert_eq!(replayed.events, 2 * u64::from(CHUNK_EVENTS));
    let end = replayed.early_end.expect("the recording ends early");
    assert!(matches!(end.kind, ReadErrorKind::NoTrailer));
    assert_eq!(end.offset, boundaries[2]);
    assert_eq!(
        end.to_string(),
        format!(
            "the recording ends early: no trailer after the last complete chunk (memprof was \
             killed or crashed) (at byte {})",
            boundaries[2]
        )
    );
    // Cut inside the third chunk: the same two chunks, then "chunk cut".
    let cut = &bytes[..boundaries[2] as usize + 100];
    let mut recorder = Recorder::new(Mode::Run);
    let replayed = replay(Reader::new(cut).unwrap(), &mut recorder).unwrap();
    assert_eq!(replayed.events, 2 * u64::from(CHUNK_EVENTS));
    let end = replayed.early_end.unwrap();
    assert!(
        end.to_string()
            .starts_with("the recording ends early: chunk cut after 88 of "),
        "{end}"
    );
}

/// A memprof killed before its trailer leaves the loss counters of its last chunk: a report
/// of the file says what was lost, rather than nothing.
#[test]
fn a_recording_without_trailer_keeps_its_last_loss_counters() {
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    let mut malloc = Event::of(EventKind::Malloc)
        .tid(1)
        .at(6_000_000)
        .addr(0x1000)
        .size(32);
    for lost in [1, 5] {
        writer.event(&malloc, None, None).unwrap();
        malloc.ts_ns += 1_000;
        writer
            .lost(&LostRecord {
                by_kind: vec![0, lost],
                ..LostRecord::default()
            })
            .unwrap();
        writer.flush_chunk().unwrap();
    }
    writer.event(&malloc, None, None).unwrap();
    writer.flush_chunk().unwrap();
    let bytes = writer.finish(&trailer()).unwrap();
    let boundaries = chunk_boundaries(&bytes);
    let without_trailer = &bytes[..boundaries[boundaries.len() - 2] as usize];
    let replayed = replay(
        Reader::new(without_trailer).unwrap(),
        &mut Recorder::new(Mode::Run),
    )
    .unwrap();
    assert!(replayed.trailer.is_none());
    assert_eq!(replayed.events, 3);
    assert_eq!(replayed.lost.unwrap().by_kind, vec![0, 5]);
    // With its trailer, the trailer's counters are the final ones.
    let replayed = replay(
        Reader::new(&bytes[..]).unwrap(),
        &mut Recorder::new(Mode::Run),
    )
    .unwrap();
    assert_eq!(replayed.trailer.unwrap().lost, trailer().lost);
}

#[test]
fn corruption_is_one_error_with_its_offset() {
    let bytes = write_sample();
    let boundaries = chunk_boundaries(&bytes);
    let mut flipped = bytes.clone();
    flipped[boundaries[1] as usize + 20] ^= 0x40;
    let (records, error) = read_all(&flipped);
    assert_eq!(records.len(), 5, "the first chunk is whole");
    let error = error.unwrap();
    assert!(!error.is_early_end());
    assert_eq!(
        error.to_string(),
        format!(
            "corrupt chunk: checksum mismatch (at byte {})",
            boundaries[1]
        )
    );
    let (_, error) = read_all(b"GIF89a and the rest");
    assert_eq!(
        error.unwrap().to_string(),
        "not a memprof recording (bad magic) (at byte 0)"
    );
    let mut version = bytes.clone();
    version[8] = 9;
    let (_, error) = read_all(&version);
    assert_eq!(
        error.unwrap().to_string(),
        "recording format version 9 is not supported (this memprof reads versions 1 to 4) (at byte 8)"
    );
}

/// File offsets where each chunk starts (the first is the end of the header), and the end.
fn chunk_boundaries(bytes: &[u8]) -> Vec<u64> {
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut offsets = vec![20 + header_len as u64];
    let mut at = 20 + header_len;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 12 + len;
        offsets.push(at as u64);
    }
    offsets
}

/// Records per complete chunk of a valid recording, counted by reading it.
fn records_per_chunk(bytes: &[u8]) -> Vec<(u64, usize)> {
    let mut reader = Reader::new(bytes).unwrap();
    let mut per_chunk: Vec<(u64, usize)> = Vec::new();
    let mut current = reader.offset();
    let mut count = 0;
    while let Some(_record) = reader.next().unwrap() {
        count += 1;
        // offset() moves when a chunk is loaded: the record just read came from it.
        if reader.offset() != current {
            if count > 1 {
                per_chunk.push((current, count - 1));
            }
            current = reader.offset();
            count = 1;
        }
    }
    per_chunk.push((current, count));
    per_chunk
}

fn fuzz_input() -> Vec<u8> {
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    let mut recorder = Recorder::new(Mode::Run);
    let mut record = Vec::new();
    for i in 0..300u64 {
        let header = profiler_common::EventHeader {
            kind: if i % 2 == 0 { 1 } else { 10 },
            tid: 1 + (i % 3) as u32,
            ts_ns: 10_000 + i * 7,
            addr: 0x1000 + (i / 2) * 16,
            size: 8 * (i % 5),
            stack_depth: if i % 2 == 0 { 2 } else { 0 },
            ..Default::default()
        };
        record.clear();
        crate::event::encode(&header, &[0x40_1000 + i % 7, 0x40_2000], &mut record);
        let ingested = recorder.ingest(&record).unwrap();
        writer.ingested(&ingested, &recorder).unwrap();
        if i % 60 == 59 {
            writer
                .lost(&LostRecord {
                    by_kind: vec![0, i],
                    ..LostRecord::default()
                })
                .unwrap();
            writer.flush_chunk().unwrap();
        }
    }
    writer.symbols(&recorded_symbols()).unwrap();
    writer.finish(&trailer()).unwrap()
}

#[derive(Clone, Debug)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever happens to the bytes, reading ends in Ok or an error (never a panic, nor
    /// does looking for the closing symbols), and every chunk that ends before the damage is
    /// read in full.
    #[test]
    fn damaged_recordings_never_panic_and_keep_whole_chunks(
        damage in prop_oneof![
            (0usize..4000).prop_map(Damage::Truncate),
            (0usize..4000, 1u8..=255).prop_map(|(at, mask)| Damage::Flip(at, mask)),
            (0usize..4000, proptest::collection::vec(any::<u8>(), 1..16))
                .prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
        ]
    ) {
        let valid = fuzz_input();
        let chunks = records_per_chunk(&valid);
        let mut bytes = valid.clone();
        let at = match &damage {
            Damage::Truncate(at) => { let at = (*at).min(bytes.len()); bytes.truncate(at); at }
            Damage::Flip(at, mask) => { let at = at % bytes.len(); bytes[at] ^= mask; at }
            Damage::Insert(at, extra) => {
                let at = (*at).min(bytes.len());
                bytes.splice(at..at, extra.iter().copied());
                at
            }
        };
        let (records, error) = read_all(&bytes);
        // The view's look at the end of the file copes too.
        if let Ok(reader) = Reader::new(std::io::Cursor::new(&bytes)) {
            let _ = reader.closing_symbols();
        }
        // Records in chunks that end at or before the damaged byte.
        let boundaries = chunk_boundaries(&valid);
        let intact: usize = chunks
            .iter()
            .zip(boundaries.iter().skip(1))
            .filter(|(_, end)| **end as usize <= at)
            .map(|((_, count), _)| count)
            .sum();
        if bytes != valid {
            prop_assert!(records.len() >= intact, "{} records read, {intact} intact", records.len());
        }
        if error.is_none() {
            // Nothing stopped the reader: the damage was undetectable only if it left the
            // file as it was (e.g. a truncation at its very end).
            prop_assert!(bytes == valid, "damage went unnoticed: {damage:?}");
        }
    }
}

/// Recordings from before `ops` and `executable` were recorded have no such header fields:
/// they still read, with the operation count and the executable unknown.
#[test]
fn a_header_without_ops_reads_as_unknown_ops() {
    let mut json = serde_json::to_value(header()).unwrap();
    json.as_object_mut().unwrap().remove("ops").unwrap();
    json.as_object_mut().unwrap().remove("executable").unwrap();
    let json = serde_json::to_vec(&json).unwrap();
    let mut bytes = MAGIC.to_vec();
    bytes.extend(FORMAT_VERSION.to_le_bytes());
    bytes.extend((json.len() as u32).to_le_bytes());
    bytes.extend(crc32fast::hash(&json).to_le_bytes());
    bytes.extend(&json);
    let reader = Reader::new(&bytes[..]).unwrap();
    assert_eq!(
        *reader.header(),
        Header {
            ops: None,
            executable: None,
            ..header()
        }
    );
}

/// A recording of format `version` made by hand: the header, one chunk of `records`, and a
/// chunk holding the trailer.
fn handmade(version: u32, records: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(&header()).unwrap();
    let mut bytes = MAGIC.to_vec();
    bytes.extend(version.to_le_bytes());
    bytes.extend((json.len() as u32).to_le_bytes());
    bytes.extend(crc32fast::hash(&json).to_le_bytes());
    bytes.extend(&json);
    let mut trailer_record = Vec::new();
    codec::put_blob(
        &mut trailer_record,
        codec::TAG_TRAILER,
        &serde_json::to_vec(&trailer()).unwrap(),
    );
    for raw in [records, &trailer_record] {
        let compressed = zstd::bulk::compress(raw, 1).unwrap();
        bytes.extend((compressed.len() as u32).to_le_bytes());
        bytes.extend((raw.len() as u32).to_le_bytes());
        bytes.extend(crc32fast::hash(&compressed).to_le_bytes());
        bytes.extend(&compressed);
    }
    bytes
}

/// Why the replay of a handmade recording of `records` fails.
fn replay_error(records: &[u8]) -> String {
    let bytes = handmade(FORMAT_VERSION, records);
    let reader = Reader::new(&bytes[..]).unwrap();
    let error = replay(reader, &mut Recorder::new(Mode::Run)).unwrap_err();
    error.to_string()
}

fn replay_bytes(bytes: &[u8]) -> (Replay, Recorder) {
    let mut recorder = Recorder::new(Mode::Run);
    let replay = replay(Reader::new(bytes).unwrap(), &mut recorder).unwrap();
    (replay, recorder)
}

#[test]
fn kinds_and_record_types_a_newer_memprof_added_are_skipped_and_counted() {
    let mut records = Vec::new();
    let mut state = codec::DeltaState::new(FORMAT_VERSION, header().start_monotonic_ns);
    codec::put_event(
        &mut records,
        &mut state,
        &Event::of(EventKind::Malloc)
            .tid(0)
            .at(6_000_000)
            .addr(0x1000)
            .size(64),
        None,
    );
    // Kind 40 and record type 0xe0 mean nothing to this reader.
    let unknown = Event::of(EventKind::Malloc)
        .tid(0)
        .at(6_500_000)
        .addr(0x9000);
    codec::put_event_of_kind(&mut records, &mut state, 40, &unknown, None, &[]);
    codec::put_blob(&mut records, 0xe0, b"new");
    codec::put_event(
        &mut records,
        &mut state,
        &Event::of(EventKind::Free).tid(0).at(7_000_000).addr(0x1000),
        None,
    );
    // Operator delete is kind 15: escaped from format 2 on.
    codec::put_event(
        &mut records,
        &mut state,
        &Event::of(EventKind::Malloc)
            .tid(0)
            .at(7_100_000)
            .addr(0x2000)
            .size(8),
        None,
    );
    codec::put_event(
        &mut records,
        &mut state,
        &Event::of(EventKind::OperatorDelete)
            .tid(0)
            .at(7_200_000)
            .addr(0x2000),
        None,
    );
    let (replay, recorder) = replay_bytes(&handmade(FORMAT_VERSION, &records));
    assert_eq!(replay.skipped, 2);
    assert_eq!(replay.events, 4);
    assert_eq!(
        replay.last_ts_ns, 7_200_000,
        "deltas stay in step past the skipped records"
    );
    let stats = recorder.heap.stats();
    assert_eq!((stats.allocations, stats.frees), (2, 2));
    assert!(replay.trailer.is_some());
}

#[test]
fn version_1_files_hold_operator_delete_in_the_tag_nibble() {
    let mut records = Vec::new();
    let mut state = codec::DeltaState::new(1, header().start_monotonic_ns);
    codec::put_event(
        &mut records,
        &mut state,
        &Event::of(EventKind::Malloc)
            .tid(0)
            .at(6_000_000)
            .addr(0x1000)
            .size(64),
        None,
    );
    // Version 1's operator delete: tag 0x0f, then the body (no kind varint).
    records.push(0x0f);
    codec::put_delta(&mut records, 6_100_000, state.ts_ticks);
    codec::put_delta(&mut records, 0x1000, state.addr);
    let (replayed, recorder) = replay_bytes(&handmade(1, &records));
    assert_eq!((replayed.events, replayed.skipped), (2, 0));
    let stats = recorder.heap.stats();
    assert_eq!((stats.allocations, stats.frees), (1, 1));
    // And the unknown record type a version 2 reader would skip is corruption there.
    codec::put_blob(&mut records, 0xe0, b"new");
    let error = replay(
        Reader::new(&handmade(1, &records)[..]).unwrap(),
        &mut Recorder::new(Mode::Run),
    )
    .unwrap_err();
    assert!(error.to_string().contains("unknown record tag"), "{error}");
}

#[test]
fn a_version_from_the_future_is_named() {
    let error = Reader::new(&handmade(FORMAT_VERSION + 1, &[])[..])
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "recording format version {} is not supported (this memprof reads versions 1 to \
             {FORMAT_VERSION}) (at byte 8)",
            FORMAT_VERSION + 1
        )
    );
}

/// The leak check is recorded whole: a replay gets every block's class and the summary.
#[test]
fn the_leak_check_round_trips_and_a_corrupt_one_is_an_error() {
    use crate::leak_check::{LeakCheck, LiveBlock, Reachability, ScanStats};
    let blocks: Vec<LiveBlock> = (0..1000u64)
        .map(|i| LiveBlock {
            addr: 0x5555_0000_0000 + i * 48,
            size: i,
        })
        .collect();
    let classes: Vec<Reachability> = (0..1000).map(|i| Reachability::ALL[i % 4]).collect();
    let scan = ScanStats {
        bytes_scanned: 1 << 20,
        bytes_unreadable: 4096,
        secs: 0.25,
        paused_secs: 0.5,
    };
    let check = LeakCheck::new(&blocks, &classes, scan);
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    writer
        .event(
            &Event::of(EventKind::Malloc)
                .tid(1)
                .at(6_000_000)
                .addr(0x1000)
                .size(32),
            None,
            None,
        )
        .unwrap();
    writer.leak_check(&check);
    let bytes = writer.finish(&trailer()).unwrap();
    let mut recorder = Recorder::new(crate::heap::Mode::Run);
    let replayed = replay(Reader::new(&bytes[..]).unwrap(), &mut recorder).unwrap();
    assert_eq!(replayed.leak_check.as_ref(), Some(&check));
    assert_eq!(replayed.skipped, 0);

    // A body that lists more blocks than it holds is refused, not allocated for.
    let mut body = Vec::new();
    codec::put_varint(&mut body, 2);
    body.extend_from_slice(b"{}");
    codec::put_varint(&mut body, u64::MAX);
    assert!(leak_record::decode(&body).is_err());
}

/// A free names a block created up to 64 sized events before it by that distance, an
/// allocation an address freed up to 64 unsized events before, and any other address is a
/// delta; all come back exactly, and a distance to a block that was never created is
/// corruption.
#[test]
fn frees_name_recent_blocks_by_distance_and_older_ones_by_delta() {
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    let mut written = Vec::new();
    let addr = |i: u64| 0x7f00_0000_0000 + i * 48;
    for i in 0..100 {
        written.push(
            Event::of(EventKind::Malloc)
                .tid(1)
                .at(6_000_000 + i * 1_000)
                .addr(addr(i))
                .size(40),
        );
    }
    // Newest first: the first 64 are within reach, the rest are not; one is freed twice.
    for i in (0..100).rev().chain([99]) {
        written.push(
            Event::of(EventKind::Free)
                .tid(1)
                .at(7_000_000 + i * 1_000)
                .addr(addr(i)),
        );
    }
    // Handed out again, newest first (a free list), then one never freed.
    for i in (90..100).rev().chain([200]) {
        written.push(
            Event::of(EventKind::Malloc)
                .tid(1)
                .at(8_000_000)
                .addr(addr(i))
                .size(40),
        );
    }
    for event in &written {
        writer.event(event, None, None).unwrap();
    }
    let bytes = writer.finish(&trailer()).unwrap();
    let mut reader = Reader::new(&bytes[..]).unwrap();
    for want in &written {
        assert_eq!(
            reader.next().unwrap().unwrap(),
            Record::Event {
                event: want,
                stack: None,
                lookups: &NO_ANSWERS,
            }
        );
    }

    let mut records = Vec::new();
    let mut state = codec::DeltaState::new(FORMAT_VERSION, header().start_monotonic_ns);
    let malloc = Event::of(EventKind::Malloc)
        .tid(0)
        .at(6_000_000)
        .addr(0x1000)
        .size(8);
    codec::put_event(&mut records, &mut state, &malloc, None);
    // A free whose distance is 2, with one block created so far.
    records.extend([EventKind::Free as u8, 0, 2]);
    let error = replay_error(&records);
    assert!(
        error.contains("further back than any recent one"),
        "{error}"
    );
}

/// A small [`RecordedSymbols`]: one address with an inlined frame, one without.
fn recorded_symbols() -> crate::symbolize::RecordedSymbols {
    use crate::symbolize::{Frame, ModuleInfo, RecordedSymbols};
    let frame = |function: &str, line, inlined| Frame {
        address: 0x7000_1234,
        module: "libgone.so".to_owned(),
        module_offset: 0x1234,
        function: Some(function.to_owned()),
        file: Some("gone.c".to_owned()),
        line: Some(line),
        inlined,
    };
    let inlined = [frame("inner", 3, true), frame("outer", 9, false)];
    let module = ModuleInfo {
        path: "/gone/libgone.so".into(),
        build_id: Some("ab12".to_owned()),
        debug_file: None,
    };
    RecordedSymbols::collect([(0x7000_1234, &inlined[..])], &[module])
}

#[test]
fn recorded_symbols_round_trip_and_a_dangling_one_is_an_error() {
    let symbols = recorded_symbols();
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    writer.symbols(&symbols).unwrap();
    let bytes = writer.finish(&trailer()).unwrap();
    let (replayed, _) = replay_bytes(&bytes);
    assert_eq!(replayed.symbols.as_ref(), Some(&symbols));
    assert_eq!(replayed.skipped, 0);

    // A frame naming a string past the recorded ones is corruption, not a panic later.
    let mut dangling = symbols.clone();
    dangling.addresses[0].frames[1].function = Some(99);
    let mut records = Vec::new();
    codec::put_blob(
        &mut records,
        codec::TAG_SYMBOLS,
        &serde_json::to_vec(&dangling).unwrap(),
    );
    let error = replay_error(&records);
    assert!(
        error.contains("symbols record names a string or frame it does not hold"),
        "{error}"
    );
}

/// A program with more frames than one record holds: the symbols go in several records, and
/// the replay puts them back together.
#[test]
fn many_recorded_symbols_take_several_records_and_come_back_whole() {
    use crate::symbolize::{Frame, ModuleInfo, RecordedSymbols};
    let count = 2 * super::writer::SYMBOLS_PER_RECORD as u64 + 5;
    let frames: Vec<(u64, Vec<Frame>)> = (0..count)
        .map(|i| {
            let address = 0x7000_0000 + i * 16;
            let frame = Frame {
                address,
                module: format!("lib{}.so", i % 3),
                module_offset: i * 16,
                function: Some(format!("function_{}", i / 7)),
                file: (i % 2 == 0).then(|| "even.c".to_owned()),
                line: Some(i as u32),
                inlined: false,
            };
            (address, vec![frame])
        })
        .collect();
    let module = ModuleInfo {
        path: "/lib/lib0.so".into(),
        build_id: None,
        debug_file: None,
    };
    let symbols = RecordedSymbols::of(&frames, std::slice::from_ref(&module));
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    writer.symbols(&symbols).unwrap();
    let bytes = writer.finish(&trailer()).unwrap();
    let mut reader = Reader::new(&bytes[..]).unwrap();
    let mut records = 0;
    while let Some(record) = reader.next().unwrap() {
        records += usize::from(matches!(record, Record::Symbols(_)));
    }
    assert_eq!(records, 3);
    let (replayed, _) = replay_bytes(&bytes);
    let replayed = replayed.symbols.unwrap();
    replayed.check().unwrap();
    let mut back: Vec<(u64, Vec<Frame>)> = replayed.frames().collect();
    back.sort_by_key(|(address, _)| *address);
    assert_eq!(back, frames);
    assert_eq!(replayed.modules().collect::<Vec<_>>(), [module]);
    let closing = Reader::new(std::io::Cursor::new(&bytes))
        .unwrap()
        .closing_symbols()
        .expect("the symbols");
    let mut back: Vec<(u64, Vec<Frame>)> = closing.frames().collect();
    back.sort_by_key(|(address, _)| *address);
    assert_eq!(back, frames);
}

/// `Reader::closing_symbols`: the symbols of a whole recording without replaying it; none
/// from a recording without them.
#[test]
fn closing_symbols_are_found_without_decoding_the_events() {
    let frames_of = |symbols: &crate::symbolize::RecordedSymbols| {
        let mut frames: Vec<_> = symbols.frames().collect();
        frames.sort_by_key(|(address, _)| *address);
        frames
    };
    let symbols = recorded_symbols();
    let malloc = Event::of(EventKind::Malloc)
        .tid(1)
        .at(6_000_000)
        .addr(0x1000)
        .size(32);
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    writer.event(&malloc, None, None).unwrap();
    writer.symbols(&symbols).unwrap();
    let bytes = writer.finish(&trailer()).unwrap();
    let found = Reader::new(std::io::Cursor::new(&bytes))
        .unwrap()
        .closing_symbols()
        .expect("the symbols");
    assert_eq!(frames_of(&found), frames_of(&symbols));
    assert_eq!(found.modules, symbols.modules);

    // As a session writes them: the live blocks, then the symbols (a later call of
    // `live_blocks` writes nothing), and the file still closes with them.
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    let mut recorder = Recorder::new(Mode::Run);
    let mut record = Vec::new();
    crate::event::encode(
        &profiler_common::EventHeader {
            kind: EventKind::Malloc as u32,
            tid: 1,
            ts_ns: 6_000_000,
            addr: 0x1000,
            size: 32,
            ..Default::default()
        },
        &[],
        &mut record,
    );
    let ingested = recorder.ingest(&record).unwrap();
    writer.ingested(&ingested, &recorder).unwrap();
    writer.heap_end(&recorder.heap, Some(&None)).unwrap();
    writer.symbols(&symbols).unwrap();
    writer.heap_end(&recorder.heap, Some(&None)).unwrap();
    let bytes = writer.finish(&trailer()).unwrap();
    let found = Reader::new(std::io::Cursor::new(&bytes))
        .unwrap()
        .closing_symbols()
        .expect("the symbols after the live blocks");
    assert_eq!(frames_of(&found), frames_of(&symbols));
    let mut answered = Recorder::new(Mode::Run);
    assert!(
        replay_answered(Reader::new(&bytes[..]).unwrap(), &mut answered)
            .unwrap()
            .is_some()
    );
    assert_eq!(answered.heap.blocks().count(), 1);

    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    writer.event(&malloc, None, None).unwrap();
    let bytes = writer.finish(&trailer()).unwrap();
    let reader = Reader::new(std::io::Cursor::new(&bytes)).unwrap();
    assert_eq!(reader.closing_symbols(), None);
}

/// The replay reads on a thread of its own, batches ahead: corruption found chunks after the
/// first batches is still the replay's error, with the events before it applied.
#[test]
fn corruption_far_into_a_recording_ends_the_replay_with_its_error() {
    let (mut bytes, _) = write_synthetic_churn(Vec::new(), 3 * u64::from(CHUNK_EVENTS)).unwrap();
    let boundaries = chunk_boundaries(&bytes);
    // A byte of the third event chunk's compressed data: its checksum no longer matches.
    bytes[boundaries[2] as usize + 20] ^= 0xff;
    let mut recorder = Recorder::new(Mode::Run);
    let error = replay(Reader::new(&bytes[..]).unwrap(), &mut recorder).unwrap_err();
    assert_eq!(error.offset, boundaries[2]);
    assert!(error.to_string().contains("checksum"), "{error}");
    assert_eq!(recorder.events(), 2 * u64::from(CHUNK_EVENTS));
}

/// A recording the recorder rejects (a stack defined twice) while the reading thread still has
/// batches to send: the error comes back and the reading thread ends instead of waiting for a
/// recorder that stopped listening.
#[test]
fn a_replay_that_stops_early_leaves_no_reader_waiting() {
    let mut records = Vec::new();
    let mut state = codec::DeltaState::new(FORMAT_VERSION, header().start_monotonic_ns);
    codec::put_stack(&mut records, &[0x40_1000], false);
    codec::put_stack(&mut records, &[0x40_1000], false);
    for i in 0..20_000u64 {
        let event = Event::of(EventKind::Malloc)
            .at(6_000_000 + i * 1000)
            .addr(0x1000 + i * 64)
            .size(48);
        codec::put_event(&mut records, &mut state, &event, None);
    }
    let error = replay_error(&records);
    assert!(error.contains("stack 1 repeats stack 0"), "{error}");
}

/// A recording of `events` as a live session writes it: ingested by a recorder with a table,
/// each event with its lookups, the live blocks at the end, the trailer.
fn answered_recording(mode: Mode, events: &[profiler_common::EventHeader]) -> (Vec<u8>, Recorder) {
    let mut writer = Writer::create(Vec::new(), &Header { mode, ..header() }).unwrap();
    let mut recorder = Recorder::new(mode);
    let mut record = Vec::new();
    for (i, header) in events.iter().enumerate() {
        let depth = if header.size > 0 { 1 + i as u64 % 3 } else { 0 };
        let frames: Vec<u64> = (0..depth)
            .map(|level| 0x40_1000 + level * 0x100 + i as u64 % 4)
            .collect();
        let header = profiler_common::EventHeader {
            ts_ns: 1_000_000 + i as u64 * 3_000,
            stack_depth: depth as u32,
            ..*header
        };
        record.clear();
        crate::event::encode(&header, &frames, &mut record);
        let ingested = recorder.ingest(&record).unwrap();
        writer.ingested(&ingested, &recorder).unwrap();
        if i % 97 == 96 {
            writer.flush_chunk().unwrap();
        }
    }
    let at_peak = crate::analysis::fragmentation_at_peak(
        &recorder,
        crate::analysis::allocator::Allocator::Glibc,
    );
    writer.heap_end(&recorder.heap, Some(&at_peak)).unwrap();
    (writer.finish(&trailer()).unwrap(), recorder)
}

/// Everything a report reads from a replayed recorder, comparable.
fn replayed_state(recorder: &Recorder) -> String {
    let mut blocks: Vec<_> = recorder.heap.blocks().collect();
    blocks.sort_by_key(|(addr, _)| *addr);
    let input = crate::analysis::AnalysisInput {
        heap: &recorder.heap,
        sites: &recorder.sites,
        start_ns: 0,
        end_ns: 10_000_000,
        allocator: crate::analysis::allocator::Allocator::Glibc,
    };
    let analyses = serde_json::to_string(&recorder.analyses.report(&input, Some(3))).unwrap();
    let sites: Vec<_> = recorder.sites.iter().collect();
    format!(
        "{:?}\n{:?}\n{blocks:?}\n{sites:?}\n{analyses}",
        recorder.heap.stats(),
        recorder.heap.double_frees()
    )
}

fn header_event() -> impl Strategy<Value = profiler_common::EventHeader> {
    use profiler_common::{FLAG_ALLOCATOR_INTERNAL, FLAG_REALLOC_ENTRY};
    let addr = prop_oneof![3 => 1..8u64, 1 => 8..200u64].prop_map(|slot| 0x1000 + slot * 0x40);
    let kind = prop_oneof![
        4 => Just(EventKind::Malloc),
        2 => Just(EventKind::Realloc),
        4 => Just(EventKind::Free),
        1 => Just(EventKind::Mmap),
        1 => Just(EventKind::Munmap),
    ];
    let flags = prop_oneof![8 => Just(0), 1 => Just(FLAG_REALLOC_ENTRY), 1 => Just(FLAG_ALLOCATOR_INTERNAL)];
    (kind, addr.clone(), addr, 0..300u64, 1..4u32, flags).prop_map(
        |(kind, addr, old_addr, size, tid, flags)| {
            let mut header = profiler_common::EventHeader {
                kind: kind as u32,
                tid,
                addr,
                size,
                flags,
                ..Default::default()
            };
            match kind {
                EventKind::Free => header.size = 0,
                EventKind::Realloc => header.old_addr = old_addr,
                EventKind::Mmap | EventKind::Munmap => {
                    header.addr = 0x7f00_0000_0000 + addr * 0x100;
                    header.flags = 0;
                }
                _ if flags == FLAG_REALLOC_ENTRY => header.old_addr = old_addr,
                _ => {}
            }
            header
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A replay that answers the heap's lookups from the recording rebuilds what one with a
    /// table of every address does, and what the live recorder had.
    #[test]
    fn an_answered_replay_rebuilds_what_the_table_does(
        run in any::<bool>(),
        events in proptest::collection::vec(header_event(), 0..400),
    ) {
        let mode = if run { Mode::Run } else { Mode::Attach };
        let (bytes, live) = answered_recording(mode, &events);
        let mut table = Recorder::new(mode);
        replay(Reader::new(&bytes[..]).unwrap(), &mut table).unwrap();
        let mut answered = Recorder::new(mode);
        let replayed = replay_answered(Reader::new(&bytes[..]).unwrap(), &mut answered).unwrap();
        prop_assert!(replayed.is_some(), "a complete recording replays answered");
        prop_assert!(answered.heap.tape().is_none());
        table.heap.forget_freed();
        prop_assert_eq!(replayed_state(&answered), replayed_state(&table));
        let mut live = live;
        live.heap.forget_freed();
        prop_assert_eq!(replayed_state(&answered), replayed_state(&live));
    }
}

#[test]
fn recordings_that_cannot_stand_alone_are_replayed_with_a_table() {
    let malloc = profiler_common::EventHeader {
        kind: EventKind::Malloc as u32,
        tid: 1,
        addr: 0x1000,
        size: 8,
        ..Default::default()
    };
    let (bytes, _) = answered_recording(Mode::Run, &[malloc; 3]);
    let answered = |bytes: &[u8]| {
        let mut recorder = Recorder::new(Mode::Run);
        replay_answered(Reader::new(bytes).unwrap(), &mut recorder)
            .unwrap()
            .is_some()
    };
    assert!(answered(&bytes));
    // Cut before its last chunk (the trailer).
    let boundaries = chunk_boundaries(&bytes);
    let cut = &bytes[..boundaries[boundaries.len() - 2] as usize];
    assert!(!answered(cut));
    // The live blocks without the report's fragmentation at the peak (no report was written).
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    let mut recorder = Recorder::new(Mode::Run);
    let mut record = Vec::new();
    crate::event::encode(&malloc, &[], &mut record);
    let ingested = recorder.ingest(&record).unwrap();
    writer.ingested(&ingested, &recorder).unwrap();
    writer.heap_end(&recorder.heap, None).unwrap();
    assert!(!answered(&writer.finish(&trailer()).unwrap()));
    // Events written without their lookups: no live blocks.
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    let event = Event::of(EventKind::Malloc)
        .tid(1)
        .at(6_000_000)
        .addr(0x1000)
        .size(8);
    writer.event(&event, None, None).unwrap();
    let mut recorder = Recorder::new(Mode::Run);
    recorder.apply(&event, None);
    writer.heap_end(&recorder.heap, Some(&None)).unwrap();
    let bytes = writer.finish(&trailer()).unwrap();
    assert!(!answered(&bytes));
    let mut table = Recorder::new(Mode::Run);
    replay(Reader::new(&bytes[..]).unwrap(), &mut table).unwrap();
    assert_eq!(table.heap.stats().live_blocks, 1);
}

/// The fragmentation at the peak goes through JSON: its ratios must read back to the same
/// f64 (python3's report differed in the last digit of one before `float_roundtrip`).
#[test]
fn the_recorded_peak_fragmentation_reads_back_exactly() {
    use crate::analysis::fragmentation::RangeFragmentation;
    let range = |fragmentation: f64| RangeFragmentation {
        start: "0x1000".into(),
        end: "0x2000".into(),
        blocks: 3,
        used_bytes: 100,
        free_bytes: 20,
        largest_free_bytes: 4,
        fragmentation,
    };
    let at_peak = Some(crate::analysis::FragmentationSnapshot {
        ranges: 2,
        used_bytes: 200,
        free_bytes: 40,
        mmapped_blocks: 1,
        largest_ranges: vec![range(0.968_854_064_642_507_3), range(1.0 - 1.0 / 3.0)],
    });
    let mut writer = Writer::create(Vec::new(), &header()).unwrap();
    let recorder = Recorder::new(Mode::Run);
    writer.heap_end(&recorder.heap, Some(&at_peak)).unwrap();
    let bytes = writer.finish(&trailer()).unwrap();
    let mut reader = Reader::new(&bytes[..]).unwrap();
    assert_eq!(
        reader.next().unwrap().unwrap(),
        Record::PeakFragmentation(Box::new(at_peak))
    );
}
