//! Gateway TLS metrics: handshakes a server refused because its credential is missing or
//! unusable, and the credentials the agent sent unusable.

use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One refused handshake's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialErrorLabels {
    /// The Gateway (or Ingress) whose server refused: `namespace/name`.
    pub gateway: String,
    /// What the server's certificate comes from: a Secret `namespace/name`, the certificate
    /// file's path, or the workload identity (`ISTIO_MUTUAL`).
    pub credential: String,
    /// `missing`, `unusable`, `invalid`, `files`, `no_workload_certificate`,
    /// `not_terminated` or `settings` ([`super::tls`] says when each applies).
    pub reason: &'static str,
}

/// One unusable credential.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    /// The Secret, `namespace/name`.
    pub credential: String,
}

/// The handles (families share their samples with the registry).
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    credential_errors: Family<CredentialErrorLabels, Counter>,
    unusable: Family<CredentialLabels, Gauge>,
    /// The series `unusable` holds, so a replacement can drop exactly those gone.
    unusable_now: Mutex<Vec<String>>,
}

impl GatewayMetrics {
    /// The metrics, registered in `registry`:
    /// `shunt_gateway_credential_errors_total{gateway,credential,reason}` and
    /// `shunt_gateway_credential_unusable{credential}`.
    #[must_use]
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "shunt_gateway_credential_errors",
            "TLS handshakes a gateway server refused because its certificate is missing or \
             unusable, by Gateway, credential and reason",
            metrics.credential_errors.clone(),
        );
        registry.register(
            "shunt_gateway_credential_unusable",
            "Gateway credentials (Secrets) the agent found unusable: 1 per Secret, which the \
             proxy's log names with the reason",
            metrics.unusable.clone(),
        );
        metrics
    }

    /// The counter of refused handshakes for one server's credential.
    #[must_use]
    pub fn credential_errors(&self, labels: &CredentialErrorLabels) -> Counter {
        self.credential_errors.get_or_create(labels).clone()
    }

    /// Sets the unusable gauge to exactly `credentials`.
    pub fn set_unusable(&self, credentials: impl IntoIterator<Item = String>) {
        let mut now = self
            .unusable_now
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for credential in now.drain(..) {
            self.unusable.remove(&CredentialLabels { credential });
        }
        for credential in credentials {
            self.unusable
                .get_or_create(&CredentialLabels {
                    credential: credential.clone(),
                })
                .set(1);
            now.push(credential);
        }
        now.sort();
    }

    /// The credentials the gauge names now, sorted (tests, debugging).
    #[must_use]
    pub fn unusable_credentials(&self) -> Vec<String> {
        self.unusable_now
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
