//! `cargo xtask test`: setup, build, clippy, format check, then every test.
//!
//! The tests run last so that cargo test's closing lines (which CI reads) stay at the end of the
//! log, followed only by a one-line verdict. A failing clippy or format check does not stop the
//! tests from running: the log then shows every failure at once, and the exit status is non-zero.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{exec, samples, setup};

const NOT_PRIVILEGED: &str = "not root (and no CAP_BPF+CAP_PERFMON): the privileged end-to-end \
     tests of profiler-cli need root and cannot profile here; run `sudo cargo xtask test` to run them";

pub fn run() -> Result<()> {
    let findings = setup::ensure()?;
    if !findings.problems.is_empty() {
        println!(
            "setup found {} problem(s) (above); running the tests anyway",
            findings.problems.len()
        );
    }
    let privileged = findings.identity.can_load_probes();
    if !privileged {
        println!("NOTE: {NOT_PRIVILEGED}");
    }

    let root = samples::root()?;
    let cargo = |args: &[&str]| {
        let mut cmd = exec::cargo();
        cmd.current_dir(&root).args(args);
        cmd
    };
    // Nothing else is worth running when the workspace does not build.
    section("build");
    exec::run(&mut cargo(&["build", "--workspace"]))?;

    let steps: [(&str, Command); 3] = [
        (
            "clippy",
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        ("fmt", cargo(&["fmt", "--all", "--check"])),
        ("test", cargo(&["test", "--workspace"])),
    ];
    let mut failed = Vec::new();
    for (name, mut cmd) in steps {
        section(name);
        let status = exec::status(&mut cmd)?;
        if !status.success() {
            failed.push(format!("`{}` ({status})", exec::shown(&cmd)));
        }
    }

    if !privileged {
        println!("NOTE: {NOT_PRIVILEGED}");
    }
    if failed.is_empty() {
        println!("xtask test: build, clippy, fmt and tests passed");
        Ok(())
    } else {
        bail!("xtask test failed: {}", failed.join(", "))
    }
}

fn section(name: &str) {
    println!("== {name}");
}
