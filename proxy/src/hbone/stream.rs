//! One HBONE stream (an HTTP/2 `CONNECT` stream) as a byte stream: what the L4 forwarder, the
//! HTTP server and the HTTP pools read and write, like a TCP socket.
//!
//! - End of stream is a half-close: `poll_shutdown` sends an empty DATA frame with
//!   END_STREAM, the peer reads EOF, and the other direction stays open.
//! - A peer's RST_STREAM with `NO_ERROR` or `CANCEL` reads as EOF (that is how a tunnel that
//!   ended normally may be closed); any other reason is an error, as a TCP RST would be.
//! - Dropped without a half-close, it sends RST_STREAM `CANCEL`, which the peer reads as the
//!   end (an idle pooled HTTP connection closes so). After [`H2Stream::reset_on_close`] it sends
//!   `INTERNAL_ERROR` instead, which the peer reads as a reset, where a TCP peer would get RST.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest slice handed to h2 in one write: h2 copies nothing, so a write of `n` bytes
/// waits for `n` bytes of flow-control credit; capping it keeps a write from waiting for more
/// than one window's worth.
const MAX_WRITE: usize = 64 * 1024;

/// An open HBONE stream. `guard` is held for as long as the stream lives (e.g. the pool's
/// count of streams on its connection).
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Bytes received but not yet read.
    pending: Bytes,
    /// The read side has seen the end of the stream.
    read_done: bool,
    /// Set by [`H2Stream::reset_on_close`]: reset instead of ending when dropped.
    reset: AtomicBool,
    /// END_STREAM has been sent.
    shut: bool,
    _guard: Option<Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    /// Wraps an established stream (the `CONNECT` answered 200 on either side).
    #[must_use]
    pub fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<Arc<dyn Send + Sync>>,
    ) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            read_done: false,
            reset: AtomicBool::new(false),
            shut: false,
            _guard: guard,
        }
    }
}

/// h2's error as the I/O error a socket would have given.
fn to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        return error
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    match error.reason() {
        Some(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => {
            io::Error::new(io::ErrorKind::BrokenPipe, error)
        }
        Some(_) => io::Error::new(io::ErrorKind::ConnectionReset, error),
        None => io::Error::other(error),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                None => this.read_done = true,
                Some(Ok(data)) => {
                    // Credit back at once: the bytes are ours now, and the window bounds what
                    // the peer may have in flight, not what we buffer.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(error)) => {
                    if matches!(error.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) {
                        this.read_done = true;
                    } else {
                        return Poll::Ready(Err(to_io(error)));
                    }
                }
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let wanted = buf.len().min(MAX_WRITE);
        this.send.reserve_capacity(wanted);
        match ready!(this.send.poll_capacity(cx)) {
            Some(Ok(0)) | None => {}
            Some(Ok(n)) => {
                let n = n.min(wanted);
                return match this
                    .send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(error) => Poll::Ready(Err(to_io(error))),
                };
            }
            Some(Err(error)) => return Poll::Ready(Err(to_io(error))),
        }
        // No capacity will come: the stream was reset or the connection is gone.
        match ready!(this.send.poll_reset(cx)) {
            Ok(reason) => Poll::Ready(Err(io::Error::new(
                if matches!(reason, Reason::NO_ERROR | Reason::CANCEL) {
                    io::ErrorKind::BrokenPipe
                } else {
                    io::ErrorKind::ConnectionReset
                },
                format!("the HBONE stream was reset by the peer ({reason})"),
            ))),
            Err(error) => Poll::Ready(Err(to_io(error))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 queues DATA frames on the connection, whose task writes them out.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        this.shut = true;
        Poll::Ready(this.send.send_data(Bytes::new(), true).map_err(to_io))
    }
}

impl H2Stream {
    /// Makes the drop send RST_STREAM `INTERNAL_ERROR`: the peer sees a reset, as a TCP peer
    /// sees RST after `SO_LINGER 0` (`upstream::ResetOnClose`).
    pub fn reset_on_close(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            self.send.send_reset(Reason::INTERNAL_ERROR);
        } else if !self.shut {
            // Dropped without a half-close (e.g. a copy that ended on the other side's
            // error): the peer must not mistake it for a clean end.
            self.send.send_reset(Reason::CANCEL);
        }
    }
}
