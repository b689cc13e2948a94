use super::*;

const AB: &str = r#"source_workload="a",source_workload_namespace="ns",destination_service="b.ns.svc.cluster.local",destination_workload="b",destination_workload_namespace="ns""#;

fn scrape(at_secs: f64, text: &str) -> Scrape {
    Scrape {
        at_secs,
        samples: parse(text).unwrap(),
    }
}

fn requests(reporter: &str, code: &str, policy: &str, n: u32) -> String {
    format!(
        "istio_requests_total{{reporter=\"{reporter}\",{AB},response_code=\"{code}\",connection_security_policy=\"{policy}\"}} {n}\n"
    )
}

fn a() -> Node {
    Node::Workload("ns".into(), "a".into())
}

fn b() -> Node {
    Node::Service("b.ns.svc.cluster.local".into())
}

#[test]
fn parse_reads_labels_escapes_and_skips_comments() {
    let got = parse(
        "# HELP x y\n# TYPE x counter\n\nx{a=\"1\",b=\"q\\\"\\\\\\n\"} 2.5 1700000000\ny 3\nz{le=\"+Inf\"} +Inf\n",
    )
    .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].name, "x");
    assert_eq!(got[0].labels["a"], "1");
    assert_eq!(got[0].labels["b"], "q\"\\\n");
    assert_eq!(got[0].value, 2.5);
    assert_eq!((got[1].name.as_str(), got[1].value), ("y", 3.0));
    assert_eq!(got[2].value, f64::INFINITY);
}

#[test]
fn parse_rejects_bad_lines_naming_the_line() {
    for (text, reason) in [
        ("ok 1\nx{a=\"1\" 2\n", "unclosed labels"),
        ("ok 1\nx{a=1} 2\n", "label value not quoted"),
        ("ok 1\nx{a=\"1} 2\n", "unterminated label value"),
        ("ok 1\nx abc\n", "value is not a number"),
        ("ok 1\nx\n", "no value"),
    ] {
        assert_eq!(
            parse(text),
            Err(GraphError::BadLine { line: 2, reason }),
            "{text:?}"
        );
    }
}

#[test]
fn health_follows_kiali_defaults() {
    for (pct, want) in [
        (0.0, Health::Healthy),
        (0.1, Health::Degraded),
        (9.99, Health::Degraded),
        (10.0, Health::Failure),
        (50.0, Health::Failure),
    ] {
        assert_eq!(Health::of(pct), want, "{pct}");
    }
}

#[test]
fn edges_from_two_scrapes() {
    struct Case {
        name: &'static str,
        before: String,
        after: String,
        rps: f64,
        error_pct: f64,
        mtls_pct: f64,
        health: Health,
    }
    let cases = [
        Case {
            name: "20% 5xx over 10 s, all mTLS",
            before: requests("destination", "200", "mutual_tls", 0),
            after: requests("destination", "200", "mutual_tls", 80)
                + &requests("destination", "503", "mutual_tls", 20),
            rps: 10.0,
            error_pct: 20.0,
            mtls_pct: 100.0,
            health: Health::Failure,
        },
        Case {
            name: "source and destination reports count once",
            before: String::new(),
            after: requests("destination", "200", "mutual_tls", 99)
                + &requests("destination", "500", "mutual_tls", 1)
                + &requests("source", "200", "unknown", 100),
            rps: 10.0,
            error_pct: 1.0,
            mtls_pct: 100.0,
            health: Health::Degraded,
        },
        Case {
            name: "source report only, plaintext half",
            before: requests("source", "200", "none", 10),
            after: requests("source", "200", "none", 60)
                + &requests("source", "200", "mutual_tls", 50),
            rps: 10.0,
            error_pct: 0.0,
            mtls_pct: 50.0,
            health: Health::Healthy,
        },
        Case {
            name: "a counter reset counts from 0",
            before: requests("destination", "200", "mutual_tls", 500),
            after: requests("destination", "200", "mutual_tls", 100),
            rps: 10.0,
            error_pct: 0.0,
            mtls_pct: 100.0,
            health: Health::Healthy,
        },
    ];
    for c in cases {
        let g = compute(&scrape(0.0, &c.before), &scrape(10.0, &c.after));
        assert_eq!(g.nodes, vec![a(), b()], "{}", c.name);
        assert_eq!(g.edges.len(), 1, "{}", c.name);
        let e = &g.edges[0];
        assert_eq!(
            (e.source.clone(), e.destination.clone()),
            (a(), b()),
            "{}",
            c.name
        );
        assert!((e.rps - c.rps).abs() < 1e-9, "{}: rps {}", c.name, e.rps);
        assert!(
            (e.error_pct - c.error_pct).abs() < 1e-9,
            "{}: {}",
            c.name,
            e.error_pct
        );
        assert!(
            (e.mtls_pct - c.mtls_pct).abs() < 1e-9,
            "{}: {}",
            c.name,
            e.mtls_pct
        );
        assert_eq!(e.health, c.health, "{}", c.name);
    }
}

