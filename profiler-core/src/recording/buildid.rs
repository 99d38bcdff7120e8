//! GNU build-ids of mapped files, so a recording can be symbolized later against the same
//! binaries (and a rebuilt or upgraded one is noticed).

use crate::module_file;
use object::{Object, read::ReadCache};
use std::fs::File;
use std::path::Path;

/// The `NT_GNU_BUILD_ID` note of the ELF file at `path`, as lowercase hex. Reads only the
/// headers and the note, not the whole file. None when the file cannot be read (or is no
/// regular file: see [`crate::module_file`]) or has none.
pub fn build_id(path: &Path) -> Option<String> {
    build_id_of(module_file::open(path).ok()?)
}

/// [`build_id`] of an open file.
pub fn build_id_of(file: File) -> Option<String> {
    let cache = ReadCache::new(file);
    let object = object::File::parse(&cache).ok()?;
    let id = object.build_id().ok()??;
    Some(hex(id))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_build_id_of_this_test_binary_like_readelf() {
        let exe = std::env::current_exe().unwrap();
        let id = build_id(&exe).expect("rustc links with --build-id on Linux");
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        // Cross-check with the note bytes found by a plain scan of the file.
        let bytes = std::fs::read(&exe).unwrap();
        let raw: Vec<u8> = (0..id.len() / 2)
            .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert!(bytes.windows(raw.len()).any(|w| w == raw));
    }

    #[test]
    fn none_for_files_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("text");
        std::fs::write(&path, b"not an elf").unwrap();
        assert_eq!(build_id(&path), None);
        assert_eq!(build_id(&dir.path().join("missing")), None);
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
