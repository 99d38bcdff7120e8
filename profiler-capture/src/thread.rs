//! Per-thread state: whether the thread is inside a hook already (calls made from there are
//! forwarded unrecorded), its id, the bounds of its stack (a stack walk never reads past
//! them) and its stack walker.
//!
//! Every field is const-initialised and needs no destructor, so the thread-local block is
//! plain static TLS: reading it never allocates and stays valid while the thread exits.

use core::cell::Cell;

struct State {
    /// Inside a hook: the library's own calls, or a signal handler interrupting one.
    busy: Cell<bool>,
    /// The kernel's thread id; 0 until first asked.
    tid: Cell<u32>,
    /// `[low, high)` of the stack, once read (high 0: not yet).
    stack_low: Cell<usize>,
    stack_high: Cell<usize>,
    /// The thread's own stack walker ([`crate::walkers`]), as that module keeps it.
    walker: Cell<usize>,
}

thread_local! {
    static STATE: State = const {
        State {
            busy: Cell::new(false),
            tid: Cell::new(0),
            stack_low: Cell::new(0),
            stack_high: Cell::new(0),
            walker: Cell::new(0),
        }
    };
}

/// A hook's hold on its thread: taken only if the thread is not inside a hook already.
pub struct Entered(());

impl Entered {
    #[inline]
    pub fn try_enter() -> Option<Entered> {
        STATE.with(|state| {
            if state.busy.replace(true) {
                None
            } else {
                Some(Entered(()))
            }
        })
    }
}

impl Drop for Entered {
    #[inline]
    fn drop(&mut self) {
        STATE.with(|state| state.busy.set(false));
    }
}

/// The calling thread's kernel id.
#[inline]
pub fn tid() -> u32 {
    STATE.with(|state| {
        let tid = state.tid.get();
        if tid != 0 {
            return tid;
        }
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::gettid() } as u32;
        state.tid.set(tid);
        tid
    })
}

/// Forgets the calling thread's id: in a forked child, the thread that forked is a new thread
/// of a new process.
pub fn forget_tid() {
    STATE.with(|state| state.tid.set(0));
}

/// The word [`crate::walkers`] keeps for the calling thread (0 until it sets one).
#[inline]
pub fn walker() -> usize {
    STATE.with(|state| state.walker.get())
}

/// Sets the calling thread's [`walker`] word.
pub fn set_walker(word: usize) {
    STATE.with(|state| state.walker.set(word));
}

/// `[low, high)` of the mapping holding `sp`, the calling thread's stack pointer; `(0, 0)` if
/// it cannot be read. Cached per thread and looked up again when `sp` leaves it (a stack that
/// grew, a coroutine's stack).
///
/// Read from `/proc/self/maps` with plain syscalls, not with `pthread_getattr_np`: that takes
/// the thread's lock and then calls `realloc`, so a hook inside that `realloc` (Rust's runtime
/// asks for its stack this way) would wait for the lock its own thread holds.
pub fn stack_bounds(sp: usize) -> (usize, usize) {
    STATE.with(|state| {
        let (low, high) = (state.stack_low.get(), state.stack_high.get());
        if (low..high).contains(&sp) {
            return (low, high);
        }
        let (low, high) = mapping_of(sp).unwrap_or((0, 0));
        let high = frames_end(sp, high);
        state.stack_low.set(low);
        state.stack_high.set(high);
        (low, high)
    })
}

unsafe extern "C" {
    /// The stack pointer the process started with (ld.so's): above it the main thread's
    /// stack holds only the arguments, the environment and the auxiliary vector.
    static __libc_stack_end: *mut libc::c_void;
}

/// Where the frames of a stack whose mapping ends at `mapping_end` stop: no frame lies above
/// the process's initial stack pointer (main thread) or above the thread's descriptor, which
/// glibc puts at the top of every thread's stack. A walk bounded there ends at the last
/// frame instead of reading the environment block above it.
fn frames_end(sp: usize, mapping_end: usize) -> usize {
    // SAFETY: a plain read of ld.so's variable, set before any code of the program runs.
    let initial = unsafe { __libc_stack_end } as usize;
    let descriptor = id_for_bootstrap();
    [initial, descriptor]
        .into_iter()
        .filter(|&end| sp < end && end < mapping_end)
        .min()
        .unwrap_or(mapping_end)
}

/// The `[start, end)` of the mapping of this process holding `address`.
///
/// Read through `/proc/thread-self`: once the main thread has ended (`pthread_exit` in
/// `main`), `/proc/self` is that zombie's, whose maps read empty.
fn mapping_of(address: usize) -> Option<(usize, usize)> {
    // SAFETY: open, read and close on a buffer of ours; no allocation on this path.
    let open = |path: &std::ffi::CStr| unsafe {
        libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
    };
    let mut fd = open(c"/proc/thread-self/maps");
    if fd < 0 {
        // Kernels before 3.17.
        fd = open(c"/proc/self/maps");
    }
    if fd < 0 {
        return None;
    }
    let mut lines = MapsLines {
        prefix: [0; 40],
        len: 0,
        skipping: false,
    };
    let mut buffer = [0u8; 4096];
    let found = loop {
        // SAFETY: reading into the buffer above, at most its length.
        let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if read <= 0 {
            break None;
        }
        if let Some(range) = lines.feed(&buffer[..read as usize], address) {
            break Some(range);
        }
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    found
}

/// Parses the `start-end` prefix of each line of a maps file fed in pieces.
struct MapsLines {
    /// The current line's address range so far (hex digits and the '-').
    prefix: [u8; 40],
    len: usize,
    /// Past the range: skipping to the end of the line.
    skipping: bool,
}

impl MapsLines {
    fn feed(&mut self, bytes: &[u8], address: usize) -> Option<(usize, usize)> {
        for &byte in bytes {
            if byte == b'\n' {
                self.len = 0;
                self.skipping = false;
                continue;
            }
            if self.skipping {
                continue;
            }
            if byte == b' ' {
                self.skipping = true;
                if let Some((start, end)) = parse_range(&self.prefix[..self.len])
                    && (start..end).contains(&address)
                {
                    return Some((start, end));
                }
                continue;
            }
            if self.len < self.prefix.len() {
                self.prefix[self.len] = byte;
                self.len += 1;
            }
        }
        None
    }
}

fn parse_range(text: &[u8]) -> Option<(usize, usize)> {
    let dash = text.iter().position(|&b| b == b'-')?;
    Some((hex(&text[..dash])?, hex(&text[dash + 1..])?))
}

fn hex(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0usize, |value, &digit| {
        let nibble = (digit as char).to_digit(16)?;
        Some(value << 4 | nibble as usize)
    })
}

/// A cheap identifier of the calling thread that needs no thread-local storage.
#[inline]
pub fn id_for_bootstrap() -> usize {
    // SAFETY: pthread_self has no arguments and cannot fail.
    unsafe { libc::pthread_self() as usize }
}
