//! Kubernetes mode's source (`shunt-agent --source kube`): watches of the API server
//! ([`resources::Watch`]), whose objects go through local mode's loader into the same
//! [`Snapshot`] local mode builds.
//!
//! - Each watch is kube-rs's watcher: paginated initial lists, a relist after 410 Gone, and
//!   the default backoff (0.8 s doubling to 30 s) after any other error.
//! - Nothing is published before every watch has listed once ([`KubeSource::listed`]), and a
//!   watch's objects change only at whole steps ([`state`]): never a half-listed state.
//! - The Secrets watched are those the gateways of this node name, one watch each, started
//!   and stopped as the config changes.
//! - An object the loader rejects gets a Kubernetes Event ([`events`]).

mod error;
pub mod events;
pub mod resources;
mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt as _;
use kube::Api;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::Error;
use resources::Watch;
pub use state::SOURCE_NAME;
use state::State;

use crate::config::{LoadOptions, Snapshot};
use crate::source::local_dir::watch::log_changes;

/// Events waiting for the source's loop; the watchers wait when it is full.
const EVENTS: usize = 1024;
/// kube-rs's default backoff's longest wait.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);
/// kube-rs's own default page size for initial lists.
pub const DEFAULT_PAGE_SIZE: u32 = 500;

/// A client for `kubeconfig`, else the in-cluster config, else the default kubeconfig.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| Error::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    kube::Client::try_from(config).map_err(Error::Client)
}

/// An event of a watch, and the resource (the version, for the Istio kinds) it was watched at.
type WatchEvent = (
    Watch,
    Arc<ApiResource>,
    Result<watcher::Event<DynamicObject>, watcher::Error>,
);

/// The watches and what they have listed.
pub struct KubeSource {
    client: kube::Client,
    options: LoadOptions,
    page_size: u32,
    state: State,
    /// Each watch's task, aborted when the watch is dropped.
    tasks: HashMap<Watch, JoinHandle<()>>,
    events_tx: mpsc::Sender<WatchEvent>,
    events: mpsc::Receiver<WatchEvent>,
    /// Kubernetes Events on the objects the loader rejects.
    reporter: events::Reporter,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

impl KubeSource {
    /// Starts every watch that does not depend on the config; `page_size` is the initial
    /// lists' `limit` ([`DEFAULT_PAGE_SIZE`]).
    #[must_use]
    pub fn start(client: kube::Client, options: LoadOptions, page_size: u32) -> Self {
        Self::start_watches(client, options, page_size, Watch::base())
    }

    /// Starts `watches` only (e.g. [`Watch::ca`]); gateway Secrets are still watched as the
    /// config names them, which without Gateway watches is never.
    #[must_use]
    pub fn start_watches(
        client: kube::Client,
        options: LoadOptions,
        page_size: u32,
        watches: Vec<Watch>,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(EVENTS);
        let reporter = events::Reporter::start(client.clone(), options.node_name.clone());
        let mut source = Self {
            reporter,
            client,
            options,
            page_size,
            state: State::default(),
            tasks: HashMap::new(),
            events_tx,
            events,
        };
        for watch in watches {
            source.start_watch(watch);
        }
        source
    }

    /// Waits until every watch, those of the first snapshot's gateway Secrets included, has
    /// listed once, and returns that first complete snapshot. Errors only delay it (they are
    /// logged, and retried with backoff).
    pub async fn listed(&mut self) -> Snapshot {
        loop {
            if self.state.listed(|_| true) {
                let snapshot = self.state.snapshot(&self.options);
                if !self.sync_secrets(&snapshot) {
                    return snapshot;
                }
                continue; // New Secret watches: wait for them too.
            }
            self.next_batch().await;
        }
    }

