//! The registry and the connection pipeline together, with sockets in the test's own netns.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::socket::CurrentNetnsSocketFactory;
use crate::testing::*;
use shunt_mesh::ids::PodUid;
use shunt_mesh::model::{MeshState, TargetPort};
use shunt_mesh::testing::{pod, service};

const WEB: &str = "uid-shop-web-1";
const API_A: &str = "uid-shop-api-a";
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];

fn ip(octets: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(octets)
}

/// web-1 (127.0.0.10) calls Service api (10.96.0.10): port 80 → `rr_port` on api-a/api-b
/// (127.0.0.2/3; api-c at 127.0.0.4 is not ready), port 81 → `echo_port`. Service empty
/// (10.96.0.11:80) selects nothing.
fn mesh(rr_port: u16, echo_port: u16) -> MeshState {
    let mut api_c = pod("shop", "api-c", [127, 0, 0, 4], "api");
    api_c.ready = false;
    MeshState {
        workloads: vec![
            pod("shop", "web-1", [127, 0, 0, 10], "web"),
            pod("shop", "api-a", [127, 0, 0, 2], "api"),
            pod("shop", "api-b", [127, 0, 0, 3], "api"),
            api_c,
        ],
        services: vec![
            service(
                "shop",
                "api",
                CLUSTER_IP,
                "api",
                &[
                    (80, TargetPort::Number(rr_port)),
                    (81, TargetPort::Number(echo_port)),
                ],
            ),
            service(
                "shop",
                "empty",
                [10, 96, 0, 11],
                "nobody",
                &[(80, TargetPort::Number(80))],
            ),
        ],
        ..Default::default()
    }
}

async fn serve(
    test: &TestProxy,
    uid: &str,
    drain_timeout: Duration,
) -> (PodRegistry, PodListeners) {
    let registry = test.registry(Arc::new(CurrentNetnsSocketFactory), drain_timeout);
    registry
        .add(
            uid,
            own_netns_cookie(),
            InboundBind::Loopback,
            PodRole::App,
            own_netns(),
            Vec::new(),
        )
        .await
        .unwrap();
    let listeners = registry.listeners(uid).unwrap();
    (registry, listeners)
}

fn service_addr(port: u16) -> SocketAddr {
    SocketAddr::from((ip(CLUSTER_IP), port))
}

