//! AuthorizationPolicy enforced at the destination, as Istio's sidecar enforces it. The
//! policies and their evaluation are `shunt_mesh::security::authz` (no I/O); here they meet
//! the connection: who the peer is ([`PeerSecurity`]: an HBONE client certificate, or a pod
//! this proxy serves on the same node), the addresses, and for HTTP the request.
//!
//! Where it runs: L4 decisions when a TCP (or TLS) connection reaches its destination's
//! side (`conn/inbound.rs` after protocol detection, `conn/hbone.rs` before answering a
//! `CONNECT` when the decision cannot depend on HTTP, `conn/l4.rs` for a same-node delivery),
//! HTTP decisions per request in the inbound `authz` phase (`http/filters.rs`), including the
//! destination side of a same-node delivery (`http/forward.rs`). Open L4 connections are
//! re-checked when the policies change ([`watch`]).
#![forbid(unsafe_code)]

pub mod custom;
pub mod watch;

use std::net::{Ipv4Addr, SocketAddrV4};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shunt_mesh::index::MeshIndex;
use shunt_mesh::model::Workload;
use shunt_mesh::security::authz::{Decision, Facts, HttpFacts};
use shunt_mesh::spiffe::SpiffeId;

use crate::peer_security::PeerSecurity;

/// Envoy's RBAC denial body, which Istio users grep for.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The connection a decision is about, as its destination side sees it.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The pod whose policies apply.
    pub destination: &'a Workload,
    /// How the peer was authenticated: its principal is the `source.principal`.
    pub security: &'a PeerSecurity,
    /// The direct peer's address (`ipBlocks`, `source.ip`).
    pub source_ip: Ipv4Addr,
    /// The destination pod's address and port (`ports`, `destination.ip/port`).
    pub destination_addr: SocketAddrV4,
    /// The TLS SNI of a TLS connection (`connection.sni`).
    pub sni: Option<&'a str>,
}

/// The authenticated peer of `security`, as policies see it: none for plaintext.
#[must_use]
pub fn peer(security: &PeerSecurity) -> Option<SpiffeId> {
    security.source_principal()?.as_str().parse().ok()
}

impl Connection<'_> {
    /// Evaluates the destination's policies for the connection (`http`: `None`) or one of its
    /// requests, and counts the decision.
    #[must_use]
    pub fn evaluate(
        &self,
        index: &MeshIndex,
        metrics: &AuthzMetrics,
        http: Option<HttpFacts<'_>>,
    ) -> Decision {
        let decision = self.decide(index, http);
        metrics.record(&decision);
        decision
    }

    /// The decision, uncounted (a re-check that changes nothing is not a new decision).
    #[must_use]
    pub fn decide(&self, index: &MeshIndex, http: Option<HttpFacts<'_>>) -> Decision {
        let peer = peer(self.security);
        let facts = Facts {
            peer: peer.as_ref(),
            source_ip: self.source_ip,
            destination_ip: *self.destination_addr.ip(),
            destination_port: self.destination_addr.port(),
            sni: self.sni,
            http,
        };
        index.authz().evaluate(self.destination, &facts)
    }
}

/// `shunt_authorization_decisions_total{action, policy, decision}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The deciding policy's action (`ALLOW`, `DENY`, `AUDIT`, `CUSTOM`), or `none` when no
    /// policy decided (none applies: allowed; ALLOW policies apply, none matched: denied).
    pub action: String,
    /// `namespace.name` of the deciding policy, or `none`.
    pub policy: String,
    /// `allow`, `deny`, `audit` (an AUDIT rule matched), `dry_run_allow` or `dry_run_deny`
    /// (what a `istio.io/dry-run` policy would have done).
    pub decision: &'static str,
}

/// The decision counters.
#[derive(Debug, Default)]
pub struct AuthzMetrics {
    decisions: Family<DecisionLabels, Counter>,
}

impl AuthzMetrics {
    /// Registers `shunt_authorization_decisions_total` in `registry`.
    #[must_use]
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "shunt_authorization_decisions",
            "AuthorizationPolicy decisions at the destination, by the deciding policy \
             (audits and dry-run policies too)",
            metrics.decisions.clone(),
        );
        metrics
    }

    /// Counts `decision` (only when a policy applies: a pod without policies counts nothing).
    pub fn record(&self, decision: &Decision) {
        let labels = |action: String, policy: String, decision| DecisionLabels {
            action,
            policy,
            decision,
        };
        match &decision.by {
            Some(rule) => {
                self.decisions
                    .get_or_create(&labels(
                        rule.action.to_string(),
                        policy_label(rule),
                        if decision.allowed { "allow" } else { "deny" },
                    ))
                    .inc();
            }
            None if !decision.allowed => {
                self.decisions
                    .get_or_create(&labels("none".into(), "none".into(), "deny"))
                    .inc();
            }
            None => {}
        }
        for rule in &decision.audits {
            self.decisions
                .get_or_create(&labels(
                    rule.action.to_string(),
                    policy_label(rule),
                    "audit",
                ))
                .inc();
        }
        for (rule, would_deny) in &decision.dry_run {
            self.decisions
                .get_or_create(&labels(
                    rule.action.to_string(),
                    policy_label(rule),
                    if *would_deny {
                        "dry_run_deny"
                    } else {
                        "dry_run_allow"
                    },
                ))
                .inc();
        }
    }
}

fn policy_label(rule: &shunt_mesh::security::authz::RuleRef) -> String {
    format!("{}.{}", rule.policy.namespace, rule.policy.name)
}
