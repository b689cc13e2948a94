//! How a connection's peers were authenticated ([`PeerSecurity`]): the one value a connection
//! carries into every metric series and access-log line it produces, and from which
//! Istio's `source_principal`, `destination_principal` and `connection_security_policy` are
//! derived. Whoever establishes a connection's security (plaintext, same-node delivery,
//! an HBONE tunnel's mTLS handshake) sets it; telemetry never guesses it.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

use super::{Reporter, UNKNOWN};

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

/// Istio's `connection_security_policy` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// The source reporter's value, whatever the connection: Istio's sidecars cannot tell
    /// there, so they never say.
    Unknown,
    /// The destination reporter of a plaintext connection.
    None,
    /// The destination reporter of an authenticated connection.
    MutualTls,
}

impl SecurityPolicy {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => UNKNOWN,
            Self::None => "none",
            Self::MutualTls => "mutual_tls",
        }
    }
}

/// How the two ends of one connection (or of the upstream connection one request took)
/// were authenticated.
///
/// **Same-node delivery** ([`PeerSecurity::SameNode`]) has no exact Istio equivalent: no
/// handshake happens, yet both identities are known with more certainty than a certificate
/// gives, because the proxy accepted the connection inside the client pod's network
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
    /// Plaintext: nothing authenticated either end (principals `unknown`).
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

    /// `source_principal`: the client's authenticated identity.
    #[must_use]
    pub fn source_principal(&self) -> Option<&Principal> {
        match self {
            Self::None => None,
            Self::MutualTls { source, .. } => source.as_ref(),
            Self::SameNode { source, .. } => Some(source),
        }
    }

    /// `destination_principal`: the server's authenticated identity.
    #[must_use]
    pub fn destination_principal(&self) -> Option<&Principal> {
        match self {
            Self::None => None,
            Self::MutualTls { destination, .. } => destination.as_ref(),
            Self::SameNode { destination, .. } => Some(destination),
        }
    }

    /// `source_principal` as a label value (`unknown` when not authenticated).
    #[must_use]
    pub fn source_principal_str(&self) -> &str {
        self.source_principal().map_or(UNKNOWN, Principal::as_str)
    }

    /// `destination_principal` as a label value (`unknown` when not authenticated).
    #[must_use]
    pub fn destination_principal_str(&self) -> &str {
        self.destination_principal()
            .map_or(UNKNOWN, Principal::as_str)
    }

    /// `connection_security_policy` as `reporter` reports it: `unknown` on the source side
    /// (as Istio's sidecars), `mutual_tls` or `none` on the destination side.
    #[must_use]
    pub fn policy(&self, reporter: Reporter) -> SecurityPolicy {
        match (reporter, self) {
            (Reporter::Source, _) => SecurityPolicy::Unknown,
            (Reporter::Destination, Self::None) => SecurityPolicy::None,
            (Reporter::Destination, Self::MutualTls { .. } | Self::SameNode { .. }) => {
                SecurityPolicy::MutualTls
            }
        }
    }

    /// The access log's `peer_security`: what actually authenticated the peers, whichever
    /// side reports (`none`, `mutual_tls`, `same_node`).
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

    /// Every kind of security, as each reporter labels it.
    #[test]
    fn principals_and_policy_per_reporter() {
        let tls_both = PeerSecurity::MutualTls {
            source: Some(id("web")),
            destination: Some(id("api")),
        };
        let tls_server_only = PeerSecurity::MutualTls {
            source: None,
            destination: Some(id("api")),
        };
        let same_node = PeerSecurity::same_node(Some(&id("web")), Some(&id("api")));
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let api = "spiffe://cluster.local/ns/shop/sa/api";
        let cases = [
            // (security, reporter, source, destination, policy, kind)
            (
                &PeerSecurity::None,
                Reporter::Source,
                UNKNOWN,
                UNKNOWN,
                "unknown",
                "none",
            ),
            (
                &PeerSecurity::None,
                Reporter::Destination,
                UNKNOWN,
                UNKNOWN,
                "none",
                "none",
            ),
            (
                &tls_both,
                Reporter::Source,
                web,
                api,
                "unknown",
                "mutual_tls",
            ),
            (
                &tls_both,
                Reporter::Destination,
                web,
                api,
                "mutual_tls",
                "mutual_tls",
            ),
            (
                &tls_server_only,
                Reporter::Destination,
                UNKNOWN,
                api,
                "mutual_tls",
                "mutual_tls",
            ),
            (
                &same_node,
                Reporter::Source,
                web,
                api,
                "unknown",
                "same_node",
            ),
            (
                &same_node,
                Reporter::Destination,
                web,
                api,
                "mutual_tls",
                "same_node",
            ),
        ];
        for (security, reporter, source, destination, policy, kind) in cases {
            let seen = (
                security.source_principal_str(),
                security.destination_principal_str(),
                security.policy(reporter).as_str(),
                security.kind(),
            );
            assert_eq!(
                seen,
                (source, destination, policy, kind),
                "{security:?} {reporter:?}"
            );
        }
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
