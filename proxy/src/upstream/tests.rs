//! Clusters against real hyper servers on loopback, dialled through a test `PodSockets`.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::*;
use crate::socket::{CurrentNetnsSocketFactory, SocketFactory};
use shunt_mesh::routing::{
    ClusterEndpoint, ConnectionPool, HashAlgorithm, HashKey, Host, OutlierDetection, PortProtocol,
};

/// A loopback HTTP server that answers `status` after `delay` with the body
/// `<port> conn <n>` (n: which accepted connection served it).
struct TestServer {
    addr: EndpointAddr,
    accepted: Arc<AtomicUsize>,
}

async fn server(h2: bool, status: u16, delay: Duration) -> TestServer {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!("bound IPv4");
    };
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let connection = count.fetch_add(1, Ordering::SeqCst) + 1;
            let service = service_fn(move |_: http::Request<Incoming>| async move {
                tokio::time::sleep(delay).await;
                let body = format!("{} conn {connection}", addr.port());
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap(),
                )
            });
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
            });
        }
    });
    TestServer {
        addr: addr.into(),
        accepted,
    }
}

fn cluster(endpoints: &[EndpointAddr], policy: TrafficPolicy) -> Arc<Cluster> {
    Arc::new(Cluster {
        key: ClusterKey {
            host: Host(Arc::from("cart.shop.svc.cluster.local")),
            subset: None,
            port: 8080,
        },
        protocol: PortProtocol::Http,
        service: None,
        endpoints: endpoints
            .iter()
            .map(|&addr| ClusterEndpoint {
                addr,
                workload: None,
                weight: 1,
            })
            .collect(),
        dns: Vec::new(),
        service_entry: None,
        policy,
        version: None,
    })
}

fn pool_policy(pool: ConnectionPool) -> TrafficPolicy {
    TrafficPolicy {
        connection_pool: pool,
        ..TrafficPolicy::default()
    }
}

fn outlier_policy(
    five_xx: u32,
    max_ejection_percent: u32,
    min_health_percent: u32,
) -> TrafficPolicy {
    TrafficPolicy {
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx_errors: Some(five_xx),
            consecutive_gateway_errors: None,
            interval: Duration::from_millis(50),
            base_ejection_time: Duration::from_millis(200),
            max_ejection_percent,
            min_health_percent,
        }),
        ..TrafficPolicy::default()
    }
}

struct Fixture {
    upstreams: Upstreams,
    registry: Registry,
}

