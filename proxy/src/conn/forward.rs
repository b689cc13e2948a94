//! L4 forwarding: bytes both ways between the accepted (downstream) connection and the dialled
//! (upstream) one, carrying TCP's half-close and reset across the proxy.
//!
//! - EOF read on one side → `shutdown(SHUT_WR)` on the other; the opposite direction keeps
//!   flowing until it ends too.
//! - A failure on one side (a reset read or write, or any other I/O error) → both sides are
//!   closed with RST, so a peer never mistakes a broken stream for a complete one.
#![forbid(unsafe_code)]

use crate::progress::{Direction, Progress};
pub use crate::upstream::ResetOnClose;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Per direction; large enough that a bulk transfer is not syscall-bound.
const BUFFER_SIZE: usize = 16 * 1024;

/// One end of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The connection the proxy accepted from the client.
    Downstream,
    /// The connection the proxy dialled to the server.
    Upstream,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Downstream => "downstream",
            Self::Upstream => "upstream",
        })
    }
}

/// How a forwarded connection ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached EOF and each was shut down in turn.
    Eof,
    /// `side` was reset by its peer; both sides were then reset.
    Reset { side: Side, error: io::Error },
    /// Another I/O failure on `side`; both sides were then reset.
    Failed { side: Side, error: io::Error },
}

/// The outcome of [`forward`].
#[derive(Debug)]
pub struct Forwarded {
    /// Client → server bytes written upstream.
    pub bytes_received: u64,
    /// Server → client bytes written downstream.
    pub bytes_sent: u64,
    pub end: End,
}

/// Copies bytes both ways until both directions have ended or one side fails.
pub async fn forward<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    progress: &dyn Progress,
) -> Forwarded
where
    D: AsyncRead + AsyncWrite + ResetOnClose + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + ResetOnClose + Unpin + ?Sized,
{
    let mut client_to_server = OneWay::new(Direction::ClientToServer);
    let mut server_to_client = OneWay::new(Direction::ServerToClient);
    let result = poll_fn(|cx| {
        let c2s = client_to_server.poll_copy(
            cx,
            Pin::new(&mut *downstream),
            Pin::new(&mut *upstream),
            progress,
        );
        if let Poll::Ready(Err(failure)) = c2s {
            return Poll::Ready(Err(failure));
        }
        let s2c = server_to_client.poll_copy(
            cx,
            Pin::new(&mut *upstream),
            Pin::new(&mut *downstream),
            progress,
        );
        if let Poll::Ready(Err(failure)) = s2c {
            return Poll::Ready(Err(failure));
        }
        if c2s.is_ready() && s2c.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    let end = match result {
        Ok(()) => End::Eof,
        Err(Failure { side, error }) => {
            downstream.reset_on_close();
            upstream.reset_on_close();
            if is_reset(&error) {
                End::Reset { side, error }
            } else {
                End::Failed { side, error }
            }
        }
    };
    Forwarded {
        bytes_received: client_to_server.delivered,
        bytes_sent: server_to_client.delivered,
        end,
    }
}

/// Errors that mean the peer reset the connection (ECONNRESET on read, EPIPE/ECONNRESET on a
/// write after the peer's RST).
fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

struct Failure {
    side: Side,
    error: io::Error,
}

/// One direction's copy state.
///
/// No buffer is held while a connection is idle or flowing freely: reads land in a per-thread
/// scratch buffer and go straight to the writer. Only bytes the writer does not take at once
/// are copied into `pending`, which is freed as soon as it drains. An idle proxied connection
/// therefore costs its sockets and task, not 2 × 16 KiB of buffers per hop.
struct OneWay {
    direction: Direction,
    /// Read but not yet written (the writer pushed back); empty and unallocated otherwise.
    pending: Vec<u8>,
    /// `pending[pos..]` is still to be written.
    pos: usize,
    read_eof: bool,
    needs_flush: bool,
    done: bool,
    delivered: u64,
    /// `delivered` when `Progress::caught_up` was last told.
    caught_up_at: u64,
}

thread_local! {
    /// Where every direction on this thread reads into; it never holds bytes across polls.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; BUFFER_SIZE].into_boxed_slice());
}

impl OneWay {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            pending: Vec::new(),
            pos: 0,
            read_eof: false,
            needs_flush: false,
            done: false,
            delivered: 0,
            caught_up_at: 0,
        }
    }

    fn sides(&self) -> (Side, Side) {
        match self.direction {
            Direction::ClientToServer => (Side::Downstream, Side::Upstream),
            Direction::ServerToClient => (Side::Upstream, Side::Downstream),
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        progress: &dyn Progress,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let (from, to) = self.sides();
        let fail = |side| move |error| Failure { side, error };
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // Bytes the writer pushed back on go first, in order.
            while self.pos < self.pending.len() {
                let n = ready!(writer.as_mut().poll_write(cx, &self.pending[self.pos..]))
                    .map_err(fail(to))?;
                if n == 0 {
                    return Poll::Ready(Err(fail(to)(write_zero())));
                }
                self.pos += n;
                self.record(n, progress);
            }
            if !self.pending.is_empty() {
                // Drained: give the memory back rather than keep it for an idle connection.
                self.pending = Vec::new();
                self.pos = 0;
            }
            if self.read_eof {
                // Half-close: pass the EOF on and leave the other direction running.
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(fail(to))?;
                self.done = true;
                continue;
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut read_buf = ReadBuf::new(&mut scratch[..]);
                match reader.as_mut().poll_read(cx, &mut read_buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(error)) => Poll::Ready(Err(fail(from)(error))),
                    Poll::Ready(Ok(())) => {
                        let filled = read_buf.filled().len();
                        Poll::Ready(self.write_through(
                            cx,
                            writer.as_mut(),
                            &scratch[..filled],
                            progress,
                        ))
                    }
                }
            });
            match read {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    // Nothing more to read for now: push out what was written so a buffering
                    // writer does not sit on it while we wait.
                    if self.needs_flush {
                        ready!(writer.as_mut().poll_flush(cx)).map_err(fail(to))?;
                        self.needs_flush = false;
                    }
                    if self.pending.is_empty() && self.delivered != self.caught_up_at {
                        self.caught_up_at = self.delivered;
                        progress.caught_up(self.direction, self.delivered);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Writes freshly read `bytes` (empty: EOF) as far as the writer takes them now, and keeps
    /// the rest in `pending`.
    fn write_through<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
        bytes: &[u8],
        progress: &dyn Progress,
    ) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        let (_, to) = self.sides();
        if bytes.is_empty() {
            self.read_eof = true;
            return Ok(());
        }
        let mut written = 0;
        while written < bytes.len() {
            match writer.as_mut().poll_write(cx, &bytes[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Err(Failure {
                        side: to,
                        error: write_zero(),
                    });
                }
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.record(n, progress);
                }
                Poll::Ready(Err(error)) => return Err(Failure { side: to, error }),
                Poll::Pending => break,
            }
        }
        if written < bytes.len() {
            // The writer registered our waker; the loop retries `pending` when it wakes us.
            self.pending = bytes[written..].to_vec();
            self.pos = 0;
        }
        Ok(())
    }

    fn record(&mut self, n: usize, progress: &dyn Progress) {
        self.delivered += n as u64;
        self.needs_flush = true;
        progress.delivered(self.direction, n as u64);
    }
}

