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
/// The thread the snapshots are said to be of.
const THREAD: u32 = 7;

#[test]
fn unwinds_own_stack_through_the_calling_functions_to_the_root() {
    let captured = outer_caller(WHOLE_STACK);
    let mut unwinder = StackUnwinder::new(127);
    let mut source = SelfMaps::default();
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), THREAD, &mut source, &mut frames);
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
            frames_unwound: frames.len() as u64,
            snapshot_bytes: captured.stack.len() as u64,
            ..UnwindStats::default()
        }
    );

    // Known modules are not asked for again, and the same stack unwinds the same.
    let asked = source.asked;
    let mut again = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), THREAD, &mut source, &mut again);
    assert_eq!((outcome, &again), (Outcome::Complete, &frames));
    assert_eq!(source.asked, asked);
}

/// A walk that reached its thread's root tells where the thread's stack ends: just above the
/// highest word it read, with that word's value. A copy that far unwinds to the same root;
/// a walk that took its root frames from the thread's previous walk tells nothing new.
#[test]
fn a_walk_to_the_root_learns_where_its_threads_stack_ends() {
    let captured = outer_caller(WHOLE_STACK);
    let mut unwinder = StackUnwinder::new(127);
    let mut source = SelfMaps::default();
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(&captured.snapshot(), THREAD, &mut source, &mut frames);
    assert_eq!(outcome, Outcome::Complete);
    let learned = unwinder.take_new_stack_tops();
    assert_eq!(learned.len(), 1, "{learned:?}");
    let top = learned[0];
    assert_eq!(top.thread, THREAD);
    let end = captured.sp + captured.stack.len() as u64;
    assert!(top.top > captured.sp && top.top <= end, "{top:?}");
    let below = (top.top - 8 - captured.sp) as usize;
    let word = u64::from_le_bytes(captured.stack[below..below + 8].try_into().unwrap());
    assert_eq!(word, top.canary);

    // The same stack copied only up to the top: the same frames, to the root.
    let bounded = Captured {
        stack: captured.stack[..(top.top - captured.sp) as usize].to_vec(),
        cut: false,
        ..captured
    };
    let mut fresh = StackUnwinder::new(127);
    let mut again = Vec::new();
    let outcome = fresh.unwind(&bounded.snapshot(), THREAD, &mut source, &mut again);
    assert_eq!((outcome, &again), (Outcome::Complete, &frames));
    assert_eq!(fresh.take_new_stack_tops(), learned);

    // Joined whole to the walk before: nothing new.
    unwinder.unwind(&captured.snapshot(), THREAD, &mut source, &mut again);
    assert!(unwinder.take_new_stack_tops().is_empty());

    // A copy that ends below the highest word, though not cut at the byte limit (a top set
    // too low): the walk fails, and the thread's top is forgotten (sent as 0).
    let too_short = Captured {
        stack: captured.stack[..(top.top - 8 - captured.sp) as usize].to_vec(),
        cut: false,
        ..captured
    };
    let outcome = unwinder.unwind(&too_short.snapshot(), THREAD, &mut source, &mut again);
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    assert_eq!(
        unwinder.take_new_stack_tops(),
        [LearnedTop {
            thread: THREAD,
            top: 0,
            canary: 0
        }]
    );
    // The whole copy again: learned again.
    unwinder.unwind(&captured.snapshot(), THREAD, &mut source, &mut again);
    assert_eq!(unwinder.take_new_stack_tops(), learned);
}

#[test]
fn a_short_copy_cuts_the_stack_and_says_so() {
    let captured = outer_caller(64);
    assert!(captured.cut);
    let mut unwinder = StackUnwinder::new(127);
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(
        &captured.snapshot(),
        THREAD,
        &mut SelfMaps::default(),
        &mut frames,
    );
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
    let outcome = unwinder.unwind(
        &captured.snapshot(),
        THREAD,
        &mut SelfMaps::default(),
        &mut frames,
    );
    assert_eq!(outcome, Outcome::CutByDepth);
    assert_eq!(frames.len(), 2);
    let names = names(&frames);
    assert!(names[1].contains("middle_caller"), "{names:#?}");
    assert_eq!(unwinder.stats.cut_by_depth, 1);

    unwinder.set_max_depth(0);
    let outcome = unwinder.unwind(
        &captured.snapshot(),
        THREAD,
        &mut SelfMaps::default(),
        &mut frames,
    );
    assert_eq!((outcome, frames.len()), (Outcome::CutByDepth, 0));
}

