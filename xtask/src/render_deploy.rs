//! `cargo xtask render-deploy`: regenerates `deploy/` (base, overlays, shunt.yaml) with
//! `shuntctl install --render`, the same rendering the golden test in
//! `agent/ctl/tests/deploy.rs` compares `deploy/` against.

use anyhow::{Context as _, Result};

use crate::build::{bin_dir, user_cargo, workspace_root};
use crate::cmd::{Privilege, run};

pub fn run_task() -> Result<()> {
    println!("==> render-deploy: building shuntctl");
    let mut build = user_cargo();
    build.args(["build", "-p", "shuntctl"]);
    run(build.current_dir(workspace_root()), Privilege::User)?;
    let deploy = workspace_root().join("deploy");
    // Generated whole: a file the renderer no longer makes must not linger.
    for stale in ["base", "overlays"] {
        let dir = deploy.join(stale);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    let mut render = std::process::Command::new(bin_dir(false).join("shuntctl"));
    render
        .args(["install", "--render", "--deploy-tree"])
        .arg(&deploy);
    run(&mut render, Privilege::User)?;
    println!("==> render-deploy: {} is up to date", deploy.display());
    Ok(())
}
