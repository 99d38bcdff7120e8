//! Unwinding the caller's stack inside the target, so that each record carries return
//! addresses (as the probes' frame-pointer records do) instead of a copy of the stack for
//! memprof to unwind: the copy (often kilobytes per call) and the collector's unwinding were
//! most of this path's cost.
//!
//! - [`eh_frame`] follows the `.eh_frame` call-frame information with mstange's framehop,
//!   as memprof's collector does for snapshots, so both give the same frames. The modules come
//!   from `dl_iterate_phdr`: each one's `.eh_frame_hdr` (`PT_GNU_EH_FRAME`) and `.eh_frame`
//!   are copied out of its mapping once, so that a library unloaded later (`dlclose`) is never
//!   read again. An address in no known module makes the loader's list be read again when a
//!   library was loaded or unloaded since (its `dlpi_adds`/`dlpi_subs` counters).
//! - [`frame_pointers`] walks the `rbp` chain (`--unwind fp`).
//!
//! Both read the stack only inside the calling thread's stack (`[sp, end)`), so a wrong rule
//! or a stray frame pointer ends the walk instead of faulting. framehop runs with
//! `MustNotAllocateDuringUnwind`; each thread keeps its rule caches and last walk
//! ([`crate::walkers`]). The modules live behind a lock a forked child resets
//! ([`crate::fork_safe`]). What it allocates comes from the library's own arena
//! ([`crate::arena`]), never from the program's allocator.

use core::ffi::{CStr, c_int, c_void};
use core::mem::MaybeUninit;
use core::ops::Range;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{
    Error as FrameError, ExplicitModuleSectionInfo, FrameAddress, Module,
    MustNotAllocateDuringUnwind, Unwinder,
};

use crate::fork_safe::{ForkSafeLock, ReadGuard};
use crate::last_walk::{Fresh, Walk};

type Policy = MustNotAllocateDuringUnwind;
type Cache = CacheX86_64<Policy>;

/// Slots of one framehop rule cache: a direct-mapped table indexed by `address % 509`.
const RULE_SLOTS: u64 = 509;
/// Rule caches per walker. A frame's address picks its cache by `address / 509`, so together
/// they act as one direct-mapped cache of 4 x 509 slots: with one, addresses colliding in a
/// slot evicted each other's rules, and each miss evaluates the frame's CFI again (framehop's
/// counts: 6% of lookups missed on python3, 4% on sqlite3, nearly all on a collision).
const RULE_CACHES: usize = 4;

/// What one walking thread uses ([`crate::walkers`]): framehop's rule caches and the walk
/// before, which the next walk joins where they share a frame ([`crate::last_walk`]).
pub struct Walker {
    /// Created as frames first need them (a cache is ~20 KiB).
    caches: [Option<Cache>; RULE_CACHES],
    previous: Walk,
    current: Fresh,
    /// The executable range the last frame of the walk before lay in, under the modules'
    /// epoch `text_epoch`: the next walk's first frame is mostly in it, and is then spared
    /// the search of every module.
    last_text: Range<u64>,
    text_epoch: u64,
}

impl Walker {
    pub fn new() -> Box<Walker> {
        Box::new(Walker {
            caches: [const { None }; RULE_CACHES],
            previous: Walk::default(),
            current: Fresh::default(),
            last_text: 0..0,
            text_epoch: 0,
        })
    }

    /// Forgets the walk before and its module: the next walk joins nothing.
    pub fn forget_walks(&mut self) {
        self.previous.forget();
        self.last_text = 0..0;
    }
}

/// How a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// At the root of the stack.
    Complete,
    /// At the depth limit, with more frames above.
    Cut,
    /// Unwinding failed (no rule, a read outside the stack); the frames found are kept.
    Failed,
}

/// The modules framehop knows, as the loader listed them at the last scan.
struct Modules {
    unwinder: UnwinderX86_64<Vec<u8>, Policy>,
    /// Executable ranges of the modules added, by start.
    text: Vec<Range<u64>>,
    /// The loader's counts of objects loaded and unloaded at the last scan.
    generation: (u64, u64),
    /// Moves on whenever a module is added or removed: a walk recorded under another epoch
    /// may have used other rules.
    epoch: u64,
}

impl Modules {
    /// The executable range holding `pc`, if a known module has one.
    fn text_covering(&self, pc: u64) -> Option<&Range<u64>> {
        let i = self.text.partition_point(|range| range.start <= pc);
        let range = self.text.get(i.checked_sub(1)?)?;
        range.contains(&pc).then_some(range)
    }
}

