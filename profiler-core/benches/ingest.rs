//! What the collector spends per event: decode + intern + apply of ring records, and the same
//! with a real DWARF-mode stack snapshot of this thread unwound each time (rules cached).
//!
//! `cargo bench -p profiler-core --bench ingest`

#[path = "../tests/integration/workloads.rs"]
mod workloads;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use profiler_common::{EventHeader, EventKind, FLAG_STACK_SNAPSHOT};
use profiler_core::event::encode_snapshot;
use profiler_core::heap::Mode;
use profiler_core::maps::ProcessMaps;
use profiler_core::recorder::Recorder;
use workloads::{load_own_modules, record, snapshot_here, workload};

/// malloc, realloc in place and free over 64 addresses and 8 interned 20-frame stacks.
fn ingest(c: &mut Criterion) {
    let records = workload();
    let mut recorder = Recorder::new(Mode::Run);
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("frame-pointer records", |b| {
        b.iter(|| {
            for record in &records {
                recorder.ingest(record).unwrap();
            }
        })
    });
    group.finish();
}

/// A malloc carrying a snapshot of this thread's stack (unwound by framehop), then its free.
fn unwinding_ingest(c: &mut Criterion) {
    let maps = ProcessMaps::read_path(std::path::Path::new("/proc/self/maps")).unwrap();
    let (snapshot, stack) = snapshot_here(&maps);
    let header = EventHeader {
        kind: EventKind::Malloc as u32,
        addr: 0x5555_0000_0000,
        size: 24,
        flags: FLAG_STACK_SNAPSHOT,
        ..EventHeader::default()
    };
    let mut malloc = Vec::new();
    encode_snapshot(&header, &snapshot, &stack, &mut malloc);
    let free = record(EventKind::Free, 0x5555_0000_0000, 0, 0, &[]);
    let mut recorder = Recorder::new(Mode::Run);
    load_own_modules(&mut recorder, &maps);
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        format!("dwarf snapshot of {} bytes + free", stack.len()),
        |b| {
            b.iter(|| {
                recorder.ingest(&malloc).unwrap();
                recorder.ingest(&free).unwrap();
            })
        },
    );
    group.finish();
    assert_eq!(
        recorder.unwinder.stats.errors, 0,
        "the snapshot must unwind"
    );
}

criterion_group!(benches, ingest, unwinding_ingest);
criterion_main!(benches);
