//! uprobe_multi links: many uprobes in one BPF link, detached with one kernel synchronization.
//!
//! aya 0.14 attaches each uprobe as its own perf-event link; closing one waits for the kernel
//! (~80-110 ms apiece here, serialized even when closed from many threads: 13 links took
//! 1.26-1.44 s). A `BPF_TRACE_UPROBE_MULTI` link (Linux 6.6+) registers any number of offsets
//! of one file at once and releases them all with one synchronization: 13 offsets in one link
//! closed in ~55 ms, and 14 such links closed from 14 threads in ~60 ms (they do overlap).
//!
//! aya has no uprobe_multi support, and the kernel only accepts such a link for a program that
//! was *loaded* with `expected_attach_type = BPF_TRACE_UPROBE_MULTI`, which aya never sets for
//! uprobes. So this module loads the programs itself:
//!
//! 1. aya's [`EbpfLoader`](aya::EbpfLoader) loads the object as usual. That creates the maps
//!    (the ring buffer, the hash and array maps, and `.rodata` with the overridden globals).
//!    aya's own copies of the programs need not be loaded at all.
//! 2. [`MultiObject::new`] parses the same object bytes again with `aya_obj` and points its map
//!    references at the descriptors of *aya's* maps, so the programs loaded here share them and
//!    the collector keeps reading aya's ring.
//! 3. [`MultiObject::load`] issues `BPF_PROG_LOAD` with `BPF_PROG_TYPE_KPROBE` and
//!    `expected_attach_type = BPF_TRACE_UPROBE_MULTI`, and [`MultiProgram::attach`] issues
//!    `BPF_LINK_CREATE` with the `uprobe_multi` arguments.
//!
//! Requires `aya-obj = "=0.3.0"` (the version aya 0.14.0 uses) as a direct dependency: aya
//! does not re-export it.
//!
//! Notes on kernel behaviour:
//! - The programs are loaded without BTF (no func_info/line_info): uprobe programs do not need
//!   it; verifier messages simply lack source lines.
//! - `pid` is a thread-group id. On 6.18 the link fires for every thread of that process
//!   (checked with a two-threaded target). Before 6.10 (upstream 46ba0e49b642, "bpf: fix
//!   multi-uprobe PID filtering logic") the kernel only ran the programs for the one thread
//!   found at attach time and silently dropped the other threads' calls, so
//!   [`uprobe_multi_supported`] also requires 6.10; older kernels should keep aya's links.
//! - A cookie given per offset is what `bpf_get_attach_cookie(ctx)` returns inside the program
//!   when that offset fires; memprof's programs do not use cookies today, so pass `&[]`.
//! - Each loaded program holds its own references to the maps. [`MultiObject::new`] needs
//!   every map still in the `Ebpf`, so call it before taking the ring out with `take_map`;
//!   the programs keep working on the taken ring afterwards.
use std::{
    collections::HashSet,
    ffi::{CStr, CString},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};
use aya_obj::{
    Object,
    generated::{
        BPF_F_UPROBE_MULTI_RETURN, bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_attr, bpf_cmd,
        bpf_insn, bpf_prog_type::BPF_PROG_TYPE_KPROBE,
    },
};

/// Longest program name the kernel keeps (BPF_OBJ_NAME_LEN minus the terminating NUL).
const PROG_NAME_MAX: usize = 15;
/// Verifier log size used when a load fails and is retried to explain why.
const VERIFIER_LOG_BYTES: usize = 4 << 20;
/// How much of the end of the verifier log goes into an error message.
const VERIFIER_LOG_TAIL: usize = 4096;

/// The eBPF object, relocated against the maps of an already loaded [`Ebpf`], ready to load
/// any of its programs for uprobe_multi attachment.
pub struct MultiObject {
    object: Object,
}