static MODULES: ForkSafeLock<Option<Modules>> = ForkSafeLock::new(None);
/// In a forked child, before anything else runs: the locks as if no thread held them.
pub fn forked() {
    crate::arena::forked();
    // SAFETY: called from the child's fork handler.
    unsafe {
        MODULES.reset_in_child(None);
    }
    crate::walkers::forked();
}

/// What a walk wrote into its frames buffer.
pub struct Walked {
    /// The frames written: the first ones of the buffer, initialised (it is not cleared
    /// first, since that cost more than the walk's work at a typical depth).
    pub depth: usize,
    pub outcome: Outcome,
    /// The frames' fold ([`crate::stack_numbers::fold_frame`]) when the walk knew it.
    pub folded: Option<u64>,
}

/// Return addresses of the stack whose innermost frame returns to `ip` with the caller's
/// `sp` and `bp`, innermost first, into `frames` (at most its length; `Cut` if there were
/// more). `stack_end` bounds every read.
pub fn eh_frame(
    ip: u64,
    sp: u64,
    bp: u64,
    stack_end: u64,
    frames: &mut [MaybeUninit<u64>],
) -> Walked {
    if frames.is_empty() {
        return Walked {
            depth: 0,
            outcome: Outcome::Cut,
            folded: None,
        };
    }
    crate::walkers::with_walker(|walker| walk(ip, sp, bp, stack_end, frames, walker))
}

fn walk(
    ip: u64,
    sp: u64,
    bp: u64,
    stack_end: u64,
    frames: &mut [MaybeUninit<u64>],
    walker: &mut Walker,
) -> Walked {
    let Walker {
        caches,
        previous,
        current,
        last_text: walker_text,
        text_epoch,
    } = walker;
    let mut modules = read_modules();
    let epoch = modules.as_ref().map_or(0, |m| m.epoch);
    current.begin();
    // Whether `current` may be joined later: not if a read was refused (the bounds are the
    // walk's own) or the modules were read again midway.
    let mut reusable = true;
    let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
    let mut rescanned = false;
    // Most frames of a stack lie in the module of the frame below (the first one, in the
    // module the walk before started in): checked first, it spares most of the searches.
    let mut last_text = if *text_epoch == epoch {
        walker_text.clone()
    } else {
        0..0
    };
    let mut pc = ip;
    let mut cursor = previous.cursor();
    frames[0].write(pc);
    let mut depth = 1;
    let outcome = loop {
        let registers = (pc, regs.sp(), regs.bp());
        // The words a join checks were read by the walk before, aligned and below this
        // stack's end: whether they lie above this walk's start is all that is left to check.
        let read = |addr: u64| {
            if addr < sp {
                return Err(());
            }
            // SAFETY: inside the calling thread's stack, between the frame that called the
            // hook and the stack's end (see read_word).
            Ok(unsafe { (addr as *const u64).read() })
        };
        if let Some(joined) = previous.join(&mut cursor, (epoch, stack_end), registers, read) {
            let above = previous.frames_above(joined);
            let (count, room) = (above.len(), frames.len() - depth);
            for (slot, pc) in frames[depth..].iter_mut().zip(above) {
                slot.write(pc);
            }
            let outcome = if count > room {
                Outcome::Cut
            } else {
                previous.outcome()
            };
            depth += count.min(room);
            previous.rejoin(joined, current);
            // Cut short of the walk it joined, the frames are not all of that walk's.
            let folded = if count > room {
                None
            } else {
                previous.folded()
            };
            return Walked {
                depth,
                outcome,
                folded,
            };
        }
        current.enter(registers.0, registers.1, registers.2);
        // A return address is looked up at `pc - 1`, inside its call instruction.
        let Some(address) = FrameAddress::from_return_address(pc) else {
            break Outcome::Complete;
        };
        if !last_text.contains(&(pc - 1)) {
            match modules.as_ref().and_then(|m| m.text_covering(pc - 1)) {
                Some(text) => last_text = text.clone(),
                None if !rescanned => {
                    drop(modules);
                    rescan();
                    rescanned = true;
                    modules = read_modules();
                }
                None => {}
            }
            // The next walk starts in the module of this one's first frame, mostly.
            if depth == 1 && !rescanned {
                walker_text.clone_from(&last_text);
                *text_epoch = epoch;
            }
        }
        let Some(known) = modules.as_ref() else {
            break Outcome::Failed;
        };
        let mut read_stack = |addr: u64| match read_word(addr, sp, stack_end) {
            Ok(value) => {
                current.read(addr, value);
                Ok(value)
            }
            Err(()) => {
                reusable = false;
                Err(())
            }
        };
        match known.unwinder.unwind_frame(
            address,
            &mut regs,
            rule_cache(caches, pc - 1),
            &mut read_stack,
        ) {
            Ok(None) | Ok(Some(0)) | Err(FrameError::ReturnAddressIsNull) => {
                break Outcome::Complete;
            }
            Ok(Some(return_address)) => {
                if depth == frames.len() {
                    break Outcome::Cut;
                }
                frames[depth].write(return_address);
                depth += 1;
                pc = return_address;
            }
            Err(_) => break Outcome::Failed,
        }
    };
    // A cut walk does not know its frames above the limit.
    if reusable && !rescanned && outcome != Outcome::Cut {
        previous.replace(current, epoch, stack_end, outcome);
        // It entered a frame for each one it wrote.
        debug_assert_eq!(previous.len(), depth);
        return Walked {
            depth,
            outcome,
            folded: previous.folded(),
        };
    }
    Walked {
        depth,
        outcome,
        folded: None,
    }
}

