//! What outbound and inbound connections share once their destination is decided: dial,
//! forward, drain, and report.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use shunt_common::SockKey;
use tokio::io::{AsyncRead, AsyncWrite};

use super::forward::{self, End, ResetOnClose};
use crate::addrs::{ClientAddr, OrigDstAddr};
use crate::authz;
use crate::context::{PodContext, ProxyContext};
use crate::drain;
use crate::hbone::HboneError;
use crate::peer_security::Principal;
use crate::pod::Pod;
use crate::progress::{self, Progress};
use crate::response_flag::{ResponseFlag, ResponseFlags};
use crate::socket;
use crate::splice::{self, Splicing};
use crate::tcp_info::{self, TcpFigures};
use crate::telemetry::access_log::{self, CloseReason, Entry};
use crate::telemetry::metrics::{ConnectionMetrics, TcpLabels, UNKNOWN};
use crate::telemetry::peer::Peer;
use crate::telemetry::security::{PeerSecurity, SecurityPolicy};
use crate::telemetry::tcp::{self, FlowLabels, TcpWatch};
use crate::telemetry::{self, Reporter};
use crate::upstream::{
    ClusterState, Delivery, DialError, Dialed, Picked, TcpConnection, Transport, Tunnel,
    UpstreamError,
};
use shunt_mesh::index::MeshIndex;
use shunt_mesh::model::{Service, Workload};

/// The two ends of a connection, as far as the mesh knows them.
#[derive(Default)]
pub(super) struct Peers {
    pub source: Option<Arc<Workload>>,
    pub destination: Option<Arc<Workload>>,
    pub service: Option<Arc<Service>>,
}

/// What to do with an accepted connection.
pub(super) enum Decision {
    Dial {
        upstream: std::net::SocketAddr,
    },
    /// Dial an endpoint picked from a cluster, within the cluster's DestinationRule
    /// (`connectionPool`, outlier detection, least-request counts).
    DialEndpoint {
        cluster: Arc<ClusterState>,
        picked: Picked,
    },
    /// Forward to a connection already made to `upstream` (an HBONE stream's app).
    Connected {
        upstream: std::net::SocketAddr,
        stream: Box<Transport>,
    },
    /// Close it with RST and log why.
    Refuse {
        reason: CloseReason,
        error: String,
    },
}

/// An accepted connection, and what is known of it so far.
pub(super) struct Accepted {
    pub direction: access_log::Direction,
    pub reporter: Reporter,
    pub client: ClientAddr,
    /// `namespace/name` of the pod whose listener accepted (its uid if the state lacks it).
    pub pod: String,
    pub orig_dst: Option<OrigDstAddr>,
    pub peers: Peers,
    /// How the connection's peers are authenticated as accepted: for an inbound connection
    /// its downstream's (an HBONE listener sets what the handshake proved); plaintext until
    /// then, and for an outbound one until its dial says more ([`dialled_security`]).
    pub security: PeerSecurity,
    pub started_at: SystemTime,
    pub started: Instant,
    /// The client app's socket, as the eBPF programs key it, when the connection may be
    /// spliced once delivered on this node ([`super::splice`]).
    pub client_app: Option<SockKey>,
    /// What the destination's AuthorizationPolicies allowed the connection as, to evaluate
    /// again when they change (`crate::authz::watch`); `None`: nothing to watch.
    pub authz: Option<authz::watch::Watched>,
}

/// An accepted connection and what was decided for it.
pub(super) struct Plan {
    pub accepted: Accepted,
    pub decision: Decision,
}

impl Accepted {
    pub fn new(
        direction: access_log::Direction,
        reporter: Reporter,
        client: ClientAddr,
        index: &MeshIndex,
        pod: &Pod,
    ) -> Self {
        let pod = index.workload_by_uid(pod.uid.as_str()).map_or_else(
            || pod.uid.to_string(),
            |w| format!("{}/{}", w.namespace, w.name),
        );
        Self {
            direction,
            reporter,
            client,
            pod,
            orig_dst: None,
            peers: Peers::default(),
            security: PeerSecurity::None,
            started_at: SystemTime::now(),
            started: Instant::now(),
            client_app: None,
            authz: None,
        }
    }

