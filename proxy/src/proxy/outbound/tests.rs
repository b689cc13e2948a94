//! Outbound dispatch with a routing table: detection, then TCP/TLS routes or the HTTP proxy,
//! through a real pod listener in the test's own netns.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::control::wire::InboundBind;
use crate::http::detect::tests::client_hello;
use crate::inpod::PodRegistry;
use crate::routing::{
    Cluster, ClusterEndpoint, ClusterError, ClusterKey, Destination, DnsEndpoint, HeaderOps,
    HttpAction, HttpDecision, HttpRoute, MeshSettings, ObjectRef, PortProtocol, RequestFacts,
    RetryOn, RetryPolicy, RouteSource, TrafficPolicy, WeightedDestination,
};
use crate::socket::CurrentNetnsSocketFactory;
use crate::state::Workload;
use crate::testing::*;

const POD: &str = "uid-shop-web-1";
/// Routed at L4 to the `echo` cluster.
const TCP_DST: [u8; 4] = [10, 96, 0, 10];
/// Unknown under REGISTRY_ONLY.
const BLOCKED_DST: [u8; 4] = [10, 96, 0, 99];
/// Routed at L4 to `dns-echo`, whose name `localhost` resolves to the loopback echo server.
const DNS_DST: [u8; 4] = [10, 96, 0, 11];
/// Routed at L4 to `dns-broken`, whose name never resolves.
const BROKEN_DNS_DST: [u8; 4] = [10, 96, 0, 12];
/// A `tcp-*` port: never sniffed.
const DECLARED_TCP_PORT: u16 = 5432;

/// `echo`, `tls` and `web` clusters; TLS with SNI `api.example` goes to `tls`.
struct TestRoutes {
    clusters: HashMap<&'static str, Arc<Cluster>>,
    mesh: MeshSettings,
}

fn to(host: &'static str) -> Vec<WeightedDestination> {
    vec![WeightedDestination {
        destination: Destination {
            host: crate::routing::Host(host.into()),
            subset: None,
            port: None,
        },
        weight: 1,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }]
}

impl Routes for TestRoutes {
    fn outbound_target(&self, dst: SocketAddrV4, _: Option<&Workload>) -> OutboundTarget {
        OutboundTarget::Unknown {
            dst,
            workload: None,
            protocol: if dst.port() == DECLARED_TCP_PORT {
                PortProtocol::Tcp
            } else {
                PortProtocol::Sniff
            },
        }
    }

    fn http_route(&self, _: &OutboundTarget, _: &RequestFacts<'_>) -> HttpDecision {
        HttpDecision::Route(Arc::new(HttpRoute {
            name: "web.0".into(),
            virtual_service: None,
            action: HttpAction::Forward(to("web")),
            timeout: None,
            retries: RetryPolicy {
                attempts: 0,
                per_try_timeout: None,
                retry_on: RetryOn::default(),
            },
            fault: None,
            mirrors: vec![],
            cors: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rewrite: None,
            rate_limit: None,
        }))
    }

    fn tcp_route(
        &self,
        target: &OutboundTarget,
        sni: Option<&str>,
        _: Option<&Workload>,
    ) -> TcpDecision {
        let OutboundTarget::Unknown { dst, .. } = target else {
            return TcpDecision::Passthrough;
        };
        let forward = |host| TcpDecision::Forward {
            route_name: "r".into(),
            virtual_service: Some(ObjectRef {
                kind: "VirtualService",
                namespace: "shop".into(),
                name: "r".into(),
            }),
            destinations: to(host),
        };
        match (sni, dst.ip().octets()) {
            (Some("api.example"), _) => forward("tls"),
            (_, BLOCKED_DST) => TcpDecision::BlockedByRegistryOnly,
            (_, TCP_DST) => forward("echo"),
            (_, DNS_DST) => forward("dns-echo"),
            (_, BROKEN_DNS_DST) => forward("dns-broken"),
            _ => TcpDecision::Passthrough,
        }
    }