/// [`eh_frame`] by the frame-pointer chain: each frame's saved `rbp` and return address sit
/// at `[rbp]` and `[rbp + 8]`, as the kernel's walk for the probes reads them.
pub fn frame_pointers(
    ip: u64,
    sp: u64,
    bp: u64,
    stack_end: u64,
    frames: &mut [MaybeUninit<u64>],
) -> Walked {
    let (depth, outcome) = frame_pointer_chain(ip, sp, bp, stack_end, frames);
    Walked {
        depth,
        outcome,
        folded: None,
    }
}

fn frame_pointer_chain(
    ip: u64,
    sp: u64,
    bp: u64,
    stack_end: u64,
    frames: &mut [MaybeUninit<u64>],
) -> (usize, Outcome) {
    if frames.is_empty() {
        return (0, Outcome::Cut);
    }
    frames[0].write(ip);
    let mut depth = 1;
    let mut bp = bp;
    let mut floor = sp;
    loop {
        let (Ok(next_bp), Ok(return_address)) = (
            read_word(bp, floor, stack_end),
            read_word(bp.wrapping_add(8), floor, stack_end),
        ) else {
            // No frame pointer left inside the stack: the outermost frame is behind us.
            return (depth, Outcome::Complete);
        };
        if return_address == 0 {
            return (depth, Outcome::Complete);
        }
        if depth == frames.len() {
            return (depth, Outcome::Cut);
        }
        frames[depth].write(return_address);
        depth += 1;
        // Frames only go up the stack: a chain that does not is not one.
        if next_bp <= bp {
            return (depth, Outcome::Complete);
        }
        floor = bp + 16;
        bp = next_bp;
    }
}

/// The rule cache for the frame looked up at `address` (see [`RULE_CACHES`]).
#[inline]
fn rule_cache(caches: &mut [Option<Cache>; RULE_CACHES], address: u64) -> &mut Cache {
    let index = (address / RULE_SLOTS) as usize % RULE_CACHES;
    caches[index].get_or_insert_with(Cache::new_in)
}

/// The word at `addr` if it lies inside `[low, high)`, 8-aligned.
fn read_word(addr: u64, low: u64, high: u64) -> Result<u64, ()> {
    if addr < low || addr.checked_add(8).is_none_or(|end| end > high) || !addr.is_multiple_of(8) {
        return Err(());
    }
    // SAFETY: inside the calling thread's stack, above the frame that called the hook (every
    // caller passes its own stack pointer and the stack's end), so mapped and readable.
    Ok(unsafe { (addr as *const u64).read() })
}

/// Forgets every module (after a `dlclose`): the next walk lists the loader's objects again.
pub fn forget_modules() {
    // Readers hold the modules for one walk.
    for _ in 0..1000 {
        if let Some(mut guard) = MODULES.try_write() {
            // Removed from the same unwinder, not replaced by a new one: its generation moves
            // on, so the walkers' cached rules for the old modules no longer match.
            if let Some(modules) = guard.as_mut() {
                for range in modules.text.drain(..) {
                    modules.unwinder.remove_module(range.start);
                }
                modules.generation = (u64::MAX, u64::MAX);
                modules.epoch += 1;
            }
            return;
        }
        std::thread::yield_now();
    }
}

