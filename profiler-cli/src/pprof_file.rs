//! `profile.pb.gz`: the session's per-site statistics as a pprof profile (live and offline).

use std::{
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use profiler_core::{
    render::pprof::{PprofLine, PprofMapping, PprofMeta, write_pprof},
    report::ReportMeta,
    sites::SiteCounts,
    symbolize::Symbolizer,
};

use crate::{recorder::Collected, recording::lookup_build_id};

pub const FILE_NAME: &str = "profile.pb.gz";

/// Writes `dir/profile.pb.gz` (atomically: a temporary file renamed into place).
pub fn write(
    dir: &Path,
    collected: &Collected,
    symbolizer: &mut Symbolizer,
    meta: &ReportMeta,
) -> Result<PathBuf> {
    let path = dir.join(FILE_NAME);
    let temp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let mut build_ids = collected.build_ids.clone();
    let mappings = collected
        .maps
        .iter()
        .filter(|mapping| mapping.is_file())
        .map(|mapping| PprofMapping {
            start: mapping.start,
            end: mapping.end,
            offset: mapping.offset,
            path: mapping.path.clone(),
            build_id: lookup_build_id(&mut build_ids, &mapping.path, meta.pid),
        })
        .collect();
    let pprof_meta = PprofMeta {
        time_nanos: collected.started_unix_ns,
        duration_nanos: meta.duration.as_nanos() as u64,
        mappings,
    };
    let stacks = &collected.recorder.stacks;
    let sites: Vec<(&[u64], SiteCounts)> = collected
        .recorder
        .sites
        .iter()
        .map(|(id, counts)| (stacks.get(id), counts))
        .collect();
    let lines = |address: u64| -> Vec<PprofLine> {
        symbolizer
            .frames(address)
            .iter()
            .map(|frame| PprofLine {
                function: frame.function.clone().unwrap_or_else(|| {
                    if frame.module == "[unknown]" {
                        format!("{:#x}", frame.address)
                    } else {
                        format!("{}+{:#x}", frame.module, frame.module_offset)
                    }
                }),
                file: frame.file.clone(),
                line: frame.line,
            })
            .collect()
    };
    let written = (|| -> std::io::Result<()> {
        let file = File::create(&temp)?;
        write_pprof(sites, &pprof_meta, lines, BufWriter::new(&file))?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp); // best effort: the error below is what matters
    }
    written.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
