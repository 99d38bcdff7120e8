//! DWARF unwinding of stack snapshots (`--unwind dwarf`).
//!
//! At each allocation's return the probe copies the user registers (ip, sp, bp) and the top of
//! the user stack into the record ([`crate::event::Snapshot`]). This module turns such a
//! snapshot into return addresses, innermost first, with mstange's `framehop` and the
//! `.eh_frame` of the modules the target has mapped. It is a pure component: the collector
//! hands it module images ([`ModuleImage`], read from the files) and their address ranges, and
//! a [`ModuleSource`] it may ask for the module of an address it does not know (dlopen).
//!
//! Frames follow the frame-pointer convention: frame 0 is the snapshot's ip, the return
//! address into the allocation's caller, and every frame is a return address (symbolized at
//! `addr - 1`). So the first frame is unwound as a return address too: the registers are the
//! caller's right after the call returned, which is exactly the state framehop reaches after
//! unwinding a frame.
//!
//! Unwinding allocates nothing: framehop runs with `MustNotAllocateDuringUnwind`, frames go
//! into the caller's buffer.

mod image;
mod kept_walks;
mod stack_tops;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{Error as FrameError, FrameAddress, MustNotAllocateDuringUnwind, Unwinder};

pub use image::{ImageError, ModuleImage};

use crate::event::Snapshot;
use kept_walks::{BpUse, Ending, KeptWalks, Registers, Walk};
pub use stack_tops::LearnedTop;
use stack_tops::StackTops;

type Policy = MustNotAllocateDuringUnwind;
type RuleCache = CacheX86_64<Policy>;

/// framehop's rule cache is direct-mapped on `address % 509`: a frame's address picks one of
/// these by `address / 509`, so together they act as one cache of 4 x 509 slots. With one,
/// return addresses colliding in a slot evicted each other's rules, and each miss evaluated
/// the frame's CFI again (gimli's CFI parsing was 8% of the collector's samples on sqlite3
/// under `run --capture uprobes`). The capture library picks its caches the same way.
struct RuleCaches([RuleCache; 4]);

impl RuleCaches {
    fn new() -> RuleCaches {
        RuleCaches(std::array::from_fn(|_| RuleCache::new_in()))
    }

    /// The cache for the frame looked up at `address`.
    #[inline]
    fn at(&mut self, address: u64) -> &mut RuleCache {
        &mut self.0[(address / 509) as usize % 4]
    }
}

/// Asked for the module of an address no known module covers, typically a library loaded
/// after the last look at the target's maps.
pub trait ModuleSource {
    /// May add modules to `modules` (with [`ModuleSet::add`]); the lookup is retried after.
    fn find_module(&mut self, pc: u64, modules: &mut ModuleSet);

    /// The target's maps seen so far, read again first if none covers `pc`; None when this
    /// source has no maps. Used to locate the allocator's code
    /// ([`crate::allocator_code::AllocatorCode`]).
    fn maps_covering(&mut self, _pc: u64) -> Option<&crate::maps::ProcessMaps> {
        None
    }
}

/// A source that knows nothing beyond the modules already added.
pub struct NoModuleSource;

impl ModuleSource for NoModuleSource {
    fn find_module(&mut self, _pc: u64, _modules: &mut ModuleSet) {}
}

/// A module mapped in the target: where, and what file.
#[derive(Clone, Debug)]
pub struct LoadedModule {
    pub range: Range<u64>,
    pub bias: u64,
    pub image: Arc<ModuleImage>,
}

/// The target's executable mappings the unwinder knows, and framehop's index of them.
pub struct ModuleSet {
    unwinder: UnwinderX86_64<Arc<[u8]>, Policy>,
    by_start: BTreeMap<u64, LoadedModule>,
    /// Moved by every change: a walk kept under another epoch is not joined.
    epoch: u64,
}

impl ModuleSet {
    fn new() -> ModuleSet {
        ModuleSet {
            unwinder: UnwinderX86_64::new(),
            by_start: BTreeMap::new(),
            epoch: 0,
        }
    }

