//! `memprof report DIR`: a whole followed tree from a session's output directory. Every
//! process image's recording is replayed into the same place under the new output
//! (`processes/PID-N/`), then the launched process's, whose report lists them all again with
//! the figures of the replays. Which images there were, and how each started and ended (what
//! the recordings alone do not say: its parent, whether an exec or an exit ended it), comes
//! from DIR/report.json's `processes`; without it (memprof was killed before writing it), from
//! the recordings under DIR/processes/: their headers' lineage, and each replay's end.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use profiler_core::{
    output_dir::OutputDir,
    recording::{Header, Reader},
    report::{PROCESS_TOP_LEAKS, ProcessEnd, ProcessImage, ProcessLeak, Report},
    session_end::{SessionView, write_all},
    symbolize::Symbolizer,
};

use crate::{
    options::{RECORDING_FILE, recording_of},
    report_cmd, report_writer,
};

/// The images listed in `DIR/report.json` (empty when it lists none or cannot be read).
fn listed_images(dir: &Path) -> Vec<ProcessImage> {
    std::fs::read_to_string(dir.join("report.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Report>(&text).ok())
        .map(|report| report.processes)
        .unwrap_or_default()
}

/// Replays the tree recorded in `dir` into `output`: every image's files, then the launched
/// process's with the summary. Returns the exit status.
pub fn report(dir: &Path, output: &Path, top: usize) -> Result<i32> {
    let recording = recording_of(dir);
    if !recording.is_file() {
        bail!(
            "{} holds no {RECORDING_FILE}: not a memprof output directory, or recorded with \
             --no-recording",
            dir.display()
        );
    }
    let mut listed = listed_images(dir);
    let discovered = listed.is_empty();
    if discovered {
        listed = discovered_images(dir, &recording);
    }
    let out = OutputDir::open(output)?;
    let mut images = Vec::with_capacity(listed.len());
    let mut symbolizer: Option<Symbolizer> = None;
    for image in listed {
        if image.output == "." {
            images.push(image);
            continue;
        }
        let (replayed, used) = replay_image(dir, &out, image, symbolizer.take())?;
        images.push(replayed);
        symbolizer = Some(used);
    }
    let replayed = report_cmd::load(&recording)?;
    if let Some(root) = images.iter_mut().find(|image| image.output == ".") {
        let stats = replayed.recorder.heap.stats();
        root.allocations = stats.allocations;
        root.frees = stats.frees;
        root.peak_live_bytes = stats.peak_live_bytes;
        root.leaked_blocks = stats.live_blocks;
        root.leaked_bytes = stats.live_bytes;
        if discovered {
            root.exit = replayed.meta.exit;
        }
    }
    if discovered {
        settle_ends(&mut images);
    }
    let session = SessionView {
        processes: &images,
        ..replayed.view()
    };
    report_writer::finish_report(
        &session,
        replayed.malformed,
        &mut replayed.symbolizer(),
        &replayed.meta,
        |path| replayed.build_id(path),
        output,
        top,
    )?;
    Ok(0)
}

/// The images of the tree recorded in `dir` whose report.json is missing, from the headers of
/// the recordings in `DIR/processes/PID-N/` and of `root` (the launched process's): each
/// image's pid, parent, number, command and start; figures and ends come from the replays.
fn discovered_images(dir: &Path, root: &Path) -> Vec<ProcessImage> {
    let header = |file: &Path| {
        let source = std::fs::File::open(file).ok()?;
        Reader::new(source)
            .ok()
            .map(|reader| reader.header().clone())
    };
    let Some(root_header) = header(root) else {
        return Vec::new();
    };
    let origin = root_header.start_monotonic_ns;
    let line = |header: &Header, image: u32, output: String| ProcessImage {
        pid: header.pid,
        parent_pid: header.lineage.and_then(|lineage| lineage.parent_pid),
        image,
        command: header.command.clone(),
        executable: header.executable.clone(),
        start_secs: header.start_monotonic_ns.saturating_sub(origin) as f64 / 1e9,
        end_secs: None,
        end: ProcessEnd::Running,
        exit: None,
        capture: header
            .capture
            .as_ref()
            .map_or_else(String::new, |capture| capture.path.clone()),
        output,
        allocations: 0,
        frees: 0,
        peak_live_bytes: 0,
        leaked_blocks: 0,
        leaked_bytes: 0,
        inherited_blocks: 0,
        inherited_bytes: 0,
        top_leaks: Vec::new(),
    };
    let mut images = Vec::new();
    let entries = std::fs::read_dir(dir.join("processes"))
        .into_iter()
        .flatten();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((Ok(pid), Ok(image))) = name
            .split_once('-')
            .map(|(pid, image)| (pid.parse::<u32>(), image.parse::<u32>()))
        else {
            continue;
        };
        let Some(found) = header(&recording_of(&entry.path())).filter(|h| h.pid == pid) else {
            continue;
        };
        images.push(line(&found, image, format!("processes/{name}")));
    }
    if images.is_empty() {
        return images;
    }
    let index = root_header.lineage.map_or(1, |lineage| lineage.image);
    images.push(line(&root_header, index, ".".to_owned()));
    images.sort_by(|a, b| {
        (a.start_secs, a.pid, a.image)
            .partial_cmp(&(b.start_secs, b.pid, b.image))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    images
}

/// How each discovered image ended: an exec when a later image of its pid exists, an exit
/// when its recording says how it exited, else it was running when memprof stopped.
fn settle_ends(images: &mut [ProcessImage]) {
    let later: Vec<bool> = images
        .iter()
        .map(|image| {
            images
                .iter()
                .any(|other| other.pid == image.pid && other.image > image.image)
        })
        .collect();
    for (image, execd) in images.iter_mut().zip(later) {
        image.end = match (execd, image.exit) {
            (true, _) => ProcessEnd::Exec,
            (false, Some(_)) => ProcessEnd::Exit,
            (false, None) => ProcessEnd::Running,
        };
    }
}

/// Replays one image's recording into the same relative directory of `out`; returns its line
/// with the figures of the replay, and the symbolizer for the next image.
fn replay_image(
    dir: &Path,
    out: &OutputDir,
    mut image: ProcessImage,
    previous: Option<Symbolizer>,
) -> Result<(ProcessImage, Symbolizer)> {
    let relative = Path::new(&image.output);
    // Only `processes/NAME`, as memprof writes it: a report.json edited to point elsewhere
    // must not make memprof read or write outside the directories it was given.
    let name = match (relative.parent(), relative.file_name()) {
        (Some(parent), Some(name)) if parent == Path::new("processes") => {
            name.to_string_lossy().into_owned()
        }
        _ => bail!("report.json lists an image in {:?}", image.output),
    };
    if name.contains('/') || name.starts_with('.') {
        bail!("report.json lists an image in {:?}", image.output);
    }
    let replayed = report_cmd::load(&recording_of(&dir.join(relative)))?;
    let image_dir = out.subdir("processes")?.subdir(&name)?;
    let mut symbolizer = replayed.symbolizer();
    if let Some(previous) = previous {
        symbolizer = symbolizer.with_modules_of(previous);
    }
    let outputs = write_all(
        &image_dir,
        &replayed.view(),
        &mut symbolizer,
        &replayed.meta,
        |path| replayed.build_id(path),
    )
    .with_context(|| {
        format!(
            "cannot write the report into {}",
            image_dir.path().display()
        )
    })?;
    let stats = replayed.recorder.heap.stats();
    image.allocations = stats.allocations;
    image.frees = stats.frees;
    image.peak_live_bytes = stats.peak_live_bytes;
    image.leaked_blocks = stats.live_blocks;
    image.leaked_bytes = stats.live_bytes;
    image.inherited_blocks = stats.inherited_blocks;
    image.inherited_bytes = stats.inherited_bytes;
    image.top_leaks = ProcessLeak::top(&outputs.report.leaks, PROCESS_TOP_LEAKS);
    if image.exit.is_none() {
        image.exit = replayed.meta.exit;
    }
    Ok((image, symbolizer))
}