    pub fn dial(self, upstream: std::net::SocketAddr) -> Plan {
        Plan {
            accepted: self,
            decision: Decision::Dial { upstream },
        }
    }

    pub fn connected(self, upstream: std::net::SocketAddr, stream: Transport) -> Plan {
        Plan {
            accepted: self,
            decision: Decision::Connected {
                upstream,
                stream: Box::new(stream),
            },
        }
    }

    pub fn dial_endpoint(self, cluster: Arc<ClusterState>, picked: Picked) -> Plan {
        Plan {
            accepted: self,
            decision: Decision::DialEndpoint { cluster, picked },
        }
    }

    pub fn refuse(self, reason: CloseReason, error: impl Into<String>) -> Plan {
        Plan {
            accepted: self,
            decision: Decision::Refuse {
                reason,
                error: error.into(),
            },
        }
    }
}

/// Counts bytes into the connection's metrics as they are delivered.
struct Meter {
    /// Set once the connection's peer security is known: after its dial (bytes flow only
    /// then), or when it ends without one.
    metrics: OnceLock<ConnectionMetrics>,
    /// The destination reporter's metrics, when the connection was delivered straight to a
    /// pod served on this node (its inbound listener, which would count them, was skipped).
    delivered: OnceLock<ConnectionMetrics>,
    received: AtomicU64,
    sent: AtomicU64,
}