    /// Adds the mapping `range` of `image` loaded with `bias`; modules it overlaps (an unloaded
    /// library whose addresses were reused) are removed first.
    pub fn add(&mut self, range: Range<u64>, bias: u64, image: &Arc<ModuleImage>) {
        self.epoch += 1;
        let overlapping: Vec<u64> = self
            .by_start
            .range(..range.end)
            .rev()
            .take_while(|(_, m)| m.range.end > range.start)
            .map(|(start, _)| *start)
            .collect();
        for start in overlapping {
            self.by_start.remove(&start);
            self.unwinder.remove_module(start);
        }
        let module = framehop::Module::new(
            image.name.clone(),
            range.clone(),
            bias,
            image.section_info(),
        );
        self.unwinder.add_module(module);
        self.by_start.insert(
            range.start,
            LoadedModule {
                range,
                bias,
                image: Arc::clone(image),
            },
        );
    }

    /// The module whose mapping contains `pc`.
    pub fn find(&self, pc: u64) -> Option<&LoadedModule> {
        self.by_start
            .range(..=pc)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| pc < m.range.end)
    }

    /// Every known module, by address.
    pub fn iter(&self) -> impl Iterator<Item = &LoadedModule> {
        self.by_start.values()
    }

    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }
}

/// How unwinding went, summed over every snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Snapshots unwound.
    pub stacks: u64,
    /// Stacks that reached their root (a frame with no caller).
    pub complete: u64,
    /// Stacks cut because the copy of the stack ended (`--stack-bytes`).
    pub cut_by_bytes: u64,
    /// Stacks cut at the depth limit (`--max-depth`).
    pub cut_by_depth: u64,
    /// Stacks whose unwinding failed before reaching the root or a limit (bad or missing
    /// call-frame information, a frame-pointer guess gone wrong).
    pub errors: u64,
    /// Stacks that joined their thread's previous walk (see `unwind/kept_walks.rs`).
    pub joined: u64,
    /// Frames unwound (the frames taken from a joined walk are not).
    pub frames_unwound: u64,
    /// Bytes of stack the snapshots carried, in all (what the probes copied).
    pub snapshot_bytes: u64,
}

/// What became of one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Unwound up to the root of the stack.
    Complete,
    /// Stopped at the depth limit with more frames above.
    CutByDepth,
    /// Stopped where the copied bytes ended.
    CutByBytes,
    /// Unwinding failed; the frames found before are kept.
    Failed(FrameError),
}

impl Outcome {
    /// The outermost frames are (or may be) missing.
    pub fn truncated(self) -> bool {
        self != Outcome::Complete
    }
}

/// Unwinds snapshots against a set of modules.
pub struct StackUnwinder {
    pub modules: ModuleSet,
    caches: RuleCaches,
    max_depth: usize,
    kept: KeptWalks,
    /// The walk in progress (its buffers reused from walk to walk).
    fresh: Walk,
    /// What each pc's rule does with `%rbp`, learned under the module set of `bp_uses_epoch`.
    bp_uses: crate::fasthash::FastHashMap<u64, BpUse>,
    bp_uses_epoch: u64,
    /// Where each thread's stack ends, from its walks that reached the root.
    stack_tops: StackTops,
    pub stats: UnwindStats,
}

impl Default for StackUnwinder {
    fn default() -> Self {
        Self::new(profiler_common::MAX_STACK_DEPTH)
    }
}

impl std::fmt::Debug for StackUnwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackUnwinder")
            .field("modules", &self.modules.len())
            .field("max_depth", &self.max_depth)
            .field("stats", &self.stats)
            .finish()
    }
}

impl StackUnwinder {
    /// An unwinder that keeps at most `max_depth` frames per stack.
    pub fn new(max_depth: usize) -> StackUnwinder {
        StackUnwinder {
            modules: ModuleSet::new(),
            caches: RuleCaches::new(),
            max_depth,
            kept: KeptWalks::default(),
            fresh: Walk::default(),
            bp_uses: Default::default(),
            bp_uses_epoch: 0,
            stack_tops: StackTops::default(),
            stats: UnwindStats::default(),
        }
    }

