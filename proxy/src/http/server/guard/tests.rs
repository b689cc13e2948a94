use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;

fn guarded(limits: &HttpLimits) -> (Guarded<DuplexStream>, DuplexStream, Arc<StreamWatch>) {
    let (server, client) = duplex(64 * 1024);
    let watch = Arc::new(StreamWatch::default());
    let guarded = Guarded::new(
        server,
        watch.clone(),
        Arc::new(Metrics::new()),
        limits,
        Box::new(|_, _| {}),
    );
    (guarded, client, watch)
}

/// What the client reads until the server side closes.
async fn answer(client: &mut DuplexStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn refused_heads_are_answered_and_never_reach_hyper() {
    let limits = HttpLimits {
        max_request_headers_bytes: 100,
        ..HttpLimits::default()
    };
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(200));
    let cases: &[(&[u8], &str)] = &[
        (
            b"POST / HTTP/1.1\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nG",
            "HTTP/1.1 400 ",
        ),
        (long_line.as_bytes(), "HTTP/1.1 414 "),
    ];
    for (head, status) in cases {
        let (mut guarded, mut client, _) = guarded(&limits);
        client.write_all(head).await.unwrap();
        let mut seen = vec![0; 1024];
        let read = guarded.read(&mut seen).await;
        assert!(read.is_err(), "{read:?}");
        drop(guarded);
        let answer = answer(&mut client).await;
        assert!(answer.starts_with(status), "{answer}");
    }
}

#[tokio::test]
async fn a_good_head_passes_whole_then_the_body_is_not_judged() {
    let (mut guarded, mut client, watch) = guarded(&HttpLimits::default());
    let request = b"POST / HTTP/1.1\r\ncontent-length: 40\r\n\r\n";
    client.write_all(request).await.unwrap();
    let mut seen = vec![0; 1024];
    let n = guarded.read(&mut seen).await.unwrap();
    assert_eq!(&seen[..n], request);
    let _in_flight = watch.dispatch();
    // A body that would be refused as a head.
    let body = b"content-length: 1\r\ncontent-length: 2\r\n\r\n";
    client.write_all(body).await.unwrap();
    let n = guarded.read(&mut seen).await.unwrap();
    assert_eq!(&seen[..n], body);
}

#[tokio::test(start_paused = true)]
async fn a_slow_head_gets_408_at_its_deadline_and_an_idle_connection_none() {
    let limits = HttpLimits {
        request_headers_timeout: Some(Duration::from_secs(2)),
        ..HttpLimits::default()
    };
    let (mut guarded, mut client, _) = guarded(&limits);
    let reader = tokio::spawn(async move {
        let mut seen = vec![0; 1024];
        loop {
            match guarded.read(&mut seen).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    });
    // Idle for longer than the head timeout: nothing happens before a head begins.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!reader.is_finished());
    for byte in b"GET / HTTP/1.1\r\nhost: a" {
        if client.write_all(std::slice::from_ref(byte)).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the slow head is cut")
        .unwrap();
    assert!(ended.is_err_and(|e| e.contains("request_header_timeout")));
    let answer = answer(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
}

#[tokio::test]
async fn an_h2_servers_refusal_frames_are_counted_even_split_across_writes() {
    let (server, mut client) = duplex(64 * 1024);
    let metrics = Arc::new(Metrics::new());
    let mut guarded = Guarded::new(
        server,
        Arc::new(StreamWatch::default()),
        metrics.clone(),
        &HttpLimits::default(),
        Box::new(|_, _| {}),
    );
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut seen = vec![0; 24];
    guarded.read_exact(&mut seen).await.unwrap();
    // SETTINGS, then RST_STREAM(REFUSED_STREAM) on stream 201 cut in two writes.
    let rst = [0, 0, 4, 3, 0, 0, 0, 0, 201, 0, 0, 0, 7];
    guarded
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    guarded.write_all(&rst[..5]).await.unwrap();
    guarded.write_all(&rst[5..]).await.unwrap();
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"shunt_http_limit_rejections_total{limit="max_concurrent_streams"} 1"#),
        "{text}"
    );
}
