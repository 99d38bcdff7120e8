//! A spin lock whose state can be forced by the fork handlers (a guard-based mutex could not
//! be unlocked from pthread_atfork's parent and child callbacks).
use core::sync::atomic::{AtomicBool, Ordering};

pub struct SpinLock(AtomicBool);

impl SpinLock {
    pub const fn new() -> SpinLock {
        SpinLock(AtomicBool::new(false))
    }

    pub fn lock(&self) {
        let mut spins = 0u32;
        while self
            .0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                // The holder may be descheduled on a 2-core machine: let it run.
                // SAFETY: sched_yield has no preconditions.
                unsafe {
                    libc::sched_yield();
                }
            }
        }
    }

    pub fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Runs `f` under the lock.
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        self.lock();
        let r = f();
        self.unlock();
        r
    }
}
