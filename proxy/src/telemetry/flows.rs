//! The flow ring: the last connection and request events ([`Flow`]), kept in a bounded ring
//! and streamed as NDJSON on the metrics port (`GET /flows?last=N&follow=1`) for `shuntctl
//! flows`. With no viewer an event costs one bounded copy under a short lock; a viewer reads
//! the ring, and a follower wakes when something is pushed.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use hyper::body::{Bytes, Frame};
use shunt_api::flows::{Flow, FlowType, HttpSummary, TcpSummary, Verdict};
use shunt_mesh::model::Workload;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Reporter;
use super::access_log::{CloseReason, Entry, HttpEntry};
use crate::response_flag::{ResponseFlag, ResponseFlags};

/// Events kept unless `--flows-capacity` says otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Lines a follower's stream holds before the follower waits for its client.
const FOLLOW_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "GET /flows: query parameter {name}={value:?} is not valid: {expected} (e.g. \
         /flows?last=100&follow=1)"
    )]
    Query {
        name: String,
        value: String,
        expected: &'static str,
    },
}

/// The ring of the last events; `capacity` 0 keeps none.
#[derive(Debug)]
pub struct FlowRing {
    capacity: AtomicUsize,
    inner: std::sync::Mutex<Inner>,
    /// Wakes followers; costs an atomic load when nobody waits.
    pushed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<Flow>,
    next_seq: u64,
}

impl Default for FlowRing {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl FlowRing {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: AtomicUsize::new(capacity),
            inner: std::sync::Mutex::default(),
            pushed: Notify::new(),
        }
    }

    /// Keeps at most `capacity` events from now on (0: none, and nothing is built for it).
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
        let mut inner = self.lock();
        while inner.events.len() > capacity {
            inner.events.pop_front();
        }
    }

    /// Whether events are kept: callers skip building them otherwise.
    #[must_use]
    pub fn is_on(&self) -> bool {
        self.capacity.load(Ordering::Relaxed) > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A push cannot leave the ring half-changed; keep going after a panic elsewhere.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `flow` (its `seq` is assigned here), dropping the oldest past the capacity.
    pub fn push(&self, mut flow: Flow) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        if capacity == 0 {
            return;
        }
        {
            let mut inner = self.lock();
            flow.seq = inner.next_seq;
            inner.next_seq += 1;
            if inner.events.len() >= capacity {
                inner.events.pop_front();
            }
            inner.events.push_back(flow);
        }
        self.pushed.notify_waiters();
    }

    /// The events after `after` (all when `None`), at most the `last` newest of them.
    #[must_use]
    pub fn read(&self, after: Option<u64>, last: Option<usize>) -> Vec<Flow> {
        let inner = self.lock();
        let newer = inner
            .events
            .iter()
            .filter(|f| after.is_none_or(|after| f.seq > after));
        let count = newer.clone().count();
        let skip = last.map_or(0, |last| count.saturating_sub(last));
        newer.skip(skip).cloned().collect()
    }

    /// The body of `GET /flows`: what `query` asks for as NDJSON, and with `follow` every
    /// event after it as it comes, until the client goes or `shutdown` fires.
    #[must_use]
    pub fn stream(self: &Arc<Self>, query: Query, shutdown: CancellationToken) -> FlowBody {
        let backlog = self.read(query.after, query.last);
        if !query.follow {
            return FlowBody::Done(Some(ndjson(&backlog)));
        }
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        let ring = Arc::clone(self);
        let mut after = backlog.last().map(|f| f.seq).or(query.after);
        if after.is_none() {
            // Nothing shown yet: follow from what is pushed after now.
            after = ring.lock().next_seq.checked_sub(1);
        }
        tokio::spawn(async move {
            if !backlog.is_empty() && tx.send(ndjson(&backlog)).await.is_err() {
                return;
            }
            loop {
                let pushed = ring.pushed.notified();
                tokio::pin!(pushed);
                // Registered before reading, so a push in between still wakes us.
                pushed.as_mut().enable();
                let new = ring.read(after, None);
                if let Some(newest) = new.last() {
                    after = Some(newest.seq);
                    if tx.send(ndjson(&new)).await.is_err() {
                        return;
                    }
                    continue;
                }
                tokio::select! {
                    () = pushed => {}
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                }
            }
        });
        FlowBody::Follow(rx)
    }
}

