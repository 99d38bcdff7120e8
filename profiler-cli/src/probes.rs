//! Loading memprof's eBPF programs and attaching them to one process.
use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
};
use profiler_common::{
    CALLS_BY_TID_MAP, CONTROL_MAP, COUNTERS_MAP, EventKind, FOLLOWED_MAP, MAX_TID_SLOTS, RING_MAP,
    STACK_TOPS_MAP, config, counter,
};
use profiler_core::heap::Mode;
use profiler_core::report::LostCounts;

use crate::{
    multi_link::{self, MultiObject, MultiProgram},
    options::{SessionOptions, Unwind},
    probe_site::ProbeSite,
};

static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

const RETURN_PROGRAM: &str = "memprof_return";
/// Holds a thread entering dlclose until the collector has read its calls (`run`).
const DLCLOSE_PROGRAM: &str = "dlclose_enter";

/// Settings that shape the probes.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub ring_bytes: u32,
    /// User stack frames to capture per allocation (0 = none).
    pub stack_depth: u32,
    /// `unwind_mode::*`: frame-pointer walk or stack copy.
    pub unwind_mode: u32,
    /// Bytes of user stack copied per allocation in DWARF mode.
    pub stack_bytes: u32,
    /// Ask the tracer to hold a thread that allocates while half the ring is queued (run).
    pub hold_threads: bool,
    /// free and operator delete report their caller (`run`: see `config::FREE_CALLERS`).
    pub free_callers: bool,
}

impl ProbeConfig {
    /// The probes a session in `mode` with `options` needs; `hold_threads` as above.
    pub fn for_session(options: &SessionOptions, mode: Mode, hold_threads: bool) -> ProbeConfig {
        ProbeConfig {
            ring_bytes: options.probe_ring_bytes(hold_threads),
            stack_depth: options.stacks.max_depth,
            unwind_mode: match options.stacks.unwind {
                Unwind::FramePointers => profiler_common::unwind_mode::FRAME_POINTERS,
                Unwind::Dwarf => profiler_common::unwind_mode::DWARF,
            },
            stack_bytes: options.stacks.stack_bytes,
            hold_threads,
            free_callers: mode == Mode::Run,
        }
    }
}

/// The loaded programs and their maps. Links are uprobe_multi links (one per program and
/// object file): the kernel releases each with one grace-period wait, and releases of
/// different links overlap, so detaching takes one wait (~60 ms here) instead of ~80 ms per
/// probe serialized (2 s for memprof's 24 perf-event probes).
pub struct Probes {
    ebpf: Ebpf,
    programs: HashMap<&'static str, MultiProgram>,
    links: Vec<OwnedFd>,
    /// The return probes' links, detached after the entry probes' (see `detach`).
    return_links: Vec<OwnedFd>,
    /// The other processes of a followed tree: (entry links, return links) by pid.
    process_links: HashMap<u32, (Vec<OwnedFd>, Vec<OwnedFd>)>,
    /// dlclose's entry (object, file offset), once [`Probes::hold_at_dlclose`] probed it:
    /// followed processes get the same probe.
    dlclose: Option<(PathBuf, u64)>,
}

/// Links released concurrently at the end of a session.
const CONCURRENT_RELEASES: usize = 64;

/// Slots of the probes' table of calls in flight by thread id: one per possible thread id
/// (`/proc/sys/kernel/pid_max`, 32768 on small machines), at most [`MAX_TID_SLOTS`]. Threads
/// with larger ids use the hash map; [`TID_SLOTS_VAR`] sets fewer slots (the tests send every
/// thread that way).
fn tid_slots() -> u32 {
    let slots = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map_or(MAX_TID_SLOTS, |pid_max| pid_max.clamp(1, MAX_TID_SLOTS));
    std::env::var(TID_SLOTS_VAR)
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
        .map_or(slots, |asked| asked.clamp(1, slots))
}

