//! `cargo xtask setup`: install what is missing, then check the kernel and privileges.
//!
//! Each step first looks (dpkg-query, `bpf-linker --version` + ldd, rustup's component list),
//! which takes well under a second, and installs only what it did not find. One line is printed
//! per thing found or done; every problem that cannot be fixed here is one line too.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::exec;
use crate::host::{self, Check, Identity};

/// Debian packages: LLVM 22 development files for bpf-linker, gcc for the C samples, python3
/// and setpriv (util-linux) for the tests.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "libxml2-dev",
    "gcc",
    "libc6-dev",
    "python3",
    "util-linux",
    // `cargo xtask bench alloc` compares memprof's allocator with these (LD_PRELOAD).
    "libjemalloc2",
    "libmimalloc2.0",
    "libtcmalloc-minimal4",
    // `go tool pprof` loads profile.pb.gz in profiler-core's pprof test.
    "golang-go",
    // glibc's DWARF, found by build-id: libc frames get file:line (symbolize/debug_file.rs).
    "libc6-dbg",
    // The C++ sample (samples/cpp) and objcopy/objdump for the separate-debug-file tests.
    "g++",
    "binutils",
    // A headless browser opens report.html in profiler-core's HTML test.
    "chromium",
    // memprof-alloc-preload's test runs sqlite3 under our allocator and under glibc.
    "sqlite3",
    // `cargo xtask bench capture` measures memprof against heaptrack on the same workloads.
    "heaptrack",
    // ... and on redis-server under redis-benchmark (redis-tools: the server binary, no daemon).
    "redis-tools",
    // The leak check's e2e tests hold memprof's classes to memcheck's on the same binaries.
    "valgrind",
    // musl-gcc: a static musl program in c_targets.rs.
    "musl-tools",
    // The live view's e2e test drives `memprof run --live` in a tmux session.
    "tmux",
];

/// The eBPF crate is built with this toolchain (profiler-cli's build.rs). It must stay on
/// LLVM 22: newer nightlies emit LLVM 23 bitcode, which bpf-linker on LLVM 22 cannot read.
const NIGHTLY: &str = "nightly";
const LLVM_MAJOR: &str = "22";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// What setup found wrong that it cannot fix, and whether probes can be loaded at all.
pub struct Findings {
    pub problems: Vec<String>,
    pub identity: Identity,
}

impl Findings {
    /// Fails with the number of problems when there are any (each was already printed).
    pub fn require_all(&self) -> Result<()> {
        match self.problems.len() {
            0 => Ok(()),
            1 => bail!("setup found 1 problem (above)"),
            n => bail!("setup found {n} problems (above)"),
        }
    }
}

/// Installs what is missing and checks the rest, printing one line per step.
pub fn ensure() -> Result<Findings> {
    println!("== setup");
    let identity = Identity::current()?;
    let checks = [
        packages(identity)?,
        nightly()?,
        bpf_linker()?,
        host::btf(),
        host::uprobes(),
        host::privileges(identity),
    ];
    let mut problems = Vec::new();
    for check in checks {
        match check {
            Ok(found) => println!("  ok       {found}"),
            Err(problem) => {
                println!("  PROBLEM  {problem}");
                problems.push(problem);
            }
        }
    }
    Ok(Findings { problems, identity })
}

fn packages(identity: Identity) -> Result<Check> {
    let Some(missing) = missing_packages()? else {
        return Ok(Err(format!(
            "dpkg-query not found: install yourself the equivalents of {}",
            PACKAGES.join(" ")
        )));
    };
    if missing.is_empty() {
        return Ok(Ok(format!("packages: {}", PACKAGES.join(" "))));
    }
    println!("  install  packages: {}", missing.join(" "));
    apt_get(identity, &["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    apt_get(identity, &install)?;
    match missing_packages()? {
        Some(still) if !still.is_empty() => bail!(
            "apt-get install succeeded but these are still not installed: {}",
            still.join(" ")
        ),
        _ => Ok(Ok(format!("packages: installed {}", missing.join(" ")))),
    }
}

/// The packages of PACKAGES dpkg does not list as installed; None without dpkg.
fn missing_packages() -> Result<Option<Vec<&'static str>>> {
    let mut query = exec::command("dpkg-query");
    query
        .args(["-W", "-f=${Package}\t${db:Status-Abbrev}\n"])
        .args(PACKAGES);
    // dpkg-query exits 1 when a package is unknown; its stdout still lists the known ones.
    let out = match query.output() {
        Ok(out) => out,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).context("could not run dpkg-query"),
    };
    Ok(Some(not_installed(
        &String::from_utf8_lossy(&out.stdout),
        PACKAGES,
    )))
}

/// Which of `wanted` the dpkg-query listing does not show as installed ("ii").
fn not_installed<'a>(listing: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    wanted
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect()
}

fn apt_get(identity: Identity, args: &[&str]) -> Result<()> {
    let mut cmd = if identity.is_root() {
        exec::command("apt-get")
    } else if exec::find_program("sudo").is_some() {
        let mut sudo = exec::command("sudo");
        sudo.arg("apt-get");
        sudo
    } else {
        bail!(
            "installing packages needs root: run `apt-get {}` as root, or run this as root",
            args.join(" ")
        );
    };
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    exec::run(&mut cmd)
}

