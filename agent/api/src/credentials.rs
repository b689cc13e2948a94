//! The TLS credentials the agent hands the proxy for gateway servers: each Secret named by a
//! `credentialName` of a Gateway (or a `secretName` of an Ingress) served on this node, as
//! Istio's SDS hands them to a gateway's Envoy.
//!
//! They travel only over the control socket (a 0600 Unix socket in the run dir). Their
//! `Debug` never prints key material.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One Secret as a gateway server reads it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCredential {
    /// `metadata.namespace`: the Gateway's namespace.
    pub namespace: String,
    /// `metadata.name`: the `credentialName`.
    pub name: String,
    /// `metadata.resourceVersion` when the source has one, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// The key material, or why there is none.
    pub material: CredentialMaterial,
}

/// A credential's contents.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CredentialMaterial {
    /// `tls.crt` (the chain, PEM), `tls.key` (PEM), and `ca.crt` when present (from the
    /// Secret itself, or from its `<name>-cacert` companion, as Istio reads).
    Present {
        certificate_chain: String,
        private_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_certificates: Option<String>,
    },
    /// The Secret does not exist, or lacks a key, or a value is not UTF-8 PEM: the servers
    /// that name it fail their handshakes, with this reason in the proxy's log and metrics.
    Unusable { reason: String },
}

impl fmt::Debug for GatewayCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayCredential")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("resource_version", &self.resource_version)
            .field("material", &self.material)
            .finish()
    }
}

impl fmt::Debug for CredentialMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Present {
                certificate_chain,
                ca_certificates,
                ..
            } => f
                .debug_struct("Present")
                .field("certificate_chain_bytes", &certificate_chain.len())
                .field("private_key", &"<redacted>")
                .field("ca_certificates", &ca_certificates.is_some())
                .finish(),
            Self::Unusable { reason } => {
                f.debug_struct("Unusable").field("reason", reason).finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_key() {
        let credential = GatewayCredential {
            namespace: "edge".into(),
            name: "site-cert".into(),
            resource_version: None,
            material: CredentialMaterial::Present {
                certificate_chain: "-----BEGIN CERTIFICATE-----".into(),
                private_key: "-----BEGIN PRIVATE KEY-----secret".into(),
                ca_certificates: None,
            },
        };
        let shown = format!("{credential:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("site-cert"), "{shown}");
    }
}