fn write_zero() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "peer accepted no more bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::net::TcpStream;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio::net::TcpListener;

    /// A duplex end that records whether the forwarder asked for RST on close.
    struct Observed {
        io: DuplexStream,
        reset: Arc<AtomicBool>,
    }

    impl Observed {
        fn pair() -> (Self, DuplexStream, Arc<AtomicBool>) {
            let (ours, theirs) = duplex(64);
            let reset = Arc::new(AtomicBool::new(false));
            (
                Self {
                    io: ours,
                    reset: reset.clone(),
                },
                theirs,
                reset,
            )
        }
    }

    impl ResetOnClose for Observed {
        fn reset_on_close(&self) {
            self.reset.store(true, Ordering::SeqCst);
        }
    }

    impl AsyncRead for Observed {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Observed {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Records the catch-ups `forward` reports, in order.
    #[derive(Default)]
    struct CatchUps(std::sync::Mutex<Vec<(Direction, u64)>>);

    impl Progress for CatchUps {
        fn delivered(&self, _: Direction, _: u64) {}
        fn caught_up(&self, direction: Direction, delivered: u64) {
            self.0.lock().unwrap().push((direction, delivered));
        }
    }

    #[tokio::test]
    async fn each_exchange_ends_in_one_catch_up_per_direction_with_the_new_total() {
        let (mut downstream, mut client, _) = Observed::pair();
        let (mut upstream, mut server, _) = Observed::pair();
        let catch_ups = Arc::new(CatchUps::default());
        let progress = catch_ups.clone();
        let forwarding = tokio::spawn(async move {
            forward(&mut downstream, &mut upstream, &*progress).await;
        });
        let mut buf = [0u8; 4];
        for round in 0..2u8 {
            client.write_all(&[round; 4]).await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(&[round; 2]).await.unwrap();
            client.read_exact(&mut buf[..2]).await.unwrap();
            // Let the forwarder see both readers empty before the next round.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop((client, server));
        forwarding.await.unwrap();
        assert_eq!(
            *catch_ups.0.lock().unwrap(),
            vec![
                (Direction::ClientToServer, 4),
                (Direction::ServerToClient, 2),
                (Direction::ClientToServer, 8),
                (Direction::ServerToClient, 4),
            ]
        );
    }

    /// A peer that sends `data`, then fails every further read with `error`; writes vanish.
    struct FailsAfter {
        data: Vec<u8>,
        error: io::ErrorKind,
        reset: Arc<AtomicBool>,
    }

    impl ResetOnClose for FailsAfter {
        fn reset_on_close(&self) {
            self.reset.store(true, Ordering::SeqCst);
        }
    }

    impl AsyncRead for FailsAfter {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.data.is_empty() {
                return Poll::Ready(Err(self.error.into()));
            }
            let n = self.data.len().min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for FailsAfter {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Counted {
        received: AtomicU64,
        sent: AtomicU64,
    }

    impl Progress for Counted {
        fn delivered(&self, direction: Direction, bytes: u64) {
            match direction {
                Direction::ClientToServer => self.received.fetch_add(bytes, Ordering::SeqCst),
                Direction::ServerToClient => self.sent.fetch_add(bytes, Ordering::SeqCst),
            };
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Which peer closes its write side first.
    #[derive(Clone, Copy, Debug)]
    enum FirstToClose {
        Client,
        Server,
    }

    #[tokio::test]
    async fn half_close_in_either_order_keeps_the_other_direction_flowing() {
        for (first, request_len, response_len) in [
            (FirstToClose::Client, 5, 100_000),
            (FirstToClose::Server, 100_000, 5),
            (FirstToClose::Client, 0, 7),
            (FirstToClose::Server, 7, 0),
        ] {
            let (mut downstream, mut client, down_reset) = Observed::pair();
            let (mut upstream, mut server, up_reset) = Observed::pair();
            let request = payload(request_len);
            let response = payload(response_len);
            let counted = Counted::default();

            let peers = {
                let (request, response) = (request.clone(), response.clone());
                async move {
                    let (mut client_rx, mut client_tx) = tokio::io::split(&mut client);
                    let (mut server_rx, mut server_tx) = tokio::io::split(&mut server);
                    let mut got_request = Vec::new();
                    let mut got_response = Vec::new();
                    match first {
                        FirstToClose::Client => {
                            // The client sends and closes; the server answers only after EOF.
                            client_tx.write_all(&request).await.unwrap();
                            client_tx.shutdown().await.unwrap();
                            server_rx.read_to_end(&mut got_request).await.unwrap();
                            let send = async {
                                server_tx.write_all(&response).await.unwrap();
                                server_tx.shutdown().await.unwrap();
                            };
                            let (_, read) =
                                tokio::join!(send, client_rx.read_to_end(&mut got_response));
                            read.unwrap();
                        }
                        FirstToClose::Server => {
                            // The server speaks first and closes; the client keeps sending.
                            server_tx.write_all(&response).await.unwrap();
                            server_tx.shutdown().await.unwrap();
                            client_rx.read_to_end(&mut got_response).await.unwrap();
                            let send = async {
                                client_tx.write_all(&request).await.unwrap();
                                client_tx.shutdown().await.unwrap();
                            };
                            let (_, read) =
                                tokio::join!(send, server_rx.read_to_end(&mut got_request));
                            read.unwrap();
                        }
                    }
                    (got_request, got_response)
                }
            };
            let (forwarded, (got_request, got_response)) =
                tokio::join!(forward(&mut downstream, &mut upstream, &counted), peers);

            let case = format!("{first:?} {request_len}/{response_len}");
            assert!(
                matches!(forwarded.end, End::Eof),
                "{case}: {:?}",
                forwarded.end
            );
            assert_eq!(got_request, request, "{case}");
            assert_eq!(got_response, response, "{case}");
            assert_eq!(forwarded.bytes_received, request_len as u64, "{case}");
            assert_eq!(forwarded.bytes_sent, response_len as u64, "{case}");
            assert_eq!(
                counted.received.load(Ordering::SeqCst),
                request_len as u64,
                "{case}"
            );
            assert_eq!(
                counted.sent.load(Ordering::SeqCst),
                response_len as u64,
                "{case}"
            );
            assert!(
                !down_reset.load(Ordering::SeqCst),
                "{case}: clean close must not RST"
            );
            assert!(
                !up_reset.load(Ordering::SeqCst),
                "{case}: clean close must not RST"
            );
        }
    }

    #[tokio::test]
    async fn a_failure_on_one_side_resets_both() {
        for (failing, error, reset_expected) in [
            (Side::Downstream, io::ErrorKind::ConnectionReset, true),
            (Side::Upstream, io::ErrorKind::ConnectionReset, true),
            (Side::Upstream, io::ErrorKind::BrokenPipe, true),
            (Side::Downstream, io::ErrorKind::TimedOut, false),
        ] {
            let failing_reset = Arc::new(AtomicBool::new(false));
            let mut broken = FailsAfter {
                data: b"hello".to_vec(),
                error,
                reset: failing_reset.clone(),
            };
            let (mut healthy, mut healthy_peer, healthy_reset) = Observed::pair();
            let forwarded = match failing {
                Side::Downstream => forward(&mut broken, &mut healthy, &()).await,
                Side::Upstream => forward(&mut healthy, &mut broken, &()).await,
            };
            let case = format!("{failing} {error:?}");
            match (&forwarded.end, reset_expected) {
                (End::Reset { side, .. }, true) | (End::Failed { side, .. }, false) => {
                    assert_eq!(*side, failing, "{case}");
                }
                (end, _) => panic!("{case}: unexpected end {end:?}"),
            }
            assert!(
                healthy_reset.load(Ordering::SeqCst),
                "{case}: healthy side not reset"
            );
            assert!(
                failing_reset.load(Ordering::SeqCst),
                "{case}: failing side not reset"
            );
            // What the broken side sent before failing was still delivered.
            let mut seen = [0u8; 5];
            healthy_peer.read_exact(&mut seen).await.unwrap();
            assert_eq!(&seen, b"hello", "{case}");
            let delivered = match failing {
                Side::Downstream => forwarded.bytes_received,
                Side::Upstream => forwarded.bytes_sent,
            };
            assert_eq!(delivered, 5, "{case}");
        }
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (connected, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        (connected.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_client_rst_reaches_the_server_as_rst_over_tcp() {
        let (mut client, mut downstream) = tcp_pair().await;
        let (mut upstream, mut server) = tcp_pair().await;
        let proxy = tokio::spawn(async move {
            let forwarded = forward(&mut downstream, &mut upstream, &()).await;
            drop((downstream, upstream));
            forwarded
        });
        client.write_all(b"partial").await.unwrap();
        let mut seen = [0u8; 7];
        server.read_exact(&mut seen).await.unwrap();
        client.set_zero_linger().unwrap();
        drop(client);

        let forwarded = tokio::time::timeout(Duration::from_secs(5), proxy)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                forwarded.end,
                End::Reset {
                    side: Side::Downstream,
                    ..
                }
            ),
            "{:?}",
            forwarded.end
        );
        let mut rest = Vec::new();
        let read = server.read_to_end(&mut rest).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset),
            "the server must see RST, not EOF"
        );
    }

    #[tokio::test]
    async fn a_buffer_is_held_only_while_the_writer_pushes_back() {
        let (mut app, mut reader) = duplex(256 << 10);
        // A writer that takes 1 KiB before it pushes back.
        let (mut writer, mut server) = duplex(1024);
        let mut one_way = OneWay::new(Direction::ClientToServer);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut poll =
            |one_way: &mut OneWay, reader: &mut DuplexStream, writer: &mut DuplexStream| {
                one_way.poll_copy(&mut cx, Pin::new(reader), Pin::new(writer), &())
            };

        assert!(poll(&mut one_way, &mut reader, &mut writer).is_pending());
        assert_eq!(one_way.pending.capacity(), 0, "idle: no buffer");

        app.write_all(&[7u8; 8192]).await.unwrap();
        assert!(poll(&mut one_way, &mut reader, &mut writer).is_pending());
        assert!(
            !one_way.pending.is_empty(),
            "backpressure: the unwritten rest is kept"
        );

        let mut got = vec![0u8; 8192];
        let mut have = 0;
        while have < got.len() {
            have += server.read(&mut got[have..]).await.unwrap();
            let _ = poll(&mut one_way, &mut reader, &mut writer);
        }
        assert!(got.iter().all(|&b| b == 7));
        assert_eq!(one_way.delivered, 8192);
        assert_eq!(
            one_way.pending.capacity(),
            0,
            "drained: the buffer is freed"
        );
    }
}
