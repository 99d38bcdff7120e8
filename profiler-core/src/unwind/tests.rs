//! The unwinder against real snapshots of this test process: its own registers and stack,
//! its own /proc/self/maps and the files mapped there (the test binary and Debian's libc,
//! which has no frame pointers).

use std::arch::asm;
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::*;
use crate::maps::ProcessMaps;
use crate::symbolize::Symbolizer;

/// A snapshot as the probe takes it, owned.
struct Captured {
    ip: u64,
    sp: u64,
    bp: u64,
    stack: Vec<u8>,
    cut: bool,
}

impl Captured {
    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            ip: self.ip,
            sp: self.sp,
            bp: self.bp,
            stack: &self.stack,
            cut: self.cut,
        }
    }
}

/// Reads ip, sp and bp here and copies up to `limit` bytes of stack from sp, stopping at the
/// end of the stack's mapping as the probe stops at the first unreadable page. The registers
/// are taken in this function, so frame 0 is in `capture` and frame 1 is its caller.
#[inline(never)]
fn capture(limit: u64) -> Captured {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers; touches no memory and not the stack.
    unsafe {
        asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    // Calls below run under `sp`; what is above it (this frame's saved registers and the
    // callers' frames) stays as it was when the registers were read.
    let maps = ProcessMaps::read_path(std::path::Path::new("/proc/self/maps")).unwrap();
    let stack_end = maps.find(sp).expect("sp is mapped").end;
    let len = limit.min(stack_end - sp);
    let mut stack = vec![0u8; len as usize];
    // SAFETY: [sp, sp + len) is inside this thread's mapped stack.
    unsafe { std::ptr::copy_nonoverlapping(sp as *const u8, stack.as_mut_ptr(), len as usize) };
    Captured {
        ip,
        sp,
        bp,
        stack,
        cut: len == limit,
    }
}

/// Loads modules from /proc/self/maps on demand, as the collector does from /proc/PID/maps.
#[derive(Default)]
struct SelfMaps {
    asked: usize,
    images: HashMap<PathBuf, Arc<ModuleImage>>,
}

impl ModuleSource for SelfMaps {
    fn find_module(&mut self, pc: u64, modules: &mut ModuleSet) {
        self.asked += 1;
        let maps = ProcessMaps::read_path(std::path::Path::new("/proc/self/maps")).unwrap();
        let Some(mapping) = maps
            .find(pc)
            .filter(|m| m.is_file() && m.perms.contains('x'))
        else {
            return;
        };
        let image = self
            .images
            .entry(mapping.path.clone())
            .or_insert_with(|| {
                let file = File::open(&mapping.path).unwrap();
                Arc::new(ModuleImage::read(file, mapping.path.display().to_string()).unwrap())
            })
            .clone();
        let bias = image.bias(mapping.start, mapping.offset).expect("segment");
        modules.add(mapping.start..mapping.end, bias, &image);
    }
}

/// Function names of `frames`, outermost function at each address.
fn names(frames: &[u64]) -> Vec<String> {
    let maps = ProcessMaps::read_path(std::path::Path::new("/proc/self/maps")).unwrap();
    let mut symbolizer = Symbolizer::new(&maps);
    frames
        .iter()
        .map(|&address| symbolizer.symbolize(address).function.unwrap_or_default())
        .collect()
}

/// Index of the first name containing `needle` at or after `from`.
fn position(names: &[String], needle: &str, from: usize) -> usize {
    names
        .iter()
        .skip(from)
        .position(|name| name.contains(needle))
        .map(|i| i + from)
        .unwrap_or_else(|| panic!("no frame named *{needle}* after {from} in {names:#?}"))
}

#[inline(never)]
fn middle_caller(limit: u64) -> Captured {
    let captured = capture(limit);
    std::hint::black_box(&captured);
    captured
}

#[inline(never)]
fn outer_caller(limit: u64) -> Captured {
    let captured = middle_caller(limit);
    std::hint::black_box(&captured);
    captured
}

const WHOLE_STACK: u64 = 1 << 20;

#[test]
fn unwinds_own_stack_through_the_calling_functions_to_the_root() {
    let captured = outer_caller(WHOLE_STACK);
    let mut unwinder = StackUnwinder::new(127);
    let mut source = SelfMaps::default();
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), &mut source, &mut frames);
    let names = names(&frames);
    assert_eq!(outcome, Outcome::Complete, "{names:#?}");
    assert_eq!(frames[0], captured.ip, "frame 0 is the snapshot's ip");
    assert!(names[0].contains("capture"), "{names:#?}");
    let middle = position(&names, "middle_caller", 1);
    assert_eq!(
        middle, 1,
        "the immediate caller follows frame 0: {names:#?}"
    );
    let outer = position(&names, "outer_caller", middle + 1);
    assert_eq!(outer, 2, "{names:#?}");
    position(
        &names,
        "unwinds_own_stack_through_the_calling_functions",
        outer + 1,
    );
    // The test thread was started by libc, whose frames unwind too (it has no frame pointers).
    position(&names, "start_thread", outer + 1);
    assert!(source.asked >= 2, "modules were loaded on demand");
    assert_eq!(
        unwinder.stats,
        UnwindStats {
            stacks: 1,
            complete: 1,
            ..UnwindStats::default()
        }
    );

    // Known modules are not asked for again, and the same stack unwinds the same.
    let asked = source.asked;
    let mut again = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), &mut source, &mut again);
    assert_eq!((outcome, &again), (Outcome::Complete, &frames));
    assert_eq!(source.asked, asked);
}

