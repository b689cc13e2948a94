//! The captured pods the proxy serves. Per pod: a socket worker in its netns, the outbound
//! (`127.0.0.1:15001`) and inbound (`127.0.0.1:15006`, or `0.0.0.0:15006` under iptables
//! capture: see [`InboundBind`]) listeners opened there, and the
//! [`Drain`] their accept loops and connections run under.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addrs::ClientAddr;
use crate::conn::{gateway, hbone, inbound, outbound};
use crate::context::{PodContext, ProxyContext};
use crate::drain::{Drain, DrainOutcome};
use crate::pod::Pod;
use crate::socket::{self, SocketFactory};
use crate::upstream::local::PodDial;
use crate::upstream::{Resolver, Upstreams};
use shunt_api::control::{InboundBind, ListenerKind, PodRole};
use shunt_api::netns::socket_netns_cookie;
use shunt_mesh::ids::PodUid;
use shunt_mesh::spiffe::SpiffeId;

/// Pause after an accept error other than an aborted handshake (out of descriptors, memory):
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sockets(#[from] socket::Error),
    #[error(
        "pod {pod}: the netns handed over has cookie {actual}, but the agent announced \
         {announced}; refusing to serve the pod from the wrong network namespace"
    )]
    CookieMismatch {
        pod: String,
        announced: u64,
        actual: u64,
    },
    #[error("pod {pod}: cannot read the netns cookie of its listener: {source}")]
    Cookie { pod: String, source: io::Error },
    #[error("pod {pod}: cannot read its listener's address: {source}")]
    LocalAddr { pod: String, source: io::Error },
    #[error(
        "pod {pod}: the {kind:?} listener the agent handed over (a previous proxy's) is not \
         a listening TCP socket of the pod's netns: {reason}"
    )]
    Adopt {
        pod: String,
        kind: ListenerKind,
        reason: String,
    },
}

/// A pod being served.
struct ServedPod {
    netns_cookie: u64,
    inbound_bind: InboundBind,
    role: PodRole,
    context: Arc<PodContext>,
    /// Shared with the accept loops; also what `PodReady` hands to the agent, which gives
    /// them to the next proxy. A gateway pod has none.
    listeners: Vec<(ListenerKind, Arc<TcpListener>)>,
    accept_loops: Vec<JoinHandle<()>>,
    /// A gateway pod's listeners, by port, as the state's Gateways say.
    gateway_ports: HashMap<u16, GatewayPortListener>,
    /// The identity whose certificate is kept for it (released when it stops being served).
    identity: Option<SpiffeId>,
}

/// One port a gateway pod serves: its accept loop, stopped alone when the port goes away.
struct GatewayPortListener {
    stop: CancellationToken,
    accept_loop: JoinHandle<()>,
}

impl GatewayPortListener {
    async fn stop(self, pod: &PodUid, port: u16) {
        self.stop.cancel();
        if let Err(error) = self.accept_loop.await {
            tracing::error!(%pod, port, %error, "gateway accept loop panicked");
        }
    }
}

impl ServedPod {
    /// Stops every accept loop and waits until they have closed their listeners.
    async fn stop_accepting(self, proxy: &ProxyContext) -> Arc<PodContext> {
        let local = &proxy.local_pods;
        local.remove(&self.context.pod);
        if let (Some(hbone), Some(identity)) = (&proxy.hbone, &self.identity) {
            hbone.tls.unserve(identity);
        }
        self.context.pod.drain.stop_accepting();
        drop(self.listeners);
        for (port, listener) in self.gateway_ports {
            listener.stop(&self.context.pod.uid, port).await;
        }
        for accept_loop in self.accept_loops {
            if let Err(error) = accept_loop.await {
                tracing::error!(pod = %self.context.pod.uid, %error, "accept loop panicked");
            }
        }
        self.context
    }
}

/// Listener addresses of a served pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodListeners {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
}