#[tokio::test]
async fn outbound_to_a_pod_echoes_a_mebibyte_with_half_close_and_reports_it() {
    let test = TestProxy::new(false);
    let echo = echo_server(ip([127, 0, 0, 2])).await;
    test.proxy.state.replace(&mesh(1, echo.port()));
    let (_registry, listeners) = serve(&test, WEB, Duration::from_secs(5)).await;

    let mut client = connect_as_captured(listeners.outbound, &test.outbound, echo).await;
    let client_addr = client.local_addr().unwrap();
    let sent = payload(1 << 20);
    let (mut rx, mut tx) = client.split();
    let write = async {
        tx.write_all(&sent).await.unwrap();
        // Half-close: the echo only ends once it has seen our EOF through the proxy.
        tx.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let (_, read) = tokio::join!(write, rx.read_to_end(&mut echoed));
    read.unwrap();
    assert!(echoed == sent, "echo differs from what was sent");

    let line = &test.log_lines(1).await[0];
    for (field, expected) in [
        ("direction", "outbound"),
        ("reporter", "source"),
        ("pod", "shop/web-1"),
        ("src_workload", "web"),
        ("src_namespace", "shop"),
        ("dst_workload", "api"),
        ("dst_namespace", "shop"),
        // A pod address is labelled with the Service that targets that port.
        ("dst_service", "api.shop.svc.cluster.local"),
        ("close_reason", "eof"),
    ] {
        assert_eq!(line[field], expected, "{field} in {line}");
    }
    // The app by its pod IP (web-1 is 127.0.0.10 here) and its own port.
    assert_eq!(
        line["src_addr"],
        format!("127.0.0.10:{}", client_addr.port())
    );
    assert_eq!(line["dst_addr"], echo.to_string());
    assert_eq!(line["upstream_addr"], echo.to_string());
    assert_eq!(line["bytes_received"], 1 << 20);
    assert_eq!(line["bytes_sent"], 1 << 20);

    let labels = [
        ("reporter", "source"),
        ("source_workload", "web"),
        ("destination_workload", "api"),
        ("destination_service_name", "api"),
    ];
    for (metric, expected) in [
        ("istio_tcp_connections_opened_total", 1),
        ("istio_tcp_connections_closed_total", 1),
        ("istio_tcp_received_bytes_total", 1 << 20),
        ("istio_tcp_sent_bytes_total", 1 << 20),
    ] {
        assert_eq!(test.metric(metric, &labels), Some(expected), "{metric}");
    }
}

#[tokio::test]
async fn a_service_address_round_robins_over_ready_endpoints() {
    let test = TestProxy::new(false);
    let named_a = named_server(SocketAddr::from(([127, 0, 0, 2], 0)), "api-a").await;
    let port = named_a.port();
    // Both endpoints listen on the same targetPort, each on its pod's IP.
    let named_b = named_server(SocketAddr::from(([127, 0, 0, 3], port)), "api-b").await;
    test.proxy.state.replace(&mesh(port, 1));
    let (_registry, listeners) = serve(&test, WEB, Duration::from_secs(5)).await;

    let mut answers = Vec::new();
    for _ in 0..4 {
        let mut client =
            connect_as_captured(listeners.outbound, &test.outbound, service_addr(80)).await;
        client.shutdown().await.unwrap();
        answers.push(String::from_utf8(read_all(&mut client).await.unwrap()).unwrap());
    }
    assert_eq!(answers, ["api-a", "api-b", "api-a", "api-b"]);

    let lines = test.log_lines(4).await;
    let upstreams: Vec<&str> = lines
        .iter()
        .map(|l| l["upstream_addr"].as_str().unwrap())
        .collect();
    let (a, b) = (named_a.to_string(), named_b.to_string());
    assert_eq!(upstreams, [&a, &b, &a, &b]);
    for line in &lines {
        assert_eq!(line["dst_addr"], "10.96.0.10:80");
        assert_eq!(line["dst_service"], "api.shop.svc.cluster.local");
        assert_eq!(line["dst_workload"], "api");
    }
}

#[tokio::test]
async fn refusals_reset_the_client_and_log_why() {
    let test = TestProxy::new(false);
    let closed_port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap();
    test.proxy.state.replace(&mesh(1, 1));
    let (_registry, listeners) = serve(&test, WEB, Duration::from_secs(5)).await;

    for (orig_dst, close_reason, error_has, upstream, flags) in [
        (
            SocketAddr::from(([10, 96, 0, 11], 80)),
            "unreachable",
            "cluster outbound|80||empty.shop.svc.cluster.local has no healthy endpoint",
            None,
            "UH",
        ),
        (
            closed_port,
            "connect_refused",
            "refused",
            Some(closed_port),
            "UF",
        ),
        (listeners.outbound, "error", "loop", None, "-"),
        (
            SocketAddr::from(([127, 0, 0, 1], 15006)),
            "error",
            "loop",
            None,
            "-",
        ),
    ] {
        test.log.clear();
        let mut client = connect_as_captured(listeners.outbound, &test.outbound, orig_dst).await;
        assert_eq!(
            read_all(&mut client).await,
            Err(std::io::ErrorKind::ConnectionReset),
            "{orig_dst}: the client must see RST"
        );
        let line = &test.log_lines(1).await[0];
        assert_eq!(line["close_reason"], close_reason, "{line}");
        assert!(
            line["error"].as_str().unwrap().contains(error_has),
            "{line}"
        );
        assert_eq!(line["dst_addr"], orig_dst.to_string(), "{line}");
        assert_eq!(
            line["upstream_addr"].as_str(),
            upstream.map(|u| u.to_string()).as_deref(),
            "{line}"
        );
        assert_eq!(line["response_flags"], flags, "{line}");
        if flags != "-" {
            assert_eq!(
                test.metric(
                    "istio_tcp_connections_closed_total",
                    &[("response_flags", flags)]
                ),
                Some(1),
                "{line}"
            );
        }
    }

    // Not redirected at all: no original destination.
    test.log.clear();
    let mut direct = TcpStream::connect(listeners.outbound).await.unwrap();
    assert_eq!(
        read_all(&mut direct).await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let line = &test.log_lines(1).await[0];
    assert_eq!(line["close_reason"], "error");
    assert_eq!(line["dst_addr"], "unknown");
    assert!(
        line["error"].as_str().unwrap().contains("SO_ORIGINAL_DST"),
        "{line}"
    );
}

#[tokio::test]
async fn inbound_delivers_to_the_pod_and_reports_as_destination() {
    let test = TestProxy::new(true);
    let echo = echo_server(ip([127, 0, 0, 2])).await;
    test.proxy.state.replace(&mesh(1, echo.port()));
    let (_registry, listeners) = serve(&test, API_A, Duration::from_secs(5)).await;

    // The caller is web-1: its IP is the peer address the inbound listener sees.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.10:0".parse().unwrap()).unwrap();
    test.inbound.insert(socket.local_addr().unwrap(), echo);
    let mut client = socket.connect(listeners.inbound).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_all(&mut client).await.unwrap(), b"hello");

    let line = &test.log_lines(1).await[0];
    for (field, expected) in [
        ("direction", "inbound"),
        ("reporter", "destination"),
        ("pod", "shop/api-a"),
        ("src_workload", "web"),
        ("dst_workload", "api"),
        ("dst_service", "api.shop.svc.cluster.local"),
        ("close_reason", "eof"),
        // Plaintext from the network: known workloads, nobody authenticated.
        ("src_principal", "unknown"),
        ("dst_principal", "unknown"),
        ("connection_security_policy", "none"),
        ("peer_security", "none"),
    ] {
        assert_eq!(line[field], expected, "{field} in {line}");
    }
    assert_eq!(line["bytes_received"], 5);
    assert_eq!(
        test.metric(
            "istio_tcp_connections_closed_total",
            &[
                ("reporter", "destination"),
                ("source_workload", "web"),
                ("source_principal", "unknown"),
                ("connection_security_policy", "none"),
                ("response_flags", "-"),
            ]
        ),
        Some(1)
    );
}

#[tokio::test]
async fn a_direct_connection_to_the_inbound_listener_is_refused() {
    let test = TestProxy::new(false);
    test.proxy.state.replace(&mesh(1, 1));
    let (_registry, listeners) = serve(&test, API_A, Duration::from_secs(5)).await;
    let mut client = TcpStream::connect(listeners.inbound).await.unwrap();
    assert_eq!(
        read_all(&mut client).await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let line = &test.log_lines(1).await[0];
    assert!(line["error"].as_str().unwrap().contains("loop"), "{line}");
    assert_eq!(line["upstream_addr"], serde_json::Value::Null);
}

#[tokio::test]
async fn removing_a_pod_closes_its_listeners_and_lets_connections_finish() {
    let test = TestProxy::new(false);
    let echo = echo_server(ip([127, 0, 0, 2])).await;
    test.proxy.state.replace(&mesh(1, echo.port()));
    let (registry, listeners) = serve(&test, WEB, Duration::from_secs(30)).await;

    let mut client = connect_as_captured(listeners.outbound, &test.outbound, echo).await;
    client.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    client.read_exact(&mut buf).await.unwrap();

    assert!(registry.remove(WEB).await);
    assert!(!registry.remove(WEB).await, "removed twice");
    assert_eq!(registry.served(), Vec::<PodUid>::new());
    for listener in [listeners.outbound, listeners.inbound] {
        let refused = TcpStream::connect(listener).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{listener}"
        );
    }
    // The established connection is untouched.
    client.write_all(b"after").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_all(&mut client).await.unwrap(), b"after");
    assert_eq!(test.log_lines(1).await[0]["close_reason"], "eof");

    // Shutdown waits for nothing now, and the same pod can be served again.
    tokio::time::timeout(Duration::from_secs(5), registry.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn shutdown_cuts_connections_still_open_at_the_drain_deadline() {
    let test = TestProxy::new(false);
    let echo = echo_server(ip([127, 0, 0, 2])).await;
    test.proxy.state.replace(&mesh(1, echo.port()));
    let (registry, listeners) = serve(&test, WEB, Duration::from_millis(300)).await;

    let mut client = connect_as_captured(listeners.outbound, &test.outbound, echo).await;
    client.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).await.unwrap();

    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), registry.shutdown())
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "drained after {took:?}, before the deadline"
    );
    assert_eq!(
        read_all(&mut client).await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let line = &test.log_lines(1).await[0];
    assert_eq!(line["close_reason"], "drained");
    assert_eq!(line["bytes_received"], 4);
    assert_eq!(line["bytes_sent"], 4);
    assert!(TcpStream::connect(listeners.outbound).await.is_err());
}

