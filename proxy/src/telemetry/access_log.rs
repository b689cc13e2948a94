//! The access log: one JSON object per proxied TCP connection ([`Entry`]) or HTTP request
//! ([`HttpEntry`]), one per line, on stdout.
#![forbid(unsafe_code)]

use shunt_mesh::ids::EndpointAddr;
use std::borrow::Cow;
use std::fmt::Display;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(test)]
use serde::Serialize;

use super::Reporter;
use super::json_line::JsonLine;
use super::security::{Principal, SecurityPolicy, principal_label};
use crate::response_flag::ResponseFlags;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the access log (is stdout closed or its reader gone?): {0}")]
    Write(#[from] io::Error),
}

/// `direction`: which listener accepted the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize), serde(rename_all = "snake_case"))]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// `close_reason`: why the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize), serde(rename_all = "snake_case"))]
pub enum CloseReason {
    /// Both sides closed cleanly.
    Eof,
    /// One side reset the connection; the other was reset too.
    Reset,
    ConnectTimeout,
    ConnectRefused,
    /// No route to the upstream, or nothing to route to (a Service with no ready endpoints).
    Unreachable,
    /// Cut at the end of a drain (shutdown or pod removal).
    Drained,
    /// Refused by policy: PeerAuthentication `STRICT` and a plaintext client.
    Denied,
    Error,
}

impl CloseReason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eof => "eof",
            Self::Reset => "reset",
            Self::ConnectTimeout => "connect_timeout",
            Self::ConnectRefused => "connect_refused",
            Self::Unreachable => "unreachable",
            Self::Drained => "drained",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

