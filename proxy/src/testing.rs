//! Test support: a proxy wired to in-memory telemetry, original destinations the test decides,
//! loopback servers, and throwaway network namespaces.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers (the `testing` feature): a broken test set-up panics where it broke"
)]

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::addrs::{ClientAddr, OrigDstAddr};
use crate::context::ProxyContext;
use crate::inpod::PodRegistry;
use crate::orig_dst::{self, OrigDstSource};
use crate::socket::SocketFactory;
use crate::state::StateStore;
use crate::telemetry::access_log::{AccessLog, Captured};
use crate::telemetry::metrics::Metrics;
use shunt_mesh::routing::RouteSource;

/// Original destinations by client address, as the eBPF maps keep them.
#[derive(Debug, Default)]
pub struct OrigDstTable(Mutex<HashMap<SocketAddr, SocketAddr>>);

impl OrigDstTable {
    pub fn insert(&self, client: SocketAddr, orig_dst: SocketAddr) {
        self.0.lock().unwrap().insert(client, orig_dst);
    }
}

impl OrigDstSource for OrigDstTable {
    fn orig_dst(&self, _: &TcpStream, client: ClientAddr) -> Result<OrigDstAddr, orig_dst::Error> {
        self.0
            .lock()
            .unwrap()
            .get(&client.0)
            .map(|dst| OrigDstAddr(*dst))
            .ok_or_else(|| orig_dst::Error::NotRedirected {
                client,
                source: io::Error::from(io::ErrorKind::NotFound),
            })
    }
}

/// A proxy context whose outbound (and, when asked, inbound) destinations come from tables.
pub struct TestProxy {
    pub proxy: Arc<ProxyContext>,
    pub outbound: Arc<OrigDstTable>,
    pub inbound: Arc<OrigDstTable>,
    pub log: Arc<Captured>,
}

impl TestProxy {
    /// Routed by the proxy's own state, as in production. `table_inbound`: whether inbound
    /// destinations come from [`TestProxy::inbound`] (to exercise inbound forwarding without
    /// sk_lookup) or from the local address as in production.
    pub fn new(table_inbound: bool) -> Self {
        Self::build(table_inbound, |state| state.clone(), true)
    }

    /// Outbound connections routed by `routes` (fixed answers), destinations from the table.
    pub fn with_routes(routes: Arc<dyn RouteSource>) -> Self {
        Self::build(false, |_| routes, true)
    }

    /// Outbound connections routed by the proxy's own state (as in production), with or
    /// without same-node delivery.
    pub fn routed_by_state(same_node_shortcut: bool) -> Self {
        Self::build(false, |state| state.clone(), same_node_shortcut)
    }

    fn build(
        table_inbound: bool,
        routes: impl FnOnce(&Arc<StateStore>) -> Arc<dyn RouteSource>,
        same_node_shortcut: bool,
    ) -> Self {
        let outbound = Arc::new(OrigDstTable::default());
        let inbound = Arc::new(OrigDstTable::default());
        let log = Arc::new(Captured::default());
        let state = Arc::new(StateStore::new());
        let metrics = Arc::new(Metrics::new());
        let gateway_tls = Arc::new(crate::gateway::GatewayTls::new(
            Arc::new(crate::gateway::CredentialStore::new(
                metrics.gateway.clone(),
            )),
            metrics.gateway.clone(),
        ));
        let proxy = Arc::new(ProxyContext {
            routes: routes(&state),
            state,
            rate_limiter: crate::ratelimit::RateLimiter::new(),
            protocol_detection_timeout: Duration::from_millis(100),
            metrics,
            access_log: AccessLog::new(log.clone()),
            connect_timeout: Duration::from_secs(2),
            outbound_dst: outbound.clone(),
            inbound_dst: if table_inbound {
                inbound.clone()
            } else {
                Arc::new(orig_dst::LocalAddr)
            },
            local_pods: Arc::new(crate::upstream::local::LocalPods::new(same_node_shortcut)),
            splice: Arc::default(),
            hbone: None,
            identities: None,
            ext_authz: crate::ext_authz::ExtAuthz::new(),
            authn: Arc::new(crate::authn::Authenticator::with_connector(Arc::new(
                crate::authn::DirectConnector,
            ))),
            gateway_tls,
            http_limits: crate::context::HttpLimits::default(),
            spans: None,
        });
        Self {
            proxy,
            outbound,
            inbound,
            log,
        }
    }

