//! Which capture path `memprof run` takes (`--capture auto|uprobes|preload`), and why.
//!
//! `auto` takes the in-process path (several times cheaper) whenever a preloaded library sees
//! every call the probes would: the program is dynamically linked, its malloc comes from a
//! shared library (a definition in the executable itself wins over any preload), the serving
//! allocator does not implement C++ `operator new`/`delete` with its own code (the library
//! interposes the C functions only), and stacks are unwound from copies (`--unwind dwarf`).
//! Otherwise it takes the probes, and says which condition sent it there.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use profiler_common::EventKind;

use crate::{
    cli::{CaptureArgs, CapturePath, Unwind},
    elf::ElfObject,
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
    capture: &CaptureArgs,
    program: &Path,
    env: &[(String, String)],
) -> Result<Choice> {
    match asked {
        CapturePath::Uprobes => Ok(Choice {
            path: CapturePath::Uprobes,
            reason: "eBPF uprobes on the allocator (--capture uprobes)".into(),
        }),
        CapturePath::Preload => {
            if let Some(why) = preload_impossible(capture, program)? {
                bail!("--capture preload: {why}; use --capture uprobes");
            }
            Ok(Choice {
                path: CapturePath::Preload,
                reason: "in-process, libmemprof_capture.so preloaded (--capture preload)".into(),
            })
        }
        CapturePath::Auto => {
            let why_not = match preload_impossible(capture, program)? {
                Some(why) => Some(why),
                None if crate::preload_capture::library().is_err() => Some(format!(
                    "{} is not next to memprof",
                    crate::preload_capture::LIBRARY
                )),
                None => preload_incomplete(program, env),
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
fn preload_impossible(capture: &CaptureArgs, program: &Path) -> Result<Option<String>> {
    if capture.unwind != Unwind::Dwarf {
        return Ok(Some(
            "--unwind fp walks frame pointers in the kernel; the in-process path copies stacks \
             for DWARF unwinding"
                .into(),
        ));
    }
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
    if let Some(site) = sites.iter().find(|site| {
        matches!(
            site.kind,
            EventKind::OperatorNew | EventKind::OperatorDelete
        )
    }) {
        return Some(format!(
            "{} serves C++ operator new/delete with its own code, which the preloaded library \
             does not intercept",
            site.module.display()
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
