use super::*;
use crate::heap::Mode;
use crate::stacks::StackId;
use crate::unwind::ModuleSet;

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
/// libc's text: file offset 0x28000 mapped at 0x7f00_0002_8000.
const MAPS: &str = "\
555500000000-555500001000 r--p 00000000 08:01 11 /tmp/prog
555500001000-555500002000 r-xp 00001000 08:01 11 /tmp/prog
7f0000000000-7f0000028000 r--p 00000000 08:01 22 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f0000100000 r-xp 00028000 08:01 22 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000100000-7f0000120000 rw-p 00100000 08:01 22 /usr/lib/x86_64-linux-gnu/libc.so.6
";
/// `free` in libc: file offsets 0x9a000..0x9a200, so 0x7f00_0009_a000.. at run time.
const FREE_AT: u64 = 0x7f00_0009_a000;
/// Somewhere else in libc's text (tcache_thread_shutdown, allocate_stack).
const LIBC_CODE: u64 = 0x7f00_0005_0000;
const PROG_CODE: u64 = 0x5555_0000_1500;

fn maps() -> ProcessMaps {
    ProcessMaps::parse(MAPS).unwrap()
}

fn libc() -> AllocatorModule {
    AllocatorModule {
        paths: vec![
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            LIBC.into(),
        ],
        free: Some(0x9a000..0x9a200),
        callers_are_internal: true,
    }
}

/// Hands out the maps once asked, and counts the asks.
struct Source {
    maps: ProcessMaps,
    asks: u32,
}

impl ModuleSource for Source {
    fn find_module(&mut self, _pc: u64, _modules: &mut ModuleSet) {}

    fn maps_covering(&mut self, _pc: u64) -> Option<&ProcessMaps> {
        self.asks += 1;
        Some(&self.maps)
    }
}

fn flagged(
    code: &mut AllocatorCode,
    mut event: Event,
    frames: &[u64],
    heap: &HeapState,
    source: &mut Source,
) -> bool {
    code.classify(&mut event, frames, heap, source);
    event.flags & FLAG_ALLOCATOR_INTERNAL != 0
}

#[test]
fn frees_and_munmaps_from_the_allocator_module_are_internal() {
    let mut code = AllocatorCode::new(vec![libc()]);
    code.update(&maps());
    let heap = HeapState::new(Mode::Run);
    let mut source = Source {
        maps: maps(),
        asks: 0,
    };
    let free = |caller| {
        Event::of(EventKind::Free)
            .addr(0x10)
            .aux(caller)
            .size(4096)
            .at(1)
    };
    assert!(flagged(&mut code, free(LIBC_CODE), &[], &heap, &mut source));
    assert!(flagged(
        &mut code,
        free(FREE_AT + 8),
        &[],
        &heap,
        &mut source
    ));
    assert!(!flagged(
        &mut code,
        free(PROG_CODE),
        &[],
        &heap,
        &mut source
    ));
    // No caller recorded (an older recording, an unreadable stack): the program's.
    assert!(!flagged(&mut code, free(0), &[], &heap, &mut source));
    let munmap = |caller| {
        Event::of(EventKind::Munmap)
            .addr(0x4000_0000)
            .aux(caller)
            .size(4096)
            .at(1)
    };
    assert!(flagged(
        &mut code,
        munmap(LIBC_CODE),
        &[],
        &heap,
        &mut source
    ));
    assert!(!flagged(
        &mut code,
        munmap(PROG_CODE),
        &[],
        &heap,
        &mut source
    ));
    // Only the executable mapping is code.
    assert!(!code.caller_is_internal(0x7f00_0010_0100));
}