#[test]
fn p95_and_tcp_bytes() {
    let bucket = |le: &str, n: u32| {
        format!(
            "istio_request_duration_milliseconds_bucket{{reporter=\"destination\",{AB},le=\"{le}\"}} {n}\n"
        )
    };
    let before = bucket("10", 0) + &bucket("100", 0) + &bucket("+Inf", 0);
    // 50 under 10 ms, 50 in (10, 100]: rank 95 falls 90% into the second bucket.
    let after = bucket("10", 50)
        + &bucket("100", 100)
        + &bucket("+Inf", 100)
        + &format!("istio_tcp_sent_bytes_total{{reporter=\"destination\",{AB}}} 3000\n")
        + &format!("istio_tcp_received_bytes_total{{reporter=\"destination\",{AB}}} 1000\n");
    let g = compute(&scrape(0.0, &before), &scrape(4.0, &after));
    let e = &g.edges[0];
    assert!((e.p95_ms.unwrap() - 91.0).abs() < 1e-9, "{:?}", e.p95_ms);
    assert!((e.tcp_bytes_per_sec - 1000.0).abs() < 1e-9);
    assert_eq!(e.rps, 0.0);

    let tail = bucket("10", 0) + &bucket("+Inf", 10);
    let g = compute(&scrape(0.0, ""), &scrape(1.0, &tail));
    assert_eq!(
        g.edges[0].p95_ms,
        Some(10.0),
        "rank in +Inf: the last finite bound"
    );
}

#[test]
fn unknown_sources_and_idle_edges_are_left_out() {
    let unknown = requests("destination", "200", "none", 5)
        .replace("source_workload=\"a\"", "source_workload=\"unknown\"");
    let idle = requests("destination", "200", "none", 5);
    let g = compute(&scrape(0.0, &idle), &scrape(1.0, &(unknown + &idle)));
    assert_eq!(g, Graph::default());
}

#[test]
fn window_keeps_its_span_and_cap() {
    let mut w = Window::new(60.0, 100);
    assert_eq!(
        w.graph(),
        Graph::default(),
        "one scrape or none: no rates yet"
    );
    for t in 0..10 {
        let n = t * 10;
        w.push(scrape(
            f64::from(t) * 10.0,
            &requests("destination", "200", "mutual_tls", n as u32),
        ));
    }
    // t = 90: keeps 30 (at or before 90 - 60) and later.
    assert_eq!(w.scrapes.front().unwrap().at_secs, 30.0);
    assert!((w.graph().edges[0].rps - 1.0).abs() < 1e-9);
    let mut w = Window::new(1e9, 3);
    for t in 0..5 {
        w.push(scrape(f64::from(t), ""));
    }
    assert_eq!(w.scrapes.len(), 3);
}
