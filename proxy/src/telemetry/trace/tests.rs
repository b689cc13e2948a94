use std::time::UNIX_EPOCH;

use rand::{Rng, SeedableRng};

use super::*;

const B3_ONLY: Propagation = Propagation {
    b3: true,
    w3c: false,
};
const W3C_ONLY: Propagation = Propagation {
    b3: false,
    w3c: true,
};
const BOTH: Propagation = Propagation {
    b3: true,
    w3c: true,
};

const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
const SPAN: u64 = 0x00f0_67aa_0ba9_02b7;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            )
        })
        .collect()
}

fn parent(sampled: Option<bool>) -> Option<Incoming> {
    Some(Incoming {
        parent: Some((TRACE, SPAN)),
        sampled,
        tracestate: None,
        b3_single: false,
    })
}

/// A case's name, the formats read, the request's headers, what is read.
type ExtractCase = (
    &'static str,
    Propagation,
    Vec<(&'static str, &'static str)>,
    Option<Incoming>,
);

#[test]
fn contexts_are_read_in_the_providers_formats() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cases: Vec<ExtractCase> = vec![
        ("nothing", BOTH, vec![], None),
        (
            "traceparent sampled",
            W3C_ONLY,
            vec![("traceparent", tp)],
            parent(Some(true)),
        ),
        (
            "traceparent not sampled, tracestate kept",
            W3C_ONLY,
            vec![
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                ),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
            Some(Incoming {
                tracestate: Some("congo=t61rcWkgMzE".into()),
                ..parent(Some(false)).unwrap()
            }),
        ),
        (
            "traceparent ignored by B3",
            B3_ONLY,
            vec![("traceparent", tp)],
            None,
        ),
        (
            "traceparent version ff",
            W3C_ONLY,
            vec![(
                "traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            None,
        ),
        (
            "traceparent zero trace",
            W3C_ONLY,
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
            None,
        ),
        (
            "traceparent upper case",
            W3C_ONLY,
            vec![(
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            )],
            None,
        ),
        (
            "traceparent v00 with extra field",
            W3C_ONLY,
            vec![(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            )],
            None,
        ),
        (
            "traceparent future version with extra field",
            W3C_ONLY,
            vec![(
                "traceparent",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            )],
            parent(Some(true)),
        ),
        (
            "b3 multi",
            B3_ONLY,
            vec![
                ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
                ("x-b3-sampled", "1"),
            ],
            parent(Some(true)),
        ),
        (
            "b3 multi, 64-bit trace id, no decision",
            B3_ONLY,
            vec![
                ("x-b3-traceid", "a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
            ],
            Some(Incoming {
                parent: Some((0xa3ce_929d_0e0e_4736, SPAN)),
                ..parent(None).unwrap()
            }),
        ),
        (
            "b3 multi debug flag",
            B3_ONLY,
            vec![
                ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
                ("x-b3-sampled", "0"),
                ("x-b3-flags", "1"),
            ],
            parent(Some(true)),
        ),
        (
            "b3 decision alone",
            B3_ONLY,
            vec![("x-b3-sampled", "0")],
            Some(Incoming {
                parent: None,
                ..parent(Some(false)).unwrap()
            }),
        ),
        (
            "b3 multi bad span id: decision kept",
            B3_ONLY,
            vec![
                ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("x-b3-spanid", "xyz"),
                ("x-b3-sampled", "true"),
            ],
            Some(Incoming {
                parent: None,
                ..parent(Some(true)).unwrap()
            }),
        ),
        (
            "b3 single with parent",
            B3_ONLY,
            vec![(
                "b3",
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90",
            )],
            Some(Incoming {
                b3_single: true,
                ..parent(Some(true)).unwrap()
            }),
        ),
        (
            "b3 single without decision",
            B3_ONLY,
            vec![("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7")],
            Some(Incoming {
                b3_single: true,
                ..parent(None).unwrap()
            }),
        ),
        (
            "b3 single decision alone",
            B3_ONLY,
            vec![("b3", "0")],
            Some(Incoming {
                parent: None,
                b3_single: true,
                ..parent(Some(false)).unwrap()
            }),
        ),
        (
            "b3 single ignored by W3C",
            W3C_ONLY,
            vec![("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")],
            None,
        ),
        (
            "both: traceparent wins",
            BOTH,
            vec![
                ("traceparent", tp),
                ("x-b3-traceid", "0000000000000000000000000000abcd"),
                ("x-b3-spanid", "000000000000abcd"),
                ("x-b3-sampled", "0"),
            ],
            parent(Some(true)),
        ),
    ];
    for (name, propagation, given, expected) in cases {
        assert_eq!(extract(&headers(&given), propagation), expected, "{name}");
    }
}

#[test]
fn the_incoming_decision_wins_over_the_sampler() {
    let never = Sampler::from_percent(0.0).unwrap();
    let always = Sampler::from_percent(100.0).unwrap();
    let ids = (0x77, 0x99);
    let cases = [
        ("no context: sampler yes", None, always, true, None),
        ("no context: sampler no", None, never, false, None),
        (
            "sampled wins over never",
            parent(Some(true)),
            never,
            true,
            Some(SPAN),
        ),
        (
            "unsampled wins over always",
            parent(Some(false)),
            always,
            false,
            Some(SPAN),
        ),
        (
            "no decision: sampler",
            parent(None),
            always,
            true,
            Some(SPAN),
        ),
    ];
    for (name, incoming, sampler, sampled, parent_id) in cases {
        let child = SpanContext::child(incoming.as_ref(), sampler, 0, ids);
        assert_eq!(child.sampled, sampled, "{name}");
        assert_eq!(child.parent_id, parent_id, "{name}");
        assert_eq!(child.span_id, 0x99, "{name}");
        let trace = if incoming.is_some() { TRACE } else { 0x77 };
        assert_eq!(child.trace_id, trace, "{name}: the caller's trace is kept");
    }
}

#[test]
fn injected_context_reads_back_as_the_next_hops_parent() {
    for propagation in [B3_ONLY, W3C_ONLY, BOTH] {
        for sampled in [true, false] {
            for b3_single in [false, true] {
                let context = SpanContext {
                    trace_id: TRACE,
                    span_id: 0x1234,
                    parent_id: Some(SPAN),
                    sampled,
                    tracestate: None,
                    b3_single,
                };
                // Stale headers from the caller are replaced, not added to.
                let mut given = headers(&[
                    ("x-b3-spanid", "00f067aa0ba902b7"),
                    (
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                    ),
                ]);
                inject(&context, propagation, &mut given);
                let back = extract(&given, propagation).unwrap();
                assert_eq!(back.parent, Some((TRACE, 0x1234)), "{propagation:?}");
                assert_eq!(back.sampled, Some(sampled), "{propagation:?}");
                assert_eq!(given.get_all("x-b3-spanid").iter().count(), 1);
                if propagation.b3 {
                    assert_eq!(given["x-b3-parentspanid"], "00f067aa0ba902b7");
                    assert_eq!(given.contains_key("b3"), b3_single);
                    // The single header alone reads back the same.
                    if b3_single {
                        let single = headers(&[("b3", given["b3"].to_str().unwrap())]);
                        assert_eq!(extract(&single, B3_ONLY).unwrap().parent, back.parent);
                    }
                }
            }
        }
    }
    let context = SpanContext {
        trace_id: TRACE,
        span_id: SPAN,
        parent_id: None,
        sampled: true,
        tracestate: None,
        b3_single: false,
    };
    let mut w3c = HeaderMap::new();
    inject(&context, W3C_ONLY, &mut w3c);
    assert_eq!(
        w3c["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(
        !w3c.contains_key("x-b3-traceid"),
        "B3 only for Zipkin providers"
    );
}

#[test]
fn one_percent_sampling_is_within_six_sigma_over_10k_decisions() {
    // Binomial(10_000, 0.01): mean 100, sigma ~9.95; 6 sigma is ±60.
    let sampler = Sampler::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let sampled = (0..10_000).filter(|_| sampler.sample(rng.random())).count();
    assert!((40..=160).contains(&sampled), "{sampled} of 10k at 1%");
    let all = Sampler::from_percent(100.0).unwrap();
    assert!((0..1000).all(|_| all.sample(rng.random())));
    let none = Sampler::from_percent(0.0).unwrap();
    assert!((0..1000).all(|_| !none.sample(rng.random())));
    for bad in [-0.5, 100.01, f64::NAN] {
        assert_eq!(Sampler::from_percent(bad), None, "{bad}");
    }
}

fn workload(app: Option<&'static str>) -> SpanWorkload<'static> {
    SpanWorkload {
        app,
        workload_name: "web-v1",
        namespace: "shop",
        canonical_service: "web",
        canonical_revision: "v1",
    }
}

fn facts(status: u16, grpc_status: Option<u32>) -> RequestFacts<'static> {
    RequestFacts {
        host: "catalog.shop.svc.cluster.local",
        port: 8080,
        url: "http://catalog.shop:8080/items?id=1",
        method: "GET",
        protocol: "HTTP/1.1",
        status,
        grpc_status,
        upstream_cluster: "outbound|8080||catalog.shop.svc.cluster.local",
        upstream_address: Some("10.0.0.7:8080".parse().unwrap()),
        response_flags: "-",
        request_size: 120,
        response_size: 512,
        peer_address: Some("10.0.0.5:41000".parse().unwrap()),
        request_id: "req-1",
        node_id: "sidecar~10.0.0.5~web-v1-abc.shop~shop.svc.cluster.local",
        mesh_id: "cluster.local",
        cluster_id: "Kubernetes",
    }
}

#[test]
fn a_span_is_named_and_tagged_as_istios() {
    let context = SpanContext::child(parent(Some(true)).as_ref(), Sampler::default(), 0, (1, 2));
    let span = Span::of_request(
        context,
        SpanKind::Client,
        &workload(Some("web")),
        &facts(200, None),
        (UNIX_EPOCH, Duration::from_millis(3)),
        DEFAULT_MAX_TAG_LENGTH,
    );
    assert_eq!(span.name, "catalog.shop.svc.cluster.local:8080/*");
    assert_eq!(span.service_name, "web.shop");
    assert_eq!(span.remote, facts(200, None).upstream_address);
    let expected = [
        ("http.url", "http://catalog.shop:8080/items?id=1"),
        ("http.method", "GET"),
        ("http.protocol", "HTTP/1.1"),
        ("http.status_code", "200"),
        (
            "upstream_cluster",
            "outbound|8080||catalog.shop.svc.cluster.local",
        ),
        ("upstream_address", "10.0.0.7:8080"),
        ("response_flags", "-"),
        ("request_size", "120"),
        ("response_size", "512"),
        ("peer.address", "10.0.0.5:41000"),
        ("guid:x-request-id", "req-1"),
        (
            "node_id",
            "sidecar~10.0.0.5~web-v1-abc.shop~shop.svc.cluster.local",
        ),
        ("component", "proxy"),
        ("istio.canonical_service", "web"),
        ("istio.canonical_revision", "v1"),
        ("istio.namespace", "shop"),
        ("istio.mesh_id", "cluster.local"),
        ("istio.cluster_id", "Kubernetes"),
    ];
    let got: Vec<(&str, &str)> = span.tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(got, expected);
    assert_eq!(workload(None).service_name(), "web-v1.shop");
    assert_eq!(workload(Some("")).service_name(), "web-v1.shop");
}

#[test]
fn errors_are_tagged_for_5xx_no_response_and_non_ok_grpc() {
    let cases = [
        (200, None, false),
        (404, None, false),
        (503, None, true),
        (0, None, true),
        (200, Some(0), false),
        (200, Some(14), true),
    ];
    for (status, grpc, error) in cases {
        let span = Span::of_request(
            SpanContext::child(None, Sampler::default(), 0, (1, 2)),
            SpanKind::Server,
            &workload(None),
            &facts(status, grpc),
            (UNIX_EPOCH, Duration::ZERO),
            DEFAULT_MAX_TAG_LENGTH,
        );
        let tagged = span.tags.iter().any(|(k, v)| *k == "error" && v == "true");
        assert_eq!(tagged, error, "{status} {grpc:?}");
        assert_eq!(
            span.remote,
            facts(0, None).peer_address,
            "SERVER: the caller"
        );
    }
}

#[test]
fn long_tag_values_are_cut_to_max_tag_length_on_a_char_boundary() {
    let long_url = format!("http://h/{}é", "a".repeat(20));
    let facts = RequestFacts {
        url: &long_url,
        ..facts(200, None)
    };
    let span = Span::of_request(
        SpanContext::child(None, Sampler::default(), 0, (1, 2)),
        SpanKind::Client,
        &workload(None),
        &facts,
        (UNIX_EPOCH, Duration::ZERO),
        30,
    );
    // 9 + 20 = 29 bytes, then a 2-byte character that does not fit.
    assert_eq!(span.tags[0].1, format!("http://h/{}", "a".repeat(20)));
    assert!(span.tags.iter().all(|(_, v)| v.len() <= 30));
}

#[test]
fn zipkin_json_has_the_v2_shape() {
    let context = SpanContext::child(
        parent(Some(true)).as_ref(),
        Sampler::default(),
        0,
        (1, 0xab),
    );
    let mut span = Span::of_request(
        context,
        SpanKind::Server,
        &workload(Some("web")),
        &facts(200, None),
        (
            UNIX_EPOCH + Duration::from_secs(2),
            Duration::from_micros(1500),
        ),
        DEFAULT_MAX_TAG_LENGTH,
    );
    span.local_ip = Some("10.0.0.7".parse().unwrap());
    let body: Value = serde_json::from_slice(&zipkin_json(&[span])).unwrap();
    let span = &body[0];
    assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["id"], "00000000000000ab");
    assert_eq!(span["parentId"], "00f067aa0ba902b7");
    assert_eq!(span["kind"], "SERVER");
    assert_eq!(span["timestamp"], 2_000_000);
    assert_eq!(span["duration"], 1500);
    assert_eq!(span["localEndpoint"]["serviceName"], "web.shop");
    assert_eq!(span["localEndpoint"]["ipv4"], "10.0.0.7");
    assert_eq!(span["remoteEndpoint"]["ipv4"], "10.0.0.5");
    assert_eq!(span["remoteEndpoint"]["port"], 41000);
    assert_eq!(span["tags"]["component"], "proxy");
    assert!(
        span["tags"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string)
    );
}
