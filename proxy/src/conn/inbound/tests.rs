//! The inbound listener's HTTP side in one process: a client on loopback as `shop/web-1`
//! (127.0.0.10), the proxy serving `shop/api-a` (127.0.0.2), and the app as a loopback server
//! the table of original destinations points at.
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use super::*;
use crate::socket::{CurrentNetnsSocketFactory, SocketFactory};
use crate::testing::served_pod;
use crate::testing::{TestProxy, echo_server, own_netns};
use crate::upstream::Upstreams;
use shunt_mesh::model::{MeshState, TargetPort};
use shunt_mesh::routing::{PortProtocol, declared_protocol};
use shunt_mesh::testing::{pod, service};

const API_A: &str = "uid-shop-api-a";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
const APP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// web-1 calls api-a (label `version: v2`), selected by Service api whose port 80 (named
/// `port_name`) targets `app_port`.
fn mesh(app_port: u16, port_name: Option<&str>) -> MeshState {
    let mut api = pod("shop", "api-a", APP_IP.octets(), "api");
    api.labels.insert("version".into(), "v2".into());
    let mut api_service = service(
        "shop",
        "api",
        [10, 96, 0, 10],
        "api",
        &[(80, TargetPort::Number(app_port))],
    );
    api_service.ports[0].name = port_name.map(str::to_owned);
    MeshState {
        workloads: vec![pod("shop", "web-1", CLIENT_IP.octets(), "web"), api],
        services: vec![api_service],
        ..Default::default()
    }
}

/// The proxy's inbound side for api-a, accepting on a loopback listener.
struct Inbound {
    test: TestProxy,
    pod: Arc<PodContext>,
    listener: TcpListener,
}

impl Inbound {
    async fn new(state: &MeshState) -> Self {
        let test = TestProxy::new(true);
        test.proxy.state.replace(state);
        let sockets = CurrentNetnsSocketFactory
            .enter(own_netns(), "shop/api-a")
            .await
            .unwrap();
        let upstreams = Arc::new(Upstreams::new(
            sockets.clone(),
            Duration::from_secs(2),
            test.proxy.metrics.upstream.clone(),
            Arc::default(),
        ));
        let pod = Arc::new(PodContext {
            pod: served_pod(API_A, sockets),
            upstreams,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self {
            test,
            pod,
            listener,
        }
    }

    /// A connection from web-1 to `app`, served by the inbound listener.
    async fn connect(&self, app: SocketAddr) -> tokio::net::TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(CLIENT_IP.into(), 0)).unwrap();
        self.test.inbound.insert(socket.local_addr().unwrap(), app);
        let client = socket
            .connect(self.listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = self.listener.accept().await.unwrap();
        tokio::spawn(serve(
            self.test.proxy.clone(),
            self.pod.clone(),
            accepted,
            ClientAddr(peer),
        ));
        client
    }

    fn requests(&self, labels: &[(&str, &str)]) -> Option<u64> {
        self.test.metric("istio_requests_total", labels)
    }
}

/// What the app saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    path: String,
    headers: HeaderMap,
}

/// An HTTP/1.1 + h2 app on 127.0.0.2 answering "api", recording what it was sent.
async fn app() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind((APP_IP, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let recorded = recorded.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let recorded = recorded.clone();
                async move {
                    recorded.lock().unwrap().push(Seen {
                        version: request.version(),
                        path: request.uri().path_and_query().unwrap().to_string(),
                        headers: request.headers().clone(),
                    });
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("api"))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn destination_labels<'a>(code: &'a str, flags: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("reporter", "destination"),
        ("source_workload", "web"),
        ("source_workload_namespace", "shop"),
        ("destination_workload", "api"),
        ("destination_workload_namespace", "shop"),
        ("destination_service", "api.shop.svc.cluster.local"),
        ("destination_version", "v2"),
        ("request_protocol", "http"),
        ("response_code", code),
        ("response_flags", flags),
    ]
}

#[tokio::test]
async fn an_http1_request_reaches_the_app_as_sent_and_is_reported_by_the_destination() {
    let (app, seen) = app().await;
    // Undeclared port: sniffed.
    let inbound = Inbound::new(&mesh(app.port(), None)).await;
    let stream = inbound.connect(app).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri("/items?q=1")
        .header("host", "api.shop:80")
        .header("x-request-id", "req-1")
        // What the client's own proxy added.
        .header("x-forwarded-for", "127.0.0.10")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from("body")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "api");

    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.path, "/items?q=1");
    for (name, value) in [
        ("host", "api.shop:80"),
        ("x-request-id", "req-1"),
        ("x-forwarded-for", "127.0.0.10"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("x-custom", "kept"),
        ("x-forwarded-proto", "http"),
    ] {
        let values: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(values, [value], "{name} in {:?}", seen.headers);
    }

    let line = &inbound.test.log_lines(1).await[0];
    for (field, expected) in [
        ("direction", "inbound"),
        ("reporter", "destination"),
        ("pod", "shop/api-a"),
        ("method", "GET"),
        ("path", "/items?q=1"),
        ("protocol", "HTTP/1.1"),
        ("response_flags", "-"),
        ("request_id", "req-1"),
        ("x_forwarded_for", "127.0.0.10"),
        ("src_workload", "web"),
        ("dst_workload", "api"),
        ("dst_service", "api.shop.svc.cluster.local"),
    ] {
        assert_eq!(line[field], expected, "{field} in {line}");
    }
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["bytes_received"], 4);
    assert_eq!(
        line["upstream_cluster"],
        format!("inbound|{}||", app.port()).as_str()
    );
    assert_eq!(line["upstream_host"], app.to_string().as_str());
    assert_eq!(inbound.requests(&destination_labels("200", "-")), Some(1));
    assert_eq!(
        inbound.test.metric(
            "istio_request_duration_milliseconds_count",
            &[("reporter", "destination"), ("response_code", "200")]
        ),
        Some(1)
    );
    for histogram in ["istio_request_bytes_count", "istio_response_bytes_count"] {
        assert_eq!(
            inbound
                .test
                .metric(histogram, &[("reporter", "destination")]),
            Some(1),
            "{histogram}"
        );
    }
    assert_eq!(inbound.requests(&[("reporter", "source")]), None);
}

