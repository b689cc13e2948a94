//! Running commands, elevating with sudo only where a step needs root and we are not root.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    User,
    Root,
}

pub fn is_root() -> bool {
    nix_like_geteuid() == 0
}

fn nix_like_geteuid() -> u32 {
    // /proc/self/status avoids an unsafe libc call in xtask; "Uid: real effective ...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2))
                .and_then(|euid| euid.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Wraps `command` in `sudo` when it needs root and we are not root, keeping the environment
/// that cargo and the tests rely on.
pub fn elevate(command: &Command, privilege: Privilege) -> Command {
    if privilege == Privilege::User || is_root() {
        let mut same = Command::new(command.get_program());
        same.args(command.get_args());
        copy_env(command, &mut same);
        if let Some(dir) = command.get_current_dir() {
            same.current_dir(dir);
        }
        return same;
    }
    let mut sudo = Command::new("sudo");
    sudo.arg("--preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR,RUST_LOG,CI")
        .arg("--");
    sudo.arg(command.get_program()).args(command.get_args());
    copy_env(command, &mut sudo);
    if let Some(dir) = command.get_current_dir() {
        sudo.current_dir(dir);
    }
    sudo
}

fn copy_env(from: &Command, to: &mut Command) {
    for (key, value) in from.get_envs() {
        match value {
            Some(value) => to.env(key, value),
            None => to.env_remove(key),
        };
    }
}

pub fn run(command: &mut Command, privilege: Privilege) -> Result<()> {
    let mut command = elevate(command, privilege);
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