/// `GET /flows`'s parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only the newest N of the ring (all when `None`).
    pub last: Option<usize>,
    /// Only events after this `seq` (a follower resuming where a read ended).
    pub after: Option<u64>,
    /// Keep the response open and stream new events.
    pub follow: bool,
}

impl Query {
    /// Parses `last=N&after=SEQ&follow=1` (any order; unknown parameters are refused, so a typo is not
    /// silently ignored).
    pub fn parse(query: Option<&str>) -> Result<Self, Error> {
        let mut parsed = Self::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let invalid = |expected| Error::Query {
                name: name.to_owned(),
                value: value.to_owned(),
                expected,
            };
            match name {
                "last" => {
                    parsed.last = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("a count of events, 0 or more"))?,
                    );
                }
                "after" => {
                    parsed.after = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("an event's seq number"))?,
                    );
                }
                "follow" => {
                    parsed.follow = match value {
                        "" | "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(invalid("1, true, 0 or false")),
                    };
                }
                _ => return Err(invalid("the parameters are last, after and follow")),
            }
        }
        Ok(parsed)
    }
}

fn ndjson(flows: &[Flow]) -> Bytes {
    let mut out = Vec::with_capacity(flows.len() * 512);
    for flow in flows {
        // A Flow is strings and numbers: it always serializes.
        if serde_json::to_writer(&mut out, flow).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// The response body of `GET /flows`.
#[derive(Debug)]
pub enum FlowBody {
    /// The ring as it was, once.
    Done(Option<Bytes>),
    /// Lines as the follower task sends them.
    Follow(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for FlowBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Done(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            Self::Follow(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(0)
}

/// Flags that mean the proxy could not deliver: Hubble's `ERROR`.
const ERROR_FLAGS: [ResponseFlag; 9] = [
    ResponseFlag::NoHealthyUpstream,
    ResponseFlag::UpstreamConnectionFailure,
    ResponseFlag::UpstreamOverflow,
    ResponseFlag::UpstreamConnectionTermination,
    ResponseFlag::UpstreamRequestTimeout,
    ResponseFlag::UpstreamRetryLimitExceeded,
    ResponseFlag::NoClusterFound,
    ResponseFlag::DownstreamProtocolError,
    ResponseFlag::StreamIdleTimeout,
];

fn has_error_flag(flags: &ResponseFlags) -> bool {
    ERROR_FLAGS.iter().any(|flag| flags.contains(*flag))
}

/// A request's verdict: `DROPPED` for an authorization denial (RBAC, ext_authz) or a
/// `REGISTRY_ONLY` block (502 `NR`), `ERROR` for an upstream failure, else `FORWARDED` (a 5xx
/// the app answered was forwarded).
#[must_use]
pub fn http_verdict(code: u16, flags: &ResponseFlags, details: Option<&str>) -> Verdict {
    let denied = details.is_some_and(|d| d.starts_with("rbac_access_denied"))
        || flags.contains(ResponseFlag::UnauthorizedExternalService)
        || (code == 502 && flags.contains(ResponseFlag::NoRouteFound));
    if denied {
        Verdict::Dropped
    } else if has_error_flag(flags) {
        Verdict::Error
    } else {
        Verdict::Forwarded
    }
}

/// A connection's verdict: `DROPPED` when policy refused it (`denied`, or `REGISTRY_ONLY`'s
/// black hole), `ERROR` when it could not be dialled, else `FORWARDED`.
#[must_use]
pub fn tcp_verdict(reason: CloseReason, flags: &ResponseFlags, registry_only: bool) -> Verdict {
    match reason {
        CloseReason::Denied => Verdict::Dropped,
        CloseReason::Unreachable if registry_only => Verdict::Dropped,
        CloseReason::ConnectTimeout | CloseReason::ConnectRefused | CloseReason::Unreachable => {
            Verdict::Error
        }
        _ if has_error_flag(flags) => Verdict::Error,
        _ => Verdict::Forwarded,
    }
}

/// Who and where an event is about.
pub struct Ends<'a> {
    pub reporter: Reporter,
    pub pod: &'a str,
    pub src_pod: Option<&'a Workload>,
    pub dst_pod: Option<&'a Workload>,
    pub src_addr: &'a str,
    pub dst_addr: &'a str,
    pub src_workload: &'a str,
    pub src_namespace: &'a str,
    pub dst_workload: &'a str,
    pub dst_namespace: &'a str,
    pub dst_service: &'a str,
}

fn flow(kind: FlowType, ends: &Ends<'_>, protocol: &str, verdict: Verdict) -> Flow {
    Flow {
        seq: 0,
        time_ms: now_ms(),
        kind,
        verdict,
        reporter: ends.reporter.as_str().to_owned(),
        pod: ends.pod.to_owned(),
        src_pod: pod_name(ends.src_pod),
        dst_pod: pod_name(ends.dst_pod),
        protocol: protocol.to_owned(),
        src_addr: ends.src_addr.to_owned(),
        dst_addr: ends.dst_addr.to_owned(),
        dst_port: port_of(ends.dst_addr),
        src_workload: ends.src_workload.to_owned(),
        src_namespace: ends.src_namespace.to_owned(),
        dst_workload: ends.dst_workload.to_owned(),
        dst_namespace: ends.dst_namespace.to_owned(),
        dst_service: ends.dst_service.to_owned(),
        response_flags: "-".to_owned(),
        reason: None,
        tcp: None,
        http: None,
    }
}

fn pod_name(workload: Option<&Workload>) -> String {
    workload.map_or_else(
        || super::UNKNOWN.to_owned(),
        |w| format!("{}/{}", w.namespace, w.name),
    )
}

/// A connection accepted and about to be dialled.
#[must_use]
pub fn tcp_open(ends: &Ends<'_>) -> Flow {
    flow(FlowType::TcpOpen, ends, "tcp", Verdict::Forwarded)
}

/// A connection ended, from its access log entry.
#[must_use]
pub fn tcp_close(entry: &Entry, source: Option<&Workload>, destination: Option<&Workload>) -> Flow {
    let registry_only = entry
        .error
        .as_deref()
        .is_some_and(|e| e.contains("REGISTRY_ONLY"));
    let ends = Ends {
        reporter: entry.reporter,
        pod: &entry.pod,
        src_pod: source,
        dst_pod: destination,
        src_addr: &entry.src_addr,
        dst_addr: &entry.dst_addr,
        src_workload: &entry.src_workload,
        src_namespace: &entry.src_namespace,
        dst_workload: &entry.dst_workload,
        dst_namespace: &entry.dst_namespace,
        dst_service: &entry.dst_service,
    };
    let verdict = tcp_verdict(entry.close_reason, &entry.response_flags, registry_only);
    let mut flow = flow(FlowType::TcpClose, &ends, "tcp", verdict);
    flow.response_flags = entry.response_flags.to_string();
    flow.reason = entry
        .error
        .clone()
        .or_else(|| Some(entry.close_reason.as_str().to_owned()));
    flow.tcp = Some(TcpSummary {
        bytes_received: entry.bytes_received,
        bytes_sent: entry.bytes_sent,
        duration_ms: entry.duration_ms,
        rtt_us: entry.rtt_us,
        retransmits: entry.retransmits,
    });
    flow
}

/// A request answered, from its access log entry.
#[must_use]
pub fn http<C: Display>(
    entry: &HttpEntry<'_, C>,
    grpc: bool,
    source: Option<&Workload>,
    destination: Option<&Workload>,
) -> Flow {
    let ends = Ends {
        reporter: entry.reporter,
        pod: entry.pod,
        src_pod: source,
        dst_pod: destination,
        src_addr: entry.src_addr,
        dst_addr: entry.dst_addr,
        src_workload: entry.src_workload,
        src_namespace: entry.src_namespace,
        dst_workload: entry.dst_workload,
        dst_namespace: entry.dst_namespace,
        dst_service: &entry.dst_service,
    };
    let verdict = http_verdict(
        entry.response_code,
        &entry.response_flags,
        entry.response_code_details,
    );
    let mut flow = flow(
        FlowType::Http,
        &ends,
        if grpc { "grpc" } else { "http" },
        verdict,
    );
    flow.response_flags = entry.response_flags.to_string();
    flow.reason = entry.response_code_details.map(str::to_owned);
    flow.http = Some(HttpSummary {
        method: entry.method.to_owned(),
        path: entry.path.to_owned(),
        code: entry.response_code,
        latency_ms: entry.duration,
    });
    flow
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends() -> Ends<'static> {
        Ends {
            reporter: Reporter::Source,
            pod: "shop/client-1",
            src_pod: None,
            dst_pod: None,
            src_addr: "10.0.0.1:40000",
            dst_addr: "10.96.0.10:8080",
            src_workload: "client",
            src_namespace: "shop",
            dst_workload: "web",
            dst_namespace: "shop",
            dst_service: "web.shop.svc.cluster.local",
        }
    }

    fn flags(flags: &[ResponseFlag]) -> ResponseFlags {
        flags.iter().copied().collect()
    }

    #[test]
    fn http_verdicts() {
        use ResponseFlag::{
            NoHealthyUpstream, NoRouteFound, UnauthorizedExternalService,
            UpstreamConnectionFailure, UpstreamRetryLimitExceeded,
        };
        for (code, set, details, expected) in [
            (200, &[][..], None, Verdict::Forwarded),
            (503, &[][..], None, Verdict::Forwarded),
            (
                403,
                &[][..],
                Some("rbac_access_denied_matched_policy[ns[mesh]-policy[deny]-rule[0]]"),
                Verdict::Dropped,
            ),
            (
                403,
                &[UnauthorizedExternalService][..],
                None,
                Verdict::Dropped,
            ),
            (502, &[NoRouteFound][..], None, Verdict::Dropped),
            (404, &[NoRouteFound][..], None, Verdict::Forwarded),
            (503, &[UpstreamConnectionFailure][..], None, Verdict::Error),
            (503, &[NoHealthyUpstream][..], None, Verdict::Error),
            (
                503,
                &[UpstreamRetryLimitExceeded, UpstreamConnectionFailure][..],
                None,
                Verdict::Error,
            ),
        ] {
            assert_eq!(
                http_verdict(code, &flags(set), details),
                expected,
                "{code} {set:?} {details:?}"
            );
        }
    }

    #[test]
    fn tcp_verdicts() {
        use ResponseFlag::{NoHealthyUpstream, UpstreamConnectionFailure};
        for (reason, set, registry_only, expected) in [
            (CloseReason::Eof, &[][..], false, Verdict::Forwarded),
            (CloseReason::Reset, &[][..], false, Verdict::Forwarded),
            (CloseReason::Denied, &[][..], false, Verdict::Dropped),
            (
                CloseReason::Unreachable,
                &[NoHealthyUpstream][..],
                true,
                Verdict::Dropped,
            ),
            (
                CloseReason::Unreachable,
                &[NoHealthyUpstream][..],
                false,
                Verdict::Error,
            ),
            (
                CloseReason::ConnectRefused,
                &[UpstreamConnectionFailure][..],
                false,
                Verdict::Error,
            ),
            (
                CloseReason::Error,
                &[UpstreamConnectionFailure][..],
                false,
                Verdict::Error,
            ),
        ] {
            assert_eq!(
                tcp_verdict(reason, &flags(set), registry_only),
                expected,
                "{reason:?} {set:?}"
            );
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_numbers_them() {
        let ring = FlowRing::new(3);
        for _ in 0..5 {
            ring.push(tcp_open(&ends()));
        }
        let seqs = |flows: Vec<Flow>| flows.iter().map(|f| f.seq).collect::<Vec<_>>();
        for (after, last, expected) in [
            (None, None, vec![2, 3, 4]),
            (None, Some(2), vec![3, 4]),
            (None, Some(0), vec![]),
            (None, Some(10), vec![2, 3, 4]),
            (Some(2), None, vec![3, 4]),
            (Some(3), Some(5), vec![4]),
            (Some(4), None, vec![]),
        ] {
            assert_eq!(seqs(ring.read(after, last)), expected, "{after:?} {last:?}");
        }
        let flow = &ring.read(None, Some(1))[0];
        assert_eq!(
            (flow.dst_port, flow.kind, flow.protocol.as_str()),
            (8080, FlowType::TcpOpen, "tcp")
        );

        ring.set_capacity(0);
        assert!(!ring.is_on());
        ring.push(tcp_open(&ends()));
        assert!(ring.read(None, None).is_empty());
    }

    #[test]
    fn queries_parse_or_name_the_parameter() {
        for (query, expected) in [
            (None, Ok(Query::default())),
            (
                Some("last=5"),
                Ok(Query {
                    last: Some(5),
                    ..Query::default()
                }),
            ),
            (
                Some("follow=1&last=0"),
                Ok(Query {
                    last: Some(0),
                    follow: true,
                    ..Query::default()
                }),
            ),
            (
                Some("follow&after=41"),
                Ok(Query {
                    after: Some(41),
                    follow: true,
                    ..Query::default()
                }),
            ),
            (Some("after=x"), Err("after=\"x\"")),
            (Some("last=-1"), Err("last=\"-1\"")),
            (Some("follow=yes"), Err("follow=\"yes\"")),
            (Some("lsat=3"), Err("lsat=\"3\"")),
        ] {
            match (Query::parse(query), expected) {
                (Ok(parsed), Ok(expected)) => assert_eq!(parsed, expected, "{query:?}"),
                (Err(error), Err(names)) => {
                    assert!(error.to_string().contains(names), "{query:?}: {error}");
                }
                (parsed, expected) => panic!("{query:?}: {parsed:?}, expected {expected:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_follower_gets_the_backlog_then_each_new_event() {
        use http_body_util::BodyExt as _;
        let ring = Arc::new(FlowRing::new(16));
        ring.push(tcp_open(&ends()));
        let shutdown = CancellationToken::new();
        let mut body = ring.stream(
            Query {
                last: Some(1),
                follow: true,
                ..Query::default()
            },
            shutdown.clone(),
        );
        let mut next_line = async || {
            let frame = body.frame().await.unwrap().unwrap();
            let data = frame.into_data().unwrap();
            serde_json::from_slice::<Flow>(data.strip_suffix(b"\n").unwrap()).unwrap()
        };
        assert_eq!(next_line().await.seq, 0);
        ring.push(tcp_open(&ends()));
        assert_eq!(next_line().await.seq, 1);
        ring.push(tcp_open(&ends()));
        assert_eq!(next_line().await.seq, 2);
        shutdown.cancel();
        assert!(body.frame().await.is_none(), "the stream ends at shutdown");

        // A follower resuming after seq 1 gets 2, then what comes next.
        let mut resumed = ring.stream(
            Query {
                after: Some(1),
                follow: true,
                ..Query::default()
            },
            CancellationToken::new(),
        );
        let mut next_line = async || {
            let data = resumed.frame().await.unwrap().unwrap().into_data().unwrap();
            serde_json::from_slice::<Flow>(data.strip_suffix(b"\n").unwrap()).unwrap()
        };
        assert_eq!(next_line().await.seq, 2);
        ring.push(tcp_open(&ends()));
        assert_eq!(next_line().await.seq, 3);

        let once = ring.stream(Query::default(), CancellationToken::new());
        let text = once.collect().await.unwrap().to_bytes();
        assert_eq!(
            text.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            4
        );
    }
}
