//! The live heap, rebuilt from allocation events: which blocks are live, where they came from,
//! and the running totals the report prints.
//!
//! malloc-family blocks and mmap regions are kept apart: regions are page-granular address
//! ranges that can be partially unmapped, and glibc itself mmaps large blocks, so mixing them
//! would count those bytes twice.

use crate::event::Event;
use crate::fasthash::FastHashMap;
use crate::stacks::StackId;
use block_store::BlockStore;
use block_table::Remembered;
use profiler_common::{
    EventKind, FLAG_ALLOCATOR_INTERNAL, FLAG_INHERITED_AT_FORK, FLAG_REALLOC_ENTRY,
    FLAG_RELEASED_BY_EXEC, KIND_SLOTS,
};

/// Flags of the collector's synthetic events, which are no calls of the program.
const SYNTHETIC: u32 = FLAG_RELEASED_BY_EXEC | FLAG_INHERITED_AT_FORK;
use std::collections::BTreeMap;

mod address_table;
mod block_infos;
pub(crate) mod block_ring;
pub(crate) mod block_store;
mod block_table;

pub use block_ring::Lookup;
pub use block_store::RecordedLookups;

/// What mmap returns on failure: `(void *)-1`.
pub const MAP_FAILED: u64 = u64::MAX;

/// mmap lengths are rounded up to whole pages by the kernel; 4 KiB on every target we probe.
pub const PAGE_SIZE: u64 = 4096;

/// At most this many double frees are kept with their details; `HeapStats::double_frees`
/// still counts every one. A program that double-frees in a loop must not exhaust our memory.
pub const MAX_DOUBLE_FREE_RECORDS: usize = 1024;

/// How the target was observed, which decides what a free of an unknown pointer means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Launched under the profiler: every block was seen being allocated, so a free of a
    /// pointer that was already freed is a real double free.
    Run,
    /// Attached to a running process: blocks from before the attach are unknown, so such
    /// frees can only be counted as unknown.
    Attach,
}

/// A live malloc-family block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Bytes requested (not the allocator's usable size).
    pub size: u64,
    /// The function that returned it.
    pub kind: EventKind,
    pub tid: u32,
    /// When it was allocated.
    pub ts_ns: u64,
    pub stack: Option<StackId>,
}

/// A block that was freed (or released by realloc) and whose address has not been handed out
/// again: in [`Mode::Run`], a second free of it is a double free; in either mode, the leak
/// check knows its memory for the allocator's, not the program's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreedBlock {
    pub size: u64,
    /// Where the block had been allocated.
    pub stack: Option<StackId>,
    pub free_ts_ns: u64,
}

/// What one event did to the malloc-family heap, returned by [`HeapState::apply`] so that
/// analyses can follow the heap without keeping a second copy of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// The block that stopped being live (a free, realloc's old block, or realloc(p, 0)),
    /// with its address.
    pub released: Option<(u64, Block)>,
    /// The block that became live, with its address.
    pub created: Option<(u64, Block)>,
    /// A live block replaced by a new one at its address without a free (a lost-free symptom).
    pub overwritten: Option<(u64, Block)>,
    /// This event raised the malloc-family peak (`HeapStats::peak_live_bytes`).
    pub new_peak: bool,
}

impl Effect {
    /// The blocks the event ended (overwritten, then released), borrowed: copying them into a
    /// temporary array costs more than everything the analyses do with them.
    #[inline]
    pub fn ended(&self) -> impl Iterator<Item = &(u64, Block)> {
        self.overwritten.iter().chain(&self.released)
    }
}

/// A free of a pointer that had already been freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoubleFree {
    pub addr: u64,
    /// Size of the block when it was live.
    pub size: u64,
    /// Where the block had been allocated.
    pub alloc_stack: Option<StackId>,
    /// When the second free happened, and on which thread.
    pub ts_ns: u64,
    pub tid: u32,
    /// The return address into the second free's caller (the free probe's `aux`; 0 if not
    /// known): frees carry no stack, but their immediate caller names the culprit.
    pub freed_from: u64,
}

/// A live mmap region `[start, end)`; the start is its key in [`HeapState::regions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Exclusive end address.
    pub end: u64,
    /// Mmap or Mremap: the call that created this range.
    pub kind: EventKind,
    pub tid: u32,
    pub ts_ns: u64,
    pub stack: Option<StackId>,
}

/// Calls to one probed function and the bytes they moved (see [`HeapStats::by_function`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    pub calls: u64,
    pub bytes: u64,
}

