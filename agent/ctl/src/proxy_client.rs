//! A GET to the proxy's metrics address (`--metrics-addr`), which serves `/debug/clusters`:
//! plain HTTP/1.1 over TCP, no agent involved.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// How long a GET waits for the proxy, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` as JSON, within `TIMEOUT`. The errors name the flag `addr` should be, as a wrong
/// address is the likely mistake.
pub async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    tokio::time::timeout(TIMEOUT, get(addr, path))
        .await
        .with_context(|| {
            format!(
                "the proxy at {addr} did not answer within {TIMEOUT:?} (is {addr} \
                 shunt-proxy's --metrics-addr?)"
            )
        })?
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|error| {
            // The cause goes mid-sentence, before the hint, so it is in the message itself.
            anyhow::anyhow!(
                "no proxy at {addr} ({error}): is shunt-proxy running with --metrics-addr {addr}?"
            )
        })?;
    let failed = |what: String| format!("{what} with the proxy at {addr} failed");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(|| failed("the HTTP handshake".to_owned()))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| failed(format!("GET {path}")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| failed(format!("reading {path}")))?
        .to_bytes();
    drop(sender);
    let _ = driver.await;
    if !status.is_success() {
        anyhow::bail!(
            "the proxy at {addr} answered {status} to GET {path} (a shunt-proxy older than \
             this shuntctl?): {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("{path} from the proxy at {addr} is not JSON"))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves one request on `listener` with `response`, and returns the request's head.
    async fn serve_once(listener: tokio::net::TcpListener, response: String) -> String {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "request cut short");
            request.extend_from_slice(&buf[..n]);
        }
        stream.write_all(response.as_bytes()).await.unwrap();
        String::from_utf8(request).unwrap()
    }

    fn response(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn clusters_are_fetched_over_http_and_a_missing_proxy_names_the_flag() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(serve_once(
            listener,
            response("200 OK", r#"{"shop/idle":{"clusters":{}}}"#),
        ));
        let body = get_json(addr, "/debug/clusters").await.unwrap();
        assert_eq!(body, serde_json::json!({"shop/idle": {"clusters": {}}}));
        let request = served.await.unwrap();
        assert!(
            request.starts_with("GET /debug/clusters HTTP/1.1\r\n"),
            "{request}"
        );

        // Nothing listens there any more.
        let error = get_json(addr, "/debug/clusters").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "no proxy at {addr} (Connection refused (os error 111)): is shunt-proxy \
                 running with --metrics-addr {addr}?"
            )
        );
    }

    #[tokio::test]
    async fn a_refusal_or_a_body_that_is_not_json_is_an_error_with_its_cause() {
        for (status, body, expected) in [
            (
                "404 Not Found",
                "no such page\n",
                "the proxy at ADDR answered 404 Not Found to GET /debug/clusters (a shunt-proxy \
                 older than this shuntctl?): no such page",
            ),
            (
                "200 OK",
                "<html>",
                "/debug/clusters from the proxy at ADDR is not JSON: expected value at line 1 \
                 column 1",
            ),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let served = tokio::spawn(serve_once(listener, response(status, body)));
            let error = get_json(addr, "/debug/clusters").await.unwrap_err();
            served.await.unwrap();
            assert_eq!(
                format!("{error:#}"),
                expected.replace("ADDR", &addr.to_string())
            );
        }
    }
}
