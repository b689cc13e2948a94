//! `max`: the bench's closed-loop HTTP/1.1 max-rps client, over plain TCP or TLS (the
//! std-only `shunt-loadgen http-max` cannot do TLS). Each of `--connections` tasks sends a
//! `GET` and reads the whole answer, then the next, until the run ends; requests completed
//! in the warm-up are counted apart. With `--new-connection` every request has its own
//! connection (and so its own TLS handshake). Prints one JSON line: `requests`, `rps`,
//! `unmeasured_requests`, `connections`, `errors`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Request;
use http::header::{CONNECTION, HOST};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::client::CONNECT_TIMEOUT;

/// At most this many individual errors are listed.
const MAX_LISTED_ERRORS: usize = 10;
/// The longest run the flags may ask for: every load loop is bounded.
const MAX_RUN: Duration = Duration::from_secs(120);
const MAX_CONNECTIONS: usize = 1024;
/// How long one request may take before the run counts it as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct MaxArgs {
    /// Where to connect (IP:PORT).
    #[arg(long)]
    to: SocketAddr,
    /// The requests' `Host` (and, over TLS, the SNI and the name the certificate must have).
    #[arg(long)]
    host: String,
    #[arg(long, default_value = "/bench")]
    path: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long)]
    duration_ms: u64,
    #[arg(long, default_value_t = 0)]
    warmup_ms: u64,
    /// Speak TLS, trusting only this CA (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// One connection per request (`Connection: close`): the handshake rate.
    #[arg(long)]
    new_connection: bool,
}

/// What one connection task did.
#[derive(Default)]
struct Tally {
    measured: u64,
    unmeasured: u64,
    connections: u64,
    errors: Vec<String>,
}

pub async fn run(args: MaxArgs) -> Result<Value> {
    let duration = Duration::from_millis(args.duration_ms);
    let warmup = Duration::from_millis(args.warmup_ms);
    if duration.is_zero() || duration + warmup > MAX_RUN {
        bail!("--duration-ms and --warmup-ms: the run must last between 1 ms and {MAX_RUN:?}");
    }
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        bail!("--connections must be 1 to {MAX_CONNECTIONS}");
    }
    let tls = args
        .tls_ca
        .as_ref()
        .map(|ca| tls_connector(ca, &args.host))
        .transpose()?;
    let args = Arc::new(args);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| {
            let args = Arc::clone(&args);
            let tls = tls.clone();
            tokio::spawn(
                async move { connection_loop(&args, tls.as_ref(), measure_from, end).await },
            )
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.context("a connection task panicked")?;
        total.measured += tally.measured;
        total.unmeasured += tally.unmeasured;
        total.connections += tally.connections;
        for error in tally.errors {
            if total.errors.len() < MAX_LISTED_ERRORS {
                total.errors.push(error);
            }
        }
    }
    let seconds = duration.as_secs_f64();
    Ok(json!({
        "requests": total.measured,
        "rps": total.measured as f64 / seconds,
        "unmeasured_requests": total.unmeasured,
        "connections": total.connections,
        "connections_per_s": if args.new_connection { total.measured as f64 / seconds } else { 0.0 },
        "tls": tls.is_some(),
        "errors": total.errors,
    }))
}

/// Trusts `ca` only; the SNI is `host` without a port.
fn tls_connector(ca: &PathBuf, host: &str) -> Result<(TlsConnector, ServerName<'static>)> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("--tls-ca {}: cannot read it", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("--tls-ca {}: not PEM", ca.display()))?)
            .with_context(|| format!("--tls-ca {}: not a usable CA", ca.display()))?;
    }
    #[expect(deprecated, reason = "ring is the provider shunt builds with")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let name = ServerName::try_from(name.to_owned())
        .with_context(|| format!("--host {host}: not a server name"))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// One connection's closed loop until `end`; reconnects when the connection closes (always,
/// with `--new-connection`).
async fn connection_loop(
    args: &MaxArgs,
    tls: Option<&(TlsConnector, ServerName<'static>)>,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < end {
        let sender = match dial(args, tls).await {
            Ok(sender) => sender,
            Err(e) => {
                tally.errors.push(format!("{e:#}"));
                return tally;
            }
        };
        tally.connections += 1;
        let mut sender = sender;
        loop {
            if Instant::now() >= end {
                return tally;
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, one_request(args, &mut sender)).await {
                Ok(Ok(())) => {
                    if Instant::now() >= measure_from && Instant::now() < end {
                        tally.measured += 1;
                    } else {
                        tally.unmeasured += 1;
                    }
                }
                Ok(Err(e)) => {
                    tally.errors.push(format!("{e:#}"));
                    return tally;
                }
                Err(_) => {
                    tally
                        .errors
                        .push(format!("a request took over {REQUEST_TIMEOUT:?}"));
                    return tally;
                }
            }
            if args.new_connection || sender.is_closed() {
                break;
            }
        }
    }
    tally
}

async fn dial(
    args: &MaxArgs,
    tls: Option<&(TlsConnector, ServerName<'static>)>,
) -> Result<http1::SendRequest<Empty<Bytes>>> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(args.to))
        .await
        .with_context(|| format!("connect to {} timed out", args.to))?
        .with_context(|| format!("connect to {}", args.to))?;
    tcp.set_nodelay(true)?;
    match tls {
        Some((connector, name)) => {
            let stream = connector
                .connect(name.clone(), tcp)
                .await
                .with_context(|| format!("TLS handshake with {}", args.to))?;
            handshake(stream).await
        }
        None => handshake(tcp).await,
    }
}

async fn handshake<S>(stream: S) -> Result<http1::SendRequest<Empty<Bytes>>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn one_request(args: &MaxArgs, sender: &mut http1::SendRequest<Empty<Bytes>>) -> Result<()> {
    let mut request = Request::get(args.path.as_str()).header(HOST, args.host.as_str());
    if args.new_connection {
        request = request.header(CONNECTION, "close");
    }
    let request = request.body(Empty::new()).context("building the request")?;
    sender.ready().await.context("the connection closed")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .context("reading the body")?;
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    Ok(())
}