/// mmap/munmap/mremap figures, kept apart from the malloc heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmapStats {
    /// mmap calls, including failed ones and the allocator's own.
    pub calls: u64,
    /// mmap calls that returned MAP_FAILED (or 0).
    pub failed_calls: u64,
    /// Page-rounded lengths of successful mmaps (tracked regions only).
    pub bytes: u64,
    /// mmaps made inside the allocator's `free` (a new thread's arena): its own memory, not
    /// tracked as regions, like the mmaps malloc makes (which nesting hides).
    pub allocator_internal_mmaps: u64,
    pub munmap_calls: u64,
    /// munmaps that touched no tracked region (mappings from before an attach, or lost
    /// events), the allocator's own excepted.
    pub unknown_munmaps: u64,
    /// munmaps by the allocator's code that touched no tracked region (malloc's large blocks
    /// and arena trims, unmapped from inside free).
    pub allocator_internal_munmaps: u64,
    pub live_regions: u64,
    pub live_bytes: u64,
    pub peak_bytes: u64,
}

/// Every running total. Exact counts of the events applied; see the field docs for which
/// events each one counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// malloc-family calls, failed ones included.
    pub allocations: u64,
    /// malloc-family calls that returned NULL (realloc(p, 0) freeing p is not a failure).
    pub failed_allocations: u64,
    /// Frees of live blocks. Double, unknown and allocator-internal frees are counted apart.
    pub frees: u64,
    /// Requested bytes of successful malloc-family calls.
    pub bytes_allocated: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    /// Highest `live_bytes` after any event, and the block count and time when first reached.
    pub peak_live_bytes: u64,
    pub peak_live_blocks: u64,
    /// None while the heap has never held a byte.
    pub peak_ts_ns: Option<u64>,
    /// Frees of pointers that were never seen allocated (and, in Run mode, not freed before).
    pub unknown_frees: u64,
    /// Run mode only: frees of pointers already freed and not allocated again since.
    pub double_frees: u64,
    /// Frees of pointers that were not live, made by the allocator's own code (glibc flushing
    /// an exiting thread's tcache): never unknown or double frees of the program.
    pub allocator_internal_frees: u64,
    /// realloc of a pointer that is not live (allocated before attach, or a lost event).
    pub unknown_reallocs: u64,
    /// Allocations returning an address that was still live: its free was lost.
    pub overwritten_blocks: u64,
    /// Blocks (and their bytes) live when the target exec'd another program: released by the
    /// exec, so neither frees nor leaks of either program.
    pub released_by_exec_blocks: u64,
    pub released_by_exec_bytes: u64,
    /// Blocks (and their bytes) the process started with: live in its parent when it was
    /// forked. Not allocations of this process; freeing them counts as frees.
    pub inherited_blocks: u64,
    pub inherited_bytes: u64,
    /// Indexed by `EventKind as usize` (slot 0 unused). `calls` counts every event of the kind.
    /// `bytes`: allocators: requested bytes of successful calls; free: sizes of the live blocks
    /// it released; mmap and mremap: page-rounded lengths mapped; munmap: tracked bytes removed.
    pub by_function: [CallStats; KIND_SLOTS as usize],
    pub mmap: MmapStats,
}

impl Default for HeapStats {
    fn default() -> Self {
        Self {
            allocations: 0,
            failed_allocations: 0,
            frees: 0,
            bytes_allocated: 0,
            live_blocks: 0,
            live_bytes: 0,
            peak_live_bytes: 0,
            peak_live_blocks: 0,
            peak_ts_ns: None,
            unknown_frees: 0,
            double_frees: 0,
            allocator_internal_frees: 0,
            unknown_reallocs: 0,
            overwritten_blocks: 0,
            released_by_exec_blocks: 0,
            released_by_exec_bytes: 0,
            inherited_blocks: 0,
            inherited_bytes: 0,
            by_function: [CallStats::default(); KIND_SLOTS as usize],
            mmap: MmapStats::default(),
        }
    }
}

/// The heap rebuilt from events, applied in the order the target made the calls.
#[derive(Debug)]
pub struct HeapState {
    mode: Mode,
    stats: HeapStats,
    /// Live blocks and freed ones (until their address is handed out again), by address; or,
    /// replaying a recording, the answers it recorded (`block_store.rs`).
    blocks: BlockStore,
    double_free_records: Vec<DoubleFree>,
    /// Non-overlapping live regions by start address.
    regions: BTreeMap<u64, Region>,
    /// Reallocs between their entry record and their own ([`FLAG_REALLOC_ENTRY`]), by thread
    /// (a thread has one at a time; one address can be in two: a released one and the
    /// realloc of whoever was handed it next).
    reallocs_in_flight: FastHashMap<u32, ReallocInFlight>,
}