/// What one access-log line says, field by field.
pub trait LogEntry {
    fn write_fields(&self, json: &mut JsonLine<'_>);
}

/// One line of the access log. (Its `Serialize`, in tests only, is the reference the
/// hand-written encoding is checked against.)
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
pub struct Entry {
    /// RFC 3339, UTC.
    #[cfg_attr(test, serde(serialize_with = "tests::rfc3339"))]
    pub start_time: SystemTime,
    pub duration_ms: u64,
    pub direction: Direction,
    pub reporter: Reporter,
    /// `namespace/name` of the pod whose listener accepted the connection.
    pub pod: String,
    /// The client; an app in a captured pod by its pod IP and its own port, on both sides of a
    /// same-node delivery.
    pub src_addr: String,
    /// The original destination.
    pub dst_addr: String,
    /// What was dialled after load balancing; null when nothing was.
    pub upstream_addr: Option<String>,
    pub src_workload: String,
    pub src_namespace: String,
    /// The client's authenticated identity (`source_principal`); "unknown" when none.
    #[cfg_attr(test, serde(serialize_with = "tests::principal"))]
    pub src_principal: Option<Principal>,
    pub dst_workload: String,
    pub dst_namespace: String,
    /// The server's authenticated identity (`destination_principal`); "unknown" when none.
    #[cfg_attr(test, serde(serialize_with = "tests::principal"))]
    pub dst_principal: Option<Principal>,
    /// The destination Service's FQDN, or "unknown".
    pub dst_service: String,
    /// As the metrics label it for this reporter (`unknown` on the source side).
    #[cfg_attr(test, serde(serialize_with = "tests::policy"))]
    pub connection_security_policy: SecurityPolicy,
    /// What authenticated the peers, on either side: `none`, `mutual_tls` or `same_node`
    /// ([`super::security::PeerSecurity::kind`]).
    pub peer_security: &'static str,
    /// Client → server.
    pub bytes_received: u64,
    /// Server → client.
    pub bytes_sent: u64,
    pub close_reason: CloseReason,
    /// Envoy's flags for how the connection ended (`UF`, `UO`, `UH`), comma-joined; `-` for
    /// none.
    #[cfg_attr(test, serde(serialize_with = "tests::shown"))]
    pub response_flags: ResponseFlags,
    /// The upstream socket's `TCP_INFO` at the end, when it crossed the network (null
    /// otherwise): smoothed RTT in µs, segments retransmitted, segments presumed lost.
    pub rtt_us: Option<u64>,
    pub retransmits: Option<u64>,
    pub lost: Option<u64>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub error: Option<String>,
}

impl LogEntry for Entry {
    fn write_fields(&self, json: &mut JsonLine<'_>) {
        json.rfc3339("start_time", self.start_time);
        json.u64("duration_ms", self.duration_ms);
        json.str("direction", self.direction.as_str());
        json.str("reporter", self.reporter.as_str());
        json.str("pod", &self.pod);
        json.str("src_addr", &self.src_addr);
        json.str("dst_addr", &self.dst_addr);
        json.opt_str("upstream_addr", self.upstream_addr.as_deref());
        json.str("src_workload", &self.src_workload);
        json.str("src_namespace", &self.src_namespace);
        json.str(
            "src_principal",
            principal_label(self.src_principal.as_ref()),
        );
        json.str("dst_workload", &self.dst_workload);
        json.str("dst_namespace", &self.dst_namespace);
        json.str(
            "dst_principal",
            principal_label(self.dst_principal.as_ref()),
        );
        json.str("dst_service", &self.dst_service);
        json.str(
            "connection_security_policy",
            self.connection_security_policy.as_str(),
        );
        json.str("peer_security", self.peer_security);
        json.u64("bytes_received", self.bytes_received);
        json.u64("bytes_sent", self.bytes_sent);
        json.str("close_reason", self.close_reason.as_str());
        json.display("response_flags", &self.response_flags);
        json.opt_u64("rtt_us", self.rtt_us);
        json.opt_u64("retransmits", self.retransmits);
        json.opt_u64("lost", self.lost);
        if let Some(error) = &self.error {
            json.str("error", error);
        }
    }
}

/// One line of the access log for one HTTP request, with Envoy's field names. It borrows
/// what the request and its connection already hold: it lives only to be written.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
pub struct HttpEntry<'a, Cluster: Display> {
    /// RFC 3339, UTC.
    #[cfg_attr(test, serde(serialize_with = "tests::rfc3339"))]
    pub start_time: SystemTime,
    pub method: &'a str,
    /// The path as the client sent it (before any rewrite).
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'a str,
    /// 0 when no response was sent (the client went away first).
    pub response_code: u16,
    /// Envoy's flags (`UF`, `URX`, ...), written comma-joined; `-` for none.
    #[cfg_attr(test, serde(serialize_with = "tests::shown"))]
    pub response_flags: ResponseFlags,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    /// Milliseconds from the request's arrival to the end of its response.
    pub duration: u64,
    /// Milliseconds from sending upstream to the upstream's response headers; null when
    /// nothing was sent upstream.
    pub upstream_service_time: Option<u64>,
    /// The endpoint of the last attempt.
    pub upstream_host: Option<EndpointAddr>,
    /// Envoy's cluster name, `outbound|port|subset|host`.
    #[cfg_attr(test, serde(serialize_with = "tests::display"))]
    pub upstream_cluster: Option<Cluster>,
    pub x_forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: &'a str,
    pub authority: Option<&'a str>,
    pub route_name: Option<&'a str>,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` when the proxy decided the response itself for a
    /// reason worth naming (`rbac_access_denied_matched_policy[ns.name]`, `jwt_authn_...`).
    pub response_code_details: Option<&'a str>,
    pub direction: Direction,
    pub reporter: Reporter,
    /// `namespace/name` of the pod whose listener accepted the connection.
    pub pod: &'a str,
    /// The client; an app in a captured pod by its pod IP and its own port, on both sides of a
    /// same-node delivery.
    pub src_addr: &'a str,
    /// The original destination of the connection.
    pub dst_addr: &'a str,
    pub src_workload: &'a str,
    pub src_namespace: &'a str,
    /// The client's authenticated identity (`source_principal`); "unknown" when none.
    pub src_principal: &'a str,
    pub dst_workload: &'a str,
    pub dst_namespace: &'a str,
    /// The server's authenticated identity (`destination_principal`); "unknown" when none.
    pub dst_principal: &'a str,
    pub dst_service: Cow<'a, str>,
    /// As the metrics label it for this reporter (`unknown` on the source side).
    pub connection_security_policy: &'static str,
    /// What authenticated the peers: `none`, `mutual_tls` or `same_node`.
    pub peer_security: &'static str,
}

