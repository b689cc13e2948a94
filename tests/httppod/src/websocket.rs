//! `ws`: one WebSocket, N text messages, each echo checked.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use http::Uri;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client::CONNECT_TIMEOUT;
use crate::server::SERVED_BY;

/// How long the handshake or one echo may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct WsArgs {
    /// `ws://HOST[:PORT]/PATH`.
    #[arg(long)]
    pub url: String,
    /// Dial this address instead of HOST:PORT.
    #[arg(long)]
    pub connect: Option<SocketAddr>,
    #[arg(short = 'n', long, default_value_t = 10)]
    pub count: u64,
}

pub async fn run(args: WsArgs) -> Result<Value> {
    let uri: Uri = args
        .url
        .parse()
        .with_context(|| format!("--url {:?}", args.url))?;
    let addr = match args.connect {
        Some(addr) => addr,
        None => {
            let host = uri.host().context("--url has no host")?;
            let ip: IpAddr = host
                .parse()
                .with_context(|| format!("--url host {host:?} is not an IP: give --connect"))?;
            SocketAddr::new(ip, uri.port_u16().unwrap_or(80))
        }
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    let request = args.url.as_str().into_client_request()?;
    let (mut socket, response) = tokio::time::timeout(STEP_TIMEOUT, client_async(request, stream))
        .await
        .context("the WebSocket handshake timed out")?
        .context("the WebSocket handshake")?;
    let served_by = response
        .headers()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut echoed = 0_u64;
    let mut mismatches = Vec::new();
    for i in 0..args.count {
        let text = format!("message {i}");
        socket
            .send(Message::text(text.clone()))
            .await
            .with_context(|| format!("sending message {i}"))?;
        match tokio::time::timeout(STEP_TIMEOUT, socket.next()).await {
            Ok(Some(Ok(Message::Text(echo)))) if echo.as_str() == text => echoed += 1,
            Ok(other) => mismatches.push(format!("{i}: {other:?}")),
            Err(_) => mismatches.push(format!("{i}: no echo within {STEP_TIMEOUT:?}")),
        }
    }
    let closed = socket.close(None).await.is_ok();
    Ok(json!({
        "status": response.status().as_u16(),
        "served_by": served_by,
        "sent": args.count,
        "echoed": echoed,
        "mismatches": mismatches,
        "closed_cleanly": closed,
    }))
}