fn read_modules() -> ReadGuard<'static, Option<Modules>> {
    MODULES.read()
}

/// Lists the loader's objects again if any was loaded or unloaded since the last scan, adding
/// the new ones and dropping the gone ones.
///
/// The loader's list is read holding no lock of ours: `dl_iterate_phdr` takes the loader's
/// lock, and a thread holding that one (inside `dlopen`, or a program's own `dl_iterate_phdr`
/// callback) may allocate and wait for ours. The modules are changed afterwards, unless
/// another thread holds them (it applies the same change, or reads them: the next unknown
/// address tries again).
fn rescan() {
    let generation = loader_generation();
    let known = match read_modules().as_ref() {
        Some(modules) if modules.generation == generation => return,
        Some(modules) => modules.text.clone(),
        None => Vec::new(),
    };
    let mut scan = Scan {
        known,
        present: Vec::new(),
        added: Vec::new(),
    };
    // SAFETY: the callback only reads the loader's records during the call.
    unsafe { libc::dl_iterate_phdr(Some(collect_object), (&raw mut scan).cast()) };
    let Some(mut guard) = MODULES.try_write() else {
        return;
    };
    let modules = guard.get_or_insert_with(|| Modules {
        unwinder: UnwinderX86_64::new(),
        text: Vec::new(),
        generation: (u64::MAX, u64::MAX),
        // 0 is the epoch of no modules at all.
        epoch: 1,
    });
    if modules.generation == generation {
        return;
    }
    modules.generation = generation;
    modules.epoch += 1;
    let gone: Vec<u64> = modules
        .text
        .iter()
        .filter(|range| !scan.present.contains(range))
        .map(|range| range.start)
        .collect();
    for start in gone {
        modules.unwinder.remove_module(start);
        modules.text.retain(|range| range.start != start);
    }
    for object in scan.added {
        if modules.text.contains(&object.text) {
            continue;
        }
        let text = object.text.clone();
        modules.unwinder.add_module(object.into_module());
        let at = modules
            .text
            .partition_point(|range| range.start < text.start);
        modules.text.insert(at, text);
    }
}

/// One pass over the loader's objects.
struct Scan {
    /// Executable ranges the modules had when the pass began: their tables are not copied.
    known: Vec<Range<u64>>,
    /// Executable ranges of every object with unwind tables.
    present: Vec<Range<u64>>,
    /// The objects not known, tables copied.
    added: Vec<LoadedObject>,
}

/// The loader's counts of objects loaded and unloaded so far (`dlpi_adds`, `dlpi_subs`).
fn loader_generation() -> (u64, u64) {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid record; `data` is the tuple below.
        unsafe {
            *data.cast::<(u64, u64)>() = ((*info).dlpi_adds, (*info).dlpi_subs);
        }
        1
    }
    let mut generation = (0u64, 0u64);
    // SAFETY: the callback writes only the tuple, and stops at the first object.
    unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut generation).cast()) };
    generation
}

/// One object as the loader lists it, with its unwind tables copied.
struct LoadedObject {
    name: String,
    bias: u64,
    /// Executable segment, as mapped.
    text: Range<u64>,
    eh_frame_hdr: (Range<u64>, Vec<u8>),
    eh_frame: (Range<u64>, Vec<u8>),
}

impl LoadedObject {
    fn into_module(self) -> Module<Vec<u8>> {
        let svma = |range: &Range<u64>| range.start - self.bias..range.end - self.bias;
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: Some(svma(&self.text)),
            eh_frame_hdr_svma: Some(svma(&self.eh_frame_hdr.0)),
            eh_frame_hdr: Some(self.eh_frame_hdr.1),
            eh_frame_svma: Some(svma(&self.eh_frame.0)),
            eh_frame: Some(self.eh_frame.1),
            ..Default::default()
        };
        Module::new(self.name, self.text, self.bias, info)
    }
}

unsafe extern "C" fn collect_object(
    info: *mut libc::dl_phdr_info,
    _: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: the loader passes a valid record for the duration of the call; `data` is the
    // Scan rescan() passed.
    let (info, scan) = unsafe { (&*info, &mut *data.cast::<Scan>()) };
    // SAFETY: as above, for its program headers.
    let Some(text) = (unsafe { text_of(info) }) else {
        return 0;
    };
    if !scan.known.contains(&text) {
        // SAFETY: as above.
        match unsafe { loaded_object(info, text.clone()) } {
            Some(object) => scan.added.push(object),
            None => return 0,
        }
    }
    scan.present.push(text);
    0
}