impl Progress for Meter {
    fn delivered(&self, direction: progress::Direction, bytes: u64) {
        match direction {
            progress::Direction::ClientToServer => {
                if let Some(metrics) = self.metrics.get() {
                    metrics.received(bytes);
                }
                if let Some(delivered) = self.delivered.get() {
                    delivered.received(bytes);
                }
                self.received.fetch_add(bytes, Ordering::Relaxed);
            }
            progress::Direction::ServerToClient => {
                if let Some(metrics) = self.metrics.get() {
                    metrics.sent(bytes);
                }
                if let Some(delivered) = self.delivered.get() {
                    delivered.sent(bytes);
                }
                self.sent.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }
}

/// Hands `pair`'s spliced bytes to `count` every [`splice::REPORT_INTERVAL`]; never returns,
/// and never wakes without a pair. Every connection's task carries this future, so the timer
/// exists only for a spliced one.
async fn report_spliced(
    pair: Option<&splice::SplicePair>,
    count: &impl Fn(splice::Spliced),
) -> std::convert::Infallible {
    let Some(pair) = pair else {
        return std::future::pending().await;
    };
    let first = tokio::time::Instant::now() + splice::REPORT_INTERVAL;
    let mut interval = tokio::time::interval_at(first, splice::REPORT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        count(pair.report());
    }
}

/// How the connection ended, for the log.
struct Ending {
    upstream: Option<std::net::SocketAddr>,
    reason: CloseReason,
    /// Envoy's flags for the end: `UF`, `UO`, `UH` when the dial failed or had nothing to
    /// dial; none otherwise.
    flags: ResponseFlags,
    error: Option<String>,
    /// The peers' security as this side reports it ([`dialled_security`]).
    security: PeerSecurity,
    /// The connection as the destination pod's inbound listener would have seen it, when it
    /// was delivered straight to that pod.
    delivered: Option<Accepted>,
    /// The upstream socket's last `TCP_INFO` reading, when it crossed the network.
    tcp: Option<TcpFigures>,
}

/// Carries out `plan` for `downstream` (the accepted connection, possibly behind the bytes
/// protocol detection read) and reports it.
pub(super) async fn run<S>(
    proxy: &ProxyContext,
    pod: &PodContext,
    Plan { accepted, decision }: Plan,
    mut downstream: S,
) where
    S: AsyncRead + AsyncWrite + ResetOnClose + Unpin,
{
    let meter = Meter {
        metrics: OnceLock::new(),
        delivered: OnceLock::new(),
        received: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    };
    let flows = &proxy.metrics.flows;
    if flows.is_on() && !matches!(decision, Decision::Refuse { .. }) {
        flows.push(opened(&accepted));
    }

    let ending = match decision {
        Decision::Refuse { reason, error } => Ending {
            upstream: None,
            reason,
            // Nothing to dial: Envoy's flag for a cluster without a host (REGISTRY_ONLY's
            // BlackHoleCluster included).
            flags: if reason == CloseReason::Unreachable {
                ResponseFlag::NoHealthyUpstream.into()
            } else {
                ResponseFlags::NONE
            },
            error: Some(error),
            security: accepted.security.clone(),
            delivered: None,
            tcp: None,
        },
        Decision::Dial { upstream } => {
            let target = Target::Addr(upstream);
            dial_and_forward(proxy, pod, &accepted, target, &mut downstream, &meter).await
        }
        Decision::DialEndpoint { cluster, picked } => {
            let target = Target::Endpoint(&cluster, &picked);
            dial_and_forward(proxy, pod, &accepted, target, &mut downstream, &meter).await
        }
        Decision::Connected { upstream, stream } => {
            let target = Target::Connected(upstream, std::sync::Mutex::new(Some(*stream)));
            dial_and_forward(proxy, pod, &accepted, target, &mut downstream, &meter).await
        }
    };
    if ending.reason != CloseReason::Eof {
        // Anything but a clean end must not look like one to the client.
        downstream.reset_on_close();
    }
    drop(downstream);

    let entry = entry(&accepted, &ending.security, &ending, &meter);
    let delivered_entry = ending
        .delivered
        .as_ref()
        .map(|delivered| self::entry(delivered, &delivered.security, &ending, &meter));
    // Closed once the sockets are: the connection is over for whoever scrapes next. One
    // that was never dialled counts as opened now, with what is known of it.
    let Meter {
        metrics, delivered, ..
    } = meter;
    metrics
        .into_inner()
        .unwrap_or_else(|| {
            proxy
                .metrics
                .open_connection(tcp_labels(proxy, &accepted, ending.security.clone()))
        })
        .close(ending.flags);
    if let Some(delivered) = delivered.into_inner() {
        delivered.close(ending.flags);
    }
    if flows.is_on() {
        if let (Some(delivered_entry), Some(delivered)) = (&delivered_entry, &ending.delivered) {
            flows.push(telemetry::flows::tcp_close(
                delivered_entry,
                delivered.peers.source.as_deref(),
                delivered.peers.destination.as_deref(),
            ));
        }
        flows.push(telemetry::flows::tcp_close(
            &entry,
            accepted.peers.source.as_deref(),
            accepted.peers.destination.as_deref(),
        ));
    }
    let access_log = proxy.access_log_on();
    if access_log
        && let Some(delivered_entry) = delivered_entry
        && let Err(error) = proxy.access_log.record(&delivered_entry)
    {
        tracing::warn!(%error, "access log entry lost");
    }
    tracing::debug!(
        pod = %entry.pod,
        client = %entry.src_addr,
        dst = %entry.dst_addr,
        close_reason = ?entry.close_reason,
        error = entry.error.as_deref().unwrap_or(""),
        "connection closed"
    );
    if access_log && let Err(error) = proxy.access_log.record(&entry) {
        tracing::warn!(%error, "access log entry lost");
    }
}

/// What a connection dials.
enum Target<'a> {
    /// An address as it is, with the proxy's connect timeout.
    Addr(std::net::SocketAddr),
    /// An endpoint of a cluster, through the cluster ([`ClusterState::connect_tcp`]).
    Endpoint(&'a ClusterState, &'a Picked),
    /// A connection already made (taken once).
    Connected(std::net::SocketAddr, std::sync::Mutex<Option<Transport>>),
}

impl Target<'_> {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Self::Addr(addr) | Self::Connected(addr, _) => *addr,
            Self::Endpoint(_, picked) => picked.addr.socket_addr(),
        }
    }

    /// The upstream connection, and what it holds of its cluster while open.
    async fn connect(
        &self,
        proxy: &ProxyContext,
        pod: &PodContext,
        client: std::net::SocketAddr,
    ) -> Result<Connected, ConnectFailed> {
        match self {
            Self::Addr(addr) => pod
                .upstreams
                .dial(*addr, proxy.connect_timeout, Some(client))
                .await
                .map(
                    |Dialed {
                         stream,
                         delivered,
                         tunnel,
                     }| (stream, None, delivered, tunnel),
                )
                .map_err(|error| ConnectFailed {
                    reason: connect_close_reason(&error),
                    flags: ResponseFlag::UpstreamConnectionFailure.into(),
                    error: error.to_string(),
                }),
            Self::Connected(_, stream) => stream
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .map(|stream| (stream, None, None, None))
                .ok_or_else(|| ConnectFailed {
                    reason: CloseReason::Error,
                    flags: ResponseFlags::NONE,
                    error: "the connection was taken twice".to_owned(),
                }),
            Self::Endpoint(cluster, picked) => cluster
                .connect_tcp(picked, Some(client))
                .await
                .map(|(stream, mut held)| {
                    let delivered = held.delivered.take();
                    let tunnel = held.tunnel.take();
                    (stream, Some(held), delivered, tunnel)
                })
                .map_err(|error| upstream_close(&error)),
        }
    }
}