#[test]
fn without_modules_unwinding_falls_back_and_fails_visibly() {
    // No module known and none found: framehop falls back to frame pointers, which this
    // code does not keep reliably; whatever it finds, frame 0 is there and a failure counts.
    let captured = outer_caller(WHOLE_STACK);
    let mut unwinder = StackUnwinder::new(127);
    let mut frames = Vec::new();
    let outcome = unwinder.unwind(
        &captured.snapshot(),
        THREAD,
        &mut NoModuleSource,
        &mut frames,
    );
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
    let outcome = unwinder.unwind(
        &captured.snapshot(),
        THREAD,
        &mut SelfMaps::default(),
        &mut frames,
    );
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

/// An unwinder that has unwound `captured` once, as a stack of another thread: the modules
/// are loaded (a walk that loads one is not kept: the module set changed under it), the
/// figures zero.
fn warm_unwinder(max_depth: usize, captured: &Captured, source: &mut SelfMaps) -> StackUnwinder {
    let mut unwinder = StackUnwinder::new(max_depth);
    unwinder.unwind(&captured.snapshot(), 0, source, &mut Vec::new());
    unwinder.stats = UnwindStats::default();
    unwinder
}

/// Unwinds `first` then `then` as stacks of one thread with an unwinder keeping at most
/// `max_depth` frames, checks that `then` comes out as a fresh unwinder gives it, and returns
/// the first unwinder's figures.
fn after_a_walk_of_the_same_thread(
    first: &Captured,
    then: &Captured,
    depths: (usize, usize),
) -> (Vec<u64>, UnwindStats) {
    let mut source = SelfMaps::default();
    let mut unwinder = warm_unwinder(depths.0, first, &mut source);
    let mut frames = Vec::new();
    unwinder.unwind(&first.snapshot(), THREAD, &mut source, &mut frames);
    unwinder.set_max_depth(depths.1);
    let outcome = unwinder.unwind(&then.snapshot(), THREAD, &mut source, &mut frames);
    let mut fresh = StackUnwinder::new(depths.1);
    let mut fresh_frames = Vec::new();
    let fresh_outcome = fresh.unwind(&then.snapshot(), THREAD, &mut source, &mut fresh_frames);
    assert_eq!(
        (outcome, &frames),
        (fresh_outcome, &fresh_frames),
        "after a walk: {:#?}\nfresh: {:#?}",
        names(&frames),
        names(&fresh_frames)
    );
    (frames, unwinder.stats)
}

#[test]
fn a_walk_joins_its_threads_previous_one_where_they_share_a_frame() {
    let through_outer = outer_caller(WHOLE_STACK);
    let through_middle = middle_caller(WHOLE_STACK);
    let (frames, stats) =
        after_a_walk_of_the_same_thread(&through_outer, &through_middle, (127, 127));
    let names = names(&frames);
    position(&names, "a_walk_joins_its_threads_previous_one", 2);
    assert_eq!(stats.joined, 1, "{stats:?}");
    // The first walk unwound each of its frames (one more than this one's: outer_caller);
    // the second only its own (capture, middle_caller, this test), none of the harness's.
    let first_walk = frames.len() as u64 + 1;
    assert_eq!(stats.frames_unwound - first_walk, 3, "{stats:?}");

    // The same stack again joins at its first frame and unwinds none.
    let (_, stats) = after_a_walk_of_the_same_thread(&through_outer, &through_outer, (127, 127));
    assert_eq!(
        (stats.joined, stats.frames_unwound),
        (1, first_walk),
        "{stats:?}"
    );
}

#[test]
fn a_changed_stack_word_is_not_joined_over() {
    let kept = outer_caller(WHOLE_STACK);
    let mut source = SelfMaps::default();
    let mut frames = Vec::new();
    StackUnwinder::new(127).unwind(&kept.snapshot(), THREAD, &mut source, &mut frames);
    // The same registers and stack, but the word holding the third frame's return address
    // now holds the fourth's: every frame from there on differs.
    let mut changed = Captured {
        stack: kept.stack.clone(),
        ..kept
    };
    let at = changed
        .stack
        .chunks_exact(8)
        .position(|word| u64::from_le_bytes(word.try_into().unwrap()) == frames[3])
        .expect("the return address is on the stack");
    changed.stack[at * 8..at * 8 + 8].copy_from_slice(&frames[4].to_le_bytes());
    let (changed_frames, stats) = after_a_walk_of_the_same_thread(&kept, &changed, (127, 127));
    assert_ne!(changed_frames, frames);
    assert_eq!(changed_frames[..3], frames[..3]);
    // Frames 0 and 1 are taken from the kept walk; frame 2 read the changed word, so it is
    // unwound again (and the frames after it, up to where the walks meet again, if they do).
    assert_eq!(stats.joined, 1, "{stats:?}");
    let unwound = stats.frames_unwound - frames.len() as u64;
    assert!(
        (1..=changed_frames.len() as u64 - 2).contains(&unwound),
        "{unwound} frames unwound: {stats:?}"
    );
}

#[test]
fn a_joined_walk_keeps_the_depth_limit() {
    let whole = outer_caller(WHOLE_STACK);
    // Joined at its first frame, cut at 5.
    let (frames, stats) = after_a_walk_of_the_same_thread(&whole, &whole, (127, 5));
    assert_eq!((frames.len(), stats.joined), (5, 1));
    // A walk cut at the limit has no frames for a later, deeper one: not joined.
    let (frames, stats) = after_a_walk_of_the_same_thread(&whole, &whole, (5, 127));
    assert!(frames.len() > 5);
    assert_eq!(stats.joined, 0, "{stats:?}");
    // Cut exactly where the kept walk was: joined, and cut the same.
    let (frames, stats) = after_a_walk_of_the_same_thread(&whole, &whole, (5, 5));
    assert_eq!((frames.len(), stats.joined), (5, 1));
}

#[test]
fn walks_of_other_threads_or_module_sets_are_not_joined() {
    let whole = outer_caller(WHOLE_STACK);
    let mut source = SelfMaps::default();
    let mut unwinder = warm_unwinder(127, &whole, &mut source);
    let mut frames = Vec::new();
    unwinder.unwind(&whole.snapshot(), THREAD, &mut source, &mut frames);
    unwinder.unwind(&whole.snapshot(), THREAD + 1, &mut source, &mut frames);
    assert_eq!(unwinder.stats.joined, 0);
    let image = Arc::clone(&unwinder.modules.find(frames[0] - 1).unwrap().image);
    unwinder.modules.add(0x1000..0x2000, 0, &image);
    unwinder.unwind(&whole.snapshot(), THREAD, &mut source, &mut frames);
    assert_eq!(unwinder.stats.joined, 0, "the modules changed since");
    unwinder.unwind(&whole.snapshot(), THREAD, &mut source, &mut frames);
    assert_eq!(unwinder.stats.joined, 1);
}

#[test]
fn another_rbp_is_joined_over_only_up_to_a_rule_that_reads_it() {
    // The inner frames' rules do not read %rbp, an outer one does (it computes its caller's
    // frame from it): the same stack reached with another %rbp takes the inner frames from the
    // kept walk, then unwinds the rest as a fresh walk does, and fails where the kept one did
    // not.
    let kept = outer_caller(WHOLE_STACK);
    let other_bp = Captured {
        stack: kept.stack.clone(),
        bp: kept.bp ^ (1 << 44),
        ..kept
    };
    let (frames, stats) = after_a_walk_of_the_same_thread(&kept, &other_bp, (127, 127));
    assert_eq!(
        (stats.joined, stats.complete, stats.errors),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(frames[0], kept.ip);
}
