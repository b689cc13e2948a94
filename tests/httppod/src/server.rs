//! `serve`: one HTTP/1.1 + h2c server (and optionally a gRPC Health server) whose answers name
//! the pod and whose behaviour each request chooses by header, so one server serves every L7
//! case. What it saw is kept for `GET /count`, which is answered but never counted.
//!
//! With `--tls-port` the same server also answers over TLS (ALPN `h2` and `http/1.1`): an
//! "external" HTTPS service for the TLS origination tests; each request it records says the
//! SNI and ALPN its connection was made with (`tls`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The gRPC service name the Health server reports SERVING.
pub const GRPC_SERVICE: &str = "shunt.test";
/// The response header naming the pod that answered.
pub const SERVED_BY: &str = "x-served-by";
/// Requests kept for `/count` (the totals keep counting past it).
const MAX_RECORDED: usize = 20_000;
/// A request body larger than this is refused (413): the tests send at most a few KiB.
const MAX_BODY_BYTES: usize = 16 << 20;
/// The longest `x-delay-ms` honoured, so a typo cannot hang a test.
const MAX_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The HTTP/1.1 and h2c (prior knowledge) port.
    #[arg(long)]
    pub port: u16,
    /// Reported in `x-served-by` and in every body.
    #[arg(long, default_value = "httppod")]
    pub name: String,
    /// Also serve grpc.health.v1.Health here (`shunt.test` is SERVING).
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Accept WebSocket upgrades on `/ws` and echo every message.
    #[arg(long)]
    pub ws: bool,
    /// The status answered when the request does not choose one (e.g. 500 for an endpoint
    /// outlier detection must eject).
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// Added before every answer unless the request sets `x-delay-ms` (a slow endpoint).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Also serve HTTPS here (HTTP/1.1 and h2 by ALPN), with `--tls-cert` and `--tls-key`.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_port: Option<u16>,
    /// The PEM certificate chain HTTPS presents.
    #[arg(long, requires = "tls_port")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_port")]
    pub tls_key: Option<PathBuf>,
}

/// What the server has seen.
#[derive(Default)]
struct Seen {
    total: u64,
    grpc_calls: u64,
    requests: Vec<Value>,
    /// Requests seen per `x-fail-pattern` value.
    fail_patterns: HashMap<String, u64>,
}

struct Server {
    name: String,
    default_status: StatusCode,
    default_delay: Duration,
    websocket: bool,
    seen: Mutex<Seen>,
}

impl Server {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        // A handler that panicked mid-update leaves counts that are still the best we have.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, entry: Value) {
        let mut seen = self.seen();
        seen.total += 1;
        if seen.requests.len() < MAX_RECORDED {
            seen.requests.push(entry);
        }
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let default_status = StatusCode::from_u16(args.status)
        .with_context(|| format!("--status {} is not an HTTP status", args.status))?;
    let server = Arc::new(Server {
        name: args.name,
        default_status,
        default_delay: Duration::from_millis(args.delay_ms).min(MAX_DELAY),
        websocket: args.ws,
        seen: Mutex::new(Seen::default()),
    });
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port))
        .await
        .with_context(|| format!("binding the HTTP port {}", args.port))?;
    let grpc = match args.grpc_port {
        Some(port) => Some(
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .await
                .with_context(|| format!("binding the gRPC port {port}"))?,
        ),
        None => None,
    };
    let grpc_task = grpc.map(|listener| tokio::spawn(serve_grpc(listener, Arc::clone(&server))));
    let https_task = match (args.tls_port, &args.tls_cert, &args.tls_key) {
        (Some(port), Some(cert), Some(key)) => {
            let acceptor = tls_acceptor(cert, key)?;
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .await
                .with_context(|| format!("binding the HTTPS port {port}"))?;
            Some(tokio::spawn(serve_https(
                listener,
                acceptor,
                Arc::clone(&server),
            )))
        }
        _ => None,
    };
    // The harness starts clients once it reads this line.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    drop(stdout);

    let http = serve_http(listener, server);
    let grpc = async {
        match grpc_task {
            Some(grpc) => joined(grpc.await, "the gRPC server task"),
            None => std::future::pending().await,
        }
    };
    let https = async {
        match https_task {
            Some(https) => joined(https.await, "the HTTPS server task"),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = http => result,
        result = grpc => result,
        result = https => result,
    }
}

