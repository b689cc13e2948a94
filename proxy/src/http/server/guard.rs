//! The client's side of an HTTP connection as hyper reads it, watched: each HTTP/1 request
//! head is scanned as its bytes arrive ([`HeadScanner`]) and must arrive within
//! `request_headers_timeout`. A head the limits refuse never reaches hyper: this answers it
//! (408, 414, 431, 400) and fails the read, so hyper closes the connection.
//!
//! A head begins when the connection has no request in flight ([`StreamWatch`]): with
//! HTTP/1 that is only after the previous response and request body are over. Bytes of a
//! pipelined request already read with the previous one are left to hyper's own checks
//! (which refuse ambiguous framing too, though some with a close rather than a 400).
#![forbid(unsafe_code)]

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::context::HttpLimits;
use crate::http::limits::{HeadScanner, Refusal, Scan, ServerFrames, StreamWatch};
use crate::telemetry::metrics::Metrics;

/// Told of each refused head, with when its first byte came: counts and logs it.
pub type OnRefusal = Box<dyn FnMut(Refusal, Instant) + Send>;

/// Where the connection's byte stream is.
enum Mode {
    /// Reading a request head.
    Head(HeadScanner),
    /// A request is in flight: its body (and nothing to judge) passes.
    Request,
    /// HTTP/2, an upgrade or an unread body: everything passes for good.
    Passthrough,
    /// Answering a refused head, `written` bytes of it so far.
    Refusing { refusal: Refusal, written: usize },
    /// The refusal was sent: every read fails.
    Refused(Refusal),
}

/// `io`, watched as the module says.
pub struct Guarded<IO> {
    inner: IO,
    mode: Mode,
    watch: Arc<StreamWatch>,
    on_refusal: OnRefusal,
    /// HTTP/2: the server's frames as it writes them, for the refusals h2 makes itself.
    frames: Option<ServerFrames>,
    metrics: Arc<Metrics>,
    limits: HttpLimits,
    /// Heads let through so far: a new head may begin once the service has had them all.
    heads: u64,
    /// When the current head's first byte came.
    head_started: Option<Instant>,
    /// The current head's deadline, armed only when a head does not come in one read.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Guarded<IO> {
    pub fn new(
        inner: IO,
        watch: Arc<StreamWatch>,
        metrics: Arc<Metrics>,
        limits: &HttpLimits,
        on_refusal: OnRefusal,
    ) -> Self {
        Self {
            inner,
            mode: Mode::Head(HeadScanner::new(limits)),
            watch,
            on_refusal,
            frames: None,
            metrics,
            limits: limits.clone(),
            heads: 0,
            head_started: None,
            deadline: None,
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.watch.set_reading_head(false);
        tracing::debug!(limit = refusal.limit(), "refused a request head");
        (self.on_refusal)(refusal, self.head_started.unwrap_or_else(Instant::now));
        self.mode = Mode::Refusing {
            refusal,
            written: 0,
        };
    }

    /// Whether the head's time is up, arming its deadline on first need.
    fn head_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(timeout), Some(started)) =
            (self.limits.request_headers_timeout, self.head_started)
        else {
            return false;
        };
        let deadline = started + timeout;
        let sleep = match &mut self.deadline {
            Some(sleep) => {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .deadline
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx).is_ready()
    }

    fn head_over(&mut self) {
        self.watch.set_reading_head(false);
        self.head_started = None;
        self.heads += 1;
    }
}

/// The error a refused connection's reads end with (hyper then closes it).
fn refused(refusal: Refusal) -> io::Error {
    io::Error::other(format!("request refused: {}", refusal.details()))
}

impl<IO> AsyncRead for Guarded<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.mode {
                Mode::Passthrough => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Mode::Refused(refusal) => return Poll::Ready(Err(refused(*refusal))),
                Mode::Refusing { refusal, written } => {
                    let response = refusal.http1_response();
                    while *written < response.len() {
                        match ready!(
                            Pin::new(&mut this.inner).poll_write(cx, &response[*written..])
                        ) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => *written += n,
                        }
                    }
                    // Best effort: a client that does not read its answer is closed anyway.
                    let _ = ready!(Pin::new(&mut this.inner).poll_flush(cx));
                    let refusal = *refusal;
                    this.mode = Mode::Refused(refusal);
                }
                Mode::Request => {
                    if this.watch.scanning_stopped() {
                        this.mode = Mode::Passthrough;
                    } else if this.watch.in_flight() == 0
                        && this.watch.dispatched_count() >= this.heads
                    {
                        this.mode = Mode::Head(HeadScanner::new(&this.limits));
                    } else {
                        return Pin::new(&mut this.inner).poll_read(cx, buf);
                    }
                }
                Mode::Head(scanner) => {
                    if this.watch.scanning_stopped() {
                        this.mode = Mode::Passthrough;
                        continue;
                    }
                    let before = buf.filled().len();
                    match Pin::new(&mut this.inner).poll_read(cx, buf) {
                        Poll::Pending => {
                            if scanner.started() && this.head_timed_out(cx) {
                                this.refuse(Refusal::HeadersTimeout);
                                continue;
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Ready(Ok(())) => {}
                    }
                    let read = &buf.filled()[before..];
                    if read.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    let was_started = scanner.started();
                    let scan = scanner.feed(read);
                    if !was_started && scanner.started() {
                        this.head_started = Some(Instant::now());
                        this.watch.set_reading_head(true);
                    }
                    match scan {
                        Scan::Partial => {
                            if this.head_timed_out(cx) {
                                buf.set_filled(before);
                                this.refuse(Refusal::HeadersTimeout);
                                continue;
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Scan::Complete { h2 } => {
                            this.head_over();
                            if h2 {
                                this.frames = Some(ServerFrames::default());
                            }
                            this.mode = if h2 { Mode::Passthrough } else { Mode::Request };
                            return Poll::Ready(Ok(()));
                        }
                        Scan::Refused(refusal) => {
                            // hyper never sees the head it would otherwise parse.
                            buf.set_filled(before);
                            this.refuse(refusal);
                        }
                    }
                }
            }
        }
    }
}

impl<IO> Guarded<IO> {
    /// `written` went out: on HTTP/2, counts the refusal frames among it.
    fn wrote<'a>(&mut self, written: impl IntoIterator<Item = &'a [u8]>) {
        let Some(frames) = &mut self.frames else {
            return;
        };
        for bytes in written {
            frames.feed(bytes, |refusal| {
                tracing::debug!(
                    limit = refusal.limit(),
                    "h2 refused a stream or the connection"
                );
                self.metrics.limit_hit(refusal.limit());
            });
        }
    }
}

impl<IO> AsyncWrite for Guarded<IO>
where
    IO: AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wrote([&buf[..n]]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        this.wrote(bufs.iter().map_while(|buf| {
            (left > 0).then(|| {
                let take = left.min(buf.len());
                left -= take;
                &buf[..take]
            })
        }));
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How long a connection closing over a limit gets to finish the streams it has (after
/// GOAWAY) before it is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests;