impl MultiObject {
    /// Parses `object_bytes` (the same bytes given to aya's loader) and binds its map
    /// references to `ebpf`'s maps. Every map the object defines must still be in `ebpf`
    /// (call this before [`Ebpf::take_map`]).
    pub fn new(object_bytes: &[u8], ebpf: &Ebpf) -> Result<MultiObject> {
        let mut object = Object::parse(object_bytes).context("cannot parse the eBPF object")?;
        if object.has_btf_relocations() {
            // CO-RE relocations need the running kernel's BTF (memprof's programs have none).
            let kernel_btf = aya::Btf::from_sys_fs().context("cannot read the kernel's BTF")?;
            object
                .relocate_btf(&kernel_btf)
                .context("cannot apply the object's CO-RE relocations")?;
        }
        // Global data aya could not create as maps would be missing below and fail loudly.
        let mut fds = Vec::with_capacity(object.maps.len());
        for name in object.maps.keys() {
            let map = ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} is not (or no longer) in the loaded Ebpf"))?;
            fds.push((name.clone(), map_fd(map).as_raw_fd()));
        }
        let text_sections: HashSet<usize> = object
            .functions
            .keys()
            .map(|(section, _)| *section)
            .collect();
        // relocate_maps borrows the map definitions while rewriting the functions, so it is
        // given a copy of them.
        let definitions = object.maps.clone();
        object
            .relocate_maps(
                fds.iter()
                    .map(|(name, fd)| (name.as_str(), *fd, &definitions[name])),
                &text_sections,
            )
            .context("cannot relocate the object's map references")?;
        object
            .relocate_calls(&text_sections)
            .context("cannot link the object's function calls")?;
        Ok(MultiObject { object })
    }

    /// Loads `program` with `expected_attach_type = BPF_TRACE_UPROBE_MULTI`. Entry and return
    /// programs load the same way; which one runs at return is chosen when attaching.
    pub fn load(&self, program: &str) -> Result<MultiProgram> {
        let prog = self
            .object
            .programs
            .get(program)
            .ok_or_else(|| anyhow!("eBPF program {program} missing from the object"))?;
        let function = self
            .object
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| anyhow!("eBPF program {program} has no code"))?;
        let fd = load_program(program, &function.instructions, &prog.license)
            .with_context(|| format!("the kernel rejected eBPF program {program}"))?;
        Ok(MultiProgram {
            name: program.to_owned(),
            fd,
        })
    }
}

/// A program loaded for uprobe_multi links.
#[derive(Debug)]
pub struct MultiProgram {
    name: String,
    fd: OwnedFd,
}

impl MultiProgram {
    /// Attaches the program at every file offset in `offsets` of the ELF file `path`, for
    /// process `pid` only (0 = every process), at function return if `retprobe`.
    ///
    /// `cookies` is empty or holds one value per offset (seen through
    /// `bpf_get_attach_cookie`). Offsets may repeat (e.g. aliases such as memalign and
    /// aligned_alloc); the program then runs once per listed copy (checked: free listed twice
    /// gave exactly twice the events), as with two separate aya links today.
    ///
    /// The returned descriptor is the link: the probes stay attached until it (and every
    /// duplicate of it) is closed, and closing it waits for one grace period for all offsets.
    pub fn attach(
        &self,
        path: &Path,
        offsets: &[u64],
        cookies: &[u64],
        pid: u32,
        retprobe: bool,
    ) -> Result<OwnedFd> {
        check_attach_args(offsets, cookies)?;
        let c_path = path_to_cstring(path)?;
        let flags = if retprobe {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        };
        link_uprobe_multi(self.fd.as_fd(), &c_path, offsets, cookies, flags, pid).map_err(|error| {
            anyhow!(
                "cannot attach {} as uprobe_multi to {} ({} offsets{}): {error}{}",
                self.name,
                path.display(),
                offsets.len(),
                if retprobe { ", return" } else { "" },
                link_hint(&error),
            )
        })
    }
}

/// Whether uprobe_multi links can replace aya's links on this kernel: Linux 6.10 or later (a
/// correct per-process pid filter) that accepts the link type.
///
/// Loads a two-instruction program with the uprobe_multi attach type and asks for a link on
/// "/": a kernel that knows uprobe_multi rejects the directory with EBADF, an older one rejects
/// the attach type with EINVAL.
pub fn uprobe_multi_supported() -> bool {
    let filters_whole_process = aya::util::KernelVersion::current()
        .is_ok_and(|version| version >= aya::util::KernelVersion::new(6, 10, 0));
    if !filters_whole_process {
        return false;
    }
    let return_zero = [
        // r0 = 0
        insn(0xb7, 0, 0, 0, 0),
        // exit
        insn(0x95, 0, 0, 0, 0),
    ];
    let Ok(prog) = load_program("memprof_probe", &return_zero, c"GPL") else {
        return false;
    };
    match link_uprobe_multi(prog.as_fd(), c"/", &[0], &[], 0, 0) {
        Err(error) => error.raw_os_error() == Some(libc::EBADF),
        // Not expected ("/" is no regular file), but a link means support; dropping closes it.
        Ok(_link) => true,
    }
}