    /// Publishes a new snapshot to `snapshots` after each batch of changes, until `shutdown`.
    pub fn spawn(
        mut self,
        snapshots: watch::Sender<Arc<Snapshot>>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            // The first snapshot's errors, from the state it was built of.
            self.report(&snapshots.borrow().errors);
            loop {
                let changed = tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = self.next_batch() => changed,
                };
                // A Secret watch added since is not waited for: the gateway's Secret comes in
                // a later snapshot, as in a cluster where it is created after the Gateway.
                if !changed
                    || !self
                        .state
                        .listed(|watch| !matches!(watch, Watch::Secret { .. }))
                {
                    continue;
                }
                let snapshot = self.state.snapshot(&self.options);
                self.sync_secrets(&snapshot);
                self.report(&snapshot.errors);
                let previous = Arc::clone(&snapshots.borrow());
                log_changes(Some(&previous), &snapshot);
                if *previous != snapshot {
                    snapshots.send_replace(Arc::new(snapshot));
                }
            }
        })
    }

    /// An Event on each object of `errors` not reported yet.
    fn report(&mut self, errors: &[shunt_api::config::LoadError]) {
        let state = &self.state;
        self.reporter.report(errors, |error| state.regarding(error));
    }

    /// Applies the next event and every one already waiting; true when objects changed.
    async fn next_batch(&mut self) -> bool {
        let Some(first) = self.events.recv().await else {
            return false; // Cannot happen: `self` holds a sender.
        };
        let mut changed = self.apply(first);
        while let Ok(event) = self.events.try_recv() {
            changed |= self.apply(event);
        }
        changed
    }

    fn apply(&mut self, (watch, api, event): WatchEvent) -> bool {
        let optional = watch.resource(&self.options.node_name).optional;
        self.state.apply(&watch, &api, optional, event)
    }

    /// Watches exactly the Secrets that `snapshot`'s gateways on this node name; true when a
    /// watch was added.
    fn sync_secrets(&mut self, snapshot: &Snapshot) -> bool {
        let wanted: Vec<Watch> = snapshot
            .gateway_secret_refs()
            .into_iter()
            .map(|(namespace, name)| Watch::Secret { namespace, name })
            .collect();
        let unwanted: Vec<Watch> = self
            .tasks
            .keys()
            .filter(|watch| matches!(watch, Watch::Secret { .. }) && !wanted.contains(watch))
            .cloned()
            .collect();
        for watch in unwanted {
            if let Some(task) = self.tasks.remove(&watch) {
                task.abort();
            }
            self.state.remove(&watch);
        }
        let mut added = false;
        for watch in wanted {
            if !self.tasks.contains_key(&watch) {
                self.start_watch(watch);
                added = true;
            }
        }
        added
    }

    fn start_watch(&mut self, watch: Watch) {
        let resource = watch.resource(&self.options.node_name);
        let client = self.client.clone();
        let namespace = resource.namespace.clone();
        let api_of = move |api: &ApiResource| -> Api<DynamicObject> {
            match &namespace {
                Some(namespace) => Api::namespaced_with(client.clone(), namespace, api),
                None => Api::all_with(client.clone(), api),
            }
        };
        // Newest first: the first version the API server serves is the one watched.
        let versions: Vec<Arc<ApiResource>> = std::iter::once(resource.api)
            .chain(resource.older)
            .map(Arc::new)
            .collect();
        let mut config = watcher::Config::default().page_size(self.page_size);
        if let Some(fields) = &resource.fields {
            config = config.fields(fields);
        }
        self.state.add(watch.clone());
        let events = self.events_tx.clone();
        let task_watch = watch.clone();
        let task = tokio::spawn(async move {
            // kube-rs's default backoff: 0.8 s, doubling to 30 s, reset after 120 s of health.
            // Applied here rather than with `default_backoff()`, which resets it on every
            // `Ok` item, and the watcher yields `Ok(Init)` before each list attempt: a list
            // that keeps failing would then be retried every 0.8 s forever.
            let mut backoff = watcher::DefaultBackoff::default();
            let mut at = 0;
            let mut stream = watcher(api_of(&versions[at]), config.clone()).boxed();
            while let Some(event) = stream.next().await {
                let unserved = matches!(&event, Err(e) if state::not_found(e));
                if unserved && at + 1 < versions.len() {
                    // An older release of the CRD: try the next version at once.
                    tracing::debug!("{} is not served", versions[at].api_version);
                    at += 1;
                    stream = watcher(api_of(&versions[at]), config.clone()).boxed();
                    continue;
                }
                let delay = match &event {
                    // It never ends; should it, keep to its longest wait.
                    Err(_) => Some(backoff.next().unwrap_or(MAX_BACKOFF)),
                    Ok(watcher::Event::Init) => None,
                    Ok(_) => {
                        backoff.reset();
                        None
                    }
                };
                let api = Arc::clone(&versions[at]);
                if at > 0 && matches!(event, Ok(watcher::Event::InitDone)) {
                    tracing::info!(
                        "{} {}: listed at {}, the newest version the API server serves",
                        api.group,
                        api.plural,
                        api.api_version
                    );
                }
                if events.send((task_watch.clone(), api, event)).await.is_err() {
                    return;
                }
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                if unserved && at > 0 {
                    // No version is served (no CRD): when one comes, the newest is wanted.
                    at = 0;
                    stream = watcher(api_of(&versions[at]), config.clone()).boxed();
                }
            }
        });
        self.tasks.insert(watch, task);
    }
}