/// A connected upstream: the stream, its hold on its cluster, the served pod it was
/// delivered to on this node, and the HBONE tunnel it runs in.
type Connected = (
    Transport,
    Option<TcpConnection>,
    Option<Delivery>,
    Option<Tunnel>,
);

/// Why a connect failed, for the log and the metrics.
struct ConnectFailed {
    reason: CloseReason,
    flags: ResponseFlags,
    error: String,
}

/// The close reason, flags and logged error of a cluster connect that failed; the error
/// starts with Envoy's response flag (`UO` for an overflow, `UF` for a connect failure).
fn upstream_close(error: &UpstreamError) -> ConnectFailed {
    let reason = match error {
        UpstreamError::Connect { source, .. } => connect_close_reason(source),
        _ => CloseReason::Error,
    };
    let flags = error.response_flag();
    ConnectFailed {
        reason,
        flags,
        error: format!("{flags}: {error}"),
    }
}

async fn dial_and_forward<S>(
    proxy: &ProxyContext,
    pod: &PodContext,
    accepted: &Accepted,
    target: Target<'_>,
    downstream: &mut S,
    meter: &Meter,
) -> Ending
where
    S: AsyncRead + AsyncWrite + ResetOnClose + Unpin,
{
    let upstream_addr = target.addr();
    let undialled = |reason, flags, error| Ending {
        upstream: Some(upstream_addr),
        reason,
        flags,
        error,
        security: accepted.security.clone(),
        delivered: None,
        tcp: None,
    };
    // A same-node delivery skips the destination's inbound listener: its policies are
    // checked here, with both pods' identities, before the app sees a connection.
    let mut watched = accepted.authz.clone();
    if accepted.direction == access_log::Direction::Outbound
        && let std::net::SocketAddr::V4(app_addr) = upstream_addr
        && let Some(to) = proxy
            .local_pods
            .target(&pod.pod.uid, &proxy.state.load(), upstream_addr)
    {
        let side = destination_side(proxy, accepted, &to, upstream_addr);
        match authorize(proxy, &side, app_addr, None) {
            Ok(allowed) => watched = allowed,
            Err(error) => {
                return Ending {
                    upstream: Some(upstream_addr),
                    reason: CloseReason::Denied,
                    flags: ResponseFlags::NONE,
                    error: Some(error),
                    security: accepted.security.clone(),
                    delivered: Some(side),
                    tcp: None,
                };
            }
        }
    }
    let connected = tokio::select! {
        biased;
        () = pod.pod.drain.force_closed() => {
            return undialled(CloseReason::Drained, ResponseFlags::NONE, None);
        }
        connected = target.connect(proxy, pod, accepted.client.0) => connected,
    };
    // `_held` releases the cluster's counts when the forwarding ends.
    let (mut upstream, _held, delivered, tunnel) = match connected {
        Ok(connected) => connected,
        Err(failed) => return undialled(failed.reason, failed.flags, Some(failed.error)),
    };
    let delivered_pod = delivered.and_then(|d| d.pod());
    let delivered = delivered_pod
        .as_ref()
        .map(|to| destination_side(proxy, accepted, to, upstream_addr));
    let security = dialled_security(
        proxy,
        accepted,
        &upstream,
        delivered.as_ref(),
        tunnel.as_ref(),
    );
    let _ = meter.metrics.set(proxy.metrics.open_connection(tcp_labels(
        proxy,
        accepted,
        security.clone(),
    )));
    if let Some(delivered) = &delivered {
        let labels = tcp_labels(proxy, delivered, delivered.security.clone());
        let _ = meter.delivered.set(proxy.metrics.open_connection(labels));
    }
    // The upstream socket's kernel figures, when it crosses the network: not a same-node
    // delivery, and not a stream inside an HBONE connection (the tunnel's socket carries
    // other connections too).
    // A second descriptor of the socket, so that it can be sampled while the forwarding
    // holds the stream; dropped with it, at the end of this function.
    let tcp_socket = upstream
        .plain_tcp()
        .filter(|_| delivered.is_none())
        .and_then(|socket| std::os::fd::AsFd::as_fd(socket).try_clone_to_owned().ok());
    let tcp_watch = tcp_socket
        .as_ref()
        .and_then(|socket| tcp_info::socket_cookie(socket).ok())
        .map(|cookie| {
            proxy.metrics.tcp.watch(
                cookie,
                FlowLabels::new(
                    accepted.reporter,
                    accepted.peers.source.as_deref(),
                    accepted.peers.destination.as_deref(),
                ),
            )
        });
    let tcp_sample = || {
        tcp_socket
            .as_ref()
            .and_then(|socket| tcp_info::sample(socket).ok())
    };
    let ending = |reason, error: Option<String>, delivered| {
        // Read before the socket is dropped: once the forwarding is over it has usually
        // reached TCP_CLOSE already, where its figures no longer change.
        let last = tcp_watch.as_ref().and_then(|_| tcp_sample());
        Ending {
            upstream: Some(upstream_addr),
            reason,
            flags: ResponseFlags::NONE,
            error,
            security: security.clone(),
            delivered,
            tcp: last.map(|sample| sample.figures),
        }
    };
    // Delivered to another pod: it counts among that pod's connections, whose drain waits for
    // it and cuts it at the deadline, as it would the connection its inbound listener accepted.
    let _destination = delivered_pod.as_ref().map(|to| to.drain.hold());
    let destination_drain = delivered_pod.map(|to| to.drain.clone());
    // Boxed: every connection's task holds this across its life, and idle connections are
    // counted in bytes (the idle target); only spliced ones pay for the box.
    let splice = accepted
        .client_app
        .filter(|_| destination_drain.is_some())
        .zip(upstream.plain_tcp())
        .and_then(|(client_app, upstream)| proxy.splice.pair(client_app, upstream))
        .map(Box::new);
    let progress = Splicing {
        inner: meter,
        pair: splice.as_deref(),
    };
    // Bytes that skipped the proxy count as the connection's, as if it had carried them.
    let count_spliced = |spliced: splice::Spliced| {
        for (direction, bytes) in [
            (
                progress::Direction::ClientToServer,
                spliced.client_to_server,
            ),
            (
                progress::Direction::ServerToClient,
                spliced.server_to_client,
            ),
        ] {
            if bytes > 0 {
                meter.delivered(direction, bytes);
            }
        }
    };
    let forwarded = tokio::select! {
        biased;
        () = pod.pod.drain.force_closed() => None,
        () = drain::force_closed(destination_drain.as_ref()) => None,
        decision = denied_later(proxy, watched.as_ref()) => {
            if let Some(splice) = &splice {
                count_spliced(splice.finish());
            }
            upstream.reset_on_close();
            let error = format!("{}: {}", authz::DENIED_BODY, decision.reason);
            return finish(ending(CloseReason::Denied, Some(error), delivered), tcp_watch);
        }
        forwarded = forward::forward(downstream, &mut upstream, &progress) => Some(forwarded),
        never = report_spliced(splice.as_deref(), &count_spliced) => match never {},
        never = sample_tcp(tcp_watch.as_ref(), tcp_sample) => match never {},
    };
    if let Some(splice) = &splice {
        count_spliced(splice.finish());
    }
    let Some(forwarded) = forwarded else {
        upstream.reset_on_close();
        return finish(ending(CloseReason::Drained, None, delivered), tcp_watch);
    };
    let ended = match forwarded.end {
        End::Eof => ending(CloseReason::Eof, None, delivered),
        End::Reset { side, error } => ending(
            CloseReason::Reset,
            Some(format!("{side} reset the connection: {error}")),
            delivered,
        ),
        End::Failed { side, error } => ending(
            CloseReason::Error,
            Some(format!("{side} I/O failed: {error}")),
            delivered,
        ),
    };
    finish(ended, tcp_watch)
}

