//! Debian's kernel packages: which one a family means, fetched with `apt-get download` and
//! unpacked with `dpkg-deb -x` under `target/kernel-matrix/`, never installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Privilege, run};

/// A kernel family of the matrix, as Debian packages it (the generic flavour: the cloud one
/// has no 9p, which the guest's root filesystem needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// What `--kernel` takes and the table shows, e.g. `6.1`.
    pub name: &'static str,
    /// Package names are `<prefix><N><infix>…-amd64`; the highest N is taken.
    prefix: &'static str,
}

/// Debian 12's kernel (`linux-image-6.1.0-<abi>-amd64`) and its 6.12 kernel
/// (`linux-image-6.12.<patch>+deb12-amd64`), the families GKE COS and EKS AL2023 nodes run.
pub const FAMILIES: [Family; 2] = [
    Family {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
    },
    Family {
        name: "6.12",
        prefix: "linux-image-6.12.",
    },
];

impl Family {
    /// The number that orders this family's packages, when `package` is one of them: the ABI
    /// of `linux-image-6.1.0-57-amd64`, the patch level of `linux-image-6.12.118+deb12-amd64`.
    /// Other flavours (cloud, rt) and the `-unsigned` and `-dbg` packages are not.
    fn rank(self, package: &str) -> Option<u32> {
        let rest = package.strip_prefix(self.prefix)?.strip_suffix("-amd64")?;
        let (number, tail) = rest.split_once('+').unwrap_or((rest, ""));
        let valid_tail = tail.is_empty()
            || tail
                .strip_prefix("deb")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !valid_tail || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        number.parse().ok()
    }

    /// The newest of this family's packages among `packages`.
    fn newest<'a>(self, packages: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        packages
            .into_iter()
            .filter_map(|p| self.rank(p).map(|rank| (rank, p)))
            .max()
            .map(|(_, p)| p)
    }
}

/// An unpacked kernel package.
#[derive(Clone, Debug)]
pub struct Image {
    pub family: Family,
    pub package: String,
    /// The Debian package version, e.g. `6.1.192-3`.
    pub version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// Where it is unpacked (`boot/`, `lib/modules/`).
    pub root: PathBuf,
}

impl Image {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }

    /// `lib/modules/<release>`, with the `modules.dep` our depmod made.
    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Finds the newest package of `family` in the apt cache, and downloads and unpacks it under
/// `cache` unless an earlier run did.
pub fn fetch(family: Family, cache: &Path) -> Result<Image> {
    let names = apt_output(&["pkgnames", family.prefix])?;
    let Some(package) = family.newest(names.lines()) else {
        bail!(
            "apt knows no {}*-amd64 package (Debian's generic {} kernel): is this Debian 12 \
             with its security suite in the apt sources, and `apt-get update` done?",
            family.prefix,
            family.name
        );
    };
    let version = apt_output(&["show", "--no-all-versions", package])?
        .lines()
        .find_map(|line| line.strip_prefix("Version: "))
        .map(str::to_owned)
        .with_context(|| format!("`apt-cache show {package}` gave no Version"))?;
    let root = cache.join(format!("{package}_{version}"));
    let ready = root.join(".unpacked");
    if !ready.exists() {
        unpack(package, &version, cache, &root)?;
        std::fs::write(&ready, b"").with_context(|| format!("writing {}", ready.display()))?;
    }
    let release = release_of(&root)?;
    Ok(Image {
        family,
        package: package.to_owned(),
        version,
        release,
        root,
    })
}

fn unpack(package: &str, version: &str, cache: &Path, root: &Path) -> Result<()> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    println!("    {package} {version}: apt-get download, dpkg-deb -x (not installed)");
    run(
        Command::new("apt-get")
            .args(["download", "-q", &format!("{package}={version}")])
            .current_dir(&debs),
        Privilege::User,
    )?;
    let deb = std::fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                debs.display()
            )
        })?;
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root),
        Privilege::User,
    )?;
    // The package's postinst would run depmod; busybox's makes the modules.dep (and aliases)
    // that the initramfs and the guest's modprobe read.
    let release = release_of(root)?;
    println!("    {package}: depmod (busybox) for {release}");
    run(
        Command::new("busybox")
            .args(["depmod", "-b"])
            .arg(root)
            .arg(&release),
        Privilege::User,
    )?;
    // The .deb is no longer needed; the unpacked tree is the cache.
    std::fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    Ok(())
}

/// The one `lib/modules/<release>` folder of an unpacked image.
fn release_of(root: &Path) -> Result<String> {
    let modules = root.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!(
            "{} holds {n} kernel releases, expected one: remove {} and run again",
            modules.display(),
            root.display()
        ),
    }
}

fn apt_output(args: &[&str]) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(args)
        .output()
        .context("could not run apt-cache (the kernel matrix needs Debian's apt)")?;
    if !out.status.success() {
        bail!(
            "apt-cache {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_generic_flavour_of_a_family_ranks() {
        let [v61, v612] = FAMILIES;
        let cases = [
            (v61, "linux-image-6.1.0-57-amd64", Some(57)),
            (v61, "linux-image-6.1.0-9-amd64", Some(9)),
            (v61, "linux-image-6.1.0-57-cloud-amd64", None),
            (v61, "linux-image-6.1.0-57-rt-amd64", None),
            (v61, "linux-image-6.1.0-57-amd64-unsigned", None),
            (v61, "linux-image-6.1.0-57-amd64-dbg", None),
            (v61, "linux-image-6.12.118+deb12-amd64", None),
            (v612, "linux-image-6.12.118+deb12-amd64", Some(118)),
            (v612, "linux-image-6.12.118+deb12-cloud-amd64", None),
            (v612, "linux-image-6.12-amd64", None),
            (v612, "linux-image-6.12.118+debx-amd64", None),
            (v612, "linux-image-6.1.0-57-amd64", None),
        ];
        for (family, package, want) in cases {
            assert_eq!(family.rank(package), want, "{} {package}", family.name);
        }
    }

    #[test]
    fn the_newest_package_is_taken_by_number_not_by_text() {
        let [v61, v612] = FAMILIES;
        let names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-57-amd64",
            "linux-image-6.1.0-100-cloud-amd64",
            "linux-image-6.12.99+deb12-amd64",
            "linux-image-6.12.118+deb12-amd64",
        ];
        assert_eq!(v61.newest(names), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(v612.newest(names), Some("linux-image-6.12.118+deb12-amd64"));
        assert_eq!(v612.newest(["linux-image-amd64"]), None);
    }
}