impl Fixture {
    async fn new() -> Self {
        let sockets = CurrentNetnsSocketFactory
            .enter(crate::testing::own_netns(), "shop/client")
            .await
            .unwrap();
        let mut registry = Registry::default();
        let metrics = Arc::new(UpstreamMetrics::register(&mut registry));
        Self {
            upstreams: Upstreams::new(sockets, Duration::from_secs(2), metrics, Arc::default()),
            registry,
        }
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

fn request(version: HttpVersion) -> http::Request<Body> {
    let uri = match version {
        HttpVersion::Http1 => "/",
        HttpVersion::Http2 => "http://cart/",
    };
    http::Request::builder()
        .uri(uri)
        .header(http::header::HOST, "cart")
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// Picks, sends and reads the whole body; returns (status, body).
async fn exchange(
    cluster: &ClusterState,
    version: HttpVersion,
) -> Result<(StatusCode, String), UpstreamError> {
    let picked = cluster.pick(None, &[])?;
    let response = cluster.send(&picked, request(version), version).await?;
    let status = response.status();
    cluster.record(&picked, Outcome::Status(status));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

#[tokio::test]
async fn an_idle_http1_connection_is_reused() {
    let server = server(false, 200, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    let state = fixture
        .upstreams
        .cluster(&cluster(&[server.addr], TrafficPolicy::default()));
    for _ in 0..3 {
        let (status, body) = exchange(&state, HttpVersion::Http1).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with("conn 1"), "{body}");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    let dump = fixture.upstreams.dump();
    let endpoint = &dump.clusters["outbound|8080||cart.shop.svc.cluster.local"].endpoints[0];
    assert_eq!(endpoint.idle_connections, 1);
    assert_eq!(endpoint.active_requests, 0);
    assert!(
        fixture.metrics().contains(
            "shunt_upstream_connections{cluster=\"outbound|8080||cart.shop.svc.cluster.local\"} 1"
        ),
        "{}",
        fixture.metrics()
    );
}

#[tokio::test]
async fn max_requests_per_connection_opens_a_connection_per_request() {
    let server = server(false, 200, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    let state = fixture.upstreams.cluster(&cluster(
        &[server.addr],
        pool_policy(ConnectionPool {
            max_requests_per_connection: Some(1),
            ..ConnectionPool::default()
        }),
    ));
    for n in 1..=3 {
        let (_, body) = exchange(&state, HttpVersion::Http1).await.unwrap();
        assert!(body.ends_with(&format!("conn {n}")), "{body}");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn beyond_max_connections_and_pending_requests_overflows_with_uo() {
    let server = server(false, 200, Duration::from_millis(300)).await;
    let fixture = Fixture::new().await;
    let state = fixture.upstreams.cluster(&cluster(
        &[server.addr],
        pool_policy(ConnectionPool {
            max_connections: Some(1),
            http1_max_pending_requests: Some(1),
            ..ConnectionPool::default()
        }),
    ));
    let first = tokio::spawn({
        let state = state.clone();
        async move { exchange(&state, HttpVersion::Http1).await }
    });
    wait_for(|| {
        fixture
            .upstreams
            .dump()
            .clusters
            .values()
            .all(|c| c.connections == 1)
    })
    .await;
    let second = tokio::spawn({
        let state = state.clone();
        async move { exchange(&state, HttpVersion::Http1).await }
    });
    wait_for(|| {
        fixture
            .upstreams
            .dump()
            .clusters
            .values()
            .all(|c| c.pending_requests == 1)
    })
    .await;
    let third = exchange(&state, HttpVersion::Http1).await.unwrap_err();
    assert!(
        matches!(
            third,
            UpstreamError::Overflow {
                limit: "max_pending_requests",
                ..
            }
        ),
        "{third}"
    );
    assert_eq!(third.response_flag(), "UO");
    // The waiting request gets the connection once the first is done.
    assert_eq!(first.await.unwrap().unwrap().0, StatusCode::OK);
    assert_eq!(second.await.unwrap().unwrap().0, StatusCode::OK);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert!(
        fixture
            .metrics()
            .contains("limit=\"max_pending_requests\"} 1"),
        "{}",
        fixture.metrics()
    );
}

#[tokio::test]
async fn beyond_http2_max_requests_overflows() {
    let server = server(true, 200, Duration::from_millis(300)).await;
    let fixture = Fixture::new().await;
    let state = fixture.upstreams.cluster(&cluster(
        &[server.addr],
        pool_policy(ConnectionPool {
            http2_max_requests: Some(2),
            ..ConnectionPool::default()
        }),
    ));
    let running: Vec<_> = (0..2)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move { exchange(&state, HttpVersion::Http2).await })
        })
        .collect();
    wait_for(|| {
        fixture
            .upstreams
            .dump()
            .clusters
            .values()
            .all(|c| c.active_requests == 2)
    })
    .await;
    let err = exchange(&state, HttpVersion::Http2).await.unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Overflow {
                limit: "max_requests",
                ..
            }
        ),
        "{err}"
    );
    for task in running {
        assert_eq!(task.await.unwrap().unwrap().0, StatusCode::OK);
    }
}

#[tokio::test]
async fn h2_requests_share_one_connection() {
    let server = server(true, 200, Duration::from_millis(100)).await;
    let fixture = Fixture::new().await;
    let state = fixture
        .upstreams
        .cluster(&cluster(&[server.addr], TrafficPolicy::default()));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move { exchange(&state, HttpVersion::Http2).await })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with("conn 1"), "{body}");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_connection_is_an_upstream_connect_failure() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(addr) = closed.local_addr().unwrap() else {
        unreachable!("bound IPv4");
    };
    drop(closed);
    let fixture = Fixture::new().await;
    let state = fixture
        .upstreams
        .cluster(&cluster(&[addr.into()], TrafficPolicy::default()));
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let err = exchange(&state, version).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
        assert_eq!(err.response_flag(), "UF");
        assert!(err.is_connect_failure() && err.is_gateway_error());
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
    assert_eq!(
        fixture
            .upstreams
            .dump()
            .clusters
            .values()
            .next()
            .unwrap()
            .connections,
        0
    );
}

#[tokio::test]
async fn outlier_detection_ejects_after_consecutive_5xx_and_returns_after_base_ejection_time() {
    let failing = server(false, 500, Duration::ZERO).await;
    let healthy = server(false, 200, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    let state = fixture.upstreams.cluster(&cluster(
        &[failing.addr, healthy.addr],
        outlier_policy(3, 100, 0),
    ));
    // Round robin alternates: 6 requests give the failing endpoint its 3 consecutive 500s.
    let mut errors = 0;
    for _ in 0..6 {
        let (status, _) = exchange(&state, HttpVersion::Http1).await.unwrap();
        errors += usize::from(status.is_server_error());
    }
    assert_eq!(errors, 3);
    for _ in 0..10 {
        assert_eq!(state.pick(None, &[]).unwrap().addr, healthy.addr);
    }
    let dump = fixture.upstreams.dump();
    let endpoint = &dump.clusters.values().next().unwrap().endpoints[0];
    assert!(
        endpoint.ejected && endpoint.times_ejected == 1,
        "{endpoint:?}"
    );
    assert!(
        endpoint.ejected_until.is_some_and(|s| s > 0.0 && s <= 0.2),
        "{endpoint:?}"
    );
    let labels = format!(
        "{{cluster=\"outbound|8080||cart.shop.svc.cluster.local\",endpoint=\"{}\"}}",
        failing.addr
    );
    let metrics = fixture.metrics();
    assert!(
        metrics.contains(&format!("shunt_outlier_ejections_total{labels} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("shunt_outlier_ejected{labels} 1")),
        "{metrics}"
    );

    // The maintenance task returns it without traffic.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fixture
            .metrics()
            .contains(&format!("shunt_outlier_ejected{labels} 0"))
    );
    let picks: Vec<EndpointAddr> = (0..4)
        .map(|_| state.pick(None, &[]).unwrap().addr)
        .collect();
    assert!(picks.contains(&failing.addr), "{picks:?}");
}

#[tokio::test]
async fn max_ejection_percent_limits_ejections_and_min_health_percent_panics() {
    let a = server(false, 500, Duration::ZERO).await;
    let b = server(false, 500, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    // 50% of 2: one may be ejected, not both.
    let state = fixture
        .upstreams
        .cluster(&cluster(&[a.addr, b.addr], outlier_policy(2, 50, 0)));
    for _ in 0..8 {
        exchange(&state, HttpVersion::Http1).await.unwrap();
    }
    let dump = fixture.upstreams.dump();
    let ejected = dump
        .clusters
        .values()
        .next()
        .unwrap()
        .endpoints
        .iter()
        .filter(|e| e.ejected)
        .count();
    assert_eq!(ejected, 1, "{dump:?}");

    // minHealthPercent 60 with 1 of 2 healthy: panic, both endpoints are picked.
    let panicking = cluster(&[a.addr, b.addr], outlier_policy(2, 50, 60));
    let state = fixture.upstreams.cluster(&panicking);
    let picks: Vec<EndpointAddr> = (0..4)
        .map(|_| state.pick(None, &[]).unwrap().addr)
        .collect();
    assert!(
        picks.contains(&a.addr) && picks.contains(&b.addr),
        "{picks:?}"
    );
}

#[tokio::test]
async fn a_reload_keeps_ejections_and_connections_of_remaining_endpoints() {
    let failing = server(false, 503, Duration::ZERO).await;
    let other = server(false, 200, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    let first = cluster(&[failing.addr], outlier_policy(1, 100, 0));
    let state = fixture.upstreams.cluster(&first);
    exchange(&state, HttpVersion::Http1).await.unwrap();
    assert!(matches!(
        state.pick(None, &[]),
        Err(UpstreamError::NoHealthyUpstream { .. })
    ));
    assert_eq!(state.pick(None, &[]).unwrap_err().response_flag(), "UH");

    let reloaded = cluster(&[failing.addr, other.addr], outlier_policy(1, 100, 0));
    let same = fixture.upstreams.cluster(&reloaded);
    assert!(Arc::ptr_eq(&state, &same));
    for _ in 0..4 {
        assert_eq!(same.pick(None, &[]).unwrap().addr, other.addr);
    }
    let dump = fixture.upstreams.dump();
    let failing_dump = &dump.clusters.values().next().unwrap().endpoints[0];
    assert!(
        failing_dump.ejected && failing_dump.idle_connections == 1,
        "{failing_dump:?}"
    );
}

#[tokio::test]
async fn least_request_prefers_the_endpoint_without_requests_in_flight() {
    let slow = server(false, 200, Duration::ZERO).await;
    let idle = server(false, 200, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    let state = fixture.upstreams.cluster(&cluster(
        &[slow.addr, idle.addr],
        TrafficPolicy {
            load_balancer: LoadBalancer::LeastRequest,
            ..TrafficPolicy::default()
        },
    ));
    let picked = state.pick(None, &[]).unwrap();
    // The response body not read yet: the request is still active on that endpoint.
    let in_flight = state
        .send(&picked, request(HttpVersion::Http1), HttpVersion::Http1)
        .await
        .unwrap();
    let other = if picked.addr == slow.addr {
        idle.addr
    } else {
        slow.addr
    };
    for _ in 0..5 {
        assert_eq!(state.pick(None, &[]).unwrap().addr, other);
    }
    in_flight.into_body().collect().await.unwrap();
    let picks: Vec<EndpointAddr> = (0..4)
        .map(|_| state.pick(None, &[]).unwrap().addr)
        .collect();
    assert!(
        picks.contains(&slow.addr) && picks.contains(&idle.addr),
        "{picks:?}"
    );
}

#[tokio::test]
async fn hash_picks_are_sticky_and_retries_move_to_another_endpoint() {
    let endpoints: Vec<EndpointAddr> = (1..=4)
        .map(|i| EndpointAddr::new(Ipv4Addr::new(10, 0, 0, i), 8080))
        .collect();
    let fixture = Fixture::new().await;
    let state = fixture.upstreams.cluster(&cluster(
        &endpoints,
        TrafficPolicy {
            load_balancer: LoadBalancer::ConsistentHash {
                key: HashKey::SourceIp,
                algorithm: HashAlgorithm::RingHash {
                    minimum_ring_size: 1024,
                },
            },
            ..TrafficPolicy::default()
        },
    ));
    let hash = hash_bytes(b"10.1.1.1");
    let first = state.pick(Some(hash), &[]).unwrap().addr;
    assert!((0..1000).all(|_| state.pick(Some(hash), &[]).unwrap().addr == first));
    let retry = state.pick(Some(hash), &[first]).unwrap().addr;
    assert_ne!(retry, first);
    // Excluding everything falls back to ignoring the exclusion.
    assert_eq!(state.pick(Some(hash), &endpoints).unwrap().addr, first);
}

#[tokio::test]
async fn passthrough_clusters_have_no_pick_and_retries_have_a_budget() {
    let fixture = Fixture::new().await;
    let addr = EndpointAddr::new(Ipv4Addr::new(10, 0, 0, 1), 80);
    let passthrough = fixture.upstreams.cluster(&cluster(
        &[addr],
        TrafficPolicy {
            load_balancer: LoadBalancer::Passthrough,
            ..TrafficPolicy::default()
        },
    ));
    assert!(matches!(
        passthrough.pick(None, &[]),
        Err(UpstreamError::Passthrough { .. })
    ));
    let server = server(false, 200, Duration::ZERO).await;
    let original = passthrough.passthrough(server.addr, None);
    for _ in 0..2 {
        let response = passthrough
            .send(&original, request(HttpVersion::Http1), HttpVersion::Http1)
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"conn 1"), "{body:?}");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

    let budget = cluster(
        &[addr],
        pool_policy(ConnectionPool {
            max_retries: Some(1),
            ..ConnectionPool::default()
        }),
    );
    let state = fixture.upstreams.cluster(&budget);
    let permit = state.try_retry().unwrap();
    assert!(state.try_retry().is_none());
    drop(permit);
    assert!(state.try_retry().is_some());
    assert!(fixture.metrics().contains("limit=\"max_retries\"} 1"));
}

#[tokio::test]
async fn idle_connections_close_after_idle_timeout() {
    let server = server(false, 200, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    let state = fixture.upstreams.cluster(&cluster(
        &[server.addr],
        pool_policy(ConnectionPool {
            idle_timeout: Some(Duration::from_millis(100)),
            ..ConnectionPool::default()
        }),
    ));
    exchange(&state, HttpVersion::Http1).await.unwrap();
    wait_for(|| {
        fixture
            .upstreams
            .dump()
            .clusters
            .values()
            .all(|c| c.connections == 0)
    })
    .await;
    let (_, body) = exchange(&state, HttpVersion::Http1).await.unwrap();
    assert!(body.ends_with("conn 2"), "{body}");
}

/// Polls `condition` for up to 5 s.
async fn wait_for(condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

/// An ALLOW_ANY cluster: the address itself, default policy.
fn passthrough_address(ip: [u8; 4], policy: TrafficPolicy) -> Arc<Cluster> {
    let addr = EndpointAddr::new(Ipv4Addr::from(ip), 80);
    Arc::new(Cluster {
        key: ClusterKey {
            host: Host(Arc::from(addr.ip().to_string())),
            subset: None,
            port: 80,
        },
        ..Arc::unwrap_or_clone(cluster(&[addr], policy))
    })
}

fn cluster_names(upstreams: &Upstreams) -> Vec<String> {
    upstreams.dump().clusters.into_keys().collect()
}

#[tokio::test(start_paused = true)]
async fn an_idle_cluster_is_forgotten_and_its_task_ends() {
    let fixture = Fixture::new().await;
    let unused = fixture.upstreams.cluster(&passthrough_address(
        [10, 0, 0, 1],
        TrafficPolicy::default(),
    ));
    let kept = passthrough_address([10, 0, 0, 2], TrafficPolicy::default());
    fixture.upstreams.cluster(&kept);
    let task_alive = Arc::downgrade(&unused);
    drop(unused);
    // Asked for again (a request) 30 s in: its idle time starts over.
    tokio::time::sleep(Duration::from_secs(30)).await;
    fixture.upstreams.cluster(&kept);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        cluster_names(&fixture.upstreams),
        ["outbound|80||10.0.0.1", "outbound|80||10.0.0.2"]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster_names(&fixture.upstreams), ["outbound|80||10.0.0.2"]);
    assert!(task_alive.upgrade().is_none(), "the cluster is still held");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(cluster_names(&fixture.upstreams).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_longer_idle_timeout_keeps_the_cluster_as_long() {
    let fixture = Fixture::new().await;
    fixture.upstreams.cluster(&passthrough_address(
        [10, 0, 0, 1],
        pool_policy(ConnectionPool {
            idle_timeout: Some(Duration::from_secs(300)),
            ..ConnectionPool::default()
        }),
    ));
    tokio::time::sleep(Duration::from_secs(299)).await;
    assert_eq!(cluster_names(&fixture.upstreams).len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(cluster_names(&fixture.upstreams).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_cluster_with_an_ejected_endpoint_is_kept_until_the_ejection_ends() {
    let fixture = Fixture::new().await;
    let mut policy = outlier_policy(1, 100, 0);
    if let Some(detection) = policy.outlier_detection.as_mut() {
        detection.base_ejection_time = Duration::from_secs(300);
    }
    let state = fixture
        .upstreams
        .cluster(&passthrough_address([10, 0, 0, 1], policy));
    let picked = state.pick(None, &[]).unwrap();
    state.record(&picked, Outcome::Status(StatusCode::SERVICE_UNAVAILABLE));
    drop((picked, state));
    tokio::time::sleep(Duration::from_secs(200)).await;
    let dump = fixture.upstreams.dump();
    assert!(
        dump.clusters["outbound|80||10.0.0.1"].endpoints[0].ejected,
        "{dump:?}"
    );
    // Returned at 300 s; idle from then on.
    tokio::time::sleep(Duration::from_secs(159)).await;
    assert_eq!(cluster_names(&fixture.upstreams).len(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(cluster_names(&fixture.upstreams).is_empty());
    assert!(
        !fixture.metrics().contains("shunt_outlier_ejected{"),
        "{}",
        fixture.metrics()
    );
}

#[tokio::test]
async fn a_cluster_with_a_request_in_flight_is_kept_and_forgotten_once_idle() {
    let server = server(false, 200, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    let state = fixture
        .upstreams
        .cluster(&cluster(&[server.addr], TrafficPolicy::default()));
    let picked = state.pick(None, &[]).unwrap();
    let in_flight = state
        .send(&picked, request(HttpVersion::Http1), HttpVersion::Http1)
        .await
        .unwrap();
    drop((picked, state));
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let dump = fixture.upstreams.dump();
    let busy = &dump.clusters["outbound|8080||cart.shop.svc.cluster.local"];
    assert_eq!((busy.active_requests, busy.connections), (1, 1), "{dump:?}");

    tokio::time::resume();
    in_flight.into_body().collect().await.unwrap();
    tokio::time::pause();
    // The request ended within the last maintenance period: idle for at least 59 s more.
    tokio::time::sleep(Duration::from_secs(59)).await;
    let dump = fixture.upstreams.dump();
    assert_eq!(
        dump.clusters["outbound|8080||cart.shop.svc.cluster.local"].endpoints[0].idle_connections,
        1,
        "{dump:?}"
    );
    // Then its pooled connection closes and the cluster goes, with its gauge.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::time::resume();
    wait_for(|| cluster_names(&fixture.upstreams).is_empty()).await;
    assert!(
        !fixture.metrics().contains("shunt_upstream_connections{"),
        "{}",
        fixture.metrics()
    );
}

/// A cluster of a DNS ServiceEntry: `names` to resolve, no configured endpoint.
fn dns_cluster(names: &[(&str, u16)]) -> Arc<Cluster> {
    Arc::new(Cluster {
        dns: names
            .iter()
            .map(|&(name, port)| shunt_mesh::routing::DnsEndpoint {
                name: name.into(),
                port,
                weight: 1,
            })
            .collect(),
        service_entry: Some(shunt_mesh::routing::ObjectRef {
            kind: "ServiceEntry",
            namespace: "shop".into(),
            name: "db".into(),
        }),
        ..Arc::unwrap_or_clone(cluster(&[], TrafficPolicy::default()))
    })
}

#[tokio::test]
async fn a_dns_cluster_dials_what_its_names_resolve_to() {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if !hosts
        .lines()
        .any(|l| l.split_whitespace().eq(["127.0.0.1", "localhost"]))
    {
        eprintln!("skipped: /etc/hosts has no line `127.0.0.1 localhost`");
        return;
    }
    let server = server(false, 200, Duration::ZERO).await;
    let fixture = Fixture::new().await;
    let state = fixture
        .upstreams
        .cluster(&dns_cluster(&[("localhost", server.addr.port())]));
    // Nothing to pick before the names are resolved.
    assert!(matches!(
        state.pick(None, &[]),
        Err(UpstreamError::NoHealthyUpstream { .. })
    ));
    state.resolve().await.unwrap();
    let (status, _) = exchange(&state, HttpVersion::Http1).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fixture.upstreams.dump().clusters["outbound|8080||cart.shop.svc.cluster.local"].endpoints
            [0]
        .addr,
        server.addr.to_string()
    );
}

#[tokio::test]
async fn a_dns_cluster_whose_names_do_not_resolve_has_no_healthy_upstream() {
    let fixture = Fixture::new().await;
    let state = fixture
        .upstreams
        .cluster(&dns_cluster(&[("does-not-exist.invalid", 80)]));
    let error = state.resolve().await.unwrap_err();
    assert_eq!(error.response_flag(), "UH");
    let message = error.to_string();
    for part in ["ServiceEntry shop/db", "does-not-exist.invalid"] {
        assert!(message.contains(part), "{message}");
    }
}

#[test]
fn cluster_names_are_envoys() {
    let key = |host: &str, subset: Option<&str>, port| ClusterKey {
        host: shunt_mesh::routing::Host(Arc::from(host)),
        subset: subset.map(Arc::from),
        port,
    };
    let cases = [
        (
            key("cart.shop.svc.cluster.local", Some("v1"), 8080),
            "outbound|8080|v1|cart.shop.svc.cluster.local",
        ),
        (
            key("cart.shop.svc.cluster.local", None, 80),
            "outbound|80||cart.shop.svc.cluster.local",
        ),
        (inbound_cluster_key(9080), "inbound|9080||"),
    ];
    for (key, expected) in cases {
        assert_eq!(cluster_name(&key), expected);
    }
}
