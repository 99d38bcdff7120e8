//! C++ `operator new`/`operator delete`, where an allocator serves them with its own code.
//!
//! libstdc++'s operators call `malloc`/`free` through its PLT, which the hooks already record:
//! the library only passes them on. jemalloc, tcmalloc and mimalloc define the operators
//! themselves, and a program's `new` then never reaches a hooked function. Each operator is
//! therefore exported here too, and decided on its first call, in the process that calls it
//! (an exec'd program may be served by another allocator), the way memprof plans its probes
//! (`profiler-cli/src/operators.rs`), so both capture paths give the same records:
//! - served by libstdc++, or a wrapper that tail-jumps through the PLT to a hooked function
//!   (jemalloc's `_ZdlPv` is `jmp free@plt`): *passed on*, by a plain jump, so that the hook
//!   it reaches sees the program's own call and stack;
//! - an alias of the next `malloc`/`free`, or a direct tail jump to one (tcmalloc's and
//!   mimalloc's `_ZdlPv` are `free`): recorded as that function;
//! - otherwise (code of its own): recorded as `operator new`/`operator delete`.
//!
//! The exports are naked trampolines: a passed-on operator costs a load and a jump. A recorded
//! one goes to [`new_hook`]/[`delete_hook`], which forward through `extern "C-unwind"` so that
//! a throwing `operator new` unwinds through them to the program's handler.

use core::arch::naked_asm;
use core::ffi::{CStr, c_void};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use profiler_common::EventKind;

use crate::hooks;
use crate::plt;
use crate::real;
use crate::thread::Entered;

/// One replaceable global operator (x86-64 mangling, `size_t` = `unsigned long`).
struct Operator {
    name: &'static CStr,
    /// `operator new` (else `operator delete`).
    new: bool,
    /// Takes an `align_val_t` as its second argument (the new forms only read it).
    aligned: bool,
}

const fn new(name: &'static CStr, aligned: bool) -> Operator {
    Operator {
        name,
        new: true,
        aligned,
    }
}

const fn delete(name: &'static CStr) -> Operator {
    Operator {
        name,
        new: false,
        aligned: false,
    }
}

/// Every operator, in the order of the exports below (their index).
const OPERATORS: [Operator; COUNT] = [
    new(c"_Znwm", false),
    new(c"_Znam", false),
    new(c"_ZnwmRKSt9nothrow_t", false),
    new(c"_ZnamRKSt9nothrow_t", false),
    new(c"_ZnwmSt11align_val_t", true),
    new(c"_ZnamSt11align_val_t", true),
    new(c"_ZnwmSt11align_val_tRKSt9nothrow_t", true),
    new(c"_ZnamSt11align_val_tRKSt9nothrow_t", true),
    delete(c"_ZdlPv"),
    delete(c"_ZdaPv"),
    delete(c"_ZdlPvRKSt9nothrow_t"),
    delete(c"_ZdaPvRKSt9nothrow_t"),
    delete(c"_ZdlPvm"),
    delete(c"_ZdaPvm"),
    delete(c"_ZdlPvSt11align_val_t"),
    delete(c"_ZdaPvSt11align_val_t"),
    delete(c"_ZdlPvSt11align_val_tRKSt9nothrow_t"),
    delete(c"_ZdaPvSt11align_val_tRKSt9nothrow_t"),
    delete(c"_ZdlPvmSt11align_val_t"),
    delete(c"_ZdaPvmSt11align_val_t"),
];
const COUNT: usize = 20;

/// Where a passed-on operator jumps (0: recorded, or not decided yet). Read by the trampolines.
static JUMPS: [AtomicUsize; COUNT] = [const { AtomicUsize::new(0) }; COUNT];
/// The kind a recorded operator is recorded as (0: passed on, or not decided yet). Read by
/// the trampolines.
static KINDS: [AtomicU32; COUNT] = [const { AtomicU32::new(0) }; COUNT];
/// The next definition of each operator, which a recorded one forwards to.
static NEXT: [AtomicUsize; COUNT] = [const { AtomicUsize::new(0) }; COUNT];

