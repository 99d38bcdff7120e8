//! The target's memory map (`/proc/PID/maps`), kept as a union over time.
//!
//! Symbolization happens at the end, when the target may have exited or unloaded libraries,
//! so the collector snapshots the maps while it runs and merges the snapshots: a mapping seen
//! once stays known unless a newer one replaces its addresses.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    /// Permissions as printed, e.g. `r-xp`.
    pub perms: String,
    /// Offset in the file of the byte mapped at `start`.
    pub offset: u64,
    /// The mapped file, a pseudo-name such as `[heap]` or `[vdso]`, or empty for anonymous
    /// memory. A ` (deleted)` suffix is removed and recorded in `deleted`.
    pub path: PathBuf,
    /// The file was deleted (or replaced, e.g. by a package upgrade) after being mapped.
    pub deleted: bool,
    /// Device and inode of the mapped file, as the kernel printed them; None for anonymous
    /// memory and for mappings rebuilt from a recording. A file opened by `path` is the mapped
    /// one only if it has this id (the path is the target's word, the id the kernel's).
    pub file_id: Option<FileId>,
}

/// A file's identity: `st_dev` and `st_ino`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
}

impl FileId {
    /// The id `/proc/PID/maps` prints as `major:minor inode` (hexadecimal device numbers).
    fn parse(dev: &str, inode: &str) -> Result<Option<FileId>, &'static str> {
        let (major, minor) = dev.split_once(':').ok_or("device without ':'")?;
        let major = u32::from_str_radix(major, 16).map_err(|_| "bad device major")?;
        let minor = u32::from_str_radix(minor, 16).map_err(|_| "bad device minor")?;
        let inode: u64 = inode.parse().map_err(|_| "bad inode")?;
        Ok((inode != 0).then(|| FileId {
            dev: rustix::fs::makedev(major, minor),
            inode,
        }))
    }

    /// The id of an open file.
    pub fn of(metadata: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt as _;
        FileId {
            dev: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

impl Mapping {
    /// Whether `path` names a file on disk (rather than `[heap]`, `[vdso]`, anonymous memory).
    pub fn is_file(&self) -> bool {
        self.path.is_absolute()
    }

    /// Offset in the mapped file of the byte at `addr` (which must be inside the mapping).
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// A line that is not in the `/proc/PID/maps` format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("maps line {line}: {reason}: {text:?}")]
pub struct MapsParseError {
    /// 1-based.
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// Non-overlapping mappings by start address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessMaps {
    mappings: BTreeMap<u64, Mapping>,
}

impl ProcessMaps {
    /// Parses the text of `/proc/PID/maps`.
    pub fn parse(text: &str) -> Result<ProcessMaps, MapsParseError> {
        let mut maps = ProcessMaps::default();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mapping = parse_line(line).map_err(|reason| MapsParseError {
                line: index + 1,
                reason,
                text: line.to_owned(),
            })?;
            maps.insert(mapping);
        }
        Ok(maps)
    }

    /// Reads and parses `/proc/<pid>/maps`.
    pub fn read(pid: u32) -> io::Result<ProcessMaps> {
        Self::read_path(Path::new(&format!("/proc/{pid}/maps")))
    }

    /// Reads and parses a maps file at `path` (a saved copy, or `/proc/self/maps`).
    pub fn read_path(path: &Path) -> io::Result<ProcessMaps> {
        let text = std::fs::read_to_string(path)?;
        Self::parse(&text).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }

    /// Adds a newer snapshot: its mappings replace every older mapping they overlap, and older
    /// mappings elsewhere are kept.
    pub fn merge(&mut self, newer: ProcessMaps) {
        for mapping in newer.mappings.into_values() {
            self.insert(mapping);
        }
    }

    /// The mapping containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        self.mappings
            .range(..=addr)
            .next_back()
            .map(|(_, mapping)| mapping)
            .filter(|mapping| addr < mapping.end)
    }

    /// All mappings by ascending address.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.values()
    }

    pub fn len(&self) -> usize {
        self.mappings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    fn insert(&mut self, mapping: Mapping) {
        // Walk down from the last mapping starting before the new end; non-overlap means the
        // first one ending at or before the new start closes the search.
        while let Some((&start, old)) = self.mappings.range(..mapping.end).next_back() {
            if old.end <= mapping.start {
                break;
            }
            self.mappings.remove(&start);
        }
        self.mappings.insert(mapping.start, mapping);
    }
}

/// Splits off the next space-separated field (the kernel pads the path column with spaces).
fn next_field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let trimmed = rest.trim_start_matches(' ');
    if trimmed.is_empty() {
        return None;
    }
    let end = trimmed.find(' ').unwrap_or(trimmed.len());
    let (field, tail) = trimmed.split_at(end);
    *rest = tail;
    Some(field)
}

