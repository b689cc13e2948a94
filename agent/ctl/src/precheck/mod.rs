//! `shuntctl precheck`: whether this node can run shunt. The checks (`checks.rs`) read
//! everything below a root, so they run against a temp dir in tests; the kernel's feature
//! probe is `shunt-agent --probe-kernel`'s (no aya here), and the programs attached to
//! connect() come from the bpf syscall (`bpf.rs`).

mod bpf;
mod checks;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::Command;

use shunt_api::capture::KernelSupport;

use crate::output::{self, Output};
use crate::table::Table;

use checks::{Finding, Node, Status};

#[derive(Debug, clap::Args)]
pub struct PrecheckArgs {
    /// The node's root as this process sees it (in a pod with the node's / mounted at
    /// /host: /host). Every path below is read under it.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// The container runtime's CNI config dir, a path on the node.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The shunt-agent whose kernel probe to run [default: beside shuntctl, then PATH];
    /// without one the kernel is judged by its version only.
    #[arg(long, value_name = "PATH")]
    agent_binary: Option<PathBuf>,
}

pub fn run(args: &PrecheckArgs, output: Output) -> anyhow::Result<String> {
    let node = Node {
        root: args.root.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
        kernel_support: kernel_support(args.agent_binary.as_deref()),
        programs: &bpf::Kernel,
    };
    let findings = checks::run(&node);
    let text = render(&findings, output)?;
    let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
    if failed > 0 {
        // The report still goes to stdout; the exit status says it failed.
        print!("{text}");
        anyhow::bail!("precheck: {failed} check(s) failed: this node cannot run shunt as is");
    }
    Ok(text)
}

fn render(findings: &[Finding], output: Output) -> anyhow::Result<String> {
    if output == Output::Json {
        return Ok(output::json(&serde_json::to_value(findings)?));
    }
    let mut table = Table::new(&["CHECK", "STATUS", "FINDING"]);
    for f in findings {
        table.row(vec![
            f.check.into(),
            f.status.as_str().into(),
            f.detail.clone(),
        ]);
    }
    let mut text = table.render();
    let actions: Vec<&Finding> = findings.iter().filter(|f| f.action.is_some()).collect();
    if !actions.is_empty() {
        text.push_str("\nWhat to do:\n");
        for f in actions {
            text.push_str(&format!(
                "- {} ({}): {}\n",
                f.check,
                f.status.as_str(),
                f.action.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(text)
}

/// The agent beside this binary, else the one on PATH.
fn find_agent() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("shunt-agent")))
        .filter(|path| path.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("shunt-agent"))
                .find(|candidate| candidate.is_file())
        })
    })
}

fn kernel_support(explicit: Option<&Path>) -> Result<KernelSupport, String> {
    let agent = match explicit {
        Some(path) => path.to_owned(),
        None => find_agent().ok_or_else(|| {
            "shunt-agent was not found beside shuntctl or on PATH to probe features \
             (--agent-binary)"
                .to_owned()
        })?,
    };
    let out = Command::new(&agent)
        .arg("--probe-kernel")
        .output()
        .map_err(|e| format!("cannot run {} --probe-kernel: {e}", agent.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --probe-kernel failed ({}): {}",
            agent.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} --probe-kernel printed no probe: {e}", agent.display()))
}