#[tokio::test]
async fn re_adding_a_pod_keeps_or_replaces_its_listeners_by_netns_cookie() {
    let test = TestProxy::new(false);
    let registry = test.registry(Arc::new(CurrentNetnsSocketFactory), Duration::from_secs(1));
    let cookie = own_netns_cookie();
    let loopback = InboundBind::Loopback;
    let first = registry
        .add(WEB, cookie, loopback, PodRole::App, own_netns(), Vec::new())
        .await
        .unwrap()
        .into_iter()
        .find(|(kind, _)| *kind == ListenerKind::Inbound)
        .map(|(_, listener)| listener)
        .expect("an app pod's inbound listener");
    let again = registry
        .add(WEB, cookie, loopback, PodRole::App, own_netns(), Vec::new())
        .await
        .unwrap()
        .into_iter()
        .find(|(kind, _)| *kind == ListenerKind::Inbound)
        .map(|(_, listener)| listener)
        .expect("an app pod's inbound listener");
    assert!(
        Arc::ptr_eq(&first, &again),
        "same netns must keep the listener"
    );

    // The agent restarted in iptables mode: the inbound listener moves to every address.
    let any = registry
        .add(
            WEB,
            cookie,
            InboundBind::AnyAddress,
            PodRole::App,
            own_netns(),
            Vec::new(),
        )
        .await
        .unwrap()
        .into_iter()
        .find(|(kind, _)| *kind == ListenerKind::Inbound)
        .map(|(_, listener)| listener)
        .expect("an app pod's inbound listener");
    assert!(!Arc::ptr_eq(&first, &any), "a new capture mode re-opens");
    assert!(any.local_addr().unwrap().ip().is_unspecified());
    assert!(
        registry
            .listeners(WEB)
            .unwrap()
            .inbound
            .ip()
            .is_unspecified()
    );

    // The agent says the pod's netns changed; ours is not that one.
    let err = registry
        .add(
            WEB,
            cookie + 1,
            loopback,
            PodRole::App,
            own_netns(),
            Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CookieMismatch { .. }), "{err}");
    assert!(err.to_string().contains(WEB), "{err}");
    assert_eq!(
        registry.served(),
        Vec::<PodUid>::new(),
        "the old netns was retired"
    );

    registry
        .add(WEB, cookie, loopback, PodRole::App, own_netns(), Vec::new())
        .await
        .unwrap();
    registry
        .add(
            API_A,
            cookie,
            loopback,
            PodRole::App,
            own_netns(),
            Vec::new(),
        )
        .await
        .unwrap();
    registry.retain(&[API_A.into()]).await;
    assert_eq!(registry.served(), [API_A]);
    registry.shutdown().await;
    assert_eq!(registry.served(), Vec::<PodUid>::new());
}