fn joined(joined: Result<Result<()>, tokio::task::JoinError>, what: &str) -> Result<()> {
    joined.with_context(|| what.to_owned())?
}

/// The HTTPS listener's TLS: ring, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading --tls-cert {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading --tls-key {}", key.display()))?;
    #[expect(
        deprecated,
        reason = "rustls deprecates ring's provider for lacking post-quantum key exchange; ring \
                  is the provider shunt builds with"
    )]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve_http(listener: TcpListener, server: Arc<Server>) -> Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.context("accepting")?;
        tokio::spawn(serve_connection(stream, Arc::clone(&server), peer, None));
    }
}

async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    server: Arc<Server>,
) -> Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.context("accepting over TLS")?;
        let (acceptor, server) = (acceptor.clone(), Arc::clone(&server));
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    eprintln!("TLS handshake from {peer}: {e}");
                    return;
                }
            };
            let (_, connection) = stream.get_ref();
            let tls = json!({
                "sni": connection.server_name(),
                "alpn": connection.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
            });
            serve_connection(stream, server, peer, Some(Arc::new(tls))).await;
        });
    }
}

/// One connection's requests; `tls` is what its handshake said, for the record.
async fn serve_connection<S>(
    stream: S,
    server: Arc<Server>,
    peer: SocketAddr,
    tls: Option<Arc<Value>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        service_fn(move |request| handle(Arc::clone(&server), peer, tls.clone(), request));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        eprintln!("connection from {peer}: {e}");
    }
}

async fn serve_grpc(listener: TcpListener, server: Arc<Server>) -> Result<()> {
    let reporter = HealthReporter::new();
    reporter
        .set_service_status(GRPC_SERVICE, ServingStatus::Serving)
        .await;
    let counted = move |request: tonic::Request<()>| {
        let mut seen = server.seen();
        seen.grpc_calls += 1;
        if seen.requests.len() < MAX_RECORDED {
            let headers = headers_json(&request.metadata().clone().into_headers());
            seen.requests
                .push(json!({"grpc": true, "headers": headers}));
        }
        Ok(request)
    };
    let health =
        HealthServer::with_interceptor(HealthService::from_health_reporter(reporter), counted);
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
        .context("the gRPC server")
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    server: Arc<Server>,
    peer: SocketAddr,
    tls: Option<Arc<Value>>,
    mut request: Request<Incoming>,
) -> Result<Reply, Infallible> {
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_owned(), ToString::to_string);
    if request.uri().path() == "/count" {
        return Ok(count(&server, request.uri().query().unwrap_or("")));
    }
    let headers = headers_json(request.headers());
    let authority = request
        .uri()
        .authority()
        .map(ToString::to_string)
        .or_else(|| header_text(request.headers(), "host"));
    let method = request.method().to_string();
    let entry = json!({
        "method": method,
        "path": path,
        "authority": authority,
        "peer": peer.to_string(),
        "version": format!("{:?}", request.version()),
        "headers": headers,
        "tls": tls.as_deref(),
    });
    server.record(entry);

    if request.uri().path() == "/ws" && server.websocket && is_websocket_upgrade(&request) {
        return Ok(upgrade_to_websocket(&server, &mut request));
    }

    let fail_key = header_text(request.headers(), "x-fail-key").unwrap_or_default();
    let fail = header_text(request.headers(), "x-fail-pattern")
        .is_some_and(|pattern| fails_this_time(&server, &pattern, &fail_key));
    let status = if fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        header_text(request.headers(), "x-status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(server.default_status)
    };
    let delay = header_text(request.headers(), "x-delay-ms")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(server.default_delay, |ms| {
            Duration::from_millis(ms).min(MAX_DELAY)
        });
    let request_cookie_to_set = request.headers().get("x-set-cookie").cloned();
    let body_bytes = match read_body(request.into_body()).await {
        Ok(bytes) => bytes,
        Err(message) => {
            return Ok(json_reply(
                &server,
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": message}),
            ));
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let body = json!({
        "name": server.name,
        "method": method,
        "path": path,
        "authority": authority,
        "headers": headers,
        "body_bytes": body_bytes,
        "status": status.as_u16(),
    });
    let mut reply = json_reply(&server, status, &body);
    if let Some(cookie) = request_cookie_to_set {
        reply.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(reply)
}

/// `x-fail-pattern: K/N`: of every N requests carrying this pattern (and `x-fail-key`, which
/// keeps the counts of two cases apart), the first K fail.
fn fails_this_time(server: &Server, pattern: &str, key: &str) -> bool {
    let Some((fail, every)) = pattern.split_once('/') else {
        return false;
    };
    let (Ok(fail), Ok(every)) = (fail.trim().parse::<u64>(), every.trim().parse::<u64>()) else {
        return false;
    };
    if every == 0 {
        return false;
    }
    let mut seen = server.seen();
    let counter = seen
        .fail_patterns
        .entry(format!("{key}|{pattern}"))
        .or_insert(0);
    let position = *counter % every;
    *counter += 1;
    position < fail
}

async fn read_body(body: Incoming) -> Result<usize, String> {
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes().len()),
        Err(e) => Err(format!("reading the request body: {e}")),
    }
}

