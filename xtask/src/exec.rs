//! Running other programs: echoed like a shell trace when they do work, quiet when they only
//! answer a question, and always with cargo's bin directory on PATH (where `cargo install` puts
//! bpf-linker, which rustc must find when the eBPF crate is linked).

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

use anyhow::{Context, Result, bail};

/// A command for `program` with PATH extended by cargo's bin directory.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path());
    cmd
}

/// The cargo that runs xtask (so that xtask and what it builds use the same toolchain).
pub fn cargo() -> Command {
    command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// PATH for child processes: ours, plus `$CARGO_HOME/bin` when it is missing.
pub fn child_path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin_dir()
        && !dirs.contains(&bin)
    {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// `$CARGO_HOME/bin`, by default `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
    Some(home.join("bin"))
}

/// The first executable called `name` on the child PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    env::split_paths(&child_path())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Echoes `cmd`, runs it with inherited stdio and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", shown(cmd));
    }
    Ok(())
}

/// Echoes `cmd`, runs it with inherited stdio and returns how it ended.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    println!("$ {}", shown(cmd));
    cmd.status()
        .with_context(|| format!("could not start `{}`", shown(cmd)))
}

/// Runs `cmd` quietly, capturing its output; a non-zero exit is returned, not an error.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .with_context(|| format!("could not start `{}`", shown(cmd)))
}

/// Runs `cmd` quietly and returns its stdout, failing (with its stderr) unless it succeeds.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shown(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cmd` as a shell line, with cargo's full toolchain path shortened to `cargo`.
pub fn shown(cmd: &Command) -> String {
    let program = cmd.get_program();
    let program = if env::var_os("CARGO").as_deref() == Some(program) {
        "cargo".into()
    } else {
        program.to_string_lossy()
    };
    let mut line = quoted(&program);
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quoted(&arg.to_string_lossy()));
    }
    line
}

fn quoted(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_quotes_only_what_a_shell_would_split() {
        let mut cmd = Command::new("gcc");
        cmd.args(["-O2", "-o", "target/samples/leaks", "a b.c", "it's"]);
        assert_eq!(
            shown(&cmd),
            r"gcc -O2 -o target/samples/leaks 'a b.c' 'it'\''s'"
        );
    }
}
