//! Probes on C++ `operator new`/`operator delete`, where an allocator serves them itself.
//!
//! libstdc++'s operators call `malloc`/`free`, which are probed: nothing to add (probing them
//! too would double every C++ program's cost under glibc). tcmalloc, jemalloc and mimalloc
//! define the operators with their own code, which never reaches the probed `malloc`; memprof
//! then probes every operator such an object serves, except those that end up in a probed
//! function anyway:
//! - an alias of it (tcmalloc's `_ZdlPv` is `free`);
//! - a wrapper that tail-jumps to it, directly or through the PLT, over any number of hops
//!   (jemalloc's `_ZdlPv` is `jmp free@plt`; mimalloc's aligned delete reaches `free` in three).
//!
//! Nested allocation calls count once (the in-flight depth), so an operator new that calls a
//! probed `malloc` is harmless. A free is entry-only and cannot nest: an operator delete that
//! calls a probed function from its body (not as a plain tail jump) is left to that function
//! and reported as a warning, since its other paths are not seen.
use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
use profiler_common::EventKind;

use crate::{elf::ElfObject, probe_site::ProbeSite};

/// A function address: (index into the objects in lookup order, virtual address).
type Addr = (usize, u64);

/// One mangled operator (x86-64, `size_t` = `unsigned long`).
pub struct Operator {
    pub name: &'static str,
    pub kind: EventKind,
}

const fn op(name: &'static str, kind: EventKind) -> Operator {
    Operator { name, kind }
}

/// Every replaceable global operator new and delete.
pub const NAMES: &[Operator] = &[
    op("_Znwm", EventKind::OperatorNew),
    op("_Znam", EventKind::OperatorNew),
    op("_ZnwmRKSt9nothrow_t", EventKind::OperatorNew),
    op("_ZnamRKSt9nothrow_t", EventKind::OperatorNew),
    op("_ZnwmSt11align_val_t", EventKind::OperatorNew),
    op("_ZnamSt11align_val_t", EventKind::OperatorNew),
    op("_ZnwmSt11align_val_tRKSt9nothrow_t", EventKind::OperatorNew),
    op("_ZnamSt11align_val_tRKSt9nothrow_t", EventKind::OperatorNew),
    op("_ZdlPv", EventKind::OperatorDelete),
    op("_ZdaPv", EventKind::OperatorDelete),
    op("_ZdlPvRKSt9nothrow_t", EventKind::OperatorDelete),
    op("_ZdaPvRKSt9nothrow_t", EventKind::OperatorDelete),
    op("_ZdlPvm", EventKind::OperatorDelete),
    op("_ZdaPvm", EventKind::OperatorDelete),
    op("_ZdlPvSt11align_val_t", EventKind::OperatorDelete),
    op("_ZdaPvSt11align_val_t", EventKind::OperatorDelete),
    op(
        "_ZdlPvSt11align_val_tRKSt9nothrow_t",
        EventKind::OperatorDelete,
    ),
    op(
        "_ZdaPvSt11align_val_tRKSt9nothrow_t",
        EventKind::OperatorDelete,
    ),
    op("_ZdlPvmSt11align_val_t", EventKind::OperatorDelete),
    op("_ZdaPvmSt11align_val_t", EventKind::OperatorDelete),
];

/// Tail jumps followed before giving up (mimalloc needs three).
const MAX_HOPS: usize = 8;
/// Code decoded at a jump target whose size no symbol gives.
const UNKNOWN_BODY_BYTES: u64 = 256;
/// Longest body scanned for calls.
const MAX_BODY_BYTES: u64 = 4096;

