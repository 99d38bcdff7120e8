//! The allocators `memprof compare` knows, where their libraries are, and which objects a
//! preloaded allocator brings into the target.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use profiler_core::analysis::allocator::Allocator;

/// An allocator to compare (`--allocator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocatorName {
    /// The C library's malloc: no preload.
    Glibc,
    Jemalloc,
    Mimalloc,
    Tcmalloc,
    /// The project's own allocator, libmemprof_alloc.so (samples/alloc-preload).
    Memprof,
}

pub const ALL: [AllocatorName; 5] = [
    AllocatorName::Glibc,
    AllocatorName::Jemalloc,
    AllocatorName::Mimalloc,
    AllocatorName::Tcmalloc,
    AllocatorName::Memprof,
];

const DEBIAN_LIBS: &str = "/usr/lib/x86_64-linux-gnu";

impl AllocatorName {
    /// The allocator called `name` (any case).
    pub fn from_name(name: &str) -> Option<AllocatorName> {
        ALL.into_iter()
            .find(|allocator| allocator.name().eq_ignore_ascii_case(name))
    }

    /// What it is, when its name does not say.
    pub fn description(self) -> Option<&'static str> {
        match self {
            AllocatorName::Glibc => Some("The C library's malloc: no preload"),
            AllocatorName::Memprof => {
                Some("The project's own allocator, libmemprof_alloc.so (samples/alloc-preload)")
            }
            AllocatorName::Jemalloc | AllocatorName::Mimalloc | AllocatorName::Tcmalloc => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AllocatorName::Glibc => "glibc",
            AllocatorName::Jemalloc => "jemalloc",
            AllocatorName::Mimalloc => "mimalloc",
            AllocatorName::Tcmalloc => "tcmalloc",
            AllocatorName::Memprof => "memprof",
        }
    }

    /// What report.json's probe list must show serving malloc when the preload took.
    pub fn expected(self) -> Allocator {
        match self {
            AllocatorName::Glibc => Allocator::Glibc,
            AllocatorName::Jemalloc => Allocator::Jemalloc,
            AllocatorName::Mimalloc => Allocator::Mimalloc,
            AllocatorName::Tcmalloc => Allocator::Tcmalloc,
            AllocatorName::Memprof => Allocator::Memprof,
        }
    }

    /// The library to preload: `--allocator-lib` if given, else where Debian's package (or
    /// the memprof build) puts it; None for glibc. A missing file is an error naming what to
    /// install or build.
    pub fn library(self, overrides: &[(AllocatorName, PathBuf)]) -> Result<Option<PathBuf>> {
        if let Some((_, path)) = overrides.iter().rev().find(|(name, _)| *name == self) {
            if !path.is_file() {
                bail!(
                    "--allocator-lib {}={}: no such file",
                    self.name(),
                    path.display()
                );
            }
            return Ok(Some(path.clone()));
        }
        let (file, package) = match self {
            AllocatorName::Glibc => return Ok(None),
            AllocatorName::Jemalloc => ("libjemalloc.so.2", "libjemalloc2"),
            AllocatorName::Mimalloc => ("libmimalloc.so.2", "libmimalloc2.0"),
            AllocatorName::Tcmalloc => ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
            AllocatorName::Memprof => return own_allocator().map(Some),
        };
        let path = Path::new(DEBIAN_LIBS).join(file);
        if !path.is_file() {
            bail!(
                "{}: {} is missing: install the Debian package {package} (`cargo xtask setup` \
                 does), or give --allocator-lib {}=PATH",
                self.name(),
                path.display(),
                self.name()
            );
        }
        Ok(Some(path))
    }
}

/// libmemprof_alloc.so from the memprof build: next to this executable, else in the other
/// profile's directory of the same target dir.
fn own_allocator() -> Result<PathBuf> {
    const FILE: &str = "libmemprof_alloc.so";
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(FILE),
        dir.join("../release").join(FILE),
        dir.join("../debug").join(FILE),
    ];
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => Ok(std::fs::canonicalize(path)?),
        None => bail!(
            "{FILE} is not next to {}: build it with `cargo build -p \
             memprof-alloc-preload` (same profile), or give --allocator-lib memprof=PATH",
            exe.display()
        ),
    }
}

/// The program file of `command`: as given when it has a slash, else the first match on PATH.
pub fn executable(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// File names of the objects that preloading `library` adds to `exe` (the allocator and what
/// it alone needs), symlinks resolved as the target's maps show them: allocations whose caller
/// is in one of them are the allocator's start-up, not the workload's. Empty when ld.so cannot
/// list the program (a script, a static binary).
pub fn brought_in(exe: &Path, library: &Path) -> HashSet<String> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| key != "LD_PRELOAD")
        .collect();
    let Ok(plain) = crate::targets::libraries(exe, &env) else {
        return HashSet::new();
    };
    let mut preloaded_env = env;
    preloaded_env.push(("LD_PRELOAD".into(), library.display().to_string()));
    let Ok(preloaded) = crate::targets::libraries(exe, &preloaded_env) else {
        return HashSet::new();
    };
    let name = |path: &PathBuf| {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        real.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let plain: HashSet<String> = plain.iter().map(name).collect();
    preloaded
        .iter()
        .map(name)
        .filter(|file| !plain.contains(file))
        .collect()
}
