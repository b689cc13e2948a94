//! `cargo xtask bench`: shunt measured side by side with iptables capture, HAProxy and no
//! proxy, on one node and across two, in one run on this machine.
//!
//! Every scenario (`scenario.rs`) gets its own node (or two-node cluster) of pods in network
//! namespaces, all alive at once; each repetition runs every scenario's workloads (`measure.rs`), in an order
//! rotated per repetition. The result (`report.rs`) is printed as a markdown table and saved
//! as JSON and markdown under `results/`.

pub mod kube_scale;
mod measure;
mod plan;
mod report;
mod scenario;
mod selection;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use shunt_tests::Binaries;

use crate::build::{self, bin_dir, workspace_root};
use crate::cmd::{Privilege, elevate, is_root};
use crate::toolchain;
use measure::{LOAD_CPU, SERVICE_CPU};
use plan::Plan;
use report::{Header, Report};
use scenario::{Deployment, Scenario};
pub use selection::Selection;
use selection::Workload;

const LOADGEN: &str = "shunt-loadgen";

/// Builds release binaries, then runs the bench (as root: under sudo when needed).
pub fn run(quick: bool, selection: &Selection) -> Result<()> {
    toolchain::setup()?;
    build::build_ebpf()?;
    build::build_user(true)?;
    let plan = if quick { plan::QUICK } else { plan::FULL };
    run_child(
        &plan,
        &bin_dir(true),
        &workspace_root().join("results"),
        selection,
    )
}

/// The step `cargo xtask test` runs: every scenario and workload once, tiny, on the debug
/// binaries it just built; checks that the table and the JSON are well formed.
pub fn smoke() -> Result<()> {
    println!("==> test: bench smoke run (every scenario, tiny workloads; no timing judged)");
    let results = std::env::temp_dir().join(format!("shunt-bench-smoke-{}", std::process::id()));
    let outcome = run_child(
        &plan::SMOKE,
        &bin_dir(false),
        &results,
        &Selection::default(),
    )
    .and_then(|()| check_smoke_results(&results));
    let _gone = std::fs::remove_dir_all(&results);
    outcome
}

fn check_smoke_results(results: &Path) -> Result<()> {
    let mut json = None;
    let mut markdown = None;
    for entry in std::fs::read_dir(results)
        .with_context(|| format!("the smoke run wrote no {}", results.display()))?
    {
        let path = entry?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => json = Some(std::fs::read_to_string(&path)?),
            Some("md") => markdown = Some(std::fs::read_to_string(&path)?),
            _ => {}
        }
    }
    let (Some(json), Some(markdown)) = (json, markdown) else {
        bail!("the smoke run did not write both a .json and a .md result");
    };
    let json: serde_json::Value =
        serde_json::from_str(&json).context("the smoke run's JSON result does not parse")?;
    let problems = report::check_structure(&plan::SMOKE, &json, &markdown);
    if !problems.is_empty() {
        bail!(
            "the bench smoke run's output is malformed:\n- {}",
            problems.join("\n- ")
        );
    }
    println!("    bench smoke: every scenario ran; table and JSON are well formed");
    Ok(())
}

/// Runs `xtask bench-node` as its own (root) process: it pins itself to a CPU, which must
/// not stick to the caller (`cargo xtask test` runs the test suite afterwards).
fn run_child(plan: &Plan, bin_dir: &Path, results: &Path, selection: &Selection) -> Result<()> {
    let mut node_part = Command::new(xtask_exe()?);
    node_part
        .args(["bench-node", "--plan", plan.name, "--bin-dir"])
        .arg(bin_dir)
        .arg("--results-dir")
        .arg(results)
        .args(selection.to_args());
    if !is_root() {
        println!("==> bench: the node part needs root; running it under sudo");
    }
    let status = elevate(&node_part, Privilege::Root)
        .status()
        .context("could not start xtask bench-node")?;
    if !status.success() {
        bail!("bench failed ({status})");
    }
    Ok(())
}

/// This xtask's binary. `cargo xtask test` rebuilds it (with the pinned toolchain) while it
/// runs, which leaves /proc/self/exe pointing at "<path> (deleted)": the rebuilt file at the
/// same path is the same code.
fn xtask_exe() -> Result<PathBuf> {
    if let Some(exe) = std::env::current_exe().ok().filter(|exe| exe.is_file()) {
        return Ok(exe);
    }
    let link = std::fs::read_link("/proc/self/exe").context("cannot find the xtask binary")?;
    let link = link.to_string_lossy();
    let rebuilt = PathBuf::from(link.strip_suffix(" (deleted)").unwrap_or(&link));
    if !rebuilt.is_file() {
        bail!(
            "cannot find the xtask binary: {} is gone",
            rebuilt.display()
        );
    }
    Ok(rebuilt)
}

