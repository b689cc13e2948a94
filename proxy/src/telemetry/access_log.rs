//! The access log: one JSON object per proxied TCP connection ([`Entry`]) or HTTP request
//! ([`HttpEntry`]), one per line, on stdout.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot encode an access log entry as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot write the access log (is stdout closed or its reader gone?): {0}")]
    Write(#[from] io::Error),
}

/// `direction`: which listener accepted the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// `close_reason`: why the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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
    Error,
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    #[serde(serialize_with = "rfc3339")]
    pub start_time: SystemTime,
    pub duration_ms: u64,
    pub direction: Direction,
    pub reporter: Reporter,
    /// `namespace/name` of the pod whose listener accepted the connection.
    pub pod: String,
    pub src_addr: String,
    /// The original destination.
    pub dst_addr: String,
    /// What was dialled after load balancing; null when nothing was.
    pub upstream_addr: Option<String>,
    pub src_workload: String,
    pub src_namespace: String,
    pub dst_workload: String,
    pub dst_namespace: String,
    /// The destination Service's FQDN, or "unknown".
    pub dst_service: String,
    /// Client → server.
    pub bytes_received: u64,
    /// Server → client.
    pub bytes_sent: u64,
    pub close_reason: CloseReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line of the access log for one HTTP request, with Envoy's field names. It borrows
/// what the request and its connection already hold: it lives only to be written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpEntry<'a> {
    /// RFC 3339, UTC.
    #[serde(serialize_with = "rfc3339")]
    pub start_time: SystemTime,
    pub method: &'a str,
    /// The path as the client sent it (before any rewrite).
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'a str,
    /// 0 when no response was sent (the client went away first).
    pub response_code: u16,
    /// Envoy's flags (`UF`, `URX`, ...), comma-joined; `-` for none.
    pub response_flags: Cow<'a, str>,
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
    pub upstream_host: Option<String>,
    /// Envoy's cluster name, `outbound|port|subset|host`.
    pub upstream_cluster: Option<String>,
    pub x_forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: &'a str,
    pub authority: Option<&'a str>,
    pub route_name: Option<&'a str>,
    pub direction: Direction,
    pub reporter: Reporter,
    /// `namespace/name` of the pod whose listener accepted the connection.
    pub pod: &'a str,
    pub src_addr: &'a str,
    /// The original destination of the connection.
    pub dst_addr: &'a str,
    pub src_workload: &'a str,
    pub src_namespace: &'a str,
    pub dst_workload: &'a str,
    pub dst_namespace: &'a str,
    pub dst_service: Cow<'a, str>,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    let text = OffsetDateTime::from(*at)
        .format(&Rfc3339)
        .map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

/// Where access log lines go.
pub trait LineSink: Send + Sync {
    /// Writes `line` (no trailing newline) as one line.
    fn write_line(&self, line: &str) -> io::Result<()>;

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
            batch.clear();
            // A burst can leave a large buffer behind; an idle proxy should not keep it.
            batch.shrink_to(IDLE_BUFFER_BYTES);
        }
        shared.lock().written = lines;
        shared.progress.notify_all();
        if closed {
            return;
        }
    }
}

impl LineSink for Stdout {
    fn write_line(&self, line: &str) -> io::Result<()> {
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
        pending.bytes.extend_from_slice(line.as_bytes());
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
    pub fn record<E: Serialize>(&self, entry: &E) -> Result<(), Error> {
        thread_local! {
            // Reused per thread: encoding a line allocates nothing once warm.
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            serde_json::to_writer(&mut *line, entry)?;
            // serde_json writes UTF-8 only.
            let text = std::str::from_utf8(line).map_err(io::Error::other)?;
            self.sink.write_line(text)?;
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
    fn write_line(&self, line: &str) -> io::Result<()> {
        assert!(!line.contains('\n'), "an entry must be a single line");
        self.0.lock().unwrap().push(line.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            dst_workload: "api".into(),
            dst_namespace: "shop".into(),
            dst_service: "api.shop.svc.cluster.local".into(),
            bytes_received: 10,
            bytes_sent: 20,
            close_reason: CloseReason::Eof,
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
                "dst_workload": "api",
                "dst_namespace": "shop",
                "dst_service": "api.shop.svc.cluster.local",
                "bytes_received": 10,
                "bytes_sent": 20,
                "close_reason": "eof",
            })
        );
        assert_eq!(lines[1]["upstream_addr"], serde_json::Value::Null);
        assert_eq!(lines[1]["close_reason"], "connect_refused");
        assert_eq!(lines[1]["direction"], "inbound");
        assert_eq!(lines[1]["reporter"], "destination");
        assert_eq!(lines[1]["error"], "connect to 10.0.0.3:8080 refused");
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
            stdout.write_line(&format!("line {i}")).unwrap();
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
        stdout.write_line("after the flush").unwrap();
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
        stdout.write_line("one").unwrap();
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
            stdout.write_line(&line).unwrap();
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
