//! Composition root: wires the control client, the pod registry, the metrics endpoint and the
//! access log, and runs them until SIGTERM/SIGINT, then drains.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use shunt_identity::grpc::{CaClient, CaClientConfig};
use shunt_identity::trust::TrustBundle;

use crate::context::{HttpLimits, ProxyContext, Timeouts};
use crate::control::client::ControlClient;
use crate::identity::Identities;
use crate::inpod::PodRegistry;
use crate::socket::SocketFactory;
use crate::state::StateStore;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::server;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Metrics(#[from] server::Error),
    #[error("cannot start the access log writer thread: {0}")]
    AccessLog(io::Error),
    #[error(
        "cannot read the mesh's root certificate {}: {source} (pass --ca-root-cert with the \
         CA's root-cert.pem)",
        path.display()
    )]
    CaRoot { path: PathBuf, source: io::Error },
    #[error("the mesh's root certificate {} is not usable: {source}", path.display())]
    CaRootInvalid {
        path: PathBuf,
        source: shunt_identity::trust::Error,
    },
    #[error(
        "--ca-address {address} needs --ca-root-cert: the CA and every peer are verified against it"
    )]
    CaRootMissing { address: String },
    #[error("cannot set up the CA client: {0}")]
    CaClient(#[from] shunt_identity::grpc::ClientError),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: io::Error,
    },
}

/// How long shutdown waits for the access log's last lines to be written.
const ACCESS_LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the command line sets.
#[derive(Clone, Debug)]
pub struct Config {
    pub control_socket: PathBuf,
    pub metrics_addr: SocketAddr,
    /// How long in-flight connections get to finish once draining starts.
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long protocol detection waits for a client's first bytes (unless the mesh config
    /// sets `protocolDetectionTimeout`).
    pub protocol_detection_timeout: Duration,
    /// Whether a connection to a pod this proxy serves is delivered from that pod's netns
    /// (one proxy pass) rather than through its inbound listener.
    pub same_node_shortcut: bool,
    /// Events the flow ring keeps (0: none).
    pub flows_capacity: usize,
    /// Where workload certificates come from; `None`: no identities, no mTLS.
    pub ca: Option<CaConfig>,
    /// Istio's `CLUSTER_ID`.
    pub cluster_id: String,
    /// What every HTTP listener enforces on its clients.
    pub http_limits: HttpLimits,
}

/// The CA client's settings (`--ca-*`).
#[derive(Clone, Debug)]
pub struct CaConfig {
    pub address: String,
    pub root_cert: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub server_name: String,
    pub cert_lifetime: Duration,
}

impl CaConfig {
    /// The proxy's identities, fetched from the CA this names.
    pub fn identities(&self, cluster_id: &str) -> Result<Identities, Error> {
        let path = self.root_cert.clone().ok_or_else(|| Error::CaRootMissing {
            address: self.address.clone(),
        })?;
        let pem = std::fs::read_to_string(&path).map_err(|source| Error::CaRoot {
            path: path.clone(),
            source,
        })?;
        let roots = TrustBundle::from_pem(&pem).map_err(|source| Error::CaRootInvalid {
            path: path.clone(),
            source,
        })?;
        let mut client = CaClientConfig::new(self.address.clone(), roots.clone());
        client.server_name.clone_from(&self.server_name);
        client.token_path.clone_from(&self.token_file);
        client.ttl = self.cert_lifetime;
        client.cluster_id = Some(cluster_id.to_owned());
        let client = CaClient::new(client)?;
        Ok(Identities::new(Arc::new(client), roots))
    }
}

/// A started proxy.
pub struct App {
    pub pods: Arc<PodRegistry>,
    pub state: Arc<StateStore>,
    pub metrics: Arc<Metrics>,
    /// Where the metrics endpoint actually listens (the config may ask for port 0).
    pub metrics_addr: SocketAddr,
    access_log: AccessLog,
    shutdown: CancellationToken,
    control: JoinHandle<()>,
    metrics_server: JoinHandle<()>,
}