/// BPF_LINK_CREATE for a uprobe_multi link. `cookies` is empty or as long as `offsets`.
fn link_uprobe_multi(
    prog: BorrowedFd<'_>,
    path: &CStr,
    offsets: &[u64],
    cookies: &[u64],
    flags: u32,
    pid: u32,
) -> std::io::Result<OwnedFd> {
    let cnt =
        u32::try_from(offsets.len()).map_err(|_| std::io::Error::other("too many offsets"))?;
    if !cookies.is_empty() && cookies.len() != offsets.len() {
        return Err(std::io::Error::other(
            "cookies must be none or one per offset",
        ));
    }
    // Field-by-field writes into the zeroed union, so every byte the command does not use
    // (including the padding after `pid`) stays zero, as the kernel requires.
    let mut attr = zeroed_attr();
    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    attr.link_create.attach_type = BPF_TRACE_UPROBE_MULTI as u32;
    attr.link_create.__bindgen_anon_3.uprobe_multi.path = path.as_ptr() as u64;
    attr.link_create.__bindgen_anon_3.uprobe_multi.offsets = offsets.as_ptr() as u64;
    // ref_ctr_offsets stays 0 (null): no USDT semaphores to bump.
    attr.link_create.__bindgen_anon_3.uprobe_multi.cookies = if cookies.is_empty() {
        0
    } else {
        cookies.as_ptr() as u64
    };
    attr.link_create.__bindgen_anon_3.uprobe_multi.cnt = cnt;
    attr.link_create.__bindgen_anon_3.uprobe_multi.flags = flags;
    attr.link_create.__bindgen_anon_3.uprobe_multi.pid = pid;
    // SAFETY: path, offsets and cookies are live for the call and hold `cnt` elements each
    // (cookies: none or `cnt`); the kernel only reads them.
    unsafe { bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) }
}

fn check_attach_args(offsets: &[u64], cookies: &[u64]) -> Result<()> {
    if offsets.is_empty() {
        bail!("a uprobe_multi link needs at least one offset");
    }
    if !cookies.is_empty() && cookies.len() != offsets.len() {
        bail!(
            "{} cookies for {} offsets: give one per offset or none",
            cookies.len(),
            offsets.len()
        );
    }
    Ok(())
}

fn path_to_cstring(path: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| anyhow!("path {} contains a NUL byte", path.display()))
}

fn link_hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EINVAL) => {
            " (uprobe_multi needs Linux 6.6 or later; offsets must be in the file)"
        }
        _ => "",
    }
}

