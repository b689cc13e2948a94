//! Outbound dispatch with a routing table: detection, then TCP/TLS routes or the HTTP proxy,
//! through a real pod listener in the test's own netns.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::conn::detect::tests::client_hello;
use crate::inpod::PodRegistry;
use crate::socket::CurrentNetnsSocketFactory;
use crate::testing::*;
use shunt_api::control::InboundBind;
use shunt_mesh::model::Workload;
use shunt_mesh::routing::{
    Cluster, ClusterEndpoint, ClusterError, ClusterKey, ConnectionPool, Destination, DnsEndpoint,
    HeaderOps, HttpAction, HttpDecision, MeshSettings, ObjectRef, OutlierDetection, PortProtocol,
    RequestFacts, RouteSource, TrafficPolicy, WeightedDestination,
};

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
            host: shunt_mesh::routing::Host(host.into()),
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
        HttpDecision::Route(Arc::new(shunt_mesh::testing::http_route(
            HttpAction::Forward(to("web")),
        )))
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

    fn gateway_target(
        &self,
        _: &shunt_mesh::ids::PodUid,
        _: u16,
        _: Option<Arc<shunt_mesh::gateway::GatewayServer>>,
    ) -> Option<OutboundTarget> {
        None
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
            host: shunt_mesh::routing::Host(host.into()),
            subset: None,
            port: addr.port(),
        },
        protocol: PortProtocol::Sniff,
        service: None,
        endpoints: vec![ClusterEndpoint {
            addr: addr.into(),
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
    registry: PodRegistry,
    outbound: SocketAddr,
    echo: SocketAddr,
    tls_echo: SocketAddr,
}

async fn setup() -> Setup {
    setup_with(None).await
}

/// [`setup`], with `echo` (where [`TCP_DST`] goes) replaced by `echo_cluster` when given.
async fn setup_with(echo_cluster: Option<Arc<Cluster>>) -> Setup {
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
        .chain(echo_cluster.map(|c| ("echo", c)))
        .collect(),
        mesh: MeshSettings {
            protocol_detection_timeout: Some(Duration::from_millis(50)),
            ..MeshSettings::default()
        },
    };
    let test = TestProxy::with_routes(Arc::new(Fixed(Arc::new(routes))));
    let registry = test.registry(Arc::new(CurrentNetnsSocketFactory), Duration::from_secs(1));
    registry
        .add(
            POD,
            own_netns_cookie(),
            InboundBind::Loopback,
            shunt_api::control::PodRole::App,
            own_netns(),
            Vec::new(),
        )
        .await
        .unwrap();
    let outbound = registry.listeners(POD).unwrap().outbound;
    Setup {
        test,
        registry,
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

/// The `echo` cluster over `endpoints` with `policy`.
fn echo_cluster(endpoints: &[SocketAddr], policy: TrafficPolicy) -> Arc<Cluster> {
    let (_, first) = cluster("echo", endpoints[0]);
    let endpoints = endpoints
        .iter()
        .map(|endpoint| ClusterEndpoint {
            addr: match endpoint {
                SocketAddr::V4(addr) => (*addr).into(),
                SocketAddr::V6(_) => unreachable!("test servers listen on IPv4"),
            },
            workload: None,
            weight: 1,
        })
        .collect();
    Arc::new(Cluster {
        endpoints,
        policy,
        ..Arc::unwrap_or_clone(first)
    })
}

fn pool_policy(pool: ConnectionPool) -> TrafficPolicy {
    TrafficPolicy {
        connection_pool: pool,
        ..TrafficPolicy::default()
    }
}

/// An echo server on `ip` that first writes `tag`, so a client learns which endpoint it
/// reached.
async fn tagged_echo_server(ip: Ipv4Addr, tag: u8) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                stream.write_all(&[tag]).await.unwrap();
                let (mut rx, mut tx) = stream.split();
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
                let _ = tx.shutdown().await;
            });
        }
    });
    addr
}

/// A loopback address where connects are refused: a port just released.
async fn refusing_endpoint(ip: Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    listener.local_addr().unwrap()
}