    fn cluster(
        &self,
        destination: &Destination,
        _: u16,
        _: Option<&Workload>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        self.clusters
            .get(&*destination.host.0)
            .cloned()
            .ok_or_else(|| ClusterError::UnknownHost(destination.host.clone()))
    }

    fn mesh(&self) -> &MeshSettings {
        &self.mesh
    }
}

struct Fixed(Arc<TestRoutes>);

impl RouteSource for Fixed {
    fn routes(&self) -> Arc<dyn Routes> {
        self.0.clone()
    }
}

fn cluster(host: &'static str, endpoint: SocketAddr) -> (&'static str, Arc<Cluster>) {
    let SocketAddr::V4(addr) = endpoint else {
        unreachable!("test servers listen on IPv4")
    };
    let cluster = Cluster {
        key: ClusterKey {
            host: crate::routing::Host(host.into()),
            subset: None,
            port: addr.port(),
        },
        protocol: PortProtocol::Sniff,
        service: None,
        endpoints: vec![ClusterEndpoint {
            addr,
            workload: None,
            weight: 1,
        }],
        dns: Vec::new(),
        service_entry: None,
        policy: TrafficPolicy::default(),
        version: None,
    };
    (host, Arc::new(cluster))
}

/// A DNS ServiceEntry's cluster: `name` to resolve, no configured endpoint.
fn dns_cluster(host: &'static str, name: &str, port: u16) -> (&'static str, Arc<Cluster>) {
    let (host, cluster) = cluster(host, SocketAddr::from(([127, 0, 0, 1], port)));
    let cluster = Cluster {
        endpoints: Vec::new(),
        dns: vec![DnsEndpoint {
            name: name.into(),
            port,
            weight: 1,
        }],
        service_entry: Some(ObjectRef {
            kind: "ServiceEntry",
            namespace: "shop".into(),
            name: host.into(),
        }),
        ..Arc::unwrap_or_clone(cluster)
    };
    (host, Arc::new(cluster))
}

/// A server that speaks first: a banner, then echoes.
async fn banner_server(ip: Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                stream.write_all(b"220 ready\r\n").await.unwrap();
                let (mut rx, mut tx) = stream.split();
                tokio::io::copy(&mut rx, &mut tx).await.unwrap();
                tx.shutdown().await.unwrap();
            });
        }
    });
    addr
}

struct Setup {
    test: TestProxy,
    _registry: PodRegistry,
    outbound: SocketAddr,
    echo: SocketAddr,
    tls_echo: SocketAddr,
}

async fn setup() -> Setup {
    let echo = echo_server(Ipv4Addr::new(127, 0, 0, 2)).await;
    let tls_echo = echo_server(Ipv4Addr::new(127, 0, 0, 3)).await;
    let web = http_server(Ipv4Addr::new(127, 0, 0, 4), "web").await;
    let dns_echo = echo_server(Ipv4Addr::LOCALHOST).await;
    let routes = TestRoutes {
        clusters: [
            cluster("echo", echo),
            cluster("tls", tls_echo),
            cluster("web", web),
            dns_cluster("dns-echo", "localhost", dns_echo.port()),
            dns_cluster("dns-broken", "does-not-exist.invalid", 7000),
        ]
        .into_iter()
        .collect(),
        mesh: MeshSettings {
            protocol_detection_timeout: Some(Duration::from_millis(50)),
            ..MeshSettings::default()
        },
    };
    let test = TestProxy::with_routes(Arc::new(Fixed(Arc::new(routes))));
    let registry = test.registry(Arc::new(CurrentNetnsSocketFactory), Duration::from_secs(1));
    registry
        .add(POD, own_netns_cookie(), InboundBind::Loopback, own_netns())
        .await
        .unwrap();
    let outbound = registry.listeners(POD).unwrap().outbound;
    Setup {
        test,
        _registry: registry,
        outbound,
        echo,
        tls_echo,
    }
}

fn dst(octets: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((octets, port))
}

