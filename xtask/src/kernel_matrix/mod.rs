//! `cargo xtask kernel-matrix`: the privileged test binaries, built on the host, run under
//! Debian's own 6.1 and 6.12 kernels in qemu (README "Requirements" is produced from it).
//!
//! Per kernel: `image` fetches and unpacks the package, `initramfs` builds the guest's
//! initramfs (busybox, `init.sh`, `run.sh`, the 9p and overlay modules), `guest` boots it with
//! the host's root shared read-only, and `results` reads back what the tests printed; `report`
//! makes the tables. Everything lives under `target/kernel-matrix/`.

mod guest;
mod image;
mod initramfs;
mod report;
mod results;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::build::{bin_dir, user_cargo, workspace_root};
use crate::cmd::{Privilege, elevate};

use guest::{Accel, Guest};
use image::{FAMILIES, Family};
use report::{KernelRun, Reboot};
use results::{BinaryRun, Probe};

/// A test binary the matrix runs: `cargo test -p <package> --test <name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestBinary {
    pub package: &'static str,
    pub name: &'static str,
}

/// Every privileged test binary, in the order they run.
pub const ALL_BINARIES: [TestBinary; 9] = [
    TestBinary {
        package: "shunt-agent",
        name: "capture",
    },
    TestBinary {
        package: "shunt-tests",
        name: "harness",
    },
    TestBinary {
        package: "shunt-tests",
        name: "e2e",
    },
    TestBinary {
        package: "shunt-tests",
        name: "l7",
    },
    TestBinary {
        package: "shunt-tests",
        name: "multinode",
    },
    TestBinary {
        package: "shunt-tests",
        name: "security",
    },
    TestBinary {
        package: "shunt-tests",
        name: "hardening",
    },
    TestBinary {
        package: "shunt-tests",
        name: "discovery",
    },
    TestBinary {
        package: "shunt-tests",
        name: "cni",
    },
];

/// What `cargo xtask test` runs in CI (README "Requirements" says so): the capture chain's
/// own tests and the end-to-end cases, both capture modes. The rest run on demand.
pub const CI_BINARIES: [&str; 2] = ["capture", "e2e"];

/// Upper bound for one kernel's guest; a guest still running is killed and reported.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40 * 60);

pub struct Options {
    pub families: Vec<Family>,
    pub binaries: Vec<TestBinary>,
    /// libtest arguments for every binary (a name filter, `--exact`, ...).
    pub filter: Vec<String>,
    pub timeout: Duration,
    /// Who builds the test binaries: the same user as the rest of the run, so that cargo
    /// finds its own build (`cargo xtask test` builds them under sudo).
    pub build: Privilege,
}