/// A realloc whose return has not been recorded yet.
#[derive(Clone, Copy, Debug)]
struct ReallocInFlight {
    /// The block it may release.
    old_addr: u64,
    /// Another thread was handed the address meanwhile: the realloc released the block.
    released: bool,
}

/// Most reallocs in flight remembered: one per thread of the target.
const MAX_REALLOCS_IN_FLIGHT: usize = 1 << 16;

fn page_round_up(len: u64) -> u64 {
    len.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

impl HeapState {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            stats: HeapStats::default(),
            blocks: BlockStore::default(),
            double_free_records: Vec::new(),
            regions: BTreeMap::new(),
            reallocs_in_flight: FastHashMap::default(),
        }
    }

    /// A heap that looks its blocks up in the answers a recording carries
    /// ([`HeapState::apply_recorded`]) instead of a table of every address, and takes the
    /// blocks live at the end from it ([`HeapState::end_recorded`]).
    pub fn answered(mode: Mode) -> Self {
        Self {
            blocks: BlockStore::answered(),
            ..Self::new(mode)
        }
    }

    /// Takes the blocks live at the end of an [`answered`](HeapState::answered) heap's
    /// recording, which must be the blocks its events left live: as many, as many bytes.
    pub fn end_recorded(&mut self, live: &[(u64, Block)]) -> Result<(), String> {
        let bytes: u64 = live.iter().map(|(_, block)| block.size).sum();
        let counted = (self.stats.live_blocks, self.stats.live_bytes);
        if (live.len() as u64, bytes) != counted {
            return Err(format!(
                "the recording ends with {} live blocks of {bytes} bytes, its events leave {} of {}",
                live.len(),
                counted.0,
                counted.1
            ));
        }
        let table = self.blocks.table_mut();
        for (addr, block) in live {
            if table.insert_live(*addr, block).is_some() {
                return Err(format!("the recording's live blocks name {addr:#x} twice"));
            }
        }
        Ok(())
    }

    /// The lookups the last event made and what they found (a heap with a table).
    pub fn tape(&self) -> Option<&block_store::Tape> {
        self.blocks.tape()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn stats(&self) -> &HeapStats {
        &self.stats
    }

    /// Live malloc-family blocks by address, in no particular order.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, Block)> + '_ {
        self.blocks
            .table()
            .iter()
            .filter_map(|(addr, held)| match held {
                Remembered::Live(block) => Some((addr, block)),
                Remembered::Freed(_) => None,
            })
    }

    /// Every address the allocator handed a block out at, as far as the heap remembers: the
    /// live blocks and every freed one not handed out again (so in Run mode, every address a
    /// block ever had). In no particular order.
    pub fn block_addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.table().iter().map(|(addr, _)| addr)
    }

    /// Blocks freed while observed whose address was not handed out again, as (address,
    /// size), in no particular order.
    pub fn freed_blocks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.blocks
            .table()
            .iter()
            .filter_map(|(addr, held)| match held {
                Remembered::Freed(freed) => Some((addr, freed.size)),
                Remembered::Live(_) => None,
            })
    }

    /// Forgets the freed blocks (keeping the live ones), once no event will follow and the
    /// leak check is done (a live session's end, a replay's end): the reports' passes then
    /// step over the live blocks only, not every address a block ever had (python3: 4.5
    /// million entries for 497 live blocks at the end).
    /// [`HeapState::block_addresses`] and [`HeapState::freed_blocks`] then hold the live ones
    /// only, and a free of a forgotten block would count as unknown.
    pub fn forget_freed(&mut self) {
        self.blocks.table_mut().retain_live();
    }

    /// `addr` is a live malloc-family block.
    pub fn is_live(&self, addr: u64) -> bool {
        self.blocks.table().is_live(addr)
    }

    /// Live mmap regions by start address, ascending.
    pub fn regions(&self) -> impl Iterator<Item = (u64, &Region)> {
        self.regions.iter().map(|(start, region)| (*start, region))
    }

    /// The first [`MAX_DOUBLE_FREE_RECORDS`] double frees, in event order.
    pub fn double_frees(&self) -> &[DoubleFree] {
        &self.double_free_records
    }

    /// A hint that an event about `addr` comes soon: its entry is brought into the cache.
    #[inline]
    pub fn prefetch(&self, addr: u64) {
        self.blocks.table().prefetch(addr);
    }

    /// Applies one event and says what it did to the blocks. `stack` is where the call was
    /// made (ignored by free and munmap, which create nothing that a report attributes).
    pub fn apply(&mut self, event: &Event, stack: Option<StackId>) -> Effect {
        self.apply_recorded(event, stack, &RecordedLookups::default())
    }

    /// [`HeapState::apply`], with the answers a recording gave for the event's lookups (an
    /// [`answered`](HeapState::answered) heap; a heap with a table ignores them).
    #[inline]
    pub fn apply_recorded(
        &mut self,
        event: &Event,
        stack: Option<StackId>,
        answers: &RecordedLookups,
    ) -> Effect {
        self.blocks.begin_event(answers);
        if event.flags & FLAG_REALLOC_ENTRY != 0 {
            self.realloc_entry(event);
            return Effect::default();
        }
        // An exec's releases and a fork's inheritance are no calls of the program.
        if event.flags & SYNTHETIC == 0 {
            self.stats.by_function[event.kind as usize].calls += 1;
        }
        let mut effect = Effect::default();
        match event.kind {
            EventKind::Free | EventKind::OperatorDelete => self.free(event, &mut effect),
            EventKind::Realloc | EventKind::Reallocarray => self.realloc(event, stack, &mut effect),
            EventKind::Mmap => self.mmap(event, stack),
            EventKind::Munmap => self.munmap(event),
            EventKind::Mremap => self.mremap(event, stack),
            EventKind::Malloc
            | EventKind::Calloc
            | EventKind::PosixMemalign
            | EventKind::AlignedAlloc
            | EventKind::Memalign
            | EventKind::Valloc
            | EventKind::Pvalloc
            | EventKind::OperatorNew
                if event.flags & FLAG_INHERITED_AT_FORK != 0 =>
            {
                self.inherit(event, stack, &mut effect);
            }
            EventKind::Malloc
            | EventKind::Calloc
            | EventKind::PosixMemalign
            | EventKind::AlignedAlloc
            | EventKind::Memalign
            | EventKind::Valloc
            | EventKind::Pvalloc
            | EventKind::OperatorNew => {
                self.stats.allocations += 1;
                self.allocate(event, stack, &mut effect);
            }
        }
        effect.new_peak = self.update_peaks(event.ts_ns);
        effect
    }

    /// A fresh block (malloc, or realloc of NULL); the caller has counted the call.
    #[inline] // into `apply`, which then writes the Effect in place instead of copying it
    fn allocate(&mut self, event: &Event, stack: Option<StackId>, effect: &mut Effect) {
        if event.addr == 0 {
            self.stats.failed_allocations += 1;
            return;
        }
        self.stats.bytes_allocated += event.size;
        self.stats.by_function[event.kind as usize].bytes += event.size;
        let block = Block {
            size: event.size,
            kind: event.kind,
            tid: event.tid,
            ts_ns: event.ts_ns,
            stack,
        };
        // Replaces what a Run-mode free left there: the address is no longer a freed block.
        if let Some(missed) = self.blocks.insert_live(event.addr, &block) {
            self.stats.live_blocks -= 1;
            self.stats.live_bytes -= missed.size;
            // Another thread's realloc released it before its own record was written (the
            // map holds a realloc per thread: few, and searched only on such a collision).
            let releasing = self.reallocs_in_flight.iter_mut().find(|(tid, realloc)| {
                **tid != event.tid && realloc.old_addr == event.addr && !realloc.released
            });
            match releasing {
                Some((_, realloc)) => {
                    realloc.released = true;
                    // A realloc's new block may land here too: its own release holds the
                    // `released` slot, so this one ends through `overwritten` (uncounted).
                    match effect.released {
                        None => effect.released = Some((event.addr, missed)),
                        Some(_) => effect.overwritten = Some((event.addr, missed)),
                    }
                }
                // Its free never reached us: the only consistent repair is to forget it.
                None => {
                    self.stats.overwritten_blocks += 1;
                    effect.overwritten = Some((event.addr, missed));
                }
            }
        }
        effect.created = Some((event.addr, block));
        self.stats.live_blocks += 1;
        self.stats.live_bytes += event.size;
    }

    /// A block live in the parent when this process was forked: live here too, not allocated.
    fn inherit(&mut self, event: &Event, stack: Option<StackId>, effect: &mut Effect) {
        let block = Block {
            size: event.size,
            kind: event.kind,
            tid: event.tid,
            ts_ns: event.ts_ns,
            stack,
        };
        if let Some(missed) = self.blocks.insert_live(event.addr, &block) {
            // The parent's heap holds each address once, so only a block of this process
            // replaced without a free can be here: forgotten, as in `allocate`.
            self.stats.live_blocks -= 1;
            self.stats.live_bytes -= missed.size;
            self.stats.overwritten_blocks += 1;
            effect.overwritten = Some((event.addr, missed));
        }
        effect.created = Some((event.addr, block));
        self.stats.live_blocks += 1;
        self.stats.live_bytes += event.size;
        self.stats.inherited_blocks += 1;
        self.stats.inherited_bytes += event.size;
    }

    #[inline] // into `apply`, which then writes the Effect in place instead of copying it
    fn realloc(&mut self, event: &Event, stack: Option<StackId>, effect: &mut Effect) {
        self.stats.allocations += 1;
        if event.old_addr == 0 {
            return self.allocate(event, stack, effect);
        }
        let released_before = self
            .reallocs_in_flight
            .remove(&event.tid)
            .is_some_and(|realloc| realloc.old_addr == event.old_addr && realloc.released);
        if released_before {
            // Released when another thread was handed the address (see `allocate`).
            if event.addr != 0 {
                self.allocate(event, stack, effect);
            }
            return;
        }
        if event.addr == 0 {
            if event.size == 0 {
                // realloc(p, 0): glibc frees p and returns NULL. Not a failure, not a free().
                self.release_for_realloc(event, effect);
            } else {
                // Failed: p stays valid and live.
                self.stats.failed_allocations += 1;
            }
            return;
        }
        // Release first so that an in-place realloc (same address) is remove + insert.
        self.release_for_realloc(event, effect);
        self.allocate(event, stack, effect);
    }

    /// A realloc of a live block starts ([`FLAG_REALLOC_ENTRY`]): not a call, no change.
    fn realloc_entry(&mut self, event: &Event) {
        if self.blocks.query_live(event.old_addr)
            && self.reallocs_in_flight.len() < MAX_REALLOCS_IN_FLIGHT
        {
            self.reallocs_in_flight.insert(
                event.tid,
                ReallocInFlight {
                    old_addr: event.old_addr,
                    released: false,
                },
            );
        }
    }

    #[inline] // into `apply`, which then writes the Effect in place instead of copying it
    fn release_for_realloc(&mut self, event: &Event, effect: &mut Effect) {
        match self.blocks.release(event.old_addr, event.ts_ns) {
            Ok(block) => {
                self.stats.live_blocks -= 1;
                self.stats.live_bytes -= block.size;
                effect.released = Some((event.old_addr, block));
            }
            Err(_) => self.stats.unknown_reallocs += 1,
        }
    }

    #[inline] // into `apply`, which then writes the Effect in place instead of copying it
    fn free(&mut self, event: &Event, effect: &mut Effect) {
        let freed = match self.blocks.release(event.addr, event.ts_ns) {
            Ok(block) => {
                if event.flags & FLAG_RELEASED_BY_EXEC != 0 {
                    self.stats.released_by_exec_blocks += 1;
                    self.stats.released_by_exec_bytes += block.size;
                } else {
                    self.stats.frees += 1;
                    self.stats.by_function[event.kind as usize].bytes += block.size;
                }
                self.stats.live_blocks -= 1;
                self.stats.live_bytes -= block.size;
                effect.released = Some((event.addr, block));
                return;
            }
            Err(freed) => freed,
        };
        if event.flags & FLAG_ALLOCATOR_INTERNAL != 0 {
            // The allocator handing back its own caches; what it frees was freed before.
            self.stats.allocator_internal_frees += 1;
        } else if let Some(freed) = freed
            && self.mode == Mode::Run
        {
            // In Attach mode a call can be missed as a probe comes or goes (a malloc handing
            // the address out again): a second free is only unknown there.
            self.stats.double_frees += 1;
            if self.double_free_records.len() < MAX_DOUBLE_FREE_RECORDS {
                self.double_free_records.push(DoubleFree {
                    addr: event.addr,
                    size: freed.size,
                    alloc_stack: freed.stack,
                    ts_ns: event.ts_ns,
                    tid: event.tid,
                    freed_from: event.aux,
                });
            }
        } else {
            self.stats.unknown_frees += 1;
        }
    }

    fn mmap(&mut self, event: &Event, stack: Option<StackId>) {
        if event.flags & FLAG_INHERITED_AT_FORK != 0 {
            self.map_region(event, event.addr, event.size, stack);
            return;
        }
        self.stats.mmap.calls += 1;
        if event.addr == MAP_FAILED || event.addr == 0 {
            self.stats.mmap.failed_calls += 1;
            return;
        }
        if event.flags & FLAG_ALLOCATOR_INTERNAL != 0 {
            self.stats.mmap.allocator_internal_mmaps += 1;
            return;
        }
        let len = self.map_region(event, event.addr, event.size, stack);
        self.stats.mmap.bytes += len;
        self.stats.by_function[EventKind::Mmap as usize].bytes += len;
    }

    fn munmap(&mut self, event: &Event) {
        let end = event.addr.saturating_add(page_round_up(event.size));
        let removed = self.unmap_range(event.addr, end);
        if event.flags & FLAG_RELEASED_BY_EXEC != 0 {
            return;
        }
        self.stats.mmap.munmap_calls += 1;
        if removed == 0 {
            if event.flags & FLAG_ALLOCATOR_INTERNAL != 0 {
                self.stats.mmap.allocator_internal_munmaps += 1;
            } else {
                self.stats.mmap.unknown_munmaps += 1;
            }
        }
        self.stats.by_function[EventKind::Munmap as usize].bytes += removed;
    }

    fn mremap(&mut self, event: &Event, stack: Option<StackId>) {
        if event.addr == MAP_FAILED || event.addr == 0 {
            return;
        }
        // aux = old size. The old range is gone even when the result is the same address.
        let old_end = event.old_addr.saturating_add(page_round_up(event.aux));
        self.unmap_range(event.old_addr, old_end);
        let len = self.map_region(event, event.addr, event.size, stack);
        self.stats.by_function[EventKind::Mremap as usize].bytes += len;
    }

    /// Tracks `[addr, addr + size rounded to pages)`, replacing whatever it overlaps (a
    /// MAP_FIXED mapping replaces the old pages). Returns the region's length.
    fn map_region(&mut self, event: &Event, addr: u64, size: u64, stack: Option<StackId>) -> u64 {
        let end = addr.saturating_add(page_round_up(size));
        if end == addr {
            return 0;
        }
        self.unmap_range(addr, end);
        self.regions.insert(
            addr,
            Region {
                end,
                kind: event.kind,
                tid: event.tid,
                ts_ns: event.ts_ns,
                stack,
            },
        );
        self.stats.mmap.live_regions += 1;
        self.stats.mmap.live_bytes += end - addr;
        end - addr
    }

    /// Removes `[start, end)` from the tracked regions, splitting regions it cuts through.
    /// Returns how many tracked bytes were removed.
    fn unmap_range(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let mut removed = 0;
        // Regions do not overlap, so walking down from the last one starting below `end`
        // visits exactly the overlapping ones, and stops at the first that ends before `start`.
        while let Some((&region_start, &region)) = self.regions.range(..end).next_back() {
            if region.end <= start {
                break;
            }
            self.regions.remove(&region_start);
            self.stats.mmap.live_regions -= 1;
            let cut_start = region_start.max(start);
            let cut_end = region.end.min(end);
            removed += cut_end - cut_start;
            if region.end > end {
                self.regions.insert(end, region);
                self.stats.mmap.live_regions += 1;
            }
            if region_start < start {
                self.regions.insert(
                    region_start,
                    Region {
                        end: start,
                        ..region
                    },
                );
                self.stats.mmap.live_regions += 1;
                // The left piece ends at `start`, so the next probe stops on it.
            }
        }
        self.stats.mmap.live_bytes -= removed;
        removed
    }

    /// Returns whether the malloc-family peak rose.
    fn update_peaks(&mut self, ts_ns: u64) -> bool {
        let stats = &mut self.stats;
        if stats.mmap.live_bytes > stats.mmap.peak_bytes {
            stats.mmap.peak_bytes = stats.mmap.live_bytes;
        }
        if stats.live_bytes > stats.peak_live_bytes {
            stats.peak_live_bytes = stats.live_bytes;
            stats.peak_live_blocks = stats.live_blocks;
            stats.peak_ts_ns = Some(ts_ns);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests;