impl<Cluster: Display> LogEntry for HttpEntry<'_, Cluster> {
    fn write_fields(&self, json: &mut JsonLine<'_>) {
        json.rfc3339("start_time", self.start_time);
        json.str("method", self.method);
        json.str("path", self.path);
        json.str("protocol", self.protocol);
        json.u64("response_code", u64::from(self.response_code));
        json.display("response_flags", &self.response_flags);
        json.u64("bytes_sent", self.bytes_sent);
        json.u64("bytes_received", self.bytes_received);
        json.u64("duration", self.duration);
        json.opt_u64("upstream_service_time", self.upstream_service_time);
        json.opt_socket_addr("upstream_host", self.upstream_host.map(Into::into));
        json.opt_display("upstream_cluster", self.upstream_cluster.as_ref());
        json.opt_str("x_forwarded_for", self.x_forwarded_for);
        json.opt_str("user_agent", self.user_agent);
        json.str("request_id", self.request_id);
        json.opt_str("authority", self.authority);
        json.opt_str("route_name", self.route_name);
        json.opt_str("response_code_details", self.response_code_details);
        json.str("direction", self.direction.as_str());
        json.str("reporter", self.reporter.as_str());
        json.str("pod", self.pod);
        json.str("src_addr", self.src_addr);
        json.str("dst_addr", self.dst_addr);
        json.str("src_workload", self.src_workload);
        json.str("src_namespace", self.src_namespace);
        json.str("src_principal", self.src_principal);
        json.str("dst_workload", self.dst_workload);
        json.str("dst_namespace", self.dst_namespace);
        json.str("dst_principal", self.dst_principal);
        json.str("dst_service", &self.dst_service);
        json.str(
            "connection_security_policy",
            self.connection_security_policy,
        );
        json.str("peer_security", self.peer_security);
    }
}

/// Where access log lines go.
pub trait LineSink: Send + Sync {
    /// Writes `line` (JSON, so UTF-8; no trailing newline) as one line.
    fn write_line(&self, line: &[u8]) -> io::Result<()>;

    /// Returns once every line written so far is out (or `timeout` passed).
    fn flush(&self, timeout: Duration) {
        let _ = timeout;
    }
}

/// Bytes of lines held for the writer thread; past it, writers wait as a blocking write would.
const MAX_BUFFERED_BYTES: usize = 8 << 20;
/// Buffered bytes that wake the writer before its interval is up.
const WAKE_AT_BYTES: usize = 256 << 10;
/// How long a line may wait in memory. Like Envoy's file access log (which flushes on an
/// interval or a full buffer), the writer wakes on a timer rather than per line: under load
/// a wake per line is a context switch per request on a proxy that has one core.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// What an idle proxy keeps of a burst's buffer.
const IDLE_BUFFER_BYTES: usize = 64 << 10;

/// Lines waiting for the writer thread.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines appended since the start, and lines written out: a flush waits for the second to
    /// reach the first as it was when the flush began.
    appended: u64,
    written: u64,
    /// A flush is waiting: the writer goes now, not at its next interval.
    flush_requested: bool,
    /// The [`Stdout`] is gone: the writer writes what is left and ends.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: std::sync::Mutex<Pending>,
    /// Wakes the writer (a full buffer, a flush, the end).
    writer: std::sync::Condvar,
    /// Wakes writers held back by a full buffer, and flushes.
    progress: std::sync::Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A writer that panicked mid-append leaves at worst a partial line; keep logging.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The process's stdout, written by a thread of its own: a connection or request never waits