/// How an operator is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    /// Jumped to: a hooked function records the call it leads to.
    PassedOn,
    Recorded(EventKind),
}

/// Decides operator `index` (called by its trampoline, arguments saved, before the call goes
/// on). Calls made meanwhile (`dlsym`, `dladdr` may allocate) are the library's own.
extern "C" fn decide(index: usize) {
    let Some(operator) = OPERATORS.get(index) else {
        return;
    };
    let _entered = Entered::try_enter();
    // SAFETY: RTLD_NEXT with a NUL-terminated name.
    let next = unsafe { libc::dlsym(libc::RTLD_NEXT, operator.name.as_ptr()) } as usize;
    let served = if next == 0 {
        // Nothing defines it after this library: there is nothing to forward to.
        Served::Recorded(own_kind(operator))
    } else {
        served(operator, next)
    };
    NEXT[index].store(next, Ordering::Release);
    match served {
        Served::PassedOn => JUMPS[index].store(next, Ordering::Release),
        Served::Recorded(kind) => KINDS[index].store(kind as u32, Ordering::Release),
    }
}

fn own_kind(operator: &Operator) -> EventKind {
    if operator.new {
        EventKind::OperatorNew
    } else {
        EventKind::OperatorDelete
    }
}

/// How the operator defined at `next` is served (see the module's documentation).
fn served(operator: &Operator, next: usize) -> Served {
    if defined_by_libstdcxx(next) {
        return Served::PassedOn;
    }
    let (function, kind) = if operator.new {
        (real::malloc().map(|f| f as usize), EventKind::Malloc)
    } else {
        (real::free().map(|f| f as usize), EventKind::Free)
    };
    match plt::follow_tail_jumps(next) {
        plt::Lands::At(address) if Some(address) == function => Served::Recorded(kind),
        plt::Lands::Plt(symbol) if real::records(symbol) => Served::PassedOn,
        _ => Served::Recorded(own_kind(operator)),
    }
}

/// Whether the object defining `address` is libstdc++, whose operators call `malloc`/`free`.
fn defined_by_libstdcxx(address: usize) -> bool {
    let mut info = core::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr fills `info` for any address and returns 0 when none matches.
    if unsafe { libc::dladdr(address as *const c_void, info.as_mut_ptr()) } == 0 {
        return false;
    }
    // SAFETY: dladdr succeeded; dli_fname is the object's NUL-terminated path or null.
    let name = unsafe { info.assume_init().dli_fname };
    !name.is_null()
        && unsafe { CStr::from_ptr(name) }
            .to_bytes()
            .windows(b"libstdc++".len())
            .any(|part| part == b"libstdc++")
}

type Forward = unsafe extern "C-unwind" fn(usize, usize, usize) -> *mut c_void;

/// The next definition of operator `index`, to forward a recorded call to.
fn next(index: usize) -> Option<Forward> {
    let address = NEXT.get(index)?.load(Ordering::Acquire);
    // SAFETY: a non-zero address is the operator dlsym found, called with the registers the
    // program passed (an operator reads at most three).
    (address != 0).then(|| unsafe { core::mem::transmute::<usize, Forward>(address) })
}

/// A recorded `operator new` form: `a0` is the size, `a1` the alignment of the aligned forms.
extern "C-unwind" fn new_hook(
    a0: usize,
    a1: usize,
    a2: usize,
    sp: usize,
    bp: usize,
    index: usize,
) -> *mut c_void {
    let forward = || match next(index) {
        // SAFETY: the next definition, with the program's arguments.
        Some(operator) => unsafe { operator(a0, a1, a2) },
        None => core::ptr::null_mut(),
    };
    let kind = KINDS[index].load(Ordering::Relaxed);
    let aligned = OPERATORS[index].aligned;
    hooks::hooked(forward, |p| {
        let align = if aligned { a1 as u64 } else { 0 };
        hooks::allocation(kind_of(kind), p as u64, a0 as u64, 0, align, sp, bp);
    })
}

