//! Upstream clusters of one captured pod: endpoint choice (load balancing, consistent hash),
//! outlier detection, retry budget and connection pools, all per [`ClusterKey`] so that
//! the state survives config reloads.
//!
//! Every upstream connection is dialled through the pod's [`Dial`]: from inside the pod's
//! netns, marked so the proxy does not capture itself, or, for a pod the proxy serves on the
//! same node, from that pod's netns ([`crate::upstream::local`]).
//!
//! A `resolution: DNS` ServiceEntry's cluster also dials the addresses its hostnames resolve
//! to ([`dns`]), resolved by [`ClusterState::resolve`] before each pick.
//!
//! A cluster unused for [`CLUSTER_IDLE_TIMEOUT`] (or its `idleTimeout`, if longer) is
//! forgotten: under ALLOW_ANY every address a pod dials is a cluster of its own, and a
//! cluster that left the config is never asked for again, so the state stays bounded by what
//! the pod uses now.
#![forbid(unsafe_code)]

mod body;
pub mod dial;
pub mod dns;
mod error;
mod hash;
mod lb;
pub mod local;
mod metrics;
mod outlier;
mod pool;
mod tls;
pub mod transport;

// Gateway tests' clients accept any server certificate, as `insecureSkipVerify` does.
#[cfg(test)]
pub(crate) use self::tls::SkipVerify;

use shunt_mesh::ids::EndpointAddr;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

pub use self::body::{Body, BoxError, HttpVersion};
pub use self::dial::{Delivery, Dial, DialError, Dialed, Direct, MeshTls, Tunnel};
pub use self::dns::Resolver;
pub use self::error::UpstreamError;
pub use self::hash::hash_key;
use self::lb::HashTable;
pub use self::lb::hash as hash_bytes;
pub use self::metrics::UpstreamMetrics;
use self::metrics::{ClusterLabels, EndpointLabels};
pub use self::outlier::Outcome;
use self::outlier::OutlierState;
pub use self::pool::UpstreamBody;
use self::pool::{ConnectionSlot, Counted, Dialer, EndpointPool, Limits, RequestCounts, Shared};
pub use self::tls::TlsError;
use self::tls::{Alpn, ClusterTls};
pub use self::transport::{ResetOnClose, Transport};
use crate::socket::PodSockets;
pub use shunt_api::clusters::{ClusterDump, ClustersDump, EndpointDump};
use shunt_mesh::model::Workload;
use shunt_mesh::routing::{Cluster, ClusterEndpoint, ClusterKey, LoadBalancer, TrafficPolicy};

/// The endpoint chosen for one try of a request.
#[derive(Clone)]
pub struct Picked {
    pub addr: EndpointAddr,
    pub workload: Option<Arc<Workload>>,
    endpoint: Arc<EndpointState>,
}

impl std::fmt::Debug for Picked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Picked").field("addr", &self.addr).finish()
    }
}

/// An opaque TCP connection's hold on its cluster: one of `maxConnections`, an active
/// request of its endpoint (for LEAST_REQUEST), and the cluster kept in use. Released on drop,
/// when the proxied connection ends.
pub struct TcpConnection {
    _slot: ConnectionSlot,
    _active: Counted,
    _open: Counted,
    /// Set when the connection reaches a pod served on this node from that pod's netns.
    pub delivered: Option<Delivery>,
    /// Set when the connection is an HBONE tunnel.
    pub tunnel: Option<Tunnel>,
}

impl std::fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConnection").finish_non_exhaustive()
    }
}

