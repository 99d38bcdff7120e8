//! The one way memprof writes files. memprof runs as root next to programs and users it does
//! not trust, so an output directory is opened once, checked, and every file is created
//! relative to that open directory: no path component memprof did not create is followed
//! after the check, a planted symlink is never written through, and what memprof writes is
//! readable by its owner only (the files hold the target's data).
//!
//! - The directory itself is created (mode 0700) when missing, and opened with `O_NOFOLLOW`:
//!   a symlink in its place is refused, not followed.
//! - It is refused when someone else can write to it (group or other write permission, or an
//!   owner other than the caller or root), unless it is sticky and owned by the caller, as a
//!   private `/tmp`-like directory is: there others can add names but not replace ours.
//! - Whole files are written to a fresh temporary (`O_CREAT | O_EXCL | O_NOFOLLOW`, random
//!   name) and renamed into place, which replaces whatever held the name (a planted symlink
//!   included) instead of writing through it.
//! - Streamed files (the recording, a log) replace the old name by unlinking it and creating
//!   the file anew with `O_EXCL | O_NOFOLLOW`.

use std::ffi::OsStr;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufWriter, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

/// Permissions of what memprof creates: its user's only.
const FILE_MODE: Mode = Mode::RUSR.union(Mode::WUSR);
const DIR_MODE: Mode = Mode::RWXU;

/// Attempts at a fresh temporary name before giving up (each collision is someone else's file).
const TEMP_ATTEMPTS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot create output directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open output directory {path}")]
    OpenDir { path: PathBuf, source: io::Error },
    #[error("output directory {path} is a symbolic link; memprof does not write through one")]
    SymlinkDir { path: PathBuf },
    #[error(
        "output directory {path} can be written by other users ({why}); use a directory only \
         you can write"
    )]
    UnsafeDir { path: PathBuf, why: String },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// An output directory, open and checked.
#[derive(Debug)]
pub struct OutputDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OutputDir {
    /// Opens `path` as an output directory, creating it (but not its parents' permissions,
    /// which are the caller's choice) when missing.
    pub fn open(path: &Path) -> Result<OutputDir, OutputError> {
        let (parent, name) = split(path);
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|source| OutputError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        let parent_path = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let parent_fd = rustix::fs::open(
            parent_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| OutputError::OpenDir {
            path: path.to_owned(),
            source: errno.into(),
        })?;
        Self::open_at(&parent_fd, name, path.to_owned())
    }

    /// Opens (creating it when missing) the directory `name` inside this one.
    pub fn subdir(&self, name: &str) -> Result<OutputDir, OutputError> {
        Self::open_at(&self.fd, OsStr::new(name), self.path.join(name))
    }

