//! Finding a stripped object's separate debug information the way gdb does: by build-id under
//! the debug root (`/usr/lib/debug/.build-id/xx/rest.debug`), else by `.gnu_debuglink` next to
//! the object, in its `.debug/` subdirectory, or under the debug root, with the link's CRC
//! checked so that a stale file is never used.

use object::Object;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where distributions install debug files (Debian's `*-dbg` packages, `debuginfod` caches
/// aside).
pub const DEFAULT_DEBUG_ROOT: &str = "/usr/lib/debug";

/// A separate debug file, read into memory.
pub struct DebugFile {
    pub path: PathBuf,
    pub bytes: Arc<[u8]>,
}

/// The build-id note as lowercase hex, if the object has one.
pub fn build_id_hex(file: &object::File<'_>) -> Option<String> {
    let id = file.build_id().ok().flatten()?;
    Some(id.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Looks for the debug file of `file`, whose path in the target's namespace is `path`.
pub fn find(file: &object::File<'_>, path: &Path, debug_root: &Path) -> Option<DebugFile> {
    if let Some(id) = build_id_hex(file)
        && id.len() > 2
    {
        let candidate = debug_root
            .join(".build-id")
            .join(&id[..2])
            .join(format!("{}.debug", &id[2..]));
        if let Some(found) = read_matching(&candidate, |bytes| has_build_id(bytes, &id)) {
            return Some(found);
        }
    }
    let (name, crc) = file.gnu_debuglink().ok().flatten()?;
    let name = Path::new(std::str::from_utf8(name).ok()?);
    let dir = path.parent()?;
    let candidates = [
        dir.join(name),
        dir.join(".debug").join(name),
        debug_root
            .join(dir.strip_prefix("/").unwrap_or(dir))
            .join(name),
    ];
    candidates
        .iter()
        // The link may name the object itself (a file that is its own debug file is not one).
        .filter(|candidate| candidate.as_path() != path)
        .find_map(|candidate| read_matching(candidate, |bytes| crc32fast::hash(bytes) == crc))
}

fn read_matching(path: &Path, matches: impl Fn(&[u8]) -> bool) -> Option<DebugFile> {
    let bytes = crate::module_file::read(path).ok()?;
    matches(&bytes).then(|| DebugFile {
        path: path.to_owned(),
        bytes: bytes.into(),
    })
}

fn has_build_id(bytes: &[u8], id: &str) -> bool {
    object::File::parse(bytes)
        .ok()
        .and_then(|file| build_id_hex(&file))
        .is_some_and(|found| found == id)
}
