//! Starting a program stopped right after exec, so probes are in place before its first
//! instruction (constructors that allocate before main included).
use std::{
    ffi::OsString,
    io,
    os::unix::process::CommandExt as _,
    process::Command,
};

use anyhow::{Result, anyhow, bail};
use nix::{
    sys::{
        ptrace,
        signal::Signal,
        wait::{WaitStatus, waitpid},
    },
    unistd::Pid,
};

/// How a target ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The status memprof itself exits with: the child's, or 128+signal as a shell reports it.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

/// Spawns `command` and returns its pid once it is stopped right after execve: only the
/// executable and ld.so are mapped, nothing of it has run.
pub fn spawn_stopped(command: &[OsString]) -> Result<Pid> {
    let (program, args) = command.split_first().ok_or_else(|| anyhow!("no command given"))?;
    let mut child = Command::new(program);
    child.args(args);
    // SAFETY: ptrace(PTRACE_TRACEME) is async-signal-safe; the child then stops with SIGTRAP
    // at its execve, before ld.so runs.
    unsafe {
        child.pre_exec(|| ptrace::traceme().map_err(io::Error::from));
    }
    let child = child.spawn().map_err(|error| {
        let program = program.to_string_lossy();
        match error.kind() {
            io::ErrorKind::NotFound => anyhow!("command not found: {program}"),
            io::ErrorKind::PermissionDenied => anyhow!("permission denied running {program}"),
            _ => anyhow!("cannot run {program}: {error}"),
        }
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    match waitpid(pid, None)? {
        WaitStatus::Stopped(_, Signal::SIGTRAP) => Ok(pid),
        WaitStatus::Exited(_, code) => bail!("the target exited with status {code} before it started"),
        WaitStatus::Signaled(_, signal, _) => bail!("the target was killed by {signal} before it started"),
        other => bail!("unexpected state of the target after exec: {other:?}"),
    }
}

/// Lets the stopped child run, no longer traced.
pub fn resume(pid: Pid) -> Result<()> {
    ptrace::detach(pid, None).map_err(|error| anyhow!("cannot resume the target: {error}"))
}

/// Blocks until the child exits and returns how.
pub fn wait_exit(pid: Pid) -> Result<Exit> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(Exit::Signal(signal as i32)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => bail!("cannot wait for the target: {error}"),
        }
    }
}
