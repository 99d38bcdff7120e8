//! Which object really provides each allocation function to the target, and where its probe
//! goes.
//!
//! ld.so binds a symbol to the first object defining it in the global scope: the executable,
//! then LD_PRELOAD libraries, then DT_NEEDED libraries breadth first. memprof walks the same
//! order, so a program running under jemalloc or mimalloc by LD_PRELOAD (or linking its own
//! allocator) is probed in that allocator, not in libc.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use profiler_common::EventKind;
use profiler_core::{maps::ProcessMaps, module_file};

use crate::{elf::ElfObject, operators, probe_site::ProbeSite, prologue};

/// How much code to decode at a function's entry.
const PROLOGUE_BYTES: usize = 64;

/// The objects of a process in symbol lookup order.
pub struct LookupOrder {
    /// Paths as the target sees them.
    pub objects: Vec<PathBuf>,
    /// Where memprof opens each of them when not by that path: for a running process, the
    /// file it really maps (`/proc/PID/map_files/...`), never what its path names now, which
    /// the process itself may have changed. Empty for a child of ours stopped at its exec.
    pub opened: HashMap<PathBuf, PathBuf>,
}

impl LookupOrder {
    /// For a program we launched and stopped right after exec: the libraries are not mapped
    /// yet, so ask its dynamic loader to list them (what `ldd` does; no program code runs).
    pub fn for_new_process(pid: u32, env: &[(String, String)]) -> Result<LookupOrder> {
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .with_context(|| format!("cannot read the executable of process {pid}"))?;
        let mut objects = vec![exe.clone()];
        objects.extend(libraries(&exe, env)?);
        Ok(LookupOrder {
            objects,
            opened: HashMap::new(),
        })
    }

    /// For a running process: its mapped objects, ordered as ld.so searched them.
    pub fn for_running_process(pid: u32) -> Result<LookupOrder> {
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .with_context(|| format!("cannot read the executable of process {pid}"))?;
        let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
            .with_context(|| format!("cannot read the memory map of process {pid}"))?;
        let mapped = mapped_objects(&maps);
        let mut opened = HashMap::new();
        for mapping in ProcessMaps::parse(&maps)
            .with_context(|| format!("cannot read the memory map of process {pid}"))?
            .iter()
        {
            if mapping.is_file()
                && !opened.contains_key(&mapping.path)
                && let Ok(path) = module_file::mapped_path(pid, mapping)
            {
                opened.insert(mapping.path.clone(), path);
            }
        }
        // The running executable itself, whatever its path names now.
        opened
            .entry(exe.clone())
            .or_insert_with(|| PathBuf::from(format!("/proc/{pid}/exe")));
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let preloads = preload_list(&environ);
        let objects = link_order(&exe, &preloads, &mapped, |path| {
            ElfObject::read(opened.get(path)?, &[]).ok()
        });
        Ok(LookupOrder { objects, opened })
    }

    /// Where memprof opens an object the target knows by `path`.
    pub fn open_path(&self, path: &Path) -> PathBuf {
        self.opened
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_owned())
    }

    /// Finds the provider of every allocation function and places its probe.
    #[cfg(test)]
    pub fn probe_sites(&self) -> Result<Vec<ProbeSite>> {
        Ok(self.probe_plan()?.0)
    }

    /// The probe sites, and warnings about calls those probes cannot see.
    pub fn probe_plan(&self) -> Result<(Vec<ProbeSite>, Vec<String>)> {
        let mut wanted: Vec<&str> = c_kinds().map(|k| k.symbol()).collect();
        wanted.extend(operators::NAMES.iter().map(|op| op.name));
        let mut objects = Vec::new();
        for path in &self.objects {
            // Objects that cannot be read (vdso, deleted files) provide nothing we can probe.
            if let Ok(object) = ElfObject::read(&self.open_path(path), &wanted) {
                objects.push((path, object));
            }
        }
        let mut sites: Vec<ProbeSite> = Vec::new();
        let mut by_address: HashMap<(usize, u64), usize> = HashMap::new();
        for kind in c_kinds() {
            let provider = objects
                .iter()
                .enumerate()
                .find_map(|(i, (_, object))| object.function(kind.symbol()).map(|f| (i, f)));
            let Some((index, (vaddr, function_len))) = provider else {
                continue;
            };
            if let Some(&site) = by_address.get(&(index, vaddr)) {
                sites[site].aliases.push(kind);
                continue;
            }
            let (module, object) = &objects[index];
            let Some(site) =
                ProbeSite::at(kind, kind.symbol(), module, object, vaddr, function_len)
            else {
                continue;
            };
            by_address.insert((index, vaddr), sites.len());
            sites.push(site);
        }
        if !sites.iter().any(|s| s.kind == EventKind::Malloc) {
            let exe = self
                .objects
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            bail!("no allocator found: neither {exe} nor the libraries it loads define malloc");
        }
        let probed: HashSet<(usize, u64)> = by_address.into_keys().collect();
        let (operator_sites, warnings) = operators::plan(&objects, &probed);
        sites.extend(operator_sites);
        Ok((sites, warnings))
    }

    /// Where the target's `dlclose` starts, as (object, file offset): in the first object
    /// defining it (libc since glibc 2.34, libdl before). None for a program without one.
    pub fn dlclose_entry(&self) -> Option<(PathBuf, u64)> {
        self.objects.iter().find_map(|path| {
            let object = ElfObject::read(&self.open_path(path), &["dlclose"]).ok()?;
            let (vaddr, _) = object.function("dlclose")?;
            Some((object.path.clone(), object.file_offset(vaddr)?))
        })
    }
}

