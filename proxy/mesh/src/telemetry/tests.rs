use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::istio::Telemetry;

fn object(yaml: &str) -> Telemetry {
    serde_yaml::from_str(yaml).expect("test Telemetry parses")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn providers() -> BTreeSet<String> {
    BTreeSet::from(["zipkin".to_owned()])
}

const MESH: &str = r"
metadata: {name: mesh, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 10, providers: [{name: zipkin}]}]
  metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {team: {value: core}}}]}]
";
const NS: &str = r"
metadata: {name: ns, namespace: apps}
spec:
  tracing: [{randomSamplingPercentage: 50}]
  metrics: [{overrides: [{match: {metric: REQUEST_DURATION}, disabled: true}]}]
  accessLogging: [{filter: {expression: 'response.code >= 400'}}]
";
const WORKLOAD: &str = r"
metadata: {name: wl, namespace: apps}
spec:
  selector: {matchLabels: {app: web}}
  tracing: [{disableSpanReporting: true, customTags: {env: {literal: {value: prod}}}}]
  metrics: [{overrides: [{match: {metric: REQUEST_DURATION, mode: SERVER}, disabled: false},
                         {match: {metric: REQUEST_COUNT}, tagOverrides: {team: {operation: REMOVE}}}]}]
";

fn index() -> TelemetryIndex {
    let (index, errors) = TelemetryIndex::compile(
        &[object(MESH), object(NS), object(WORKLOAD)],
        "istio-system",
        &providers(),
    );
    assert_eq!(errors, []);
    index
}

#[test]
fn scoping_most_specific_wins_per_field() {
    let index = index();
    // (namespace, labels, mode, sampling, span reporting off, duration on, team tag)
    let cases = [
        (
            "other",
            vec![],
            Mode::Server,
            Some(10.0),
            false,
            true,
            Some("core"),
        ),
        (
            "apps",
            vec![],
            Mode::Server,
            Some(50.0),
            false,
            false,
            Some("core"),
        ),
        (
            "apps",
            vec![("app", "web")],
            Mode::Server,
            Some(50.0),
            true,
            true,
            None,
        ),
        (
            "apps",
            vec![("app", "web")],
            Mode::Client,
            Some(50.0),
            true,
            false,
            None,
        ),
    ];
    for (ns, pairs, mode, sampling, span_off, duration, team) in cases {
        let got = index.resolve(ns, &labels(&pairs), mode);
        let case = format!("{ns} {pairs:?} {mode:?}");
        assert_eq!(got.tracing.sampling_percentage, sampling, "{case}");
        assert_eq!(got.tracing.providers, ["zipkin"], "{case}");
        assert_eq!(got.tracing.disable_span_reporting, span_off, "{case}");
        assert_eq!(
            got.metric_enabled(Metric::RequestDuration),
            duration,
            "{case}"
        );
        assert!(got.metric_enabled(Metric::RequestCount), "{case}");
        let count = got
            .metrics
            .get(&Metric::RequestCount)
            .cloned()
            .unwrap_or_default();
        assert_eq!(count.upsert.get("team").map(String::as_str), team, "{case}");
        assert_eq!(count.remove.contains("team"), team.is_none(), "{case}");
    }
    let web = index.resolve("apps", &labels(&[("app", "web")]), Mode::Server);
    assert_eq!(
        web.tracing.custom_tags.get("env"),
        Some(&CustomTag::Literal("prod".to_owned()))
    );
    assert_eq!(
        web.access_log.filter.as_ref().map(|f| f.source()),
        Some("response.code >= 400")
    );
    assert!(
        index
            .resolve("other", &labels(&[]), Mode::Server)
            .access_log
            .filter
            .is_none()
    );
}

