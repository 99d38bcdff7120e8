//! Which stack walker a walk uses: the calling thread's own, kept for it from its first walk
//! to its exit, so that a walk neither locks a shared pool nor joins another thread's walk
//! ([`crate::last_walk`]). A thread keeps its walker in its thread state and registers it
//! under a `pthread` key, whose destructor hands it back to the pool when the thread exits;
//! the next thread takes it from there. Until the key exists, where it cannot be had, and
//! while a thread exits, walks borrow a walker from the pool instead.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::fork_safe::ForkSafeLock;
use crate::thread;
use crate::unwind::Walker;

/// The thread's walker word: no walker yet.
const NONE: usize = 0;
/// The thread's walker word: its walker went back to the pool (the thread is exiting).
const RETURNED: usize = 1;

/// The key's state: not created yet.
const KEY_UNSET: u32 = u32::MAX;
/// The key's state: being created, or not usable.
const KEY_UNUSABLE: u32 = u32::MAX - 1;
/// glibc keeps the values of its first 32 keys in the thread's descriptor; a later key's
/// first value allocates a table for them, inside a hook (unrecorded), and frees it when the
/// thread exits (recorded): a free of a block memprof never saw.
const KEYS_WITHOUT_TABLE: u32 = 32;

static KEY: AtomicU32 = AtomicU32::new(KEY_UNSET);

#[allow(
    clippy::vec_box,
    reason = "a walker moves in and out of the pool: boxed, it moves as a pointer"
)]
static POOL: ForkSafeLock<Vec<Box<Walker>>> = ForkSafeLock::new(Vec::new());

/// Runs `f` with a walker for the calling thread (inside a hook: never twice at once on one
/// thread).
#[inline]
pub fn with_walker<T>(f: impl FnOnce(&mut Walker) -> T) -> T {
    let word = thread::walker();
    if word > RETURNED {
        // SAFETY: set below from `Box::into_raw`, owned by this thread until it exits.
        return f(unsafe { &mut *(word as *mut Walker) });
    }
    let mut walker = take();
    if word == NONE
        && let Some(key) = key()
    {
        let own = Box::into_raw(walker);
        // SAFETY: a key of ours; the value is handed back by `thread_exits`.
        if unsafe { libc::pthread_setspecific(key, own.cast()) } == 0 {
            thread::set_walker(own as usize);
            // SAFETY: just made from a box, and only this thread uses it.
            return f(unsafe { &mut *own });
        }
        // SAFETY: not registered: still ours alone.
        walker = unsafe { Box::from_raw(own) };
    }
    let result = f(&mut walker);
    give_back(walker);
    result
}

/// The key the threads' walkers are registered under, created on first use.
fn key() -> Option<libc::pthread_key_t> {
    match KEY.load(Ordering::Acquire) {
        KEY_UNSET => {}
        KEY_UNUSABLE => return None,
        key => return Some(key),
    }
    if KEY
        .compare_exchange(
            KEY_UNSET,
            KEY_UNUSABLE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_err()
    {
        // Another thread creates it.
        return None;
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `thread_exits` takes what `with_walker` registers.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_exits)) } != 0 {
        return None;
    }
    if key >= KEYS_WITHOUT_TABLE {
        // SAFETY: created above, no value set.
        unsafe { libc::pthread_key_delete(key) };
        return None;
    }
    KEY.store(key, Ordering::Release);
    Some(key)
}

/// The key's destructor: the exiting thread's walker goes back to the pool; walks the thread
/// makes after this (in other destructors) borrow one.
unsafe extern "C" fn thread_exits(own: *mut c_void) {
    thread::set_walker(RETURNED);
    // SAFETY: the value `with_walker` registered; glibc clears it before this call.
    give_back(unsafe { Box::from_raw(own.cast::<Walker>()) });
}

fn take() -> Box<Walker> {
    let pooled = with_pool(|pool| pool.pop()).flatten();
    pooled.unwrap_or_else(Walker::new)
}

fn give_back(walker: Box<Walker>) {
    let mut walker = Some(walker);
    with_pool(|pool| pool.extend(walker.take()));
    // Not pooled (the pool stayed busy): dropped here.
}

/// Runs `f` on the pool, unless it stays busy for a few tries (a push or a pop holds it; the
/// fork handler frees it in a child).
fn with_pool<T>(f: impl FnOnce(&mut Vec<Box<Walker>>) -> T) -> Option<T> {
    for _ in 0..64 {
        if let Some(mut pool) = POOL.try_write() {
            return Some(f(&mut pool));
        }
        core::hint::spin_loop();
    }
    None
}

/// In a forked child: the pool as if no thread held it, and the walk the forking thread kept
/// forgotten (the child's modules are counted afresh, so its epochs say nothing of it).
pub fn forked() {
    // SAFETY: called from the child's fork handler.
    unsafe { POOL.reset_in_child(Vec::new()) };
    let word = thread::walker();
    if word > RETURNED {
        // SAFETY: this thread's own walker, not in use while the thread forks.
        unsafe { &mut *(word as *mut Walker) }.forget_walks();
    }
}
