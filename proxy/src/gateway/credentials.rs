//! The gateway credentials the agent sends (`AgentMessage::Credentials`): every Secret named
//! by a gateway server on this node, replaced whole at each message, as Istio's SDS pushes
//! them to a gateway's Envoy.
//!
//! The set carries a version that moves only when some credential actually changed, so the
//! TLS configs built from it ([`super::tls::GatewayTls`]) are rebuilt only then; a config
//! already handed to a connection stays with it, so open connections are never cut by a
//! rotation.

use std::collections::HashMap;
use std::sync::Arc;

use shunt_api::credentials::{CredentialMaterial, GatewayCredential};
use tokio::sync::watch;

use super::metrics::GatewayMetrics;

/// One version of the credentials, keyed by (namespace, name).
#[derive(Debug, Default)]
pub struct Credentials {
    version: u64,
    entries: HashMap<(String, String), Arc<GatewayCredential>>,
}

impl Credentials {
    /// Moves whenever any credential is added, changed or removed.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The Secret `namespace/name`, if the agent sent it.
    #[must_use]
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<GatewayCredential>> {
        self.entries.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// How many credentials the agent sent.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The credentials in force, watchable.
#[derive(Debug)]
pub struct CredentialStore {
    current: watch::Sender<Arc<Credentials>>,
    metrics: Arc<GatewayMetrics>,
}

impl CredentialStore {
    /// An empty store: every Secret-backed server fails its handshakes until the agent sends
    /// its credentials. `metrics` gets the gauge of unusable credentials.
    #[must_use]
    pub fn new(metrics: Arc<GatewayMetrics>) -> Self {
        let (current, _) = watch::channel(Arc::new(Credentials::default()));
        Self { current, metrics }
    }

    /// Replaces every credential with `credentials` (the agent sends them all each time).
    /// Returns whether anything changed; the version moves only then.
    pub fn replace(&self, credentials: Vec<GatewayCredential>) -> bool {
        let entries: HashMap<(String, String), Arc<GatewayCredential>> = credentials
            .into_iter()
            .map(|credential| {
                (
                    (credential.namespace.clone(), credential.name.clone()),
                    Arc::new(credential),
                )
            })
            .collect();
        let changed = self.current.send_if_modified(|current| {
            if current.entries == entries {
                return false;
            }
            *current = Arc::new(Credentials {
                version: current.version + 1,
                entries: entries.clone(),
            });
            true
        });
        if changed {
            let unusable: Vec<(String, &str)> = entries
                .values()
                .filter_map(|credential| match &credential.material {
                    CredentialMaterial::Unusable { reason } => Some((
                        format!("{}/{}", credential.namespace, credential.name),
                        reason.as_str(),
                    )),
                    CredentialMaterial::Present { .. } => None,
                })
                .collect();
            for (credential, reason) in &unusable {
                tracing::warn!(
                    secret = %credential,
                    reason,
                    "gateway credential unusable: the servers naming it fail their TLS handshakes"
                );
            }
            self.metrics
                .set_unusable(unusable.iter().map(|(credential, _)| credential.clone()));
            tracing::info!(
                credentials = entries.len(),
                unusable = unusable.len(),
                version = self.current.borrow().version,
                "gateway credentials updated"
            );
        }
        changed
    }

    /// The credentials now.
    #[must_use]
    pub fn current(&self) -> Arc<Credentials> {
        Arc::clone(&self.current.borrow())
    }

    /// Each new version, as it is stored.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<Credentials>> {
        self.current.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(name: &str, material: CredentialMaterial) -> GatewayCredential {
        GatewayCredential {
            namespace: "edge".into(),
            name: name.into(),
            resource_version: None,
            material,
        }
    }

    fn unusable(reason: &str) -> CredentialMaterial {
        CredentialMaterial::Unusable {
            reason: reason.into(),
        }
    }

    #[test]
    fn the_version_moves_only_on_a_change() {
        let metrics = Arc::new(GatewayMetrics::default());
        let store = CredentialStore::new(metrics.clone());
        let mut changes = store.subscribe();
        assert_eq!(store.current().version(), 0);
        assert!(store.current().is_empty());

        let a = credential("a", unusable("no tls.key"));
        let steps: [(&str, Vec<GatewayCredential>, bool, u64); 4] = [
            ("first", vec![a.clone()], true, 1),
            ("same again", vec![a.clone()], false, 1),
            (
                "a changes",
                vec![credential("a", unusable("bad PEM"))],
                true,
                2,
            ),
            ("a goes", vec![], true, 3),
        ];
        for (step, credentials, changed, version) in steps {
            assert_eq!(store.replace(credentials), changed, "{step}");
            assert_eq!(store.current().version(), version, "{step}");
            assert_eq!(changes.has_changed().unwrap(), changed, "{step}");
            changes.mark_unchanged();
        }
        assert!(store.current().get("edge", "a").is_none());
        store.replace(vec![a]);
        assert_eq!(
            store.current().get("edge", "a").unwrap().material,
            unusable("no tls.key")
        );
        assert_eq!(metrics.unusable_credentials(), vec!["edge/a".to_owned()]);
        store.replace(vec![]);
        assert!(metrics.unusable_credentials().is_empty());
    }
}
