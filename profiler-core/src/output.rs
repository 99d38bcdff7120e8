//! Writes a session's files into an output directory, each atomically: written to a temporary
//! file in the same directory, then renamed, so a reader never sees half a file.

use crate::render::{
    FlameKind, write_flamegraph, write_folded, write_html, write_json, write_sizes_svg,
    write_timeline_svg,
};
use crate::report::Report;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

/// Paths of the files [`write_outputs`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFiles {
    pub json: PathBuf,
    /// The leaked-bytes flame graph and folded stacks (also in `flamegraphs`).
    pub flamegraph: PathBuf,
    pub folded: PathBuf,
    /// Every flame graph, in [`FlameKind::ALL`] order.
    pub flamegraphs: Vec<FlameFiles>,
    /// The heap over time and the size-class histogram.
    pub timeline: PathBuf,
    pub sizes: PathBuf,
    /// Everything above in one self-contained page.
    pub html: PathBuf,
}

/// The two files of one flame graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlameFiles {
    pub kind: FlameKind,
    pub svg: PathBuf,
    pub folded: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot create output directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// Creates `dir` if needed and writes `report.json` and, for each [`FlameKind`], `STEM.svg`
/// and `STEM.folded` into it (`leaks`, `alloc-bytes`, `alloc-count`, `peak`), then the charts
/// `timeline.svg` and `sizes.svg` and the page that holds them all, `report.html`.
pub fn write_outputs(dir: &Path, report: &Report) -> Result<OutputFiles, OutputError> {
    fs::create_dir_all(dir).map_err(|source| OutputError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let json = dir.join("report.json");
    write_atomically(&json, |out| write_json(report, out))?;
    let mut flamegraphs = Vec::with_capacity(FlameKind::ALL.len());
    for kind in FlameKind::ALL {
        let files = FlameFiles {
            kind,
            svg: dir.join(format!("{}.svg", kind.file_stem())),
            folded: dir.join(format!("{}.folded", kind.file_stem())),
        };
        write_atomically(&files.svg, |out| write_flamegraph(report, kind, out))?;
        write_atomically(&files.folded, |out| write_folded(report, kind, out))?;
        flamegraphs.push(files);
    }
    let timeline = dir.join("timeline.svg");
    write_atomically(&timeline, |out| write_timeline_svg(report, out))?;
    let sizes = dir.join("sizes.svg");
    write_atomically(&sizes, |out| write_sizes_svg(report, out))?;
    let html = dir.join("report.html");
    write_atomically(&html, |out| write_html(report, out))?;
    Ok(OutputFiles {
        json,
        timeline,
        sizes,
        html,
        flamegraph: flamegraphs[0].svg.clone(),
        folded: flamegraphs[0].folded.clone(),
        flamegraphs,
    })
}

/// Writes `path` through a temporary file in its directory, renamed into place.
pub(crate) fn write_atomically(
    path: &Path,
    render: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), OutputError> {
    let name = path.file_name().expect("output paths end in a file name");
    // The pid keeps two concurrent memprof runs writing into one directory apart.
    let temp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut out = BufWriter::new(File::create(&temp)?);
        render(&mut out)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        fs::rename(&temp, path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&temp); // best effort: the error below is what matters
        OutputError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::{HeapState, Mode};
    use crate::maps::ProcessMaps;
    use crate::report::{LostCounts, ReportMeta, build_report};
    use crate::stacks::StackTable;
    use crate::symbolize::Symbolizer;

    fn empty_report() -> Report {
        let meta = ReportMeta {
            command: vec!["true".into()],
            pid: 1,
            mode: Mode::Run,
            exit: None,
            start_ns: 0,
            duration: std::time::Duration::ZERO,
            probes: vec![],
            lost: LostCounts::default(),
        };
        let mut symbolizer = Symbolizer::new(&ProcessMaps::default());
        build_report(
            &HeapState::new(Mode::Run),
            &StackTable::new(),
            &mut symbolizer,
            &meta,
        )
    }

    #[test]
    fn writes_every_file_and_no_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("nested/out");
        let files = write_outputs(&dir, &empty_report()).unwrap();
        assert_eq!(files.json, dir.join("report.json"));
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(&files.json).unwrap()).unwrap();
        assert_eq!(json["target"]["command"][0], "true");
        assert!(
            fs::read_to_string(&files.flamegraph)
                .unwrap()
                .starts_with("<?xml")
        );
        assert_eq!(fs::read_to_string(&files.folded).unwrap(), "");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "alloc-bytes.folded",
                "alloc-bytes.svg",
                "alloc-count.folded",
                "alloc-count.svg",
                "leaks.folded",
                "leaks.svg",
                "peak.folded",
                "peak.svg",
                "report.html",
                "report.json",
                "sizes.svg",
                "timeline.svg"
            ]
        );
        assert_eq!(files.flamegraphs.len(), 4);
        assert_eq!(files.flamegraphs[0].svg, files.flamegraph);
    }

    #[test]
    fn reports_the_path_it_could_not_create() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("file");
        fs::write(&blocker, b"").unwrap();
        let err = write_outputs(&blocker.join("out"), &empty_report()).unwrap_err();
        assert!(matches!(err, OutputError::CreateDir { .. }), "{err}");
        assert!(err.to_string().contains("file/out"), "{err}");
    }
}
