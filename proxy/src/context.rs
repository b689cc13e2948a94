//! What every connection of every pod shares ([`ProxyContext`]), and one pod as its
//! connections see it ([`PodContext`]).

use std::sync::Arc;
use std::time::Duration;

use shunt_mesh::routing::RouteSource;

use crate::gateway::{CredentialStore, GatewayTls, MeshIdentity};
use crate::hbone::Hbone;
use crate::identity::Identities;
use crate::orig_dst::{self, OrigDstSource};
use crate::pod::Pod;
use crate::ratelimit::RateLimiter;
use crate::splice::Splicer;
use crate::state::StateStore;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::upstream::Upstreams;
use crate::upstream::local::LocalPods;

/// What every connection of every pod shares.
pub struct ProxyContext {
    pub state: Arc<StateStore>,
    /// The routing table in force (Services, VirtualServices, DestinationRules,
    /// ServiceEntries); one snapshot per connection or request. In production the state
    /// store itself; tests may route by fixed answers.
    pub routes: Arc<dyn RouteSource>,
    /// Local rate limits: one token bucket per RateLimitPolicy for the whole node proxy.
    pub rate_limiter: RateLimiter,
    /// How long protocol detection waits for a client's first bytes unless the mesh config
    /// sets `protocolDetectionTimeout`.
    pub protocol_detection_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pub connect_timeout: Duration,
    /// How the outbound listener learns where a connection was going ([`orig_dst::SoOriginalDst`]).
    pub outbound_dst: Arc<dyn OrigDstSource>,
    /// How the inbound listener learns it ([`orig_dst::InboundOrigDst`]).
    pub inbound_dst: Arc<dyn OrigDstSource>,
    /// The pods served here, for same-node delivery ([`LocalPods`]).
    pub local_pods: Arc<LocalPods>,
    /// Splicing of opaque TCP between pods of this node; on once the agent sends its maps.
    pub splice: Arc<Splicer>,
    /// mTLS tunnels between nodes; `None` when the proxy has no certificate source (then it
    /// neither listens on 15008 nor tunnels, and everything stays plaintext).
    pub hbone: Option<Arc<Hbone>>,
    /// The workload certificates behind `hbone`, for `/debug/certs`.
    pub identities: Option<Arc<Identities>>,
    /// AuthorizationPolicy `CUSTOM`'s HTTP ext_authz client (its idle connections).
    pub ext_authz: crate::ext_authz::ExtAuthz,
    /// RequestAuthentication: the JWKS cache (fetched from the proxy's own netns, as the
    /// control plane would) and the verified tokens, for every pod ([`crate::authn`]).
    pub authn: Arc<crate::authn::Authenticator>,
    /// Gateway servers' TLS configs, from the credentials the agent sends (and, for
    /// `ISTIO_MUTUAL`, `identities`).
    pub gateway_tls: Arc<GatewayTls>,
}

impl ProxyContext {
    /// The production wiring of the original-destination sources.
    #[must_use]
    pub fn new(
        state: Arc<StateStore>,
        routes: Arc<dyn RouteSource>,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        timeouts: Timeouts,
    ) -> Self {
        let local_pods = Arc::new(LocalPods::new(timeouts.same_node_shortcut));
        let gateway_tls = Arc::new(GatewayTls::new(
            Arc::new(CredentialStore::new(metrics.gateway.clone())),
            metrics.gateway.clone(),
        ));
        Self {
            routes,
            rate_limiter: RateLimiter::new(),
            protocol_detection_timeout: timeouts.protocol_detection,
            metrics,
            access_log,
            connect_timeout: timeouts.connect,
            outbound_dst: Arc::new(orig_dst::SoOriginalDst),
            inbound_dst: Arc::new(orig_dst::InboundOrigDst),
            local_pods: local_pods.clone(),
            splice: Arc::default(),
            hbone: None,
            identities: None,
            ext_authz: crate::ext_authz::ExtAuthz::new(),
            authn: Arc::new(crate::authn::Authenticator::with_connector(Arc::new(
                crate::authn::netns::PodNetnsConnector {
                    local: local_pods,
                    state: state.clone(),
                },
            ))),
            state,
            gateway_tls,
        }
    }

    /// Turns mTLS on: certificates from `identities`, HBONE between nodes.
    pub fn with_identities(&mut self, identities: Arc<Identities>, cluster_id: String) {
        self.hbone = Some(Arc::new(Hbone::new(
            identities.clone(),
            self.metrics.hbone.clone(),
            cluster_id,
        )));
        self.gateway_tls = Arc::new(
            GatewayTls::new(
                self.gateway_tls.credentials().clone(),
                self.metrics.gateway.clone(),
            )
            .with_mesh_identity(MeshIdentity {
                manager: identities.manager().clone(),
                roots: identities.roots().clone(),
            }),
        );
        self.identities = Some(identities);
    }

    /// Whether the mesh config leaves the access log on (`accessLogFile`), as of now.
    #[must_use]
    pub fn access_log_on(&self) -> bool {
        self.routes.routes().mesh().access_log_on()
    }
}

/// The proxy's own timeouts, from its command line.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub protocol_detection: Duration,
    /// Whether a connection to a pod served on this node skips its inbound listener.
    pub same_node_shortcut: bool,
}

/// One captured pod, as its connections see it: the pod and its upstream clusters (pools
/// are per pod: they dial from its netns).
pub struct PodContext {
    pub pod: Arc<Pod>,
    pub upstreams: Arc<Upstreams>,
}