/// The executable segment of one loaded object, as mapped.
///
/// # Safety
/// `info` must be the loader's record of a loaded object, during dl_iterate_phdr.
unsafe fn text_of(info: &libc::dl_phdr_info) -> Option<Range<u64>> {
    // SAFETY: per the contract.
    let headers = unsafe { headers(info) }?;
    let bias = info.dlpi_addr;
    headers
        .iter()
        .find(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_X != 0)
        .map(|h| bias + h.p_vaddr..bias + h.p_vaddr + h.p_memsz)
}

/// The program headers of one loaded object.
///
/// # Safety
/// `info` must be the loader's record of a loaded object, during dl_iterate_phdr.
unsafe fn headers(info: &libc::dl_phdr_info) -> Option<&[libc::Elf64_Phdr]> {
    if info.dlpi_phdr.is_null() {
        return None;
    }
    // SAFETY: the loader's program headers of this object.
    Some(unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) })
}

/// The unwind tables of one loaded object whose executable segment is `text`, None without
/// them.
///
/// # Safety
/// `info` must be the loader's record of a loaded object, during dl_iterate_phdr.
unsafe fn loaded_object(info: &libc::dl_phdr_info, text: Range<u64>) -> Option<LoadedObject> {
    // SAFETY: per the contract.
    let headers = unsafe { headers(info) }?;
    let bias = info.dlpi_addr;
    let avma = |vaddr: u64, len: u64| bias + vaddr..bias + vaddr + len;
    let hdr = headers
        .iter()
        .find(|h| h.p_type == libc::PT_GNU_EH_FRAME)
        .map(|h| avma(h.p_vaddr, h.p_memsz))?;
    // SAFETY: the header lies in a loaded segment of the object.
    let hdr_bytes = unsafe { mapped(&hdr) };
    let eh_frame_start = eh_frame_address(hdr_bytes, hdr.start)?;
    // The section has no length of its own here: it runs to its segment's end at most.
    let segment_end = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD)
        .map(|h| avma(h.p_vaddr, h.p_filesz))
        .find(|segment| segment.contains(&eh_frame_start))?
        .end;
    let eh_frame = eh_frame_start..segment_end;
    // SAFETY: inside a loaded segment of the object, within its file-backed bytes.
    let eh_frame_bytes = unsafe { mapped(&eh_frame) }.to_vec();
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: the loader's NUL-terminated name.
        unsafe { CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    Some(LoadedObject {
        name,
        bias,
        text,
        eh_frame_hdr: (hdr, hdr_bytes.to_vec()),
        eh_frame: (eh_frame, eh_frame_bytes),
    })
}

/// The bytes mapped at `range`.
///
/// # Safety
/// `range` must be mapped and readable.
unsafe fn mapped(range: &Range<u64>) -> &'static [u8] {
    // SAFETY: per the contract.
    unsafe {
        core::slice::from_raw_parts(range.start as *const u8, (range.end - range.start) as usize)
    }
}

/// Where `.eh_frame` starts, from the `.eh_frame_hdr` at `hdr_address`: its second byte is
/// the pointer's encoding (DW_EH_PE_*), the pointer follows the four-byte header.
fn eh_frame_address(hdr: &[u8], hdr_address: u64) -> Option<u64> {
    const PCREL: u8 = 0x10;
    const DATAREL: u8 = 0x30;
    let (&version, &encoding) = (hdr.first()?, hdr.get(1)?);
    if version != 1 {
        return None;
    }
    let field = hdr.get(4..)?;
    let value = match encoding & 0x0f {
        0x00 | 0x04 => u64::from_le_bytes(field.get(..8)?.try_into().ok()?),
        0x03 => u64::from(u32::from_le_bytes(field.get(..4)?.try_into().ok()?)),
        0x0b => i64::from(i32::from_le_bytes(field.get(..4)?.try_into().ok()?)) as u64,
        0x0c => u64::from_le_bytes(field.get(..8)?.try_into().ok()?),
        _ => return None,
    };
    match encoding & 0x70 {
        0 => Some(value),
        PCREL => Some((hdr_address + 4).wrapping_add(value)),
        DATAREL => Some(hdr_address.wrapping_add(value)),
        _ => None,
    }
}
