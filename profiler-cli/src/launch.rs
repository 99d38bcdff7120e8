//! Starting a program stopped right after exec, so probes are in place before its first
//! instruction (constructors that allocate before main included).
//!
//! While it runs, every thread of the target stays traced (`PTRACE_O_TRACECLONE`): to stop it
//! once more as it exits (its maps are read then), and to hold a thread the probes ask to hold
//! while the collector catches up (backpressure.rs). Following the tree (traced_tree.rs),
//! every process it starts is traced too (`PTRACE_O_TRACEFORK | TRACEVFORK`): its fork, execs
//! and exit are told to the collector (process_events.rs).
use std::{
    collections::HashSet,
    ffi::OsString,
    io,
    os::unix::process::CommandExt as _,
    process::{ChildStdout, Command, Stdio},
    sync::Arc,
};

use anyhow::{Result, anyhow, bail};
use nix::{
    errno::Errno,
    sys::{
        ptrace,
        signal::Signal,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use crate::backpressure::Backpressure;
use crate::process_events::{Exit, ProcessEvents};
use crate::thread_group::ThreadGroup;
use crate::traced_tree::{FirstStop, TracedTree};

/// What to start.
pub struct Target {
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// Added to (or overriding) the child's inherited environment.
    pub env: Vec<(String, String)>,
    /// Give the child a pipe as stdout (read through [`Launched::stdout`]) instead of ours.
    pub capture_stdout: bool,
    /// A descriptor of ours the child keeps across its exec (the capture ring).
    pub inherit_fd: Option<std::os::fd::RawFd>,
    /// Where the program's stdout goes instead of ours (`--live`), unless `capture_stdout`.
    pub output: Option<std::fs::File>,
    /// Its stderr goes to `output` too.
    pub errors_to_output: bool,
    /// Run the program as this user instead of as memprof's (`run --user`).
    pub user: Option<RunAs>,
}

/// A user to run the target as: looked up before the fork (the lookup reads files and
/// allocates, which the forked child of a threaded process must not do).
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Its supplementary groups.
    pub groups: Vec<libc::gid_t>,
}

impl RunAs {
    /// The user named `name`, as the system's user and group databases describe it.
    pub fn lookup(name: &str) -> Result<RunAs> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|error| anyhow!("cannot look up user {name}: {error}"))?
            .ok_or_else(|| anyhow!("no user named {name}"))?;
        let c_name = std::ffi::CString::new(name).map_err(|_| anyhow!("bad user name {name:?}"))?;
        let groups = nix::unistd::getgrouplist(&c_name, user.gid)
            .map_err(|error| anyhow!("cannot list the groups of {name}: {error}"))?;
        Ok(RunAs {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.into_iter().map(|gid| gid.as_raw()).collect(),
        })
    }
}

/// A child stopped right after exec, owned by the thread that traces it (ptrace requests are
/// only accepted from the tracing thread, so spawning, resuming and reaping all happen there).
pub struct Launched {
    pub pid: Pid,
    /// The child's stdout, when [`Target::capture_stdout`] asked for a pipe.
    pub stdout: Option<ChildStdout>,
    go: std::sync::mpsc::Sender<bool>,
}

impl Launched {
    /// Lets the child run; `done` receives how it ended and the maps read as it exited.
    pub fn resume(self) {
        let _ = self.go.send(true);
    }

    /// Kills the never-resumed child and reaps it.
    pub fn abandon(self) {
        let _ = self.go.send(false);
    }
}

/// How the child ended, and what `at_exit` produced while it was exiting.
pub type Ended<T> = (Result<Exit>, Option<T>);

