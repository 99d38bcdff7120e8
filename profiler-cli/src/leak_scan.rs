//! The leak check on a stopped process: its memory read with `process_vm_readv`, its roots
//! picked from its maps, its live blocks classified (`profiler_core::leak_check`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::{sys::ptrace, unistd::Pid};
use profiler_core::{
    heap::{HeapState, Mode},
    leak_check::{
        self, LeakCheck, LiveBlock, Memory, ScanStats,
        roots::{self, RootInputs},
    },
    maps::ProcessMaps,
};

/// Most iovecs one `process_vm_readv` takes (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;
const PAGE: u64 = 4096;

/// A stopped thread, as the scan needs it.
#[derive(Clone, Debug, Default)]
pub struct ThreadState {
    pub tid: u32,
    /// Its general-purpose registers (roots, like memory).
    pub registers: Vec<u64>,
    pub stack_pointer: u64,
}

/// Reads the registers of a thread stopped under our ptrace (from the tracing thread).
pub fn thread_state(tid: Pid) -> Result<ThreadState> {
    let regs =
        ptrace::getregs(tid).with_context(|| format!("cannot read the registers of {tid}"))?;
    Ok(ThreadState {
        tid: tid.as_raw() as u32,
        registers: vec![
            regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ],
        stack_pointer: regs.rsp,
    })
}

/// `addresses` reduced to one per mapping holding any (and one outside every mapping, if
/// any is), sorted: all the root search asks of them is whether a mapping holds one. Sorting
/// every address a block ever had (4.5 million on python3) held the exiting target 0.2 s.
fn one_address_per_mapping(addresses: impl Iterator<Item = u64>, maps: &ProcessMaps) -> Vec<u64> {
    let mut kept = Vec::new();
    let mut mappings_seen = std::collections::HashSet::new();
    let mut unmapped_seen = false;
    // Blocks come in table order, mostly from one arena: the last mapping is tried first.
    let mut last = 0..0;
    for addr in addresses {
        if last.contains(&addr) {
            continue;
        }
        match maps.find(addr) {
            Some(mapping) => {
                last = mapping.start..mapping.end;
                if mappings_seen.insert(mapping.start) {
                    kept.push(addr);
                }
            }
            None if !unmapped_seen => {
                unmapped_seen = true;
                kept.push(addr);
            }
            None => {}
        }
    }
    kept.sort_unstable();
    kept
}

/// Runs the leak check on process `pid`, stopped (its threads in `threads`), against `heap`.
/// The pause is left at zero: only the caller knows when the process goes on.
pub fn check(
    pid: u32,
    heap: &HeapState,
    threads: &[ThreadState],
    allocator_files: &[std::path::PathBuf],
) -> Result<LeakCheck> {
    let started = Instant::now();
    // Read through a stopped thread: a main thread that ended before the others no longer
    // has the memory (its maps read empty, process_vm_readv fails).
    let pid = threads.first().map_or(pid, |thread| thread.tid);
    let maps = ProcessMaps::read(pid).with_context(|| format!("cannot read the maps of {pid}"))?;
    let mut blocks: Vec<LiveBlock> = heap
        .blocks()
        .map(|(addr, block)| LiveBlock {
            addr,
            size: block.size,
        })
        .collect();
    blocks.sort_unstable();
    // In `run` every address a block ever had marks the allocator's memory; in `attach` the
    // blocks from before the window are unknown, so the allocator's memory stays a root.
    let allocator_addresses: Vec<u64> = match heap.mode() {
        Mode::Run => one_address_per_mapping(heap.block_addresses(), &maps),
        Mode::Attach => Vec::new(),
    };
    // In `attach`, the memory of the blocks the window saw freed is the allocator's again.
    let mut freed: Vec<LiveBlock> = match heap.mode() {
        Mode::Run => Vec::new(),
        Mode::Attach => heap
            .freed_blocks()
            .map(|(addr, size)| LiveBlock { addr, size })
            .collect(),
    };
    freed.sort_unstable();
    let program_regions: Vec<(u64, u64)> = heap
        .regions()
        .map(|(start, region)| (start, region.end))
        .collect();
    let stack_pointers: Vec<u64> = threads.iter().map(|t| t.stack_pointer).collect();
    let roots = roots::root_ranges(&RootInputs {
        maps: &maps,
        allocator_addresses: &allocator_addresses,
        program_regions: &program_regions,
        blocks: &blocks,
        freed: &freed,
        stack_pointers: &stack_pointers,
        allocator_files,
    });
    drop(allocator_addresses);
    let registers: Vec<u64> = threads
        .iter()
        .flat_map(|t| t.registers.iter().copied())
        .collect();
    let segments = roots::segments(&maps);
    let prepared = started.elapsed();
    let mut memory = ProcessMemory::new(pid);
    let result = leak_check::classify(&blocks, &roots, &registers, &segments, &mut memory);
    if crate::timings::enabled() {
        stderr_line!(
            "leak check: {} blocks, {} root ranges; prepared in {prepared:?}, classified in {:?}",
            blocks.len(),
            roots.len(),
            started.elapsed() - prepared
        );
    }
    if memory.gone {
        anyhow::bail!("process {pid} went away during the leak check");
    }
    let scan = ScanStats {
        bytes_scanned: result.bytes_scanned,
        bytes_unreadable: result.bytes_unreadable,
        secs: started.elapsed().as_secs_f64(),
        paused_secs: 0.0,
    };
    Ok(LeakCheck::new(&blocks, &result.classes, scan))
}