#[tokio::test]
async fn an_h2_request_reaches_the_app_over_h2_with_a_generated_request_id() {
    let (app, seen) = app().await;
    let inbound = Inbound::new(&mesh(app.port(), None)).await;
    let stream = inbound.connect(app).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri("http://api.shop/h2/path")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();

    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.path, "/h2/path");
    assert_eq!(seen.headers["x-custom"], "kept");
    // No x-forwarded-for is invented: the inbound hop does not append the remote address.
    assert!(seen.headers.get("x-forwarded-for").is_none(), "{seen:?}");
    let request_id = seen.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 36, "a UUID: {request_id}");

    let line = &inbound.test.log_lines(1).await[0];
    assert_eq!(line["request_id"], request_id.as_str());
    assert_eq!(line["protocol"], "HTTP/2");
    assert_eq!(line["direction"], "inbound");
    assert_eq!(inbound.requests(&destination_labels("200", "-")), Some(1));
}

#[tokio::test]
async fn a_request_to_a_closed_app_port_is_a_503_with_flag_uf() {
    // Bound then dropped: nothing listens there.
    let closed = TcpListener::bind((APP_IP, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let inbound = Inbound::new(&mesh(closed.port(), Some("http"))).await;
    let stream = inbound.connect(closed).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri("/")
        .header("host", "api.shop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(inbound.requests(&destination_labels("503", "UF")), Some(1));
}

#[tokio::test]
async fn a_server_first_app_on_an_undeclared_port_works_after_the_detection_timeout() {
    let listener = TcpListener::bind((APP_IP, 0)).await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"220 ready\r\n").await.unwrap();
        let mut command = [0u8; 6];
        stream.read_exact(&mut command).await.unwrap();
        stream.write_all(&command).await.unwrap();
    });
    let inbound = Inbound::new(&mesh(app.port(), None)).await;
    let started = Instant::now();
    let mut client = inbound.connect(app).await;
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "the greeting came before the detection timeout: {:?}",
        started.elapsed()
    );
    client.write_all(b"QUIT\r\n").await.unwrap();
    let mut echoed = [0u8; 6];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"QUIT\r\n");
    drop(client);
    let line = &inbound.test.log_lines(1).await[0];
    assert!(line.get("close_reason").is_some(), "a TCP entry: {line}");
    assert_eq!(line["reporter"], "destination");
}

#[tokio::test]
async fn a_declared_tcp_port_is_forwarded_without_sniffing() {
    let echo = echo_server(APP_IP).await;
    let inbound = Inbound::new(&mesh(echo.port(), Some("tcp-db"))).await;
    let mut client = inbound.connect(echo).await;
    // HTTP on the wire, but the port says TCP: the bytes go through untouched.
    let request = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n";
    client.write_all(request).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, request);
    let line = &inbound.test.log_lines(1).await[0];
    assert_eq!(line["close_reason"], "eof", "{line}");
    assert_eq!(line["dst_service"], "api.shop.svc.cluster.local");
    assert_eq!(inbound.requests(&[("reporter", "destination")]), None);
}

#[test]
fn the_declared_protocol_comes_from_the_service_port_targeting_the_pod_port() {
    let state = mesh(8080, None);
    let workload = &state.workloads[1];
    let cases = [
        (None, None, 8080, PortProtocol::Sniff),
        (Some("http-web"), None, 8080, PortProtocol::Http),
        (Some("grpc"), None, 8080, PortProtocol::Http2),
        (Some("tcp-db"), None, 8080, PortProtocol::Tcp),
        (Some("web"), Some("http"), 8080, PortProtocol::Http),
        // Another port of the pod: nothing declares it.
        (Some("http"), None, 9090, PortProtocol::Sniff),
    ];
    for (name, app_protocol, port, expected) in cases {
        let mut service = state.services[0].clone();
        service.ports[0].name = name.map(str::to_owned);
        service.ports[0].app_protocol = app_protocol.map(str::to_owned);
        assert_eq!(
            declared_protocol(Some(&service), Some(workload), port),
            expected,
            "{name:?} {app_protocol:?} {port}"
        );
    }
    assert_eq!(
        declared_protocol(None, Some(workload), 8080),
        PortProtocol::Sniff
    );
}
