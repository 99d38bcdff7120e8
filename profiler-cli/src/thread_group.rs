//! The launched process's threads, followed by its tracer, to find the exit stop at which the
//! process really ends: the leak check and the last maps read need a thread stopped with the
//! memory still mapped, and every other thread done allocating.
//!
//! The main thread's exit is not the process's: after `pthread_exit` in `main` the others run
//! on. Nor does every thread stop at its exit: the kernel skips the exit stop of a thread with
//! SIGKILL pending, which is how `exit_group` ends the threads other than its caller. So the
//! process ends at the exit stop of a thread whose fellows have all passed theirs, are
//! zombies or gone, or have SIGKILL pending. A thread is never held at its exit stop waiting
//! for the others: one joining it (`pthread_join` waits for the kernel to clear its tid, after
//! that stop) would wait forever.

use std::collections::HashSet;

use nix::unistd::Pid;

#[derive(Debug)]
pub struct ThreadGroup {
    pid: Pid,
    /// Threads not yet reaped.
    live: HashSet<Pid>,
    /// Threads past their exit stop.
    exiting: HashSet<Pid>,
}

impl ThreadGroup {
    pub fn new(pid: Pid) -> ThreadGroup {
        ThreadGroup {
            pid,
            live: HashSet::from([pid]),
            exiting: HashSet::new(),
        }
    }

    /// `parent` made `child` (a clone event): followed if it is a thread of the process.
    pub fn cloned(&mut self, parent: Pid, child: Pid) {
        if self.live.contains(&parent) && thread_group_of(child) == Some(self.pid) {
            self.live.insert(child);
        }
    }

    /// `tid` was reaped.
    pub fn gone(&mut self, tid: Pid) {
        self.live.remove(&tid);
        self.exiting.remove(&tid);
    }

    /// `tid` is at its exit stop: true if it is a thread of the process and the last one
    /// (the process ends with it).
    pub fn exit_stop(&mut self, tid: Pid) -> bool {
        if !self.live.contains(&tid) {
            return false;
        }
        self.exiting.insert(tid);
        self.live
            .iter()
            .filter(|&&other| other != tid && !self.exiting.contains(&other))
            .all(|&other| dying(other))
    }
}

/// The process `tid` is a thread of (`Tgid` in its status), if it can be read.
fn thread_group_of(tid: Pid) -> Option<Pid> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let tgid = status_field(&status, "Tgid:")?.parse().ok()?;
    Some(Pid::from_raw(tgid))
}

/// Thread `tid` will not run on: gone, a zombie (a main thread that called `pthread_exit`),
/// or with SIGKILL pending (killed by another thread's `exit_group`).
fn dying(tid: Pid) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let zombie = status_field(&status, "State:").is_some_and(|s| s.starts_with(['Z', 'X']));
    let killed = status_field(&status, "SigPnd:")
        .and_then(|mask| u64::from_str_radix(mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGKILL - 1)) != 0);
    zombie || killed
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_of_this_process_is_followed_and_its_exit_is_not_the_last() {
        let pid = nix::unistd::getpid();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            started_tx.send(nix::unistd::gettid()).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = started_rx.recv().unwrap();
        let mut group = ThreadGroup::new(pid);
        group.cloned(pid, tid);
        assert!(group.live.contains(&tid));
        // The test's own thread is alive and not in the group; the worker is alive: the main
        // thread's exit would not end the process.
        assert!(!group.exit_stop(pid));
        // Once the main thread is past its exit stop, the worker's is the last.
        assert!(group.exit_stop(tid));
        stop_tx.send(()).unwrap();
        worker.join().unwrap();
        group.gone(tid);
        assert!(!group.live.contains(&tid));
    }

    #[test]
    fn a_thread_of_another_process_is_not_followed() {
        let pid = nix::unistd::getpid();
        let mut group = ThreadGroup::new(pid);
        group.cloned(pid, Pid::from_raw(1));
        assert_eq!(group.live, HashSet::from([pid]));
        // A thread memprof does not know ends nothing.
        assert!(!group.exit_stop(Pid::from_raw(1)));
    }

    #[test]
    fn a_gone_thread_and_a_zombie_are_dying_a_running_one_is_not() {
        assert!(dying(Pid::from_raw(i32::MAX)));
        assert!(!dying(nix::unistd::gettid()));
        let child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = Pid::from_raw(child.id() as i32);
        // Not reaped: a zombie once it exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dying(child_pid) {
            assert!(std::time::Instant::now() < deadline, "true never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut child = child;
        child.wait().unwrap();
    }
}
