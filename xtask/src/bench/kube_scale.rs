//! `cargo xtask bench --kube-scale`: the agent's Kubernetes source at issue 18's scale (10k
//! Services, 50k endpoints, 20k pods, 200 on this node), served by the kube tests' FAKE API
//! server (`tests/examples/kube_scale.rs`; a test double, not a kube-apiserver). Two figures,
//! each held to its limit as a ratio: the agent's RSS, and the time until the first complete
//! state reaches the proxy.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::build::{bin_dir, user_cargo, workspace_root};
use crate::cmd::{Privilege, elevate, run};

/// The example that drives the run, in the tests crate.
const EXAMPLE: &str = "kube_scale";
/// What the smoke run of `cargo xtask test` asks for: the same cluster shape, 1% of it.
const SMOKE_SCALE: &str = "0.01";

/// One figure and its limit.
struct Figure {
    key: &'static str,
    what: &'static str,
    unit: &'static str,
    limit: f64,
}

const FIGURES: [Figure; 3] = [
    Figure {
        key: "agent_rss_mib",
        what: "agent RSS once the first state is out",
        unit: "MiB",
        limit: 200.0,
    },
    Figure {
        key: "agent_peak_rss_mib",
        what: "agent peak RSS (VmHWM)",
        unit: "MiB",
        limit: 200.0,
    },
    Figure {
        key: "first_state_seconds",
        what: "first complete state at the proxy, from the agent's start",
        unit: "s",
        limit: 15.0,
    },
];

/// Builds the binaries and the example, runs it (as root), and reports.
pub fn run_bench() -> Result<()> {
    crate::toolchain::setup()?;
    crate::build::build_ebpf()?;
    crate::build::build_user(true)?;
    let measured = measure(true, "1")?;
    let markdown = markdown(&measured)?;
    println!("\n{markdown}");
    let results = workspace_root().join("results");
    std::fs::create_dir_all(&results)
        .with_context(|| format!("could not create {}", results.display()))?;
    let stamp = super::command_line("date", &["-u", "+%Y%m%dT%H%M%SZ"]);
    let base = results.join(format!("bench-kube-scale-{stamp}"));
    let json = json!({ "measured": measured, "limits": limits() });
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(base.with_extension("md"), &markdown)?;
    println!("==> bench: results in {}.{{json,md}}", base.display());
    Ok(())
}

/// `cargo xtask test`'s step: 1% of the cluster on the debug binaries; checks that the
/// driver ran and reported every figure (no figure is judged).
pub fn smoke() -> Result<()> {
    println!("==> test: kube-scale smoke run (1% of the cluster; no figure judged)");
    let measured = measure(false, SMOKE_SCALE)?;
    markdown(&measured)?;
    println!("    kube-scale smoke: every figure reported");
    Ok(())
}

fn measure(release: bool, scale: &str) -> Result<Value> {
    let mut cargo = user_cargo();
    cargo.args(["build", "-p", "shunt-tests", "--example", EXAMPLE]);
    if release {
        cargo.arg("--release");
    }
    run(cargo.current_dir(workspace_root()), Privilege::User)?;
    let bins = bin_dir(release);
    let mut driver = Command::new(bins.join("examples").join(EXAMPLE));
    driver.arg("--bin-dir").arg(&bins).args(["--scale", scale]);
    let output = elevate(&driver, Privilege::Root)
        .output()
        .context("could not start the kube-scale driver")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the kube-scale driver failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("the kube-scale driver printed no JSON line: {stdout:?}"))
}

fn limits() -> Value {
    FIGURES
        .iter()
        .map(|f| (f.key.to_owned(), json!(f.limit)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The table: each figure, its limit, the ratio and whether it is met.
fn markdown(measured: &Value) -> Result<String> {
    let count = |key: &str| measured[key].as_u64().unwrap_or_default();
    let mut out = format!(
        "### Kubernetes source at scale\n\n{} Services, {} endpoints, {} pods ({} on this \
         node), from the fake API server; release binaries unless the header says otherwise.\n\n\
         | figure | measured | limit | ratio | verdict |\n|---|---|---|---|---|\n",
        count("services"),
        count("endpoints"),
        count("pods"),
        count("node_pods"),
    );
    for figure in &FIGURES {
        let value = measured[figure.key]
            .as_f64()
            .with_context(|| format!("the kube-scale driver reported no {}", figure.key))?;
        let ratio = value / figure.limit;
        out.push_str(&format!(
            "| {} | {value:.1} {unit} | ≤ {} {unit} | {ratio:.2} | {} |\n",
            figure.what,
            figure.limit,
            if ratio <= 1.0 { "met" } else { "missed" },
            unit = figure.unit,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_figure_is_held_to_its_limit() {
        let cases = [
            (json!(150.0), json!(12.0), ["met", "met"]),
            (json!(250.0), json!(12.0), ["missed", "met"]),
            (json!(150.0), json!(16.0), ["met", "missed"]),
        ];
        for (rss, seconds, want) in cases {
            let measured = json!({"services": 10, "endpoints": 50, "pods": 20, "node_pods": 2,
                                  "agent_rss_mib": rss, "agent_peak_rss_mib": rss,
                                  "first_state_seconds": seconds});
            let table = markdown(&measured).unwrap();
            let verdicts: Vec<&str> = table
                .lines()
                .filter(|l| l.starts_with("| agent RSS once") || l.starts_with("| first"))
                .map(|l| l.trim_end_matches(" |").rsplit("| ").next().unwrap())
                .collect();
            assert_eq!(verdicts, want, "{table}");
        }
    }

    #[test]
    fn a_missing_figure_is_an_error() {
        let measured = json!({"agent_rss_mib": 1.0, "first_state_seconds": 1.0});
        let error = markdown(&measured).unwrap_err().to_string();
        assert!(error.contains("agent_peak_rss_mib"), "{error}");
    }
}