/// Starts `command` stopped at exec on a dedicated tracer thread. Once resumed, `at_exit`
/// runs at the exit stop of the process's last thread (given its tid: the main thread may
/// have ended before), while its memory is still mapped, and the outcome is sent to
/// `done`; threads the probes signal are held through `backpressure`. With `follow`, every
/// process the target starts is traced and its forks, execs and exits are posted there; the
/// run still ends when the launched process exits (those still running are then let go).
pub fn launch<T: Send + 'static>(
    target: Target,
    at_exit: impl FnOnce(Pid) -> Option<T> + Send + 'static,
    done: tokio::sync::oneshot::Sender<Ended<T>>,
    backpressure: Arc<Backpressure>,
    follow: Option<Arc<ProcessEvents>>,
) -> Result<Launched> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (pid, stdout) = match spawn_stopped(&target) {
            Ok(started) => started,
            Err(error) => {
                let _ = started_tx.send(Err(error));
                return;
            }
        };
        let _ = started_tx.send(Ok((pid, stdout)));
        if go_rx.recv() != Ok(true) {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = wait_exit(pid, &backpressure, None, |_| {});
            return;
        }
        if let Err(error) = resume(pid, follow.is_some()) {
            let _ = done.send((Err(error), None));
            return;
        }
        let mut at_exit = Some(at_exit);
        let mut produced = None;
        let tree = follow.map(|events| TracedTree::new(pid, events));
        let exit = wait_exit(pid, &backpressure, tree, |pid| {
            if let Some(at_exit) = at_exit.take() {
                produced = at_exit(pid);
            }
        });
        let _ = done.send((exit, produced));
    });
    let (pid, stdout) = started_rx
        .recv()
        .map_err(|_| anyhow!("the launcher thread died"))??;
    Ok(Launched { pid, stdout, go })
}

