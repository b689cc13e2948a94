//! The HBONE server side: one HTTP/2 connection from a peer, already through the mTLS
//! handshake, and its `CONNECT` streams. Each stream is handed to the caller as an
//! [`Incoming`], which it answers with [`Incoming::accept`] (200, then the tunnelled bytes) or
//! [`Incoming::refuse`] (a status, as ztunnel answers: 400 for a bad request, 401 for a policy
//! denial, 503 when the app cannot be reached).
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::metrics::{HboneMetrics, INBOUND, Open};
use super::stream::H2Stream;
use super::error::HboneError;
use super::settings::Settings;

/// One `CONNECT` stream, not yet answered.
pub struct Incoming {
    pub request: http::request::Parts,
    body: RecvStream,
    respond: SendResponse<Bytes>,
    open: Open,
}

/// Why a `CONNECT` is malformed; each answers 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequest {
    #[error("HBONE accepts only CONNECT, not {0}")]
    Method(String),
    #[error("the CONNECT has no :authority")]
    NoAuthority,
    #[error("the CONNECT's :authority {0:?} is not an ip:port")]
    Authority(String),
}

impl Incoming {
    /// The tunnel's target, from `:authority`: `<destination pod IP>:<target port>`.
    pub fn target(&self) -> Result<SocketAddr, BadRequest> {
        if self.request.method != Method::CONNECT {
            return Err(BadRequest::Method(self.request.method.to_string()));
        }
        let authority = self
            .request
            .uri
            .authority()
            .ok_or(BadRequest::NoAuthority)?;
        authority
            .as_str()
            .parse()
            .map_err(|_| BadRequest::Authority(authority.as_str().to_owned()))
    }

    /// A request header as a string, if present and valid.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.headers.get(name)?.to_str().ok()
    }

    /// Answers 200: the stream now carries the tunnelled connection.
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        let response = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .map_err(|error| HboneError::Request(error.to_string()))?;
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.body, Some(Arc::new(self.open))))
    }

    /// Answers `status` and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        let Ok(response) = Response::builder().status(status).body(()) else {
            return;
        };
        if let Err(error) = self.respond.send_response(response, true) {
            tracing::debug!(%error, "could not answer an HBONE CONNECT");
        }
    }
}

/// Serves the streams of one HBONE connection until the peer closes it, PING fails, or
/// `drain` resolves (then GOAWAY, and the streams already open finish). `handle` runs as
/// its own task per stream.
pub async fn serve<IO, H, F>(
    io: IO,
    settings: Settings,
    metrics: &HboneMetrics,
    drain: impl Future<Output = ()>,
    mut handle: H,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Incoming) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut connection = match h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_concurrent_streams(settings.server_max_streams)
        .max_send_buffer_size(settings.stream_window as usize)
        .handshake::<_, Bytes>(io)
        .await
    {
        Ok(connection) => connection,
        Err(error) => {
            metrics.failure(INBOUND, "h2");
            return Err(error.into());
        }
    };
    let _open = Open(metrics.connection_opened(INBOUND));
    let ping = connection.ping_pong();
    let mut drain = std::pin::pin!(drain);
    let mut keepalive = std::pin::pin!(super::keepalive::keepalive(ping, settings));
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                None => return Ok(()),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok((request, respond))) => {
                    let (request, body) = request.into_parts();
                    let open = Open(metrics.stream_opened(INBOUND));
                    tokio::spawn(handle(Incoming { request, body, respond, open }));
                }
            },
            () = &mut drain, if !draining => {
                draining = true;
                connection.graceful_shutdown();
            }
            () = &mut keepalive => {
                tracing::warn!("HBONE connection closed: the peer did not answer PING");
                return Ok(());
            }
        }
    }
}