/// The descriptor of an aya map, whatever its kind (every variant wraps a `MapData`).
fn map_fd(map: &Map) -> BorrowedFd<'_> {
    let data = match map {
        Map::Array(data)
        | Map::ArrayOfMaps(data)
        | Map::BloomFilter(data)
        | Map::CgroupArray(data)
        | Map::CgroupStorage(data)
        | Map::CgrpStorage(data)
        | Map::CpuMap(data)
        | Map::DevMap(data)
        | Map::DevMapHash(data)
        | Map::HashMap(data)
        | Map::HashOfMaps(data)
        | Map::InodeStorage(data)
        | Map::LpmTrie(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuCgroupStorage(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::PerfEventArray(data)
        | Map::ProgramArray(data)
        | Map::Queue(data)
        | Map::ReusePortSockArray(data)
        | Map::RingBuf(data)
        | Map::SockHash(data)
        | Map::SockMap(data)
        | Map::SkStorage(data)
        | Map::Stack(data)
        | Map::StackTraceMap(data)
        | Map::Unsupported(data)
        | Map::XskMap(data) => data,
    };
    data.fd().as_fd()
}

/// The kernel's program name: at most 15 bytes of the requested one.
fn kernel_prog_name(name: &str) -> [libc::c_char; PROG_NAME_MAX + 1] {
    let mut out = [0 as libc::c_char; PROG_NAME_MAX + 1];
    // The kernel accepts only [A-Za-z0-9_.] in names; anything else ends the name early.
    let valid = name
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        .take(PROG_NAME_MAX);
    for (slot, byte) in out.iter_mut().zip(valid) {
        *slot = byte as libc::c_char;
    }
    out
}

/// BPF_PROG_LOAD as a kprobe-type program with the uprobe_multi attach type. On failure the
/// load is repeated with a verifier log so the error can say why.
fn load_program(name: &str, insns: &[bpf_insn], license: &CStr) -> Result<OwnedFd> {
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = zeroed_attr();
        // `__bindgen_anon_3` is the BPF_PROG_LOAD member of union bpf_attr.
        attr.__bindgen_anon_3.prog_type = BPF_PROG_TYPE_KPROBE as u32;
        attr.__bindgen_anon_3.expected_attach_type = BPF_TRACE_UPROBE_MULTI as u32;
        attr.__bindgen_anon_3.insns = insns.as_ptr() as u64;
        attr.__bindgen_anon_3.insn_cnt = insns.len() as u32;
        attr.__bindgen_anon_3.license = license.as_ptr() as u64;
        attr.__bindgen_anon_3.prog_name = kernel_prog_name(name);
        if let Some(log) = log {
            attr.__bindgen_anon_3.log_level = 1;
            attr.__bindgen_anon_3.log_buf = log.as_mut_ptr() as u64;
            attr.__bindgen_anon_3.log_size = log.len() as u32;
        }
        // SAFETY: insns, license and the log buffer outlive the call; the kernel reads
        // `insn_cnt` instructions and writes at most `log_size` bytes of log.
        unsafe { bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) }
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut log = vec![0u8; VERIFIER_LOG_BYTES];
            let again = attempt(Some(&mut log));
            let text = verifier_log_tail(&log);
            match again {
                // Cannot normally happen; keep the descriptor rather than report a phantom error.
                Ok(fd) => Ok(fd),
                Err(error) if text.is_empty() => Err(anyhow!("{error} (first attempt: {first})")),
                Err(error) => Err(anyhow!("{error}; verifier log (end):\n{text}")),
            }
        }
    }
}

/// The last part of a NUL-terminated verifier log, trimmed to whole lines.
fn verifier_log_tail(log: &[u8]) -> String {
    let len = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..len]);
    let text = text.trim_end();
    if text.len() <= VERIFIER_LOG_TAIL {
        return text.to_owned();
    }
    let mut start = text.len() - VERIFIER_LOG_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    tail.split_once('\n')
        .map_or(tail, |(_, rest)| rest)
        .to_owned()
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    let mut insn = bpf_insn {
        code,
        off,
        imm,
        ..zeroed_insn()
    };
    insn.set_dst_reg(dst);
    insn.set_src_reg(src);
    insn
}

fn zeroed_insn() -> bpf_insn {
    // SAFETY: bpf_insn is plain integers; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of plain-integer structs; all zeroes is valid and is what
    // the kernel requires of every byte a command does not use.
    unsafe { std::mem::zeroed() }
}