/// Hands the connection's last `TCP_INFO` reading to its watch.
fn finish(ending: Ending, watch: Option<TcpWatch>) -> Ending {
    if let Some(watch) = watch {
        watch.finish(ending.tcp.map(|figures| tcp_info::Sample {
            figures,
            closed: false,
        }));
    }
    ending
}

/// Samples the watched socket every [`tcp::SAMPLE_INTERVAL`]; never returns, and never wakes
/// without a watch.
async fn sample_tcp(
    watch: Option<&TcpWatch>,
    sample: impl Fn() -> Option<tcp_info::Sample>,
) -> std::convert::Infallible {
    let Some(watch) = watch else {
        return std::future::pending().await;
    };
    let first = tokio::time::Instant::now() + tcp::SAMPLE_INTERVAL;
    let mut interval = tokio::time::interval_at(first, tcp::SAMPLE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Some(sample) = sample() {
            watch.sample(&sample);
        }
    }
}

/// `accepted` as the inbound listener of `pod`, the served pod it was delivered to, would
/// have accepted it ([`super::inbound`]): same labels, `reporter="destination"`.
fn destination_side(
    proxy: &ProxyContext,
    accepted: &Accepted,
    pod: &Pod,
    upstream: std::net::SocketAddr,
) -> Accepted {
    let index = proxy.state.load();
    let source = accepted.peers.source.clone();
    // No second connection exists to have its own client port: both sides name the app's,
    // so the two access log lines of one connection share their `src_addr`.
    let mut inbound = Accepted::new(
        access_log::Direction::Inbound,
        Reporter::Destination,
        accepted.client,
        &index,
        pod,
    );
    inbound.started_at = accepted.started_at;
    inbound.started = accepted.started;
    inbound.orig_dst = Some(OrigDstAddr(upstream));
    inbound.peers.destination = index.workload_by_uid(pod.uid.as_str()).cloned();
    inbound.peers.service = inbound
        .peers
        .destination
        .as_ref()
        .and_then(|w| index.destination_service(w, upstream.port()))
        .cloned();
    inbound.security = proxy
        .metrics
        .peers
        .same_node(source.as_ref(), inbound.peers.destination.as_ref());
    inbound.peers.source = source;
    inbound
}