/// A loopback endpoint that never answers a SYN: its accept queue is full (the kernel drops
/// SYNs then). The returned connections fill it and must be kept.
async fn unanswering_endpoint(
    ip: Ipv4Addr,
) -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((ip, 0).into()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(error)) => panic!("filling the accept queue of {addr}: {error}"),
            Err(_) => return (addr, listener, fillers),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// A connection through the outbound listener to [`TCP_DST`] that exchanged `\x00` with the
/// upstream (so it is connected); returns it and the tag the upstream sent first, if any.
async fn open_tcp(setup: &Setup, tagged: bool) -> (TcpStream, Option<u8>) {
    let mut client =
        connect_as_captured(setup.outbound, &setup.test.outbound, dst(TCP_DST, 7000)).await;
    client.write_all(b"\x00").await.unwrap();
    let mut first = [0u8; 2];
    let wanted = if tagged { 2 } else { 1 };
    tokio::time::timeout(
        Duration::from_secs(5),
        client.read_exact(&mut first[..wanted]),
    )
    .await
    .unwrap()
    .unwrap();
    (client, tagged.then_some(first[0]))
}

/// Closes `client` cleanly and waits for its access log line (the `count`-th).
async fn close_tcp(setup: &Setup, mut client: TcpStream, count: usize) -> serde_json::Value {
    client.shutdown().await.unwrap();
    let _ = read_all(&mut client).await;
    setup.test.log_lines(count).await[count - 1].clone()
}

/// The `/debug/clusters` view of the `echo` cluster of the test pod.
fn echo_dump(setup: &Setup) -> crate::upstream::ClusterDump {
    let clusters = setup.registry.clusters();
    let pod = clusters.values().next().unwrap();
    pod.clusters
        .iter()
        .find(|(name, _)| name.ends_with("|echo"))
        .map(|(_, dump)| dump.clone())
        .unwrap()
}

#[tokio::test]
async fn tcp_beyond_max_connections_is_closed_and_counted_as_an_overflow() {
    let echo = echo_server(Ipv4Addr::new(127, 0, 0, 20)).await;
    let policy = pool_policy(ConnectionPool {
        max_connections: Some(1),
        ..ConnectionPool::default()
    });
    let setup = setup_with(Some(echo_cluster(&[echo], policy))).await;

    let (first, _) = open_tcp(&setup, false).await;
    assert_eq!(echo_dump(&setup).connections, 1);

    let mut second =
        connect_as_captured(setup.outbound, &setup.test.outbound, dst(TCP_DST, 7000)).await;
    second.write_all(b"\x00second").await.unwrap();
    assert_eq!(
        read_all(&mut second).await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let line = setup.test.log_lines(1).await[0].clone();
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("UO: ") && error.contains("max_connections"),
        "{line}"
    );
    assert_eq!(line["upstream_addr"], echo.to_string(), "{line}");
    assert_eq!(
        setup.test.metric(
            "shunt_upstream_overflow_total",
            &[("limit", "max_connections")]
        ),
        Some(1)
    );

    let line = close_tcp(&setup, first, 2).await;
    assert_eq!(line["close_reason"], "eof", "{line}");
    assert_eq!(echo_dump(&setup).connections, 0);
    let (third, _) = open_tcp(&setup, false).await;
    assert_eq!(close_tcp(&setup, third, 3).await["close_reason"], "eof");
}