    pub fn set_max_depth(&mut self, max_depth: usize) {
        self.max_depth = max_depth;
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// The threads whose stack top walks showed (or showed moved) since the last call, for
    /// the probes to bound their copies (see `unwind/stack_tops.rs`).
    pub fn take_new_stack_tops(&mut self) -> Vec<LearnedTop> {
        self.stack_tops.take_new()
    }

    /// Replaces `frames` with the return addresses of `snapshot`, a stack of `thread`,
    /// innermost first, and says whether the stack is whole. `source` is asked about addresses
    /// in no known module.
    pub fn unwind(
        &mut self,
        snapshot: &Snapshot<'_>,
        thread: u32,
        source: &mut dyn ModuleSource,
        frames: &mut Vec<u64>,
    ) -> Outcome {
        frames.clear();
        let outcome = if self.max_depth == 0 {
            Outcome::CutByDepth
        } else {
            self.walk(snapshot, thread, source, frames)
        };
        self.stats.stacks += 1;
        self.stats.snapshot_bytes += snapshot.stack.len() as u64;
        match outcome {
            Outcome::Complete => self.stats.complete += 1,
            Outcome::CutByDepth => self.stats.cut_by_depth += 1,
            Outcome::CutByBytes => self.stats.cut_by_bytes += 1,
            Outcome::Failed(_) => self.stats.errors += 1,
        }
        outcome
    }

    /// Walks `snapshot` frame by frame until a frame joins `thread`'s previous walk; keeps
    /// the result as the thread's walk.
    fn walk(
        &mut self,
        snapshot: &Snapshot<'_>,
        thread: u32,
        source: &mut dyn ModuleSource,
        frames: &mut Vec<u64>,
    ) -> Outcome {
        let stack = snapshot.stack;
        let stack_start = snapshot.sp;
        let read_word = |addr: u64| -> Option<u64> {
            let offset = usize::try_from(addr.checked_sub(stack_start)?).ok()?;
            let bytes = stack.get(offset..offset.checked_add(8)?)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        let start_epoch = self.modules.epoch;
        if self.bp_uses_epoch != start_epoch {
            self.bp_uses.clear();
            self.bp_uses_epoch = start_epoch;
        }
        let kept = self.kept.get(thread);
        if let Some(kept) = kept {
            kept.prefetch_reads(stack, stack_start);
        }
        let fresh = &mut self.fresh;
        fresh.begin(start_epoch);
        let mut cursor = 0;
        let mut joined = false;
        let mut regs = UnwindRegsX86_64::new(snapshot.ip, snapshot.sp, snapshot.bp);
        let mut pc = snapshot.ip;
        frames.push(pc);
        // The highest word this walk read and whether it unwound the root frame itself.
        let mut highest: Option<(u64, u64)> = None;
        let mut root_unwound = false;
        let ending = loop {
            let here = Registers {
                pc,
                sp: regs.sp(),
                bp: regs.bp(),
            };
            if let Some(kept) = kept {
                let epoch = self.modules.epoch;
                if let Some(join) = kept.join(&mut cursor, here, epoch, read_word) {
                    let whole = join.until == kept.len();
                    // The frames after the joined one (whose pc is in `frames`) this join adds:
                    // up to the last if whole, else up to the one to unwind next.
                    let added = kept.pcs(join.index + 1, (join.until + 1).min(kept.len()));
                    let total = frames.len() + added.len();
                    let ending = kept.ending().expect("a kept walk has ended");
                    if total > self.max_depth {
                        frames.extend(added);
                        frames.truncate(self.max_depth);
                        self.stats.joined += u64::from(!joined);
                        // Not kept: the walk is not whole.
                        return Outcome::CutByDepth;
                    }
                    // A whole kept walk cut at the depth limit has no frames for a walk that
                    // reaches it at a lower depth.
                    if !(whole && total < self.max_depth && ending == Ending::Deeper) {
                        frames.extend(added);
                        fresh.take(kept, &join);
                        self.stats.joined += u64::from(!joined);
                        joined = true;
                        if whole {
                            break ending;
                        }
                        let next = kept.registers(join.until);
                        regs = UnwindRegsX86_64::new(next.pc, next.sp, join.bp);
                        pc = next.pc;
                        continue;
                    }
                }
            }
            fresh.enter(here);
            // A return address is looked up at `pc - 1`, inside its call instruction.
            let Some(address) = FrameAddress::from_return_address(pc) else {
                root_unwound = true;
                break Ending::Root;
            };
            if self.modules.find(pc - 1).is_none() {
                source.find_module(pc - 1, &mut self.modules);
            }
            self.stats.frames_unwound += 1;
            let next = self.modules.unwinder.unwind_frame(
                address,
                &mut regs,
                self.caches.at(pc - 1),
                &mut |addr| {
                    let word = fresh.read(addr, read_word).ok_or(())?;
                    if highest.is_none_or(|(at, _)| addr > at) {
                        highest = Some((addr, word));
                    }
                    Ok(word)
                },
            );
            match next {
                Ok(None) | Err(FrameError::ReturnAddressIsNull) | Ok(Some(0)) => {
                    root_unwound = true;
                    break Ending::Root;
                }
                Ok(Some(return_address)) => {
                    let bp_use = *self.bp_uses.entry(pc).or_insert_with(|| {
                        bp_use(
                            &self.modules.unwinder,
                            self.caches.at(pc - 1),
                            (here, address, read_word),
                            (&regs, return_address),
                            fresh.last_frame_reads(),
                        )
                    });
                    fresh.set_bp_use(bp_use);
                    if frames.len() == self.max_depth {
                        break Ending::Deeper;
                    }
                    frames.push(return_address);
                    pc = return_address;
                }
                Err(error) => break Ending::Error(error),
            }
        };
        fresh.end(ending);
        if self.modules.epoch == start_epoch {
            self.kept.keep(thread, &mut self.fresh);
        }
        // A walk that took its root frames from the kept one read nothing new up there.
        if root_unwound && let Some((at, word)) = highest {
            self.stack_tops.saw(thread, at, word);
        }
        // A walk that needed a word above a copy not cut at the byte limit: a probe bounded
        // it too low (see `unwind/stack_tops.rs`), or it stopped at an unreadable page.
        if !snapshot.cut && read_past_the_copy(ending, snapshot) {
            self.stack_tops.forget(thread);
        }
        outcome(ending, snapshot)
    }
}

/// What the rule of the frame at `here` does with `%rbp`, from one successful unwinding of it
/// (which gave `after` and `return_address` reading `reads`): the frame is unwound again with
/// another `%rbp`. A rule that reads it reads elsewhere then (or fails); one that does not
/// reads the same words and gives the same caller, with the other `%rbp` passed on or the
/// same one restored.
fn bp_use(
    unwinder: &UnwinderX86_64<Arc<[u8]>, Policy>,
    cache: &mut RuleCache,
    (here, address, read_word): (Registers, FrameAddress, impl Fn(u64) -> Option<u64>),
    (after, return_address): (&UnwindRegsX86_64, u64),
    reads: impl ExactSizeIterator<Item = u64>,
) -> BpUse {
    const MAX_READS: usize = 16;
    let other_bp = here.bp ^ (1 << 44);
    let mut regs = UnwindRegsX86_64::new(here.pc, here.sp, other_bp);
    let mut probed = [0u64; MAX_READS];
    let mut count = 0;
    let result = unwinder.unwind_frame(address, &mut regs, cache, &mut |addr| {
        if count < MAX_READS {
            probed[count] = addr;
        }
        count += 1;
        read_word(addr).ok_or(())
    });
    let same_reads =
        count <= MAX_READS && reads.len() == count && reads.eq(probed[..count].iter().copied());
    if result != Ok(Some(return_address)) || !same_reads || regs.sp() != after.sp() {
        BpUse::Reads
    } else if after.bp() == here.bp && regs.bp() == other_bp {
        BpUse::PassesOn
    } else if regs.bp() == after.bp() {
        BpUse::Restores
    } else {
        BpUse::Reads
    }
}

/// Whether the walk ended needing a word above the end of `snapshot`'s bytes.
fn read_past_the_copy(ending: Ending, snapshot: &Snapshot<'_>) -> bool {
    let stack_end = snapshot.sp.saturating_add(snapshot.stack.len() as u64);
    matches!(ending, Ending::Error(FrameError::CouldNotReadStack(addr)) if addr >= stack_end)
}

/// What `ending` means for `snapshot`: a read past the end of a cut copy is a cut stack.
fn outcome(ending: Ending, snapshot: &Snapshot<'_>) -> Outcome {
    match ending {
        Ending::Root => Outcome::Complete,
        Ending::Deeper => Outcome::CutByDepth,
        Ending::Error(_) if snapshot.cut && read_past_the_copy(ending, snapshot) => {
            Outcome::CutByBytes
        }
        Ending::Error(error) => Outcome::Failed(error),
    }
}