/// web-1 → api-a (127.0.0.2), both served by this proxy: delivered in one pass from api-a's
/// side when the shortcut is on, so the dialler reports both sides; with it off, only the
/// source side (api-a's inbound listener, which this harness does not steer to, would report
/// the rest). The privileged e2e suite checks the inbound listener is skipped for real.
#[tokio::test]
async fn same_node_delivery_reports_both_sides_in_one_pass() {
    for (shortcut, lines) in [(true, 2), (false, 1)] {
        let test = TestProxy::routed_by_state(shortcut);
        let http = http_server(ip([127, 0, 0, 2]), "api-a").await;
        let echo = echo_server(ip([127, 0, 0, 2])).await;
        let mut mesh = mesh(http.port(), echo.port());
        // api-a's Service port 80 speaks HTTP.
        mesh.services[0].ports[0].name = Some("http".into());
        test.proxy.state.replace(&mesh);
        let registry = test.registry(Arc::new(CurrentNetnsSocketFactory), Duration::from_secs(5));
        for uid in [WEB, API_A] {
            registry
                .add(
                    uid,
                    own_netns_cookie(),
                    InboundBind::Loopback,
                    PodRole::App,
                    own_netns(),
                    Vec::new(),
                )
                .await
                .unwrap();
        }
        let web = registry.listeners(WEB).unwrap();

        // HTTP to the pod address; opaque TCP to the echo port.
        let mut client = connect_as_captured(web.outbound, &test.outbound, http).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let response = String::from_utf8(read_all(&mut client).await.unwrap()).unwrap();
        assert!(response.ends_with("api-a"), "{response}");
        let mut client = connect_as_captured(web.outbound, &test.outbound, echo).await;
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut client).await.unwrap(), b"hello");

        let log = test.log_lines(2 * lines).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            test.log.lines().len(),
            2 * lines,
            "shortcut {shortcut}: {log:?}"
        );
        let destination: Vec<_> = log
            .iter()
            .filter(|l| l["reporter"] == "destination")
            .collect();
        assert_eq!(destination.len(), 2 * lines - 2, "shortcut {shortcut}");
        for line in destination {
            for (field, expected) in [
                ("direction", "inbound"),
                ("pod", "shop/api-a"),
                ("src_workload", "web"),
                ("dst_workload", "api"),
                ("dst_service", "api.shop.svc.cluster.local"),
            ] {
                assert_eq!(line[field], expected, "{field} in {line}");
            }
        }
        // Delivered here, both pods are known by their netns: both principals on both
        // sides; through the network, plaintext.
        let (principal, peer_security) = if shortcut {
            ("spiffe://cluster.local/ns/shop/sa/default", "same_node")
        } else {
            ("unknown", "none")
        };
        for line in &log {
            let policy = match (line["reporter"].as_str(), shortcut) {
                (Some("source"), _) => "unknown",
                (_, true) => "mutual_tls",
                (_, false) => "none",
            };
            for (field, expected) in [
                ("src_principal", principal),
                ("dst_principal", principal),
                ("peer_security", peer_security),
                ("connection_security_policy", policy),
            ] {
                assert_eq!(line[field], expected, "{field} in {line}");
            }
        }
        assert_eq!(
            test.metric("shunt_same_node_connections_total", &[]),
            Some(if shortcut { 2 } else { 0 }),
            "shortcut {shortcut}"
        );
        for (metric, reporter, policy) in [
            ("istio_requests_total", "source", "unknown"),
            ("istio_tcp_connections_closed_total", "source", "unknown"),
            ("istio_requests_total", "destination", "mutual_tls"),
            (
                "istio_tcp_connections_closed_total",
                "destination",
                "mutual_tls",
            ),
        ] {
            let labels = [
                ("reporter", reporter),
                ("source_principal", principal),
                ("destination_principal", principal),
                ("connection_security_policy", policy),
            ];
            let expected = (reporter == "source" || shortcut).then_some(1);
            assert_eq!(
                test.metric(metric, &labels),
                expected,
                "{metric} {labels:?}, shortcut {shortcut}"
            );
        }
        let both = |reporter| [("reporter", reporter), ("source_workload", "web")];
        for reporter in ["source", "destination"] {
            let expected = (reporter == "source" || shortcut).then_some(1);
            assert_eq!(
                test.metric("istio_requests_total", &both(reporter)),
                expected,
                "requests, {reporter}, shortcut {shortcut}"
            );
            assert_eq!(
                test.metric("istio_tcp_connections_closed_total", &both(reporter)),
                expected,
                "tcp, {reporter}, shortcut {shortcut}"
            );
        }
        registry.shutdown().await;
    }
}

