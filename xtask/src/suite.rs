//! `cargo xtask test`: setup, build, clippy, format check, documentation check, then every
//! test.
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

    // The engine's and the binary's documentation must build without a warning (broken
    // links included); the samples are documented for their readers, not checked.
    let mut doc = cargo(&[
        "doc",
        "--no-deps",
        "--package",
        "profiler-common",
        "--package",
        "profiler-core",
        "--package",
        "profiler-cli",
        "--package",
        "memprof-capture",
    ]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
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
        ("doc", doc),
    ];
    let mut failed = Vec::new();
    for (name, mut cmd) in steps {
        section(name);
        let status = exec::status(&mut cmd)?;
        if !status.success() {
            failed.push(format!("`{}` ({status})", exec::shown(&cmd)));
        }
    }

    section("test");
    let mut test = cargo(&["test", "--workspace"]);
    let (status, counts) = run_tests(&mut test)?;
    if !status.success() {
        failed.push(format!("`{}` ({status})", exec::shown(&test)));
    }

    if !privileged {
        println!("NOTE: {NOT_PRIVILEGED}");
    }
    // One closing line for the whole workspace: the last binary cargo runs (a doc-test pass)
    // often has no test of its own, which must not read as "nothing was tested".
    println!("{} passed, {} failed", counts.passed, counts.failed);
    if failed.is_empty() {
        println!("xtask test: build, clippy, fmt, doc and tests passed");
        Ok(())
    } else {
        bail!("xtask test failed: {}", failed.join(", "))
    }
}

/// Totals over every `test result:` line cargo test printed.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestCounts {
    passed: u64,
    failed: u64,
}

impl TestCounts {
    /// Adds one `test result: ok. 25 passed; 0 failed; ...` line; other lines are ignored.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(number), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                _ => {}
            }
        }
    }
}

/// Runs cargo test, echoing its output while counting the results.
fn run_tests(cmd: &mut Command) -> Result<(std::process::ExitStatus, TestCounts)> {
    use std::io::{BufRead as _, BufReader};
    println!("$ {}", exec::shown(cmd));
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut counts = TestCounts::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            counts.add_line(&line);
        }
    }
    Ok((child.wait()?, counts))
}

fn section(name: &str) {
    println!("== {name}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_summed() {
        let mut counts = TestCounts::default();
        counts.add_line("test result: ok. 25 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 8.99s");
        counts.add_line(
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out",
        );
        counts.add_line("running 5 tests");
        assert_eq!(
            counts,
            TestCounts {
                passed: 28,
                failed: 2
            }
        );
    }
}
