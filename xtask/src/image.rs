//! `cargo xtask image`: shunt's image (the Dockerfile: the four static musl binaries `FROM
//! scratch`), built offline with podman from binaries built here. `--check`, which `cargo
//! xtask test` runs, then starts each binary in the image and asks it for its version
//! (`--version`; the CNI plugin, as a runtime asks it, `CNI_COMMAND=VERSION`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::build::{user_cargo, workspace_root};
use crate::cmd::{Privilege, elevate, run};
use crate::toolchain::MUSL_TARGET;

/// The binaries the image holds, as the Dockerfile copies them.
const BINARIES: [&str; 4] = ["shunt-agent", "shunt-proxy", "shuntctl", "shunt-cni"];
/// The CNI plugin: a runtime asks its version through the environment, not a flag.
const CNI_PLUGIN: &str = "shunt-cni";

/// `localhost/shunt:<version>`, the tag deploy/ runs unless told otherwise.
fn tag() -> String {
    format!("localhost/shunt:{}", env!("CARGO_PKG_VERSION"))
}

pub fn build(release: bool, check: bool) -> Result<()> {
    let profile = if release { "release" } else { "debug" };
    println!("==> image: {} from {MUSL_TARGET}/{profile}", tag());
    let mut cargo = user_cargo();
    cargo.args(["build", "--target", MUSL_TARGET]);
    for binary in BINARIES {
        // Each binary is its package's name.
        cargo.args(["-p", binary]);
    }
    if release {
        cargo.arg("--release");
    }
    run(cargo.current_dir(workspace_root()), Privilege::User)?;
    let mut podman = podman();
    podman
        .args(["build", "--quiet", "--build-arg"])
        .arg(format!("PROFILE={profile}"))
        .args(["-t", &tag(), "-f", "Dockerfile", "."])
        .current_dir(workspace_root());
    run(&mut podman, Privilege::Root).context(
        "podman build failed: the context is only target/<musl>/<profile>/ (.dockerignore)",
    )?;
    if check {
        smoke()?;
    }
    Ok(())
}

/// Starts each binary of the image with `--version`, offline and without a network.
fn smoke() -> Result<()> {
    for binary in BINARIES {
        let mut podman = podman();
        podman.args(["run", "--rm", "--network", "none"]);
        // podman's default rlimits raise the hard limits, which needs CAP_SYS_RESOURCE (this
        // machine's root lacks it); a `--version` needs none of that.
        podman.args([
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        if binary == CNI_PLUGIN {
            podman.args(["--env", "CNI_COMMAND=VERSION"]);
        }
        podman
            .arg("--entrypoint")
            .arg(format!("/usr/local/bin/{binary}"))
            .arg(tag());
        if binary != CNI_PLUGIN {
            podman.arg("--version");
        }
        let out = elevate(&podman, Privilege::Root)
            .output()
            .context("could not run podman")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = if binary == CNI_PLUGIN {
            // The CNI VERSION result: the spec versions it speaks.
            "{\"cniVersion\"".to_owned()
        } else {
            format!("{binary} {}", env!("CARGO_PKG_VERSION"))
        };
        if !out.status.success() || !stdout.trim().starts_with(&want) {
            bail!(
                "{binary} --version in {}: exit {}, printed {:?}, wanted {want:?}; stderr: {}",
                tag(),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!("    {binary} in the image: {}", stdout.trim());
    }
    Ok(())
}

/// podman, with runc where cgroups are a hybrid layout (cgroup2 not at /sys/fs/cgroup, as on
/// this machine): crun refuses to start a container there.
fn podman() -> Command {
    let mut podman = Command::new("podman");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if hybrid_cgroups(&mounts) && Path::new("/usr/bin/runc").exists() {
        podman.args(["--runtime", "runc"]);
    }
    podman
}

fn hybrid_cgroups(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next(), fields.next(), fields.next());
        fstype == Some("cgroup2") && dir != Some("/sys/fs/cgroup")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup2_mount_elsewhere_than_sys_fs_cgroup_is_hybrid() {
        let cases = [
            ("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", false),
            (
                "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n",
                true,
            ),
            ("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n", false),
            ("", false),
        ];
        for (mounts, want) in cases {
            assert_eq!(hybrid_cgroups(mounts), want, "{mounts:?}");
        }
    }
}