/// Another process's memory, read with `process_vm_readv`.
pub struct ProcessMemory {
    pid: libc::pid_t,
    /// The process no longer exists: everything reads as zeros.
    pub gone: bool,
}

impl ProcessMemory {
    pub fn new(pid: u32) -> ProcessMemory {
        ProcessMemory {
            pid: pid as libc::pid_t,
            gone: false,
        }
    }

    /// One `process_vm_readv`; Ok(bytes read), which stops short at the first byte that
    /// cannot be read.
    fn read_some(&self, remote: &[(u64, usize)], out: &mut [u8]) -> std::io::Result<usize> {
        let local = libc::iovec {
            iov_base: out.as_mut_ptr().cast(),
            iov_len: out.len(),
        };
        let remote: Vec<libc::iovec> = remote
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: `local` covers `out`, which we own mutably; the remote addresses are only
        // read by the kernel, in the other process.
        let read = unsafe {
            libc::process_vm_readv(self.pid, &local, 1, remote.as_ptr(), remote.len() as _, 0)
        };
        if read < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(read as usize)
        }
    }
}

impl Memory for ProcessMemory {
    fn read(&mut self, ranges: &[(u64, usize)], out: &mut [u8]) -> u64 {
        let mut unreadable = 0;
        // Position: range `index`, `offset` bytes into it, `done` bytes into `out`.
        let (mut index, mut offset, mut done) = (0, 0, 0);
        while index < ranges.len() {
            if self.gone {
                out[done..].fill(0);
                return unreadable + (out.len() - done) as u64;
            }
            let mut batch: Vec<(u64, usize)> = Vec::with_capacity(MAX_IOVECS);
            batch.push((ranges[index].0 + offset as u64, ranges[index].1 - offset));
            batch.extend(ranges[index + 1..].iter().take(MAX_IOVECS - 1).copied());
            let wanted: usize = batch.iter().map(|&(_, len)| len).sum();
            let read = match self.read_some(&batch, &mut out[done..done + wanted]) {
                Ok(read) => read,
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {
                    self.gone = true;
                    continue;
                }
                Err(_) => 0,
            };
            // Advance past what was read.
            let mut left = read;
            done += read;
            while left > 0 {
                let here = ranges[index].1 - offset;
                if left >= here {
                    left -= here;
                    index += 1;
                    offset = 0;
                } else {
                    offset += left;
                    left = 0;
                }
            }
            if read == wanted {
                continue;
            }
            // The read stopped at an unreadable byte: skip to the next page (or the end of
            // the range) and go on.
            while index < ranges.len() && ranges[index].1 == offset {
                index += 1;
                offset = 0;
            }
            if index == ranges.len() {
                break;
            }
            let addr = ranges[index].0 + offset as u64;
            let skip = ((addr / PAGE + 1) * PAGE - addr).min((ranges[index].1 - offset) as u64);
            out[done..done + skip as usize].fill(0);
            unreadable += skip;
            done += skip as usize;
            offset += skip as usize;
            if offset == ranges[index].1 {
                index += 1;
                offset = 0;
            }
        }
        unreadable
    }
}

/// Longest the collector may take for a leak check before the tracer lets the target go.
pub const MAX_CHECK_WAIT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_is_kept_per_mapping_and_one_outside_them() {
        let maps = ProcessMaps::parse(
            "10000-20000 rw-p 00000000 00:00 0 [heap]\n\
             30000-40000 rw-p 00000000 00:00 0\n\
             50000-60000 rw-p 00000000 00:00 0\n",
        )
        .unwrap();
        let addresses = [
            0x30010, 0x10010, 0x30020, 0x10020, 0x90000, 0x30030, 0x95000,
        ];
        let kept = one_address_per_mapping(addresses.into_iter(), &maps);
        assert_eq!(kept, [0x10010, 0x30010, 0x90000]);
        assert!(one_address_per_mapping(std::iter::empty(), &maps).is_empty());
    }

    #[test]
    fn reads_our_own_memory_and_zeroes_an_unmapped_page() {
        let data: Vec<u64> = (0..1024).collect();
        let addr = data.as_ptr() as u64;
        let mut memory = ProcessMemory::new(std::process::id());
        let mut out = vec![0xffu8; 8 * 4 + 16];
        // Two words from the data, then 16 bytes of page 0 (never mapped), then two more.
        let unreadable = memory.read(&[(addr, 16), (0, 16), (addr + 64, 16)], &mut out);
        assert_eq!(unreadable, 16);
        let words: Vec<u64> = out
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words, [0, 1, 0, 0, 8, 9]);
        assert!(!memory.gone);
    }

    #[test]
    fn a_process_that_is_gone_is_one_error_naming_it() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let heap = HeapState::new(Mode::Run);
        let error = check(pid, &heap, &[], &[]).unwrap_err();
        assert!(format!("{error:#}").contains(&pid.to_string()), "{error:#}");
        let mut memory = ProcessMemory::new(pid);
        let mut out = [0xffu8; 16];
        assert_eq!(memory.read(&[(0x1000, 16)], &mut out), 16);
        assert!(memory.gone);
        assert_eq!(out, [0; 16]);
    }
}