/// `start-end perms offset dev inode [path]`; the path may itself contain spaces.
fn parse_line(line: &str) -> Result<Mapping, &'static str> {
    let mut rest = line;
    let range = next_field(&mut rest).ok_or("missing address range")?;
    let (start, end) = range.split_once('-').ok_or("address range without '-'")?;
    let start = u64::from_str_radix(start, 16).map_err(|_| "bad start address")?;
    let end = u64::from_str_radix(end, 16).map_err(|_| "bad end address")?;
    if end < start {
        return Err("end address below start");
    }
    let perms = next_field(&mut rest).ok_or("missing permissions")?;
    let offset = next_field(&mut rest).ok_or("missing offset")?;
    let offset = u64::from_str_radix(offset, 16).map_err(|_| "bad offset")?;
    let dev = next_field(&mut rest).ok_or("missing device")?;
    let inode = next_field(&mut rest).ok_or("missing inode")?;
    let file_id = FileId::parse(dev, inode)?;
    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(path) => (path, true),
        None => (path, false),
    };
    Ok(Mapping {
        start,
        end,
        perms: perms.to_owned(),
        offset,
        path: PathBuf::from(path),
        deleted,
        file_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234                       /usr/bin/my prog
55d0c0a02000-55d0c0a05000 r-xp 00002000 fd:01 1234                       /usr/bin/my prog
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
7f1e2a000000-7f1e2a100000 rw-p 00000000 00:00 0 
7f1e2b000000-7f1e2b028000 r-xp 00028000 fd:01 5678                       /usr/lib/libc.so.6 (deleted)
";

    #[test]
    fn parses_every_kind_of_line() {
        let maps = ProcessMaps::parse(SAMPLE).unwrap();
        assert_eq!(maps.len(), 5);
        let text = maps.find(0x55d0c0a03000).unwrap();
        assert_eq!(
            *text,
            Mapping {
                start: 0x55d0c0a02000,
                end: 0x55d0c0a05000,
                perms: "r-xp".into(),
                offset: 0x2000,
                path: "/usr/bin/my prog".into(),
                deleted: false,
                file_id: Some(FileId {
                    dev: rustix::fs::makedev(0xfd, 1),
                    inode: 1234
                }),
            }
        );
        assert_eq!(text.file_offset(0x55d0c0a03010), 0x3010);
        assert!(text.is_file());
        let heap = maps.find(0x55d0c1000000).unwrap();
        assert_eq!(heap.path, Path::new("[heap]"));
        assert!(!heap.is_file());
        let anon = maps.find(0x7f1e2a000010).unwrap();
        assert_eq!(anon.path, Path::new(""));
        assert_eq!(anon.file_id, None);
        let libc = maps.find(0x7f1e2b000000).unwrap();
        assert_eq!(libc.path, Path::new("/usr/lib/libc.so.6"));
        assert!(libc.deleted);
    }

    #[test]
    fn find_respects_bounds() {
        let maps = ProcessMaps::parse(SAMPLE).unwrap();
        assert!(maps.find(0x55d0c0a05000).is_none(), "end is exclusive");
        assert!(maps.find(0x1000).is_none());
        assert_eq!(maps.find(0x55d0c0a01fff).unwrap().offset, 0);
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        let err = ProcessMaps::parse("\n00400000-00401000 r-xp zz 08:01 1 /bin/x\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.reason, "bad offset");
        assert!(ProcessMaps::parse("00400000 r-xp 0 08:01 1").is_err());
        assert!(ProcessMaps::parse("00400000-00401000 r-xp 0 08:01").is_err());
    }

    #[test]
    fn merge_keeps_old_mappings_and_replaces_overlapped_ones() {
        let mut maps = ProcessMaps::parse(
            "1000-3000 r-xp 0 00:00 1 /lib/a.so\n5000-6000 r-xp 0 00:00 2 /lib/b.so\n",
        )
        .unwrap();
        // b.so was unloaded and c.so mapped over part of a.so's old range.
        let newer = ProcessMaps::parse("2000-4000 r-xp 0 00:00 3 /lib/c.so\n").unwrap();
        maps.merge(newer);
        let paths: Vec<_> = maps.iter().map(|m| m.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["/lib/c.so", "/lib/b.so"]);
        assert!(maps.find(0x1000).is_none());
        assert_eq!(maps.find(0x5000).unwrap().path, Path::new("/lib/b.so"));
    }

    #[test]
    fn reads_own_maps() {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let here = reads_own_maps as fn() as usize as u64;
        let mapping = maps.find(here).expect("own code is mapped");
        assert!(mapping.perms.contains('x'));
        assert!(mapping.is_file());
    }
}