/// The operator probes for `objects` (in lookup order), given the functions already probed
/// (`probed`, their entries), and warnings about operator calls those probes still miss.
pub fn plan(
    objects: &[(&PathBuf, ElfObject)],
    probed: &HashSet<Addr>,
) -> (Vec<ProbeSite>, Vec<String>) {
    let resolver = Resolver {
        objects,
        definers: RefCell::default(),
    };
    // Where each operator is served from, and where its tail jumps lead.
    let mut candidates = Vec::new();
    for operator in NAMES {
        let provider = objects
            .iter()
            .enumerate()
            .find_map(|(i, (_, object))| object.function(operator.name).map(|f| (i, f)));
        let Some((index, (vaddr, len))) = provider else {
            continue;
        };
        if is_libstdcxx(&objects[index].1) {
            continue;
        }
        let start = (index, vaddr);
        let end = resolver.follow(start, probed);
        if !probed.contains(&end) {
            candidates.push((operator, start, len, end));
        }
    }
    // Operators that are not wrappers get a probe; a wrapper of one of them is covered by it.
    let own_code: HashSet<Addr> = candidates
        .iter()
        .filter(|(_, start, _, end)| start == end)
        .map(|(_, start, _, _)| *start)
        .collect();
    let mut sites = Vec::new();
    let mut warnings = Vec::new();
    let mut placed = HashSet::new();
    for (operator, start, len, end) in candidates {
        if (start != end && own_code.contains(&end)) || !placed.insert(start) {
            continue;
        }
        let (module, object) = &objects[start.0];
        if operator.kind == EventKind::OperatorDelete {
            let body_len = if start == end {
                len
            } else {
                let (_, target) = &objects[end.0];
                target.function_len_at(end.1).unwrap_or(UNKNOWN_BODY_BYTES)
            };
            if let Some(reached) = resolver.calls_into(end, body_len, probed) {
                let (reached_module, _) = &objects[reached.0];
                warnings.push(format!(
                    "C++ {} in {} calls a probed function (at {:#x} in {}) on some paths only: \
                     memprof counts its calls through that function, so operator delete calls \
                     that take another path are missing",
                    operator.name,
                    module.display(),
                    reached.1,
                    reached_module.display()
                ));
                continue;
            }
        }
        if let Some(site) =
            ProbeSite::at(operator.kind, operator.name, module, object, start.1, len)
        {
            sites.push(site);
        }
    }
    (sites, warnings)
}

fn is_libstdcxx(object: &ElfObject) -> bool {
    let name = object
        .soname
        .clone()
        .or_else(|| Some(object.path.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default();
    name.starts_with("libstdc++")
}

/// Follows code addresses through tail jumps and PLT stubs, as ld.so would bind them.
struct Resolver<'a> {
    objects: &'a [(&'a PathBuf, ElfObject)],
    /// The first object exporting a name, and its address there, by name.
    definers: RefCell<HashMap<String, Option<Addr>>>,
}

impl Resolver<'_> {
    fn definer(&self, name: &str) -> Option<Addr> {
        if let Some(found) = self.definers.borrow().get(name) {
            return *found;
        }
        let found = self
            .objects
            .iter()
            .enumerate()
            .find_map(|(i, (_, object))| object.exported(name).map(|(vaddr, _)| (i, vaddr)));
        self.definers.borrow_mut().insert(name.to_owned(), found);
        found
    }

    /// Where a jump (or call) at `at` lands: a direct target in the same object, or the
    /// function bound to a GOT slot.
    fn target(&self, at: Addr, jump: Jump) -> Option<Addr> {
        match jump {
            Jump::Direct(target) => Some((at.0, target)),
            Jump::Slot(slot) => self.definer(&self.objects[at.0].1.got_symbol(slot)?),
        }
    }

    /// The function `start` really runs: through its leading tail jumps (a PLT stub is one),
    /// stopping at a probed function.
    fn follow(&self, start: Addr, probed: &HashSet<Addr>) -> Addr {
        let mut at = start;
        for _ in 0..MAX_HOPS {
            if probed.contains(&at) {
                break;
            }
            let object = &self.objects[at.0].1;
            let next = object
                .code_at(at.1, 32)
                .and_then(|code| leading_jump(code, at.1))
                .and_then(|jump| self.target(at, jump));
            match next {
                Some(next) if next != at => at = next,
                _ => break,
            }
        }
        at
    }

    /// A probed function that the body at `at` (`len` bytes) calls or jumps to.
    fn calls_into(&self, at: Addr, len: u64, probed: &HashSet<Addr>) -> Option<Addr> {
        let len = len.clamp(1, MAX_BODY_BYTES);
        let code = self.objects[at.0].1.code_at(at.1, len as usize)?;
        let body = at.1..at.1 + len;
        branches(code, at.1)
            .into_iter()
            .filter(|jump| !matches!(jump, Jump::Direct(t) if body.contains(t)))
            .filter_map(|jump| self.target(at, jump))
            .map(|target| self.follow(target, probed))
            .find(|end| probed.contains(end))
    }
}

/// A control transfer whose target is known without running the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Jump {
    /// To this address.
    Direct(u64),
    /// Through the pointer stored at this address (a GOT slot).
    Slot(u64),
}

