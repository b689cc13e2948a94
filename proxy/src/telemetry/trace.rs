//! Tracing spans as Istio's sidecars emit them, with no I/O: the trace context a request
//! carries (B3 multi and single, W3C `traceparent`/`tracestate`), the sampling decision, the
//! span of each side (CLIENT at the source, SERVER at the destination, its parent the
//! caller's span), its name, service name and tags, and the Zipkin v2 JSON of a batch.
//!
//! A request's context is read once per side ([`extract`]), a child span started from it
//! ([`SpanContext::child`]: the incoming sampling decision wins over the [`Sampler`]), and
//! the child written back into the request before it goes on ([`inject`]), so that the next
//! hop's span is a child of this one.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::UNKNOWN;

pub static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub static B3: HeaderName = HeaderName::from_static("b3");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Istio's default sampling: 1% of the requests that arrive without a decision.
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

/// Istio's default `maxTagLength`: longer tag values are cut to it.
pub const DEFAULT_MAX_TAG_LENGTH: usize = 256;

/// The header formats a request's context is read from and written in: B3 for Zipkin
/// providers, W3C for OpenTelemetry ones, both when both kinds are configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Propagation {
    pub b3: bool,
    pub w3c: bool,
}

/// What a request arrived with: a parent span, or only a sampling decision (`b3: 0`,
/// `x-b3-sampled: 1` alone), which still wins over the sampler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's trace and span; `None` for a decision alone.
    pub parent: Option<(u128, u64)>,
    /// `None`: the caller left the decision to this proxy.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
    /// Whether the request carried a single `b3` header, rewritten when the context is.
    pub b3_single: bool,
}

/// One span's place in its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub sampled: bool,
    pub tracestate: Option<String>,
    pub b3_single: bool,
}

impl SpanContext {
    /// A new span, child of `incoming`'s parent when there is one (same trace), else the
    /// root of a new trace. The incoming decision wins; else `sampler` decides on `roll`.
    /// `ids` gives the random ids (trace, span), never 0 (0 is "no id" in both formats).
    #[must_use]
    pub fn child(
        incoming: Option<&Incoming>,
        sampler: Sampler,
        roll: u32,
        ids: (u128, u64),
    ) -> Self {
        let (trace_id, parent_id) = match incoming.and_then(|i| i.parent) {
            Some((trace, span)) => (trace, Some(span)),
            None => (ids.0.max(1), None),
        };
        Self {
            trace_id,
            span_id: ids.1.max(1),
            parent_id,
            sampled: incoming
                .and_then(|i| i.sampled)
                .unwrap_or_else(|| sampler.sample(roll)),
            tracestate: incoming.and_then(|i| i.tracestate.clone()),
            b3_single: incoming.is_some_and(|i| i.b3_single),
        }
    }

    /// What the next hop receives from this span: this span as its parent, this decision.
    #[must_use]
    pub fn as_incoming(&self) -> Incoming {
        Incoming {
            parent: Some((self.trace_id, self.span_id)),
            sampled: Some(self.sampled),
            tracestate: self.tracestate.clone(),
            b3_single: self.b3_single,
        }
    }
}

/// The share of undecided requests that are traced, in millionths (Istio's `sampling` is a
/// percentage with 0.01 precision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    per_million: u32,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::from_percent(DEFAULT_SAMPLING_PERCENT).unwrap_or(Self {
            per_million: 10_000,
        })
    }
}

impl Sampler {
    /// `percent` in 0..=100; `None` outside it (or NaN).
    #[must_use]
    pub fn from_percent(percent: f64) -> Option<Self> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked to be within 0..=100 above, so at most 1e6"
        )]
        let per_million = (percent * 10_000.0).round() as u32;
        Some(Self { per_million })
    }

    /// `per_million` millionths of the undecided requests (MeshConfig's sampling as
    /// `TracingSettings` carries it), at most all of them.
    #[must_use]
    pub fn from_per_million(per_million: u32) -> Self {
        Self {
            per_million: per_million.min(1_000_000),
        }
    }

    /// Whether a request whose uniform random `roll` this is gets traced.
    #[must_use]
    pub fn sample(self, roll: u32) -> bool {
        roll % 1_000_000 < self.per_million
    }
}

