//! The per-connection proxy: original destination, routing, dialling, forwarding, telemetry.
#![forbid(unsafe_code)]

mod connection;
pub mod forward;
pub mod inbound;
pub mod local;
pub mod orig_dst;
pub mod outbound;
pub mod splice;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::drain::Drain;
use crate::http::ratelimit::RateLimiter;
use crate::http::upstream::Upstreams;
use shunt_mesh::routing::RouteSource;
use crate::socket::PodSockets;
use crate::state::StateStore;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use orig_dst::OrigDstSource;

/// What every connection of every pod shares.
pub struct ProxyContext {
    pub state: Arc<StateStore>,
    /// The routing table in force (VirtualServices, DestinationRules, ServiceEntries); one
    /// snapshot per connection or request. `None` until the config compiler's
    /// `StateStore: RouteSource` is wired: outbound connections are then routed at L4 by the
    /// Service table alone, as before L7.
    pub routes: Option<Arc<dyn RouteSource>>,
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
    /// The pods served here, for same-node delivery ([`local`]).
    pub local_pods: Arc<local::LocalPods>,
    /// Splicing of opaque TCP between pods of this node; on once the agent sends its maps.
    pub splice: Arc<splice::Splicer>,
}

impl ProxyContext {
    /// The production wiring of the original-destination sources.
    #[must_use]
    pub fn new(
        state: Arc<StateStore>,
        routes: Option<Arc<dyn RouteSource>>,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            state,
            routes,
            rate_limiter: RateLimiter::new(),
            protocol_detection_timeout: timeouts.protocol_detection,
            metrics,
            access_log,
            connect_timeout: timeouts.connect,
            outbound_dst: Arc::new(orig_dst::SoOriginalDst),
            inbound_dst: Arc::new(orig_dst::InboundOrigDst),
            local_pods: Arc::new(local::LocalPods::new(timeouts.same_node_shortcut)),
            splice: Arc::default(),
        }
    }

    /// Whether the mesh config leaves the access log on (`accessLogFile`), as of now.
    #[must_use]
    pub fn access_log_on(&self) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|source| source.routes().mesh().access_log_on())
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

/// One captured pod, as its connections see it.
pub struct PodContext {
    pub uid: String,
    pub sockets: Arc<dyn PodSockets>,
    /// The upstream clusters this pod's HTTP requests go to (pools are per pod: they dial
    /// from its netns).
    pub upstreams: Arc<Upstreams>,
    pub outbound_listener: SocketAddr,
    pub inbound_listener: SocketAddr,
    pub drain: Drain,
}

impl PodContext {
    /// Whether `addr` is one of the proxy's own listeners: a connection there would loop.
    #[must_use]
    pub fn is_proxy_listener(&self, addr: SocketAddr) -> bool {
        let proxy_port = matches!(
            addr.port(),
            shunt_common::OUTBOUND_PORT | shunt_common::INBOUND_PORT
        );
        (addr.ip().is_loopback() && proxy_port)
            || reaches(self.outbound_listener, addr)
            || reaches(self.inbound_listener, addr)
    }
}

/// Whether a connection to `addr` would land on `listener`. A listener on `0.0.0.0` (the
/// inbound one under iptables capture) is taken to answer on every address of its port.
fn reaches(listener: SocketAddr, addr: SocketAddr) -> bool {
    addr.port() == listener.port() && (listener.ip().is_unspecified() || addr.ip() == listener.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listener_is_reached_on_any_address_of_its_port() {
        let cases = [
            ("127.0.0.1:15006", "127.0.0.1:15006", true),
            ("127.0.0.1:15006", "10.0.0.7:15006", false),
            ("0.0.0.0:15006", "10.0.0.7:15006", true),
            ("0.0.0.0:15006", "127.0.0.1:15006", true),
            ("0.0.0.0:15006", "10.0.0.7:8080", false),
            ("127.0.0.1:15001", "127.0.0.1:15006", false),
        ];
        for (listener, addr, expected) in cases {
            let (listener, addr) = (listener.parse().unwrap(), addr.parse().unwrap());
            assert_eq!(reaches(listener, addr), expected, "{listener} {addr}");
        }
    }
}