impl Options {
    /// `--kernel` (`6.1`, `6.12` or `all`) and `--tests` (binary names, none: all).
    pub fn parse(kernel: &str, tests: &[String]) -> Result<(Vec<Family>, Vec<TestBinary>)> {
        let families = match kernel {
            "all" => FAMILIES.to_vec(),
            name => match FAMILIES.iter().find(|f| f.name == name) {
                Some(family) => vec![*family],
                None => bail!(
                    "--kernel {name}: the matrix has {}, or `all`",
                    FAMILIES.map(|f| f.name).join(", ")
                ),
            },
        };
        let binaries = if tests.is_empty() {
            ALL_BINARIES.to_vec()
        } else {
            tests
                .iter()
                .map(|name| {
                    ALL_BINARIES
                        .iter()
                        .find(|b| b.name == name)
                        .copied()
                        .with_context(|| {
                            format!(
                                "--tests {name}: the privileged test binaries are {}",
                                ALL_BINARIES.map(|b| b.name).join(", ")
                            )
                        })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let mut unique: Vec<TestBinary> = Vec::new();
        for binary in binaries {
            if !unique.contains(&binary) {
                unique.push(binary);
            }
        }
        Ok((families, unique))
    }
}

/// Runs the matrix and prints it; fails unless every binary passed under every kernel.
/// Expects the binaries built (`cargo xtask build`); builds the test binaries itself.
pub fn run(options: &Options) -> Result<()> {
    println!(
        "==> kernel-matrix: {} under {}",
        names(&options.binaries),
        options
            .families
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for tool in ["qemu-system-x86_64", "busybox", "dpkg-deb", "apt-get"] {
        if !Command::new("which")
            .arg(tool)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            bail!("{tool} is not installed: `cargo xtask setup` installs what the matrix needs");
        }
    }
    let agent = bin_dir(false).join("shunt-agent");
    if !agent.is_file() {
        bail!(
            "{} is missing: run `cargo xtask build` first",
            agent.display()
        );
    }
    let executables = build_tests(&options.binaries, options.build)?;
    let cache = workspace_root().join("target/kernel-matrix");
    let accel = Accel::detect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    println!(
        "    accelerator: {} ({cpus} CPUs); timeout {} min per kernel",
        accel.name(),
        options.timeout.as_secs() / 60
    );

    let mut runs = Vec::new();
    for family in &options.families {
        let image = image::fetch(*family, &cache.join("kernels"))?;
        println!(
            "==> kernel-matrix: {} ({} {})",
            image.release, image.package, image.version
        );
        let initramfs = initramfs::build(&image)?;
        let results = cache.join("runs").join(family.name);
        prepare_results(&results, &image)?;
        write_plan(&results, Some(&agent), &executables, &options.filter)?;
        let mut guest = Guest {
            image: &image,
            initramfs: &initramfs,
            results: &results,
            accel,
            cpus,
            single_threaded: false,
            timeout: options.timeout,
        };
        let mut ended = guest.run()?;
        let mut reboot = None;
        let unfinished: Vec<_> = executables
            .iter()
            .filter(|(binary, _, _)| !results.join(format!("{}.rc", binary.name)).exists())
            .cloned()
            .collect();
        // A guest kernel that died under the tests is booted once more, single-threaded,
        // for what it did not finish: the table shows both boots, and a second death fails.
        if let Some(death) = kernel_death(&results)
            && !unfinished.is_empty()
        {
            let rerun: Vec<String> = unfinished
                .iter()
                .map(|(b, _, _)| b.name.to_owned())
                .collect();
            println!(
                "    [{}] the guest's kernel died ({death}); booting it again with single-threaded TCG for {}",
                family.name,
                rerun.join(", ")
            );
            keep_first_boot(&results, &rerun)?;
            let probe = (!results.join("probe.rc").exists()).then_some(agent.as_path());
            write_plan(&results, probe, &unfinished, &options.filter)?;
            guest.single_threaded = true;
            ended = guest.run()?;
            reboot = Some(Reboot { death, rerun });
        }
        let death = kernel_death(&results);
        let probe = std::fs::read_to_string(results.join("probe.out"))
            .ok()
            .and_then(|text| Probe::parse(&text));
        let binaries = executables
            .iter()
            .map(|(binary, _, _)| {
                (
                    binary.name.to_owned(),
                    BinaryRun::read(&results, binary.name, ended),
                )
            })
            .collect();
        runs.push(KernelRun {
            image,
            ended,
            reboot,
            death,
            probe,
            binaries,
        });
    }

    let table = report::matrix(&runs, accel, cpus);
    println!("\n{table}");
    let date = today();
    let requirements = report::requirements(&runs, &date);
    let report_file = cache.join("report.md");
    std::fs::write(
        &report_file,
        format!("{table}\nREADME \"Requirements\" table:\n\n{requirements}"),
    )
    .with_context(|| format!("writing {}", report_file.display()))?;
    println!(
        "    the README's Requirements table from this run is in {}; each guest's output in {}",
        report_file.display(),
        cache.join("runs").display()
    );
    let failed: Vec<String> = runs
        .iter()
        .filter(|run| !run.passed())
        .map(|run| run.image.release.clone())
        .collect();
    if !failed.is_empty() {
        bail!("kernel matrix failed under {}", failed.join(", "));
    }
    Ok(())
}

fn names(binaries: &[TestBinary]) -> String {
    binaries
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(binary, executable, package dir)` for each selected test binary, built with
/// `cargo test --no-run` (a no-op when `cargo xtask test` has just built them).
fn build_tests(
    binaries: &[TestBinary],
    privilege: Privilege,
) -> Result<Vec<(TestBinary, PathBuf, PathBuf)>> {
    let mut found = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for binary in binaries {
        if !packages.contains(&binary.package) {
            packages.push(binary.package);
        }
    }
    for package in packages {
        let mut cargo = user_cargo();
        cargo.args(["test", "--no-run", "--message-format=json", "-p", package]);
        for binary in binaries.iter().filter(|b| b.package == package) {
            cargo.args(["--test", binary.name]);
        }
        let mut cargo = elevate(cargo.current_dir(workspace_root()), privilege);
        let out = cargo
            .stderr(Stdio::inherit())
            .output()
            .context("could not run cargo test --no-run")?;
        if !out.status.success() {
            bail!("building the test binaries of {package} failed");
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(message) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(artifact) = test_artifact(&message)
                && let Some(binary) = binaries
                    .iter()
                    .find(|b| b.package == package && b.name == artifact.0)
            {
                found.push((*binary, artifact.1, artifact.2));
            }
        }
    }
    // Plan order is the order of `binaries`.
    found.sort_by_key(|(binary, _, _)| binaries.iter().position(|b| b == binary));
    for binary in binaries {
        if !found.iter().any(|(b, _, _)| b == binary) {
            bail!(
                "cargo built no test binary {} of {}",
                binary.name,
                binary.package
            );
        }
    }
    Ok(found)
}

/// `(target name, executable, package dir)` of a `cargo --message-format=json` line that
/// reports a built integration test.
fn test_artifact(message: &Value) -> Option<(String, PathBuf, PathBuf)> {
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return None;
    }
    let target = &message["target"];
    if !target["kind"].as_array()?.iter().any(|kind| kind == "test") {
        return None;
    }
    let executable = PathBuf::from(message["executable"].as_str()?);
    let dir = Path::new(message["manifest_path"].as_str()?)
        .parent()?
        .to_owned();
    Some((target["name"].as_str()?.to_owned(), executable, dir))
}

/// An empty results folder, and where the guest finds the image's modules.
fn prepare_results(results: &Path, image: &image::Image) -> Result<()> {
    if results.exists() {
        std::fs::remove_dir_all(results)
            .with_context(|| format!("removing {}", results.display()))?;
    }
    std::fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    std::fs::write(
        results.join("modules-dir"),
        image.modules().display().to_string(),
    )?;
    Ok(())
}

/// The guest's plan: the probe first (unless `agent` is `None`), then each binary.
fn write_plan(
    results: &Path,
    agent: Option<&Path>,
    executables: &[(TestBinary, PathBuf, PathBuf)],
    filter: &[String],
) -> Result<()> {
    let mut plan = agent.map_or_else(String::new, |agent| {
        format!("probe\t/\t{} --probe-kernel\n", agent.display())
    });
    for (binary, executable, dir) in executables {
        // --show-output: a passing test's `SKIPPED <test>: <reason>` line is printed.
        let mut command = vec![executable.display().to_string(), "--show-output".to_owned()];
        command.extend(filter.iter().cloned());
        for part in command.iter().chain([&dir.display().to_string()]) {
            if part.contains(char::is_whitespace) {
                bail!("{part:?}: the guest's plan cannot hold whitespace inside an argument");
            }
        }
        plan.push_str(&format!(
            "{}\t{}\t{}\n",
            binary.name,
            dir.display(),
            command.join(" ")
        ));
    }
    std::fs::write(results.join("plan"), plan)
        .with_context(|| format!("writing {}", results.join("plan").display()))
}

/// How the guest's kernel died, from its console (`None`: it powered off by itself).
fn kernel_death(results: &Path) -> Option<String> {
    let console = std::fs::read(results.join("console.log")).ok()?;
    results::kernel_death(&String::from_utf8_lossy(&console))
}

/// Moves what the first boot left of the binaries it did not finish, and its console and
/// log, to `boot-1.*`, so that the second boot starts clean and the first stays readable.
fn keep_first_boot(results: &Path, rerun: &[String]) -> Result<()> {
    let files = ["console.log".to_owned(), "guest.log".to_owned()]
        .into_iter()
        .chain(rerun.iter().map(|name| format!("{name}.out")));
    for file in files {
        let from = results.join(&file);
        if from.exists() {
            let to = results.join(format!("boot-1.{file}"));
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Today, UTC, `YYYY-MM-DD`.
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_and_binaries_are_chosen_by_name() {
        let (families, binaries) = Options::parse("all", &[]).unwrap();
        assert_eq!(families.len(), 2);
        assert_eq!(binaries, ALL_BINARIES);
        let tests: Vec<String> = CI_BINARIES.map(str::to_owned).into();
        let (families, binaries) = Options::parse("6.12", &tests).unwrap();
        assert_eq!(
            families.iter().map(|f| f.name).collect::<Vec<_>>(),
            ["6.12"]
        );
        assert_eq!(
            binaries.iter().map(|b| b.name).collect::<Vec<_>>(),
            CI_BINARIES
        );
        let twice = ["e2e".to_owned(), "capture".to_owned(), "e2e".to_owned()];
        let (_, binaries) = Options::parse("6.1", &twice).unwrap();
        assert_eq!(
            binaries.iter().map(|b| b.name).collect::<Vec<_>>(),
            ["e2e", "capture"]
        );
        for (kernel, tests) in [("5.15", vec![]), ("6.1", vec!["nope".to_owned()])] {
            assert!(
                Options::parse(kernel, &tests).is_err(),
                "{kernel} {tests:?}"
            );
        }
    }

    #[test]
    fn only_integration_test_artifacts_are_taken() {
        let test = serde_json::json!({
            "reason": "compiler-artifact", "profile": {"test": true},
            "target": {"name": "e2e", "kind": ["test"]},
            "executable": "/w/target/debug/deps/e2e-1234", "manifest_path": "/w/tests/Cargo.toml"
        });
        assert_eq!(
            test_artifact(&test),
            Some((
                "e2e".to_owned(),
                PathBuf::from("/w/target/debug/deps/e2e-1234"),
                PathBuf::from("/w/tests")
            ))
        );
        let mut lib = test.clone();
        lib["target"]["kind"] = serde_json::json!(["lib"]);
        let mut not_test = test.clone();
        not_test["profile"]["test"] = serde_json::json!(false);
        let mut no_executable = test.clone();
        no_executable["executable"] = Value::Null;
        for message in [
            lib,
            not_test,
            no_executable,
            serde_json::json!({"reason": "build-finished"}),
        ] {
            assert_eq!(test_artifact(&message), None, "{message}");
        }
    }
}