#[tokio::test]
async fn tcp_dials_within_the_cluster_connect_timeout_else_the_proxy_default() {
    let (unanswering, _listener, _fillers) =
        unanswering_endpoint(Ipv4Addr::new(127, 0, 0, 21)).await;
    // (cluster connectTimeout, shortest and longest time to the close); the test proxy's own
    // connect timeout is 2 s.
    let cases = [
        (
            Some(Duration::from_millis(200)),
            Duration::from_millis(200),
            Duration::from_millis(1500),
        ),
        (None, Duration::from_secs(2), Duration::from_secs(4)),
    ];
    for (connect_timeout, shortest, longest) in cases {
        let policy = pool_policy(ConnectionPool {
            connect_timeout,
            ..ConnectionPool::default()
        });
        let setup = setup_with(Some(echo_cluster(&[unanswering], policy))).await;
        let mut client =
            connect_as_captured(setup.outbound, &setup.test.outbound, dst(TCP_DST, 7000)).await;
        client.write_all(b"\x00data").await.unwrap();
        let started = std::time::Instant::now();
        assert!(read_all(&mut client).await.is_err(), "{connect_timeout:?}");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= shortest.saturating_sub(Duration::from_millis(60)) && elapsed < longest,
            "{connect_timeout:?}: closed after {elapsed:?}"
        );
        let line = setup.test.log_lines(1).await[0].clone();
        assert_eq!(line["close_reason"], "connect_timeout", "{line}");
        assert!(
            line["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("UF: "),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_refusing_endpoint_is_ejected_after_consecutive_gateway_errors() {
    let echo = echo_server(Ipv4Addr::new(127, 0, 0, 22)).await;
    let refusing = refusing_endpoint(Ipv4Addr::new(127, 0, 0, 23)).await;
    let policy = TrafficPolicy {
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx_errors: None,
            consecutive_gateway_errors: Some(2),
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }),
        ..TrafficPolicy::default()
    };
    let setup = setup_with(Some(echo_cluster(&[echo, refusing], policy))).await;
    // Round robin: the first four alternate, two of them refused; the second refusal ejects
    // the endpoint, so the next four all reach the echo server.
    let mut refused = Vec::new();
    for attempt in 0..8 {
        let mut client =
            connect_as_captured(setup.outbound, &setup.test.outbound, dst(TCP_DST, 7000)).await;
        client.write_all(b"\x00x").await.unwrap();
        client.shutdown().await.unwrap();
        if read_all(&mut client).await.is_err() {
            refused.push(attempt);
        }
    }
    assert_eq!(refused.len(), 2, "refused attempts {refused:?}");
    assert!(
        refused.iter().all(|&a| a < 4),
        "refused attempts {refused:?}"
    );
    let lines = setup.test.log_lines(8).await;
    let refusals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["close_reason"] == "connect_refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{lines:?}");
    for line in refusals {
        assert_eq!(line["upstream_addr"], refusing.to_string(), "{line}");
    }
    let dump = echo_dump(&setup);
    let endpoint = |addr: SocketAddr| {
        dump.endpoints
            .iter()
            .find(|e| e.addr == addr.to_string())
            .unwrap()
    };
    assert!(endpoint(refusing).ejected, "{dump:?}");
    assert_eq!(endpoint(refusing).times_ejected, 1, "{dump:?}");
    assert!(!endpoint(echo).ejected, "{dump:?}");
}

#[tokio::test]
async fn least_request_prefers_the_endpoint_with_fewer_open_tcp_connections() {
    let a = tagged_echo_server(Ipv4Addr::new(127, 0, 0, 24), b'a').await;
    let b = tagged_echo_server(Ipv4Addr::new(127, 0, 0, 25), b'b').await;
    let policy = TrafficPolicy {
        load_balancer: LoadBalancer::LeastRequest,
        ..TrafficPolicy::default()
    };
    let setup = setup_with(Some(echo_cluster(&[a, b], policy))).await;
    let (first, first_tag) = open_tcp(&setup, true).await;
    let (second, second_tag) = open_tcp(&setup, true).await;
    assert_ne!(first_tag, second_tag, "one each while both are idle");
    let dump = echo_dump(&setup);
    assert!(
        dump.endpoints.iter().all(|e| e.active_requests == 1),
        "{dump:?}"
    );
    assert_eq!(dump.connections, 2);
    // The second endpoint is free again while the first still holds a connection: the next
    // connection goes to the second (round robin would go back to the first).
    close_tcp(&setup, second, 1).await;
    let (third, third_tag) = open_tcp(&setup, true).await;
    assert_eq!(third_tag, second_tag);
    close_tcp(&setup, first, 2).await;
    close_tcp(&setup, third, 3).await;
    let dump = echo_dump(&setup);
    assert!(
        dump.endpoints.iter().all(|e| e.active_requests == 0),
        "{dump:?}"
    );
    assert_eq!(dump.connections, 0);
}
