//! The client: one TCP connection to an HBONE listener, the mTLS handshake as the flags say,
//! then HTTP/2 and one `CONNECT` per `--authority`, in order, on that one connection. A
//! stream answered 200 carries `--send-bytes` bytes, half-closed, and must echo them back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use serde::Serialize;
use shunt_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::certs::{self, CertKind};
use crate::tls::{self, Ciphers, ClientOptions, Negotiated, Versions};

/// HBONE's stream window (ztunnel's), so a large echo never waits on flow control.
const WINDOW: u32 = 4 * 1024 * 1024;

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The HBONE listener: `<pod IP>:15008`.
    #[arg(long)]
    to: SocketAddr,
    /// The cluster's root: a folder with `root-cert.pem` (trusted) and `root-key.pem` (to mint
    /// with), as the CA's `<state dir>/self-signed`.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The identity the client certificate names.
    #[arg(long)]
    identity: Option<SpiffeId>,
    /// Which client certificate to present.
    #[arg(long, value_enum, default_value = "cluster")]
    cert: CertKind,
    /// The TLS versions to offer.
    #[arg(long, value_enum, default_value = "1.3")]
    tls: Versions,
    /// The cipher suites to offer.
    #[arg(long, value_enum, default_value = "default")]
    ciphers: Ciphers,
    /// An ALPN protocol to offer (repeatable).
    #[arg(long, default_value = "h2")]
    alpn: Vec<String>,
    /// Abort unless the server's certificate names this identity (else any is accepted; the
    /// chain is verified either way).
    #[arg(long)]
    expect_server: Option<SpiffeId>,
    /// A `CONNECT`'s `:authority` (repeatable: one stream each, in order).
    #[arg(long = "authority")]
    authorities: Vec<String>,
    /// A header of every `CONNECT`, `NAME: VALUE` (repeatable): `forwarded`, `baggage`, or
    /// anything a peer might make up.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// What a stream answered 200 sends, to be echoed.
    #[arg(long, default_value_t = 65_536)]
    send_bytes: usize,
    /// Upper bound for each step (connect, handshake, each stream).
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

/// The client's report: how far it got, and what each side said.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The step that failed (`tcp`, `tls`, `h2`), `null` when none did. `tls` includes the
    /// server refusing the client's certificate, which TLS 1.3 tells only after the client's
    /// side of the handshake is done.
    pub failed: Option<&'static str>,
    /// Its error, as rustls or h2 put it (`received fatal alert: CertificateRequired`).
    pub error: Option<String>,
    /// The identity the server's certificate named, whether or not it was accepted.
    pub server_identity: Option<String>,
    /// What the handshake negotiated, when it finished.
    pub tls: Option<Negotiated>,
    pub streams: Vec<StreamReport>,
}

/// One `CONNECT`.
#[derive(Debug, Default, Serialize)]
pub struct StreamReport {
    pub authority: String,
    /// The response status, when there was one.
    pub status: Option<u16>,
    pub sent: usize,
    pub echoed: usize,
    /// Whether the echo was byte for byte what was sent (false when nothing was sent).
    pub echo_ok: bool,
    pub error: Option<String>,
}

pub async fn run(args: ClientArgs) -> Result<Report> {
    let roots = certs::cluster_roots(&args.ca_dir)?;
    let cert = match (&args.identity, args.cert) {
        (_, CertKind::None) => None,
        (Some(identity), kind) => certs::mint(kind, &args.ca_dir, identity).await?,
        (None, kind) => bail!("--cert {kind:?} needs --identity"),
    };
    let (config, seen) = tls::client_config(ClientOptions {
        versions: args.tls,
        ciphers: args.ciphers,
        alpn: args.alpn.clone(),
        cert,
        expect_server: args.expect_server.clone(),
        roots,
    })?;
    let mut report = Report::default();
    if let Err((step, error)) = exchange(&args, config, &mut report).await {
        report.failed = Some(step);
        report.error = Some(error);
    }
    report.server_identity = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(report)
}

/// A failed step and its error.
type Failure = (&'static str, String);

async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    step: &'static str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err((step, error.to_string())),
        Err(_) => Err((step, format!("timed out after {limit:?}"))),
    }
}