#[test]
fn a_short_copy_cuts_the_stack_and_says_so() {
    let captured = outer_caller(64);
    assert!(captured.cut);
    let mut unwinder = StackUnwinder::new(127);
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), &mut SelfMaps::default(), &mut frames);
    assert_eq!(outcome, Outcome::CutByBytes);
    assert!(outcome.truncated());
    assert_eq!(frames[0], captured.ip);
    assert_eq!(unwinder.stats.cut_by_bytes, 1);
}

#[test]
fn the_depth_limit_cuts_the_stack_and_says_so() {
    let captured = outer_caller(WHOLE_STACK);
    let mut unwinder = StackUnwinder::new(2);
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), &mut SelfMaps::default(), &mut frames);
    assert_eq!(outcome, Outcome::CutByDepth);
    assert_eq!(frames.len(), 2);
    let names = names(&frames);
    assert!(names[1].contains("middle_caller"), "{names:#?}");
    assert_eq!(unwinder.stats.cut_by_depth, 1);

    unwinder.set_max_depth(0);
    let outcome = unwinder.unwind(&captured.snapshot(), &mut SelfMaps::default(), &mut frames);
    assert_eq!((outcome, frames.len()), (Outcome::CutByDepth, 0));
}

#[test]
fn without_modules_unwinding_falls_back_and_fails_visibly() {
    // No module known and none found: framehop falls back to frame pointers, which this
    // code does not keep reliably; whatever it finds, frame 0 is there and a failure counts.
    let captured = outer_caller(WHOLE_STACK);
    let mut unwinder = StackUnwinder::new(127);
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), &mut NoModuleSource, &mut frames);
    assert_eq!(frames[0], captured.ip);
    assert_eq!(unwinder.stats.stacks, 1);
    assert_eq!(
        unwinder.stats.errors,
        u64::from(matches!(outcome, Outcome::Failed(_)))
    );
}

static FROM_COMPARATOR: Mutex<Option<Captured>> = Mutex::new(None);

unsafe extern "C" {
    fn qsort(
        base: *mut std::ffi::c_void,
        count: usize,
        size: usize,
        compare: extern "C" fn(*const std::ffi::c_void, *const std::ffi::c_void) -> i32,
    );
}

/// Called by libc's qsort: the stack is test -> libc -> this comparator.
#[inline(never)]
extern "C" fn compare_and_capture(a: *const std::ffi::c_void, b: *const std::ffi::c_void) -> i32 {
    let mut slot = FROM_COMPARATOR.lock().unwrap();
    if slot.is_none() {
        *slot = Some(capture(WHOLE_STACK));
    }
    // SAFETY: qsort passes pointers to elements of the u64 array below.
    let (a, b) = unsafe { (*a.cast::<u64>(), *b.cast::<u64>()) };
    a.cmp(&b) as i32
}

#[inline(never)]
fn sort_with_libc(values: &mut [u64]) {
    // SAFETY: a valid array of `values.len()` u64 and a comparator for u64.
    unsafe {
        qsort(
            values.as_mut_ptr().cast(),
            values.len(),
            8,
            compare_and_capture,
        )
    };
}

#[test]
fn unwinds_through_libc_without_frame_pointers() {
    let mut values = [5u64, 3, 9, 1];
    sort_with_libc(&mut values);
    assert_eq!(values, [1, 3, 5, 9]);
    let captured = FROM_COMPARATOR.lock().unwrap().take().expect("captured");
    let mut unwinder = StackUnwinder::new(127);
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), &mut SelfMaps::default(), &mut frames);
    let names = names(&frames);
    assert_eq!(outcome, Outcome::Complete, "{names:#?}");
    let comparator = position(&names, "compare_and_capture", 1);
    let in_libc = frames
        .iter()
        .skip(comparator + 1)
        .position(|&pc| {
            let module = &unwinder
                .modules
                .find(pc - 1)
                .expect("known module")
                .image
                .name;
            module.contains("libc.so")
        })
        .expect("a libc frame above the comparator")
        + comparator
        + 1;
    let sorter = position(&names, "sort_with_libc", in_libc + 1);
    position(
        &names,
        "unwinds_through_libc_without_frame_pointers",
        sorter + 1,
    );
}
