//! A request body that can be sent again: every attempt streams it, and what went by is kept
//! (up to a limit) so a retry replays it and then continues with what has not arrived yet.
//! A client that streams is never held up, and a connect failure that never read the body
//! loses nothing. Mirrors get the body once it is complete.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::upstream::{Body, BoxError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this copy of the request body was superseded by a retry")]
    Superseded,
}

/// The downstream body, shared by the attempts of one request.
pub struct Replay<B> {
    shared: Arc<Mutex<Shared<B>>>,
}

struct Shared<B> {
    /// What the downstream has sent so far (while not over the limit).
    recorded: BytesMut,
    trailers: Option<HeaderMap>,
    /// The part not read yet.
    rest: B,
    ended: bool,
    /// More than `limit` bytes went by: the body can no longer be replayed.
    overflowed: bool,
    limit: usize,
    /// Bumped per attempt; an older attempt's body stops reading.
    generation: u64,
}

impl<B> Replay<B>
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(body: B, limit: usize) -> Self {
        let ended = body.is_end_stream();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                recorded: BytesMut::new(),
                trailers: None,
                rest: body,
                ended,
                overflowed: false,
                limit,
                generation: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<B>> {
        // Every critical section leaves the state consistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The body for the next attempt; `None` once more than the limit went by. An earlier
    /// attempt's body fails from now on.
    pub fn attempt(&self) -> Option<Body> {
        let mut shared = self.lock();
        if shared.overflowed {
            return None;
        }
        shared.generation += 1;
        Some(
            Attempt {
                shared: self.shared.clone(),
                generation: shared.generation,
                offset: 0,
                trailers_sent: false,
            }
            .boxed(),
        )
    }

    /// Whether a further attempt can get the whole body.
    pub fn can_replay(&self) -> bool {
        !self.lock().overflowed
    }

    /// The whole body, once it has all gone by and was within the limit.
    pub fn complete(&self) -> Option<Bytes> {
        let shared = self.lock();
        (shared.ended && !shared.overflowed).then(|| Bytes::copy_from_slice(&shared.recorded))
    }
}

/// One attempt's view of the body.
struct Attempt<B> {
    shared: Arc<Mutex<Shared<B>>>,
    generation: u64,
    /// Recorded bytes this attempt has sent.
    offset: usize,
    trailers_sent: bool,
}

impl<B> HttpBody for Attempt<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.generation != this.generation {
            return Poll::Ready(Some(Err(Error::Superseded.into())));
        }
        if this.offset < shared.recorded.len() {
            let replayed = Bytes::copy_from_slice(&shared.recorded[this.offset..]);
            this.offset = shared.recorded.len();
            return Poll::Ready(Some(Ok(Frame::data(replayed))));
        }
        if shared.ended {
            if !this.trailers_sent
                && let Some(trailers) = shared.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut shared.rest).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !shared.overflowed && shared.recorded.len() + data.len() <= shared.limit {
                        shared.recorded.extend_from_slice(data);
                        this.offset = shared.recorded.len();
                    } else {
                        shared.overflowed = true;
                        shared.recorded = BytesMut::new();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    shared.ended = true;
                    this.trailers_sent = true;
                }
                if shared.rest.is_end_stream() {
                    shared.ended = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    /// Ended once the downstream body ended and this attempt sent all of it. Without this an
    /// empty body looks like one of zero length still to come, and hyper's HTTP/1 client then
    /// adds `content-length: 0` to a GET that had none.
    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.generation == self.generation
            && shared.ended
            && self.offset >= shared.recorded.len()
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let mut hint = shared.rest.size_hint();
        let pending = (shared.recorded.len() - self.offset.min(shared.recorded.len())) as u64;
        hint.set_lower(hint.lower() + pending);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// Yields its chunks, one `Pending` between each (as a slow client would).
    struct Slow {
        chunks: VecDeque<Bytes>,
        ready: bool,
    }

    impl HttpBody for Slow {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = false;
            Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn slow(chunks: &[&'static str]) -> Slow {
        Slow {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            ready: false,
        }
    }

    async fn read(body: Body) -> Result<Bytes, BoxError> {
        Ok(body.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn a_retry_replays_what_went_by_then_reads_the_rest() {
        let replay = Replay::new(slow(&["ab", "cd", "ef"]), 1024);
        let mut first = replay.attempt().unwrap();
        // The first attempt reads one frame, then fails (its connection reset).
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        assert_eq!(replay.complete(), None);
        let second = replay.attempt().unwrap();
        assert!(first.frame().await.unwrap().is_err(), "superseded");
        assert_eq!(read(second).await.unwrap(), "abcdef");
        assert_eq!(replay.complete().as_deref(), Some(&b"abcdef"[..]));
        // A connect failure never read it: a third attempt still gets all of it.
        assert_eq!(read(replay.attempt().unwrap()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn over_the_limit_the_body_streams_once_and_is_not_replayed() {
        let replay = Replay::new(slow(&["0123", "4567"]), 6);
        assert_eq!(read(replay.attempt().unwrap()).await.unwrap(), "01234567");
        assert!(!replay.can_replay());
        assert!(replay.attempt().is_none());
        assert_eq!(replay.complete(), None);
    }

    #[tokio::test]
    async fn an_empty_body_is_complete_at_once() {
        let replay = Replay::new(http_body_util::Empty::<Bytes>::new(), 16);
        assert_eq!(replay.complete().as_deref(), Some(&b""[..]));
        let attempt = replay.attempt().unwrap();
        assert!(
            attempt.is_end_stream(),
            "an empty body has ended from the start"
        );
        assert_eq!(read(attempt).await.unwrap(), "");
    }

    #[tokio::test]
    async fn an_attempt_ends_once_it_has_sent_the_whole_body() {
        let replay = Replay::new(slow(&["ab"]), 1024);
        let mut first = replay.attempt().unwrap();
        assert!(!first.is_end_stream(), "nothing read yet");
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        assert!(first.frame().await.is_none());
        assert!(first.is_end_stream());
        // A retry has the recorded bytes still to send, and the superseded attempt never ends.
        let mut second = replay.attempt().unwrap();
        assert!(!second.is_end_stream());
        assert!(!first.is_end_stream());
        assert_eq!(
            second.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        assert!(second.is_end_stream());
    }
}