/// How many integer arguments the entry probe of `kind` (at `symbol`) reads: what its
/// placement must not skip a write to (profiler-ebpf's `*_enter` programs).
fn arguments_read(kind: EventKind, symbol: &str) -> usize {
    match kind {
        EventKind::Malloc
        | EventKind::Valloc
        | EventKind::Pvalloc
        | EventKind::Free
        | EventKind::OperatorDelete => 1,
        // The aligned forms read the alignment too.
        EventKind::OperatorNew if symbol.contains("St11align_val_t") => 2,
        EventKind::OperatorNew => 1,
        EventKind::Calloc
        | EventKind::Realloc
        | EventKind::AlignedAlloc
        | EventKind::Memalign
        | EventKind::Munmap => 2,
        EventKind::Reallocarray | EventKind::PosixMemalign | EventKind::Mremap => 3,
        // The length and the flags: arguments 1 and 3.
        EventKind::Mmap => 4,
    }
}

/// The kinds probed at a C function of their name (the C++ operators are planned apart).
fn c_kinds() -> impl Iterator<Item = EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, EventKind::OperatorNew | EventKind::OperatorDelete))
}

impl ProbeSite {
    /// The probe of `kind` on the function at `vaddr` of `object`, placed past its prologue.
    pub(crate) fn at(
        kind: EventKind,
        symbol: &'static str,
        module: &Path,
        object: &ElfObject,
        vaddr: u64,
        function_len: u64,
    ) -> Option<ProbeSite> {
        let code = object.code_at(vaddr, PROLOGUE_BYTES).unwrap_or_default();
        let placement = prologue::place(code, arguments_read(kind, symbol));
        let entry = object.file_offset(vaddr)?;
        Some(ProbeSite {
            kind,
            symbol,
            aliases: Vec::new(),
            path: object.path.clone(),
            module: module.to_owned(),
            file_offset: entry + placement.offset,
            placement,
            function_len,
        })
    }

    /// An aligned form of operator new: its second argument is the alignment.
    pub fn takes_alignment(&self) -> bool {
        self.kind == EventKind::OperatorNew && self.symbol.contains("St11align_val_t")
    }
}