/// One retry of the cluster's `maxRetries` budget; released on drop.
#[derive(Debug)]
pub struct RetryPermit(#[expect(dead_code, reason = "held for its drop")] Counted);

/// How long a cluster with nothing in flight, no open connection and no ejected endpoint is
/// kept before it is forgotten (the cluster's `idleTimeout` instead, when longer). Long
/// enough that a pod's steady traffic keeps its pools and outlier state.
pub const CLUSTER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type ClusterMap = Mutex<HashMap<ClusterKey, Arc<ClusterState>>>;

/// The upstream clusters one pod sends to.
pub struct Upstreams {
    dial: Arc<dyn Dial>,
    default_connect_timeout: Duration,
    metrics: Arc<UpstreamMetrics>,
    /// Shared by every pod's clusters.
    resolver: Arc<Resolver>,
    /// Shared with each cluster's [`maintain`] task, which removes its cluster once idle.
    clusters: Arc<ClusterMap>,
}

impl Upstreams {
    #[must_use]
    pub fn new(
        sockets: Arc<dyn PodSockets>,
        default_connect_timeout: Duration,
        metrics: Arc<UpstreamMetrics>,
        resolver: Arc<Resolver>,
    ) -> Self {
        Self::with_dial(
            Arc::new(Direct(sockets)),
            default_connect_timeout,
            metrics,
            resolver,
        )
    }

    /// Upstreams whose connections open through `dial`.
    #[must_use]
    pub fn with_dial(
        dial: Arc<dyn Dial>,
        default_connect_timeout: Duration,
        metrics: Arc<UpstreamMetrics>,
        resolver: Arc<Resolver>,
    ) -> Self {
        Self {
            dial,
            default_connect_timeout,
            metrics,
            resolver,
            clusters: Arc::default(),
        }
    }

    /// The runtime state of `cluster`, created on first use. When the routing table changed
    /// (another `Arc<Cluster>`), endpoints and policy are refreshed; the pools, counters and
    /// ejections of endpoints that remain are kept.
    pub fn cluster(&self, cluster: &Arc<Cluster>) -> Arc<ClusterState> {
        let (state, created) = {
            let mut clusters = match self.clusters.lock() {
                Ok(clusters) => clusters,
                Err(poisoned) => poisoned.into_inner(),
            };
            match clusters.get(&cluster.key) {
                Some(state) => {
                    // Under the map's lock, so that eviction (which checks it under the same
                    // lock) never removes a cluster just handed out.
                    state.touch(Instant::now());
                    (state.clone(), false)
                }
                None => {
                    let state = Arc::new(ClusterState::new(
                        cluster,
                        self.dial.clone(),
                        self.default_connect_timeout,
                        self.metrics.clone(),
                        self.resolver.clone(),
                    ));
                    clusters.insert(cluster.key.clone(), state.clone());
                    (state, true)
                }
            }
        };
        if created {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(maintain(
                    Arc::downgrade(&state),
                    Arc::downgrade(&self.clusters),
                ));
            }
        } else {
            state.refresh(cluster);
        }
        state
    }

    /// A connection to `addr` outside any cluster (an L4 passthrough), through the pod's
    /// [`Dial`].
    pub async fn dial(
        &self,
        addr: std::net::SocketAddr,
        timeout: Duration,
        client: Option<std::net::SocketAddr>,
    ) -> Result<Dialed, DialError> {
        // An address outside any cluster: no DestinationRule speaks for it.
        self.dial.dial(addr, timeout, client, MeshTls::Auto).await
    }

    /// A snapshot of every cluster's endpoints, for `/debug/clusters` and `shuntctl`.
    pub fn dump(&self) -> ClustersDump {
        let clusters: Vec<Arc<ClusterState>> = self
            .clusters
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        ClustersDump {
            clusters: clusters
                .iter()
                .map(|c| (c.name.clone(), c.dump()))
                .collect(),
        }
    }
}

/// Per-endpoint state that outlives config reloads.
struct EndpointState {
    active: Arc<std::sync::atomic::AtomicU32>,
    outlier: Mutex<OutlierState>,
    pool: Arc<EndpointPool>,
}

impl EndpointState {
    fn new(addr: EndpointAddr) -> Self {
        Self {
            active: Arc::default(),
            outlier: Mutex::default(),
            pool: Arc::new(EndpointPool::new(addr)),
        }
    }
}

struct Endpoint {
    addr: EndpointAddr,
    workload: Option<Arc<Workload>>,
    weight: u32,
    state: Arc<EndpointState>,
}

/// The cluster as configured now, plus the balancer's state.
struct Config {
    source: Arc<Cluster>,
    /// The addresses `source.dns` resolved to when last asked.
    resolved: Vec<ClusterEndpoint>,
    /// `source.endpoints` and `resolved`, by address.
    endpoints: Vec<Endpoint>,
    table: Option<HashTable>,
    cursor: u64,
}

impl Config {
    fn new(cluster: &Arc<Cluster>, resolved: Vec<ClusterEndpoint>, previous: &[Endpoint]) -> Self {
        let endpoints = all_endpoints(cluster, &resolved)
            .into_iter()
            .map(|e| Endpoint {
                addr: e.addr,
                workload: e.workload.clone(),
                weight: e.weight,
                state: previous
                    .iter()
                    .find(|p| p.addr == e.addr)
                    .map_or_else(|| Arc::new(EndpointState::new(e.addr)), |p| p.state.clone()),
            })
            .collect();
        let mut config = Self {
            source: cluster.clone(),
            resolved,
            endpoints,
            table: None,
            cursor: 0,
        };
        config.rebuild_table();
        config
    }

