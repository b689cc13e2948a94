//! The client's side of an HTTP connection as hyper reads it, watched: every HTTP/1
//! request head is scanned as its bytes arrive ([`HeadScanner`]) and must arrive within
//! `request_headers_timeout`. A head the limits refuse never reaches hyper: this answers it
//! (408, 414, 431, 400) and fails the read, so hyper closes the connection.
//!
//! Every head, pipelined or not: the byte stream is followed whole, each request body
//! skipped as its head frames it ([`BodyScanner`]: a length, or chunks), so a request
//! buffered behind another is judged as the first one is. (Checking the parsed request
//! instead would not do: what hyper refuses itself never reaches the service, uncounted,
//! and hyper's own bounds sit above the limits.) A refused head's answer waits until the
//! responses before it are out (their exchanges over, and then the writes flushed); the
//! bytes from the refused head on are never handed to hyper. Bytes after a body this cannot
//! follow, or after a `Content-Length` it cannot read, are not handed on either (fail
//! closed). After a head that may upgrade (CONNECT, `Upgrade`) and its body, nothing more is
//! handed on until the service answered it: a tunnel's bytes then pass untouched, else the
//! next head is scanned.
#![forbid(unsafe_code)]

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::context::HttpLimits;
use crate::http::limits::{
    BodyScan, BodyScanner, Framing, HeadScanner, Refusal, Scan, ServerFrames, StreamWatch,
};
use crate::telemetry::metrics::Metrics;

/// Told of each refused head, with when its first byte came: counts and logs it.
pub type OnRefusal = Box<dyn FnMut(Refusal, Instant) + Send>;

/// Where the connection's byte stream is.
enum Mode {
    /// Reading a request head.
    Head(HeadScanner),
    /// A request body; `upgrade`: its head (this many heads in) may upgrade.
    Body {
        body: BodyScanner,
        upgrade: Option<u64>,
    },
    /// After head number `head` that may upgrade (and its body): waiting for its answer.
    AwaitAnswer { head: u64 },
    /// HTTP/2, or an upgrade done: everything passes for good.
    Passthrough,
    /// The stream can no longer be followed: reads end (hyper closes).
    Ended,
    /// A refused head, waiting for the responses before it to be out.
    Pending(Refusal),
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
    /// Heads let through so far.
    heads: u64,
    /// When the current head's first byte came.
    head_started: Option<Instant>,
    /// The current head's deadline, armed only when a head does not come in one read.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read from `inner` but not handed on yet (after a head that may upgrade).
    held: Vec<u8>,
    /// `StreamWatch::finishes` as of the last flush with nothing written since: the
    /// responses of the requests finished by then are out.
    flushed_at: Option<u64>,
}