#[tokio::test]
async fn same_node_delivery_only_to_served_captured_pods_on_captured_ports() {
    for shortcut in [true, false] {
        let test = TestProxy::routed_by_state(shortcut);
        let mut mesh = mesh(8080, 8081);
        mesh.workloads[1].excluded_inbound_ports = vec![9090];
        // Served, but the state says it is not captured (being released).
        mesh.workloads[2].captured = false;
        test.proxy.state.replace(&mesh);
        let registry = test.registry(Arc::new(CurrentNetnsSocketFactory), Duration::from_secs(5));
        for uid in [WEB, API_A, "uid-shop-api-b"] {
            registry
                .add(
                    uid,
                    own_netns_cookie(),
                    InboundBind::Loopback,
                    PodRole::App,
                    own_netns(),
                    Vec::new(),
                )
                .await
                .unwrap();
        }
        let target = |addr: &str| {
            let index = test.proxy.state.load();
            test.proxy
                .local_pods
                .target(&WEB.into(), &index, addr.parse().unwrap())
                .map(|pod| pod.uid.to_string())
        };
        let api_a = shortcut.then(|| API_A.to_owned());
        for (addr, expected) in [
            ("127.0.0.2:8080", api_a.clone()),
            // excludeInboundPorts: its capture leaves the port to the app.
            ("127.0.0.2:9090", None),
            ("127.0.0.2:15006", None),
            // Not captured (api-b), not served (api-c), or the caller itself.
            ("127.0.0.3:8080", None),
            ("127.0.0.4:8080", None),
            ("127.0.0.10:8080", None),
            // Not a pod.
            ("10.96.0.10:80", None),
        ] {
            assert_eq!(target(addr), expected, "{addr}, shortcut {shortcut}");
        }
        registry.remove(API_A).await;
        assert_eq!(
            target("127.0.0.2:8080"),
            None,
            "removed, shortcut {shortcut}"
        );
        registry.shutdown().await;
    }
}