    fn rebuild_table(&mut self) {
        self.table = match &self.source.policy.load_balancer {
            LoadBalancer::ConsistentHash { algorithm, .. } => {
                let endpoints: Vec<(EndpointAddr, u32)> =
                    self.endpoints.iter().map(|e| (e.addr, e.weight)).collect();
                Some(HashTable::build(*algorithm, &endpoints))
            }
            _ => None,
        };
    }

    fn policy(&self) -> &TrafficPolicy {
        &self.source.policy
    }
}

/// A cluster's configured endpoints and the addresses its DNS names resolved to, by address
/// (an address both lists or several names give is dialled once, with the first weight).
fn all_endpoints(cluster: &Cluster, resolved: &[ClusterEndpoint]) -> Vec<ClusterEndpoint> {
    if resolved.is_empty() {
        return cluster.endpoints.clone();
    }
    let mut all: Vec<ClusterEndpoint> = cluster.endpoints.iter().chain(resolved).cloned().collect();
    all.sort_by_key(|e| e.addr);
    all.dedup_by_key(|e| e.addr);
    all
}

/// The ServiceEntry behind `cluster`, for errors.
fn describe_entry(cluster: &Cluster) -> String {
    cluster
        .service_entry
        .as_ref()
        .map_or_else(|| format!("host {}", cluster.key.host), ToString::to_string)
}

/// The key of the cluster that hands a pod's inbound requests to its app on `port`. Its host
/// is empty, as in Envoy's name for it (`inbound|8080||`); no outbound cluster's host is.
#[must_use]
pub fn inbound_cluster_key(port: u16) -> ClusterKey {
    ClusterKey {
        host: shunt_mesh::routing::Host(Arc::from("")),
        subset: None,
        port,
    }
}

/// Envoy's name for the cluster keyed `key`: `outbound|8080|v1|cart.shop.svc.cluster.local`,
/// or `inbound|8080||` for an [`inbound_cluster_key`].
#[must_use]
pub fn cluster_name(key: &ClusterKey) -> String {
    ClusterName(key).to_string()
}

/// [`cluster_name`], written where it goes (an access-log line) rather than allocated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClusterName<'a>(pub &'a ClusterKey);

impl std::fmt::Display for ClusterName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.0;
        if key.host.0.is_empty() {
            let mut digits = itoa::Buffer::new();
            ["inbound|", digits.format(key.port), "||"]
                .into_iter()
                .try_for_each(|piece| f.write_str(piece))
        } else {
            key.fmt(f)
        }
    }
}

/// The runtime state of one cluster.
pub struct ClusterState {
    key: ClusterKey,
    name: String,
    config: Mutex<Config>,
    /// When it was last asked for or last busy; its idle time counts from there.
    last_used: Mutex<Instant>,
    /// Pools to original destinations of a PASSTHROUGH cluster, by address; dropped when
    /// unused ([`Self::maintain_once`]).
    passthrough: Mutex<HashMap<EndpointAddr, Arc<EndpointState>>>,
    dialer: Dialer,
    default_connect_timeout: Duration,
    resolver: Arc<Resolver>,
    /// DNS names failing now, so that each failure is logged once.
    dns_failing: Mutex<HashSet<Arc<str>>>,
    /// DestinationRule `tls`, built once per policy.
    tls: ClusterTls,
}

impl ClusterState {
    fn new(
        cluster: &Arc<Cluster>,
        dial: Arc<dyn Dial>,
        default_connect_timeout: Duration,
        metrics: Arc<UpstreamMetrics>,
        resolver: Arc<Resolver>,
    ) -> Self {
        let name = cluster_name(&cluster.key);
        Self {
            tls: ClusterTls::new(cluster, &name),
            key: cluster.key.clone(),
            config: Mutex::new(Config::new(cluster, Vec::new(), &[])),
            last_used: Mutex::new(Instant::now()),
            passthrough: Mutex::default(),
            dialer: Dialer {
                dial,
                shared: Arc::new(Shared::new(name.clone(), metrics)),
            },
            name,
            default_connect_timeout,
            resolver,
            dns_failing: Mutex::default(),
        }
    }

    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    fn touch(&self, now: Instant) {
        match self.last_used.lock() {
            Ok(mut last_used) => *last_used = now,
            Err(poisoned) => *poisoned.into_inner() = now,
        }
    }