impl App {
    /// Binds the metrics endpoint and starts dialling the agent.
    pub async fn start(
        config: &Config,
        factory: Arc<dyn SocketFactory>,
        access_log: AccessLog,
    ) -> Result<Self, Error> {
        let state = Arc::new(StateStore::new());
        let metrics = Arc::new(Metrics::with_cluster_id(&config.cluster_id));
        metrics.flows.set_capacity(config.flows_capacity);
        // Outbound HTTP/TCP/TLS is routed by the Istio config in the state the agent sends.
        let routes: Arc<dyn shunt_mesh::routing::RouteSource> = state.clone();
        let mut proxy = ProxyContext::new(
            state.clone(),
            routes,
            metrics.clone(),
            access_log,
            Timeouts {
                connect: config.connect_timeout,
                protocol_detection: config.protocol_detection_timeout,
                same_node_shortcut: config.same_node_shortcut,
            },
            config.http_limits.clone(),
        );
        if let Some(ca) = &config.ca {
            let identities = Arc::new(ca.identities(&config.cluster_id)?);
            proxy.with_identities(identities, config.cluster_id.clone());
            tracing::info!(ca = %ca.address, "workload certificates from the CA; mTLS (HBONE) on");
        } else {
            tracing::warn!(
                "no --ca-address: this proxy holds no workload identities, so it neither \
                 accepts nor sends mTLS (HBONE); traffic between nodes is plaintext"
            );
        }
        proxy.spans = Some(span_queue(&state, metrics.trace.clone()));
        let proxy = Arc::new(proxy);
        Self::start_with(config, factory, proxy).await
    }

    /// [`App::start`] with the proxy context given (tests swap its original-destination source).
    pub async fn start_with(
        config: &Config,
        factory: Arc<dyn SocketFactory>,
        proxy: Arc<ProxyContext>,
    ) -> Result<Self, Error> {
        let metrics_listener = server::bind(config.metrics_addr).await?;
        let metrics_addr = metrics_listener
            .local_addr()
            .map_err(|source| server::Error::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        let shutdown = CancellationToken::new();
        let pods = Arc::new(PodRegistry::new(
            factory,
            proxy.clone(),
            config.drain_timeout,
        ));
        let metrics_server = tokio::spawn(server::serve(
            metrics_listener,
            proxy.metrics.clone(),
            pods.clone(),
            shutdown.clone(),
        ));
        let client = ControlClient::new(
            config.control_socket.clone(),
            proxy.state.clone(),
            pods.clone(),
            proxy.splice.clone(),
            proxy.gateway_tls.credentials().clone(),
        )
        .with_tcp_watches(proxy.metrics.tcp.clone());
        let control = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { client.run(shutdown).await })
        };
        tracing::info!(
            control_socket = %config.control_socket.display(),
            metrics = %metrics_addr,
            "shunt-proxy started"
        );
        Ok(Self {
            pods,
            state: proxy.state.clone(),
            metrics: proxy.metrics.clone(),
            metrics_addr,
            access_log: proxy.access_log.clone(),
            shutdown,
            control,
            metrics_server,
        })
    }

    /// Stops talking to the agent, drains every pod, and stops the metrics endpoint last so
    /// the drain can still be scraped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(error) = self.control.await {
            tracing::error!(%error, "control client task failed");
        }
        self.pods.shutdown().await;
        // The drained connections' lines are queued; the process exits right after this.
        let access_log = self.access_log.clone();
        if tokio::task::spawn_blocking(move || access_log.flush(ACCESS_LOG_FLUSH_TIMEOUT))
            .await
            .is_err()
        {
            tracing::warn!("the last access log lines may be lost");
        }
        if let Err(error) = self.metrics_server.await {
            tracing::error!(%error, "metrics endpoint task failed");
        }
        tracing::info!("shunt-proxy stopped");
    }
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns.
pub async fn run(config: Config, factory: Arc<dyn SocketFactory>) -> Result<(), Error> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| Error::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| Error::Signal {
        signal: "SIGINT",
        source,
    })?;
    let access_log = AccessLog::stdout().map_err(Error::AccessLog)?;
    let app = App::start(&config, factory, access_log).await?;
    let received = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal = received, drain_timeout = ?config.drain_timeout, "shutting down");
    app.shutdown().await;
    Ok(())
}