/// When the destination pod is removed, what web-1 holds into it does not outlive its drain:
/// an open TCP connection is cut at the deadline, and a pooled HTTP connection is not reused
/// (the next request opens a fresh one, from web-1's own netns).
#[tokio::test]
async fn removing_the_destination_pod_ends_its_same_node_connections() {
    let test = TestProxy::routed_by_state(true);
    let (http, accepted) = counting_http_server(ip([127, 0, 0, 2]), "api-a").await;
    let echo = echo_server(ip([127, 0, 0, 2])).await;
    let mut mesh = mesh(http.port(), echo.port());
    mesh.services[0].ports[0].name = Some("http".into());
    test.proxy.state.replace(&mesh);
    let registry = test.registry(
        Arc::new(CurrentNetnsSocketFactory),
        Duration::from_millis(200),
    );
    for uid in [WEB, API_A] {
        registry
            .add(
                uid,
                own_netns_cookie(),
                InboundBind::Loopback,
                PodRole::App,
                own_netns(),
                Vec::new(),
            )
            .await
            .unwrap();
    }
    let web = registry.listeners(WEB).unwrap();
    let get = || async {
        let mut client = connect_as_captured(web.outbound, &test.outbound, http).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8(read_all(&mut client).await.unwrap()).unwrap()
    };
    assert!(get().await.ends_with("api-a"));
    let mut held = connect_as_captured(web.outbound, &test.outbound, echo).await;
    held.write_all(b"ping").await.unwrap();
    let mut pong = [0; 4];
    held.read_exact(&mut pong).await.unwrap();
    assert_eq!(
        test.metric("shunt_same_node_connections_total", &[]),
        Some(2)
    );

    registry.remove(API_A).await;
    // Cut at api-a's drain deadline, although web-1 never closed it.
    let ended = tokio::time::timeout(Duration::from_secs(3), read_all(&mut held)).await;
    assert!(ended.is_ok(), "the held connection outlived api-a's drain");
    assert!(get().await.ends_with("api-a"));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(
        test.metric("shunt_same_node_connections_total", &[]),
        Some(2)
    );
    // Two lines per delivered request or connection, one for the request sent directly.
    let lines = test.log_lines(5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(test.log.lines().len(), 5, "{lines:?}");
    let mut drained: Vec<&str> = lines
        .iter()
        .filter(|l| l["close_reason"] == "drained")
        .filter_map(|l| l["reporter"].as_str())
        .collect();
    drained.sort_unstable();
    assert_eq!(drained, ["destination", "source"], "{lines:?}");
    registry.shutdown().await;
}

/// A proxy rollout, in one process: the second registry takes the first one's listeners (as
/// the agent hands them over), the first stops, and the same addresses go on being served.
#[tokio::test]
async fn a_second_proxy_accepts_from_the_first_ones_listeners() {
    let test = TestProxy::new(false);
    let echo = echo_server(Ipv4Addr::new(127, 0, 0, 1)).await;
    test.proxy.state.replace(&mesh(1, echo.port()));
    let cookie = own_netns_cookie();
    let factory = Arc::new(CurrentNetnsSocketFactory);
    let old = test.registry(factory.clone(), Duration::from_secs(1));
    let handed = old
        .add(
            WEB,
            cookie,
            InboundBind::Loopback,
            PodRole::App,
            own_netns(),
            Vec::new(),
        )
        .await
        .unwrap();
    let kinds: Vec<ListenerKind> = handed.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, [ListenerKind::Outbound, ListenerKind::Inbound]);
    let addrs = old.listeners(WEB).unwrap();
    // What the agent keeps and gives the next proxy: descriptors of the very same sockets.
    let adopt = handed
        .iter()
        .map(|(kind, listener)| (*kind, listener.as_fd().try_clone_to_owned().unwrap()))
        .collect();
    drop(handed);

    let new = test.registry(factory, Duration::from_secs(1));
    new.add(
        WEB,
        cookie,
        InboundBind::Loopback,
        PodRole::App,
        own_netns(),
        adopt,
    )
    .await
    .unwrap();
    assert_eq!(
        new.listeners(WEB).unwrap(),
        addrs,
        "the same sockets, not new ones"
    );
    old.shutdown().await;
    for round in 0..3 {
        let mut client = connect_as_captured(addrs.outbound, &test.outbound, echo).await;
        client
            .write_all(b"after the old proxy stopped")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(
            read_all(&mut client).await.unwrap(),
            b"after the old proxy stopped",
            "round {round}"
        );
    }

    // A handed-over descriptor that does not listen is refused, naming the pod and listener.
    let other = test.registry(Arc::new(CurrentNetnsSocketFactory), Duration::from_secs(1));
    let connected = std::net::TcpStream::connect(addrs.outbound).unwrap();
    let err = other
        .add(
            API_A,
            cookie,
            InboundBind::Loopback,
            PodRole::App,
            own_netns(),
            vec![(ListenerKind::Outbound, OwnedFd::from(connected))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Adopt { .. }), "{err}");
    assert!(err.to_string().contains("does not listen"), "{err}");
    new.shutdown().await;
}
