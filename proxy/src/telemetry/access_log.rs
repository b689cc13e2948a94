//! The access log: one JSON object per proxied TCP connection ([`Entry`]) or HTTP request
//! ([`HttpEntry`]), one per line, on stdout.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::sync::Arc;
use std::time::SystemTime;

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
}

/// The process's stdout.
#[derive(Debug, Default)]
pub struct Stdout;

impl LineSink for Stdout {
    fn write_line(&self, line: &str) -> io::Result<()> {
        // One write per line under the lock, so lines from concurrent connections never mix.
        let mut out = io::stdout().lock();
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        out.write_all(&buf)?;
        out.flush()
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

    #[must_use]
    pub fn stdout() -> Self {
        Self::new(Arc::new(Stdout))
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
}