/// The bpf(2) system call for commands that return a new descriptor.
///
/// # Safety
/// Every pointer stored in `attr` for `cmd` must be valid for the kernel's reads and writes
/// for the duration of the call.
unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a live bpf_attr of the size passed; the caller vouches for the
    // pointers inside it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| std::io::Error::other("bpf() returned no fd"))?;
    // SAFETY: on success these commands return a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn names_are_cut_to_what_the_kernel_keeps() {
        let name = kernel_prog_name("posix_memalign_enter");
        let bytes: Vec<u8> = name.iter().map(|&c| c as u8).collect();
        assert_eq!(&bytes[..15], b"posix_memalign_");
        assert_eq!(bytes[15], 0);
        let short = kernel_prog_name("free_enter");
        assert_eq!(short[10], 0);
        assert_eq!(short[0] as u8, b'f');
    }

    #[test]
    fn names_stop_at_characters_the_kernel_refuses() {
        let name = kernel_prog_name("a-b");
        assert_eq!(name[0] as u8, b'a');
        assert_eq!(name[1], 0);
    }

    #[test]
    fn cookies_must_match_offsets() {
        assert!(check_attach_args(&[1, 2], &[]).is_ok());
        assert!(check_attach_args(&[1, 2], &[7, 8]).is_ok());
        assert!(check_attach_args(&[1, 2], &[7]).is_err());
        assert!(check_attach_args(&[], &[]).is_err());
    }

    #[test]
    fn paths_with_nul_are_refused() {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};
        let bad = Path::new(OsStr::from_bytes(b"/lib/a\0b"));
        assert!(path_to_cstring(bad).is_err());
        assert_eq!(
            path_to_cstring(Path::new("/lib/libc.so.6"))
                .unwrap()
                .as_bytes(),
            b"/lib/libc.so.6"
        );
    }

    #[test]
    fn verifier_log_tail_keeps_whole_lines() {
        let mut log = Vec::new();
        for i in 0..2000 {
            log.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        log.push(0);
        log.extend_from_slice(b"garbage after the terminator");
        let tail = verifier_log_tail(&log);
        assert!(tail.len() <= VERIFIER_LOG_TAIL);
        assert!(tail.starts_with("line "));
        assert!(tail.ends_with("line 1999"));
        assert_eq!(verifier_log_tail(b"short\n\0"), "short");
    }

    /// The uprobe_multi member of union bpf_attr, as laid out in include/uapi/linux/bpf.h.
    #[test]
    fn link_create_layout_matches_the_kernel_abi() {
        use aya_obj::generated::{
            bpf_attr__bindgen_ty_14 as LinkCreate,
            bpf_attr__bindgen_ty_14__bindgen_ty_3__bindgen_ty_7 as UprobeMulti,
        };
        assert_eq!(offset_of!(LinkCreate, attach_type), 8);
        assert_eq!(offset_of!(LinkCreate, __bindgen_anon_3), 16);
        assert_eq!(offset_of!(UprobeMulti, path), 0);
        assert_eq!(offset_of!(UprobeMulti, offsets), 8);
        assert_eq!(offset_of!(UprobeMulti, ref_ctr_offsets), 16);
        assert_eq!(offset_of!(UprobeMulti, cookies), 24);
        assert_eq!(offset_of!(UprobeMulti, cnt), 32);
        assert_eq!(offset_of!(UprobeMulti, flags), 36);
        assert_eq!(offset_of!(UprobeMulti, pid), 40);
        assert_eq!(BPF_TRACE_UPROBE_MULTI as u32, 48);
        assert_eq!(BPF_F_UPROBE_MULTI_RETURN, 1);
    }

    #[test]
    fn prog_load_layout_matches_the_kernel_abi() {
        use aya_obj::generated::bpf_attr__bindgen_ty_4 as ProgLoad;
        assert_eq!(offset_of!(ProgLoad, insns), 8);
        assert_eq!(offset_of!(ProgLoad, license), 16);
        assert_eq!(offset_of!(ProgLoad, log_buf), 32);
        assert_eq!(offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(BPF_PROG_TYPE_KPROBE as u32, 2);
    }

    /// Needs CAP_BPF and Linux 6.6+; passes trivially elsewhere.
    #[test]
    fn rejected_programs_report_the_verifier_log() {
        if !uprobe_multi_supported() {
            return;
        }
        // r0 = r2 (never written); exit
        let bad = [insn(0xbf, 0, 2, 0, 0), insn(0x95, 0, 0, 0, 0)];
        let error = load_program("memprof_bad", &bad, c"GPL").unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("verifier log"), "{message}");
        assert!(message.contains("R2 !read_ok"), "{message}");
    }

    #[test]
    fn hand_assembled_instructions_encode_registers() {
        let i = insn(0xbf, 1, 6, 0, 0); // r1 = r6
        assert_eq!(i.dst_reg(), 1);
        assert_eq!(i.src_reg(), 6);
        assert_eq!(size_of::<bpf_insn>(), 8);
    }
}