/// The destination's AuthorizationPolicies for `side`, a TCP (or TLS) connection as its
/// destination side sees it (the inbound listener's, an HBONE stream's, or a same-node
/// delivery's): the denial's reason, or what to watch so that a later policy that denies it
/// closes it (`None`: no destination the mesh knows).
pub(super) fn authorize(
    proxy: &ProxyContext,
    side: &Accepted,
    app_addr: std::net::SocketAddrV4,
    sni: Option<&str>,
) -> Result<Option<authz::watch::Watched>, String> {
    let Some(destination) = side.peers.destination.as_deref() else {
        return Ok(None);
    };
    let std::net::SocketAddr::V4(client) = side.client.0 else {
        return Ok(None);
    };
    let index = proxy.state.load();
    let connection = authz::Connection {
        destination,
        security: &side.security,
        source_ip: *client.ip(),
        destination_addr: app_addr,
        sni,
    };
    let decision = connection.evaluate(&index, &proxy.metrics.authz, None);
    if !decision.allowed {
        return Err(format!("{}: {}", authz::DENIED_BODY, decision.reason));
    }
    Ok(Some(authz::watch::Watched {
        destination: destination.uid.clone(),
        security: side.security.clone(),
        source_ip: *client.ip(),
        destination_addr: app_addr,
        sni: sni.map(str::to_owned),
    }))
}

