//! The pool and the stream over in-memory HTTP/2 (no TLS: the pool only needs a byte stream).

use std::sync::atomic::AtomicUsize;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::hbone::server::{self, Incoming};

fn key() -> PoolKey {
    PoolKey {
        source_identity: "spiffe://cluster.local/ns/a/sa/a".into(),
        destination_identity: "spiffe://cluster.local/ns/b/sa/b".into(),
        source_ip: Ipv4Addr::new(10, 244, 0, 10),
        destination_ip: Ipv4Addr::new(10, 244, 1, 10),
    }
}

fn request() -> ConnectRequest {
    ConnectRequest {
        authority: "10.244.1.10:8080".parse().unwrap(),
        client: "10.244.0.10:40000".parse().unwrap(),
        service_host: Some("b.ns.svc.cluster.local".into()),
        baggage: "k8s.namespace.name=a".into(),
        traceparent: None,
    }
}

/// A server that echoes every accepted stream, or refuses with `refuse`.
fn serve(io: DuplexStream, settings: Settings, refuse: Option<StatusCode>) {
    tokio::spawn(async move {
        let metrics = HboneMetrics::default();
        let _ = server::serve(
            io,
            settings,
            &metrics,
            std::future::pending(),
            move |incoming: Incoming| async move {
                if let Some(status) = refuse {
                    incoming.refuse(status);
                    return;
                }
                assert_eq!(incoming.target(), Ok("10.244.1.10:8080".parse().unwrap()));
                assert_eq!(
                    incoming.header("forwarded"),
                    Some("for=\"10.244.0.10:40000\";host=b.ns.svc.cluster.local")
                );
                let mut stream = incoming.accept().unwrap();
                let mut buf = Vec::new();
                stream.read_to_end(&mut buf).await.unwrap();
                stream.write_all(&buf).await.unwrap();
                stream.shutdown().await.unwrap();
            },
        )
        .await;
    });
}

#[tokio::test]
async fn streams_echo_and_share_one_connection() {
    let pool = Pool::new(Arc::default());
    let dials = Arc::new(AtomicUsize::new(0));
    for round in 0..3u8 {
        let dials = dials.clone();
        let mut stream = pool
            .connect(&key(), &request(), || async move {
                dials.fetch_add(1, Ordering::SeqCst);
                let (client, server) = tokio::io::duplex(1 << 16);
                serve(server, SETTINGS, None);
                Ok(client)
            })
            .await
            .unwrap();
        let payload = vec![round; 200_000];
        stream.write_all(&payload).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, payload);
    }
    assert_eq!(
        dials.load(Ordering::SeqCst),
        1,
        "one connection carries every stream"
    );
    assert_eq!(pool.connection_count(), 1);
}

#[tokio::test]
async fn a_full_connection_opens_another() {
    let settings = Settings {
        max_streams_per_connection: 2,
        ..SETTINGS
    };
    let pool = Pool::with_settings(settings, Arc::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::new();
    for _ in 0..3 {
        let dials = dials.clone();
        held.push(
            pool.connect(&key(), &request(), || async move {
                dials.fetch_add(1, Ordering::SeqCst);
                let (client, server) = tokio::io::duplex(1 << 16);
                serve(server, settings, None);
                Ok(client)
            })
            .await
            .unwrap(),
        );
    }
    assert_eq!(
        dials.load(Ordering::SeqCst),
        2,
        "two streams per connection"
    );
    // A stream that ends frees its place.
    held.pop();
    tokio::task::yield_now().await;
    let dials2 = dials.clone();
    let _again = pool
        .connect(&key(), &request(), || async move {
            dials2.fetch_add(1, Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(1 << 16);
            serve(server, settings, None);
            Ok(client)
        })
        .await
        .unwrap();
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_connect_is_its_status() {
    for status in [
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let metrics = Arc::new(HboneMetrics::default());
        let pool = Pool::new(metrics.clone());
        let error = pool
            .connect(&key(), &request(), || async move {
                let (client, server) = tokio::io::duplex(1 << 16);
                serve(server, SETTINGS, Some(status));
                Ok(client)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(error, HboneError::Status(s) if s == status),
            "{error}"
        );
        assert_eq!(error.reason(), "status");
    }
}

#[tokio::test(start_paused = true)]
async fn an_unused_connection_closes_after_the_idle_timeout() {
    let pool = Pool::new(Arc::default());
    let stream = pool
        .connect(&key(), &request(), || async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            serve(server, SETTINGS, None);
            Ok(client)
        })
        .await
        .unwrap();
    drop(stream);
    tokio::time::sleep(SETTINGS.idle_timeout / 2).await;
    assert_eq!(pool.connection_count(), 1, "still within the idle timeout");
    tokio::time::sleep(SETTINGS.idle_timeout).await;
    assert_eq!(pool.connection_count(), 0);
}
