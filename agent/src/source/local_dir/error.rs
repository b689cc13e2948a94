//! Errors reading and watching the config directory.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the config directory {}: {source}; check --config-dir", dir.display())]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the config directory {}: {source}", dir.display())]
    Watch { dir: PathBuf, source: notify::Error },
}
