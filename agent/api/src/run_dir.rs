//! The agent's run directory, `/run/shunt/<instance>` by default: the control socket the proxy
//! dials, the admin socket `shuntctl` talks to, and the socket the CNI plugin asks.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

pub const DEFAULT_ROOT: &str = "/run/shunt";
pub const DEFAULT_INSTANCE: &str = "default";
const CONTROL_SOCKET: &str = "control.sock";
const ADMIN_SOCKET: &str = "admin.sock";
const CNI_SOCKET: &str = "cni.sock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("instance name {0:?} cannot name a folder: use letters, digits, '-', '_', '.'")]
    InvalidInstance(String),
    #[error("cannot create the run directory {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error(
        "another shunt-agent is already listening on {}: stop it, or give this one another \
         --instance or --run-dir",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; remove it or choose another --run-dir", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot remove {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `/run/shunt/<instance>`.
    pub fn for_instance(instance: &str) -> Result<Self, Error> {
        let safe = !instance.is_empty()
            && instance != "."
            && instance != ".."
            && instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe {
            return Err(Error::InvalidInstance(instance.to_owned()));
        }
        Ok(Self::new(Path::new(DEFAULT_ROOT).join(instance)))
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[must_use]
    pub fn control_socket(&self) -> PathBuf {
        self.path.join(CONTROL_SOCKET)
    }

    #[must_use]
    pub fn admin_socket(&self) -> PathBuf {
        self.path.join(ADMIN_SOCKET)
    }

    /// The socket `shunt-cni` asks (`shunt_api::cni`).
    #[must_use]
    pub fn cni_socket(&self) -> PathBuf {
        self.path.join(CNI_SOCKET)
    }

    /// Creates the directory (mode 0700: only root talks to the agent).
    pub fn create(&self) -> Result<(), Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| Error::Create {
                path: self.path.clone(),
                source,
            })
    }

    /// Removes the sockets, returning those that were there.
    pub fn remove_sockets(&self) -> Result<Vec<PathBuf>, Error> {
        let mut removed = Vec::new();
        for path in [
            self.control_socket(),
            self.admin_socket(),
            self.cni_socket(),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Remove { path, source }),
            }
        }
        Ok(removed)
    }
}

/// Listens on `path` (mode 0600). A socket file left by an agent that died is replaced; one
/// that a live agent still answers on is not.
pub fn bind_socket(path: &Path) -> Result<UnixListener, Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| Error::Remove {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(Error::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Bind {
                path: path.to_owned(),
                source,
            });
        }
    }
    let bind_error = |source| Error::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_must_be_folder_names() {
        for (instance, ok) in [
            ("default", true),
            ("node-1.test_a", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a b", false),
        ] {
            assert_eq!(RunDir::for_instance(instance).is_ok(), ok, "{instance:?}");
        }
        let run_dir = RunDir::for_instance("default").unwrap();
        assert_eq!(
            run_dir.admin_socket(),
            Path::new("/run/shunt/default/admin.sock")
        );
        assert_eq!(
            run_dir.control_socket(),
            Path::new("/run/shunt/default/control.sock")
        );
    }

    #[tokio::test]
    async fn sockets_replace_stale_files_but_not_live_listeners_or_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::new(dir.path().join("run"));
        run_dir.create().unwrap();
        let path = run_dir.control_socket();

        let live = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind_socket(&path), Err(Error::InUse { .. })));

        drop(live); // The file stays, as after a crash.
        assert!(path.exists());
        let _again = bind_socket(&path).unwrap();

        let admin = run_dir.admin_socket();
        std::fs::write(&admin, "not a socket").unwrap();
        assert!(matches!(bind_socket(&admin), Err(Error::NotASocket { .. })));
        std::fs::remove_file(&admin).unwrap();

        assert_eq!(run_dir.remove_sockets().unwrap(), vec![path.clone()]);
        assert_eq!(run_dir.remove_sockets().unwrap(), Vec::<PathBuf>::new());
    }
}