/// The span exporter: it reads the mesh's tracing providers and the index to find their
/// collectors in at each batch, so a MeshConfig change applies without a restart.
fn span_queue(
    state: &Arc<StateStore>,
    metrics: Arc<crate::telemetry::export::TraceMetrics>,
) -> crate::telemetry::export::SpanQueue {
    use shunt_mesh::routing::RouteSource as _;
    let state = state.clone();
    crate::telemetry::export::SpanQueue::spawn(
        crate::telemetry::export::QUEUE_CAPACITY,
        Arc::new(move || (state.routes().mesh().tracing.clone(), state.load())),
        metrics,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::CurrentNetnsSocketFactory;
    use crate::testing::*;
    use shunt_api::control::{self as wire, AgentMessage, ProxyMessage};
    use shunt_mesh::model::MeshState;
    use shunt_mesh::testing::pod;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn the_app_follows_the_agent_reports_and_drains_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let control_socket = dir.path().join("control.sock");
        let agent_listener = UnixListener::bind(&control_socket).unwrap();
        let test = TestProxy::new(false);
        let config = Config {
            control_socket,
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            drain_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(2),
            protocol_detection_timeout: Duration::from_millis(100),
            same_node_shortcut: true,
            flows_capacity: crate::telemetry::flows::DEFAULT_CAPACITY,
            ca: None,
            cluster_id: "Kubernetes".into(),
            http_limits: HttpLimits::default(),
        };
        let app = App::start_with(
            &config,
            Arc::new(CurrentNetnsSocketFactory),
            test.proxy.clone(),
        )
        .await
        .unwrap();

        let (mut agent, _) = tokio::time::timeout(Duration::from_secs(5), agent_listener.accept())
            .await
            .unwrap()
            .unwrap();
        let (hello, _): (ProxyMessage, _) = wire::recv(&mut agent).await.unwrap();
        assert!(matches!(hello, ProxyMessage::Hello { .. }), "{hello:?}");
        let state = MeshState {
            workloads: vec![
                pod("shop", "web-1", [127, 0, 0, 10], "web"),
                pod("shop", "api-a", [127, 0, 0, 2], "api"),
            ],
            services: vec![],
            ..Default::default()
        };
        wire::send(&mut agent, &AgentMessage::State { state }, &[])
            .await
            .unwrap();
        let netns = own_netns();
        let add = AgentMessage::AddPod {
            uid: "uid-shop-web-1".into(),
            netns_cookie: own_netns_cookie(),
            inbound_bind: wire::InboundBind::Loopback,
            role: wire::PodRole::App,
            listeners: Vec::new(),
        };
        wire::send(&mut agent, &add, &[std::os::fd::AsRawFd::as_raw_fd(&netns)])
            .await
            .unwrap();
        let (ready, _): (ProxyMessage, _) = wire::recv(&mut agent).await.unwrap();
        assert_eq!(
            ready,
            ProxyMessage::PodReady {
                uid: "uid-shop-web-1".into(),
                listeners: vec![wire::ListenerKind::Outbound, wire::ListenerKind::Inbound],
            }
        );

        let echo = echo_server(Ipv4Addr::new(127, 0, 0, 2)).await;
        let outbound = app.pods.listeners("uid-shop-web-1").unwrap().outbound;
        let mut finished = connect_as_captured(outbound, &test.outbound, echo).await;
        finished.write_all(b"done").await.unwrap();
        finished.shutdown().await.unwrap();
        assert_eq!(read_all(&mut finished).await.unwrap(), b"done");
        let mut held = connect_as_captured(outbound, &test.outbound, echo).await;
        held.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 4];
        held.read_exact(&mut buf).await.unwrap();
        test.log_lines(1).await;

        let scrape = http_request(app.metrics_addr, "GET /metrics HTTP/1.1").await;
        let sample = |metric: &str| {
            scrape
                .lines()
                .find(|l| l.starts_with(metric) && l.contains("destination_workload=\"api\""))
                .and_then(|l| l.rsplit_once(' '))
                .map(|(_, value)| value.to_owned())
        };
        assert_eq!(
            sample("istio_tcp_connections_opened_total{").as_deref(),
            Some("2"),
            "{scrape}"
        );
        assert_eq!(
            sample("istio_tcp_connections_closed_total{").as_deref(),
            Some("1"),
            "{scrape}"
        );
        assert_eq!(
            sample("istio_tcp_received_bytes_total{").as_deref(),
            Some("8"),
            "{scrape}"
        );

        let metrics_addr = app.metrics_addr;
        tokio::time::timeout(Duration::from_secs(5), app.shutdown())
            .await
            .unwrap();
        assert_eq!(
            read_all(&mut held).await,
            Err(std::io::ErrorKind::ConnectionReset)
        );
        let reasons: Vec<String> = test
            .log_lines(2)
            .await
            .iter()
            .map(|l| l["close_reason"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(reasons, ["eof", "drained"]);
        assert!(
            tokio::net::TcpStream::connect(outbound).await.is_err(),
            "pod listener still open"
        );
        assert!(
            tokio::net::TcpStream::connect(metrics_addr).await.is_err(),
            "metrics still served"
        );
        assert!(matches!(
            wire::recv::<ProxyMessage>(&mut agent).await,
            Err(wire::Error::Closed)
        ));
    }
}
