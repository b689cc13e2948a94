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

/// One Gateway port's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// `servers[].port.number`.
    pub port: u16,
}

/// Why a gateway connection was closed before anything was routed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `servers[].port.number`.
    pub port: u16,
    /// `no_server` (no server's hosts match the SNI), `handshake` (the TLS handshake failed:
    /// the client's certificate, version or suites, or the server's credential),
    /// `no_route` (a TCP or TLS server with no `tcp[]`/`tls[]` route for the connection).
    pub reason: &'static str,
}

/// The handles (families share their samples with the registry).
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    listener_failures: Family<PortLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
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
            "shunt_gateway_listener_failures",
            "Gateway ports the proxy could not open in a gateway pod's netns (something already \
             listens there), by port",
            metrics.listener_failures.clone(),
        );
        registry.register(
            "shunt_gateway_connections_refused",
            "Gateway connections closed before routing, by port and reason",
            metrics.refused.clone(),
        );
        registry.register(
            "shunt_gateway_credential_unusable",
            "Gateway credentials (Secrets) the agent found unusable: 1 per Secret, which the \
             proxy's log names with the reason",
            metrics.unusable.clone(),
        );
        metrics
    }

    /// A Gateway port could not be opened.
    pub fn listener_failed(&self, port: u16) {
        self.listener_failures
            .get_or_create(&PortLabels { port })
            .inc();
    }

    /// A gateway connection was closed before routing.
    pub fn refused(&self, port: u16, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { port, reason })
            .inc();
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
