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
use profiler_common::{COUNTERS_MAP, EventKind, RING_MAP, config, counter};
use profiler_core::report::LostCounts;

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
        let mut probes = Probes {
            ebpf,
            links: Vec::new(),
        };
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
            .attach(
                UProbeAttachLocation::AbsoluteOffset(site.file_offset),
                &site.path,
                scope,
            )
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

    /// Detaches without waiting: a forked child inherits every probe descriptor and closes
    /// them once memprof has exited. Only for targets that are gone, where a probe can no
    /// longer fire: the kernel's serialized ~80 ms per uprobe link is then paid off memprof's
    /// critical path instead of delaying the report and the exit status.
    pub fn detach_after_exit(self) -> Result<()> {
        let (keep_open, exit_when_closed) = nix::unistd::pipe()?;
        // SAFETY: the child only calls read(2) and _exit(2), both async-signal-safe.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                drop(exit_when_closed);
                let mut byte = [0u8; 1];
                let _ = nix::unistd::read(&keep_open, &mut byte);
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { .. } => {
                drop(keep_open);
                // Our copies close quickly: the child still holds a reference to each.
                let mut this = self;
                this.links.clear();
                drop(this);
                // The write end stays open until memprof exits, which releases the child.
                std::mem::forget(exit_when_closed);
                Ok(())
            }
        }
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(RING_MAP)
            .ok_or_else(|| anyhow!("ring buffer map missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn counters(&self) -> Result<LostCounts> {
        let map = self
            .ebpf
            .map(COUNTERS_MAP)
            .ok_or_else(|| anyhow!("counters map missing"))?;
        let array = PerCpuArray::<_, u64>::try_from(map)?;
        let sum = |index: u32| -> Result<u64> { Ok(array.get(&index, 0)?.iter().sum()) };
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
    EventKind::ALL
        .into_iter()
        .map(entry_program)
        .chain([RETURN_PROGRAM])
}

fn btf_hint() -> &'static str {
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        ""
    } else {
        " (this kernel has no BTF: /sys/kernel/btf/vmlinux is missing)"
    }
}
