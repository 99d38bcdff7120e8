//! Build-ids of the files a target maps, read once per path: for recordings (each mapping's
//! file is identified by it offline) and for the pprof profile's mappings.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use profiler_core::{
    maps::{Mapping, ProcessMaps},
    module_file,
    recording::build_id_of,
};

/// Build-ids by mapped path (None: the file has none or could not be read).
pub type BuildIds = BTreeMap<PathBuf, Option<String>>;

/// The build-id of the file `mapping` maps, read from the file the target really maps (see
/// profiler-core's `module_file`); cached by path.
pub fn lookup_build_id(build_ids: &mut BuildIds, mapping: &Mapping, pid: u32) -> Option<String> {
    if !mapping.is_file() {
        return None;
    }
    build_ids
        .entry(mapping.path.clone())
        .or_insert_with(|| {
            module_file::open_mapped(pid, mapping)
                .ok()
                .and_then(build_id_of)
        })
        .clone()
}

/// [`lookup_build_id`] of the first mapping of `path` in `maps`.
pub fn build_id_of_path(
    build_ids: &mut BuildIds,
    maps: &ProcessMaps,
    path: &Path,
    pid: u32,
) -> Option<String> {
    if let Some(known) = build_ids.get(path) {
        return known.clone();
    }
    let mapping = maps.iter().find(|mapping| mapping.path == path)?;
    lookup_build_id(build_ids, mapping, pid)
}
