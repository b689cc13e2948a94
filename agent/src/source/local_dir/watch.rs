//! Watching the config dir: a change is re-read after a short quiet period, and the dir is also
//! re-read on a slow tick, in case a change slipped past the watcher (e.g. the dir itself was
//! replaced). Each reading is published whole; the reconciler works out what changed, so a
//! reading that changes nothing disturbs nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::config::Snapshot;

/// How long the dir must stay quiet before it is re-read: editors and `kubectl`-style tools
/// write a file in several steps.
const QUIET_PERIOD: Duration = Duration::from_millis(150);
/// A dir that never goes quiet is still re-read this often.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// The fallback re-read.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Starts watching `dir`; every reading goes to `snapshots`. Fails when the watch cannot be set
/// up (the dir is missing, or the inotify limits are reached).
pub fn spawn(
    dir: &Path,
    snapshots: watch::Sender<Arc<Snapshot>>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, Error> {
    let changed = Arc::new(Notify::new());
    let watch_error = |source| Error::Watch {
        dir: dir.to_owned(),
        source,
    };
    let mut watcher = {
        let changed = Arc::clone(&changed);
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reading the files ourselves shows up as access events: not a change.
            if event.is_ok_and(|e| !e.kind.is_access()) {
                changed.notify_one();
            }
        })
        .map_err(watch_error)?
    };
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    let dir = dir.to_owned();
    Ok(tokio::spawn(async move {
        // Dropping the watcher stops it, so it lives as long as this task.
        let _watcher = watcher;
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await; // The first tick is immediate; the dir was just read.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = changed.notified() => {
                    let _ = tokio::time::timeout(MAX_DELAY, quiet(&changed)).await;
                }
                _ = resync.tick() => {}
            }
            reload(&dir, &snapshots).await;
        }
    }))
}

/// Returns once no change has been seen for `QUIET_PERIOD`.
async fn quiet(changed: &Notify) {
    while tokio::time::timeout(QUIET_PERIOD, changed.notified())
        .await
        .is_ok()
    {}
}

async fn reload(dir: &Path, snapshots: &watch::Sender<Arc<Snapshot>>) {
    let path: PathBuf = dir.to_owned();
    let options = snapshots.borrow().options.clone();
    let loaded = match tokio::task::spawn_blocking(move || super::load(&path, &options)).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "reading the config dir failed; keeping the last config");
            return;
        }
    };
    match loaded {
        Ok(snapshot) => {
            let previous = Arc::clone(&snapshots.borrow());
            log_changes(Some(&previous), &snapshot);
            snapshots.send_replace(Arc::new(snapshot));
        }
        Err(e) => tracing::error!(error = %e, "keeping the last config"),
    }
}

/// Logs what a reading changed: new errors (each once), and a summary when the objects changed.
pub fn log_changes(previous: Option<&Snapshot>, snapshot: &Snapshot) {
    if previous.is_some_and(|p| {
        p.config == snapshot.config && p.secrets == snapshot.secrets && p.errors == snapshot.errors
    }) {
        return;
    }
    for error in &snapshot.errors {
        if !previous.is_some_and(|p| p.errors.contains(error)) {
            tracing::warn!("config error: {error}");
        }
    }
    let config = &snapshot.config;
    tracing::info!(
        dir = %snapshot.dir.display(),
        namespaces = config.namespaces.len(),
        pods = config.pods.len(),
        captured = snapshot.pods.iter().filter(|p| p.captured()).count(),
        services = config.services.len(),
        istio_objects = config.istio.len(),
        secrets = snapshot.secrets.len(),
        errors = snapshot.errors.len(),
        "config loaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_in_the_dir_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let initial = crate::source::local_dir::load(dir.path(), &Default::default()).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(initial));
        let shutdown = CancellationToken::new();
        let task = spawn(dir.path(), tx, shutdown.clone()).unwrap();
        std::fs::write(
            dir.path().join("pod.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: fresh}\n",
        )
        .unwrap();
        let published = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                rx.changed().await.unwrap();
                let snapshot = Arc::clone(&rx.borrow_and_update());
                if !snapshot.config.pods.is_empty() {
                    return snapshot;
                }
            }
        })
        .await
        .expect("the new file is picked up well before the resync tick");
        assert_eq!(published.config.pods[0].object.metadata.name, "fresh");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn a_missing_dir_cannot_be_watched() {
        let (tx, _rx) = watch::channel(Arc::new(Snapshot::default()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let err = spawn(
            Path::new("/nonexistent/shunt-config"),
            tx,
            CancellationToken::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot watch the config directory /nonexistent/shunt-config: "),
            "{err}"
        );
    }
}
