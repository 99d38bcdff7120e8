use super::*;
use crate::event::encode;
use crate::heap::Mode;
use crate::recorder::Recorder;
use profiler_common::{EventHeader, EventKind};
use std::process::Command;

const MAIN: u64 = 0x40_1100;
const LEAKY: u64 = 0x40_1200;
const CHURN: u64 = 0x40_1300;
const INLINED: u64 = 0x40_1400;

/// Known events: `leaky` allocates 3 x 100 bytes and frees one; `churn` allocates 5 x 1000
/// and frees all; `inlined` (two lines: helper inlined into caller) leaks one 7-byte block.
fn recorder() -> Recorder {
    let mut recorder = Recorder::new(Mode::Run);
    let mut record = Vec::new();
    let mut ts = 1_000;
    let mut feed = |kind: EventKind, addr: u64, size: u64, frames: &[u64]| {
        ts += 10;
        let header = EventHeader {
            kind: kind as u32,
            tid: 1,
            ts_ns: ts,
            addr,
            size,
            stack_depth: frames.len() as u32,
            ..EventHeader::default()
        };
        record.clear();
        encode(&header, frames, &mut record);
        recorder.ingest(&record).unwrap();
    };
    for i in 0..3 {
        feed(EventKind::Malloc, 0x1000 + i * 0x100, 100, &[LEAKY, MAIN]);
    }
    feed(EventKind::Free, 0x1000, 0, &[]);
    for i in 0..5 {
        feed(EventKind::Malloc, 0x9000 + i * 0x1000, 1000, &[CHURN, MAIN]);
        feed(EventKind::Free, 0x9000 + i * 0x1000, 0, &[]);
    }
    feed(EventKind::Calloc, 0x2_0000, 7, &[INLINED, MAIN]);
    recorder
}

fn lines(address: u64) -> Vec<PprofLine> {
    let line = |function: &str, line| PprofLine {
        function: function.to_owned(),
        file: Some("prog.c".to_owned()),
        line: Some(line),
    };
    match address {
        MAIN => vec![line("main", 30)],
        LEAKY => vec![line("leaky", 10)],
        CHURN => vec![line("churn", 20)],
        INLINED => vec![line("helper", 5), line("caller", 25)],
        _ => vec![],
    }
}

fn write_profile(dir: &std::path::Path) -> std::path::PathBuf {
    let recorder = recorder();
    let sites: Vec<(&[u64], SiteCounts)> = recorder
        .sites
        .iter()
        .map(|(id, counts)| (recorder.stacks.get(id), counts))
        .collect();
    let meta = PprofMeta {
        time_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 2_000_000_000,
        mappings: vec![PprofMapping {
            start: 0x40_0000,
            end: 0x40_2000,
            offset: 0,
            path: "/usr/bin/prog".into(),
            build_id: Some("0123abcd".into()),
        }],
    };
    let path = dir.join("profile.pb.gz");
    let file = std::fs::File::create(&path).unwrap();
    write_pprof(sites, &meta, lines, file).unwrap();
    path
}

/// `go tool pprof -top` of one sample index, as (flat, function) pairs.
fn top(path: &std::path::Path, index: &str) -> Vec<(String, String)> {
    let output = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=100", "-nodefraction=0"])
        .arg(format!("-sample_index={index}"))
        .arg(path)
        .output()
        .expect("`go` is missing: run `cargo xtask setup` (it installs golang-go)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go tool pprof failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"flat") {
            in_table = true;
        } else if in_table && fields.len() >= 6 {
            rows.push((fields[0].to_owned(), fields[5..].join(" ")));
        }
    }
    rows
}

#[test]
fn go_tool_pprof_reads_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_profile(dir.path());
    // Live: leaky 2 x 100, helper (inlined into caller) 7.
    assert_eq!(
        top(&path, "inuse_space"),
        [
            ("200B".into(), "leaky".into()),
            ("7B".into(), "helper (inline)".into()),
            ("0".into(), "caller".into()),
            ("0".into(), "main".into())
        ]
    );
    assert_eq!(
        top(&path, "alloc_space"),
        [
            ("5000B".into(), "churn".into()),
            ("300B".into(), "leaky".into()),
            ("7B".into(), "helper (inline)".into()),
            ("0".into(), "caller".into()),
            ("0".into(), "main".into())
        ]
    );
}

#[test]
fn profile_structure_round_trips_through_prost() {
    use flate2::read::GzDecoder;
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let path = write_profile(dir.path());
    let mut raw = Vec::new();
    GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    let profile = proto::Profile::decode(&raw[..]).unwrap();
    let s = |i: i64| profile.string_table[i as usize].as_str();
    let types: Vec<_> = profile
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, SAMPLE_TYPES);
    assert_eq!(s(profile.default_sample_type), "inuse_space");
    let values: Vec<_> = profile.sample.iter().map(|x| x.value.clone()).collect();
    assert_eq!(
        values,
        [vec![3, 300, 2, 200], vec![5, 5000, 0, 0], vec![1, 7, 1, 7]]
    );
    assert_eq!(profile.mapping.len(), 1);
    assert_eq!(s(profile.mapping[0].build_id), "0123abcd");
    assert_eq!(s(profile.mapping[0].filename), "/usr/bin/prog");
    let inlined = profile
        .location
        .iter()
        .find(|l| l.address == INLINED)
        .unwrap();
    let names: Vec<_> = inlined
        .line
        .iter()
        .map(|line| {
            let function = &profile.function[line.function_id as usize - 1];
            (s(function.name), s(function.filename), line.line)
        })
        .collect();
    assert_eq!(names, [("helper", "prog.c", 5), ("caller", "prog.c", 25)]);
    assert_eq!(
        profile.function.len(),
        5,
        "main is one function for all its locations"
    );
}
