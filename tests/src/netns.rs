//! Named network namespaces and links, through iproute2's `ip`.
//!
//! `ip netns add` bind-mounts the namespace at `/run/netns/<name>`, which is what the agent's
//! `shunt.io/netns` annotation and the harness's `setns` open. Only `ip -n <name>` is used to
//! configure inside a namespace: unlike `ip netns exec` it does not remount /sys.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Concurrent `ip netns add` of the first namespaces on a machine race to make /run/netns a
/// shared mount; tests in one process take turns.
static NETNS_CHANGES: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not run `ip {args}`: {source} (is iproute2 installed? `cargo xtask setup`)")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("`ip {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("could not list {NETNS_DIR}: {0}")]
    List(std::io::Error),
    #[error("could not enter netns {}: {source}", path.display())]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not set {key} = {value} in netns {netns}: {source}")]
    Sysctl {
        netns: String,
        key: String,
        value: String,
        source: std::io::Error,
    },
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<(), Error> {
    let joined = args.join(" ");
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            args: joined.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            args: joined,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// A named network namespace. Dropping it does not delete it: `delete` does, explicitly, so
/// that the owner decides the order of cleanup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub fn create(name: &str) -> Result<Self, Error> {
        {
            let _turn = NETNS_CHANGES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ip(&["netns", "add", name])?;
        }
        let netns = Self {
            name: name.to_owned(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// Runs `ip -n <name> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<(), Error> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Deletes the namespace (it lives on while a process or socket still holds it).
    pub fn delete(&self) -> Result<(), Error> {
        delete(&self.name)
    }

    /// Sets the sysctl `key` (`net.ipv4.ip_forward`) inside the namespace: `/proc/sys/net` is
    /// the netns of the thread that opens it, so a thread of ours enters it for the write.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value_line = format!("{value}\n");
        in_netns(&self.path(), move || std::fs::write(&file, value_line))?.map_err(|source| {
            Error::Sysctl {
                netns: self.name.clone(),
                key: key.to_owned(),
                value: value.to_owned(),
                source,
            }
        })
    }
}

/// Runs `f` on a thread of its own inside the netns at `path` (the caller's threads stay
/// where they are), and returns what it returned.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let enter_error = |source| Error::Enter {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(enter_error)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| enter_error(errno.into()))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `/run/netns/<name>`.
#[must_use]
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Deletes a namespace by name.
pub fn delete(name: &str) -> Result<(), Error> {
    let _turn = NETNS_CHANGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ip(&["netns", "delete", name])
}

/// Every named namespace.
pub fn list() -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::List(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::List)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}
