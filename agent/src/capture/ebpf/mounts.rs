//! Where bpffs and cgroup2 are mounted, read from /proc/mounts (never assumed).

use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, FsType, statfs};

/// What can go wrong finding or mounting bpffs and cgroup2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read {}: {error}", path.display())]
    Mounts {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "bpffs is not mounted and mounting it at {} failed: {detail} — mount it with \
         `mount -t bpf bpf {}`",
        DEFAULT_BPFFS,
        DEFAULT_BPFFS
    )]
    MountBpffs { detail: String },
    #[error(
        "--bpffs {} is not a bpffs mount — mount one with `mount -t bpf bpf {}`, or leave \
         --bpffs out to use the mounted one",
        path.display(),
        path.display()
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "no cgroup2 filesystem in /proc/mounts: shunt needs cgroup v2 — mount it (e.g. \
         `mount -t cgroup2 none /sys/fs/cgroup`) or pass --cgroup"
    )]
    NoCgroup2,
    #[error("--cgroup {} is not a folder of a cgroup2 filesystem", path.display())]
    NotCgroup2 { path: PathBuf },
}

const PROC_MOUNTS: &str = "/proc/mounts";
/// Where bpffs is conventionally mounted, and where shunt mounts it when it is missing.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

// Parsing is shunt-api's, shared with `shuntctl precheck`.
pub use shunt_api::mounts::{MountEntry, parse_mounts};

fn read_mounts() -> Result<Vec<MountEntry>, Error> {
    let text = std::fs::read_to_string(PROC_MOUNTS).map_err(|source| Error::Mounts {
        path: PathBuf::from(PROC_MOUNTS),
        error: source,
    })?;
    Ok(parse_mounts(&text))
}

/// The first mount of `fs_type`, preferring `preferred` when it is one of them.
fn find_mount(mounts: &[MountEntry], fs_type: &str, preferred: Option<&Path>) -> Option<PathBuf> {
    let mut of_type = mounts.iter().filter(|m| m.fs_type == fs_type);
    let first = of_type.next()?;
    if let Some(preferred) = preferred
        && let Some(hit) = std::iter::once(first)
            .chain(of_type)
            .find(|m| m.mount_point == preferred)
    {
        return Some(hit.mount_point.clone());
    }
    Some(first.mount_point.clone())
}

/// The bpffs mount, if there is one.
pub fn find_bpffs() -> Result<Option<PathBuf>, Error> {
    Ok(find_mount(
        &read_mounts()?,
        "bpf",
        Some(Path::new(DEFAULT_BPFFS)),
    ))
}

/// The cgroup2 mount, if there is one.
pub fn find_cgroup2() -> Result<Option<PathBuf>, Error> {
    Ok(find_mount(&read_mounts()?, "cgroup2", None))
}

fn has_fs_type(path: &Path, fs_type: FsType) -> bool {
    statfs(path).is_ok_and(|st| st.filesystem_type() == fs_type)
}

/// `explicit` when it is a bpffs; otherwise the mounted bpffs; otherwise mounts one at
/// /sys/fs/bpf.
pub fn bpffs(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return if has_fs_type(path, BPF_FS_MAGIC) {
            Ok(path.to_owned())
        } else {
            Err(Error::NotBpffs {
                path: path.to_owned(),
            })
        };
    }
    if let Some(found) = find_bpffs()? {
        return Ok(found);
    }
    let target = Path::new(DEFAULT_BPFFS);
    std::fs::create_dir_all(target).map_err(|e| Error::MountBpffs {
        detail: format!("creating {}: {e}", target.display()),
    })?;
    // Agents starting together would each see no bpffs and mount one on top of the other,
    // hiding the pins made in the lower one. An exclusive lock on the (still unmounted)
    // directory serialises them; whoever comes second finds the mount and uses it.
    let dir = std::fs::File::open(target).map_err(|e| Error::MountBpffs {
        detail: format!("opening {}: {e}", target.display()),
    })?;
    let _lock = Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, e)| Error::MountBpffs {
        detail: format!("locking {}: {e}", target.display()),
    })?;
    if has_fs_type(target, BPF_FS_MAGIC) {
        return Ok(target.to_owned());
    }
    mount(
        Some("bpf"),
        target,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::MountBpffs {
        detail: e.to_string(),
    })?;
    tracing::info!(path = %target.display(), "mounted bpffs");
    Ok(target.to_owned())
}

/// The bpffs to look for pins in, without mounting anything (for `--uninstall`).
pub fn existing_bpffs(explicit: Option<&Path>) -> Result<Option<PathBuf>, Error> {
    match explicit {
        Some(path) if has_fs_type(path, BPF_FS_MAGIC) => Ok(Some(path.to_owned())),
        Some(path) => Err(Error::NotBpffs {
            path: path.to_owned(),
        }),
        None => find_bpffs(),
    }
}

/// `explicit` when it is a cgroup2 folder; otherwise the cgroup2 mount's root.
pub fn cgroup(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    match explicit {
        Some(path) if has_fs_type(path, CGROUP2_SUPER_MAGIC) => Ok(path.to_owned()),
        Some(path) => Err(Error::NotCgroup2 {
            path: path.to_owned(),
        }),
        None => find_cgroup2()?.ok_or(Error::NoCgroup2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /run/other\\040bpf bpf rw 0 0
bpf /sys/fs/bpf bpf rw 0 0
garbage
";

    #[test]
    fn finds_mounts_by_type() {
        let mounts = parse_mounts(HYBRID);
        let cases = [
            ("cgroup2", None, Some("/sys/fs/cgroup/unified")),
            ("bpf", None, Some("/run/other bpf")),
            ("bpf", Some(DEFAULT_BPFFS), Some(DEFAULT_BPFFS)),
            ("bpf", Some("/elsewhere"), Some("/run/other bpf")),
            ("debugfs", None, None),
        ];
        for (fs_type, preferred, expected) in cases {
            assert_eq!(
                find_mount(&mounts, fs_type, preferred.map(Path::new)),
                expected.map(PathBuf::from),
                "{fs_type} preferring {preferred:?}"
            );
        }
    }
}
