//! `cargo xtask demo`: profile the leaky C sample and say where the report and flamegraph are.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::samples::{self, relative_to};
use crate::{exec, setup};

const OUTPUT_DIR: &str = "memprof-out";

pub fn run() -> Result<()> {
    setup::ensure()?.require_all()?;
    println!("== build");
    let memprof = samples::build_memprof()?;
    let leaks = samples::compile_c(
        "leaks",
        "leaks",
        &["-O2", "-g", "-fno-omit-frame-pointer", "-fno-builtin"],
    )?;

    println!("== profile");
    let root = samples::root()?;
    let mut profile = exec::command(relative_to(&memprof, &root));
    profile
        .current_dir(&root)
        .args(["run", "--output", OUTPUT_DIR, "--"])
        .arg(relative_to(&leaks, &root));
    let status = exec::status(&mut profile)?;

    let out = root.join(OUTPUT_DIR);
    let report = out.join("report.json");
    let svg = out.join("leaks.svg");
    if !report.is_file() {
        bail!("memprof ({status}) wrote no {}", report.display());
    }
    if !status.success() {
        // memprof passes on the sample's exit status; the report is still complete.
        println!("memprof exited with {status} (the sample's exit status)");
    }
    println!("== done");
    if let Some(line) = leak_summary(&report)? {
        println!("{line}");
    }
    println!("report:     {}", report.display());
    println!("flamegraph: {} (open it in a browser)", svg.display());
    println!("folded:     {}", out.join("leaks.folded").display());
    Ok(())
}

/// "leaked: N bytes in M blocks from K sites", read back from report.json.
fn leak_summary(report: &Path) -> Result<Option<String>> {
    let text =
        fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))?;
    let summary = &json["summary"];
    let (Some(bytes), Some(blocks)) = (
        summary["live_bytes"].as_u64(),
        summary["live_blocks"].as_u64(),
    ) else {
        return Ok(None);
    };
    let sites = json["leaks"].as_array().map_or(0, Vec::len);
    Ok(Some(format!(
        "leaked at exit: {bytes} bytes in {blocks} blocks from {sites} call sites"
    )))
}
