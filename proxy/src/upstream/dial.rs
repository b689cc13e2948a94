//! How a pod's upstream connections are opened: from its own netns, or, for a pod this proxy
//! serves on the same node, straight from that pod's netns (see [`crate::upstream::local`]).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::transport::Transport;
use crate::drain::Drain;
use crate::hbone::HboneError;
use crate::pod::Pod;
use crate::socket::{self, BoxFuture, PodSockets};

/// Why a dial failed: the socket (connect, mark, netns), or the HBONE tunnel over it.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Socket(#[from] socket::Error),
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error(
        "{addr} requires mTLS (DestinationRule tls.mode ISTIO_MUTUAL) but is not a meshed pod \
         on another node, so no HBONE tunnel reaches it; refused rather than sent in plaintext"
    )]
    MtlsUnavailable { addr: SocketAddr },
}

/// What a DestinationRule's `tls.mode` says about mesh mTLS (HBONE) to a destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MeshTls {
    /// No rule says: auto mTLS (HBONE to a pod captured on another node, else plaintext).
    #[default]
    Auto,
    /// `DISABLE`: plaintext, even to a meshed pod on another node.
    Disable,
    /// `ISTIO_MUTUAL`: mTLS; a destination that cannot be reached over HBONE (not a meshed
    /// pod of another node) is refused, never sent plaintext. Same-node delivery, which
    /// never leaves the node and knows both identities, still counts.
    Require,
}

impl MeshTls {
    /// The preference a cluster's `TrafficPolicy::tls` states.
    #[must_use]
    pub fn of(tls: Option<&shunt_mesh::routing::UpstreamTls>) -> Self {
        match tls {
            Some(shunt_mesh::routing::UpstreamTls::Disable) => Self::Disable,
            Some(shunt_mesh::routing::UpstreamTls::IstioMutual { .. }) => Self::Require,
            // Originated TLS is its own (non-mesh) TLS; refusals never dial.
            _ => Self::Auto,
        }
    }
}

/// Opens the upstream connections of one pod.
pub trait Dial: Send + Sync + 'static {
    /// A connection to `addr`, marked against recapture, given up after `timeout`. `client`
    /// is the application's own address when the connection carries exactly one client's
    /// (an L4 connection); an HBONE tunnel names it in `forwarded`.
    fn dial(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        client: Option<SocketAddr>,
        mesh_tls: MeshTls,
    ) -> BoxFuture<'_, Result<Dialed, DialError>>;
}

/// An open upstream connection, and whom it reaches.
pub struct Dialed {
    pub stream: Transport,
    /// Set when the connection was made from the destination pod's own netns: it reaches the
    /// app directly, skipping that pod's inbound listener.
    pub delivered: Option<Delivery>,
    /// Set when the connection is an HBONE tunnel: the identity the peer proved.
    pub tunnel: Option<Tunnel>,
}

/// An mTLS tunnel's facts, for telemetry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The destination's SPIFFE id, which its certificate was checked to carry (shared:
    /// every request over a pooled tunnel clones it).
    pub peer_identity: std::sync::Arc<str>,
}

/// The served pod a same-node connection was delivered to.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Weak: pools of one pod must not keep another pod's context alive.
    pub pod: Weak<Pod>,
    /// The destination pod's drain: once it stops accepting, the connection is not reused;
    /// once it is cut, so is the connection.
    pub drain: Drain,
    /// The mesh state's changes since the dial: a delivery skipped the destination's inbound
    /// listener because the state allowed it (no RequestAuthentication, no CUSTOM policy on
    /// the pod), so once the state changes the connection is not reused.
    pub state: tokio::sync::watch::Receiver<u64>,
}

impl Delivery {
    /// The destination pod, for its side of the telemetry: also while it drains, since what
    /// was delivered before reached its app all the same.
    #[must_use]
    pub fn pod(&self) -> Option<Arc<Pod>> {
        self.pod.upgrade()
    }

    /// Whether a connection made for it may take another request.
    #[must_use]
    pub fn reusable(&self) -> bool {
        !self.drain.is_accepting_stopped() && !self.state.has_changed().unwrap_or(true)
    }
}

/// Every dial from the pod's own netns (no same-node delivery).
pub struct Direct(pub Arc<dyn PodSockets>);

impl Dial for Direct {
    fn dial(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        _client: Option<SocketAddr>,
        _mesh_tls: MeshTls,
    ) -> BoxFuture<'_, Result<Dialed, DialError>> {
        Box::pin(async move {
            let stream = self.0.connect(addr, timeout).await?;
            Ok(Dialed {
                stream: stream.into(),
                delivered: None,
                tunnel: None,
            })
        })
    }
}
