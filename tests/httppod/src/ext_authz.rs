//! `ext-authz`: an HTTP ext_authz service as Istio's sample (`samples/extauthz`) answers, for
//! the AuthorizationPolicy `CUSTOM` tests.
//!
//! - `x-ext-authz: allow`: 200, with `x-ext-authz-check-result: allowed`.
//! - `x-ext-authz: error`: 500 (an authorizer failing, for `failOpen`).
//! - anything else: `--deny-status` (403), `x-ext-authz-check-result: denied` and the body
//!   ``denied by ext_authz for not found header `x-ext-authz: allow` in the request``.
//!
//! Every answer also carries `x-ext-authz-check-received` (what the check request was, as
//! one JSON object: method, path, host, headers) and echoes
//! `x-ext-authz-additional-header-override`, as the sample does, so a test sees both through
//! `headersToUpstreamOnAllow` / `headersToDownstreamOnDeny`. `x-ext-authz-delay-ms: D` (or
//! `--delay-ms`) answers D ms late, for the provider's `timeout`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::server::headers_json;

/// The header a request is allowed by.
pub const CHECK_HEADER: &str = "x-ext-authz";
/// Its value that allows.
pub const ALLOWED_VALUE: &str = "allow";
/// Its value that makes the service fail (500).
pub const ERROR_VALUE: &str = "error";
/// `allowed` or `denied`.
pub const RESULT_HEADER: &str = "x-ext-authz-check-result";
/// What the check request was, as JSON.
pub const RECEIVED_HEADER: &str = "x-ext-authz-check-received";
/// Echoed from the check request, as the sample does.
pub const OVERRIDE_HEADER: &str = "x-ext-authz-additional-header-override";
/// Answer this many milliseconds late.
pub const DELAY_HEADER: &str = "x-ext-authz-delay-ms";
/// The body of a denial, the sample's.
pub const DENY_BODY: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";
/// The longest delay honoured, so a typo cannot hang a test.
const MAX_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct ExtAuthzArgs {
    /// The HTTP/1.1 and h2c port.
    #[arg(long)]
    pub port: u16,
    /// Added before every answer unless the check sets `x-ext-authz-delay-ms`.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// The status of a denial.
    #[arg(long, default_value_t = 403)]
    pub deny_status: u16,
}

struct Authorizer {
    delay: Duration,
    deny_status: StatusCode,
}

pub async fn run(args: ExtAuthzArgs) -> Result<()> {
    let deny_status = StatusCode::from_u16(args.deny_status)
        .with_context(|| format!("--deny-status {} is not an HTTP status", args.deny_status))?;
    let authorizer = Arc::new(Authorizer {
        delay: Duration::from_millis(args.delay_ms).min(MAX_DELAY),
        deny_status,
    });
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port))
        .await
        .with_context(|| format!("binding the ext_authz port {}", args.port))?;
    // The harness starts clients once it reads this line.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    drop(stdout);
    serve(listener, authorizer).await
}

async fn serve(listener: TcpListener, authorizer: Arc<Authorizer>) -> Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.context("accepting")?;
        let authorizer = Arc::clone(&authorizer);
        tokio::spawn(async move {
            let service = service_fn(move |request| check(Arc::clone(&authorizer), peer, request));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("ext_authz connection from {peer}: {e}");
            }
        });
    }
}

async fn check(
    authorizer: Arc<Authorizer>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    // The sample reads the body (a check carries none unless configured to).
    let body_bytes = body
        .collect()
        .await
        .map(|collected| collected.to_bytes().len())
        .unwrap_or_default();
    let text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let host = parts
        .uri
        .authority()
        .map(ToString::to_string)
        .or_else(|| text("host"));
    let received = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(ToString::to_string),
        "host": host,
        "headers": headers_json(&parts.headers),
        "body_bytes": body_bytes,
        "peer": peer.to_string(),
    });
    let delay = text(DELAY_HEADER)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(authorizer.delay, |ms| {
            Duration::from_millis(ms).min(MAX_DELAY)
        });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let verdict = text(CHECK_HEADER);
    let (status, result, body) = match verdict.as_deref() {
        Some(ALLOWED_VALUE) => (StatusCode::OK, "allowed", ""),
        Some(ERROR_VALUE) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "ext_authz failed",
        ),
        _ => (authorizer.deny_status, "denied", DENY_BODY),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(RESULT_HEADER, HeaderValue::from_static(result));
    if let Some(value) = header_value(&received.to_string()) {
        headers.insert(RECEIVED_HEADER, value);
    }
    if let Some(value) = parts.headers.get(OVERRIDE_HEADER) {
        headers.insert(OVERRIDE_HEADER, value.clone());
    }
    if !body.is_empty() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    // One line per check on stderr (stdout carries only `ready`), as the sample logs.
    eprintln!("[HTTP][{result}]: {received}");
    Ok(response)
}

/// A header value from any text: bytes a header value may not hold become `?`.
fn header_value(text: &str) -> Option<HeaderValue> {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&cleaned).ok()
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use http_body_util::Empty;
    use hyper::client::conn::http1;
    use tokio::net::TcpStream;

    use super::*;

    async fn ask(addr: SocketAddr, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method("POST")
            .uri("/check/admin?x=1")
            .header("host", "httpbin.foo:8000")
            .header("content-length", "0");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn answers_as_istios_sample_does() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let authorizer = Arc::new(Authorizer {
            delay: Duration::ZERO,
            deny_status: StatusCode::FORBIDDEN,
        });
        tokio::spawn(serve(listener, authorizer));
        // the check header, status, result, body
        let cases = [
            (Some("allow"), 200, "allowed", ""),
            (Some("error"), 500, "error", "ext_authz failed"),
            (Some("deny"), 403, "denied", DENY_BODY),
            (None, 403, "denied", DENY_BODY),
        ];
        for (verdict, status, result, body) in cases {
            let mut headers = vec![(OVERRIDE_HEADER, "over")];
            if let Some(verdict) = verdict {
                headers.push((CHECK_HEADER, verdict));
            }
            let (got_status, got_headers, got_body) = ask(addr, &headers).await;
            assert_eq!(got_status.as_u16(), status, "{verdict:?}");
            assert_eq!(got_headers[RESULT_HEADER], result, "{verdict:?}");
            assert_eq!(got_headers[OVERRIDE_HEADER], "over", "{verdict:?}");
            assert_eq!(got_body, body, "{verdict:?}");
            let received: serde_json::Value =
                serde_json::from_str(got_headers[RECEIVED_HEADER].to_str().unwrap()).unwrap();
            assert_eq!(received["method"], "POST");
            assert_eq!(received["path"], "/check/admin?x=1");
            assert_eq!(received["host"], "httpbin.foo:8000");
            assert_eq!(received["headers"][CHECK_HEADER], json!(verdict));
        }
    }
}
