//! Why the calls of a program a followed process exec'd would not be seen, said in the report
//! instead of leaving an image with no calls to puzzle over. Asked at the exec stop, before
//! the program runs: its executable, its environment and its credentials are the new ones.
//!
//! - A statically linked program, or one defining `malloc` in its executable: its allocator is
//!   part of the program, which the probes (on the launched process's allocator files) do not
//!   cover, and before which no preloaded library comes.
//! - In-process path: an environment that no longer preloads the capture library, or a setuid
//!   or setgid program (the loader ignores `LD_PRELOAD` for it).
//! - Probes: a program preloading or linking another allocator than the files probed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use profiler_core::analysis::allocator::Allocator;

use crate::{elf::ElfObject, probe_site::ProbeSite, targets::preload_list};

/// What is known of executables already looked at (by device and inode): why their calls are
/// unseen, if they are, and the libraries they link.
#[derive(Default)]
pub struct UnseenCheck {
    executables: HashMap<(u64, u64), Executable>,
}

#[derive(Clone)]
struct Executable {
    /// Why no capture path reaches its allocator, if none does.
    private_allocator: Option<String>,
    needed: Vec<String>,
}

impl UnseenCheck {
    /// Why process `pid`'s new program will be listed with calls missing, on `capture`
    /// (`preload` or `uprobes`) with `probed` the sites of the session; None if nothing says so.
    pub fn why(&mut self, pid: u32, capture: &str, probed: &[ProbeSite]) -> Option<String> {
        // Read through /proc/PID/exe, the file the kernel runs: the path it names is the
        // target's to change.
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let file = std::fs::metadata(&exe).ok()?;
        let shown = std::fs::read_link(&exe).unwrap_or_else(|_| exe.clone());
        let executable = self
            .executables
            .entry((file.dev(), file.ino()))
            .or_insert_with(|| look_at(&exe, &shown))
            .clone();
        if let Some(why) = executable.private_allocator {
            return Some(why);
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let preloaded = preload_list(&environ);
        match capture {
            "preload" => {
                if !preloaded
                    .iter()
                    .any(|lib| lib.ends_with(crate::preload_capture::LIBRARY))
                {
                    return Some(format!(
                        "its environment no longer preloads {}: its calls are not seen",
                        crate::preload_capture::LIBRARY
                    ));
                }
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                secure_execution(&status).then(|| {
                    "it runs setuid or setgid, and the loader ignores LD_PRELOAD for such a \
                     program: its calls are not seen"
                        .to_owned()
                })
            }
            _ => {
                let probed_names: Vec<String> = probed
                    .iter()
                    .filter_map(|site| file_name(&site.module))
                    .collect();
                preloaded
                    .iter()
                    .filter_map(|lib| file_name(Path::new(lib)))
                    .chain(executable.needed.iter().cloned())
                    .find(|name| {
                        let allocator = Allocator::from_module(name);
                        allocator != Allocator::Unknown
                            && allocator != Allocator::Glibc
                            && !probed_names.contains(name)
                    })
                    .map(|name| {
                        format!(
                            "its malloc comes from {name}, which the probes (on the launched \
                             process's allocator) do not cover: its calls are not seen"
                        )
                    })
            }
        }
    }
}

/// `exe` is read, `shown` named.
fn look_at(exe: &Path, shown: &Path) -> Executable {
    let Ok(object) = ElfObject::read(exe, &["malloc"]) else {
        // Not an ELF program: nothing to say.
        return Executable {
            private_allocator: None,
            needed: Vec::new(),
        };
    };
    let private_allocator = if object.interpreter.is_none() {
        Some(format!(
            "{} is statically linked: its allocator is part of it, which no capture path \
             reaches; its calls are not seen",
            shown.display()
        ))
    } else if object.function("malloc").is_some() {
        Some(format!(
            "{} defines malloc itself, which no capture path reaches: its calls are not seen",
            shown.display()
        ))
    } else {
        None
    };
    Executable {
        private_allocator,
        needed: object.needed,
    }
}

/// Whether the loader runs the process in secure mode: its real and effective user or group
/// differ (from `/proc/PID/status`).
fn secure_execution(status: &str) -> bool {
    let ids = |field: &str| -> Option<(String, String)> {
        let line = status.lines().find_map(|l| l.strip_prefix(field))?;
        let mut ids = line.split_whitespace();
        Some((ids.next()?.to_owned(), ids.next()?.to_owned()))
    };
    [ids("Uid:"), ids("Gid:")]
        .into_iter()
        .flatten()
        .any(|(real, effective)| real != effective)
}

fn file_name(path: &Path) -> Option<String> {
    Some(path.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preloaded_libraries_are_read_from_the_environment() {
        let environ = b"PATH=/bin\0LD_PRELOAD=/a/libmemprof_capture.so:/b/libjemalloc.so.2 x.so\0";
        assert_eq!(
            preload_list(environ),
            ["/a/libmemprof_capture.so", "/b/libjemalloc.so.2", "x.so"]
        );
        assert!(preload_list(b"PATH=/bin\0").is_empty());
    }

    #[test]
    fn a_setuid_program_runs_in_secure_mode() {
        let plain = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n";
        let setuid = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        let setgid = "Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t100\t5\t5\t5\n";
        assert!(!secure_execution(plain));
        assert!(secure_execution(setuid));
        assert!(secure_execution(setgid));
    }
}