/// Spawns `target` and returns its pid (and stdout pipe, if asked for) once it is stopped right
/// after execve: only the executable and ld.so are mapped, nothing of it has run.
fn spawn_stopped(target: &Target) -> Result<(Pid, Option<ChildStdout>)> {
    let (program, args) = target
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let mut child = Command::new(program);
    child
        .args(args)
        .env_remove(crate::timings::VAR)
        .env_remove(crate::probes::TID_SLOTS_VAR)
        .envs(target.env.iter().map(|(k, v)| (k, v)));
    if target.capture_stdout {
        child.stdout(Stdio::piped());
    }
    if let Some(output) = &target.output {
        if !target.capture_stdout {
            child.stdout(output.try_clone()?);
        }
        if target.errors_to_output {
            child.stderr(output.try_clone()?);
        }
    }
    let inherit_fd = target.inherit_fd;
    let user = target.user.clone();
    // SAFETY: fcntl, setgroups, setgid, setuid and ptrace(PTRACE_TRACEME) are
    // async-signal-safe and allocate nothing; the child then stops with SIGTRAP at its
    // execve, before ld.so runs.
    unsafe {
        child.pre_exec(move || {
            if let Some(fd) = inherit_fd
                && libc::fcntl(fd, libc::F_SETFD, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Groups first, then the group, then the user: each needs the privilege the
            // next one drops.
            if let Some(user) = &user
                && (libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0
                    || libc::setgid(user.gid) != 0
                    || libc::setuid(user.uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            ptrace::traceme().map_err(io::Error::from)
        });
    }
    let mut child = child.spawn().map_err(|error| {
        let program = program.to_string_lossy();
        match error.kind() {
            io::ErrorKind::NotFound => anyhow!("command not found: {program}"),
            io::ErrorKind::PermissionDenied => match &target.user {
                Some(user) => anyhow!("permission denied running {program} as {}", user.name),
                None => anyhow!("permission denied running {program}"),
            },
            _ => anyhow!("cannot run {program}: {error}"),
        }
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    match waitpid(pid, None)? {
        WaitStatus::Stopped(_, Signal::SIGTRAP) => Ok((pid, child.stdout.take())),
        WaitStatus::Exited(_, code) => {
            bail!("the target exited with status {code} before it started")
        }
        WaitStatus::Signaled(_, signal, _) => {
            bail!("the target was killed by {signal} before it started")
        }
        other => bail!("unexpected state of the target after exec: {other:?}"),
    }
}

/// Lets the stopped child run. It stays traced, with every thread it starts, for two reasons:
/// to stop once more as it exits, while its memory map still exists, so the libraries its
/// stacks point into are known even for a program that lives a few milliseconds; and to hold
/// a thread the probes signal (backpressure.rs). Other signals are passed on as they are.
fn resume(pid: Pid, follow: bool) -> Result<()> {
    // TRACEEXEC turns the SIGTRAP a traced execve would raise into an event we swallow.
    let mut options = ptrace::Options::PTRACE_O_TRACEEXIT
        | ptrace::Options::PTRACE_O_TRACEEXEC
        | ptrace::Options::PTRACE_O_TRACECLONE;
    if follow {
        options |= ptrace::Options::PTRACE_O_TRACEFORK | ptrace::Options::PTRACE_O_TRACEVFORK;
    }
    ptrace::setoptions(pid, options)
        .and_then(|()| ptrace::cont(pid, None))
        .map_err(|error| anyhow!("cannot resume the target: {error}"))
}

/// Blocks until the child exits and returns how; `at_exit` runs while the exiting child is
/// stopped with its memory still mapped. `tree`, when following, gets the other processes'
/// forks, execs and exits, and lets go of those still running at the end.
fn wait_exit(
    pid: Pid,
    backpressure: &Backpressure,
    mut tree: Option<TracedTree>,
    at_exit: impl FnMut(Pid),
) -> Result<Exit> {
    let exit = wait_loop(pid, backpressure, tree.as_mut(), at_exit);
    if let Some(tree) = tree {
        tree.release();
    }
    exit
}

fn wait_loop(
    pid: Pid,
    backpressure: &Backpressure,
    mut tree: Option<&mut TracedTree>,
    mut at_exit: impl FnMut(Pid),
) -> Result<Exit> {
    // Threads seen stopped: a new thread's first stop is the SIGSTOP it is attached with.
    let mut started = HashSet::from([pid]);
    let mut group = ThreadGroup::new(pid);
    loop {
        let status = match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            Err(error) => bail!("cannot wait for the target: {error}"),
        };
        match status {
            WaitStatus::Exited(tid, code) if tid == pid => return Ok(Exit::Code(code)),
            WaitStatus::Signaled(tid, signal, _) if tid == pid => {
                return Ok(Exit::Signal(signal as i32));
            }
            WaitStatus::Exited(tid, code) => {
                started.remove(&tid);
                group.gone(tid);
                if let Some(tree) = tree.as_deref_mut() {
                    tree.gone(tid, Exit::Code(code));
                }
            }
            WaitStatus::Signaled(tid, signal, _) => {
                started.remove(&tid);
                group.gone(tid);
                if let Some(tree) = tree.as_deref_mut() {
                    tree.gone(tid, Exit::Signal(signal as i32));
                }
            }
            WaitStatus::PtraceEvent(tid, _, event) => {
                // The process ends with this thread: read it while it is still mapped.
                if event == libc::PTRACE_EVENT_EXIT && group.exit_stop(tid) {
                    at_exit(tid);
                }
                if event == libc::PTRACE_EVENT_CLONE
                    && let Ok(child) = ptrace::getevent(tid)
                {
                    group.cloned(tid, Pid::from_raw(child as i32));
                }
                // The old image's heap ends with it: the collector applies its last records
                // and releases what was live before the new program runs.
                if tid == pid && event == libc::PTRACE_EVENT_EXEC {
                    backpressure.exec_stop();
                }
                if let Some(tree) = tree.as_deref_mut()
                    && tid != pid
                {
                    match event {
                        libc::PTRACE_EVENT_EXIT => tree.exit_stop(tid),
                        libc::PTRACE_EVENT_EXEC => tree.exec_stop(tid),
                        _ => {}
                    }
                }
                if let Some(tree) = tree.as_deref_mut()
                    && [
                        libc::PTRACE_EVENT_FORK,
                        libc::PTRACE_EVENT_VFORK,
                        libc::PTRACE_EVENT_CLONE,
                    ]
                    .contains(&event)
                    && let Ok(child) = ptrace::getevent(tid)
                    && let Some(child) = tree.forked(tid, Pid::from_raw(child as i32))
                {
                    let _ = ptrace::cont(child, None);
                }
                // Other events: a thread started (it stops on its own too), another thread
                // exiting, or an exec (probes are attached by file, so a new image keeps being
                // profiled where it uses the same allocator).
                let _ = ptrace::cont(tid, None);
            }
            WaitStatus::Stopped(tid, Signal::SIGSTOP) if started.insert(tid) => {
                let first = tree
                    .as_deref_mut()
                    .map_or(FirstStop::Resume, |tree| tree.first_stop(tid));
                if first == FirstStop::Resume {
                    let _ = ptrace::cont(tid, None);
                }
            }
            // A signal on its way to the thread: a probe's hold request, or one to deliver.
            WaitStatus::Stopped(tid, signal) => backpressure.resume(tid, signal),
            _ => continue,
        }
    }
}
