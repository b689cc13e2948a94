//! The loaded capture, shared by the reconciler (pod entries) and the admin API (status, map
//! dumps, uninstall) until it is uninstalled.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::capture::{self, Capture, CaptureOptions};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("capture was uninstalled; the agent is stopping")]
    Uninstalled,
    #[error(transparent)]
    Capture(#[from] capture::Error),
}

#[derive(Clone)]
pub struct SharedCapture {
    /// `None` once uninstalled, so that nothing re-creates a pin after `uninstall` removed them.
    inner: Arc<Mutex<Option<Capture>>>,
}

impl SharedCapture {
    #[must_use]
    pub fn new(capture: Capture) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Some(capture))),
        }
    }

    /// A handle with nothing installed, as after an uninstall: for tests of its users.
    #[cfg(test)]
    pub(crate) fn uninstalled() -> Self {
        Self {
            inner: Arc::new(Mutex::new(None)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Capture>> {
        // A panic while holding the lock leaves the maps as consistent as the kernel made
        // them; the next caller can carry on.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the capture; calls are short map updates, so a plain mutex is enough.
    pub fn with<R>(
        &self,
        f: impl FnOnce(&mut Capture) -> Result<R, capture::Error>,
    ) -> Result<R, Error> {
        let mut guard = self.lock();
        let capture = guard.as_mut().ok_or(Error::Uninstalled)?;
        Ok(f(capture)?)
    }

    /// Detaches and unpins everything of `options.instance`. Afterwards every call fails with
    /// [`Error::Uninstalled`]. On failure the capture stays usable, as it was.
    pub fn uninstall(&self, options: &CaptureOptions) -> Result<Vec<PathBuf>, Error> {
        let mut guard = self.lock();
        let capture = guard.take().ok_or(Error::Uninstalled)?;
        match Capture::uninstall(options) {
            Ok(removed) => Ok(removed),
            Err(e) => {
                *guard = Some(capture);
                Err(e.into())
            }
        }
    }
}