    fn idle_since(&self) -> Instant {
        match self.last_used.lock() {
            Ok(last_used) => *last_used,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        match self.config.lock() {
            Ok(config) => config,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn metrics(&self) -> &UpstreamMetrics {
        &self.dialer.shared.metrics
    }

    fn labels(&self, addr: EndpointAddr) -> EndpointLabels {
        EndpointLabels {
            cluster: self.name.clone(),
            endpoint: addr.to_string(),
        }
    }

    fn refresh(&self, cluster: &Arc<Cluster>) {
        let mut config = self.config();
        if Arc::ptr_eq(&config.source, cluster) {
            return;
        }
        self.tls.refresh(cluster);
        // Until the next [`Self::resolve`], the names resolve to what they did.
        let resolved = if cluster.dns.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut config.resolved)
        };
        self.reconfigure(&mut config, cluster, resolved);
    }

    /// Makes `cluster` with `resolved` the configuration, keeping the state of endpoints that
    /// remain.
    fn reconfigure(
        &self,
        config: &mut Config,
        cluster: &Arc<Cluster>,
        resolved: Vec<ClusterEndpoint>,
    ) {
        let new = all_endpoints(cluster, &resolved);
        let same_endpoints = config.endpoints.len() == new.len()
            && config
                .endpoints
                .iter()
                .zip(&new)
                .all(|(a, b)| a.addr == b.addr && a.weight == b.weight);
        if same_endpoints {
            let same_balancer = config.source.policy.load_balancer == cluster.policy.load_balancer;
            for (endpoint, new) in config.endpoints.iter_mut().zip(&new) {
                endpoint.workload.clone_from(&new.workload);
            }
            config.source = cluster.clone();
            config.resolved = resolved;
            if !same_balancer {
                config.rebuild_table();
            }
            return;
        }
        for gone in config
            .endpoints
            .iter()
            .filter(|e| !new.iter().any(|n| n.addr == e.addr))
        {
            self.metrics().ejected.remove(&self.labels(gone.addr));
        }
        let cursor = config.cursor;
        *config = Config::new(cluster, resolved, &config.endpoints);
        config.cursor = cursor;
    }

    /// Resolves the cluster's DNS names (cached by the [`Resolver`]; a first lookup is bounded
    /// by the connect timeout) and makes their addresses endpoints. A name that does not
    /// resolve is left out (logged once); `Err` when no endpoint is left because of it.
    pub async fn resolve(&self) -> Result<(), UpstreamError> {
        let (source, timeout) = {
            let config = self.config();
            if config.source.dns.is_empty() && config.resolved.is_empty() {
                return Ok(());
            }
            let timeout = config
                .policy()
                .connection_pool
                .connect_timeout
                .unwrap_or(self.default_connect_timeout);
            (config.source.clone(), timeout)
        };
        let mut resolved = Vec::new();
        let mut failure = None;
        for endpoint in &source.dns {
            match self.resolver.resolve(&endpoint.name, timeout).await {
                Ok(addrs) => {
                    if self.dns_failing().remove(&endpoint.name) {
                        tracing::info!(cluster = %self.name, name = %endpoint.name, "DNS name of the cluster resolves again");
                    }
                    resolved.extend(addrs.iter().map(|&ip| ClusterEndpoint {
                        addr: EndpointAddr::new(ip, endpoint.port),
                        workload: None,
                        weight: endpoint.weight,
                    }));
                }
                Err(error) => {
                    if self.dns_failing().insert(endpoint.name.clone()) {
                        tracing::warn!(
                            cluster = %self.name,
                            service_entry = %describe_entry(&source),
                            name = %endpoint.name,
                            %error,
                            "a DNS name of the cluster does not resolve; its endpoints are left out"
                        );
                    }
                    failure = Some(error);
                }
            }
        }
        resolved.sort_by_key(|e| e.addr);
        let empty = resolved.is_empty() && source.endpoints.is_empty();
        {
            let mut config = self.config();
            // A reload since the lookups started: that configuration's names are resolved by
            // its own requests.
            if Arc::ptr_eq(&config.source, &source) {
                self.reconfigure(&mut config, &source, resolved);
            }
        }
        match failure {
            Some(source_error) if empty => Err(UpstreamError::Dns {
                cluster: self.key.clone(),
                service_entry: describe_entry(&source),
                source: source_error,
            }),
            _ => Ok(()),
        }
    }

    fn dns_failing(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        match self.dns_failing.lock() {
            Ok(failing) => failing,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Ends the ejections whose time is up (the gauge goes back to 0).
    fn return_due(&self, config: &Config, now: Instant) {
        for endpoint in &config.endpoints {
            let returned = endpoint
                .state
                .outlier
                .lock()
                .is_ok_and(|mut o| o.return_if_due(now));
            if returned {
                tracing::info!(cluster = %self.name, endpoint = %endpoint.addr, "outlier detection returned an endpoint");
                self.metrics()
                    .ejected
                    .get_or_create(&self.labels(endpoint.addr))
                    .set(0);
            }
        }
    }

    /// A load-balancing pick over the healthy (not ejected) endpoints not in `exclude` (the
    /// endpoints this request already tried; ignored if it would leave none). `hash` is the
    /// request's consistent hash ([`hash_key`]), used only by consistent-hash policies; without
    /// one they pick at random. Below `minHealthPercent` healthy, ejections are ignored
    /// (Envoy's panic mode).
    pub fn pick(
        &self,
        hash: Option<u64>,
        exclude: &[EndpointAddr],
    ) -> Result<Picked, UpstreamError> {
        let now = Instant::now();
        let mut config = self.config();
        if config.policy().load_balancer == LoadBalancer::Passthrough {
            return Err(UpstreamError::Passthrough {
                cluster: self.key.clone(),
            });
        }
        self.return_due(&config, now);
        let healthy: Vec<bool> = config
            .endpoints
            .iter()
            .map(|e| !e.state.outlier.lock().is_ok_and(|o| o.is_ejected(now)))
            .collect();
        let healthy_count = healthy.iter().filter(|&&h| h).count();
        let min_health = config
            .policy()
            .outlier_detection
            .as_ref()
            .map_or(0, |o| o.min_health_percent);
        let panic = outlier::panicking(healthy_count, healthy.len(), min_health);
        let usable = |i: usize| panic || healthy.get(i).copied().unwrap_or(false);
        let mut candidates: Vec<usize> = (0..config.endpoints.len())
            .filter(|&i| usable(i) && !exclude.contains(&config.endpoints[i].addr))
            .collect();
        if candidates.is_empty() {
            candidates = (0..config.endpoints.len()).filter(|&i| usable(i)).collect();
        }
        let no_endpoint = || UpstreamError::NoHealthyUpstream {
            cluster: self.key.clone(),
        };
        if candidates.is_empty() {
            return Err(no_endpoint());
        }
        let config = &mut *config;
        let endpoints = &config.endpoints;
        let weight = |i: usize| endpoints.get(i).map_or(1, |e| e.weight);
        let chosen = match (&config.source.policy.load_balancer, &config.table, hash) {
            (LoadBalancer::LeastRequest, _, _) => {
                lb::least_request(&mut config.cursor, &candidates, weight, |i| {
                    endpoints
                        .get(i)
                        .map_or(0, |e| e.state.active.load(Ordering::Acquire))
                })
            }
            (LoadBalancer::Random | LoadBalancer::ConsistentHash { .. }, _, _)
                if hash.is_none() =>
            {
                lb::random(&candidates, weight)
            }
            (LoadBalancer::ConsistentHash { .. }, Some(table), Some(hash)) => {
                table.lookup(hash, |i| candidates.contains(&i))
            }
            _ => lb::round_robin(&mut config.cursor, &candidates, weight),
        };
        let endpoint = chosen
            .and_then(|i| endpoints.get(i))
            .ok_or_else(no_endpoint)?;
        Ok(Picked {
            addr: endpoint.addr,
            workload: endpoint.workload.clone(),
            endpoint: endpoint.state.clone(),
        })
    }

    /// The original destination `addr` of a PASSTHROUGH cluster as a [`Picked`], so that
    /// [`Self::send`] pools its connections like any endpoint's (outlier detection does not
    /// apply to it).
    pub fn passthrough(&self, addr: EndpointAddr, workload: Option<Arc<Workload>>) -> Picked {
        let mut passthrough = match self.passthrough.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let endpoint = passthrough
            .entry(addr)
            .or_insert_with(|| Arc::new(EndpointState::new(addr)))
            .clone();
        Picked {
            addr,
            workload,
            endpoint,
        }
    }

    fn limits(&self) -> Limits {
        let tls = self.tls.current();
        let config = self.config();
        let pool = &config.policy().connection_pool;
        Limits {
            max_connections: pool.max_connections.unwrap_or(u32::MAX),
            max_pending: pool.http1_max_pending_requests.unwrap_or(u32::MAX),
            max_requests: pool.http2_max_requests.unwrap_or(u32::MAX),
            max_per_connection: pool.max_requests_per_connection.filter(|&n| n > 0),
            idle_timeout: pool.idle_timeout.filter(|t| !t.is_zero()),
            connect_timeout: pool.connect_timeout.unwrap_or(self.default_connect_timeout),
            mesh_tls: MeshTls::of(config.policy().tls.as_ref()),
            tls,
        }
    }

    /// Sends `request` to the picked endpoint on a pooled connection (HTTP/1.1 or h2 per
    /// `version`), within the cluster's `connectionPool` limits. The response body holds the
    /// connection (HTTP/1) and the request's counts until it ends. A cluster whose TLS
    /// settings refuse connections answers `Tls` without connecting.
    pub async fn send(
        &self,
        picked: &Picked,
        request: http::Request<Body>,
        version: HttpVersion,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let limits = self.limits();
        if let Some(source) = limits.tls.refusal() {
            return Err(UpstreamError::Tls {
                addr: picked.addr,
                source,
            });
        }
        let shared = &self.dialer.shared;
        let request_count = Counted::try_acquire(&shared.requests, limits.max_requests)
            .ok_or_else(|| shared.overflow("max_requests"))?;
        let counts = RequestCounts {
            request: request_count,
            active: Counted::acquire(&picked.endpoint.active),
        };
        let this = picked.addr;
        let evict = move || {
            let evicted = self
                .config()
                .endpoints
                .iter()
                .filter(|e| e.addr != this)
                .any(|e| e.state.pool.evict_one_idle());
            evicted
                || self.passthrough.lock().is_ok_and(|p| {
                    p.iter()
                        .filter(|(addr, _)| **addr != this)
                        .any(|(_, e)| e.pool.evict_one_idle())
                })
        };
        self.dialer
            .send(
                &picked.endpoint.pool,
                &limits,
                request,
                version,
                &evict,
                counts,
            )
            .await
    }

    /// Opens an opaque TCP (or TLS) connection to `picked`, as Envoy's tcp_proxy does: it
    /// takes one of the cluster's `maxConnections` (none left: `Overflow` at once, since
    /// tcp_proxy closes the downstream rather than queue it), dials within the cluster's
    /// `connectTimeout`, and reports the connect result to outlier detection. One attempt:
    /// tcp_proxy's `max_connect_attempts` defaults to 1 and Istio does not set it. The
    /// returned [`TcpConnection`] holds the counts for as long as the connection is proxied.
    /// Under DestinationRule `tls` the connection is TLS (no ALPN); a cluster whose TLS
    /// settings refuse connections fails at once, without connecting.
    pub async fn connect_tcp(
        &self,
        picked: &Picked,
        client: Option<std::net::SocketAddr>,
    ) -> Result<(Transport, TcpConnection), UpstreamError> {
        let limits = self.limits();
        if let Some(source) = limits.tls.refusal() {
            return Err(UpstreamError::Tls {
                addr: picked.addr,
                source,
            });
        }
        let shared = &self.dialer.shared;
        let slot = ConnectionSlot::try_reserve(shared, limits.max_connections)
            .ok_or_else(|| shared.overflow("max_connections"))?;
        let mut held = TcpConnection {
            _slot: slot,
            _active: Counted::acquire(&picked.endpoint.active),
            _open: Counted::acquire(&shared.tcp),
            delivered: None,
            tunnel: None,
        };
        let connected = self
            .dialer
            .open(picked.addr, &limits, client, Alpn::None)
            .await;
        match connected {
            Ok(Dialed {
                stream,
                delivered,
                tunnel,
            }) => {
                self.record(picked, Outcome::ConnectSuccess);
                held.delivered = delivered;
                held.tunnel = tunnel;
                Ok((stream, held))
            }
            Err(error) => {
                if error.is_connect_failure() {
                    self.record(picked, Outcome::GatewayError);
                }
                Err(error)
            }
        }
    }

    /// Feeds outlier detection with the result of one try to `picked`.
    pub fn record(&self, picked: &Picked, outcome: Outcome) {
        let config = self.config();
        let Some(detection) = config.policy().outlier_detection.as_ref() else {
            return;
        };
        let Some(endpoint) = config
            .endpoints
            .iter()
            .find(|e| Arc::ptr_eq(&e.state, &picked.endpoint))
        else {
            // Removed by a reload since the pick.
            return;
        };
        let now = Instant::now();
        let reached = endpoint
            .state
            .outlier
            .lock()
            .is_ok_and(|mut o| !o.is_ejected(now) && o.count(outcome, detection));
        if !reached {
            return;
        }
        let ejected = config
            .endpoints
            .iter()
            .filter(|e| e.state.outlier.lock().is_ok_and(|o| o.is_ejected(now)))
            .count();
        let may_eject = outlier::may_eject(
            ejected,
            config.endpoints.len(),
            detection.max_ejection_percent,
        );
        let Ok(mut state) = endpoint.state.outlier.lock() else {
            return;
        };
        state.reset_counters();
        if may_eject {
            state.eject(now, detection);
            tracing::info!(
                cluster = %self.name,
                endpoint = %endpoint.addr,
                times = state.times_ejected,
                "outlier detection ejected an endpoint"
            );
            let labels = self.labels(endpoint.addr);
            self.metrics().ejections.get_or_create(&labels).inc();
            self.metrics().ejected.get_or_create(&labels).set(1);
        } else {
            tracing::info!(
                cluster = %self.name,
                endpoint = %endpoint.addr,
                max_ejection_percent = detection.max_ejection_percent,
                "outlier detection would eject an endpoint but maxEjectionPercent is reached"
            );
        }
    }

    /// One retry from the cluster's `maxRetries` budget (concurrent retries, as Envoy's
    /// retry circuit breaker; unlimited when unset). `None`: exhausted (counted as an
    /// overflow with `limit="max_retries"`).
    pub fn try_retry(&self) -> Option<RetryPermit> {
        let max = self
            .config()
            .policy()
            .connection_pool
            .max_retries
            .unwrap_or(u32::MAX);
        let shared = &self.dialer.shared;
        let permit = Counted::try_acquire(&shared.retries, max).map(RetryPermit);
        if permit.is_none() {
            shared.metrics.overflow(&self.name, "max_retries");
        }
        permit
    }

    fn dump(&self) -> ClusterDump {
        let now = Instant::now();
        let config = self.config();
        self.return_due(&config, now);
        let shared = &self.dialer.shared;
        ClusterDump {
            load_balancer: format!("{:?}", config.policy().load_balancer),
            connections: shared.connections.load(Ordering::Acquire),
            pending_requests: shared.pending.load(Ordering::Acquire),
            active_requests: shared.requests.load(Ordering::Acquire),
            active_retries: shared.retries.load(Ordering::Acquire),
            endpoints: config
                .endpoints
                .iter()
                .map(|e| {
                    let (idle_connections, h2_connections) = e.state.pool.counts();
                    let outlier = e.state.outlier.lock();
                    let outlier = outlier.as_deref();
                    let until = outlier
                        .ok()
                        .and_then(|o| o.ejected_until)
                        .filter(|&until| until > now);
                    EndpointDump {
                        addr: e.addr.to_string(),
                        weight: e.weight,
                        active_requests: e.state.active.load(Ordering::Acquire),
                        ejected: until.is_some(),
                        ejected_until: until.map(|until| (until - now).as_secs_f64()),
                        times_ejected: outlier.map_or(0, |o| o.times_ejected),
                        consecutive_5xx: outlier.map_or(0, |o| o.consecutive_5xx),
                        consecutive_gateway_errors: outlier.map_or(0, |o| o.consecutive_gateway),
                        idle_connections,
                        h2_connections,
                    }
                })
                .collect(),
        }
    }

    /// How often [`maintain`] looks: often enough for the shortest timer in the policy.
    fn maintenance_period(&self) -> Duration {
        let config = self.config();
        let policy = config.policy();
        let mut period = Duration::from_secs(1);
        if let Some(idle) = policy.connection_pool.idle_timeout.filter(|t| !t.is_zero()) {
            period = period.min(idle / 2);
        }
        if let Some(detection) = &policy.outlier_detection {
            period = period
                .min(detection.interval)
                .min(detection.base_ejection_time / 4);
        }
        period.max(Duration::from_millis(10))
    }

    fn maintain_once(&self) {
        let now = Instant::now();
        let config = self.config();
        self.return_due(&config, now);
        if self.busy(&config, now) {
            self.touch(now);
        } else if now.duration_since(self.idle_since()) >= self.eviction_timeout(&config) {
            // Idle long enough to be forgotten: close its pooled connections now, so that
            // the open-connection count reaches 0 and [`Self::evictable`] holds.
            for endpoint in &config.endpoints {
                endpoint.state.pool.prune(Some(Duration::ZERO));
            }
            if let Ok(passthrough) = self.passthrough.lock() {
                for endpoint in passthrough.values() {
                    endpoint.pool.prune(Some(Duration::ZERO));
                }
            }
        }
        let idle_timeout = config
            .policy()
            .connection_pool
            .idle_timeout
            .filter(|t| !t.is_zero());
        for endpoint in &config.endpoints {
            endpoint.state.pool.prune(idle_timeout);
        }
        if let Ok(mut passthrough) = self.passthrough.lock() {
            passthrough.retain(|_, endpoint| {
                endpoint.pool.prune(idle_timeout);
                // Held by a request in flight, or still has connections: keep.
                Arc::strong_count(endpoint) > 1 || endpoint.pool.counts() != (0, 0)
            });
        }
    }

    /// Requests in flight, waiting or retrying, opaque TCP connections open, or an endpoint
    /// ejected now: the cluster's state matters.
    fn busy(&self, config: &Config, now: Instant) -> bool {
        let shared = &self.dialer.shared;
        let counting = [
            &shared.requests,
            &shared.pending,
            &shared.retries,
            &shared.tcp,
        ]
        .iter()
        .any(|count| count.load(Ordering::Acquire) > 0);
        counting
            || config
                .endpoints
                .iter()
                .any(|e| e.state.outlier.lock().is_ok_and(|o| o.is_ejected(now)))
    }

    /// [`CLUSTER_IDLE_TIMEOUT`], or the cluster's `idleTimeout` when longer, so that its
    /// pooled connections live out their configured time.
    fn eviction_timeout(&self, config: &Config) -> Duration {
        config
            .policy()
            .connection_pool
            .idle_timeout
            .map_or(CLUSTER_IDLE_TIMEOUT, |t| t.max(CLUSTER_IDLE_TIMEOUT))
    }

    /// Not busy, no connection open, and unused for its eviction timeout.
    fn evictable(&self, now: Instant) -> bool {
        let config = self.config();
        !self.busy(&config, now)
            && self.dialer.shared.connections.load(Ordering::Acquire) == 0
            && now.duration_since(self.idle_since()) >= self.eviction_timeout(&config)
    }

    /// Drops its gauges from the registry: a forgotten cluster has no connection and no
    /// ejection to report, and ALLOW_ANY would otherwise grow the series without bound.
    fn forget_metrics(&self) {
        let metrics = self.metrics();
        metrics.connections.remove(&ClusterLabels {
            cluster: self.name.clone(),
        });
        for endpoint in &self.config().endpoints {
            metrics.ejected.remove(&self.labels(endpoint.addr));
        }
    }
}

/// Returns ejected endpoints on time and closes idle connections even without traffic;
/// removes the cluster from `clusters` once it stayed idle ([`ClusterState::evictable`]) and
/// ends with it.
async fn maintain(cluster: Weak<ClusterState>, clusters: Weak<ClusterMap>) {
    loop {
        let Some(period) = cluster.upgrade().map(|c| c.maintenance_period()) else {
            return;
        };
        tokio::time::sleep(period).await;
        let (Some(cluster), Some(clusters)) = (cluster.upgrade(), clusters.upgrade()) else {
            return;
        };
        cluster.maintain_once();
        if cluster.evictable(Instant::now()) && evict(&clusters, &cluster) {
            return;
        }
    }
}

/// Removes `cluster` from `clusters` if it is still the one there and still idle (checked
/// under the map's lock, which [`Upstreams::cluster`] takes to hand a cluster out).
fn evict(clusters: &ClusterMap, cluster: &Arc<ClusterState>) -> bool {
    let mut clusters = match clusters.lock() {
        Ok(clusters) => clusters,
        Err(poisoned) => poisoned.into_inner(),
    };
    let current = clusters
        .get(&cluster.key)
        .is_some_and(|c| Arc::ptr_eq(c, cluster));
    if !current || !cluster.evictable(Instant::now()) {
        return false;
    }
    clusters.remove(&cluster.key);
    drop(clusters);
    cluster.forget_metrics();
    tracing::debug!(cluster = %cluster.name, "forgot an idle upstream cluster");
    true
}

#[cfg(test)]
mod tests;