/// for a `write` syscall (only for a memcpy under a lock), and lines leave in large batches,
/// at least every [`FLUSH_INTERVAL`]. Lines keep their order and never mix.
#[derive(Debug)]
pub struct Stdout {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Stdout {
    /// Starts the writer thread.
    pub fn start() -> io::Result<Self> {
        Self::start_with(io::stdout(), FLUSH_INTERVAL)
    }

    fn start_with(mut out: impl Write + Send + 'static, interval: Duration) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let for_writer = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(&for_writer, &mut out, interval))?;
        Ok(Self {
            shared,
            writer: Some(writer),
        })
    }
}

impl Drop for Stdout {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.writer.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Writes what [`Shared`] collects to `out`, one `write` per wake, until the [`Stdout`] is
/// dropped.
fn write_batches(shared: &Shared, out: &mut impl Write, interval: Duration) {
    let mut batch = Vec::new();
    loop {
        let (lines, closed) = {
            let mut pending = shared.lock();
            if !pending.closed && !pending.flush_requested && pending.bytes.len() < WAKE_AT_BYTES {
                pending = shared
                    .writer
                    .wait_timeout(pending, interval)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            pending.flush_requested = false;
            std::mem::swap(&mut batch, &mut pending.bytes);
            (pending.appended, pending.closed)
        };
        // Writers held back by a full buffer can go on.
        shared.progress.notify_all();
        if !batch.is_empty() {
            if let Err(error) = out.write_all(&batch).and_then(|()| out.flush()) {
                let lost = batch.iter().filter(|b| **b == b'\n').count();
                tracing::warn!(%error, lines = lost, "access log lines lost");
            }
            // Under load the two buffers keep their size, so lines are not copied again as
            // a shrunk buffer regrows; a quiet interval gives a burst's buffer back.
            if batch.len() < IDLE_BUFFER_BYTES {
                batch.shrink_to(IDLE_BUFFER_BYTES);
            }
            batch.clear();
        }
        shared.lock().written = lines;
        shared.progress.notify_all();
        if closed {
            return;
        }
    }
}

impl LineSink for Stdout {
    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= MAX_BUFFERED_BYTES && !pending.closed {
            self.shared.writer.notify_one();
            pending = self
                .shared
                .progress
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if pending.closed {
            return Err(io::Error::other("the access log writer thread is gone"));
        }
        pending.bytes.reserve(line.len() + 1);
        pending.bytes.extend_from_slice(line);
        pending.bytes.push(b'\n');
        pending.appended += 1;
        let wake = pending.bytes.len() >= WAKE_AT_BYTES;
        drop(pending);
        if wake {
            self.shared.writer.notify_one();
        }
        Ok(())
    }

    fn flush(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut pending = self.shared.lock();
        let target = pending.appended;
        pending.flush_requested = true;
        self.shared.writer.notify_one();
        while pending.written < target {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                return;
            };
            pending = self
                .shared
                .progress
                .wait_timeout(pending, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// Writes [`Entry`]s to a [`LineSink`].
#[derive(Clone)]
pub struct AccessLog {
    sink: Arc<dyn LineSink>,
}

impl AccessLog {
    #[must_use]
    pub fn new(sink: Arc<dyn LineSink>) -> Self {
        Self { sink }
    }

    /// Lines to the process's stdout, written by a thread of their own.
    pub fn stdout() -> io::Result<Self> {
        Ok(Self::new(Arc::new(Stdout::start()?)))
    }

    /// Waits (at most `timeout`) until every line recorded so far is written.
    pub fn flush(&self, timeout: Duration) {
        self.sink.flush(timeout);
    }

    /// Writes an [`Entry`] or an [`HttpEntry`] as one line.
    pub fn record(&self, entry: &impl LogEntry) -> Result<(), Error> {
        thread_local! {
            // Reused per thread: encoding a line allocates nothing once warm.
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            let mut json = JsonLine::open(line);
            entry.write_fields(&mut json);
            json.close();
            self.sink.write_line(line)?;
            line.shrink_to(IDLE_BUFFER_BYTES);
            Ok(())
        })
    }
}

/// Lines kept in memory, for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Captured(std::sync::Mutex<Vec<String>>);

#[cfg(test)]
impl Captured {
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

#[cfg(test)]
impl LineSink for Captured {
    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let line = std::str::from_utf8(line).expect("access log lines are UTF-8");
        assert!(!line.contains('\n'), "an entry must be a single line");
        self.0.lock().unwrap().push(line.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_flag::ResponseFlag;
    use std::time::Duration;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub(super) fn rfc3339<S: serde::Serializer>(
        at: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let text = OffsetDateTime::from(*at)
            .format(&Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }

    pub(super) fn shown<S: serde::Serializer, T: Display>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(super) fn principal<S: serde::Serializer>(
        principal: &Option<Principal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(principal_label(principal.as_ref()))
    }

    pub(super) fn policy<S: serde::Serializer>(
        policy: &SecurityPolicy,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(policy.as_str())
    }

    pub(super) fn display<S: serde::Serializer, T: Display>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.collect_str(value),
            None => serializer.serialize_none(),
        }
    }

    fn encoded(entry: &impl LogEntry) -> String {
        let mut line = Vec::new();
        let mut json = JsonLine::open(&mut line);
        entry.write_fields(&mut json);
        json.close();
        String::from_utf8(line).unwrap()
    }

    fn http_entry() -> HttpEntry<'static, &'static str> {
        HttpEntry {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_000),
            method: "GET",
            path: "/items?id=7",
            protocol: "HTTP/1.1",
            response_code: 200,
            response_flags: ResponseFlags::NONE,
            bytes_sent: 1024,
            bytes_received: 0,
            duration: 3,
            upstream_service_time: Some(2),
            upstream_host: Some(EndpointAddr::new([10, 0, 0, 3].into(), 8080)),
            upstream_cluster: Some("outbound|80|v1|api.shop.svc.cluster.local"),
            x_forwarded_for: Some("10.0.0.2"),
            user_agent: Some("curl/8.0"),
            request_id: "6f1c9e0a-2b1d-4a47-9d35-0c8f8c5b9a11",
            authority: Some("api.shop:80"),
            route_name: Some("shop/api"),
            response_code_details: None,
            direction: Direction::Outbound,
            reporter: Reporter::Source,
            pod: "shop/web-1",
            src_addr: "10.0.0.2:40000",
            dst_addr: "10.96.0.10:80",
            src_workload: "web",
            src_namespace: "shop",
            src_principal: "spiffe://cluster.local/ns/shop/sa/web",
            dst_workload: "api",
            dst_namespace: "shop",
            dst_principal: "spiffe://cluster.local/ns/shop/sa/api",
            dst_service: Cow::Borrowed("api.shop.svc.cluster.local"),
            connection_security_policy: "unknown",
            peer_security: "same_node",
        }
    }

    /// The hand-written encoder against serde's, byte for byte: field names, order, nulls,
    /// the omitted `error`, escapes and the timestamp.
    #[test]
    fn lines_are_byte_for_byte_what_serde_json_writes() {
        let mut failed = entry();
        failed.upstream_addr = None;
        failed.close_reason = CloseReason::ConnectRefused;
        failed.direction = Direction::Inbound;
        failed.reporter = Reporter::Destination;
        failed.error = Some("refused: \"10.0.0.3:8080\"\n\t(twice)".into());
        failed.response_flags = ResponseFlag::UpstreamConnectionFailure.into();
        (failed.rtt_us, failed.retransmits, failed.lost) = (None, None, None);
        let mut authenticated = entry();
        authenticated.reporter = Reporter::Destination;
        authenticated.src_principal = Some(Principal::new("spiffe://cluster.local/ns/shop/sa/web"));
        authenticated.dst_principal = Some(Principal::new("spiffe://cluster.local/ns/shop/sa/api"));
        authenticated.connection_security_policy = SecurityPolicy::MutualTls;
        authenticated.peer_security = "mutual_tls";
        let mut odd_names = entry();
        odd_names.pod = "shop/we\\b-\u{1}".into();
        odd_names.start_time = SystemTime::UNIX_EPOCH;
        for tcp in [entry(), failed, odd_names, authenticated] {
            assert_eq!(encoded(&tcp), serde_json::to_string(&tcp).unwrap());
        }

        let mut unanswered = http_entry();
        unanswered.response_code = 0;
        unanswered.response_flags = [
            ResponseFlag::DownstreamConnectionTermination,
            ResponseFlag::UpstreamConnectionFailure,
        ]
        .into_iter()
        .collect();
        unanswered.upstream_service_time = None;
        unanswered.upstream_host = None;
        unanswered.upstream_cluster = None;
        unanswered.x_forwarded_for = None;
        unanswered.user_agent = None;
        unanswered.authority = None;
        unanswered.route_name = None;
        unanswered.direction = Direction::Inbound;
        unanswered.reporter = Reporter::Destination;
        let mut odd_request = http_entry();
        odd_request.path = "/a\"b\\c?q=\u{7f}é";
        odd_request.user_agent = Some("agent\r\n\u{0}");
        for http in [http_entry(), unanswered, odd_request] {
            assert_eq!(encoded(&http), serde_json::to_string(&http).unwrap());
        }
    }

    fn entry() -> Entry {
        Entry {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            duration_ms: 42,
            direction: Direction::Outbound,
            reporter: Reporter::Source,
            pod: "shop/web-1".into(),
            src_addr: "10.0.0.2:40000".into(),
            dst_addr: "10.96.0.10:80".into(),
            upstream_addr: Some("10.0.0.3:8080".into()),
            src_workload: "web".into(),
            src_namespace: "shop".into(),
            src_principal: None,
            dst_workload: "api".into(),
            dst_namespace: "shop".into(),
            dst_principal: None,
            dst_service: "api.shop.svc.cluster.local".into(),
            connection_security_policy: SecurityPolicy::Unknown,
            peer_security: "none",
            bytes_received: 10,
            bytes_sent: 20,
            close_reason: CloseReason::Eof,
            response_flags: ResponseFlags::NONE,
            rtt_us: Some(250),
            retransmits: Some(3),
            lost: Some(0),
            error: None,
        }
    }

    #[test]
    fn an_entry_is_one_json_line_with_every_field() {
        let captured = Arc::new(Captured::default());
        let log = AccessLog::new(captured.clone());
        log.record(&entry()).unwrap();
        let mut failed = entry();
        failed.upstream_addr = None;
        failed.close_reason = CloseReason::ConnectRefused;
        failed.direction = Direction::Inbound;
        failed.reporter = Reporter::Destination;
        failed.error = Some("connect to 10.0.0.3:8080 refused".into());
        failed.response_flags = ResponseFlag::UpstreamConnectionFailure.into();
        (failed.rtt_us, failed.retransmits, failed.lost) = (None, None, None);
        failed.src_principal = Some(Principal::new("spiffe://cluster.local/ns/shop/sa/web"));
        failed.connection_security_policy = SecurityPolicy::None;
        log.record(&failed).unwrap();

        let lines = captured.lines();
        assert_eq!(
            lines[0],
            serde_json::json!({
                "start_time": "2023-11-14T22:13:20.123Z",
                "duration_ms": 42,
                "direction": "outbound",
                "reporter": "source",
                "pod": "shop/web-1",
                "src_addr": "10.0.0.2:40000",
                "dst_addr": "10.96.0.10:80",
                "upstream_addr": "10.0.0.3:8080",
                "src_workload": "web",
                "src_namespace": "shop",
                "src_principal": "unknown",
                "dst_workload": "api",
                "dst_namespace": "shop",
                "dst_principal": "unknown",
                "dst_service": "api.shop.svc.cluster.local",
                "connection_security_policy": "unknown",
                "peer_security": "none",
                "bytes_received": 10,
                "bytes_sent": 20,
                "close_reason": "eof",
                "response_flags": "-",
                "rtt_us": 250,
                "retransmits": 3,
                "lost": 0,
            })
        );
        assert_eq!(lines[1]["upstream_addr"], serde_json::Value::Null);
        assert_eq!(lines[1]["rtt_us"], serde_json::Value::Null);
        assert_eq!(lines[1]["close_reason"], "connect_refused");
        assert_eq!(lines[1]["direction"], "inbound");
        assert_eq!(lines[1]["reporter"], "destination");
        assert_eq!(lines[1]["error"], "connect to 10.0.0.3:8080 refused");
        assert_eq!(lines[1]["response_flags"], "UF");
        assert_eq!(
            lines[1]["src_principal"],
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(lines[1]["connection_security_policy"], "none");
    }

    #[test]
    fn close_reasons_use_the_documented_names() {
        for (reason, name) in [
            (CloseReason::Eof, "eof"),
            (CloseReason::Reset, "reset"),
            (CloseReason::ConnectTimeout, "connect_timeout"),
            (CloseReason::ConnectRefused, "connect_refused"),
            (CloseReason::Unreachable, "unreachable"),
            (CloseReason::Drained, "drained"),
            (CloseReason::Error, "error"),
        ] {
            assert_eq!(reason.as_str(), name);
            assert_eq!(serde_json::to_value(reason).unwrap(), name);
        }
    }

    /// A `Write` the test can read back, counting `write` calls.
    #[derive(Clone, Default)]
    struct Recorded(Arc<std::sync::Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut recorded = self.0.lock().unwrap();
            recorded.0.extend_from_slice(buf);
            recorded.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorded {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().0.clone()).unwrap()
        }
        fn writes(&self) -> usize {
            self.0.lock().unwrap().1
        }
    }

    #[test]
    fn the_writer_thread_keeps_order_batches_and_flushes_on_request() {
        let out = Recorded::default();
        // An interval no test waits for: only a flush or the drop writes.
        let stdout = Stdout::start_with(out.clone(), Duration::from_secs(3600)).unwrap();
        for i in 0..500 {
            stdout.write_line(format!("line {i}").as_bytes()).unwrap();
        }
        assert_eq!(
            out.text(),
            "",
            "lines wait for the interval, a flush or a full buffer"
        );
        stdout.flush(Duration::from_secs(10));
        let expected: String = (0..500).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.text(), expected);
        assert_eq!(out.writes(), 1, "500 lines leave in one write");
        stdout.write_line(b"after the flush").unwrap();
        drop(stdout);
        assert!(
            out.text().ends_with("line 499\nafter the flush\n"),
            "the drop writes the rest"
        );
    }

    #[test]
    fn the_writer_thread_writes_on_its_interval() {
        let out = Recorded::default();
        let stdout = Stdout::start_with(out.clone(), Duration::from_millis(20)).unwrap();
        stdout.write_line(b"one").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.text().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.text(), "one\n");
    }

    #[test]
    fn a_full_buffer_wakes_the_writer_before_its_interval() {
        let out = Recorded::default();
        let stdout = Stdout::start_with(out.clone(), Duration::from_secs(3600)).unwrap();
        let line = "x".repeat(1023);
        for _ in 0..(WAKE_AT_BYTES / 1024 + 1) {
            stdout.write_line(line.as_bytes()).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.text().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            out.text().len() >= WAKE_AT_BYTES,
            "written without a flush or the interval"
        );
    }
}