#[test]
fn mmaps_are_internal_only_inside_free() {
    let mut code = AllocatorCode::new(vec![libc()]);
    code.update(&maps());
    let heap = HeapState::new(Mode::Run);
    let mut source = Source {
        maps: maps(),
        asks: 0,
    };
    let mmap = Event::of(EventKind::Mmap)
        .addr(0x4000_0000)
        .aux(0x22)
        .size(4096)
        .at(1);
    // A new thread's arena: alloc_new_heap <- ... <- free <- the program.
    let arena = [LIBC_CODE, LIBC_CODE + 0x40, FREE_AT + 0x1f0, PROG_CODE];
    assert!(flagged(&mut code, mmap, &arena, &heap, &mut source));
    // A thread stack: allocate_stack <- pthread_create <- the program; libc but not free.
    let stack = [LIBC_CODE, PROG_CODE];
    assert!(!flagged(&mut code, mmap, &stack, &heap, &mut source));
    assert!(!flagged(&mut code, mmap, &[], &heap, &mut source));
    // free's range ends where the symbol does.
    assert!(code.in_free(FREE_AT + 0x1ff));
    assert!(!code.in_free(FREE_AT + 0x200));
}

#[test]
fn an_allocator_in_the_executable_flags_only_mmaps_inside_its_free() {
    let prog = AllocatorModule {
        paths: vec!["/tmp/prog".into()],
        free: Some(0x1400..0x1480),
        callers_are_internal: false,
    };
    let mut code = AllocatorCode::new(vec![prog]);
    code.update(&maps());
    let heap = HeapState::new(Mode::Run);
    let mut source = Source {
        maps: maps(),
        asks: 0,
    };
    // The program's own double free stays the program's.
    let free = Event::of(EventKind::Free)
        .addr(0x10)
        .aux(PROG_CODE)
        .size(4096)
        .at(1);
    assert!(!flagged(&mut code, free, &[], &heap, &mut source));
    let mmap = Event::of(EventKind::Mmap)
        .addr(0x4000_0000)
        .aux(0x22)
        .size(4096)
        .at(1);
    let inside = [0x5555_0000_1440, PROG_CODE];
    assert!(flagged(&mut code, mmap, &inside, &heap, &mut source));
}

#[test]
fn unknown_callers_refresh_the_maps_once_per_region_and_only_for_anomalies() {
    let mut code = AllocatorCode::new(vec![libc()]);
    let mut heap = HeapState::new(Mode::Run);
    let mut source = Source {
        maps: maps(),
        asks: 0,
    };
    // A free of a live block is the program's whatever its caller: no need to look.
    heap.apply(
        &Event::of(EventKind::Malloc).addr(0x10).size(4096).at(1),
        Some(StackId(0)),
    );
    let live = Event::of(EventKind::Free)
        .addr(0x10)
        .aux(LIBC_CODE)
        .size(4096)
        .at(1);
    assert!(!flagged(&mut code, live, &[], &heap, &mut source));
    assert_eq!(source.asks, 0);
    // A free of an unknown block from code not located yet: libc was mapped since.
    let unknown = Event::of(EventKind::Free)
        .addr(0x20)
        .aux(LIBC_CODE)
        .size(4096)
        .at(1);
    assert!(flagged(&mut code, unknown, &[], &heap, &mut source));
    assert_eq!(source.asks, 1);
    // The program's code: looked up once for its region, then remembered.
    let program = Event::of(EventKind::Free)
        .addr(0x30)
        .aux(PROG_CODE)
        .size(4096)
        .at(1);
    assert!(!flagged(&mut code, program, &[], &heap, &mut source));
    assert!(!flagged(&mut code, program, &[], &heap, &mut source));
    assert_eq!(source.asks, 2);
}

#[test]
fn no_allocator_module_flags_nothing() {
    // A replay: the recorded flags are authoritative.
    let mut code = AllocatorCode::default();
    code.update(&maps());
    let heap = HeapState::new(Mode::Run);
    let mut source = Source {
        maps: maps(),
        asks: 0,
    };
    let free = Event::of(EventKind::Free)
        .addr(0x10)
        .aux(LIBC_CODE)
        .size(4096)
        .at(1);
    assert!(!flagged(&mut code, free, &[], &heap, &mut source));
    assert_eq!(source.asks, 0);
}