/// The libraries ld.so would load for `exe` in the environment `env` (only that one), in
/// lookup order, as `ld.so --list` says (none of the program's code runs); none for a static
/// executable.
/// The entries of `LD_PRELOAD` in a NUL-separated environment block (`/proc/PID/environ`).
pub fn preload_list(environ: &[u8]) -> Vec<String> {
    environ
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"LD_PRELOAD="))
        .flat_map(|value| {
            String::from_utf8_lossy(value)
                .split([' ', ':'])
                .filter(|lib| !lib.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn libraries(exe: &Path, env: &[(String, String)]) -> Result<Vec<PathBuf>> {
    let object = ElfObject::read(exe, &[])?;
    let Some(interpreter) = object.interpreter else {
        return Ok(Vec::new());
    };
    let output = Command::new(&interpreter)
        .arg("--list")
        .arg(exe)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .with_context(|| format!("cannot run the dynamic loader {interpreter}"))?;
    if !output.status.success() {
        bail!(
            "the dynamic loader could not list the libraries of {}: {}",
            exe.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(parse_loader_list(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses `ld.so --list` output into library paths, in link-map order.
fn parse_loader_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once(" => ") {
                Some((_, rest)) => rest,
                None => line,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// File-backed mappings of a process, in address order, without duplicates.
fn mapped_objects(maps: &str) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/'))
        .filter(|path| seen.insert(path.to_string()))
        .map(PathBuf::from)
        .collect()
}

/// ld.so's global scope order: executable, preloads, then DT_NEEDED breadth first; objects
/// mapped otherwise (dlopen) come last. Names are matched against the mapped objects by
/// soname or file name.
fn link_order(
    exe: &Path,
    preloads: &[String],
    mapped: &[PathBuf],
    read: impl Fn(&Path) -> Option<ElfObject>,
) -> Vec<PathBuf> {
    let objects: HashMap<&PathBuf, ElfObject> = mapped
        .iter()
        .filter_map(|path| Some((path, read(path)?)))
        .collect();
    let find = |name: &str| -> Option<PathBuf> {
        let file = Path::new(name).file_name()?;
        mapped
            .iter()
            .find(|path| {
                path.as_path() == Path::new(name)
                    || path.file_name() == Some(file)
                    || objects.get(path).and_then(|o| o.soname.as_deref()) == Some(name)
            })
            .cloned()
    };
    let mut order: Vec<PathBuf> = vec![exe.to_owned()];
    let mut queue: VecDeque<PathBuf> = VecDeque::from([exe.to_owned()]);
    for preload in preloads {
        if let Some(path) = find(preload).filter(|p| !order.contains(p)) {
            order.push(path.clone());
            queue.push_back(path);
        }
    }
    while let Some(path) = queue.pop_front() {
        let needed = match objects.get(&path) {
            Some(object) => object.needed.clone(),
            None => read(&path).map(|o| o.needed).unwrap_or_default(),
        };
        for name in &needed {
            if let Some(dep) = find(name).filter(|p| !order.contains(p)) {
                order.push(dep.clone());
                queue.push_back(dep);
            }
        }
    }
    for path in mapped {
        if !order.contains(path) {
            order.push(path.clone());
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_list_keeps_order_and_skips_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \t/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f01)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            parse_loader_list(text),
            vec![
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    /// A lookup order made of these system files (apt is a C++ program, true a C one).
    fn order(objects: &[&str]) -> LookupOrder {
        LookupOrder {
            objects: objects.iter().map(PathBuf::from).collect(),
            opened: HashMap::new(),
        }
    }

    const LIB: &str = "/usr/lib/x86_64-linux-gnu";

    /// The plan for `exe` under `preload` (a file in LIB), with libstdc++ and libc after it.
    fn plan(exe: &str, preload: Option<&str>) -> (Vec<ProbeSite>, Vec<String>) {
        let mut objects = vec![exe.to_owned()];
        objects.extend(preload.map(|name| format!("{LIB}/{name}")));
        objects.push(format!("{LIB}/libstdc++.so.6"));
        objects.push("/lib/x86_64-linux-gnu/libc.so.6".to_owned());
        let objects: Vec<&str> = objects.iter().map(String::as_str).collect();
        order(&objects).probe_plan().unwrap()
    }

    /// The operator probes of a plan: (symbol, kind), sorted.
    fn operator_probes(sites: &[ProbeSite]) -> Vec<(&'static str, EventKind)> {
        let mut probes: Vec<_> = sites
            .iter()
            .filter(|s| matches!(s.kind, EventKind::OperatorNew | EventKind::OperatorDelete))
            .map(|s| (s.symbol, s.kind))
            .collect();
        probes.sort();
        probes
    }

    use EventKind::{OperatorDelete as Delete, OperatorNew as New};

    #[test]
    fn libstdcxx_operators_are_left_to_malloc_and_free() {
        // libstdc++'s operator new calls malloc: probing it would double the cost.
        let (sites, warnings) = plan("/usr/bin/apt", None);
        assert_eq!(operator_probes(&sites), vec![]);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn tcmalloc_operators_are_probed_except_its_free() {
        let (sites, warnings) = plan("/usr/bin/apt", Some("libtcmalloc_minimal.so.4"));
        // `_Znam` is `_Znwm` and `_ZdlPv` is `free` (one probe per address); the other
        // operators are code of their own.
        assert_eq!(
            operator_probes(&sites),
            vec![
                ("_ZdlPvRKSt9nothrow_t", Delete),
                ("_ZdlPvSt11align_val_t", Delete),
                ("_ZdlPvSt11align_val_tRKSt9nothrow_t", Delete),
                ("_ZdlPvm", Delete),
                ("_ZdlPvmSt11align_val_t", Delete),
                ("_Znwm", New),
                ("_ZnwmRKSt9nothrow_t", New),
                ("_ZnwmSt11align_val_t", New),
                ("_ZnwmSt11align_val_tRKSt9nothrow_t", New),
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let free = sites.iter().find(|s| s.kind == EventKind::Free).unwrap();
        let new = sites.iter().find(|s| s.symbol == "_Znwm").unwrap();
        assert_eq!(new.path, free.path, "served by tcmalloc");
        assert!(!new.takes_alignment());
        let aligned = sites.iter().find(|s| s.symbol == "_ZnwmSt11align_val_t");
        assert!(aligned.unwrap().takes_alignment());
    }

    #[test]
    fn jemalloc_wrappers_of_probed_functions_are_not_probed() {
        let (sites, warnings) = plan("/usr/bin/apt", Some("libjemalloc.so.2"));
        // `_ZdlPv` and the unsized deletes are `jmp free@plt`, `_Znam` is `jmp _Znwm`: their
        // calls are seen there. The sized deletes call sdallocx, not free.
        assert_eq!(
            operator_probes(&sites),
            vec![
                ("_ZdaPvm", Delete),
                ("_ZdaPvmSt11align_val_t", Delete),
                ("_ZdlPvm", Delete),
                ("_ZdlPvmSt11align_val_t", Delete),
                ("_ZnamSt11align_val_t", New),
                ("_ZnamSt11align_val_tRKSt9nothrow_t", New),
                ("_Znwm", New),
                ("_ZnwmRKSt9nothrow_t", New),
                ("_ZnwmSt11align_val_t", New),
                ("_ZnwmSt11align_val_tRKSt9nothrow_t", New),
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        // A C program gets the same probes: a library it loads later may use C++.
        let (c_sites, _) = plan("/bin/true", Some("libjemalloc.so.2"));
        assert_eq!(operator_probes(&c_sites), operator_probes(&sites));
    }

    #[test]
    fn mimalloc_deletes_all_reach_free() {
        let (sites, warnings) = plan("/usr/bin/apt", Some("libmimalloc.so.2"));
        // Every delete is `free` or forwards to it (the aligned sized one in three jumps:
        // mi_free_size_aligned, mi_free_size, mi_free = free).
        assert_eq!(
            operator_probes(&sites),
            vec![
                ("_ZnamRKSt9nothrow_t", New),
                ("_ZnamSt11align_val_tRKSt9nothrow_t", New),
                ("_Znwm", New),
                ("_ZnwmRKSt9nothrow_t", New),
                ("_ZnwmSt11align_val_t", New),
                ("_ZnwmSt11align_val_tRKSt9nothrow_t", New),
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn dlclose_is_found_in_the_first_object_defining_it() {
        let libc = "/lib/x86_64-linux-gnu/libc.so.6";
        // Neither true nor libstdc++ defines dlclose; libc does (glibc 2.34 merged libdl).
        let (path, offset) = order(&["/bin/true", &format!("{LIB}/libstdc++.so.6"), libc])
            .dlclose_entry()
            .unwrap();
        assert_eq!(path, PathBuf::from(libc));
        let object = ElfObject::read(Path::new(libc), &["dlclose"]).unwrap();
        let (vaddr, _) = object.function("dlclose").unwrap();
        assert_eq!(Some(offset), object.file_offset(vaddr));
        assert_eq!(order(&["/bin/true"]).dlclose_entry(), None);
    }

    #[test]
    fn running_process_is_probed_in_libc() {
        let order = LookupOrder::for_running_process(std::process::id()).unwrap();
        let sites = order.probe_sites().unwrap();
        let malloc = sites.iter().find(|s| s.kind == EventKind::Malloc).unwrap();
        assert!(
            malloc.module.to_string_lossy().contains("libc.so"),
            "{malloc:?}"
        );
        let free = sites.iter().find(|s| s.kind == EventKind::Free).unwrap();
        assert!(
            !free.placement.single_step,
            "free should be probed past its `test`"
        );
        // In Debian 12's glibc aligned_alloc and memalign are one function.
        let aligned = sites
            .iter()
            .find(|s| s.kind == EventKind::AlignedAlloc)
            .unwrap();
        assert!(aligned.aliases.contains(&EventKind::Memalign));
    }
}