/// Resolves once the policies deny a watched connection (never for `None`).
async fn denied_later(
    proxy: &ProxyContext,
    watched: Option<&authz::watch::Watched>,
) -> shunt_mesh::security::authz::Decision {
    match watched {
        Some(watched) => authz::watch::denied(&proxy.state, &proxy.metrics.authz, watched).await,
        None => std::future::pending().await,
    }
}

/// How the peers of a dialled connection were authenticated, as its side reports them.
/// The destination side keeps its downstream's ([`Accepted::security`]); the source side
/// takes the upstream connection's: both pods' identities when it was delivered on this node
/// (its `delivered` destination side), plaintext over a plain TCP upstream.
///
/// HBONE: an mTLS `Transport` answers here with the [`PeerSecurity::MutualTls`] its
/// handshake established (`source` this pod's identity, `destination` the peer
/// certificate's); `PeerSecurity` is a low module, so the transport can carry it itself.
fn dialled_security(
    proxy: &ProxyContext,
    accepted: &Accepted,
    upstream: &Transport,
    delivered: Option<&Accepted>,
    tunnel: Option<&Tunnel>,
) -> PeerSecurity {
    if accepted.reporter == Reporter::Destination {
        return accepted.security.clone();
    }
    if let Some(delivered) = delivered {
        return delivered.security.clone();
    }
    match (upstream, tunnel) {
        (Transport::Hbone(_), Some(tunnel)) => PeerSecurity::MutualTls {
            source: proxy.metrics.peers.identity(accepted.peers.source.as_ref()),
            destination: Some(Principal::new(tunnel.peer_identity.clone())),
        },
        _ => PeerSecurity::None,
    }
}

/// The labels of `accepted`'s metrics with `security`.
fn tcp_labels(proxy: &ProxyContext, accepted: &Accepted, security: PeerSecurity) -> TcpLabels {
    proxy.metrics.tcp_labels(
        accepted.reporter,
        accepted.peers.source.as_ref(),
        accepted.peers.destination.as_ref(),
        accepted.peers.service.as_ref(),
        security,
    )
}

fn connect_close_reason(error: &DialError) -> CloseReason {
    match error {
        DialError::Socket(socket::Error::ConnectTimeout { .. })
        | DialError::Hbone(HboneError::Timeout) => CloseReason::ConnectTimeout,
        DialError::Socket(socket::Error::ConnectRefused { .. }) => CloseReason::ConnectRefused,
        DialError::Socket(socket::Error::Unreachable { .. }) => CloseReason::Unreachable,
        _ => CloseReason::Error,
    }
}

