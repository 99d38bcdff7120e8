//! The one way memprof opens the object files it reads (executables, libraries, debug files).
//!
//! Their paths come from places memprof does not control: a target's `/proc/PID/maps`, a
//! path inside its own mount namespace, a `.gnu_debuglink`, a recording. A hostile target can
//! put a FIFO, a device or a symlink to another file behind such a path. So:
//! - a file is opened without blocking (`O_NONBLOCK`: a FIFO never hangs memprof), must be a
//!   regular file, and is read up to [`MAX_OBJECT_BYTES`] at most;
//! - a file a process maps is opened through `/proc/PID/map_files/` (the very file mapped),
//!   or by path only when its device and inode are those the kernel lists for the mapping.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::maps::{FileId, Mapping};

/// The largest object file memprof reads (debug files of big programs reach a few GiB).
pub const MAX_OBJECT_BYTES: u64 = 4 << 30;

/// Opens `path` for reading if it is a regular file of at most [`MAX_OBJECT_BYTES`], without
/// ever blocking on it.
pub fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if metadata.len() > MAX_OBJECT_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than {} GiB", MAX_OBJECT_BYTES >> 30),
        ));
    }
    Ok(file)
}

/// Reads the whole of `file` (opened by [`open`]), never more than [`MAX_OBJECT_BYTES`] even
/// if it grows meanwhile.
pub fn read_all(file: File) -> io::Result<Vec<u8>> {
    let expected = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(MAX_OBJECT_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_OBJECT_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("grew past {} GiB while read", MAX_OBJECT_BYTES >> 30),
        ));
    }
    Ok(bytes)
}

/// [`open`] then [`read_all`].
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    read_all(open(path)?)
}

/// Opens the file `mapping` of process `pid` maps: through `/proc/PID/map_files/` while the
/// mapping exists, else by its path in the process's root, then on this host, each accepted
/// only if it is the file the kernel listed (same device and inode).
pub fn open_mapped(pid: u32, mapping: &Mapping) -> io::Result<File> {
    first_openable(pid, mapping).map(|(_, file)| file)
}

/// The path [`open_mapped`] opens, for a consumer that takes a path (a uprobe). Only the
/// `/proc/PID/map_files/` path stays the mapped file for sure; the others are checked now.
pub fn mapped_path(pid: u32, mapping: &Mapping) -> io::Result<PathBuf> {
    first_openable(pid, mapping).map(|(path, _)| path)
}

fn first_openable(pid: u32, mapping: &Mapping) -> io::Result<(PathBuf, File)> {
    let mut last_error = io::Error::from(io::ErrorKind::NotFound);
    for (path, opened) in candidates(pid, mapping) {
        match opened {
            Ok(file) => return Ok((path, file)),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// The places the file of `mapping` may be opened from, each opened lazily and checked.
fn candidates(
    pid: u32,
    mapping: &Mapping,
) -> impl Iterator<Item = (PathBuf, io::Result<File>)> + '_ {
    let by_mapping = PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ));
    let by_path = (!mapping.deleted && mapping.path.is_absolute()).then(|| {
        [
            Path::new(&format!("/proc/{pid}/root")).join(relative(&mapping.path)),
            mapping.path.clone(),
        ]
    });
    std::iter::once((by_mapping, true))
        .chain(by_path.into_iter().flatten().map(|path| (path, false)))
        .map(move |(path, is_the_mapping)| {
            let opened = if is_the_mapping {
                open(&path)
            } else {
                open_if_mapped(&path, mapping.file_id)
            };
            (path, opened)
        })
}

/// Opens `path` if it is the file `id` names.
fn open_if_mapped(path: &Path, id: Option<FileId>) -> io::Result<File> {
    let file = open(path)?;
    let found = FileId::of(&file.metadata()?);
    if id != Some(found) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not the file the process maps (device or inode differ)",
        ));
    }
    Ok(file)
}

/// `path` without its leading `/`, to be joined under another root.
pub fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::ProcessMaps;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RUSR).unwrap();
        let error = read(&fifo).unwrap_err();
        assert_eq!(error.to_string(), "not a regular file");
    }

    #[test]
    fn a_device_behind_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("libc.so.6");
        symlink("/dev/zero", &link).unwrap();
        assert_eq!(read(&link).unwrap_err().to_string(), "not a regular file");
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lib.so");
        std::fs::write(&file, b"\x7fELF...").unwrap();
        assert_eq!(read(&file).unwrap(), b"\x7fELF...");
    }

    /// This test process's own executable, as its maps list it.
    fn own_executable_mapping() -> Mapping {
        let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        maps.iter()
            .find(|mapping| mapping.path == exe)
            .expect("the test executable is mapped")
            .clone()
    }

    #[test]
    fn a_mapped_file_is_opened_as_the_kernel_maps_it() {
        let mapping = own_executable_mapping();
        assert!(mapping.file_id.is_some());
        let file = open_mapped(std::process::id(), &mapping).unwrap();
        assert_eq!(Some(FileId::of(&file.metadata().unwrap())), mapping.file_id);
    }

    #[test]
    fn a_path_naming_another_file_is_not_taken_for_the_mapped_one() {
        // What a target that swapped its executable's path for a decoy shows memprof: the
        // maps name a path, but the file there now is another one.
        let mut mapping = own_executable_mapping();
        let dir = tempfile::tempdir().unwrap();
        let decoy = dir.path().join("decoy");
        std::fs::copy(&mapping.path, &decoy).unwrap();
        mapping.path = decoy;
        // No such mapping in map_files, so only the path is left to try.
        mapping.start = 0x1000;
        mapping.end = 0x2000;
        let error = open_mapped(std::process::id(), &mapping).unwrap_err();
        assert_eq!(
            error.to_string(),
            "not the file the process maps (device or inode differ)"
        );
    }
}