fn jump_of(instruction: &Instruction) -> Option<Jump> {
    let branch = matches!(instruction.mnemonic(), Mnemonic::Jmp | Mnemonic::Call)
        || instruction.is_jcc_short_or_near();
    if !branch {
        return None;
    }
    match instruction.op0_kind() {
        OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16 => {
            Some(Jump::Direct(instruction.near_branch_target()))
        }
        OpKind::Memory if instruction.is_ip_rel_memory_operand() => {
            Some(Jump::Slot(instruction.ip_rel_memory_address()))
        }
        _ => None,
    }
}

/// The unconditional jump a function starts with (after `endbr64` and nops): it only forwards.
fn leading_jump(code: &[u8], ip: u64) -> Option<Jump> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    for instruction in decoder.iter().take(4) {
        if instruction.code() == Code::Endbr64 || instruction.mnemonic() == Mnemonic::Nop {
            continue;
        }
        return (instruction.mnemonic() == Mnemonic::Jmp)
            .then(|| jump_of(&instruction))
            .flatten();
    }
    None
}

/// Every call and jump with a known target in `code`.
fn branches(code: &[u8], ip: u64) -> Vec<Jump> {
    Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
        .iter()
        .take_while(|instruction| !instruction.is_invalid())
        .filter_map(|instruction| jump_of(&instruction))
        .collect()
}

/// A warning when a return probe sits on an allocator's own throwing `operator new`: a
/// `std::bad_alloc` it throws unwinds into the uretprobe's trampoline, where the C++ unwinder
/// finds no frame and calls `std::terminate` (ARCHITECTURE.md, known limits).
pub fn throwing_new_note(sites: &[ProbeSite]) -> Option<String> {
    let site = sites
        .iter()
        .find(|site| site.kind == EventKind::OperatorNew && !site.symbol.contains("nothrow"))?;
    Some(format!(
        "memprof: note: {} serves C++ operator new itself: while the probes are on, a \
         std::bad_alloc it throws ends the program in std::terminate (the return probe stands \
         in the unwinder's way)",
        site.module.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_jumps_are_found_past_endbr64() {
        // endbr64; jmp rel32 (+0x10 from the next instruction).
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0x10, 0, 0, 0];
        assert_eq!(
            leading_jump(&code, 0x1000),
            Some(Jump::Direct(0x1000 + 9 + 0x10))
        );
        // bnd jmp *0x2000(%rip): a PLT stub.
        let stub = [0xf2, 0xff, 0x25, 0x00, 0x20, 0, 0];
        assert_eq!(
            leading_jump(&stub, 0x1000),
            Some(Jump::Slot(0x1000 + 7 + 0x2000))
        );
        // test %rdi,%rdi; je ...: real code, not a wrapper.
        let code = [0x48, 0x85, 0xff, 0x74, 0x10];
        assert_eq!(leading_jump(&code, 0x1000), None);
    }

    #[test]
    fn branches_lists_calls_and_jumps() {
        // call rel32 0; jne +2; ret
        let code = [0xe8, 0, 0, 0, 0, 0x75, 0x02, 0xc3];
        assert_eq!(
            branches(&code, 0x100),
            vec![Jump::Direct(0x105), Jump::Direct(0x109)]
        );
    }

    #[test]
    fn a_throwing_operator_new_under_a_return_probe_is_named() {
        use crate::prologue::Placement;
        let site = |kind: EventKind, symbol: &'static str, module: &str| ProbeSite {
            kind,
            symbol,
            aliases: Vec::new(),
            path: module.into(),
            module: module.into(),
            file_offset: 0,
            placement: Placement {
                offset: 0,
                single_step: false,
            },
            function_len: 16,
        };
        let libc = site(EventKind::Malloc, "malloc", "/lib/libc.so.6");
        assert_eq!(throwing_new_note(std::slice::from_ref(&libc)), None);
        let nothrow = site(
            EventKind::OperatorNew,
            "_ZnwmRKSt9nothrow_t",
            "/lib/libjemalloc.so.2",
        );
        assert_eq!(throwing_new_note(&[libc.clone(), nothrow.clone()]), None);
        let throwing = site(EventKind::OperatorNew, "_Znwm", "/lib/libjemalloc.so.2");
        let note = throwing_new_note(&[libc, nothrow, throwing]).expect("a note");
        assert!(
            note.contains("/lib/libjemalloc.so.2 serves C++ operator new"),
            "{note}"
        );
    }
}