    pub fn registry(
        &self,
        factory: Arc<dyn SocketFactory>,
        drain_timeout: Duration,
    ) -> PodRegistry {
        PodRegistry::new(factory, self.proxy.clone(), drain_timeout)
    }

    /// Waits until the access log holds `count` lines and returns them.
    pub async fn log_lines(&self, count: usize) -> Vec<serde_json::Value> {
        for _ in 0..500 {
            let lines = self.log.lines();
            if lines.len() >= count {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "expected {count} access log lines, got {:?}",
            self.log.lines()
        );
    }

    /// The value of the sample of `metric` whose labels include every `label="value"` given.
    pub fn metric(&self, metric: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let text = self.proxy.metrics.encode().unwrap();
        text.lines()
            .filter(|line| {
                line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} "))
            })
            .find(|line| {
                labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|line| line.rsplit_once(' ').unwrap().1.parse().unwrap())
    }
}

/// Connects to `listener` from a fresh client address recorded in `table` as going to `orig_dst`.
pub async fn connect_as_captured(
    listener: SocketAddr,
    table: &OrigDstTable,
    orig_dst: SocketAddr,
) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    table.insert(socket.local_addr().unwrap(), orig_dst);
    socket.connect(listener).await.unwrap()
}

/// An echo server on `ip`: echoes until EOF, then closes its write side.
pub async fn echo_server(ip: Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut rx, mut tx) = stream.split();
                tokio::io::copy(&mut rx, &mut tx).await.unwrap();
                tx.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A server at `addr` (port 0: any) that reads each connection to EOF, answers `name` and
/// closes. Returns where it listens.
pub async fn named_server(addr: SocketAddr, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                // Closing with unread input would send RST instead of the answer.
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await.unwrap();
                stream.write_all(name.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A hyper HTTP/1.1 + h2 server on `ip` answering every request with 200 and `name`.
pub async fn http_server(ip: Ipv4Addr, name: &'static str) -> SocketAddr {
    counting_http_server(ip, name).await.0
}

/// [`http_server`], and how many connections it accepted.
pub async fn counting_http_server(
    ip: Ipv4Addr,
    name: &'static str,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let service = hyper::service::service_fn(move |_request| async move {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(name),
                )))
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Reads everything until EOF, or the error that ended the stream.
pub async fn read_all(stream: &mut TcpStream) -> Result<Vec<u8>, io::ErrorKind> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("read timed out")
        .map_err(|e| e.kind())?;
    Ok(got)
}

/// Sends `request_line` (e.g. "GET /metrics HTTP/1.1") to `addr`; returns the raw response.
pub async fn http_request(addr: SocketAddr, request_line: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{request_line}\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// `len` bytes that are not a repeating short pattern.
pub fn payload(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            // xorshift32
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

pub fn own_netns() -> OwnedFd {
    shunt_api::netns::open_netns(Path::new("/proc/self/ns/net")).unwrap()
}

pub fn own_netns_cookie() -> u64 {
    use std::os::fd::AsFd;
    shunt_api::netns::netns_cookie(own_netns().as_fd()).unwrap()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A named network namespace with loopback up, deleted on drop.
pub struct TestNetns {
    pub name: String,
    pub path: PathBuf,
}

impl TestNetns {
    /// `shunt-proxy-<test>`, so tests running in parallel do not collide.
    pub fn create(test: &str) -> Self {
        let name = format!("shunt-proxy-{test}");
        // A leftover from an interrupted run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// Runs `ip -n <this netns> ARGS`.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    pub fn open(&self) -> OwnedFd {
        shunt_api::netns::open_netns(&self.path).unwrap()
    }

    /// Runs blocking `f` on a thread inside this netns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        use std::os::fd::AsFd;
        let netns = self.open();
        shunt_api::netns::run_in_netns(netns.as_fd(), f)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?} failed: {status}");
}

/// A served pod with the usual loopback listeners, dialling through `sockets`.
pub fn served_pod(uid: &str, sockets: Arc<dyn crate::socket::PodSockets>) -> Arc<crate::pod::Pod> {
    Arc::new(crate::pod::Pod {
        uid: uid.into(),
        sockets,
        outbound_listener: "127.0.0.1:15001".parse().unwrap(),
        inbound_listener: "127.0.0.1:15006".parse().unwrap(),
        drain: crate::drain::Drain::new(),
    })
}
