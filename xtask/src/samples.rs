//! Where things are (workspace root, target dir, memprof) and building the C samples.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::exec;

/// The workspace root (xtask lives one level below it).
pub fn root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// Cargo's target directory: $CARGO_TARGET_DIR, else `target/` in the workspace root.
pub fn target_dir() -> Result<PathBuf> {
    let root = root()?;
    Ok(match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    })
}

/// Builds memprof in release mode and returns the path of the binary.
pub fn build_memprof() -> Result<PathBuf> {
    exec::run(exec::cargo().current_dir(root()?).args([
        "build",
        "--release",
        "--package",
        "profiler-cli",
    ]))?;
    let memprof = target_dir()?.join("release/memprof");
    ensure!(
        memprof.is_file(),
        "cargo built profiler-cli but {} does not exist",
        memprof.display()
    );
    Ok(memprof)
}

/// Compiles `samples/c/NAME.c` with gcc into `target/samples/OUTPUT` and returns its path.
pub fn compile_c(name: &str, output: &str, flags: &[&str]) -> Result<PathBuf> {
    let root = root()?;
    let source = root.join("samples/c").join(format!("{name}.c"));
    ensure!(
        source.is_file(),
        "sample source {} does not exist",
        source.display()
    );
    let dir = target_dir()?.join("samples");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = dir.join(output);
    exec::run(
        exec::command("gcc")
            .current_dir(&root)
            .args(flags)
            .arg("-o")
            .arg(relative_to(&binary, &root))
            .arg(relative_to(&source, &root)),
    )?;
    Ok(binary)
}

/// `path` relative to `base` when it is inside it (for shorter echoed commands).
pub fn relative_to<'a>(path: &'a Path, base: &Path) -> &'a Path {
    path.strip_prefix(base).unwrap_or(path)
}