/// `GET /count[?prefix=/p][&reset=1]`: totals and the requests seen (those whose path starts
/// with `prefix`, when given); `reset` forgets everything after answering.
fn count(server: &Server, query: &str) -> Reply {
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let prefix = params.get("prefix").copied();
    let mut seen = server.seen();
    let requests: Vec<Value> = seen
        .requests
        .iter()
        .filter(|r| {
            prefix.is_none_or(|p| r["path"].as_str().is_some_and(|path| path.starts_with(p)))
        })
        .cloned()
        .collect();
    let body = json!({
        "name": server.name,
        "total": seen.total,
        "grpc_calls": seen.grpc_calls,
        "matching": requests.len(),
        "requests": requests,
    });
    if params.get("reset") == Some(&"1") {
        *seen = Seen::default();
    }
    drop(seen);
    json_reply(server, StatusCode::OK, &body)
}

fn is_websocket_upgrade(request: &Request<Incoming>) -> bool {
    header_text(request.headers(), "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && request.headers().contains_key("sec-websocket-key")
}

/// Answers 101 and echoes every message on the upgraded connection.
fn upgrade_to_websocket(server: &Server, request: &mut Request<Incoming>) -> Reply {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        return json_reply(
            server,
            StatusCode::BAD_REQUEST,
            &json!({"error": "no sec-websocket-key"}),
        );
    };
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                eprintln!("websocket upgrade: {e}");
                return;
            }
        };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(message) = socket.next().await {
            match message {
                Ok(message) if message.is_text() || message.is_binary() => {
                    if let Err(e) = socket.send(message).await {
                        eprintln!("websocket echo: {e}");
                        return;
                    }
                }
                Ok(message) if message.is_close() => return,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("websocket read: {e}");
                    return;
                }
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Ok(name) = header::HeaderValue::from_str(&server.name) {
        headers.insert(SERVED_BY, name);
    }
    response
}

fn json_reply(server: &Server, status: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Ok(name) = header::HeaderValue::from_str(&server.name) {
        headers.insert(SERVED_BY, name);
    }
    response
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Every header, repeated ones joined with ", ".
pub fn headers_json(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    out
}
