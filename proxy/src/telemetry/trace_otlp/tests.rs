use std::time::{Duration, UNIX_EPOCH};

use prost::Message as _;

use super::*;
use crate::telemetry::trace::SpanContext;

fn span(service: &str, kind: SpanKind, error: bool) -> Span {
    let mut tags = vec![("http.method", "GET".to_owned())];
    if error {
        tags.push(("error", "true".to_owned()));
    }
    Span {
        context: SpanContext {
            trace_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            span_id: 0x1112_1314_1516_1718,
            parent_id: Some(0x2122_2324_2526_2728),
            sampled: true,
            tracestate: Some("vendor=x".into()),
            b3_single: false,
        },
        kind,
        name: "catalog.shop.svc.cluster.local:8080/*".into(),
        service_name: service.into(),
        local_ip: None,
        remote: Some("10.0.0.7:8080".parse().unwrap()),
        start: UNIX_EPOCH + Duration::from_secs(2),
        duration: Duration::from_micros(1500),
        tags,
    }
}

#[test]
fn spans_encode_as_an_otlp_export_request_grouped_by_service() {
    let spans = [
        span("web.shop", SpanKind::Client, false),
        span("catalog.shop", SpanKind::Server, true),
        span("web.shop", SpanKind::Client, false),
    ];
    let bytes = export_request(&spans).encode_to_vec();
    // What a collector decodes from the wire.
    let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
    let services: Vec<(String, usize)> = decoded
        .resource_spans
        .iter()
        .map(|r| {
            let attribute = &r.resource.as_ref().unwrap().attributes[0];
            assert_eq!(attribute.key, "service.name");
            let Some(any_value::Value::StringValue(name)) =
                attribute.value.as_ref().and_then(|v| v.value.clone())
            else {
                panic!("service.name is not a string: {attribute:?}");
            };
            (name, r.scope_spans[0].spans.len())
        })
        .collect();
    assert_eq!(
        services,
        [("web.shop".to_owned(), 2), ("catalog.shop".to_owned(), 1)]
    );
    let client = &decoded.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(client.trace_id, (1..=16).collect::<Vec<u8>>());
    assert_eq!(client.span_id, (0x11..=0x18).collect::<Vec<u8>>());
    assert_eq!(client.parent_span_id, (0x21..=0x28).collect::<Vec<u8>>());
    assert_eq!(client.trace_state, "vendor=x");
    assert_eq!(client.kind, otlp::span::SpanKind::Client as i32);
    assert_eq!(client.start_time_unix_nano, 2_000_000_000);
    assert_eq!(client.end_time_unix_nano, 2_001_500_000);
    assert_eq!(client.name, "catalog.shop.svc.cluster.local:8080/*");
    assert_eq!(
        client.status.as_ref().unwrap().code,
        status::StatusCode::Unset as i32
    );
    let server = &decoded.resource_spans[1].scope_spans[0].spans[0];
    assert_eq!(server.kind, otlp::span::SpanKind::Server as i32);
    assert_eq!(
        server.status.as_ref().unwrap().code,
        status::StatusCode::Error as i32
    );
    let keys: Vec<&str> = server.attributes.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["http.method", "error", "net.peer.ip"]);
}

#[test]
fn a_grpc_frame_is_flag_length_message() {
    for (message, frame) in [
        (&b""[..], vec![0, 0, 0, 0, 0]),
        (&b"abc"[..], vec![0, 0, 0, 0, 3, b'a', b'b', b'c']),
    ] {
        assert_eq!(grpc_frame(message), frame);
    }
}
