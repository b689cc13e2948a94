//! A connection's [`PeerSecurity`] as Istio's telemetry names it: the principals as label
//! values and `connection_security_policy` ([`SecurityPolicy`]), per reporter.
#![forbid(unsafe_code)]

pub use crate::peer_security::{PeerSecurity, Principal};

use super::{Reporter, UNKNOWN};

/// `source_principal` / `destination_principal` as a label value: `unknown` when not
/// authenticated.
#[must_use]
pub fn principal_label(principal: Option<&Principal>) -> &str {
    principal.map_or(UNKNOWN, Principal::as_str)
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
    /// `connection_security_policy` as `reporter` reports `security`: `unknown` on the source
    /// side (as Istio's sidecars), `mutual_tls` or `none` on the destination side. A
    /// same-node delivery is `mutual_tls` ([`PeerSecurity`] says why).
    #[must_use]
    pub fn of(security: &PeerSecurity, reporter: Reporter) -> Self {
        match (reporter, security) {
            (Reporter::Source, _) => Self::Unknown,
            (Reporter::Destination, PeerSecurity::None) => Self::None,
            (
                Reporter::Destination,
                PeerSecurity::MutualTls { .. } | PeerSecurity::SameNode { .. },
            ) => Self::MutualTls,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => UNKNOWN,
            Self::None => "none",
            Self::MutualTls => "mutual_tls",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> Principal {
        Principal::for_service_account("cluster.local", "shop", sa)
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
                principal_label(security.source_principal()),
                principal_label(security.destination_principal()),
                SecurityPolicy::of(security, reporter).as_str(),
                security.kind(),
            );
            assert_eq!(
                seen,
                (source, destination, policy, kind),
                "{security:?} {reporter:?}"
            );
        }
    }
}