#[test]
fn bad_objects_are_refused_with_field_and_others_apply() {
    let cases = [
        (
            "spec: {tracing: [{randomSamplingPercentage: 150}]}",
            "spec.tracing[0].randomSamplingPercentage",
        ),
        (
            "spec: {tracing: [{providers: [{name: nope}]}]}",
            "spec.tracing[0].providers[0].name",
        ),
        (
            "spec: {accessLogging: [{filter: {expression: 'response.code >='}}]}",
            "spec.accessLogging[0].filter.expression",
        ),
        (
            "spec: {metrics: [{overrides: [{match: {metric: BOGUS}}]}]}",
            "spec.metrics[0].overrides[0].match.metric",
        ),
        (
            "spec: {accessLogging: [{match: {mode: BOTH}}]}",
            "spec.accessLogging[0].match.mode",
        ),
        (
            "spec: {metrics: [{overrides: [{tagOverrides: {a: {operation: DROP}}}]}]}",
            "spec.metrics[0].overrides[0].tagOverrides.a.operation",
        ),
        (
            "spec: {tracing: [{customTags: {a: {}}}]}",
            "spec.tracing[0].customTags.a",
        ),
        (
            "spec: {targetRefs: [{kind: Gateway, name: gw}]}",
            "spec.targetRefs",
        ),
    ];
    for (spec, field) in cases {
        let bad = object(&format!("metadata: {{name: bad, namespace: apps}}\n{spec}"));
        let (index, errors) =
            TelemetryIndex::compile(&[bad, object(NS)], "istio-system", &providers());
        assert_eq!(errors.len(), 1, "{spec}");
        let message = errors[0].to_string();
        assert!(
            message.contains("apps/bad") && message.contains(field),
            "{spec}: {message}"
        );
        // The good object still applies.
        let got = index.resolve("apps", &labels(&[]), Mode::Server);
        assert_eq!(got.tracing.sampling_percentage, Some(50.0), "{spec}");
    }
}

#[test]
fn cel_filter_evaluates_envoy_attributes() {
    let base = AccessLogAttributes {
        method: "GET".to_owned(),
        path: "/api/x".to_owned(),
        request_headers: labels(&[("x-debug", "1")]),
        response_code: 200,
        mtls: true,
        ..AccessLogAttributes::default()
    };
    let cases = [
        ("response.code >= 400", 200, false),
        ("response.code >= 400", 503, true),
        ("request.method == 'GET' && response.code == 200", 200, true),
        ("request.path.startsWith('/api')", 200, true),
        ("request.headers['x-debug'] == '1'", 200, true),
        // A missing header fails to evaluate: the line is not written.
        ("request.headers['x-missing'] == '1'", 200, false),
        ("connection.mtls", 200, true),
        // Not a bool.
        ("response.code", 200, false),
    ];
    for (expression, code, want) in cases {
        let filter = CelFilter::compile(expression).expect("test expression parses");
        let attributes = AccessLogAttributes {
            response_code: code,
            ..base.clone()
        };
        assert_eq!(
            filter.matches(&attributes),
            want,
            "{expression} with {code}"
        );
    }
}

#[test]
fn access_log_settings_disabled_and_filter() {
    let filter = Arc::new(CelFilter::compile("response.code >= 400").expect("parses"));
    let ok = AccessLogAttributes {
        response_code: 200,
        ..AccessLogAttributes::default()
    };
    let err = AccessLogAttributes {
        response_code: 404,
        ..AccessLogAttributes::default()
    };
    let cases = [
        (false, None, true, true),
        (true, None, false, false),
        (false, Some(Arc::clone(&filter)), false, true),
        (true, Some(filter), false, false),
    ];
    for (disabled, filter, log_ok, log_err) in cases {
        let settings = AccessLogSettings { disabled, filter };
        assert_eq!(settings.should_log(&ok), log_ok, "{disabled}");
        assert_eq!(settings.should_log(&err), log_err, "{disabled}");
    }
}

#[test]
fn custom_metric_and_all_metrics() {
    let yaml = r"
metadata: {name: t, namespace: istio-system}
spec:
  metrics: [{overrides: [{disabled: true}, {match: {customMetric: requests_total}, disabled: false}]}]
";
    let (index, errors) = TelemetryIndex::compile(&[object(yaml)], "istio-system", &providers());
    assert_eq!(errors, []);
    let got = index.resolve("any", &labels(&[]), Mode::Client);
    for metric in Metric::ALL {
        assert_eq!(
            got.metric_enabled(metric),
            metric == Metric::RequestCount,
            "{metric:?}"
        );
    }
}