async fn exchange(
    args: &ClientArgs,
    config: rustls::ClientConfig,
    report: &mut Report,
) -> Result<(), Failure> {
    let limit = Duration::from_secs(args.timeout_secs);
    let tcp = within(limit, "tcp", TcpStream::connect(args.to)).await?;
    // No SNI is sent (the config says so); the name only feeds a verifier that ignores it.
    let name = ServerName::IpAddress(args.to.ip().into());
    let mut tls = within(
        limit,
        "tls",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await?;
    report.tls = Some(Negotiated::of(tls.get_ref().1));
    // In TLS 1.3 the server judges the client's certificate after the client has finished:
    // its verdict is the first thing it sends, an alert or its HTTP/2 SETTINGS (an h2 server
    // speaks first). Read that much here, so a refusal is the handshake's failure.
    let mut first = vec![0u8; 16 * 1024];
    let read = within(limit, "tls", tls.read(&mut first)).await?;
    if read == 0 {
        return Err(("tls", "the server closed without a word".to_owned()));
    }
    first.truncate(read);
    let io = Rewound {
        prefix: Bytes::from(first),
        io: tls,
    };
    let (sender, connection) = within(
        limit,
        "h2",
        h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .enable_push(false)
            .handshake::<_, Bytes>(io),
    )
    .await?;
    let driver = tokio::spawn(connection);
    for authority in &args.authorities {
        report
            .streams
            .push(stream(&sender, authority, args, limit).await);
    }
    drop(sender);
    driver.abort();
    Ok(())
}

async fn stream(
    sender: &SendRequest<Bytes>,
    authority: &str,
    args: &ClientArgs,
    limit: Duration,
) -> StreamReport {
    let mut report = StreamReport {
        authority: authority.to_owned(),
        ..StreamReport::default()
    };
    if let Err(error) = tokio::time::timeout(
        limit,
        connect_and_echo(sender, authority, args, &mut report),
    )
    .await
    .unwrap_or_else(|_| Err(anyhow!("timed out after {limit:?}")))
    {
        report.error = Some(format!("{error:#}"));
    }
    report
}

async fn connect_and_echo(
    sender: &SendRequest<Bytes>,
    authority: &str,
    args: &ClientArgs,
    report: &mut StreamReport,
) -> Result<()> {
    let send_bytes = args.send_bytes;
    let request = args
        .headers
        .iter()
        .fold(
            Request::builder().method(Method::CONNECT).uri(authority),
            |request, (name, value)| request.header(name, value),
        )
        .body(())
        .with_context(|| format!("a CONNECT to {authority:?}"))?;
    let mut sender = sender.clone().ready().await.context("the connection")?;
    let (response, mut send) = sender
        .send_request(request, false)
        .context("sending the CONNECT")?;
    let response = response.await.context("the CONNECT's response")?;
    report.status = Some(response.status().as_u16());
    if response.status() != StatusCode::OK {
        return Ok(());
    }
    let payload = pattern(send_bytes);
    let mut body = response.into_body();
    let receive = async {
        let mut echoed = Vec::with_capacity(send_bytes);
        while let Some(chunk) = body.data().await {
            let chunk = chunk.context("reading the echo")?;
            body.flow_control()
                .release_capacity(chunk.len())
                .context("releasing the window")?;
            echoed.extend_from_slice(&chunk);
        }
        anyhow::Ok(echoed)
    };
    let (sent, echoed) = tokio::join!(send_all(&mut send, payload.clone(), true), receive);
    sent?;
    report.sent = payload.len();
    let echoed = echoed?;
    report.echoed = echoed.len();
    report.echo_ok = !payload.is_empty() && echoed == payload[..];
    Ok(())
}

/// `NAME: VALUE` as a header.
fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("--header {text:?} is not NAME: VALUE"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// Sends `data` as flow control allows; then, with `end`, ends the stream (the tunnel's
/// half-close).
pub async fn send_all(send: &mut h2::SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .ok_or_else(|| anyhow!("the stream closed while sending"))?
            .context("waiting for send capacity")?;
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, false).context("sending")?;
    }
    if end {
        send.send_data(Bytes::new(), true)
            .context("ending the stream")?;
    }
    Ok(())
}

/// `len` bytes that are not all alike, so a reordering or a shift shows.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(i >> 8)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewound<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewound<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewound<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