/// Every pod the proxy serves, by uid.
pub struct PodRegistry {
    factory: Arc<dyn SocketFactory>,
    proxy: Arc<ProxyContext>,
    drain_timeout: Duration,
    /// DNS cache of ServiceEntry hostnames, shared by every pod's upstreams.
    resolver: Arc<Resolver>,
    pods: Mutex<HashMap<PodUid, ServedPod>>,
    /// Drains of removed pods, waited for at shutdown.
    draining: TaskTracker,
}

impl PodRegistry {
    #[must_use]
    pub fn new(
        factory: Arc<dyn SocketFactory>,
        proxy: Arc<ProxyContext>,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            factory,
            proxy,
            drain_timeout,
            resolver: Arc::default(),
            pods: Mutex::new(HashMap::new()),
            draining: TaskTracker::new(),
        }
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<PodUid, ServedPod>> {
        // Held only for map operations, which cannot leave the map half-changed.
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves pod `uid` from `netns`, whose cookie the agent says is `netns_cookie`, and
    /// returns its listeners; the inbound one listens where `inbound_bind` says. Listeners in
    /// `adopt` (a previous proxy's, which the agent kept) are accepted from instead of bound
    /// anew, so that no connection is refused while proxies change. A pod already served from
    /// the same netns and the same way keeps its listeners (the agent re-announces pods after
    /// it restarts); one whose netns changed (the sandbox was recreated) or whose capture
    /// mode changed is drained and served afresh.
    ///
    /// A gateway pod ([`PodRole::Gateway`]) gets no outbound, inbound or HBONE listener, and
    /// none is returned: the proxy opens its Gateways' ports instead ([`Self::sync_gateways`]).
    pub async fn add(
        &self,
        uid: impl Into<PodUid>,
        netns_cookie: u64,
        inbound_bind: InboundBind,
        role: PodRole,
        netns: OwnedFd,
        adopt: Vec<(ListenerKind, OwnedFd)>,
    ) -> Result<Vec<(ListenerKind, Arc<TcpListener>)>, Error> {
        let uid = &uid.into();
        let stale = {
            let mut pods = self.pods();
            match pods.get(uid) {
                Some(served)
                    if served.netns_cookie == netns_cookie
                        && served.inbound_bind == inbound_bind
                        && served.role == role =>
                {
                    tracing::debug!(pod = %uid, "pod already served; keeping its listeners");
                    return Ok(served.listeners.clone());
                }
                Some(_) => pods.remove(uid),
                None => None,
            }
        };
        if let Some(stale) = stale {
            tracing::info!(
                pod = %uid,
                "pod's network namespace or capture mode changed; serving it afresh"
            );
            self.retire(stale).await;
        }

        let pod = self.pod_name(uid.as_str());
        let sockets = self.factory.enter(netns, &pod).await?;
        if role == PodRole::Gateway {
            self.add_gateway(uid, netns_cookie, inbound_bind, sockets)
                .await?;
            return Ok(Vec::new());
        }
        let mut adopt: HashMap<ListenerKind, OwnedFd> = adopt.into_iter().collect();
        let adopted = !adopt.is_empty();
        let outbound_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, shunt_common::OUTBOUND_PORT));
        let outbound = listener(
            &*sockets,
            &mut adopt,
            ListenerKind::Outbound,
            outbound_addr,
            &pod,
        )
        .await?;
        let inbound = listener(
            &*sockets,
            &mut adopt,
            ListenerKind::Inbound,
            inbound_bind.addr(),
            &pod,
        )
        .await?;
        for (listener, kind) in [(&outbound, "outbound"), (&inbound, "inbound")] {
            let actual = socket_netns_cookie(listener.as_fd()).map_err(|source| Error::Cookie {
                pod: pod.clone(),
                source,
            })?;
            if actual != netns_cookie {
                tracing::warn!(pod = %pod, kind, "listener of another netns");
                return Err(Error::CookieMismatch {
                    pod,
                    announced: netns_cookie,
                    actual,
                });
            }
        }
        let local_addr = |l: &TcpListener| {
            l.local_addr().map_err(|source| Error::LocalAddr {
                pod: pod.clone(),
                source,
            })
        };
        let listeners = PodListeners {
            outbound: local_addr(&outbound)?,
            inbound: local_addr(&inbound)?,
        };
        // HBONE: `<pod IP>:15008`, when the proxy has identities and the pod an IP.
        let hbone_listener = match (&self.proxy.hbone, self.pod_ip(uid.as_str())) {
            (Some(_), Some(ip)) => Some(Arc::new(
                listener(
                    &*sockets,
                    &mut adopt,
                    ListenerKind::Hbone,
                    SocketAddr::from((ip, shunt_common::HBONE_PORT)),
                    &pod,
                )
                .await?,
            )),
            _ => None,
        };
        // What is left (an HBONE listener this proxy, without identities, does not serve)
        // closes here; the sockets stay open while the previous proxy holds them.
        drop(adopt);
        let context = self.pod_context(uid, sockets, |_| listeners);
        let (outbound, inbound) = (Arc::new(outbound), Arc::new(inbound));
        let mut handed = vec![
            (ListenerKind::Outbound, outbound.clone()),
            (ListenerKind::Inbound, inbound.clone()),
        ];
        let mut accept_loops = vec![
            self.spawn_accept_loop(outbound, &context, "outbound", outbound::serve),
            self.spawn_accept_loop(inbound, &context, "inbound", inbound::serve),
        ];
        if let Some(listener) = hbone_listener {
            handed.push((ListenerKind::Hbone, listener.clone()));
            accept_loops.push(self.spawn_accept_loop(listener, &context, "hbone", hbone::serve));
        }
        tracing::info!(
            pod = %pod,
            netns_cookie,
            outbound = %listeners.outbound,
            inbound = %listeners.inbound,
            adopted,
            "serving pod"
        );
        self.proxy.local_pods.insert(context.pod.clone());
        // Its identity's certificate is kept while the pod is served here (counted: pods
        // sharing a service account share one).
        let identity = self.identity_of(uid.as_str());
        if let (Some(hbone), Some(identity)) = (&self.proxy.hbone, &identity) {
            hbone.tls.serve(identity);
        }
        self.pods().insert(
            uid.clone(),
            ServedPod {
                netns_cookie,
                inbound_bind,
                role,
                context,
                listeners: handed.clone(),
                accept_loops,
                gateway_ports: HashMap::new(),
                identity,
            },
        );
        Ok(handed)
    }

    /// Serves a gateway pod: its sockets and upstreams as any pod's (so its requests are
    /// dialled from its netns and take the mesh's upstream path), its identity's certificate
    /// kept (the client side of HBONE, `ISTIO_MUTUAL` servers), and its Gateways' ports.
    /// It is no same-node delivery target: it has no inbound listener.
    async fn add_gateway(
        &self,
        uid: &PodUid,
        netns_cookie: u64,
        inbound_bind: InboundBind,
        sockets: Arc<dyn socket::PodSockets>,
    ) -> Result<(), Error> {
        let context = self.pod_context(uid, sockets, |_| {
            // A gateway pod holds none of the proxy's usual listeners; these are the ports
            // they would have, so a destination there is still recognised as a loop.
            PodListeners {
                outbound: SocketAddr::from((Ipv4Addr::LOCALHOST, shunt_common::OUTBOUND_PORT)),
                inbound: SocketAddr::from((Ipv4Addr::LOCALHOST, shunt_common::INBOUND_PORT)),
            }
        });
        let identity = self.identity_of(uid.as_str());
        if let (Some(hbone), Some(identity)) = (&self.proxy.hbone, &identity) {
            hbone.tls.serve(identity);
        }
        tracing::info!(pod = %self.pod_name(uid.as_str()), netns_cookie, "serving gateway pod");
        self.pods().insert(
            uid.clone(),
            ServedPod {
                netns_cookie,
                inbound_bind,
                role: PodRole::Gateway,
                context,
                listeners: Vec::new(),
                accept_loops: Vec::new(),
                gateway_ports: HashMap::new(),
                identity,
            },
        );
        self.sync_gateways().await;
        Ok(())
    }

    /// The upstreams and `Pod` handle of a pod served from `sockets`.
    fn pod_context(
        &self,
        uid: &PodUid,
        sockets: Arc<dyn socket::PodSockets>,
        listeners: impl FnOnce(&PodUid) -> PodListeners,
    ) -> Arc<PodContext> {
        let dial = Arc::new(PodDial {
            uid: uid.clone(),
            sockets: sockets.clone(),
            state: self.proxy.state.clone(),
            local: self.proxy.local_pods.clone(),
            metrics: self.proxy.metrics.upstream.clone(),
            hbone: self.proxy.hbone.clone(),
        });
        let upstreams = Arc::new(Upstreams::with_dial(
            dial,
            self.proxy.connect_timeout,
            self.proxy.metrics.upstream.clone(),
            self.resolver.clone(),
        ));
        let listeners = listeners(uid);
        Arc::new(PodContext {
            pod: Arc::new(Pod {
                uid: uid.clone(),
                sockets,
                outbound_listener: listeners.outbound,
                inbound_listener: listeners.inbound,
                drain: Drain::new(),
            }),
            upstreams,
        })
    }

    /// Brings every gateway pod's listeners in line with the current state: a port a
    /// Gateway adds is opened on all addresses of the pod's netns, a port no Gateway has any
    /// more is closed (its connections drain with the pod's). A port that cannot be bound is
    /// logged and tried again with the next state.
    pub async fn sync_gateways(&self) {
        let index = self.proxy.state.load();
        // Per gateway pod: its context, the ports to open, the ports to close.
        type Plan = (PodUid, Arc<PodContext>, Vec<u16>, Vec<u16>);
        let plan: Vec<Plan> = self
            .pods()
            .iter()
            .filter(|(_, served)| served.role == PodRole::Gateway)
            .map(|(uid, served)| {
                let wanted: Vec<u16> = index
                    .gateway_listeners(uid)
                    .map(|listeners| listeners.ports.iter().map(|p| p.port).collect())
                    .unwrap_or_default();
                let open = wanted
                    .iter()
                    .copied()
                    .filter(|port| !served.gateway_ports.contains_key(port))
                    .collect();
                let close = served
                    .gateway_ports
                    .keys()
                    .copied()
                    .filter(|port| !wanted.contains(port))
                    .collect();
                (uid.clone(), served.context.clone(), open, close)
            })
            .collect();
        for (uid, context, open, close) in plan {
            for port in close {
                let removed = self
                    .pods()
                    .get_mut(&uid)
                    .and_then(|served| served.gateway_ports.remove(&port));
                if let Some(listener) = removed {
                    tracing::info!(pod = %uid, port, "no Gateway serves this port any more; closed it");
                    listener.stop(&uid, port).await;
                }
            }
            for port in open {
                let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                let listener = match context.pod.sockets.listen(addr).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        self.proxy.metrics.gateway.listener_failed(port);
                        tracing::error!(
                            pod = %self.pod_name(uid.as_str()),
                            port,
                            %error,
                            "cannot open the Gateway port in the gateway pod's netns (is something in the pod \
                             already listening on it?); retried with the next config change"
                        );
                        continue;
                    }
                };
                let stop = CancellationToken::new();
                let accept_loop = self.spawn_accept_loop_until(
                    Arc::new(listener),
                    &context,
                    "gateway",
                    gateway::serve,
                    Some(stop.clone()),
                );
                tracing::info!(pod = %self.pod_name(uid.as_str()), port, "serving Gateway port");
                let mut pods = self.pods();
                match pods.get_mut(&uid) {
                    Some(served) if Arc::ptr_eq(&served.context, &context) => {
                        served
                            .gateway_ports
                            .insert(port, GatewayPortListener { stop, accept_loop });
                    }
                    // Removed meanwhile: its listener goes with it.
                    _ => stop.cancel(),
                }
            }
        }
    }

    /// Stops serving `uid`: its listeners close now, its connections get the drain timeout.
    /// Returns whether the pod was served.
    pub async fn remove(&self, uid: &str) -> bool {
        let removed = self.pods().remove(uid);
        match removed {
            Some(served) => {
                tracing::info!(pod = uid, "pod removed; draining its connections");
                self.retire(served).await;
                true
            }
            None => false,
        }
    }

    /// Stops serving every pod not in `keep`.
    pub async fn retain(&self, keep: &[PodUid]) {
        let keep: HashSet<&PodUid> = keep.iter().collect();
        let gone: Vec<PodUid> = self
            .pods()
            .keys()
            .filter(|uid| !keep.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.remove(uid.as_str()).await;
        }
    }

    /// Listener addresses of `uid`, if it is served.
    #[must_use]
    pub fn listeners(&self, uid: &str) -> Option<PodListeners> {
        self.pods().get(uid).map(|served| PodListeners {
            outbound: served.context.pod.outbound_listener,
            inbound: served.context.pod.inbound_listener,
        })
    }

    /// The upstream clusters of every served pod, by `namespace/name`.
    #[must_use]
    pub fn clusters(&self) -> std::collections::BTreeMap<String, crate::upstream::ClustersDump> {
        let served: Vec<(PodUid, Arc<Upstreams>)> = self
            .pods()
            .iter()
            .map(|(uid, served)| (uid.clone(), served.context.upstreams.clone()))
            .collect();
        served
            .into_iter()
            .map(|(uid, upstreams)| (self.pod_name(uid.as_str()), upstreams.dump()))
            .collect()
    }

    /// Uids of the pods served, sorted.
    #[must_use]
    pub fn served(&self) -> Vec<PodUid> {
        let mut uids: Vec<PodUid> = self.pods().keys().cloned().collect();
        uids.sort();
        uids
    }

    /// Stops accepting everywhere, gives in-flight connections the drain timeout, cuts the
    /// rest, and returns when every connection is closed.
    pub async fn shutdown(&self) {
        let served: Vec<ServedPod> = self.pods().drain().map(|(_, served)| served).collect();
        // Signal every pod before waiting on any, so all listeners close together.
        for pod in &served {
            self.proxy.local_pods.remove(&pod.context.pod);
            pod.context.pod.drain.stop_accepting();
        }
        let mut stopped = Vec::with_capacity(served.len());
        for pod in served {
            stopped.push(pod.stop_accepting(&self.proxy).await);
        }
        let in_flight: usize = stopped.iter().map(|c| c.pod.drain.in_flight()).sum();
        tracing::info!(
            pods = stopped.len(),
            in_flight,
            drain_timeout = ?self.drain_timeout,
            "stopped accepting; draining connections"
        );
        for context in stopped {
            self.drain_in_background(context);
        }
        self.draining.close();
        self.draining.wait().await;
    }

    /// Closes a pod's listeners and drains its connections in the background.
    async fn retire(&self, served: ServedPod) {
        let context = served.stop_accepting(&self.proxy).await;
        self.drain_in_background(context);
    }

    fn drain_in_background(&self, context: Arc<PodContext>) {
        let deadline = self.drain_timeout;
        self.draining.spawn(async move {
            match context.pod.drain.drain(deadline).await {
                DrainOutcome::Finished => {
                    tracing::debug!(pod = %context.pod.uid, "pod drained");
                }
                DrainOutcome::Cut { remaining } => {
                    tracing::info!(
                        pod = %context.pod.uid,
                        remaining,
                        ?deadline,
                        "drain timeout reached; closed the remaining connections"
                    );
                }
            }
        });
    }

    /// A new mesh state arrived: telemetry names identities in its trust domain.
    pub fn mesh_settings_changed(&self, trust_domain: &str) {
        self.proxy.metrics.peers.set_trust_domain(trust_domain);
    }

    fn identity_of(&self, uid: &str) -> Option<SpiffeId> {
        let index = self.proxy.state.load();
        index.identity(index.workload_by_uid(uid)?)
    }

    fn pod_ip(&self, uid: &str) -> Option<Ipv4Addr> {
        self.proxy.state.load().workload_by_uid(uid)?.ip
    }

    fn pod_name(&self, uid: &str) -> String {
        self.proxy
            .state
            .load()
            .workload_by_uid(uid)
            .map_or_else(|| uid.to_owned(), |w| format!("{}/{}", w.namespace, w.name))
    }

    /// Accepts on `listener` (named `name` in metrics) until the pod stops being served,
    /// each connection served by `serve`; over `--max-connections-per-listener` held at
    /// once, a new connection is closed at once and counted.
    fn spawn_accept_loop<S, F>(
        &self,
        listener: Arc<TcpListener>,
        context: &Arc<PodContext>,
        name: &'static str,
        serve: S,
    ) -> JoinHandle<()>
    where
        S: Fn(Arc<ProxyContext>, Arc<PodContext>, TcpStream, ClientAddr) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_accept_loop_until(listener, context, name, serve, None)
    }

    /// An accept loop under the pod's drain that also ends when `stop` is cancelled (a
    /// Gateway port that goes away while the pod stays).
    fn spawn_accept_loop_until<S, F>(
        &self,
        listener: Arc<TcpListener>,
        context: &Arc<PodContext>,
        name: &'static str,
        serve: S,
        stop: Option<CancellationToken>,
    ) -> JoinHandle<()>
    where
        S: Fn(Arc<ProxyContext>, Arc<PodContext>, TcpStream, ClientAddr) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let proxy = self.proxy.clone();
        let context = context.clone();
        let stop = stop.unwrap_or_default();
        let held = proxy
            .metrics
            .listeners
            .track(name, proxy.http_limits.max_connections_per_listener);
        context.pod.drain.clone().spawn(async move {
            loop {
                let accepted = tokio::select! {
                    biased;
                    () = context.pod.drain.accepting_stopped() => return,
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let Some(slot) = held.take() else {
                            proxy.metrics.connection_refused(name);
                            tracing::debug!(pod = %context.pod.uid, listener = name, client = %peer, "listener at its connection limit; closed a new connection");
                            drop(stream);
                            continue;
                        };
                        let task = serve(proxy.clone(), context.clone(), stream, ClientAddr(peer));
                        context.pod.drain.spawn(async move {
                            let _slot = slot;
                            task.await;
                        });
                    }
                    // The client gave up between SYN and accept: nothing to do.
                    Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => {}
                    Err(error) => {
                        tracing::warn!(pod = %context.pod.uid, %error, "accept failed; retrying shortly");
                        tokio::select! {
                            () = context.pod.drain.accepting_stopped() => return,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                }
            }
        })
    }
}