/// memprof's own knob: how many thread ids get a slot (fewer than the default only).
pub const TID_SLOTS_VAR: &str = "MEMPROF_TID_SLOTS";

impl Probes {
    pub fn load(tgid: u32, config: ProbeConfig) -> Result<Probes> {
        if !multi_link::uprobe_multi_supported() {
            bail!(
                "this kernel lacks working uprobe_multi links (memprof needs Linux 6.10 or newer)"
            );
        }
        // Wake the collector early once a quarter of the ring is queued; otherwise it drains
        // on its timer.
        let wakeup_bytes = u64::from(config.ring_bytes / 4);
        let hold_bytes = if config.hold_threads {
            u64::from(config.ring_bytes / 2)
        } else {
            0
        };
        let stack_depth = config.stack_depth;
        let offsets = crate::kernel_btf::KernelOffsets::of_running_kernel();
        let tid_slots = tid_slots();
        let free_callers = u32::from(config.free_callers);
        // aya creates the maps (the ring, the in-flight table, .rodata with the globals);
        // the programs are loaded for uprobe_multi by `multi_link` against those maps.
        let ebpf = EbpfLoader::new()
            .override_global(config::TARGET_TGID, &tgid, true)
            .override_global(config::WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(config::HOLD_BYTES, &hold_bytes, true)
            .override_global(config::TASK_BLOCKED_OFFSET, &offsets.task_blocked, true)
            .override_global(config::STACK_DEPTH, &stack_depth, true)
            .override_global(config::UNWIND_MODE, &config.unwind_mode, true)
            .override_global(config::STACK_BYTES, &config.stack_bytes, true)
            .override_global(config::TASK_MM_OFFSET, &offsets.task_mm, true)
            .override_global(config::MM_START_STACK_OFFSET, &offsets.mm_start_stack, true)
            .override_global(config::TID_SLOTS, &tid_slots, true)
            .override_global(config::FREE_CALLERS, &free_callers, true)
            .map_max_entries(RING_MAP, config.ring_bytes)
            .map_max_entries(CALLS_BY_TID_MAP, tid_slots)
            .map_max_entries(STACK_TOPS_MAP, tid_slots)
            .load(PROGRAMS)
            .map_err(|error| anyhow!("cannot load the eBPF programs: {error}{}", btf_hint()))?;
        let object = MultiObject::new(PROGRAMS, &ebpf)?;
        let programs = program_names()
            .map(|name| Ok((name, object.load(name)?)))
            .collect::<Result<_>>()?;
        Ok(Probes {
            ebpf,
            programs,
            links: Vec::new(),
            return_links: Vec::new(),
            process_links: HashMap::new(),
            dlclose: None,
        })
    }

    /// Attaches every site. Return probes go first: an entry seen without its return probe
    /// would leave its thread looking "inside a call" forever and silence it.
    pub fn attach(&mut self, pid: u32, sites: &[ProbeSite]) -> Result<()> {
        // Nothing starts while the links go in one by one: the window opens at one instant
        // for every probe once they all are in place (else allocations seen before their
        // frees were probed looked live at the window's end).
        self.set_control(1);
        let (entries, returns) = self.attach_links(pid, sites)?;
        self.links.extend(entries);
        self.return_links.extend(returns);
        self.set_control(0);
        Ok(())
    }

    /// Holds `pid`'s threads at dlclose's entry (`object` at file offset `offset`) until the
    /// collector has read their calls: frames in the library it unloads are still unwound and
    /// its maps read. Only with holds on (`run`); the probe does nothing otherwise.
    pub fn hold_at_dlclose(&mut self, pid: u32, object: PathBuf, offset: u64) -> Result<()> {
        let link = self
            .attach_program(DLCLOSE_PROGRAM, &object, &[offset], pid, false)
            .context("cannot probe dlclose")?;
        self.links.push(link);
        self.dlclose = Some((object, offset));
        Ok(())
    }

    /// Probes process `pid` too: a child of a followed tree, held before its first
    /// instruction, so neither the order of its links nor the stop flag matters (the other
    /// processes keep running).
    pub fn follow(&mut self, pid: u32, sites: &[ProbeSite]) -> Result<()> {
        if let Some(map) = self.ebpf.map_mut(FOLLOWED_MAP) {
            let mut followed = aya::maps::HashMap::<&mut MapData, u32, u32>::try_from(map)?;
            followed.insert(pid, 1, 0)?;
        }
        let (mut entries, returns) = self.attach_links(pid, sites)?;
        if let Some((object, offset)) = self.dlclose.clone() {
            entries.push(self.attach_program(DLCLOSE_PROGRAM, &object, &[offset], pid, false)?);
        }
        self.process_links.insert(pid, (entries, returns));
        Ok(())
    }

    /// Process `pid` of the tree is gone: it leaves the targets, and its links are released
    /// in the background (each release waits a grace period).
    pub fn forget(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.map_mut(FOLLOWED_MAP)
            && let Ok(mut followed) = aya::maps::HashMap::<&mut MapData, u32, u32>::try_from(map)
        {
            let _ = followed.remove(&pid);
        }
        if let Some(links) = self.process_links.remove(&pid) {
            thread::spawn(move || drop(links));
        }
    }

    /// The links of every site for process `pid`: (entry links, return links).
    fn attach_links(
        &mut self,
        pid: u32,
        sites: &[ProbeSite],
    ) -> Result<(Vec<OwnedFd>, Vec<OwnedFd>)> {
        let mut returns: Vec<(&Path, Vec<u64>)> = Vec::new();
        for site in sites.iter().filter(|s| s.kind.needs_return_probe()) {
            match returns.iter_mut().find(|(path, _)| *path == site.path) {
                Some((_, offsets)) => offsets.push(site.file_offset),
                None => returns.push((&site.path, vec![site.file_offset])),
            }
        }
        let mut return_links = Vec::new();
        for (path, offsets) in returns {
            return_links.push(self.attach_program(RETURN_PROGRAM, path, &offsets, pid, true)?);
        }
        let mut entry_links = Vec::new();
        for site in sites {
            let link = self
                .attach_program(
                    entry_program(site),
                    &site.path,
                    &[site.file_offset],
                    pid,
                    false,
                )
                .with_context(|| format!("cannot probe {}", site.symbol))?;
            entry_links.push(link);
        }
        Ok((entry_links, return_links))
    }

    fn attach_program(
        &mut self,
        name: &str,
        path: &Path,
        offsets: &[u64],
        pid: u32,
        retprobe: bool,
    ) -> Result<OwnedFd> {
        let program = self
            .programs
            .get(name)
            .ok_or_else(|| anyhow!("eBPF program {name} missing"))?;
        program.attach(path, offsets, &[], pid, retprobe)
    }

    /// Ends the recording at one instant ([`Probes::stop`]), then detaches every probe: the
    /// entry probes first, then the return probes, so that a call whose entry was seen still
    /// has its return recorded. (Links detached in any order made attach report thousands of
    /// unknown frees at the end of a window: frees still probed after their allocations were
    /// not.) Releases of different links overlap in the kernel, so each group is closed
    /// concurrently.
    pub fn detach(&mut self) {
        self.stop();
        let mut entries = std::mem::take(&mut self.links);
        let mut returns = std::mem::take(&mut self.return_links);
        for (_, (process_entries, process_returns)) in self.process_links.drain() {
            entries.extend(process_entries);
            returns.extend(process_returns);
        }
        for mut links in [entries, returns] {
            // At most this many releases wait at once (a followed tree has links per process).
            while !links.is_empty() {
                let chunk: Vec<OwnedFd> = links
                    .drain(..links.len().min(CONCURRENT_RELEASES))
                    .collect();
                thread::scope(|scope| {
                    for link in chunk {
                        scope.spawn(move || drop(link));
                    }
                });
            }
        }
    }

    /// From now on no probe starts a call: the session's end is one instant for all of them.
    pub fn stop(&mut self) {
        self.set_control(1);
    }

    /// Sets the probes' stop flag (1: no call is started). Best effort: without the map the
    /// links' attachment and release bound the window, less sharply.
    fn set_control(&mut self, stopped: u32) {
        if let Some(map) = self.ebpf.map_mut(CONTROL_MAP)
            && let Ok(mut control) = Array::<&mut MapData, u32>::try_from(map)
        {
            let _ = control.set(0, stopped, 0);
        }
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(RING_MAP)
            .ok_or_else(|| anyhow!("ring buffer map missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The table of thread stack tops, for the collector to fill as it learns them.
    pub fn take_stack_tops(&mut self) -> Result<crate::stack_tops::StackTops> {
        let map = self
            .ebpf
            .take_map(STACK_TOPS_MAP)
            .ok_or_else(|| anyhow!("stack tops map missing"))?;
        crate::stack_tops::StackTops::new(map)
    }

    /// The loss counters, for the collector to read while and after the probes run.
    pub fn take_loss_counters(&mut self) -> Result<LossCounters> {
        let map = self
            .ebpf
            .take_map(COUNTERS_MAP)
            .ok_or_else(|| anyhow!("counters map missing"))?;
        Ok(LossCounters(PerCpuArray::try_from(map)?))
    }
}

/// The per-CPU counters of what the probes could not deliver (a full ring, a full in-flight
/// table, a stack the kernel could not read).
pub struct LossCounters(PerCpuArray<MapData, u64>);

impl LossCounters {
    /// The counters summed over CPUs (one syscall per counter).
    pub fn read(&self) -> Result<LostCounts> {
        let sum = |index: u32| -> Result<u64> { Ok(self.0.get(&index, 0)?.iter().sum()) };
        let mut counters = LostCounts::default();
        for kind in EventKind::ALL {
            counters.by_kind[kind as usize] = sum(counter::LOST_BASE + kind as u32)?;
        }
        counters.inflight_full = sum(counter::INFLIGHT_FULL)?;
        counters.stack_errors = sum(counter::STACK_ERRORS)?;
        Ok(counters)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The aligned forms of operator new take the alignment as their second argument.
const OPERATOR_NEW_ALIGNED: &str = "operator_new_aligned_enter";

fn entry_program(site: &ProbeSite) -> &'static str {
    if site.kind == EventKind::OperatorNew && site.takes_alignment() {
        return OPERATOR_NEW_ALIGNED;
    }
    kind_program(site.kind)
}

fn kind_program(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Malloc => "malloc_enter",
        EventKind::Calloc => "calloc_enter",
        EventKind::Realloc => "realloc_enter",
        EventKind::Reallocarray => "reallocarray_enter",
        EventKind::PosixMemalign => "posix_memalign_enter",
        EventKind::AlignedAlloc => "aligned_alloc_enter",
        EventKind::Memalign => "memalign_enter",
        EventKind::Valloc => "valloc_enter",
        EventKind::Pvalloc => "pvalloc_enter",
        EventKind::Free => "free_enter",
        EventKind::Mmap => "mmap_enter",
        EventKind::Munmap => "munmap_enter",
        EventKind::Mremap => "mremap_enter",
        EventKind::OperatorNew => "operator_new_enter",
        EventKind::OperatorDelete => "operator_delete_enter",
    }
}

fn program_names() -> impl Iterator<Item = &'static str> {
    EventKind::ALL.into_iter().map(kind_program).chain([
        OPERATOR_NEW_ALIGNED,
        RETURN_PROGRAM,
        DLCLOSE_PROGRAM,
    ])
}

fn btf_hint() -> &'static str {
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        ""
    } else {
        " (this kernel has no BTF: /sys/kernel/btf/vmlinux is missing)"
    }
}
