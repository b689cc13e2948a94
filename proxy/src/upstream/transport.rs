//! What an upstream dial returns: the byte stream to the endpoint. Plain TCP, one stream of
//! an mTLS tunnel (HBONE) to the endpoint's node, or TLS the proxy originated over either
//! (DestinationRule `tls`); everything above (the HTTP pools, the L4 forwarder, telemetry)
//! works on `Transport` the same way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::hbone::H2Stream;

/// A stream that can be made to end with RST instead of FIN.
pub trait ResetOnClose {
    /// Arranges for the stream to send RST when it is dropped.
    fn reset_on_close(&self);
}

impl<S: ResetOnClose> ResetOnClose for tokio_rustls::server::TlsStream<S> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

impl ResetOnClose for TcpStream {
    fn reset_on_close(&self) {
        // SO_LINGER 0: close(2) discards unsent data and sends RST. Zero linger never blocks.
        if let Err(error) = self.set_zero_linger() {
            tracing::debug!(%error, "could not set SO_LINGER 0; the peer gets FIN instead of RST");
        }
    }
}

/// A dialled upstream connection.
#[derive(Debug)]
pub enum Transport {
    /// Plaintext TCP, to the endpoint itself.
    Tcp(TcpStream),
    /// An HBONE `CONNECT` stream to the endpoint, over mTLS to its node's proxy.
    Hbone(H2Stream),
    /// TLS originated to the endpoint (DestinationRule `tls` `SIMPLE` / `MUTUAL`) over the
    /// stream the dial made. Boxed: rustls' connection state is large.
    Tls(Box<tokio_rustls::client::TlsStream<Transport>>),
}

impl ResetOnClose for H2Stream {
    fn reset_on_close(&self) {
        H2Stream::reset_on_close(self);
    }
}

impl Transport {
    /// The TCP socket the bytes are written to as they are (none once the stream is
    /// encrypted): what splicing and socket options need.
    #[must_use]
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Tcp(stream) => Some(stream),
            Self::Hbone(_) | Self::Tls(_) => None,
        }
    }
}

impl From<TcpStream> for Transport {
    fn from(stream: TcpStream) -> Self {
        Self::Tcp(stream)
    }
}

impl ResetOnClose for Transport {
    fn reset_on_close(&self) {
        match self {
            Self::Tcp(stream) => stream.reset_on_close(),
            Self::Hbone(stream) => stream.reset_on_close(),
            Self::Tls(stream) => stream.get_ref().0.reset_on_close(),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Hbone(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Hbone(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Hbone(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
            Self::Hbone(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Self::Hbone(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Hbone(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