/// The privileged part: start every scenario, run the repetitions, report, tear down.
pub fn run_node(
    plan_name: &str,
    bin_dir: &Path,
    results: &Path,
    selection: &Selection,
) -> Result<()> {
    let plan = Plan::named(plan_name).with_context(|| format!("no bench plan {plan_name:?}"))?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus <= SERVICE_CPU {
        bail!("the bench pins load and service to CPUs {LOAD_CPU} and {SERVICE_CPU}: it needs 2");
    }
    // Children inherit this: agent, proxies, servers and HAProxy all run on SERVICE_CPU; the
    // load generator is started with `taskset -c LOAD_CPU`.
    let pin = Command::new("taskset")
        .args([
            "-p",
            "-c",
            &SERVICE_CPU.to_string(),
            &std::process::id().to_string(),
        ])
        .output()
        .context("could not run taskset (util-linux)")?;
    if !pin.status.success() {
        bail!("taskset failed: {}", String::from_utf8_lossy(&pin.stderr));
    }
    let binaries = Binaries::in_dir(bin_dir);
    binaries.require_all()?;
    let loadgen = bin_dir.join(LOADGEN);
    if !loadgen.is_file() {
        bail!(
            "{} is missing: build the tests crate's binaries",
            loadgen.display()
        );
    }
    let header = Header {
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        kernel: command_line("uname", &["-r"]),
        cpu_model: cpu_model(),
        placement: format!(
            "load generator on CPU {LOAD_CPU}; shunt-proxy, shunt-agent, HAProxy and the \
             servers on CPU {SERVICE_CPU} (across nodes, both nodes' proxies and agents \
             share it; {cpus} CPUs online)"
        ),
        haproxy_version: command_line("haproxy", &["-v"]),
    };
    println!(
        "==> bench: {} plan, {} repetitions; {}",
        plan.name, plan.repetitions, header.placement
    );

    let mut unavailable = Vec::new();
    let mut deployments = Vec::new();
    if !selection.is_everything() {
        println!("    a partial run: {}", selection.to_args().join(" "));
    }
    for scenario in Scenario::ALL {
        if !selection.has_scenario(scenario) {
            let why = if scenario == Scenario::Gateway {
                "not selected (it runs only when named: --scenarios S8)"
            } else {
                "not selected (--scenarios)"
            };
            unavailable.push((scenario, why.to_owned()));
            continue;
        }
        if let Some(why) = scenario::unavailable_reason(scenario, &binaries) {
            println!("    {} {}: {why}", scenario.id(), scenario.title());
            unavailable.push((scenario, why));
            continue;
        }
        println!("    {} {}: starting", scenario.id(), scenario.title());
        // On an error the deployments started so far are dropped, which tears them down.
        deployments.push(
            Deployment::start(scenario, plan.name, &binaries, &loadgen).with_context(|| {
                format!("could not start {} {}", scenario.id(), scenario.title())
            })?,
        );
    }

    let mut records = Vec::new();
    for repetition in 0..plan.repetitions {
        // Rotating the order keeps a scenario from always following the same neighbour.
        let count = deployments.len();
        let order: Vec<usize> = (0..count).map(|i| (i + repetition) % count).collect();
        // L7 max rps first, in every scenario: the round's second L7 rate is half the lowest.
        let round_start = records.len();
        for &i in order.iter().filter(|_| selection.has(Workload::L7)) {
            if deployments[i].scenario == Scenario::Gateway {
                continue;
            }
            let record = measure::l7_max(&mut deployments[i], &plan, repetition);
            print_record(&plan, repetition, &record);
            records.push(record);
        }
        let same_node_half = half_rate(&records[round_start..], false);
        let cross_node_half = half_rate(&records[round_start..], true);
        for &i in &order {
            let deployment = &mut deployments[i];
            if deployment.scenario == Scenario::Gateway {
                // S8 is its own comparison (shunt gateway against HAProxy), L7 only.
                if selection.has(Workload::L7) {
                    for record in measure::gateway(deployment, &plan, repetition) {
                        print_record(&plan, repetition, &record);
                        records.push(record);
                    }
                }
                continue;
            }
            let half_rate = if deployment.scenario.is_cross_node() {
                cross_node_half
            } else {
                same_node_half
            };
            for record in measure::repetition(deployment, &plan, selection, repetition, half_rate) {
                print_record(&plan, repetition, &record);
                records.push(record);
            }
        }
    }

    let mut leftovers = Vec::new();
    for deployment in deployments {
        leftovers.extend(deployment.teardown());
    }
    let report = Report {
        plan,
        header,
        unavailable,
        records,
    };
    let markdown = report.markdown();
    println!("\n{markdown}");
    let (json_path, md_path) = save(&report, &markdown, results)?;
    println!(
        "==> bench: results in {} and {}",
        json_path.display(),
        md_path.display()
    );
    if !leftovers.is_empty() {
        bail!("the bench left things behind: {}", leftovers.join("; "));
    }
    Ok(())
}

