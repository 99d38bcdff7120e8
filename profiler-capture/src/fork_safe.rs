//! A readers-writer lock that a forked child can reset.
//!
//! `fork` copies a lock as it was: held by a thread the child does not have, std's locks
//! would stay held in the child for good, and its next allocation would wait forever. This
//! one is a word of state; the child's fork handler calls [`ForkSafeLock::reset_in_child`],
//! which frees it and drops what a writer may have left half-changed (leaked, not freed: its
//! state cannot be trusted). Waiting spins with `sched_yield`: the library holds it for one
//! stack walk (readers) or one read of the loader's list (the writer).

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

/// Set in `state` while a writer holds the lock; the bits below count readers.
const WRITER: u32 = 1 << 31;

pub struct ForkSafeLock<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` follows the lock's state: shared by readers, exclusive to a writer.
unsafe impl<T: Send + Sync> Sync for ForkSafeLock<T> {}

impl<T> ForkSafeLock<T> {
    pub const fn new(value: T) -> ForkSafeLock<T> {
        ForkSafeLock {
            state: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Shared access, once no writer holds the lock.
    pub fn read(&self) -> ReadGuard<'_, T> {
        loop {
            let state = self.state.load(Ordering::Relaxed);
            if state & WRITER == 0
                && self
                    .state
                    .compare_exchange_weak(state, state + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return ReadGuard { lock: self };
            }
            std::thread::yield_now();
        }
    }

    /// Exclusive access if nobody holds the lock now.
    pub fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        self.state
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| WriteGuard { lock: self })
    }

    /// In a forked child (one thread, nothing else running): frees the lock; if a writer held
    /// it at the fork, replaces the value with `fresh` without dropping the old one.
    ///
    /// # Safety
    /// Only from a fork handler in the child, before any other use of the lock there.
    pub unsafe fn reset_in_child(&self, fresh: T) {
        if self.state.load(Ordering::Relaxed) & WRITER != 0 {
            // SAFETY: no other thread exists in the child; the old value is overwritten
            // without being read or dropped.
            unsafe { self.value.get().write(fresh) };
        }
        self.state.store(0, Ordering::Release);
    }
}

pub struct ReadGuard<'a, T> {
    lock: &'a ForkSafeLock<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a reader holds the lock: no writer changes the value meanwhile.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_sub(1, Ordering::Release);
    }
}

pub struct WriteGuard<'a, T> {
    lock: &'a ForkSafeLock<T>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer holds the lock alone.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the writer holds the lock alone.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.store(0, Ordering::Release);
    }
}