/// The context `headers` carry, in the formats `propagation` reads: `traceparent` first
/// (OpenTelemetry), then `b3`, then `x-b3-*`. A malformed header is ignored, as Envoy does:
/// the request starts a new trace rather than failing.
#[must_use]
pub fn extract(headers: &HeaderMap, propagation: Propagation) -> Option<Incoming> {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let b3_single = propagation.b3 && headers.contains_key(&B3);
    if propagation.w3c
        && let Some((parent, sampled)) = text(&TRACEPARENT).and_then(parse_traceparent)
    {
        return Some(Incoming {
            parent: Some(parent),
            sampled: Some(sampled),
            tracestate: text(&TRACESTATE).map(str::to_owned),
            b3_single,
        });
    }
    if !propagation.b3 {
        return None;
    }
    if let Some((parent, sampled)) = text(&B3).and_then(parse_b3_single) {
        return Some(Incoming {
            parent,
            sampled,
            tracestate: None,
            b3_single,
        });
    }
    let sampled = if text(&X_B3_FLAGS) == Some("1") {
        // Debug: always sampled.
        Some(true)
    } else {
        text(&X_B3_SAMPLED).and_then(parse_b3_sampled)
    };
    let parent = match (text(&X_B3_TRACE_ID), text(&X_B3_SPAN_ID)) {
        (Some(trace), Some(span)) => parse_trace_id(trace).zip(parse_span_id(span)),
        _ => None,
    };
    (parent.is_some() || sampled.is_some()).then_some(Incoming {
        parent,
        sampled,
        tracestate: None,
        b3_single,
    })
}

/// Writes `context` into `headers` as the next hop's parent, replacing what was there, in
/// the formats of `propagation`: `x-b3-*` (and `b3` when the request came with it) and
/// `traceparent` (and `tracestate`, passed on).
pub fn inject(context: &SpanContext, propagation: Propagation, headers: &mut HeaderMap) {
    let mut set = |name: &HeaderName, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    };
    let trace = format!("{:032x}", context.trace_id);
    let span = format!("{:016x}", context.span_id);
    if propagation.b3 {
        set(&X_B3_TRACE_ID, trace.clone());
        set(&X_B3_SPAN_ID, span.clone());
        match context.parent_id {
            Some(parent) => set(&X_B3_PARENT_SPAN_ID, format!("{parent:016x}")),
            None => drop(headers.remove(&X_B3_PARENT_SPAN_ID)),
        }
        headers.remove(&X_B3_FLAGS);
        headers.insert(
            X_B3_SAMPLED.clone(),
            HeaderValue::from_static(if context.sampled { "1" } else { "0" }),
        );
        if context.b3_single {
            let mut single = format!("{trace}-{span}-{}", if context.sampled { '1' } else { '0' });
            if let Some(parent) = context.parent_id {
                let _ = write!(single, "-{parent:016x}");
            }
            if let Ok(value) = HeaderValue::from_str(&single) {
                headers.insert(B3.clone(), value);
            }
        }
    }
    if propagation.w3c {
        let flags = if context.sampled { "01" } else { "00" };
        if let Ok(value) = HeaderValue::from_str(&format!("00-{trace}-{span}-{flags}")) {
            headers.insert(TRACEPARENT.clone(), value);
        }
    }
}

/// W3C `traceparent`: `00-<32 hex trace>-<16 hex parent>-<2 hex flags>`. A later version
/// may append fields; version `ff` and all-zero ids are invalid.
fn parse_traceparent(value: &str) -> Option<((u128, u64), bool)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    if version.len() != 2
        || !is_lower_hex(version)
        || version == "ff"
        || (version == "00" && rest.is_some())
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || !is_lower_hex(flags)
    {
        return None;
    }
    let trace = parse_trace_id(trace)?;
    let span = parse_span_id(span)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(((trace, span), flags & 1 == 1))
}

