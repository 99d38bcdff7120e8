//! Writes a session's files into an output directory, each atomically: written to a temporary
//! file in the same directory, then renamed, so a reader never sees half a file.

use crate::render::{write_json, write_leak_flamegraph, write_leak_folded};
use crate::report::Report;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

/// Paths of the files [`write_outputs`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFiles {
    pub json: PathBuf,
    pub flamegraph: PathBuf,
    pub folded: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot create output directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Creates `dir` if needed and writes `report.json`, `leaks.svg` (titled `title`) and
/// `leaks.folded` into it.
pub fn write_outputs(dir: &Path, report: &Report, title: &str) -> Result<OutputFiles, OutputError> {
    fs::create_dir_all(dir).map_err(|source| OutputError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let files = OutputFiles {
        json: dir.join("report.json"),
        flamegraph: dir.join("leaks.svg"),
        folded: dir.join("leaks.folded"),
    };
    write_atomically(&files.json, |out| write_json(report, out))?;
    write_atomically(&files.flamegraph, |out| {
        write_leak_flamegraph(report, title, out)
    })?;
    write_atomically(&files.folded, |out| write_leak_folded(report, out))?;
    Ok(files)
}

fn write_atomically(
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
    fn writes_three_files_and_no_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("nested/out");
        let files = write_outputs(&dir, &empty_report(), "title").unwrap();
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
        assert_eq!(names, ["leaks.folded", "leaks.svg", "report.json"]);
    }

    #[test]
    fn reports_the_path_it_could_not_create() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("file");
        fs::write(&blocker, b"").unwrap();
        let err = write_outputs(&blocker.join("out"), &empty_report(), "t").unwrap_err();
        assert!(matches!(err, OutputError::CreateDir { .. }), "{err}");
        assert!(err.to_string().contains("file/out"), "{err}");
    }
}
