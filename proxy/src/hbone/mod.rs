//! HBONE, as ztunnel speaks it: HTTP/2 `CONNECT` over mutual TLS, on the destination pod's
//! port 15008. One stream per tunnelled connection; connections pooled per source and
//! destination identity and address ([`client`]); the listener side in [`server`].
//!
//! The TLS configs (TLS 1.3, AES-GCM only, ALPN `h2`, SAN checks) come from
//! `shunt_identity::tls`; this module only needs the established stream.
//!
//! **HTTP/2 settings**, ztunnel's defaults, on both sides ([`SETTINGS`]):
//! - stream window 4 MiB, connection window 16 MiB (larger than the stream's, so one busy
//!   stream cannot starve the others), max frame size 1 MiB;
//! - at most 100 streams per connection (fewer if the peer's `max_concurrent_streams` says so),
//!   then another connection opens; a server accepts up to 200;
//! - PING every 10 s, and the connection is closed when a PING is unanswered for 20 s;
//! - a connection with no stream for 5 minutes is closed.
#![forbid(unsafe_code)]

pub mod client;
mod error;
mod headers;
mod keepalive;
pub mod metrics;
pub mod server;
mod settings;
pub mod stream;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::socket::BoxFuture;
use shunt_mesh::spiffe::SpiffeId;

use crate::socket::PodSockets;

pub use self::client::{ConnectRequest, Pool, PoolKey};
pub use self::error::HboneError;
pub use self::headers::{BAGGAGE, TRACEPARENT};
pub use self::metrics::HboneMetrics;
pub use self::settings::{SETTINGS, Settings};
pub use self::stream::H2Stream;

/// The port every HBONE listener uses (ztunnel's, Istio's `15008`).
pub const PORT: u16 = shunt_common::HBONE_PORT;

/// The `baggage` header of a tunnel from `source`, in ztunnel's keys, so a ztunnel peer
/// labels its metrics with the source's cluster, namespace, workload and canonical service.
#[must_use]
pub fn baggage(source: &shunt_mesh::model::Workload, cluster_id: &str) -> String {
    format!(
        "k8s.cluster.name={cluster_id},k8s.namespace.name={},k8s.deployment.name={},\
         service.name={},service.version={}",
        source.namespace,
        source.workload_name,
        source.canonical_service(),
        source.canonical_revision(),
    )
}

/// The certificates and trust HBONE uses. The node proxy's `identity` module implements it
/// over its certificate manager; tests use an in-process CA.
pub trait TlsProvider: Send + Sync {
    /// The client side of a tunnel for `source`, to a server that must prove `destination`.
    fn client_config(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
    ) -> Result<Arc<rustls::ClientConfig>, HboneError>;
    /// The server side for a pod whose identity is `identity`.
    fn server_config(&self, identity: &SpiffeId) -> Result<Arc<rustls::ServerConfig>, HboneError>;
    /// The SPIFFE id the peer's (verified) certificate names.
    fn peer_identity(&self, connection: &rustls::CommonState) -> Option<SpiffeId>;
    /// A pod with `identity` is now served here: keep a certificate for it. Counted, like
    /// [`TlsProvider::unserve`].
    fn serve(&self, identity: &SpiffeId);
    /// One pod with `identity` is no longer served here.
    fn unserve(&self, identity: &SpiffeId);
    /// Resolves once `identity` has a certificate here: at once if it has one or is not
    /// served here. Callers bound the wait ([`cert_wait`]), so a pod's first connections,
    /// made before the CA has answered, wait for its certificate rather than fail, as
    /// ztunnel's do.
    fn certificate_ready<'a>(&'a self, _identity: &'a SpiffeId) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The share of a connect timeout spent waiting for a pod's first certificate
/// ([`TlsProvider::certificate_ready`]): the rest is left for the dial and the handshake,
/// and a wait that runs out fails with the certificate's own reason, not a bare timeout.
#[must_use]
pub fn cert_wait(timeout: Duration) -> Duration {
    timeout / 2
}

/// What a tunnel connects: from a pod's netns and identity to another pod's.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub source_identity: SpiffeId,
    pub source_ip: Ipv4Addr,
    pub destination_identity: SpiffeId,
    pub destination_ip: Ipv4Addr,
}

/// HBONE for the whole node proxy: the trust, the pool, the metrics.
pub struct Hbone {
    pub tls: Arc<dyn TlsProvider>,
    pub pool: Pool,
    pub metrics: Arc<HboneMetrics>,
    /// The cluster's id, sent in `baggage` (`k8s.cluster.name`).
    pub cluster_id: String,
}

impl Hbone {
    #[must_use]
    pub fn new(tls: Arc<dyn TlsProvider>, metrics: Arc<HboneMetrics>, cluster_id: String) -> Self {
        Self {
            tls,
            pool: Pool::new(metrics.clone()),
            metrics,
            cluster_id,
        }
    }

    /// A tunnelled connection for `request`, dialled (when the pool has no room) from the
    /// source pod's netns, marked, to the destination's port 15008.
    pub async fn connect(
        &self,
        sockets: &dyn PodSockets,
        endpoints: &Endpoints,
        request: &ConnectRequest,
        timeout: Duration,
    ) -> Result<H2Stream, HboneError> {
        let key = PoolKey {
            source_identity: endpoints.source_identity.to_string(),
            destination_identity: endpoints.destination_identity.to_string(),
            source_ip: endpoints.source_ip,
            destination_ip: endpoints.destination_ip,
        };
        let dial = || async move {
            let _ = tokio::time::timeout(
                cert_wait(timeout),
                self.tls.certificate_ready(&endpoints.source_identity),
            )
            .await;
            let config = self
                .tls
                .client_config(&endpoints.source_identity, &endpoints.destination_identity)?;
            let addr = SocketAddr::from((endpoints.destination_ip, PORT));
            let tcp = sockets
                .connect(addr, timeout)
                .await
                .map_err(|error| HboneError::Connect(Box::new(error)))?;
            // No SNI (the config sends none); the name only tells rustls what to verify,
            // and the verifier checks the SPIFFE id, not this.
            let name = ServerName::IpAddress(std::net::IpAddr::V4(endpoints.destination_ip).into());
            let connector = tokio_rustls::TlsConnector::from(config);
            match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(error)) => Err(HboneError::Tls(error)),
                Err(_) => Err(HboneError::Timeout),
            }
        };
        match tokio::time::timeout(timeout, self.pool.connect(&key, request, dial)).await {
            Ok(result) => result,
            Err(_) => Err(HboneError::Timeout),
        }
    }
}