#[tokio::test]
async fn tcp_and_tls_are_routed_at_l4_with_the_detected_bytes_replayed() {
    let setup = setup().await;
    let hello = client_hello(Some("api.example"));
    // (case, original destination, bytes sent first, expected endpoint)
    let cases: [(&str, SocketAddr, Vec<u8>, SocketAddr); 3] = [
        (
            "opaque tcp to a routed destination",
            dst(TCP_DST, 7000),
            b"\x00\x01binary".to_vec(),
            setup.echo,
        ),
        (
            "a declared tcp port is not sniffed, even for HTTP-looking bytes",
            dst(TCP_DST, DECLARED_TCP_PORT),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            setup.echo,
        ),
        (
            "tls routed by its SNI",
            dst(TCP_DST, 443),
            hello,
            setup.tls_echo,
        ),
    ];
    for (index, (name, orig_dst, first, endpoint)) in cases.into_iter().enumerate() {
        let mut client = connect_as_captured(setup.outbound, &setup.test.outbound, orig_dst).await;
        client.write_all(&first).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut client).await.unwrap(), first, "{name}");
        let line = setup.test.log_lines(index + 1).await[index].clone();
        assert_eq!(line["upstream_addr"], endpoint.to_string(), "{name}");
        assert_eq!(line["close_reason"], "eof", "{name}");
    }
}

#[tokio::test]
async fn a_server_first_protocol_is_tcp_after_the_detection_timeout() {
    let banner = banner_server(Ipv4Addr::new(127, 0, 0, 5)).await;
    let setup = setup().await;
    // Nothing routes this address: passthrough to the banner server itself.
    let mut client = connect_as_captured(setup.outbound, &setup.test.outbound, banner).await;
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    client.write_all(b"QUIT").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_all(&mut client).await.unwrap(), b"QUIT");
}

#[tokio::test]
async fn http_goes_to_the_http_proxy_and_unknown_tcp_is_blocked_and_counted() {
    let setup = setup().await;
    let mut client =
        connect_as_captured(setup.outbound, &setup.test.outbound, dst(TCP_DST, 80)).await;
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = String::from_utf8(read_all(&mut client).await.unwrap()).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("web"), "{response}");
    let line = setup.test.log_lines(1).await[0].clone();
    assert_eq!(line["method"], "GET");
    assert_eq!(
        line["upstream_cluster"]
            .as_str()
            .map(|c| c.ends_with("|web")),
        Some(true)
    );

    let mut blocked =
        connect_as_captured(setup.outbound, &setup.test.outbound, dst(BLOCKED_DST, 7000)).await;
    blocked.write_all(b"\x00data").await.unwrap();
    assert_eq!(
        read_all(&mut blocked).await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(
        setup
            .test
            .metric("shunt_registry_only_blocked_total", &[("protocol", "tcp")]),
        Some(1)
    );
}

#[tokio::test]
async fn tcp_to_a_dns_cluster_dials_what_its_name_resolves_to() {
    let setup = setup().await;
    let mut client =
        connect_as_captured(setup.outbound, &setup.test.outbound, dst(DNS_DST, 7000)).await;
    client.write_all(b"\x00\x01via dns").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_all(&mut client).await.unwrap(), b"\x00\x01via dns");
    let line = setup.test.log_lines(1).await[0].clone();
    let upstream = line["upstream_addr"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(upstream.starts_with("127.0.0.1:"), "{line}");

    let mut broken = connect_as_captured(
        setup.outbound,
        &setup.test.outbound,
        dst(BROKEN_DNS_DST, 7000),
    )
    .await;
    broken.write_all(b"\x00data").await.unwrap();
    assert!(read_all(&mut broken).await.is_err());
    let line = setup.test.log_lines(2).await[1].clone();
    let error = line["error"].as_str().unwrap_or_default();
    for part in ["ServiceEntry shop/dns-broken", "does-not-exist.invalid"] {
        assert!(error.contains(part), "{line}");
    }
}