/// The second L7 rate of a round for one group of scenarios (same-node S0–S4, or cross-node
/// S5–S6): half the lowest max rps of that group's scenarios in the round's `records`. Per
/// group, so adding the cross-node scenarios does not move the same-node ones' rate. S7 runs
/// at its group's rate (the same-node one, so it compares with S2's) but does not set it:
/// adding security does not move the other scenarios' rate either.
fn half_rate(records: &[measure::Record], cross_node: bool) -> Result<f64, &'static str> {
    records
        .iter()
        .filter(|r| r.rejected.is_none() && r.scenario.is_cross_node() == cross_node)
        .filter(|r| r.scenario != Scenario::EbpfAuthz)
        .flat_map(|r| r.values.iter())
        .filter(|(key, _)| key == "l7_max.rps")
        .map(|(_, rps)| *rps)
        .min_by(f64::total_cmp)
        .map(|rps| rps / 2.0)
        .ok_or(if cross_node {
            "no cross-node L7 max rps was measured in this repetition"
        } else {
            "no same-node L7 max rps was measured in this repetition"
        })
}

fn print_record(plan: &Plan, repetition: usize, record: &measure::Record) {
    println!(
        "    repetition {}/{} {} {}: {}",
        repetition + 1,
        plan.repetitions,
        record.scenario.id(),
        record.workload,
        record.rejected.as_deref().map_or_else(
            || {
                record
                    .values
                    .iter()
                    .map(|(k, v)| format!("{k}={v:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            |why| format!("REJECTED: {why}"),
        )
    );
}

fn save(report: &Report, markdown: &str, results: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(results)
        .with_context(|| format!("could not create {}", results.display()))?;
    let stamp = command_line("date", &["-u", "+%Y%m%dT%H%M%SZ"]);
    let base = results.join(format!("bench-{}-{stamp}", report.plan.name));
    let json_path = base.with_extension("json");
    let md_path = base.with_extension("md");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.to_json())?)
        .with_context(|| format!("could not write {}", json_path.display()))?;
    std::fs::write(&md_path, markdown)
        .with_context(|| format!("could not write {}", md_path.display()))?;
    Ok((json_path, md_path))
}

/// The first line a command prints, or what went wrong, for the report's header.
pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Ok(out) => format!("`{program}` failed ({})", out.status),
        Err(e) => format!("`{program}` could not run: {e}"),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use measure::Record;
    use serde_json::Value;

    fn max_rps(scenario: Scenario, rps: f64, rejected: bool) -> Record {
        Record {
            scenario,
            repetition: 0,
            workload: "l7_max".into(),
            values: vec![("l7_max.rps".into(), rps)],
            rejected: rejected.then(|| "errors".to_owned()),
            raw: Value::Null,
        }
    }

    #[test]
    fn the_half_rate_is_taken_per_group_of_scenarios() {
        let round = [
            max_rps(Scenario::Ebpf, 1000.0, false),
            max_rps(Scenario::Haproxy, 800.0, false),
            max_rps(Scenario::Direct, 100.0, true),
            max_rps(Scenario::CrossMtls, 300.0, false),
            max_rps(Scenario::CrossDirect, 5000.0, false),
            max_rps(Scenario::EbpfAuthz, 100.0, false),
        ];
        assert_eq!(half_rate(&round, false), Ok(400.0));
        assert_eq!(half_rate(&round, true), Ok(150.0));
        assert!(half_rate(&round[..3], true).is_err());
        assert!(half_rate(&round[2..3], false).is_err());
        assert!(
            half_rate(&round[5..], false).is_err(),
            "S7 alone sets no rate"
        );
    }
}
