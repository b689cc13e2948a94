//! The certificates of the identities a proxy serves, fetched when an identity is first
//! tracked and rotated at half-life, as ztunnel's `SecretManager`.
//!
//! One task per tracked identity: fetch, then sleep until [`WorkloadCert::rotation_due`]
//! (waking at least every [`ManagerConfig::max_sleep`] to re-read the clock, which may have
//! jumped), fetch again. A failed fetch keeps the certificate held (while it is valid,
//! [`CertManager::certificate`] still returns it) and is retried with exponential backoff.
//! A rotation replaces the `Arc` the manager holds; connections that took the old one keep
//! it for as long as they live.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use shunt_mesh::spiffe::SpiffeId;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio::task::JoinHandle;

// The status types are shunt-api's, so shuntctl reads them without this crate.
pub use shunt_api::certs::{CertState, CertStatus, ChainCertStatus};

use crate::provider::CertProvider;
use crate::tls::CurrentCert;
use crate::workload::WorkloadCert;

/// How the manager paces its fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagerConfig {
    /// The wait after a first failure (0.5 s); doubled after each further one.
    pub initial_backoff: Duration,
    /// The longest wait between retries (30 s).
    pub max_backoff: Duration,
    /// The longest sleep before the clock is read again (60 s).
    pub max_sleep: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_sleep: Duration::from_secs(60),
        }
    }
}

struct Entry {
    /// How many `track` calls are not yet matched by an `untrack` (pods sharing a service
    /// account share the certificate).
    refs: usize,
    cert: Option<Arc<WorkloadCert>>,
    last_error: Option<String>,
    worker: JoinHandle<()>,
}

struct Shared {
    provider: Arc<dyn CertProvider>,
    config: ManagerConfig,
    /// Read at every handshake (`certificate`), written when a certificate or an identity
    /// comes or goes.
    entries: RwLock<HashMap<SpiffeId, Entry>>,
    generation: watch::Sender<u64>,
}

impl Shared {
    fn entries(&self) -> RwLockReadGuard<'_, HashMap<SpiffeId, Entry>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn entries_mut(&self) -> RwLockWriteGuard<'_, HashMap<SpiffeId, Entry>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// The certificate held for `id`, if valid now.
    fn certificate(&self, id: &SpiffeId) -> Option<Arc<WorkloadCert>> {
        let entries = self.entries();
        let cert = entries.get(id)?.cert.as_ref()?;
        cert.is_valid_at(SystemTime::now())
            .then(|| Arc::clone(cert))
    }
}

/// What the proxy holds: the current certificate of each identity it serves.
///
/// Cloning is cheap and every clone is the same manager. Its tasks stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

/// Owns the workers: dropping the last [`CertManager`] stops them (they hold only the
/// [`Shared`] state, never the manager).
struct Inner {
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for entry in self.shared.entries().values() {
            entry.worker.abort();
        }
    }
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManager")
            .field("identities", &self.inner.shared.entries().len())
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager fetching from `provider`.
    #[must_use]
    pub fn new(provider: Arc<dyn CertProvider>, config: ManagerConfig) -> Self {
        let (generation, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    provider,
                    config,
                    entries: RwLock::new(HashMap::new()),
                    generation,
                }),
            }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Starts keeping a certificate for `id` (a pod with that identity arrived); the first
    /// fetch starts at once. Counted: each `track` needs its `untrack`. Must be called inside
    /// a Tokio runtime.
    pub fn track(&self, id: SpiffeId) {
        let shared = self.shared();
        let mut entries = shared.entries_mut();
        if let Some(entry) = entries.get_mut(&id) {
            entry.refs += 1;
            return;
        }
        let worker = tokio::spawn(run(Arc::clone(shared), id.clone()));
        entries.insert(
            id,
            Entry {
                refs: 1,
                cert: None,
                last_error: None,
                worker,
            },
        );
    }

    /// Undoes one [`track`](Self::track); with the last one the identity is forgotten and its
    /// task stopped. Connections holding its certificate keep it.
    pub fn untrack(&self, id: &SpiffeId) {
        let mut entries = self.shared().entries_mut();
        let Some(entry) = entries.get_mut(id) else {
            return;
        };
        entry.refs -= 1;
        if entry.refs == 0
            && let Some(entry) = entries.remove(id)
        {
            entry.worker.abort();
        }
    }

    /// The identities tracked now.
    #[must_use]
    pub fn tracked(&self) -> Vec<SpiffeId> {
        let mut ids: Vec<_> = self.shared().entries().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The certificate for `id`, only if one valid now is held.
    #[must_use]
    pub fn certificate(&self, id: &SpiffeId) -> Option<Arc<WorkloadCert>> {
        self.shared().certificate(id)
    }

    /// The current certificate of `id` at each call, for [`tls::server_config`]: one per
    /// destination pod, kept for the listener's life, rotations included.
    ///
    /// [`tls::server_config`]: crate::tls::server_config
    #[must_use]
    pub fn server_cert(&self, id: SpiffeId) -> Arc<dyn CurrentCert> {
        Arc::new(ManagedCert {
            shared: Arc::clone(self.shared()),
            id,
        })
    }

    /// A counter that moves whenever a certificate is stored or a fetch fails; tests wait on
    /// it (`wait_for`) instead of sleeping.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared().generation.subscribe()
    }

    /// Every tracked identity's state, sorted by identity.
    #[must_use]
    pub fn status(&self) -> Vec<CertStatus> {
        let now = SystemTime::now();
        let entries = self.shared().entries();
        let mut status: Vec<CertStatus> = entries
            .iter()
            .map(|(id, entry)| {
                cert_status(id, entry.cert.as_deref(), entry.last_error.as_deref(), now)
            })
            .collect();
        status.sort_by(|a, b| a.identity.cmp(&b.identity));
        status
    }
}

