//! The node proxy's workload identities: a certificate for each identity of a pod it serves
//! (never another node's), kept by `shunt_identity`'s [`CertManager`] from a
//! [`CertProvider`] (the CA client, or a CA in process for tests), and the rustls configs
//! HBONE needs, built from them ([`TlsProvider`]).
//!
//! A pod whose identity has no valid certificate can neither send nor receive mTLS: a tunnel
//! or a handshake waits for it up to half the connect timeout (a pod's first connections,
//! made before the CA has answered), then fails with `no_certificate`, until the CA answers.
//! `shuntctl certs` (`/debug/certs`) says why.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use shunt_identity::manager::{CertManager, CertStatus, ManagerConfig};
use shunt_identity::provider::CertProvider;
use shunt_identity::tls;
use shunt_identity::trust::TrustBundle;
use shunt_mesh::spiffe::SpiffeId;

use crate::hbone::{HboneError, TlsProvider};
use crate::socket::BoxFuture;

/// The certificates of the identities this proxy serves, and the trust they are checked by.
pub struct Identities {
    manager: CertManager,
    roots: TrustBundle,
    /// One server config per identity: it resolves the current certificate at each
    /// handshake, so rotation never needs a new one.
    servers: Mutex<HashMap<SpiffeId, Arc<rustls::ServerConfig>>>,
}

impl Identities {
    /// Identities from `provider`, verified against `roots`. Must be called inside a Tokio
    /// runtime (the manager's tasks).
    #[must_use]
    pub fn new(provider: Arc<dyn CertProvider>, roots: TrustBundle) -> Self {
        Self {
            manager: CertManager::new(provider, ManagerConfig::default()),
            roots,
            servers: Mutex::default(),
        }
    }

    /// The manager, for tests that wait on its rotations.
    #[must_use]
    pub fn manager(&self) -> &CertManager {
        &self.manager
    }

    /// The mesh's roots every workload certificate chains to.
    #[must_use]
    pub fn roots(&self) -> &TrustBundle {
        &self.roots
    }

    /// When each identity's current certificate expires (identities without a valid one are
    /// left out), for the expiry gauge.
    #[must_use]
    pub fn expiries(&self) -> Vec<(String, std::time::SystemTime)> {
        self.manager
            .tracked()
            .into_iter()
            .filter_map(|id| {
                let cert = self.manager.certificate(&id)?;
                Some((id.to_string(), cert.not_after()))
            })
            .collect()
    }

    /// Every identity's certificate state, for `/debug/certs` and `shuntctl certs`.
    #[must_use]
    pub fn status(&self) -> Vec<CertStatus> {
        self.manager.status()
    }

    fn no_certificate(&self, id: &SpiffeId) -> HboneError {
        let reason = self
            .manager
            .status()
            .into_iter()
            .find(|status| status.identity == *id)
            .map_or_else(
                || "this proxy serves no pod with that identity".to_owned(),
                |status| match status.last_error {
                    Some(error) => format!("the CA did not issue one: {error}"),
                    None => format!("its certificate is {:?}", status.state).to_lowercase(),
                },
            );
        HboneError::NoCertificate {
            identity: id.to_string(),
            reason,
        }
    }
}

impl TlsProvider for Identities {
    fn client_config(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
    ) -> Result<Arc<rustls::ClientConfig>, HboneError> {
        let cert = self
            .manager
            .certificate(source)
            .ok_or_else(|| self.no_certificate(source))?;
        // Per connection, not cached: it holds the source's certificate of the moment, and
        // pooled connections make this rare.
        tls::client_config(&cert, destination.clone(), &self.roots)
            .map(Arc::new)
            .map_err(|error| HboneError::Config(error.to_string()))
    }

    fn server_config(&self, identity: &SpiffeId) -> Result<Arc<rustls::ServerConfig>, HboneError> {
        if self.manager.certificate(identity).is_none() {
            return Err(self.no_certificate(identity));
        }
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = servers.get(identity) {
            return Ok(config.clone());
        }
        let config = tls::server_config(
            self.manager.server_cert(identity.clone()),
            &self.roots,
            identity.trust_domain(),
        )
        .map(Arc::new)
        .map_err(|error| HboneError::Config(error.to_string()))?;
        servers.insert(identity.clone(), config.clone());
        Ok(config)
    }

    fn peer_identity(&self, connection: &rustls::CommonState) -> Option<SpiffeId> {
        tls::peer_identity(connection)
    }

    fn serve(&self, identity: &SpiffeId) {
        self.manager.track(identity.clone());
    }

    fn certificate_ready<'a>(&'a self, identity: &'a SpiffeId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Subscribed before the check, so a certificate stored in between is not missed.
            let mut changes = self.manager.subscribe();
            while self.manager.certificate(identity).is_none()
                && self.manager.tracked().contains(identity)
            {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    fn unserve(&self, identity: &SpiffeId) {
        self.manager.untrack(identity);
        if !self.manager.tracked().contains(identity) {
            self.servers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shunt_identity::ca::{CaSigner, SignerOptions};
    use shunt_identity::provider::{CertProvider, FetchFuture, InProcessCa};
    use tokio::sync::Semaphore;

    use super::*;

    /// Issues only once the test lets it, so "before the CA has answered" lasts as long as
    /// the test needs.
    struct HeldCa {
        ca: InProcessCa,
        answers: Semaphore,
    }

    impl CertProvider for HeldCa {
        fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a> {
            Box::pin(async move {
                let _answer = self.answers.acquire().await;
                self.ca.issue(id)
            })
        }
    }

    fn identities() -> (Arc<HeldCa>, Identities, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let signer =
            CaSigner::self_signed(dir.path(), "cluster.local", SignerOptions::default()).unwrap();
        let roots = signer.trust_bundle().clone();
        let ca = Arc::new(HeldCa {
            ca: InProcessCa::new(Arc::new(signer), Duration::ZERO),
            answers: Semaphore::new(0),
        });
        let identities = Identities::new(ca.clone(), roots);
        (ca, identities, dir)
    }

    fn id(sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/shop/sa/{sa}")
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_served_identity_waits_for_its_first_certificate() {
        let (ca, identities, _dir) = identities();
        let a = id("a");
        identities.serve(&a);
        let early =
            tokio::time::timeout(Duration::from_millis(200), identities.certificate_ready(&a))
                .await;
        assert!(early.is_err(), "ready before the CA answered");
        assert!(identities.client_config(&a, &id("b")).is_err());

        let waiting = identities.certificate_ready(&a);
        ca.answers.add_permits(1);
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the certificate arrived, and the wait ended");
        identities
            .client_config(&a, &id("b"))
            .expect("a's certificate");
    }

    #[tokio::test]
    async fn an_identity_not_served_here_does_not_wait() {
        let (_ca, identities, _dir) = identities();
        tokio::time::timeout(
            Duration::from_secs(5),
            identities.certificate_ready(&id("elsewhere")),
        )
        .await
        .expect("nothing to wait for");
        let error = identities
            .client_config(&id("elsewhere"), &id("b"))
            .expect_err("no certificate");
        assert!(
            error
                .to_string()
                .contains("serves no pod with that identity"),
            "{error}"
        );
    }
}