/// The pod's `kind` listener: the one handed over in `adopt` (a previous proxy's, still
/// open), else a new one on `addr`.
async fn listener(
    sockets: &dyn socket::PodSockets,
    adopt: &mut HashMap<ListenerKind, OwnedFd>,
    kind: ListenerKind,
    addr: SocketAddr,
    pod: &str,
) -> Result<TcpListener, Error> {
    let Some(fd) = adopt.remove(&kind) else {
        return Ok(sockets.listen(addr).await?);
    };
    let socket = socket2::Socket::from(fd);
    let adopt_error = |reason: String| Error::Adopt {
        pod: pod.to_owned(),
        kind,
        reason,
    };
    match socket.is_listener() {
        Ok(true) => {}
        Ok(false) => return Err(adopt_error("it does not listen".to_owned())),
        Err(e) => return Err(adopt_error(e.to_string())),
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| adopt_error(e.to_string()))?;
    TcpListener::from_std(socket.into()).map_err(|e| adopt_error(e.to_string()))
}

#[cfg(test)]
mod tests;

impl crate::telemetry::server::ClustersSource for PodRegistry {
    fn certs(&self) -> serde_json::Value {
        let status = self
            .proxy
            .identities
            .as_ref()
            .map(|identities| identities.status())
            .unwrap_or_default();
        serde_json::to_value(status).unwrap_or_else(
            |error| serde_json::json!({ "error": format!("cannot encode the certificates: {error}") }),
        )
    }

    fn before_scrape(&self) {
        if let Some(identities) = &self.proxy.identities {
            self.proxy.metrics.set_cert_expiry(&identities.expiries());
        }
    }

    fn clusters(&self) -> serde_json::Value {
        serde_json::to_value(PodRegistry::clusters(self)).unwrap_or_else(
            |error| serde_json::json!({ "error": format!("cannot encode the clusters: {error}") }),
        )
    }
}
