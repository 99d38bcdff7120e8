//! Loading memprof's eBPF programs and attaching them to one process.
use std::{num::NonZeroU32, thread};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope},
    },
};
use profiler_common::{COUNTERS_MAP, EventKind, KIND_SLOTS, RING_MAP, config, counter};

use crate::targets::ProbeSite;

static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

const RETURN_PROGRAM: &str = "memprof_return";

/// Settings that shape the probes.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub ring_bytes: u32,
    /// User stack frames to capture per allocation (0 = none).
    pub stack_depth: u32,
}

/// Lost and failed records counted in the kernel.
#[derive(Clone, Debug, Default)]
pub struct KernelCounters {
    /// Records dropped because the ring was full, by event kind discriminant.
    pub lost_by_kind: [u64; KIND_SLOTS as usize],
    pub inflight_full: u64,
    pub stack_errors: u64,
}

impl KernelCounters {
    pub fn total_lost(&self) -> u64 {
        self.lost_by_kind.iter().sum()
    }
}

/// Loaded programs and the ring they write to; attached links are held separately so that
/// detaching can close them all at once.
pub struct Probes {
    ebpf: Ebpf,
    links: Vec<UProbeLink>,
}

impl Probes {
    pub fn load(tgid: u32, config: ProbeConfig) -> Result<Probes> {
        // Wake the collector early once a quarter of the ring is queued; otherwise it drains
        // on its timer.
        let wakeup_bytes = u64::from(config.ring_bytes / 4);
        let stack_depth = config.stack_depth;
        let ebpf = EbpfLoader::new()
            .override_global(config::TARGET_TGID, &tgid, true)
            .override_global(config::WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(config::STACK_DEPTH, &stack_depth, true)
            .map_max_entries(RING_MAP, config.ring_bytes)
            .load(PROGRAMS)
            .map_err(|error| anyhow!("cannot load the eBPF programs: {error}{}", btf_hint()))?;
        let mut probes = Probes { ebpf, links: Vec::new() };
        for name in program_names() {
            let program: &mut UProbe = probes
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("eBPF program {name} missing from the object"))?
                .try_into()?;
            program
                .load()
                .map_err(|error| anyhow!("the kernel rejected eBPF program {name}: {error}"))?;
        }
        Ok(probes)
    }

    /// Attaches every site. Return probes go first: an entry seen without its return probe
    /// would leave its thread looking "inside a call" forever and silence it.
    pub fn attach(&mut self, pid: u32, sites: &[ProbeSite]) -> Result<()> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be profiled"))?,
        );
        let returning = sites.iter().filter(|s| s.kind.needs_return_probe());
        for site in returning {
            self.attach_one(RETURN_PROGRAM, site, scope)?;
        }
        for site in sites {
            self.attach_one(entry_program(site.kind), site, scope)?;
        }
        Ok(())
    }

    fn attach_one(&mut self, name: &str, site: &ProbeSite, scope: UProbeScope) -> Result<()> {
        let program: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("eBPF program {name} missing"))?
            .try_into()?;
        let id = program
            .attach(UProbeAttachLocation::AbsoluteOffset(site.file_offset), &site.path, scope)
            .with_context(|| {
                format!(
                    "cannot attach a uprobe to {} in {} at offset {:#x}",
                    site.kind.symbol(),
                    site.path.display(),
                    site.file_offset
                )
            })?;
        self.links.push(program.take_link(id)?);
        Ok(())
    }

    /// Detaches every probe. The kernel takes about 100 ms to close one uprobe link (it waits
    /// for an RCU grace period), so they are closed concurrently rather than one by one.
    pub fn detach(&mut self) {
        let links = std::mem::take(&mut self.links);
        thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(RING_MAP).ok_or_else(|| anyhow!("ring buffer map missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let map = self.ebpf.map(COUNTERS_MAP).ok_or_else(|| anyhow!("counters map missing"))?;
        let array = PerCpuArray::<_, u64>::try_from(map)?;
        let sum = |index: u32| -> Result<u64> {
            Ok(array.get(&index, 0)?.iter().sum())
        };
        let mut counters = KernelCounters::default();
        for kind in EventKind::ALL {
            counters.lost_by_kind[kind as usize] = sum(counter::LOST_BASE + kind as u32)?;
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

fn entry_program(kind: EventKind) -> &'static str {
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
    }
}

fn program_names() -> impl Iterator<Item = &'static str> {
    EventKind::ALL.into_iter().map(entry_program).chain([RETURN_PROGRAM])
}

fn btf_hint() -> &'static str {
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        ""
    } else {
        " (this kernel has no BTF: /sys/kernel/btf/vmlinux is missing)"
    }
}
