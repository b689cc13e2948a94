//! The server: a stand-in HBONE listener (instead of a node proxy's) that presents a
//! certificate for whatever identity it is told, records what each client offered and
//! proved, and answers every `CONNECT` with 200 and an echo of the tunnelled bytes.
//!
//! One JSON line per event on stdout, each with `"event"` and the client's `"peer"` address:
//! - `client_hello`: `sni`, `alpn` (offered), `cipher_suites` (offered, rustls' names);
//! - `handshake`: `ok`, and `error` or what was negotiated (`version`, `cipher_suite`,
//!   `alpn`, the client's `peer_identity`);
//! - `connect`: `method`, `authority`, the `forwarded` and `baggage` headers;
//! - `stream_end`: `authority`, `echoed` bytes, `error`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use shunt_identity::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::certs::{self, CertKind};
use crate::client::send_all;
use crate::tls::{self, Negotiated};

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Where to listen: `<pod IP>:15008` in the pod's netns.
    #[arg(long)]
    listen: SocketAddr,
    /// The cluster's root (`root-cert.pem`, `root-key.pem`, as the CA's
    /// `<state dir>/self-signed`): the certificate is minted from it, and clients must chain
    /// to it.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The identity of the certificate presented.
    #[arg(long)]
    identity: SpiffeId,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let roots = certs::cluster_roots(&args.ca_dir)?;
    let cert = certs::mint(CertKind::Cluster, &args.ca_dir, &args.identity)
        .await?
        .context("a server certificate")?;
    let config = Arc::new(tls::server_config(&cert, &roots)?);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let (events, mut printed) = tokio::sync::mpsc::unbounded_channel::<Value>();
    // Rust's stdout is line-buffered, even into a file: each line is out when printed, and
    // one task prints them all, so lines never interleave.
    println!("ready");
    tokio::spawn(async move {
        while let Some(line) = printed.recv().await {
            println!("{line}");
        }
    });
    loop {
        let (tcp, peer) = listener.accept().await.context("accepting")?;
        tokio::spawn(connection(tcp, peer, config.clone(), events.clone()));
    }
}

/// Where a connection's events go: stdout, or a test.
pub type Events = tokio::sync::mpsc::UnboundedSender<Value>;

/// One event: `fields` with its name and the client's address.
fn event(events: &Events, peer: SocketAddr, name: &str, mut fields: Value) {
    if let Value::Object(map) = &mut fields {
        map.insert("event".to_owned(), name.into());
        map.insert("peer".to_owned(), peer.to_string().into());
    }
    // Gone only when the process is going too.
    let _unread = events.send(fields);
}

/// Serves one accepted connection with `config`, reporting to `events`.
pub async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    events: Events,
) {
    let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await {
        Ok(start) => start,
        Err(error) => {
            event(
                &events,
                peer,
                "client_hello",
                json!({"error": error.to_string()}),
            );
            return;
        }
    };
    let hello = start.client_hello();
    let alpn: Option<Vec<String>> = hello.alpn().map(|protocols| {
        protocols
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    });
    let suites: Vec<String> = hello
        .cipher_suites()
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    event(
        &events,
        peer,
        "client_hello",
        json!({"sni": hello.server_name(), "alpn": alpn, "cipher_suites": suites}),
    );
    let tls = match start.into_stream(config).await {
        Ok(tls) => tls,
        Err(error) => {
            event(
                &events,
                peer,
                "handshake",
                json!({"ok": false, "error": error.to_string()}),
            );
            return;
        }
    };
    let negotiated = Negotiated::of(tls.get_ref().1);
    event(
        &events,
        peer,
        "handshake",
        json!({"ok": true, "negotiated": negotiated}),
    );
    let mut h2 = match h2::server::Builder::new()
        .initial_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024)
        .handshake::<_, Bytes>(tls)
        .await
    {
        Ok(h2) => h2,
        Err(error) => {
            event(&events, peer, "h2", json!({"error": error.to_string()}));
            return;
        }
    };
    while let Some(accepted) = h2.accept().await {
        match accepted {
            Ok((request, respond)) => {
                tokio::spawn(stream(events.clone(), peer, request, respond));
            }
            Err(error) => {
                event(&events, peer, "h2", json!({"error": error.to_string()}));
                return;
            }
        }
    }
}

async fn stream(
    events: Events,
    peer: SocketAddr,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    event(
        &events,
        peer,
        "connect",
        json!({
            "method": request.method().as_str(),
            "authority": authority,
            "forwarded": header("forwarded"),
            "baggage": header("baggage"),
        }),
    );
    let (echoed, error) = match echo(request.into_body(), respond).await {
        Ok(echoed) => (echoed, None),
        Err((echoed, error)) => (echoed, Some(format!("{error:#}"))),
    };
    event(
        &events,
        peer,
        "stream_end",
        json!({"authority": authority, "echoed": echoed, "error": error}),
    );
}

/// Answers 200 and sends back every byte received until the client ends its side; the bytes
/// echoed.
async fn echo(
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
) -> Result<usize, (usize, anyhow::Error)> {
    let mut echoed = 0;
    let fail = |echoed: usize| move |error: anyhow::Error| (echoed, error);
    let response = Response::builder()
        .status(StatusCode::OK)
        .body(())
        .map_err(|e| (0, e.into()))?;
    let mut send = respond
        .send_response(response, false)
        .map_err(|e| (0, e.into()))?;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| (echoed, e.into()))?;
        body.flow_control()
            .release_capacity(chunk.len())
            .map_err(|e| (echoed, e.into()))?;
        let len = chunk.len();
        // Sent without ending the stream: that waits for the client's end.
        send_all(&mut send, chunk, false)
            .await
            .map_err(fail(echoed))?;
        echoed += len;
    }
    send.send_data(Bytes::new(), true)
        .map_err(|e| (echoed, e.into()))?;
    Ok(echoed)
}