fn cert_status(
    id: &SpiffeId,
    cert: Option<&WorkloadCert>,
    last_error: Option<&str>,
    now: SystemTime,
) -> CertStatus {
    let state = match (cert, last_error) {
        (Some(cert), _) if cert.is_valid_at(now) => CertState::Valid,
        (Some(_), _) => CertState::Expired,
        (None, Some(_)) => CertState::Error,
        (None, None) => CertState::Pending,
    };
    CertStatus {
        identity: id.clone(),
        state,
        serial: cert.map(|c| c.serial().to_owned()),
        not_before: cert.map(|c| rfc3339(c.not_before())),
        not_after: cert.map(|c| rfc3339(c.not_after())),
        next_rotation: cert.map(|c| rfc3339(c.rotation_due())),
        chain: cert
            .map(|c| {
                c.chain_info()
                    .iter()
                    .map(|info| ChainCertStatus {
                        subject: info.subject.clone(),
                        issuer: info.issuer.clone(),
                        serial: info.serial.clone(),
                        not_after: rfc3339(info.not_after),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        last_error: last_error.map(str::to_owned),
    }
}

/// RFC 3339, UTC; seconds since the epoch for a time `time` cannot format.
fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| {
            let seconds = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("@{seconds}")
        })
}

/// The certificate one pod's listener presents, looked up at each handshake.
struct ManagedCert {
    shared: Arc<Shared>,
    id: SpiffeId,
}

impl fmt::Debug for ManagedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedCert")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl CurrentCert for ManagedCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.shared
            .certificate(&self.id)
            .map(|cert| cert.certified_key())
    }
}

/// One identity's task: fetch when nothing valid is held or rotation is due, else sleep.
async fn run(shared: Arc<Shared>, id: SpiffeId) {
    let config = shared.config;
    let mut backoff = config.initial_backoff;
    loop {
        let now = SystemTime::now();
        let due = {
            let entries = shared.entries();
            let Some(entry) = entries.get(&id) else {
                return;
            };
            entry
                .cert
                .as_ref()
                .map(|cert| cert.rotation_due().duration_since(now).unwrap_or_default())
        };
        if let Some(wait) = due.filter(|wait| !wait.is_zero()) {
            tokio::time::sleep(wait.min(config.max_sleep)).await;
            continue;
        }

        let fetched = shared.provider.fetch(&id).await;
        let result = match fetched {
            Ok(cert) if cert.identity() == &id => Ok(cert),
            Ok(cert) => Err(format!(
                "the CA issued a certificate for {} instead",
                cert.identity()
            )),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(cert) => {
                let cert = Arc::new(cert);
                tracing::info!(
                    identity = %id,
                    serial = cert.serial(),
                    not_after = %rfc3339(cert.not_after()),
                    "certificate fetched"
                );
                let rotation_due = cert.rotation_due();
                {
                    let mut entries = shared.entries_mut();
                    let Some(entry) = entries.get_mut(&id) else {
                        return;
                    };
                    entry.cert = Some(cert);
                    entry.last_error = None;
                }
                shared.bump();
                backoff = config.initial_backoff;
                // A certificate already due (a very short lifetime, or clocks apart) must not
                // make this loop spin.
                if rotation_due <= SystemTime::now() {
                    tokio::time::sleep(config.initial_backoff).await;
                }
            }
            Err(error) => {
                let still_valid = shared.certificate(&id).is_some();
                tracing::warn!(
                    identity = %id,
                    error = %error,
                    retry_in = ?backoff,
                    still_valid,
                    "fetching a certificate failed; keeping the one held while it is valid"
                );
                {
                    let mut entries = shared.entries_mut();
                    let Some(entry) = entries.get_mut(&id) else {
                        return;
                    };
                    entry.last_error = Some(error);
                }
                shared.bump();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests;