/// B3 single: `<trace>-<span>[-<sampling>[-<parent>]]`, or the decision alone (`0`, `1`,
/// `d`).
#[expect(
    clippy::type_complexity,
    reason = "the two halves of Incoming this header can give, read by one caller"
)]
fn parse_b3_single(value: &str) -> Option<(Option<(u128, u64)>, Option<bool>)> {
    let value = value.trim();
    let mut parts = value.split('-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        return parse_b3_sampled(first).map(|sampled| (None, Some(sampled)));
    };
    let sampled = match parts.next() {
        None => None,
        Some(flag) => Some(parse_b3_sampled(flag)?),
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((
        Some((parse_trace_id(first)?, parse_span_id(span)?)),
        sampled,
    ))
}

fn parse_b3_sampled(value: &str) -> Option<bool> {
    match value {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// A B3 or W3C trace id: 16 or 32 lowercase hex digits, not all zero.
fn parse_trace_id(value: &str) -> Option<u128> {
    if !(value.len() == 16 || value.len() == 32) || !is_lower_hex(value) {
        return None;
    }
    u128::from_str_radix(value, 16).ok().filter(|id| *id != 0)
}

/// A span id: 16 lowercase hex digits, not all zero.
fn parse_span_id(value: &str) -> Option<u64> {
    if value.len() != 16 || !is_lower_hex(value) {
        return None;
    }
    u64::from_str_radix(value, 16).ok().filter(|id| *id != 0)
}

fn is_lower_hex(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Which side of the request a span stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The source side (outbound listener), and a gateway's span to its upstream.
    Client,
    /// The destination side (inbound listener, or a same-node delivery's destination).
    Server,
}

impl SpanKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "CLIENT",
            Self::Server => "SERVER",
        }
    }
}

/// The workload a span is reported for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanWorkload<'a> {
    /// The pod's `app` label, when it has one.
    pub app: Option<&'a str>,
    pub workload_name: &'a str,
    pub namespace: &'a str,
    pub canonical_service: &'a str,
    pub canonical_revision: &'a str,
}

impl SpanWorkload<'_> {
    /// Istio's service name: `<app>.<namespace>`, else `<workload>.<namespace>`.
    #[must_use]
    pub fn service_name(&self) -> String {
        let name = self
            .app
            .filter(|app| !app.is_empty())
            .unwrap_or(self.workload_name);
        format!("{name}.{}", self.namespace)
    }
}

/// The facts of one request a span reports: Envoy's and Istio's tags.
#[derive(Clone, Debug)]
pub struct RequestFacts<'a> {
    /// The route's host and port: the span is named `<host>:<port>/*`.
    pub host: &'a str,
    pub port: u16,
    /// `http.url`: scheme, authority and path as the request had them.
    pub url: &'a str,
    pub method: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// 0 when no response was sent (the client went away).
    pub status: u16,
    /// A gRPC response's `grpc-status`, when it had one.
    pub grpc_status: Option<u32>,
    pub upstream_cluster: &'a str,
    pub upstream_address: Option<SocketAddr>,
    /// Envoy's short flags (`UF,URX`), `-` for none.
    pub response_flags: &'a str,
    pub request_size: u64,
    pub response_size: u64,
    /// The downstream peer's address.
    pub peer_address: Option<SocketAddr>,
    pub request_id: &'a str,
    /// Envoy's node id of this proxy for the workload (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    pub node_id: &'a str,
    pub mesh_id: &'a str,
    pub cluster_id: &'a str,
}

/// One finished span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub context: SpanContext,
    pub kind: SpanKind,
    pub name: String,
    pub service_name: String,
    pub local_ip: Option<std::net::IpAddr>,
    pub remote: Option<SocketAddr>,
    pub start: SystemTime,
    pub duration: Duration,
    /// In Istio's order; each value at most `maxTagLength` long.
    pub tags: Vec<(&'static str, String)>,
}

impl Span {
    /// The span of one side of a request.
    #[must_use]
    pub fn of_request(
        context: SpanContext,
        kind: SpanKind,
        workload: &SpanWorkload<'_>,
        facts: &RequestFacts<'_>,
        timing: (SystemTime, Duration),
        max_tag_length: usize,
    ) -> Self {
        let remote = match kind {
            SpanKind::Client => facts.upstream_address,
            SpanKind::Server => facts.peer_address,
        };
        Self {
            context,
            kind,
            name: format!("{}:{}/*", facts.host, facts.port),
            service_name: workload.service_name(),
            local_ip: None,
            remote,
            start: timing.0,
            duration: timing.1,
            tags: tags(workload, facts, max_tag_length),
        }
    }
}

