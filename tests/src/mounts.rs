//! Finding filesystems in /proc/mounts: cgroup2 (hybrid or unified layout) and bpffs.
#![forbid(unsafe_code)]

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read /proc/mounts: {0}")]
    Read(std::io::Error),
    #[error("no cgroup2 filesystem in /proc/mounts: shunt needs cgroup v2 (unified or hybrid)")]
    NoCgroup2,
}

/// The first cgroup2 mount (/sys/fs/cgroup/unified in the hybrid layout, /sys/fs/cgroup in
/// the unified one).
pub fn cgroup2() -> Result<PathBuf, Error> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(Error::Read)?;
    mount_of_type(&mounts, "cgroup2").ok_or(Error::NoCgroup2)
}

/// The first bpffs mount, if bpffs is mounted at all (the agent mounts it when it is not).
pub fn bpffs() -> Result<Option<PathBuf>, Error> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(Error::Read)?;
    Ok(mount_of_type(&mounts, "bpf"))
}

/// The mount point of the first filesystem of `fs_type` in a /proc/mounts text.
#[must_use]
pub fn mount_of_type(mounts: &str, fs_type: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_device, mount_point, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == fs_type).then(|| PathBuf::from(unescape_mount_field(mount_point)))
    })
}

/// /proc/mounts writes spaces and a few other bytes as `\ooo` octal escapes.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_by_type() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf\\040x bpf rw 0 0
";
        let cases = [
            ("cgroup2", Some("/sys/fs/cgroup/unified")),
            ("bpf", Some("/sys/fs/bpf x")),
            ("cgroup", Some("/sys/fs/cgroup/cpu")),
            ("nfs", None),
        ];
        for (kind, want) in cases {
            assert_eq!(
                mount_of_type(mounts, kind),
                want.map(PathBuf::from),
                "{kind}"
            );
        }
    }
}