/// A recorded `operator delete` form: `a0` is the block; the other arguments are passed on.
extern "C-unwind" fn delete_hook(
    a0: usize,
    a1: usize,
    a2: usize,
    sp: usize,
    _bp: usize,
    index: usize,
) {
    let entered = Entered::try_enter();
    if entered.is_some() && a0 != 0 {
        let kind = KINDS[index].load(Ordering::Relaxed);
        hooks::release(kind_of(kind), a0 as u64, 0, sp);
    }
    if let Some(operator) = next(index) {
        // SAFETY: the next definition, with the program's arguments.
        unsafe { operator(a0, a1, a2) };
    }
    drop(entered);
}

fn kind_of(kind: u32) -> EventKind {
    EventKind::from_u32(kind).unwrap_or(EventKind::OperatorNew)
}

/// An exported operator: passes the call on when it is decided so, decides it on its first
/// call (the three argument registers saved around [`decide`]), and otherwise hands it to
/// `$hook` with the entry `rsp` and `rbp` and its index, like the other hooks' trampolines.
macro_rules! operator {
    ($export:ident, $index:literal, $hook:ident) => {
        /// # Safety
        /// Called as the C++ operator of this mangled name.
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $export() {
            naked_asm!(
                "2:",
                "mov rax, qword ptr [rip + {jumps} + {index} * 8]",
                "test rax, rax",
                "jz 3f",
                "jmp rax",
                "3:",
                "cmp dword ptr [rip + {kinds} + {index} * 4], 0",
                "jne 4f",
                // Entered with rsp 8 past a 16-byte boundary: three pushes align the call.
                "push rdi",
                "push rsi",
                "push rdx",
                "mov edi, {index}",
                "call {decide}",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "jmp 2b",
                "4:",
                "mov rcx, rsp",
                "mov r8, rbp",
                "mov r9d, {index}",
                "jmp {hook}",
                jumps = sym JUMPS,
                kinds = sym KINDS,
                index = const $index,
                decide = sym decide,
                hook = sym $hook,
            )
        }
    };
}

/// The exports, each with its index into [`OPERATORS`] and its hook; and their names.
macro_rules! operators {
    ($(($export:ident, $index:literal, $hook:ident)),* $(,)?) => {
        $(operator!($export, $index, $hook);)*
        #[cfg(test)]
        const EXPORTED: [(&str, usize); COUNT] = [$((stringify!($export), $index)),*];
    };
}

operators![
    (_Znwm, 0, new_hook),
    (_Znam, 1, new_hook),
    (_ZnwmRKSt9nothrow_t, 2, new_hook),
    (_ZnamRKSt9nothrow_t, 3, new_hook),
    (_ZnwmSt11align_val_t, 4, new_hook),
    (_ZnamSt11align_val_t, 5, new_hook),
    (_ZnwmSt11align_val_tRKSt9nothrow_t, 6, new_hook),
    (_ZnamSt11align_val_tRKSt9nothrow_t, 7, new_hook),
    (_ZdlPv, 8, delete_hook),
    (_ZdaPv, 9, delete_hook),
    (_ZdlPvRKSt9nothrow_t, 10, delete_hook),
    (_ZdaPvRKSt9nothrow_t, 11, delete_hook),
    (_ZdlPvm, 12, delete_hook),
    (_ZdaPvm, 13, delete_hook),
    (_ZdlPvSt11align_val_t, 14, delete_hook),
    (_ZdaPvSt11align_val_t, 15, delete_hook),
    (_ZdlPvSt11align_val_tRKSt9nothrow_t, 16, delete_hook),
    (_ZdaPvSt11align_val_tRKSt9nothrow_t, 17, delete_hook),
    (_ZdlPvmSt11align_val_t, 18, delete_hook),
    (_ZdaPvmSt11align_val_t, 19, delete_hook),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_export_is_at_its_operators_index_with_its_hook() {
        for (position, (name, index)) in EXPORTED.into_iter().enumerate() {
            assert_eq!(index, position, "{name}");
            let operator = &OPERATORS[index];
            assert_eq!(operator.name.to_str().unwrap(), name);
            assert_eq!(operator.new, name.starts_with("_Zn"), "{name}");
            assert_eq!(
                operator.aligned,
                operator.new && name.contains("St11align_val_t")
            );
        }
    }
}
