//! Which capture path `memprof run` takes (`--capture auto|uprobes|preload`), and why.
//!
//! `auto` takes the in-process path (several times cheaper) whenever a preloaded library sees
//! every call the probes would: the program is dynamically linked, its malloc comes from a
//! shared library (a definition in the executable itself wins over any preload). C++
//! operators an allocator serves with its own code are interposed too
//! (`profiler-capture/src/operators.rs`). Otherwise it takes the probes, and says which
//! condition sent it there.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use profiler_common::EventKind;

use crate::{
    elf::ElfObject,
    options::CapturePath,
    targets::{self, LookupOrder},
};

/// The path taken and the reason given in the report.
pub struct Choice {
    pub path: CapturePath,
    pub reason: String,
}

/// Decides how `command` (its program resolved through PATH) is captured, with `env` the
/// environment it will get (ours with `--env` applied).
pub fn choose(
    asked: CapturePath,
    program: &Path,
    env: &[(String, String)],
    user: Option<&crate::launch::RunAs>,
) -> Result<Choice> {
    // The program runs as `user` (run --user): ld.so preloads the library with its rights.
    let unreadable = || -> Option<String> {
        let user = user?;
        let library = crate::preload_capture::library().ok()?;
        (!readable_by(&library, user))
            .then(|| format!("{} is not readable by {}", library.display(), user.name))
    };
    match asked {
        CapturePath::Uprobes => Ok(Choice {
            path: CapturePath::Uprobes,
            reason: "eBPF uprobes on the allocator (--capture uprobes)".into(),
        }),
        CapturePath::Preload => {
            if let Some(why) = preload_impossible(program)?.or_else(unreadable) {
                bail!("--capture preload: {why}; use --capture uprobes");
            }
            Ok(Choice {
                path: CapturePath::Preload,
                reason: "in-process, libmemprof_capture.so preloaded (--capture preload)".into(),
            })
        }
        CapturePath::Auto => {
            let why_not = match preload_impossible(program)? {
                Some(why) => Some(why),
                None if crate::preload_capture::library().is_err() => Some(format!(
                    "{} is not next to memprof",
                    crate::preload_capture::LIBRARY
                )),
                None => unreadable().or_else(|| preload_incomplete(program, env)),
            };
            Ok(match why_not {
                Some(why) => Choice {
                    path: CapturePath::Uprobes,
                    reason: format!("eBPF uprobes on the allocator (--capture auto: {why})"),
                },
                None => Choice {
                    path: CapturePath::Preload,
                    reason: "in-process, libmemprof_capture.so preloaded (--capture auto: the \
                             program is dynamically linked and its allocator is reached by \
                             interposition)"
                        .into(),
                },
            })
        }
    }
}

/// Why no library can be preloaded (or its records used), if so.
fn preload_impossible(program: &Path) -> Result<Option<String>> {
    let object = match ElfObject::read(program, &[]) {
        Ok(object) => object,
        // A script: its interpreter is what runs, and the kernel reads it, not ld.so.
        Err(_) => return Ok(None),
    };
    if object.interpreter.is_none() {
        return Ok(Some(format!(
            "{} is statically linked, so no library can be preloaded into it",
            program.display()
        )));
    }
    Ok(None)
}

/// Why a preloaded library would miss calls the probes see, if it would.
fn preload_incomplete(program: &Path, env: &[(String, String)]) -> Option<String> {
    let libraries = match targets::libraries(program, env) {
        Ok(libraries) => libraries,
        // Not an ELF program (a script): its interpreter is dynamically linked as a rule.
        Err(_) => return None,
    };
    let mut objects = vec![program.to_owned()];
    objects.extend(libraries);
    let order = LookupOrder {
        objects,
        opened: Default::default(),
    };
    let (sites, _) = order.probe_plan().ok()?;
    if let Some(site) = sites
        .iter()
        .find(|site| site.kind == EventKind::Malloc && site.module == program)
    {
        return Some(format!(
            "the executable defines {} itself, and a definition in the executable comes before \
             any preloaded one",
            site.symbol
        ));
    }
    None
}

/// The program `command` names, resolved through PATH as exec does.
pub fn program(command: &[std::ffi::OsString]) -> Result<std::path::PathBuf> {
    let program = command.first().context("no command given")?;
    crate::compare::executable(Path::new(program))
        .with_context(|| format!("command not found: {}", program.to_string_lossy()))
}

/// Whether `user` may read `path`: search rights on every directory above it and read rights
/// on the file, from the mode bits as the kernel checks them (owner, then group, then others).
fn readable_by(path: &Path, user: &crate::launch::RunAs) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let allowed = |path: &Path, bit: u32| {
        std::fs::metadata(path).is_ok_and(|meta| {
            let shift = if meta.uid() == user.uid {
                6
            } else if meta.gid() == user.gid || user.groups.contains(&meta.gid()) {
                3
            } else {
                0
            };
            meta.mode() >> shift & bit != 0
        })
    };
    path.ancestors()
        .skip(1)
        .all(|dir| dir.as_os_str().is_empty() || allowed(dir, 0o1))
        && allowed(path, 0o4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_file_in_a_directory_only_its_owner_can_search_is_not_readable_by_others() {
        let nobody = crate::launch::RunAs::lookup("nobody").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("private");
        std::fs::create_dir(&inner).unwrap();
        let library = inner.join("lib.so");
        std::fs::write(&library, b"x").unwrap();
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        mode(dir.path(), 0o755);
        mode(&library, 0o644);
        mode(&inner, 0o700);
        // Unless memprof's tests run as nobody, the owner is another user.
        let owned_by_nobody = {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(&inner).unwrap().uid() == nobody.uid
        };
        assert_eq!(readable_by(&library, &nobody), owned_by_nobody);
        mode(&inner, 0o755);
        assert!(readable_by(&library, &nobody));
        mode(&library, 0o600);
        assert_eq!(readable_by(&library, &nobody), owned_by_nobody);
    }
}
