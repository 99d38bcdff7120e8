//! Writes a report's files into an output directory, each atomically (see [`OutputDir`]), so a
//! reader never sees half a file.

pub use crate::output_dir::{OutputDir, OutputError};
use crate::render::{
    FlameKind, write_flamegraph, write_folded, write_html, write_json, write_sizes_svg,
    write_timeline_svg,
};
use crate::report::Report;
use std::path::PathBuf;

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

/// Writes `report.json` and, for each [`FlameKind`], `STEM.svg` and `STEM.folded` into `dir`
/// (`leaks`, `alloc-bytes`, `alloc-count`, `peak`), then the charts `timeline.svg` and
/// `sizes.svg` and the page that holds them all, `report.html`.
pub fn write_outputs(dir: &OutputDir, report: &Report) -> Result<OutputFiles, OutputError> {
    let json = dir.write_atomically("report.json", |out| write_json(report, out))?;
    let mut flamegraphs = Vec::with_capacity(FlameKind::ALL.len());
    for kind in FlameKind::ALL {
        let stem = kind.file_stem();
        let svg = dir.write_atomically(&format!("{stem}.svg"), |out| {
            write_flamegraph(report, kind, out)
        })?;
        let folded = dir.write_atomically(&format!("{stem}.folded"), |out| {
            write_folded(report, kind, out)
        })?;
        flamegraphs.push(FlameFiles { kind, svg, folded });
    }
    let timeline = dir.write_atomically("timeline.svg", |out| write_timeline_svg(report, out))?;
    let sizes = dir.write_atomically("sizes.svg", |out| write_sizes_svg(report, out))?;
    let html = dir.write_atomically("report.html", |out| write_html(report, out))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::{HeapState, Mode};
    use crate::maps::ProcessMaps;
    use crate::report::{LostCounts, ReportMeta, build_report};
    use crate::stacks::StackTable;
    use crate::symbolize::Symbolizer;
    use std::fs;

    fn empty_report() -> Report {
        let meta = ReportMeta {
            command: vec!["true".into()],
            executable: None,
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
        let files = write_outputs(&OutputDir::open(&dir).unwrap(), &empty_report()).unwrap();
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
        let err = OutputDir::open(&blocker.join("out")).unwrap_err();
        assert!(matches!(err, OutputError::CreateDir { .. }), "{err}");
        assert!(err.to_string().contains("file/out"), "{err}");
    }
}
