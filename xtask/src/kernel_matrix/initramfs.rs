//! The guest's initramfs: busybox (static), the two stage scripts, and the modules 9p and
//! overlayfs need, taken from the unpacked image and listed dependencies first.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use super::image::Image;

/// Stage 1: `/init`.
const INIT: &str = include_str!("init.sh");
/// Stage 2, copied into the new root by stage 1.
const RUN: &str = include_str!("run.sh");
/// busybox-static, which `cargo xtask setup` installs.
const BUSYBOX: &str = "/bin/busybox";

/// What the guest needs before it has a root filesystem: the PCI transport of virtio, 9p over
/// it, and overlayfs. A module built into the kernel (virtio_pci in 6.12) is skipped.
const BOOT_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Builds `<image root>/kmatrix-initramfs.cpio` (every time: it is small, and the scripts may
/// have changed) and returns its path.
pub fn build(image: &Image) -> Result<PathBuf> {
    let modules = image.modules();
    let dep = read(&modules.join("modules.dep"))?;
    let builtin = read(&modules.join("modules.builtin"))?;
    let order = load_order(&dep, &builtin, &BOOT_MODULES)?;

    let staging = image.root.join("kmatrix-initramfs");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    for dir in ["bin", "modules"] {
        std::fs::create_dir_all(staging.join(dir))?;
    }
    copy(Path::new(BUSYBOX), &staging.join("bin/busybox"))?;
    write_executable(&staging.join("init"), INIT)?;
    write_executable(&staging.join("run.sh"), RUN)?;
    let mut names = Vec::new();
    for module in &order {
        let name = plain_name(module);
        let from = modules.join(module);
        let to = staging.join("modules").join(&name);
        if module.ends_with(".ko") {
            copy(&from, &to)?;
        } else if module.ends_with(".ko.xz") {
            // busybox's insmod takes plain modules only.
            decompress(&from, &to)?;
        } else {
            bail!(
                "{}: only plain and xz-compressed modules are supported",
                from.display()
            );
        }
        names.push(name);
    }
    std::fs::write(staging.join("modules/order"), names.join("\n") + "\n")?;

    let cpio = image.root.join("kmatrix-initramfs.cpio");
    pack(&staging, &cpio)?;
    Ok(cpio)
}

/// The module files (relative to `lib/modules/<release>`) to load for `wanted`, each after the
/// modules it depends on, each once; built-in modules are left out.
fn load_order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let deps: BTreeMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, needs)| (module.trim(), needs.split_whitespace().collect()))
        .collect();
    let by_name: BTreeMap<String, &str> =
        deps.keys().map(|path| (module_name(path), *path)).collect();
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        let name = name.replace('-', "_");
        match by_name.get(&name) {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(&name) => {}
            None => bail!(
                "the kernel image has no module {name} and does not build it in: the guest \
                 needs it (is this the cloud flavour, which lacks 9p?)"
            ),
        }
    }
    Ok(order)
}

/// Depth first: dependencies before the module.
fn visit<'a>(
    path: &'a str,
    deps: &BTreeMap<&'a str, Vec<&'a str>>,
    seen: &mut BTreeSet<&'a str>,
    order: &mut Vec<String>,
) {
    if !seen.insert(path) {
        return;
    }
    for dependency in deps.get(path).into_iter().flatten() {
        visit(dependency, deps, seen, order);
    }
    order.push(path.to_owned());
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`; dashes and underscores are the same to the kernel.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(stem, _)| stem);
    stem.replace('-', "_")
}

/// `kernel/fs/9p/9p.ko.xz` → `9p.ko`.
fn plain_name(path: &str) -> String {
    format!("{}.ko", module_name(path))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

fn decompress(from: &Path, to: &Path) -> Result<()> {
    let out = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let status = Command::new(BUSYBOX)
        .arg("xzcat")
        .arg(from)
        .stdout(out)
        .status()
        .context("running busybox xzcat")?;
    if !status.success() {
        bail!("busybox xzcat {} failed with {status}", from.display());
    }
    Ok(())
}

/// `busybox cpio -o -H newc` over every file under `dir`, paths relative to it.
fn pack(dir: &Path, cpio: &Path) -> Result<()> {
    let mut paths = Vec::new();
    collect(dir, dir, &mut paths)?;
    let out =
        std::fs::File::create(cpio).with_context(|| format!("creating {}", cpio.display()))?;
    let mut child = Command::new(BUSYBOX)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .context("running busybox cpio")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all((paths.join("\n") + "\n").as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("busybox cpio failed with {status}");
    }
    Ok(())
}

fn collect(root: &Path, dir: &Path, paths: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if let Ok(relative) = path.strip_prefix(root) {
            paths.push(relative.to_string_lossy().into_owned());
        }
        if path.is_dir() {
            collect(root, &path, paths)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped as busybox depmod writes it for Debian's 6.1 (virtio as modules).
    const DEP_6_1: &str = "\
kernel/fs/overlayfs/overlay.ko:
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio.ko kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/net/9p/9pnet.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
";

    /// Debian's 6.12: compressed modules, virtio built in.
    const DEP_6_12: &str = "\
kernel/fs/overlayfs/overlay.ko.xz:
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/netfs/netfs.ko.xz:
";
    const BUILTIN_6_12: &str =
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n";

    fn names(order: &[String]) -> Vec<String> {
        order.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn every_module_comes_after_its_dependencies_once() {
        let cases: [(&str, &str, &[&str]); 2] = [
            (
                DEP_6_1,
                "",
                &[
                    "virtio_pci_modern_dev",
                    "virtio_pci_legacy_dev",
                    "virtio_ring",
                    "virtio",
                    "virtio_pci",
                    "9pnet",
                    "9pnet_virtio",
                    "netfs",
                    "fscache",
                    "9p",
                    "overlay",
                ],
            ),
            (
                DEP_6_12,
                BUILTIN_6_12,
                &["9pnet", "netfs", "9pnet_virtio", "9p", "overlay"],
            ),
        ];
        for (dep, builtin, want) in cases {
            let order = load_order(dep, builtin, &BOOT_MODULES).unwrap();
            assert_eq!(names(&order), want);
        }
    }

    #[test]
    fn a_module_neither_built_nor_built_in_is_an_error() {
        let error = load_order(DEP_6_12, "", &BOOT_MODULES).unwrap_err();
        assert!(error.to_string().contains("virtio_pci"), "{error}");
    }

    #[test]
    fn names_drop_folders_and_compression() {
        for (path, name, plain) in [
            ("kernel/fs/9p/9p.ko.xz", "9p", "9p.ko"),
            (
                "kernel/net/9p/9pnet_virtio.ko",
                "9pnet_virtio",
                "9pnet_virtio.ko",
            ),
            ("kernel/drivers/x/snd-hda.ko.zst", "snd_hda", "snd_hda.ko"),
        ] {
            assert_eq!(module_name(path), name);
            assert_eq!(plain_name(path), plain);
        }
    }
}