/// What following one read's bytes decided.
struct Followed {
    /// Bytes to hand to hyper, from the read's start.
    pass: usize,
    /// Keep the bytes after `pass` for later (else they are dropped).
    hold: bool,
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
            held: Vec::new(),
            flushed_at: Some(0),
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.watch.set_reading_head(false);
        tracing::debug!(limit = refusal.limit(), "refused a request head");
        (self.on_refusal)(refusal, self.head_started.unwrap_or_else(Instant::now));
        self.mode = Mode::Pending(refusal);
    }

    /// Whether the responses to every head let through are out, so a refusal's answer
    /// comes after them.
    fn answers_out(&self) -> bool {
        self.watch.in_flight() == 0
            && self.watch.dispatched_count() >= self.heads
            && self.flushed_at == Some(self.watch.finishes())
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

    /// Follows `data`, the bytes just read, through heads and bodies.
    fn follow(&mut self, data: &[u8]) -> Followed {
        let mut at = 0;
        // Where the current head began in `data` (`None`: in an earlier read).
        let mut head_from = None;
        while at < data.len() {
            match &mut self.mode {
                Mode::Head(scanner) => {
                    let was_started = scanner.started();
                    let (scan, used) = scanner.feed_counted(&data[at..]);
                    if !was_started && scanner.started() {
                        head_from = data[at..]
                            .iter()
                            .position(|&b| b != b'\r' && b != b'\n')
                            .map(|skipped| at + skipped);
                        self.head_started = Some(Instant::now());
                        self.watch.set_reading_head(true);
                    }
                    at += used;
                    match scan {
                        Scan::Partial => {}
                        Scan::Complete { h2: true } => {
                            self.head_over();
                            self.frames = Some(ServerFrames::default());
                            self.mode = Mode::Passthrough;
                            return Followed {
                                pass: data.len(),
                                hold: false,
                            };
                        }
                        Scan::Complete { h2: false } => {
                            let (framing, upgrade) = (scanner.framing(), scanner.upgrade());
                            self.head_over();
                            let upgrade = upgrade.then_some(self.heads - 1);
                            head_from = None;
                            if framing == Framing::Unknown {
                                self.mode = Mode::Ended;
                                return Followed {
                                    pass: at,
                                    hold: false,
                                };
                            }
                            self.mode = match (BodyScanner::new(framing), upgrade) {
                                (Some(body), _) => Mode::Body { body, upgrade },
                                (None, Some(head)) => {
                                    self.mode = Mode::AwaitAnswer { head };
                                    return Followed {
                                        pass: at,
                                        hold: true,
                                    };
                                }
                                (None, None) => Mode::Head(HeadScanner::new(&self.limits)),
                            };
                        }
                        Scan::Refused(refusal) => {
                            // hyper never sees the head it would otherwise parse; what came
                            // before it in this read (a body, a request) it gets.
                            self.refuse(refusal);
                            return Followed {
                                pass: head_from.unwrap_or(0),
                                hold: false,
                            };
                        }
                    }
                }
                Mode::Body { body, upgrade } => match body.feed(&data[at..]) {
                    BodyScan::Partial => at = data.len(),
                    BodyScan::Done(used) => {
                        at += used;
                        if let Some(head) = *upgrade {
                            self.mode = Mode::AwaitAnswer { head };
                            return Followed {
                                pass: at,
                                hold: true,
                            };
                        }
                        self.mode = Mode::Head(HeadScanner::new(&self.limits));
                    }
                    BodyScan::Invalid(used) => {
                        // hyper gets the bad byte (and refuses the body); nothing after it.
                        self.mode = Mode::Ended;
                        return Followed {
                            pass: at + used,
                            hold: false,
                        };
                    }
                },
                _ => break,
            }
        }
        Followed {
            pass: data.len(),
            hold: false,
        }
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
                Mode::Passthrough => {
                    if this.held.is_empty() {
                        return Pin::new(&mut this.inner).poll_read(cx, buf);
                    }
                    let n = this.held.len().min(buf.remaining());
                    buf.put_slice(&this.held[..n]);
                    this.held.drain(..n);
                    return Poll::Ready(Ok(()));
                }
                Mode::Ended => return Poll::Ready(Ok(())),
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
                Mode::Pending(refusal) => {
                    let refusal = *refusal;
                    if this.answers_out() {
                        this.mode = Mode::Refusing {
                            refusal,
                            written: 0,
                        };
                        continue;
                    }
                    // Woken as a request finishes or a flush completes.
                    this.watch.park_reader(cx.waker());
                    if this.answers_out() {
                        continue;
                    }
                    return Poll::Pending;
                }
                Mode::AwaitAnswer { head } => {
                    let head = *head;
                    if this.watch.scanning_stopped() {
                        this.mode = Mode::Passthrough;
                        continue;
                    }
                    if this.watch.answered_count() > head {
                        // Not upgraded: what came after it is the next request's.
                        this.mode = Mode::Head(HeadScanner::new(&this.limits));
                        continue;
                    }
                    this.watch.park_reader(cx.waker());
                    if this.watch.scanning_stopped() || this.watch.answered_count() > head {
                        continue;
                    }
                    return Poll::Pending;
                }
                Mode::Head(_) | Mode::Body { .. } => {
                    let before = buf.filled().len();
                    let from_held = !this.held.is_empty();
                    let polled = if from_held {
                        let n = this.held.len().min(buf.remaining());
                        buf.put_slice(&this.held[..n]);
                        this.held.drain(..n);
                        Poll::Ready(Ok(()))
                    } else {
                        Pin::new(&mut this.inner).poll_read(cx, buf)
                    };
                    match polled {
                        Poll::Pending => {
                            let started = matches!(&this.mode, Mode::Head(s) if s.started());
                            if started && this.head_timed_out(cx) {
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
                    let followed = this.follow(read);
                    if followed.hold {
                        let tail = buf.filled()[before + followed.pass..].to_vec();
                        this.held.splice(0..0, tail);
                    } else if from_held {
                        // Dropped from here on: nothing after a refusal or an end is read.
                        this.held.clear();
                    }
                    buf.set_filled(before + followed.pass);
                    if matches!(this.mode, Mode::Head(_)) && this.head_timed_out(cx) {
                        // The head goes on past its deadline.
                        buf.set_filled(before);
                        this.refuse(Refusal::HeadersTimeout);
                        continue;
                    }
                    if followed.pass > 0 {
                        return Poll::Ready(Ok(()));
                    }
                    // Nothing to hand on (a refusal, a wait): never an empty read, which
                    // hyper would take for the end.
                }
            }
        }
    }
}

impl<IO> Guarded<IO> {
    /// `written` went out: on HTTP/2, counts the refusal frames among it.
    fn wrote<'a>(&mut self, written: impl IntoIterator<Item = &'a [u8]>) {
        self.flushed_at = None;
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
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        // hyper flushes its transport only once its own buffer is written out.
        this.flushed_at = Some(this.watch.finishes());
        if matches!(this.mode, Mode::Pending(_)) {
            this.watch.wake_reader();
        }
        Poll::Ready(Ok(()))
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
