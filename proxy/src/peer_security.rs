//! How a connection's peers were authenticated ([`PeerSecurity`]), and the identities
//! involved ([`Principal`]).
//!
//! A low module, like `response_flag`: it depends on nothing in the crate, so whatever
//! establishes a connection's security (the upstream dial and its transports, the HTTP
//! pools, the listeners in `conn/`) can set it, and telemetry turns it into Istio's
//! `source_principal`, `destination_principal` and `connection_security_policy`
//! (`telemetry::security`). Telemetry never guesses it from the mesh state.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

/// A SPIFFE identity, `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`: what a
/// peer certificate's URI SAN proves, or what the proxy knows of a pod it serves. Cheap to
/// clone (shared text).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(Arc<str>);

impl Principal {
    /// A principal authenticated elsewhere, as its URI (e.g. a verified certificate's SAN).
    #[must_use]
    pub fn new(uri: impl Into<Arc<str>>) -> Self {
        Self(uri.into())
    }

    /// The identity Istio gives a pod: its service account in its namespace, in
    /// `trust_domain`.
    #[must_use]
    pub fn for_service_account(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self(format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").into())
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// How the two ends of one connection (or of the upstream connection one request took)
/// were authenticated.
///
/// **Same-node delivery** ([`PeerSecurity::SameNode`]) has no exact Istio equivalent: no
/// handshake happens, yet both identities are known as surely as a certificate would prove
/// them, because the proxy accepted the connection inside the client pod's network
/// namespace and dialled the server inside the server pod's, and the bytes never leave the
/// node (as a sidecar's hop from its app over loopback). Its metrics say
/// `connection_security_policy="mutual_tls"` on the destination reporter, with both
/// principals: what Kiali (its lock on an edge, the mTLS share) and Istio's dashboards (the
/// `mutual_tls` / non-mTLS split) take to mean "authenticated and not readable on the
/// network", which is true here; any other value would show a STRICT mesh's same-node
/// traffic as insecure. ztunnel's old node-local fast path reported it the same way. The
/// access log keeps the difference: its `peer_security` field says `same_node`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum PeerSecurity {
    /// Plaintext: nothing authenticated either end.
    #[default]
    None,
    /// Mutual TLS (an HBONE tunnel): the identities its handshake proved, the client's
    /// (`source`) and the server's (`destination`); `None` for one the handshake did not
    /// show.
    MutualTls {
        source: Option<Principal>,
        destination: Option<Principal>,
    },
    /// Both ends are pods this proxy serves, delivered on this node: each identity is the
    /// pod's own, known from the network namespace the proxy holds for it.
    SameNode {
        source: Principal,
        destination: Principal,
    },
}

impl PeerSecurity {
    /// A same-node delivery between pods with these identities; plaintext when either is not
    /// known (a pod the mesh state does not list yet), since nothing is then vouched for.
    #[must_use]
    pub fn same_node(source: Option<&Principal>, destination: Option<&Principal>) -> Self {
        match (source, destination) {
            (Some(source), Some(destination)) => Self::SameNode {
                source: source.clone(),
                destination: destination.clone(),
            },
            _ => Self::None,
        }
    }

    /// The client's authenticated identity (`source_principal`).
    #[must_use]
    pub fn source_principal(&self) -> Option<&Principal> {
        match self {
            Self::None => None,
            Self::MutualTls { source, .. } => source.as_ref(),
            Self::SameNode { source, .. } => Some(source),
        }
    }

    /// The server's authenticated identity (`destination_principal`).
    #[must_use]
    pub fn destination_principal(&self) -> Option<&Principal> {
        match self {
            Self::None => None,
            Self::MutualTls { destination, .. } => destination.as_ref(),
            Self::SameNode { destination, .. } => Some(destination),
        }
    }

    /// What authenticated the peers, whichever side reports: `none`, `mutual_tls` or
    /// `same_node` (the access log's `peer_security`).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::MutualTls { .. } => "mutual_tls",
            Self::SameNode { .. } => "same_node",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> Principal {
        Principal::for_service_account("cluster.local", "shop", sa)
    }

    #[test]
    fn a_pods_principal_is_its_service_account_in_the_trust_domain() {
        assert_eq!(
            Principal::for_service_account("example.org", "shop", "web").as_str(),
            "spiffe://example.org/ns/shop/sa/web"
        );
        assert_eq!(
            format!("{}", id("api")),
            "spiffe://cluster.local/ns/shop/sa/api"
        );
    }

    #[test]
    fn same_node_needs_both_identities() {
        let web = id("web");
        for (source, destination, expected_same_node) in [
            (Some(&web), Some(&web), true),
            (Some(&web), None, false),
            (None, Some(&web), false),
            (None, None, false),
        ] {
            let security = PeerSecurity::same_node(source, destination);
            assert_eq!(
                matches!(security, PeerSecurity::SameNode { .. }),
                expected_same_node,
                "{source:?} → {destination:?}"
            );
            if !expected_same_node {
                assert_eq!(security, PeerSecurity::None);
            }
        }
    }
}
