//! A batch of spans as OTLP's `ExportTraceServiceRequest` (the body of `POST /v1/traces`
//! and of gRPC `TraceService/Export`), with no I/O: one resource per service name
//! (`service.name`), the proxy as the instrumentation scope, each tag a string attribute,
//! and an error span's status `ERROR`.
#![forbid(unsafe_code)]

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as otlp, ResourceSpans, ScopeSpans, status};

use super::trace::{Span, SpanKind};

/// The instrumentation scope every span is reported under.
pub const SCOPE: &str = "shunt-proxy";

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn nanos_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One span as OTLP has it: ids as big-endian bytes, times in nanoseconds, tags as
/// attributes.
fn otlp_span(span: &Span) -> otlp::Span {
    let start = nanos_since_epoch(span.start);
    let duration = u64::try_from(span.duration.as_nanos()).unwrap_or(u64::MAX);
    let error = span
        .tags
        .iter()
        .any(|(key, value)| *key == "error" && value == "true");
    let mut attributes: Vec<KeyValue> = span
        .tags
        .iter()
        .map(|(key, value)| string_attribute(key, value))
        .collect();
    if let Some(remote) = span.remote {
        attributes.push(string_attribute("net.peer.ip", &remote.ip().to_string()));
    }
    otlp::Span {
        trace_id: span.context.trace_id.to_be_bytes().to_vec(),
        span_id: span.context.span_id.to_be_bytes().to_vec(),
        trace_state: span.context.tracestate.clone().unwrap_or_default(),
        parent_span_id: span
            .context
            .parent_id
            .map(|parent| parent.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: u32::from(span.context.sampled),
        name: span.name.clone(),
        kind: match span.kind {
            SpanKind::Client => otlp::span::SpanKind::Client,
            SpanKind::Server => otlp::span::SpanKind::Server,
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(duration),
        attributes,
        status: Some(otlp::Status {
            message: String::new(),
            code: if error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
        }),
        ..otlp::Span::default()
    }
}

/// `spans` grouped by service name, each group one `ResourceSpans`, in the order the
/// services first appear.
#[must_use]
pub fn export_request(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut resource_spans: Vec<(String, Vec<otlp::Span>)> = Vec::new();
    for span in spans {
        let converted = otlp_span(span);
        match resource_spans
            .iter_mut()
            .find(|(service, _)| *service == span.service_name)
        {
            Some((_, group)) => group.push(converted),
            None => resource_spans.push((span.service_name.clone(), vec![converted])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: resource_spans
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string_attribute("service.name", &service)],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// One gRPC message frame: an uncompressed flag, the length (big-endian), the message.
#[must_use]
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(message);
    frame
}

#[cfg(test)]
mod tests;
