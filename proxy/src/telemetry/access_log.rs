//! The access log: one JSON object per proxied TCP connection ([`Entry`]) or HTTP request
//! ([`HttpEntry`]), one per line, on stdout.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::sync::{Arc, mpsc};
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

/// One line of the access log for one HTTP request, with Envoy's field names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpEntry {
    /// RFC 3339, UTC.
    #[serde(serialize_with = "rfc3339")]
    pub start_time: SystemTime,
    pub method: String,
    /// The path as the client sent it (before any rewrite).
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: String,
    /// 0 when no response was sent (the client went away first).
    pub response_code: u16,
    /// Envoy's flags (`UF`, `URX`, ...), comma-joined; `-` for none.
    pub response_flags: String,
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
    pub x_forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: String,
    pub authority: Option<String>,
    pub route_name: Option<String>,
    pub direction: Direction,
    pub reporter: Reporter,
    /// `namespace/name` of the pod whose listener accepted the connection.
    pub pod: String,
    pub src_addr: String,
    /// The original destination of the connection.
    pub dst_addr: String,
    pub src_workload: String,
    pub src_namespace: String,
    pub dst_workload: String,
    pub dst_namespace: String,
    pub dst_service: String,
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

/// The most lines waiting for the writer thread; past it, writers wait as a blocking write
/// would.
const QUEUED_LINES: usize = 65_536;
/// The most bytes the writer gathers into one `write`.
const BATCH_BYTES: usize = 256 << 10;

enum Queued {
    Line(String),
    Flushed(mpsc::SyncSender<()>),
}

/// The process's stdout, written by a thread of its own: a connection or request never waits
/// for a `write` syscall, and lines that arrive together leave in one `write` (Envoy's file
/// access log batches the same way). Lines keep their order and never mix.
#[derive(Debug)]
pub struct Stdout {
    queue: mpsc::SyncSender<Queued>,
}

impl Stdout {
    /// Starts the writer thread.
    pub fn start() -> io::Result<Self> {
        let (queue, lines) = mpsc::sync_channel(QUEUED_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(&lines, &mut io::stdout()))?;
        Ok(Self { queue })
    }
}

/// Writes what `lines` brings to `out`, a batch per `write`, until every sender is gone.
fn write_batches(lines: &mpsc::Receiver<Queued>, out: &mut impl Write) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut flushed = Vec::new();
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Queued::Line(line) => {
                    batch.extend_from_slice(line.as_bytes());
                    batch.push(b'\n');
                }
                Queued::Flushed(done) => flushed.push(done),
            }
            if batch.len() < BATCH_BYTES {
                next = lines.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(error) = out.write_all(&batch).and_then(|()| out.flush()) {
                tracing::warn!(%error, lines = batch.iter().filter(|b| **b == b'\n').count(), "access log lines lost");
            }
            batch.clear();
            // A burst can leave a large buffer behind; an idle proxy should not keep it.
            batch.shrink_to(BATCH_BYTES);
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

impl LineSink for Stdout {
    fn write_line(&self, line: &str) -> io::Result<()> {
        self.queue
            .send(Queued::Line(line.to_owned()))
            .map_err(|_| io::Error::other("the access log writer thread is gone"))
    }

    fn flush(&self, timeout: Duration) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.queue.send(Queued::Flushed(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
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
        let line = serde_json::to_string(entry)?;
        self.sink.write_line(&line)?;
        Ok(())
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

    #[test]
    fn the_writer_thread_keeps_order_batches_and_acknowledges_flushes() {
        let (queue, lines) = mpsc::sync_channel(16);
        for i in 0..5 {
            queue.send(Queued::Line(format!("line {i}"))).unwrap();
        }
        let (done, flushed) = mpsc::sync_channel(1);
        queue.send(Queued::Flushed(done)).unwrap();
        queue.send(Queued::Line("after the flush".into())).unwrap();
        drop(queue);
        let mut out = Vec::new();
        write_batches(&lines, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "line 0\nline 1\nline 2\nline 3\nline 4\nafter the flush\n"
        );
        flushed
            .try_recv()
            .expect("the flush is acknowledged once its lines are out");
    }
}