/// Whether the request failed as tracing counts it: a 5xx, no response at all, or a gRPC
/// status other than OK.
#[must_use]
pub fn is_error(status: u16, grpc_status: Option<u32>) -> bool {
    status == 0 || status >= 500 || grpc_status.is_some_and(|code| code != 0)
}

/// The tags Istio's sidecars set, in their order.
fn tags(
    workload: &SpanWorkload<'_>,
    facts: &RequestFacts<'_>,
    max_tag_length: usize,
) -> Vec<(&'static str, String)> {
    let address =
        |addr: Option<SocketAddr>| addr.map_or_else(|| UNKNOWN.to_owned(), |a| a.to_string());
    let mut tags = vec![
        ("http.url", facts.url.to_owned()),
        ("http.method", facts.method.to_owned()),
        ("http.protocol", facts.protocol.to_owned()),
        ("http.status_code", facts.status.to_string()),
        ("upstream_cluster", facts.upstream_cluster.to_owned()),
        ("upstream_address", address(facts.upstream_address)),
        ("response_flags", facts.response_flags.to_owned()),
        ("request_size", facts.request_size.to_string()),
        ("response_size", facts.response_size.to_string()),
        ("peer.address", address(facts.peer_address)),
        ("guid:x-request-id", facts.request_id.to_owned()),
        ("node_id", facts.node_id.to_owned()),
        ("component", "proxy".to_owned()),
    ];
    if let Some(code) = facts.grpc_status {
        tags.push(("grpc.status_code", code.to_string()));
    }
    if is_error(facts.status, facts.grpc_status) {
        tags.push(("error", "true".to_owned()));
    }
    tags.extend([
        (
            "istio.canonical_service",
            workload.canonical_service.to_owned(),
        ),
        (
            "istio.canonical_revision",
            workload.canonical_revision.to_owned(),
        ),
        ("istio.namespace", workload.namespace.to_owned()),
        ("istio.mesh_id", facts.mesh_id.to_owned()),
        ("istio.cluster_id", facts.cluster_id.to_owned()),
    ]);
    for (_, value) in &mut tags {
        truncate(value, max_tag_length);
    }
    tags
}

/// Cuts `value` to at most `max` bytes, on a character boundary.
fn truncate(value: &mut String, max: usize) {
    if value.len() > max {
        let mut end = max;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
}

fn micros_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A batch of spans as Zipkin v2 JSON (the body of `POST /api/v2/spans`).
#[must_use]
pub fn zipkin_json(spans: &[Span]) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut object = Map::new();
            object.insert(
                "traceId".into(),
                Value::String(format!("{:032x}", span.context.trace_id)),
            );
            object.insert(
                "id".into(),
                Value::String(format!("{:016x}", span.context.span_id)),
            );
            if let Some(parent) = span.context.parent_id {
                object.insert("parentId".into(), Value::String(format!("{parent:016x}")));
            }
            object.insert("kind".into(), Value::String(span.kind.as_str().into()));
            object.insert("name".into(), Value::String(span.name.clone()));
            object.insert("timestamp".into(), json!(micros_since_epoch(span.start)));
            // Zipkin wants a duration of at least 1µs.
            let duration = u64::try_from(span.duration.as_micros()).unwrap_or(u64::MAX);
            object.insert("duration".into(), json!(duration.max(1)));
            let mut local = Map::new();
            local.insert(
                "serviceName".into(),
                Value::String(span.service_name.clone()),
            );
            if let Some(ip) = span.local_ip {
                let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
                local.insert(family.into(), Value::String(ip.to_string()));
            }
            object.insert("localEndpoint".into(), Value::Object(local));
            if let Some(remote) = span.remote {
                let family = if remote.is_ipv4() { "ipv4" } else { "ipv6" };
                object.insert(
                    "remoteEndpoint".into(),
                    json!({family: remote.ip().to_string(), "port": remote.port()}),
                );
            }
            let tags: Map<String, Value> = span
                .tags
                .iter()
                .map(|(key, value)| ((*key).to_owned(), Value::String(value.clone())))
                .collect();
            object.insert("tags".into(), Value::Object(tags));
            Value::Object(object)
        })
        .collect();
    serde_json::to_vec(&spans).unwrap_or_default()
}

#[cfg(test)]
mod tests;
