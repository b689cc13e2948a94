//! `cargo xtask test`: everything CI runs, in order, ending with one summary line: the host's
//! steps, then the kernel matrix's CI binaries under each kernel (`SHUNT_KERNEL_MATRIX=0`
//! leaves it out).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::build::{self, user_cargo, workspace_root};
use crate::cmd::{self, Privilege, elevate, is_root};
use crate::{kernel_matrix, toolchain};

/// `SHUNT_KERNEL_MATRIX=0` leaves the kernel matrix out of `cargo xtask test`.
const KERNEL_MATRIX_ENV: &str = "SHUNT_KERNEL_MATRIX";

pub fn run(cargo_test_args: &[String]) -> Result<()> {
    toolchain::setup()?;
    build::build_ebpf()?;
    build::build_user(false)?;

    println!("==> test: rustfmt");
    let mut fmt = user_cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    cmd::run(fmt.current_dir(workspace_root()), Privilege::User)?;

    println!("==> test: clippy (warnings are errors)");
    let mut clippy = user_cargo();
    clippy.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    cmd::run(clippy.current_dir(workspace_root()), Privilege::User)?;

    println!("==> test: layering (module cycles, crate direction)");
    crate::layers::run()?;

    crate::bench::smoke()?;
    crate::bench::kube_scale::smoke()?;
    if !is_root() {
        println!("    not root: the tests run under sudo, for their privileged parts");
    }
    println!("==> test: unit and privileged end-to-end tests");
    let mut test = user_cargo();
    // No doc tests: there are none, and their empty "0 passed" would close the output.
    test.args(["test", "--lib", "--bins", "--tests", "--no-fail-fast"])
        .args(cargo_test_args)
        .current_dir(workspace_root());
    let totals = run_counting(elevate(&test, Privilege::Root))?;
    let summary = format!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !totals.success || totals.failed > 0 {
        println!("{summary}");
        bail!("tests failed");
    }
    if totals.passed == 0 {
        println!("{summary}");
        bail!("no test ran");
    }
    println!("==> test: the image (musl binaries FROM scratch, each run with --version)");
    let image = crate::image::build(false, true);
    if let Err(e) = &image {
        println!("image: FAILED: {e:#}");
    }
    let matrix = kernel_matrix();
    // One closing line for the whole run, in the plain form CI reads.
    println!("{summary}");
    image.and(matrix)
}

/// The CI part of the kernel matrix (README "Requirements"), unless `SHUNT_KERNEL_MATRIX=0`.
fn kernel_matrix() -> Result<()> {
    /// Per kernel; two kernels and the host's steps stay well inside CI's 90 minutes.
    const CI_TIMEOUT: Duration = Duration::from_secs(25 * 60);
    if std::env::var_os(KERNEL_MATRIX_ENV).is_some_and(|v| v == "0") {
        println!("==> test: kernel matrix skipped ({KERNEL_MATRIX_ENV}=0)");
        return Ok(());
    }
    let tests: Vec<String> = kernel_matrix::CI_BINARIES.map(str::to_owned).into();
    let (families, binaries) = kernel_matrix::Options::parse("all", &tests)?;
    let result = kernel_matrix::run(&kernel_matrix::Options {
        families,
        binaries,
        filter: Vec::new(),
        timeout: CI_TIMEOUT,
        // The test binaries were just built by the privileged `cargo test` above.
        build: Privilege::Root,
    });
    match &result {
        Ok(()) => println!("kernel matrix: passed ({})", tests.join(", ")),
        Err(e) => println!("kernel matrix: FAILED: {e:#}"),
    }
    result
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    success: bool,
}

/// Runs `cargo test`, passing its output through and adding up its "test result:" lines.
fn run_counting(mut command: Command) -> Result<Totals> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(counts) = parse_result_line(&line) {
                totals.passed += counts.0;
                totals.failed += counts.1;
                totals.ignored += counts.2;
            }
        }
    }
    totals.success = child.wait()?.success();
    Ok(totals)
}

/// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
fn parse_result_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches(|c: char| c.is_alphabetic() || c == '.')
                    .trim()
                    .strip_suffix(word)
            })
            .and_then(|n| n.trim().parse().ok())
    };
    Some((
        count("passed")?,
        count("failed")?,
        count("ignored").unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_result_line;

    #[test]
    fn result_lines_are_counted() {
        let cases = [
            (
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
                Some((12, 0, 1)),
            ),
            (
                "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
                Some((3, 2, 0)),
            ),
            ("running 3 tests", None),
            ("test foo ... ok", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_result_line(line), want, "{line}");
        }
    }
}