    fn open_at(parent: &OwnedFd, name: &OsStr, path: PathBuf) -> Result<OutputDir, OutputError> {
        match rustix::fs::mkdirat(parent, name, DIR_MODE) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(errno) => {
                return Err(OutputError::CreateDir {
                    path,
                    source: errno.into(),
                });
            }
        }
        let fd = match rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => return Err(OutputError::SymlinkDir { path }),
            // A symlink to a non-directory with O_NOFOLLOW | O_DIRECTORY gives ENOTDIR.
            Err(rustix::io::Errno::NOTDIR)
                if rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(
                    |stat| {
                        rustix::fs::FileType::from_raw_mode(stat.st_mode)
                            == rustix::fs::FileType::Symlink
                    },
                ) =>
            {
                return Err(OutputError::SymlinkDir { path });
            }
            Err(errno) => {
                return Err(OutputError::OpenDir {
                    path,
                    source: errno.into(),
                });
            }
        };
        let stat = rustix::fs::fstat(&fd).map_err(|errno| OutputError::OpenDir {
            path: path.clone(),
            source: errno.into(),
        })?;
        if let Some(why) = unsafe_because(stat.st_uid, stat.st_mode, rustix::process::geteuid()) {
            return Err(OutputError::UnsafeDir { path, why });
        }
        Ok(OutputDir { fd, path })
    }

    /// The directory as the user named it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `name` whole or not at all: rendered into a fresh temporary, synced, renamed
    /// into place. Returns its path.
    pub fn write_atomically(
        &self,
        name: &str,
        render: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
    ) -> Result<PathBuf, OutputError> {
        let path = self.join(name);
        let fail = |source: io::Error| OutputError::Write {
            path: path.clone(),
            source,
        };
        let (temp_name, file) = self.create_temporary(name).map_err(fail)?;
        let result = (|| {
            let mut out = BufWriter::new(file);
            render(&mut out)?;
            out.flush()?;
            out.into_inner()
                .map_err(io::IntoInnerError::into_error)?
                .sync_all()?;
            rustix::fs::renameat(&self.fd, &temp_name, &self.fd, name)?;
            Ok(())
        })();
        if let Err(source) = result {
            // Best effort: the error below is what matters.
            let _ = rustix::fs::unlinkat(&self.fd, &temp_name, AtFlags::empty());
            return Err(fail(source));
        }
        Ok(path)
    }

    /// Creates `name` anew for streaming into it: an old file (or anything else but a
    /// directory) of that name is removed first, never opened.
    pub fn create_new(&self, name: impl AsRef<Path>) -> Result<File, OutputError> {
        let name = name.as_ref();
        let fail = |source: io::Error| OutputError::Write {
            path: self.join(name),
            source,
        };
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(errno) => return Err(fail(errno.into())),
        }
        self.create_exclusive(name).map(File::from).map_err(fail)
    }

    /// Moves the file `name` to `to_name` in `to` (rename: the name only, whatever it is; an
    /// open file stays open and is written on under its new name).
    pub fn move_to(&self, name: &str, to: &OutputDir, to_name: &str) -> Result<(), OutputError> {
        rustix::fs::renameat(&self.fd, name, &to.fd, to_name).map_err(|errno| OutputError::Write {
            path: to.join(to_name),
            source: errno.into(),
        })
    }

    /// Removes `name` if it exists (the name only: a symlink is removed, not its target).
    pub fn remove(&self, name: &str) -> Result<(), OutputError> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(errno) => Err(OutputError::Write {
                path: self.join(name),
                source: errno.into(),
            }),
        }
    }

    fn create_exclusive(&self, name: &Path) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            FILE_MODE,
        )?)
    }

    fn create_temporary(&self, name: &str) -> io::Result<(String, File)> {
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..TEMP_ATTEMPTS {
            let temp_name = format!(".{name}.{:016x}.tmp", random());
            match self.create_exclusive(Path::new(&temp_name)) {
                Ok(fd) => return Ok((temp_name, File::from(fd))),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last = error,
                Err(error) => return Err(error),
            }
        }
        Err(last)
    }
}

/// Creates the file at `path` anew for streaming into it (see [`OutputDir::create_new`]), its
/// directory opened and checked as an output directory.
pub fn create_file(path: &Path) -> Result<File, OutputError> {
    let (parent, name) = split(path);
    let dir = if parent.as_os_str().is_empty() {
        OutputDir::open(Path::new("."))?
    } else {
        OutputDir::open(parent)?
    };
    dir.create_new(name)
}

/// Why a directory owned by `owner` with `mode` is unsafe for `caller` to write into, if it is.
fn unsafe_because(owner: u32, mode: u32, caller: rustix::process::Uid) -> Option<String> {
    let caller = caller.as_raw();
    let others_write = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if owner != caller && owner != 0 {
        return Some(format!("it belongs to user {owner}"));
    }
    if others_write && !(sticky && owner == caller) {
        return Some(format!("mode {:o}", mode & 0o7777));
    }
    None
}

/// Splits `path` into its parent and last component (`.` for `foo/.`-like paths is kept).
fn split(path: &Path) -> (&Path, &OsStr) {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => (Path::new(""), path.as_os_str()),
    }
}

/// 64 unpredictable bits: std's per-process random hash keys, so temporary names cannot be
/// guessed in advance (they are created exclusively anyway; this only avoids collisions).
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}

#[cfg(test)]
mod tests;
