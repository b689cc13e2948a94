//! Under eBPF capture the proxy must run inside the capture cgroup (`--cgroup`): the
//! `cgroup/getsockopt` program answers `SO_ORIGINAL_DST` only for sockets of processes in
//! that cgroup or below it. A proxy outside it gets no original destination, and every
//! captured connection would be reset; so the agent refuses such a proxy at its hello.

use std::path::{Path, PathBuf};

/// Where the proxy has to run, and where to read that from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupRequirement {
    /// The capture cgroup the programs are attached to.
    pub cgroup: PathBuf,
    /// The cgroup2 mount, which `/proc/<pid>/cgroup` paths are relative to.
    pub cgroup2_mount: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the proxy (pid {pid}) runs in cgroup {}, outside the capture cgroup {} (--cgroup): \
         the cgroup/getsockopt program answers SO_ORIGINAL_DST only inside it, so every \
         captured connection would be reset. Start shunt-proxy inside {} (for example \
         `echo $$ > {}/cgroup.procs` in the shell that starts it), or pass the proxy's cgroup \
         or a parent of both as --cgroup",
        proxy.display(),
        cgroup.display(),
        cgroup.display(),
        cgroup.display()
    )]
    Outside {
        pid: u32,
        proxy: PathBuf,
        cgroup: PathBuf,
    },
    #[error(
        "cannot tell which cgroup the proxy (pid {pid}) runs in: {detail}; the agent refuses \
         it because capture cannot answer its SO_ORIGINAL_DST unless it runs inside {}",
        cgroup.display()
    )]
    Unknown {
        pid: u32,
        cgroup: PathBuf,
        detail: String,
    },
}

impl CgroupRequirement {
    /// Checks the process `pid` (the proxy, as the kernel names it on the control socket).
    pub fn check(&self, pid: u32) -> Result<(), Error> {
        let unknown = |detail: String| Error::Unknown {
            pid,
            cgroup: self.cgroup.clone(),
            detail,
        };
        let proc_cgroup = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&proc_cgroup)
            .map_err(|e| unknown(format!("reading {proc_cgroup}: {e}")))?;
        let proxy = unified_cgroup(&text, &self.cgroup2_mount)
            .ok_or_else(|| unknown(format!("{proc_cgroup} has no cgroup v2 (0::) line")))?;
        self.check_path(pid, &proxy)
    }

    fn check_path(&self, pid: u32, proxy: &Path) -> Result<(), Error> {
        // Symlinks or `..` in --cgroup must not decide the answer.
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        if canonical(proxy).starts_with(canonical(&self.cgroup)) {
            Ok(())
        } else {
            Err(Error::Outside {
                pid,
                proxy: proxy.to_owned(),
                cgroup: self.cgroup.clone(),
            })
        }
    }
}

/// The cgroup v2 folder a `/proc/<pid>/cgroup` text names, under `mount`.
fn unified_cgroup(proc_cgroup: &str, mount: &Path) -> Option<PathBuf> {
    let path = proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?
        .trim();
    Some(mount.join(path.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_line_names_the_cgroup_under_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let cases = [
            ("0::/\n", Some("/sys/fs/cgroup/unified/")),
            (
                "12:pids:/user.slice\n1:name=systemd:/x\n0::/shunt/pods\n",
                Some("/sys/fs/cgroup/unified/shunt/pods"),
            ),
            ("0::/a b\n", Some("/sys/fs/cgroup/unified/a b")),
            ("12:pids:/user.slice\n", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                unified_cgroup(text, mount),
                expected.map(PathBuf::from),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_proxy_outside_the_capture_cgroup_is_refused_and_told_what_to_change() {
        let requirement = CgroupRequirement {
            cgroup: "/cg/pods".into(),
            cgroup2_mount: "/cg".into(),
        };
        let cases = [
            ("/cg/pods", true),
            ("/cg/pods/pod-a", true),
            ("/cg/pods-other", false),
            ("/cg", false),
            ("/cg/system.slice/proxy", false),
        ];
        for (proxy, allowed) in cases {
            let checked = requirement.check_path(7, Path::new(proxy));
            assert_eq!(checked.is_ok(), allowed, "{proxy}: {checked:?}");
            if let Err(e) = checked {
                let message = e.to_string();
                for needle in [
                    "pid 7",
                    proxy,
                    "/cg/pods (--cgroup)",
                    "/cg/pods/cgroup.procs",
                ] {
                    assert!(message.contains(needle), "{needle} missing: {message}");
                }
            }
        }
    }

    #[test]
    fn an_unreadable_proc_entry_fails_closed() {
        let requirement = CgroupRequirement {
            cgroup: "/cg/pods".into(),
            cgroup2_mount: "/cg".into(),
        };
        // No process has pid u32::MAX.
        let err = requirement.check(u32::MAX).unwrap_err();
        assert!(matches!(err, Error::Unknown { .. }), "{err}");
    }
}