/// The flow ring's `tcp_open` event for `accepted`.
fn opened(accepted: &Accepted) -> shunt_api::flows::Flow {
    let source = Peer::new(accepted.peers.source.as_deref());
    let destination = Peer::new(accepted.peers.destination.as_deref());
    let dst_addr = accepted
        .orig_dst
        .map_or_else(|| UNKNOWN.to_owned(), |d| d.to_string());
    let dst_service = accepted
        .peers
        .service
        .as_ref()
        .map_or_else(|| UNKNOWN.to_owned(), |s| s.hostname());
    telemetry::flows::tcp_open(&telemetry::flows::Ends {
        reporter: accepted.reporter,
        pod: &accepted.pod,
        src_pod: accepted.peers.source.as_deref(),
        dst_pod: accepted.peers.destination.as_deref(),
        src_addr: &accepted.client.to_string(),
        dst_addr: &dst_addr,
        src_workload: source.workload(),
        src_namespace: source.namespace(),
        dst_workload: destination.workload(),
        dst_namespace: destination.namespace(),
        dst_service: &dst_service,
    })
}

fn entry(accepted: &Accepted, security: &PeerSecurity, ending: &Ending, meter: &Meter) -> Entry {
    let source = Peer::new(accepted.peers.source.as_deref());
    let destination = Peer::new(accepted.peers.destination.as_deref());
    Entry {
        start_time: accepted.started_at,
        duration_ms: u64::try_from(accepted.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        direction: accepted.direction,
        reporter: accepted.reporter,
        pod: accepted.pod.clone(),
        src_addr: accepted.client.to_string(),
        dst_addr: accepted
            .orig_dst
            .map_or_else(|| UNKNOWN.to_owned(), |d| d.to_string()),
        upstream_addr: ending.upstream.map(|a| a.to_string()),
        src_workload: source.workload().to_owned(),
        src_namespace: source.namespace().to_owned(),
        src_principal: security.source_principal().cloned(),
        dst_workload: destination.workload().to_owned(),
        dst_namespace: destination.namespace().to_owned(),
        dst_principal: security.destination_principal().cloned(),
        dst_service: accepted
            .peers
            .service
            .as_ref()
            .map_or_else(|| UNKNOWN.to_owned(), |s| s.hostname()),
        connection_security_policy: SecurityPolicy::of(security, accepted.reporter),
        peer_security: security.kind(),
        bytes_received: meter.received.load(Ordering::Relaxed),
        bytes_sent: meter.sent.load(Ordering::Relaxed),
        close_reason: ending.reason,
        response_flags: ending.flags,
        rtt_us: ending.tcp.map(|t| u64::from(t.rtt_us)),
        retransmits: ending.tcp.map(|t| u64::from(t.retransmits)),
        lost: ending.tcp.map(|t| u64::from(t.lost)),
        error: ending.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::time::Duration;

    #[test]
    fn connect_failures_map_to_their_close_reasons() {
        let (pod, addr) = (String::from("t/p"), "10.0.0.1:80".parse().unwrap());
        let source = || io::Error::from(io::ErrorKind::Other);
        for (error, expected) in [
            (
                socket::Error::ConnectTimeout {
                    pod: pod.clone(),
                    addr,
                    timeout: Duration::from_secs(1),
                },
                CloseReason::ConnectTimeout,
            ),
            (
                socket::Error::ConnectRefused {
                    pod: pod.clone(),
                    addr,
                    source: source(),
                },
                CloseReason::ConnectRefused,
            ),
            (
                socket::Error::Unreachable {
                    pod: pod.clone(),
                    addr,
                    source: source(),
                },
                CloseReason::Unreachable,
            ),
            (
                socket::Error::Mark {
                    pod: pod.clone(),
                    mark: 1,
                    source: source(),
                },
                CloseReason::Error,
            ),
        ] {
            assert_eq!(connect_close_reason(&error.into()), expected);
        }
    }
}
