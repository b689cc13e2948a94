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
    /// What every HTTP listener (mesh and gateway) enforces on its clients.
    pub http_limits: HttpLimits,
    /// Finished spans on their way to the tracing providers; `None` (no spans reported,
    /// headers still propagated) until the binary starts the exporter.
    pub spans: Option<crate::telemetry::export::SpanQueue>,
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
        http_limits: HttpLimits,
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
            http_limits,
            spans: None,
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

/// The limits every HTTP listener enforces on its clients, from the command line
/// (`--max-request-headers-kb` and the rest, named after Envoy's settings); the defaults
/// are Envoy's edge recommendations. `None` turns a timeout or limit off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// The request line and headers together, in bytes (`max_request_headers_kb`): more is
    /// a 431 (a request line alone longer than this, a 414).
    pub max_request_headers_bytes: usize,
    /// Header lines in a request (`max_headers_count`): more is a 431.
    pub max_headers_count: usize,
    /// From a request's first byte to its last header (`request_headers_timeout`): else a
    /// 408 and the connection closes.
    pub request_headers_timeout: Option<Duration>,
    /// A connection with no request in flight for this long is closed (`idle_timeout`;
    /// HTTP/2 gets a GOAWAY).
    pub idle_timeout: Option<Duration>,
    /// A request whose bodies move no byte for this long ends (`stream_idle_timeout`): a
    /// 408 before the response, a reset after.
    pub stream_idle_timeout: Option<Duration>,
    /// Streams an HTTP/2 client may have open at once (`max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// Header names with `_`: refused with a 400 when set (Envoy's
    /// `headers_with_underscores_action: REJECT_REQUEST`), else allowed.
    pub reject_header_underscores: bool,
    /// Connections one listener holds at once; more are closed at accept and counted.
    pub max_connections_per_listener: Option<usize>,
    /// The rapid-reset budget (CVE-2023-44487), as Envoy's
    /// `overload.premature_reset_total_stream_count`: a connection whose client resets at
    /// least half of its streams early, counted once it has this many (or as soon as half
    /// of this many were reset), is closed with GOAWAY.
    pub premature_reset_total_stream_count: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_request_headers_bytes: 60 * 1024,
            max_headers_count: 100,
            request_headers_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(3600)),
            stream_idle_timeout: Some(Duration::from_secs(300)),
            max_concurrent_streams: 100,
            reject_header_underscores: false,
            max_connections_per_listener: Some(16_384),
            premature_reset_total_stream_count: 500,
        }
    }
}

/// One captured pod, as its connections see it: the pod and its upstream clusters (pools
/// are per pod: they dial from its netns).
pub struct PodContext {
    pub pod: Arc<Pod>,
    pub upstreams: Arc<Upstreams>,
}