/// The `nightly` toolchain exists, is on LLVM 22, and has rust-src (added when missing).
fn nightly() -> Result<Check> {
    let toolchains = exec::stdout(rustup().args(["toolchain", "list"]))?;
    if !toolchains.lines().any(is_plain_nightly) {
        return Ok(Err(format!(
            "no `{NIGHTLY}` toolchain: install a nightly on LLVM {LLVM_MAJOR} (e.g. nightly-2026-05-19) \
             and name it `{NIGHTLY}`; newer nightlies use LLVM 23, which bpf-linker cannot read"
        )));
    }
    let version = exec::stdout(rustup().args(["run", NIGHTLY, "rustc", "-vV"]))?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        return Ok(Err(format!(
            "the `{NIGHTLY}` toolchain uses LLVM {llvm}, bpf-linker needs LLVM {LLVM_MAJOR}: \
             do not update nightly; install one from before LLVM 23 (e.g. nightly-2026-05-19)"
        )));
    }
    let list_installed = ["component", "list", "--toolchain", NIGHTLY, "--installed"];
    let has_rust_src = |list: &str| list.lines().any(|line| line.trim().starts_with("rust-src"));
    if has_rust_src(&exec::stdout(rustup().args(list_installed))?) {
        return Ok(Ok(format!(
            "{NIGHTLY} toolchain on LLVM {llvm}, with rust-src"
        )));
    }
    println!("  install  rust-src for the {NIGHTLY} toolchain");
    exec::run(rustup().args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    if !has_rust_src(&exec::stdout(rustup().args(list_installed))?) {
        bail!("rustup added rust-src but does not list it as installed");
    }
    Ok(Ok(format!(
        "{NIGHTLY} toolchain on LLVM {llvm}: installed rust-src"
    )))
}

/// A rustup that never installs a toolchain behind our back (that would fetch LLVM 23).
fn rustup() -> std::process::Command {
    let mut cmd = exec::command("rustup");
    cmd.env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

/// `nightly-<host>` from `rustup toolchain list`, not a dated `nightly-2026-05-19-<host>`.
fn is_plain_nightly(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or("");
    name == NIGHTLY
        || name
            .strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// bpf-linker runs and links libLLVM 22; otherwise it is (re)built against /usr/lib/llvm-22.
fn bpf_linker() -> Result<Check> {
    let found = exec::find_program("bpf-linker").map(|path| (inspect_bpf_linker(&path), path));
    let force = match &found {
        Some((Ok(found), _)) => return Ok(Ok(found.clone())),
        Some((Err(why), path)) => {
            println!("  rebuild  bpf-linker at {}: {why}", path.display());
            true
        }
        None => {
            println!("  install  bpf-linker (built against LLVM {LLVM_MAJOR}, about a minute)");
            false
        }
    };
    let mut install = exec::cargo();
    install.args(["install", "bpf-linker", "--locked", "--no-default-features"]);
    install.args(["--features", &format!("llvm-{LLVM_MAJOR}")]);
    if force {
        install.arg("--force");
    }
    // /usr/bin/llvm-config is an older LLVM; llvm-sys must find LLVM 22's first.
    let mut path = std::ffi::OsString::from(LLVM_BIN);
    path.push(":");
    path.push(exec::child_path());
    install.env("PATH", path);
    exec::run(&mut install)?;
    let path = exec::find_program("bpf-linker").with_context(|| {
        format!(
            "cargo installed bpf-linker but it is not in PATH or {}",
            exec::cargo_bin_dir().unwrap_or_default().display()
        )
    })?;
    match inspect_bpf_linker(&path) {
        Ok(found) => Ok(Ok(format!("installed {found}"))),
        Err(why) => bail!("the freshly built bpf-linker is still unusable: {why}"),
    }
}

/// "bpf-linker 0.13.0 at PATH, linked against libLLVM.so.22.1", or why it is unusable.
fn inspect_bpf_linker(path: &Path) -> std::result::Result<String, String> {
    let version = exec::stdout(exec::command(path).arg("--version"))
        .map_err(|err| format!("`bpf-linker --version` failed: {err:#}"))?;
    let ldd = exec::stdout(exec::command("ldd").arg(path))
        .map_err(|err| format!("ldd failed: {err:#}"))?;
    let llvm = llvm_library(&ldd)?;
    Ok(format!(
        "{} at {}, linked against {llvm}",
        version.trim(),
        path.display()
    ))
}

/// The libLLVM line of ldd's output, if it is LLVM 22 and resolves.
fn llvm_library(ldd: &str) -> std::result::Result<&str, String> {
    let line = ldd
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("libLLVM"))
        .ok_or("it does not link libLLVM dynamically, so its LLVM version is unknown")?;
    let name = line.split_whitespace().next().unwrap_or(line);
    if line.contains("not found") {
        Err(format!("{name} is not found"))
    } else if !name.starts_with(&format!("libLLVM.so.{LLVM_MAJOR}")) {
        Err(format!("it links {name}, not LLVM {LLVM_MAJOR}"))
    } else {
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_not_listed_or_not_ii_are_missing() {
        let listing = "gcc\tii \nlibc6-dev:amd64\tii \npython3\trc \n";
        assert_eq!(
            not_installed(listing, &["gcc", "libc6-dev", "python3", "util-linux"]),
            ["python3", "util-linux"]
        );
    }

    #[test]
    fn accepts_only_a_resolved_llvm_22() {
        let good = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007fa3)\n";
        assert_eq!(llvm_library(good), Ok("libLLVM.so.22.1"));
        let old = "\tlibLLVM-14.so.1 => /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1 (0x1)\n";
        assert!(llvm_library(old).is_err());
        let gone = "\tlibLLVM.so.22.1 => not found\n";
        assert!(llvm_library(gone).unwrap_err().contains("not found"));
        assert!(llvm_library("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n").is_err());
    }

    #[test]
    fn plain_nightly_is_not_a_dated_one() {
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_plain_nightly(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
        assert!(!is_plain_nightly(
            "nightly-2026-05-19-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_plain_nightly("stable-x86_64-unknown-linux-gnu"));
    }
}
