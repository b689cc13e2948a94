//! Where the binaries under test are: the workspace's `target/debug` unless told otherwise.

use std::path::{Path, PathBuf};

/// Overrides the directory holding `shunt-agent`, `shunt-proxy`, `shuntctl`, `shunt-testpod`,
/// `shunt-httppod`, `shunt-hbonepeer`.
pub const BIN_DIR_ENV: &str = "SHUNT_BIN_DIR";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{name} not found at {}: run `cargo xtask test` (or cargo +1.99.0 build --workspace) \
         first, or point {BIN_DIR_ENV} at the directory holding it",
        path.display()
    )]
    Missing { name: &'static str, path: PathBuf },
}

/// The binaries a node runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
    testpod: Option<PathBuf>,
    httppod: Option<PathBuf>,
    hbonepeer: Option<PathBuf>,
}

impl Binaries {
    /// `$SHUNT_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else `<workspace>/target/debug`.
    #[must_use]
    pub fn from_env() -> Self {
        let dir = std::env::var_os(BIN_DIR_ENV).map_or_else(
            || {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map_or_else(
                        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
                        PathBuf::from,
                    )
                    .join("debug")
            },
            PathBuf::from,
        );
        Self::in_dir(dir)
    }

    /// All binaries from `dir` (e.g. `target/release` for the demo).
    #[must_use]
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            testpod: None,
            httppod: None,
            hbonepeer: None,
        }
    }

    /// Takes `shunt-testpod` from `path` instead (an integration test has cargo's fresh build
    /// in `CARGO_BIN_EXE_shunt-testpod`).
    #[must_use]
    pub fn with_testpod(mut self, path: impl Into<PathBuf>) -> Self {
        self.testpod = Some(path.into());
        self
    }

    /// Takes `shunt-httppod` from `path` instead. (It is another package's binary, so the
    /// tests of `shunt-tests` find it in the target dir: `cargo +1.99.0 build --workspace`.)
    #[must_use]
    pub fn with_httppod(mut self, path: impl Into<PathBuf>) -> Self {
        self.httppod = Some(path.into());
        self
    }

    /// Takes `shunt-hbonepeer` from `path` instead (another package's binary, like
    /// `shunt-httppod`).
    #[must_use]
    pub fn with_hbonepeer(mut self, path: impl Into<PathBuf>) -> Self {
        self.hbonepeer = Some(path.into());
        self
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn agent(&self) -> Result<PathBuf, Error> {
        self.existing("shunt-agent", None)
    }

    pub fn proxy(&self) -> Result<PathBuf, Error> {
        self.existing("shunt-proxy", None)
    }

    /// The chained CNI plugin.
    pub fn cni(&self) -> Result<PathBuf, Error> {
        self.existing("shunt-cni", None)
    }

    pub fn shuntctl(&self) -> Result<PathBuf, Error> {
        self.existing("shuntctl", None)
    }

    pub fn testpod(&self) -> Result<PathBuf, Error> {
        self.existing("shunt-testpod", self.testpod.as_deref())
    }

    /// The L7 test pod: HTTP/1.1, h2, gRPC and WebSocket server and clients.
    pub fn httppod(&self) -> Result<PathBuf, Error> {
        self.existing("shunt-httppod", self.httppod.as_deref())
    }

    /// The HBONE test peer: a client or a stand-in server for a node proxy's port 15008.
    pub fn hbonepeer(&self) -> Result<PathBuf, Error> {
        self.existing("shunt-hbonepeer", self.hbonepeer.as_deref())
    }

    /// Fails unless the agent, the proxy and the testpod are all there: the first check of an
    /// end-to-end test, so a missing build fails at once with the command that fixes it.
    pub fn require_all(&self) -> Result<(), Error> {
        self.agent()?;
        self.proxy()?;
        self.testpod()?;
        Ok(())
    }

    fn existing(&self, name: &'static str, explicit: Option<&Path>) -> Result<PathBuf, Error> {
        let path = explicit.map_or_else(|| self.dir.join(name), Path::to_path_buf);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Missing { name, path })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_fix() {
        let binaries = Binaries::in_dir("/nonexistent/shunt");
        let message = binaries.agent().unwrap_err().to_string();
        assert!(
            message.contains("/nonexistent/shunt/shunt-agent"),
            "{message}"
        );
        assert!(message.contains("cargo xtask test"), "{message}");
        assert!(binaries.require_all().is_err());
    }

    #[test]
    fn explicit_testpod_wins_over_the_dir() {
        let here = std::env::current_exe().unwrap();
        let binaries = Binaries::in_dir("/nonexistent").with_testpod(&here);
        assert_eq!(binaries.testpod().unwrap(), here);
        let binaries = binaries.with_httppod(&here).with_hbonepeer(&here);
        assert_eq!(binaries.httppod().unwrap(), here);
        assert_eq!(binaries.hbonepeer().unwrap(), here);
        assert!(Binaries::in_dir("/nonexistent").httppod().is_err());
        assert!(Binaries::in_dir("/nonexistent").hbonepeer().is_err());
    }
}
