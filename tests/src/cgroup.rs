//! cgroup2 folders for a node's processes.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mounts;
use crate::wait::{self, Check};

/// How long the processes of a cgroup get to die after `cgroup.kill`.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Mounts(#[from] mounts::Error),
    #[error("cgroup {}: {action} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("cgroup {}: processes still there after cgroup.kill: {0}", path.display())]
    NotEmpty { path: PathBuf, source: wait::Error },
}

/// One cgroup2 folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// `<cgroup2 mount>/<name>`, created if missing.
    pub fn create(name: &str) -> Result<Self, Error> {
        let cgroup = Self::at(mounts::cgroup2()?.join(name));
        match std::fs::create_dir(&cgroup.path) {
            Ok(()) => Ok(cgroup),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(cgroup),
            Err(source) => Err(cgroup.io_error("mkdir", source)),
        }
    }

    /// `<cgroup2 mount>/<name>`, whether it exists or not (for sweeping).
    pub fn named(name: &str) -> Result<Self, Error> {
        Ok(Self::at(mounts::cgroup2()?.join(name)))
    }

    #[must_use]
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a process writes its pid (or "0", for itself) to, to move in.
    #[must_use]
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    #[must_use]
    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// The pids in this cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        let procs = std::fs::read_to_string(self.procs_file())
            .map_err(|e| self.io_error("reading cgroup.procs", e))?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// SIGKILLs every process in the cgroup and waits until it is empty.
    pub fn kill_all(&self) -> Result<(), Error> {
        if !self.exists() || self.pids()?.is_empty() {
            return Ok(());
        }
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() {
            std::fs::write(&kill_file, "1").map_err(|e| self.io_error("writing cgroup.kill", e))?;
        } else {
            // Kernels before 5.14 have no cgroup.kill.
            for pid in self.pids()? {
                let _gone = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        wait::until("cgroup to empty", KILL_TIMEOUT, || match self.pids() {
            Ok(pids) if pids.is_empty() => Check::Done(()),
            Ok(pids) => Check::NotYet(format!("pids {pids:?}")),
            Err(e) => Check::Abort(e.to_string()),
        })
        .map_err(|source| Error::NotEmpty {
            path: self.path.clone(),
            source,
        })
    }

    /// Kills what is left inside and removes the folder (gone already is fine).
    pub fn remove(&self) -> Result<(), Error> {
        if !self.exists() {
            return Ok(());
        }
        self.kill_all()?;
        // An exited process leaves the cgroup a moment after it stops being listed.
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(self.io_error(
            "rmdir",
            last.unwrap_or_else(|| std::io::Error::other("rmdir kept failing")),
        ))
    }

    /// `<this cgroup>/<relative>` and the folders on the way, created if missing.
    pub fn create_nested(&self, relative: &str) -> Result<Self, Error> {
        let cgroup = Self::at(self.path.join(relative));
        std::fs::create_dir_all(&cgroup.path).map_err(|e| cgroup.io_error("mkdir -p", e))?;
        Ok(cgroup)
    }

    /// [`Cgroup::remove`] for this folder and every folder below it, deepest first.
    pub fn remove_tree(&self) -> Result<(), Error> {
        if !self.exists() {
            return Ok(());
        }
        let children = std::fs::read_dir(&self.path).map_err(|e| self.io_error("readdir", e))?;
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                Self::at(child.path()).remove_tree()?;
            }
        }
        self.remove()
    }

    fn io_error(&self, action: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }
}
